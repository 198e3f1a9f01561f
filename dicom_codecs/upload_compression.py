"""The lossless codecs a gateway may re-encode instances with before upload (dicom_codecs.edge
does the work). Apart from edge so that settings can name one without importing pydicom."""

from __future__ import annotations

from enum import StrEnum


class UploadCompression(StrEnum):
    NONE = "none"
    JPEG_LS = "jpeg-ls"
    HTJ2K = "htj2k"
    RLE = "rle"
