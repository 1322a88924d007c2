"""Errors a user can cause and fix: caught at the CLI boundary, printed as one sentence."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a field, a flag). The CLI prints the message on one line and exits 2."""

    exit_code = 2
