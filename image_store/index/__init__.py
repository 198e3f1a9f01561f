"""image_store/index."""
