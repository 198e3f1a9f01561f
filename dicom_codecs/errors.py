"""Errors of the codecs and renderers."""

from __future__ import annotations


class CodecError(Exception):
    """Root of every error raised by dicom_codecs."""


class RenderError(CodecError, ValueError):
    """A dataset that cannot be rendered (no pixel data, or pixel data that cannot be decoded)."""
