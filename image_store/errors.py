"""Errors of the image store. Each specific error also subclasses the builtin it resembles."""

from __future__ import annotations


class ImageStoreError(Exception):
    """Root of every error raised by image_store."""


class InvalidUID(ImageStoreError, ValueError):
    """A DICOM UID that is not 1-64 characters of digits and dots."""


class InvalidKey(ImageStoreError, ValueError):
    """An object key that would escape the store or has forbidden characters."""


class ObjectNotFound(ImageStoreError, LookupError):
    """No object under that key."""


class IntegrityError(ImageStoreError, ValueError):
    """Stored bytes do not match the expected checksum."""


class InvalidDicom(ImageStoreError, ValueError):
    """Bytes that are not a DICOM dataset we can index (unreadable or missing required UIDs)."""


class StoreUnavailable(ImageStoreError, OSError):
    """The object store did not answer (timeouts, 5xx, throttling) within its retry budget.

    An OSError, so callers that retry transient failures (the gateway's uploader) do so.
    """


class KeyUnavailable(ImageStoreError, LookupError):
    """No key-encryption key for a hospital (or for the key id an object was sealed with)."""


class KeyConfigError(ImageStoreError, ValueError):
    """A key file or key variable that cannot be used (unsafe mode, bad format, wrong length)."""
