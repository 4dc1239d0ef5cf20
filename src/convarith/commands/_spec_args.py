"""Spec flags shared by the commands that take a convolution (`shape`, `animate`, ...).

A size is ``28`` (a square 2-D input, as the lesson's "28 pixels"),
``28x32`` (one number per axis) or ``16000`` with ``--rank 1``. Kernel, stride,
dilation and output padding take one number or one per axis (``3x5``).
Padding takes a word, one number, ``LO,HI`` for every axis, or per axis
``LO,HI x LO,HI`` written ``1,2x0,1``.
"""

from __future__ import annotations

import argparse
from typing import Any

from ..arithmetic import check_int
from ..frontdoors import from_convention
from ..spec import PADDING_MODES, PADDING_WORDS, ConvSpec

__all__ = ["add_spec_arguments", "spec_from_args", "parse_size", "LESSON_EXAMPLE"]

# The lesson's slide 11: 28 pixels, a 3x3 kernel, padding 1, stride 3 -> 10.
LESSON_EXAMPLE = {"size": "28", "kernel": "3", "padding": "1", "strides": "3"}


def parse_size(text: str, name: str, rank: int | None = None, minimum: int = 1) -> tuple[int, ...]:
    """``"28"`` -> ``(28,) * rank``, ``"28x32"`` -> ``(28, 32)``; each at least ``minimum``."""
    parts = text.lower().replace("×", "x").split("x")
    values = []
    for part in parts:
        part = part.strip()
        if not part.lstrip("-").isdigit():
            raise ValueError(f"{name} must be integers separated by 'x' (e.g. 28 or 28x32), got {text!r}")
        try:
            values.append(check_int(name, int(part), minimum))  # the one integer check
        except ValueError:
            rule = "positive" if minimum == 1 else f"at least {minimum}"
            raise ValueError(f"{name} must be {rule}, got {text!r}") from None
    if len(values) == 1 and rank is not None:
        values = values * rank
    return tuple(values)


def _parse_padding(text: str, rank: int) -> Any:
    word = text.strip().lower()
    if word in PADDING_WORDS:
        return word
    axes = word.split("x")
    pairs = []
    for part in axes:
        pieces = part.split(",")
        if not all(p.strip().lstrip("-").isdigit() for p in pieces) or len(pieces) > 2:
            raise ValueError(
                f"--padding must be one of {', '.join(PADDING_WORDS)}, a number, LO,HI, or LO,HI per "
                f"axis joined by 'x' (e.g. 1,2x0,1); got {text!r}"
            )
        numbers = [int(p) for p in pieces]
        pairs.append((numbers[0], numbers[-1]))
    if len(pairs) == 1:
        pairs = pairs * rank
    return tuple(pairs)


def add_spec_arguments(parser: argparse.ArgumentParser, size_required: bool = False) -> None:
    """Add the size and convolution flags to ``parser``."""
    parser.add_argument(
        "size",
        nargs=None if size_required else "?",
        help="input size: 28 (square), 28x32 (per axis); with --rank 1 or 3 for other ranks",
    )
    parser.add_argument("--rank", type=int, choices=(1, 2, 3), help="spatial axes (default: from the size; one number means 2)")
    parser.add_argument("-k", "--kernel", default="3", help="kernel size, e.g. 3 or 3x5 (default 3)")
    parser.add_argument("-s", "--strides", "--stride",
                        help="stride(s) (default 1; with --convention, that framework's default)")
    parser.add_argument("-d", "--dilation", default="1", help="dilation rate(s) (default 1)")
    parser.add_argument(
        "-p", "--padding",
        help="valid, same, same_lower, causal, full, N, LO,HI, or LO,HIxLO,HI per axis "
        "(default valid; with --convention, that framework's default, e.g. PyTorch's 0)",
    )
    parser.add_argument("--padding-mode", default="zeros", choices=PADDING_MODES)
    parser.add_argument("--groups", type=int, default=1)
    parser.add_argument("--transposed", action="store_true", help="a transposed convolution")
    parser.add_argument("--output-padding", help="output padding of a transposed convolution")
    parser.add_argument("--pool", choices=("max", "avg"), help="pooling instead of a convolution")
    parser.add_argument("--ceil-mode", action="store_true", help="pooling: keep a last partial window")
    parser.add_argument("--count-include-pad", action="store_true", default=None,
                        help="avg pooling: padded cells count (with --convention: that framework's "
                        "default, True in PyTorch)")
    parser.add_argument(
        "--convention", choices=("keras", "torch", "jax", "onnx"),
        help="read the flags with this framework's rules (and reject what it rejects); a flag "
        "left out means that framework's default",
    )


def spec_from_args(args: argparse.Namespace) -> tuple[ConvSpec, tuple[int, ...]]:
    """The spec and spatial input size the flags describe."""
    size_text = args.size if args.size is not None else LESSON_EXAMPLE["size"]
    size = parse_size(size_text, "size")
    rank = args.rank or (2 if len(size) == 1 else len(size))
    if len(size) == 1:
        size = size * rank
    if len(size) != rank:
        raise ValueError(f"size {size_text!r} has {len(size)} axes but --rank is {rank}")
    kernel = parse_size(args.kernel, "--kernel", rank)
    strides = parse_size(args.strides, "--strides", rank) if args.strides is not None else None
    dilation = parse_size(args.dilation, "--dilation", rank)
    padding = _parse_padding(args.padding, rank) if args.padding is not None else None
    output_padding = (
        parse_size(args.output_padding, "--output-padding", rank, minimum=0) if args.output_padding else None
    )
    if output_padding is not None and not args.transposed:
        raise ValueError("--output-padding applies to a transposed convolution; add --transposed")
    if args.pool is None and (args.ceil_mode or args.count_include_pad):
        raise ValueError("--ceil-mode and --count-include-pad apply to pooling only (add --pool)")
    # None: not given (the framework's default with --convention, convarith's otherwise)
    fields: dict[str, Any] = dict(
        kernel_size=kernel, strides=strides, dilation=dilation, padding=padding,
        padding_mode=args.padding_mode, groups=args.groups, transposed=args.transposed,
        output_padding=output_padding, pool=args.pool, ceil_mode=args.ceil_mode,
        count_include_pad=args.count_include_pad, rank=rank,
    )
    if args.convention:
        return from_convention(args.convention, fields), size
    return ConvSpec(**{name: value for name, value in fields.items() if value is not None}), size
