"""The ``convarith`` command.

Each subcommand lives in its own module under :mod:`convarith.commands` and
defines ``add_parser(subparsers)``, which adds its parser and sets ``func``
(a callable taking the parsed arguments and returning an exit code). Errors
from bad input (``ValueError``, ``TypeError``) are printed in one line and
exit with status 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence

__all__ = ["main", "build_parser", "COMMANDS"]

# Subcommand modules, in the order `convarith --help` lists them.
COMMANDS: tuple[str, ...] = (
    "tour",
    "shape",
    "solve",
    "animate",
    "port",
    "summary",
    "serve",
    "train",
    "apply",
)


class UsageError(Exception):
    """A bad command-line value found after parsing (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="convarith",
        description="Everything about a convolution's tweaks: padding, strides, dilation, "
        "groups, transposition.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"convarith {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as error:
            if error.name == f"{__package__}.commands.{name}":
                continue  # a command not built yet
            raise
        module.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    original_format = warnings.formatwarning
    warnings.formatwarning = _one_line_warning(args.command)  # not the file and source line
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head`, say
        return 0
    except (ValueError, TypeError, UsageError, IndexError, OSError) as error:
        # bad values, and files that exist, are missing or can't be written
        print(f"convarith {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"convarith {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = original_format


def _one_line_warning(command: str) -> Callable[..., str]:
    """``warnings.formatwarning`` for the command line: ``convarith CMD: warning: MESSAGE``."""

    def format_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                       line: str | None = None) -> str:
        return f"convarith {command}: warning: {message}\n"

    return format_warning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
