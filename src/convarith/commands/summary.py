"""``convarith summary``: per-layer shapes, parameters, MACs and receptive fields of a model file."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._spec_args import parse_size


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "summary",
        help="per-layer shapes, parameters, MACs and receptive fields of a model file",
        description="Per layer: output shape, parameters, multiply-adds, receptive field size, "
        "jump (effective stride), start offset and dropped rows, with a warning where merged "
        "branches are misaligned. Reads a Keras .keras file (config.json only; Keras is not "
        "imported), an ONNX model (needs the onnx package), or a YAML/JSON list of layers: "
        "{input: [64, 64, 3], layers: [\"Conv2D(32, 3, strides=2, padding='same')\", "
        "{type: MaxPooling2D, pool_size: 2}, {type: Add, inputs: [a, b]}]} with Keras layer names "
        "and arguments (framework: torch for PyTorch's, input channels first); the full format is "
        "in convarith.io.layers_file.",
        epilog="examples: convarith summary model.keras | convarith summary net.yaml --json | "
        "convarith summary model.onnx --png field.png --cell 3,4",
    )
    parser.add_argument("file", help="model file: .keras, .onnx, legacy Keras .h5, .yaml/.yml or .json")
    parser.add_argument("--input", help="spatial input size when the file leaves it open, e.g. 224x224")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--plain", action="store_true", help="plain-text table even if rich is installed")
    parser.add_argument("--png", metavar="OUT", help="draw the receptive field of --cell on the input (PNG)")
    parser.add_argument("--cell", help="output cell for --png, e.g. 3,4 (default: the middle cell)")
    parser.add_argument("--layer", help="layer whose cell --png draws (default: the last spatial one)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite --png's file if it exists")
    parser.add_argument("--max-layers", type=int, metavar="N",
                        help="refuse files with more than N layers/nodes (default 20000)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 2 if a layer type is unknown (the table is still printed)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..limits import limits

    if args.max_layers is not None and args.max_layers < 1:
        raise ValueError(f"--max-layers must be a positive integer, got {args.max_layers}")
    if args.max_layers is not None:
        with limits(max_model_layers=args.max_layers):
            return _run(args)
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ..io import read_model
    from ..summary import draw_field, summarize

    size = parse_size(args.input, "--input") if args.input else None
    model = read_model(args.file, size)
    summary = summarize(model, size)
    if args.png:
        row = summary.row(args.layer) if args.layer else next(
            (r for r in reversed(summary.rows) if r.field is not None and r.output_shape is not None
             and len(r.output_shape) > 2), None)
        if row is None or row.output_shape is None:
            raise ValueError("no layer with spatial axes to draw a receptive field for")
        if args.cell:
            cell = tuple(_cell(args.cell))
        else:
            spatial = row.output_shape[1:-1] if summary.data_format == "channels_last" else row.output_shape[2:]
            cell = tuple(((n or 1) - 1) // 2 for n in spatial)
        draw_field(summary, cell, args.png, layer=row.name, force=args.force)
    if args.json:
        print(json.dumps(summary.to_dict(), indent=2))
    elif args.plain or not sys.stdout.isatty():  # rich squeezes its table into a pipe
        print(summary)
    else:
        summary.print_rich()
    if args.png and not args.json:
        print(f"receptive field of cell {','.join(map(str, cell))} drawn to {args.png}")
    unknown = sorted({layer.type for layer in model.layers if layer.kind == "unknown"})
    if args.strict and unknown:
        print(f"convarith summary: error: unknown layer type(s) {', '.join(unknown)} (assumed to keep "
              "their input's shape above)", file=sys.stderr)
        return 2
    return 0


def _cell(text: str) -> list[int]:
    parts = text.replace("x", ",").split(",")
    if not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--cell must be non-negative integers separated by commas (e.g. 3,4), got {text!r}")
    return [int(p) for p in parts]
