"""The region's state beside the index: share links, consents, the registry, reports, the audit
log, token revocations and gateway credentials, behind the protocols in :mod:`.ports`, stored in
the index's database (SQLite embedded, PostgreSQL in a region) through :mod:`.db`."""
