"""viewer_api/dicomweb."""
