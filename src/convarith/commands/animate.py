"""``convarith animate``: draw any convolution as a GIF, APNG, SVG or PNG sheet."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..cli import UsageError
from ._spec_args import add_spec_arguments, spec_from_args


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "animate",
        help="animation of a convolution (GIF, APNG, SVG, PNG sheet)",
        description="Draw a convolution step by step in the classic look: blue input, green "
        "output, dashed zero padding, the kernel window and the output cell it writes. "
        "The format follows the file extension: .gif, .apng, .svg (animated), .png "
        "(a sheet of every step, or one --step).",
        epilog="examples: convarith animate 5 -k 3 -p same -s 2 -o padding_strides.gif | "
        "convarith animate 7 -k 3 -d 2 -o dilation.svg | "
        "convarith animate 3 -k 3 -s 2 -p 1 --transposed --view scatter -o up.gif",
    )
    add_spec_arguments(parser)
    parser.add_argument("-o", "--output", "--out", dest="output", required=True, help="file to write (.gif, .apng, .svg, .png)")
    parser.add_argument(
        "--view", default=None, choices=("oblique", "flat", "direct", "scatter"),
        help="oblique (classic, slanted planes; default in 2-D and 3-D), flat (top-down; default "
        "in 1-D); for a transposed convolution 'direct' (window over the zero-inserted input) "
        "or 'scatter' (each input cell adds a patch)",
    )
    parser.add_argument("--values", action="store_true", help="write numbers in the cells (engine output)")
    parser.add_argument("--gaps", action=argparse.BooleanOptionalAction, default=None,
                        help="outline the cells a dilated kernel skips (default: when dilated)")
    parser.add_argument("--fps", type=float, help="frames per second, 0.01 to 50 (default 1; faster for long animations)")
    parser.add_argument("--scale", type=float, default=1.0, help="picture size factor, 0.1 to 8 (default 1)")
    parser.add_argument("--step", type=int, help="with .png or .svg: draw only this step")
    parser.add_argument("--every", type=int, default=1, metavar="K",
                        help="with .gif, .apng or a .png sheet: draw every K-th step (a shorter, smaller file)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite the output file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..viz import animate

    if args.size is None:
        raise UsageError("give the input size, e.g. convarith animate 5 -k 3 -p same -s 2 -o out.gif")
    if args.groups != 1:
        raise UsageError(
            f"--groups {args.groups}: the animation draws one channel, and every group slides the "
            "same window over its own channels, so groups do not change the picture; drop --groups "
            "(convarith shape shows the channel counts per group)"
        )
    spec, size = spec_from_args(args)
    transposed_as = "direct"
    view = args.view
    if view in ("direct", "scatter"):
        transposed_as, view = view, None
    movie = animate(spec, size, view=view, values=args.values, transposed_as=transposed_as,
                    show_gaps=args.gaps, fps=args.fps, scale=args.scale, every=args.every)
    try:
        path = movie.save(args.output, force=args.force, step=args.step)
    except (FileExistsError, IsADirectoryError, FileNotFoundError, PermissionError) as error:
        raise UsageError(str(error)) from None
    drawn = "1 step" if args.step is not None else (
        f"{len(movie.steps)} of {len(movie)} steps" if movie.every != 1 else f"{len(movie)} frames")
    print(f"wrote {path} ({drawn}; {movie.explanation.summary})", file=sys.stderr)
    return 0
