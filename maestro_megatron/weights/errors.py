"""The one exception the converter raises for bad inputs (exit code 2 on the CLI)."""

from __future__ import annotations

from maestro_megatron.errors import UserError


class ConversionError(UserError):
    """A checkpoint, config or layout that cannot be converted; the message says why."""
