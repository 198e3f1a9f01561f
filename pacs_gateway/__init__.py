"""pacs_gateway."""
