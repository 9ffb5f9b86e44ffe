"""The ``kfacel`` command line: one subcommand per module of this package.

Each public module here defines ``register(subparsers)``, which adds its parser and sets
``handler`` to a function ``(args) -> int``. Handlers parse, call the library, write files
and return an exit code; they hold no math. Registering is cheap: a module imports torch and
the library inside its handlers, so ``kfacel --help`` and ``kfacel --version`` load neither
(the choices the parsers show are in ``_choices``). Every parser is a ``_help.Parser``: its
help shows each option's default.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from safetensors import SafetensorError

from kfacel import __version__
from kfacel.cli._help import Parser


class UserError(Exception):
    """A problem with the user's input: printed as one line, exit code 2.

    ``main`` prints ``ValueError`` and ``FileNotFoundError`` the same way, other
    ``OSError`` and safetensors' own ``SafetensorError`` (a failed tensor write) as
    one line with exit code 1, and Ctrl-C as ``kfacel: interrupted`` with exit code
    130.
    """


EPILOG = """\
exit codes: 0 done; 1 a failed write (permissions, a full disk) or, for experiment, a
failed cell; 2 bad input or options; 130 interrupted (Ctrl-C).
`kfacel COMMAND --help` shows a command's options, their defaults and its input formats.
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser with every subcommand of this package registered."""
    parser = Parser(
        prog="kfacel",
        description="Continual learning for medical entity linking with K-FAC EWC.",
        epilog=EPILOG,
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-vv logs DEBUG lines too (the default level is INFO)",
    )
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="log warnings and errors only"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``kfacel`` with ``argv``; returns the exit code."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except KeyboardInterrupt:  # Ctrl-C while the parsers are built
        print("kfacel: interrupted", file=sys.stderr)
        return 130
    level = (
        logging.WARNING
        if args.quiet
        else (logging.DEBUG if args.verbose > 1 else logging.INFO)
    )
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except KeyboardInterrupt:
        print("kfacel: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, FileNotFoundError) as exc:
        print(f"kfacel {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, a full disk: the OS names the path
        print(f"kfacel {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except SafetensorError as exc:  # writes name their file (_io); this is the rest
        print(f"kfacel {args.command}: error: safetensors: {exc}", file=sys.stderr)
        return 1
