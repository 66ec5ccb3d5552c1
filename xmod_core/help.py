"""Command-line help that shows a default only where there is one to show."""

from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after an option's help, except for required options, flags, options
    whose default is None or empty ("(default: None)" tells a reader nothing) and help that
    already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        default = action.default  # by identity too: 0 == False, and a default of 0 is shown
        empty = default is None or default is False or default in (argparse.SUPPRESS, [], "")
        if action.required or empty or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)
