"""viewer_api."""
