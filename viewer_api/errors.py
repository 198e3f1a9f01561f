"""Errors of the API; each carries the HTTP status the edge (middleware) turns it into."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager


class ViewerError(Exception):
    """Root of every error raised by viewer_api."""

    status = 500


class BadRequest(ViewerError, ValueError):
    status = 400


class Unauthorized(ViewerError, PermissionError):
    status = 401


class Forbidden(ViewerError, PermissionError):
    status = 403


class NotFound(ViewerError, LookupError):
    status = 404


class NotAcceptable(ViewerError, ValueError):
    status = 406


class PayloadTooLarge(ViewerError, ValueError):
    status = 413


class InsufficientStorage(ViewerError):
    """The cloud's disk (or quota) is full: nothing more is stored until space is freed."""

    status = 507


_OUT_OF_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def out_of_space(exc: OSError) -> InsufficientStorage | None:
    """The 507 for an OSError that means a full disk or quota; None for any other."""
    if exc.errno not in _OUT_OF_SPACE:
        return None
    return InsufficientStorage(f"the cloud's storage is full ({exc.strerror}): send again later")


@contextmanager
def full_disk_is_507() -> Iterator[None]:
    """Raise :class:`InsufficientStorage` for a full disk or quota inside the block; any
    other error goes on as it was."""
    try:
        yield
    except OSError as exc:
        full = out_of_space(exc)
        if full is None:
            raise
        raise full from exc
