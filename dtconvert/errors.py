"""Errors a user can cause and fix: caught at the CLI boundary, printed as one sentence."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (a file, a field, a flag). The CLI prints the message on one line and exits 2."""

    exit_code = 2


def unloadable(path, runtime: str, error: BaseException) -> UserError:
    """The sentence for an artifact whose bytes match the manifest but which its runtime cannot load."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return UserError(
        f"{path}: {runtime} cannot load it ({reason[:200]}); its sha256 matches the manifest, so the export "
        "itself is broken: export it again"
    )


class CheckFailed(UserError):
    """A check the user asked for failed (the parity gate, an export's verification): one sentence, exit 1."""

    exit_code = 1
