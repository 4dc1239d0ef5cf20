"""``convarith solve``: which kernel, stride, padding and dilation turn one size into another."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import Any

from ..arithmetic import check_int, solve
from ._spec_args import parse_size


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "solve",
        help="every (kernel, stride, padding, dilation) that turns a size into a target",
        description="Every (kernel, stride, padding, dilation) within bounds that turns the "
        "input size into the target size, with the smallest padding for each.",
        epilog="example: convarith solve 28 --to 14 --max-kernel 5",
    )
    parser.add_argument("size", help="input size along one axis, e.g. 28")
    parser.add_argument("--to", required=True, help="target output size")
    parser.add_argument("--max-kernel", type=int, default=7, help="largest kernel (default 7)")
    parser.add_argument("--max-stride", type=int, default=4, help="largest stride (default 4)")
    parser.add_argument("--max-dilation", type=int, default=1, help="largest dilation (default 1)")
    parser.add_argument("--max-padding", type=int, help="largest padding per side (default: any needed)")
    parser.add_argument("--symmetric", action="store_true", help="equal padding on both sides only")
    parser.add_argument("--json", action="store_true", help="print the configurations as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    size, target = _one_axis(args.size, "size"), _one_axis(args.to, "--to")
    for name in ("max_kernel", "max_stride", "max_dilation", "max_padding"):
        if getattr(args, name) is not None:
            check_int(f"--{name.replace('_', '-')}", getattr(args, name), 0 if name == "max_padding" else 1)
    if size < 1 or target < 1:
        raise ValueError(f"sizes must be positive, got {size} -> {target}")
    found = solve(size, target, args.max_kernel, args.max_stride, args.max_dilation,
                  args.max_padding, args.symmetric)
    if args.json:
        # an empty list, and exit status 1 as in the text form: nothing turns size into target
        print(json.dumps([asdict(s) for s in found], indent=2))
        return 0 if found else 1
    if not found:
        print(f"no configuration within the bounds turns {size} into {target}")
        return 1
    headers = ("kernel", "stride", "dilation", "padding (lo, hi)", "dropped rows", "note")
    rows = []
    for s in found:
        lo, hi = s.padding
        note = "'valid'" if lo == hi == 0 else ("symmetric" if lo == hi else "odd pixel at the end, as Keras 'same'" if hi == lo + 1 else "")
        rows.append((s.kernel, s.stride, s.dilation, f"({lo}, {hi})", s.dropped or "", note))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    print(f"{len(found)} configuration{'s turn' if len(found) > 1 else ' turns'} {size} into {target}:\n")
    print("  ".join(str(h).ljust(w) for h, w in zip(headers, widths)).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    return 0


def _one_axis(text: str, name: str) -> int:
    values = parse_size(text, name)
    if len(values) != 1:
        raise ValueError(f"{name} is one axis (the solver works per axis), got {text!r}; "
                         "solve each axis on its own, e.g. convarith solve 28 --to 14")
    return values[0]
