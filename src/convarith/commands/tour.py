"""``convarith tour``: the lesson on convolution tweaks as one offline page."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli import UsageError


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "tour",
        help="the lesson on padding, strides and dilation as one offline HTML page",
        description="Build the lesson 'Tweaking your convolutions' as one self-contained page: "
        "for each tweak its animation, the worked arithmetic, Keras and PyTorch code, and the "
        "engine run on a picture. Writes OUT/index.html (default ./convarith-tour/index.html).",
        epilog="examples: convarith tour | convarith tour --out lesson --open | convarith tour --force",
    )
    parser.add_argument("--out", "-o", "--output", dest="out", default="convarith-tour",
                        help="folder for index.html, or a file name ending in .html (default convarith-tour)")
    parser.add_argument("--open", action="store_true", help="open the page in a web browser when done")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing page")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..tour import write_tour

    try:
        path = write_tour(args.out, force=args.force, progress=not args.quiet, open_browser=args.open)
    except (FileExistsError, IsADirectoryError, FileNotFoundError, PermissionError,
            NotADirectoryError) as error:
        raise UsageError(str(error)) from None
    print(f"wrote {path} — open it in a browser (file://{path.resolve()})", file=sys.stderr)
    return 0
