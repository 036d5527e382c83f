"""The project's user-error base class (DESIGN.md section 9: a user error is one line
`error: what (file, line, key)` and exit 2; a traceback means a bug in the project).

Every exception a user can cause with a recipe, a data file, a path, a model or a
command-line argument derives from `UserError`; the CLI prints it as one line and
exits 2 (`--debug` or MAESTRO_DEBUG=1 shows the traceback). Anything else is a bug.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message names what and where."""


class CheckpointError(UserError):
    """A checkpoint that cannot be trusted or resumed; the message names the file."""


class RunDirError(UserError):
    """A run directory that cannot be used as asked (e.g. it holds an earlier run)."""
