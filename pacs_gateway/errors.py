"""Errors of the hospital gateway."""

from __future__ import annotations


class GatewayError(Exception):
    """Root of every error raised by pacs_gateway."""


class SpoolFull(GatewayError, OSError):
    """The spool reached its high-water mark or the disk is (nearly) full: refuse, don't drop."""


class PermanentIngestError(GatewayError, ValueError):
    """The cloud refused an instance for a reason that retrying cannot fix."""
