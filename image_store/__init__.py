"""image_store."""
