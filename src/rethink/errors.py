"""The one error type for user mistakes.

A :class:`UserError` carries a single line that names the problem and the fix. The command line
prints it and exits with status 2, without a traceback. Bugs raise ordinary exceptions.
"""

import os


class UserError(Exception):
    """A mistake in the user's input (spec, data file, model name, ...), not a bug."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class UserCodeError(UserError):
    """The user's own code (a model factory) raised: one line on the command line like any user
    error, but a failure of that run rather than of the input, so a Ray sweep retries and records
    it as it does any failed task."""


def make_folder(folder: str, what: str, flag: str) -> None:
    """``os.makedirs(folder, exist_ok=True)``; a failure is one line naming ``flag`` as the fix."""
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create {what} {folder} ({e.strerror}); pass {flag} with a writable path") from None
