"""``convarith shape``: the output size of a convolution, derived step by step."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ..explain import explain
from ._spec_args import LESSON_EXAMPLE, add_spec_arguments, spec_from_args


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "shape",
        help="output size of a convolution, with the worked formula",
        description="Output size of a convolution, with the worked formula. With no size, "
        "the lesson's example: 28 pixels, 3x3 kernel, padding 1, stride 3.",
        epilog="examples: convarith shape 28 -k 3 -p 1 -s 3 | convarith shape 28x32 -p same -s 2 "
        "| convarith shape 16000 --rank 1 -k 3 -d 8 -p causal",
    )
    add_spec_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print the derivation as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    lesson = args.size is None and _all_defaults(args)
    if lesson:
        args.kernel, args.padding, args.strides = (
            LESSON_EXAMPLE["kernel"], LESSON_EXAMPLE["padding"], LESSON_EXAMPLE["strides"]
        )
    spec, size = spec_from_args(args)
    explanation = explain(spec, size)
    if args.json:
        print(json.dumps(explanation.to_dict(), indent=2))
        return 0
    if lesson:
        print("The lesson's example (slide 11): a 28-pixel input, 3x3 kernel, padding 1, stride 3.")
        print("The right formula is O = floor((I - K + 2P) / S) + 1 (slide 10 misprints it as")
        print("(I - K + 2P) / (S + 1)).\n")
    print(explanation.text)
    print(f"\noutput: {'x'.join(str(v) for v in explanation.output_size)}")
    return 0


def _all_defaults(args: argparse.Namespace) -> bool:
    return (args.kernel, args.strides, args.dilation, args.padding) == ("3", None, "1", None) and not (
        args.transposed or args.pool or args.rank or args.convention
    )
