"""The one base class of the errors a user can fix.

A ``UserError`` is a wrong config value, an input file that cannot be used, or a run directory in a
state a command refuses to touch. Its message names the problem (the key, the file, the language)
and what to do; the command line prints it as one line, ``xmod_pretrain: error: ...``, and exits 1,
with no traceback. Anything else is a bug or a fault of the machine and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence


class Aborted(BaseException):
    """A second Ctrl-C during training: exit now, without saving. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` on the way out swallows it."""

    exit_status = 130  # 128 + SIGINT, what a shell reports for a process Ctrl-C ended


class UserError(Exception):
    """A problem the user can fix; the message says which and how."""


def error_line(err: UserError | str) -> str:
    """How the command line prints a user error."""
    return f"xmod_pretrain: error: {err}"


def closest(name: str, names: Sequence[str], n: int = 1) -> list[str]:
    """The valid names most like a mistyped ``name`` (difflib's ratio, 0.6 or more), best first."""
    return difflib.get_close_matches(name, list(names), n=n)


def did_you_mean(names: Sequence[str]) -> str:
    """`` (did you mean a or b?)`` for the names found, nothing when there are none."""
    return f" (did you mean {' or '.join(names)}?)" if names else ""
