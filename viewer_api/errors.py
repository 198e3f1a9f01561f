"""Errors of the API; each carries the HTTP status the edge (middleware) turns it into."""

from __future__ import annotations


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
