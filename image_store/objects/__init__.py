"""image_store/objects."""
