"""The error type of the ``tdn`` command: a mistake of its user, not a bug."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a path, a name, an option value). ``tdn`` prints its message as one
    line, ``tdn <subcommand>: error: <message>``, and exits with status 2."""
