"""Errors of the codecs and renderers."""

from __future__ import annotations


class CodecError(Exception):
    """Root of every error raised by dicom_codecs."""


class RenderError(CodecError, ValueError):
    """A picture that cannot be made: no pixel data, undecodable pixel data, or bad options."""
