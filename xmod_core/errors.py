"""The one base class of the errors a user can fix.

A ``UserError`` is a wrong config value, an input file that cannot be used, or a run directory in a
state a command refuses to touch. Its message names the problem (the key, the file, the language)
and what to do; the command line prints it as one line, ``xmod_pretrain: error: ...``, and exits 1,
with no traceback. Anything else is a bug or a fault of the machine and keeps its traceback.
"""

from __future__ import annotations


class Aborted(BaseException):
    """A second Ctrl-C during training: exit now, without saving. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way out swallows it."""

    exit_status = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended


class UserError(Exception):
    """A problem the user can fix; the message says which and how."""


def error_line(err: UserError | str) -> str:
    """How the command line prints a user error."""
    return f"xmod_pretrain: error: {err}"
