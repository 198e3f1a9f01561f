"""dicom_codecs."""
