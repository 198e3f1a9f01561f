"""cloudfilm."""
