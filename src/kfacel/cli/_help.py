"""How every ``kfacel`` parser formats its help: defaults shown, epilogs kept as written.

``Parser`` is the ``ArgumentParser`` of ``kfacel`` and, through ``add_subparsers``, of
every subcommand; its ``HelpFormatter`` appends ``(default: X)`` to each option whose
default is a value (not ``None``, ``False``, an empty list or a suppressed one) unless
its help already says what the default is, and prints descriptions and epilogs (the
input formats) line for line.
"""

from __future__ import annotations

import argparse
import copy
from typing import Any


def shown_default(action: argparse.Action) -> str | None:
    """The default of ``action`` as ``--help`` shows it, or None when there is none.

    >>> shown_default(argparse.Action(["--lam"], "lam", default=1e-6))
    '1e-06'
    >>> shown_default(argparse.Action(["--quiet"], "quiet", default=False)) is None
    True
    """
    default = action.default
    if default is None or default is False or default == argparse.SUPPRESS:
        return None
    if isinstance(default, list | tuple) and not default:
        return None
    if not action.option_strings:  # a positional argument's default is never used
        return None
    if isinstance(default, float):
        return format(default, "g")
    return str(default)


def says_default(help_text: str | None) -> bool:
    """Whether an option's help already names its default (``default: 10 for ...``)."""
    return help_text is not None and "default" in help_text.lower()


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Help with every option's default, descriptions and epilogs as written."""

    def _format_action(self, action: argparse.Action) -> str:
        default = shown_default(action)
        if default is not None and not says_default(action.help):
            action = copy.copy(action)  # the parser's own action stays as it was
            text = action.help or ""
            default = default.replace("%", "%%")
            action.help = f"{text} (default: {default})".strip()
        return super()._format_action(action)


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` formatted by ``HelpFormatter``, its subparsers too."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
