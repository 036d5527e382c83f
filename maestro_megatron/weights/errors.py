"""The one exception the converter raises for bad inputs (exit code 2 on the CLI)."""

from __future__ import annotations


class ConversionError(Exception):
    """A checkpoint, config or layout that cannot be converted; the message says why."""
