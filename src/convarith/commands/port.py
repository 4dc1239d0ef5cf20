"""``convarith port``: code for another framework that reproduces a layer's exact numbers."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._spec_args import parse_size


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "port",
        help="translate a conv/pool layer between Keras, PyTorch, JAX and ONNX, exactly",
        description="Write code for the target framework that computes exactly what the source "
        "layer computes, padding it explicitly where the target cannot say the same thing (e.g. "
        "Keras 'same' with stride 2 on an even input pads (0, 1), which PyTorch's symmetric padding "
        "cannot). The layer is one constructor call with literal arguments, read safely (never "
        "evaluated). The code reads `kernel` and `bias` in the source layout and defines forward(x).",
        epilog="examples: convarith port --from keras \"Conv2D(32, 3, strides=2, padding='same')\" "
        "--to torch --input 28x28 | convarith port --from torch \"Conv2d(3, 8, 3, stride=2, "
        "dilation=2)\" --to keras --input 3x32x32",
    )
    parser.add_argument("layer", help="the source layer, e.g. \"Conv2D(32, 3, strides=2, padding='same')\"")
    parser.add_argument("--from", dest="source", required=True, choices=("keras", "torch", "jax", "onnx"))
    parser.add_argument("--to", dest="target", required=True, choices=("torch", "keras", "jax", "onnx"))
    parser.add_argument("--input", required=True,
                        help="input size: 28 (square), 28x28 (spatial), or with channels in the source layout "
                        "(28x28x3 for Keras, 3x28x28 for PyTorch)")
    parser.add_argument("--channels", type=int,
                        help="input channels, if --input does not include them (default 3)")
    parser.add_argument("--json", action="store_true", help="print code, summary and notes as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..port import port_text, spec_from_text

    shape = parse_size(args.input, "--input")
    if len(shape) == 1:  # one number is a square (cubic) input, as in `convarith shape 28`
        shape = shape * spec_from_text(args.layer, args.source)[0].rank
    ported = port_text(args.layer, args.source, args.target, shape, in_channels=args.channels)
    if args.json:
        print(json.dumps(ported.to_dict(), indent=2))
    else:
        print(ported.code, end="")
    return 0
