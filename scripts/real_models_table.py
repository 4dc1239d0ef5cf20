"""Regenerate docs/real-models.md: `convarith summary` on real models as they ship, against references.

For the nine model-zoo networks the ``onnx`` wheel ships (``light_*.onnx``) and
six ``keras.applications`` (built with ``weights=None`` at their default input
size, saved as a ``.keras`` archive holding ``metadata.json`` and
``config.json`` -- the summary reads nothing else), it runs

    /usr/bin/time -v python -m convarith.cli summary FILE --json

and records the wall time and peak resident memory of that whole process
(interpreter start and imports included), the final shape, total parameters,
multiply-adds and the receptive field of the last feature map (the last layer
with spatial axes). References come from outside convarith:

* ONNX: the final shape of the reference output shipped beside each model
  (``light_*_output_0.pb``); parameters = float values of the weights the file
  describes; MACs from ONNX's own shape inference (Conv: output cells times
  ``C_in/group * prod(kernel)``; Gemm: ``M * N * K``);
* Keras: ``model.output.shape``, ``model.count_params()``, and MACs from the
  layers' output shapes and kernel shapes (convolutions: output positions times
  the kernel's size; Dense: positions times its kernel's size).

Usage: ``python scripts/real_models_table.py [--out docs/real-models.md] [--only NAME ...]``
(needs onnx; keras for the applications; about a minute on a quiet machine).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ZOO = ["bvlc_alexnet", "vgg19", "resnet50", "inception_v1", "inception_v2", "densenet121",
       "squeezenet", "shufflenet", "zfnet512"]
KERAS_APPS = ["MobileNetV2", "ResNet50", "EfficientNetB0", "DenseNet121", "InceptionV3", "VGG16"]


def run_summary(path: Path) -> tuple[dict[str, Any], float, float, float]:
    """(summary JSON, wall seconds, CPU seconds, peak RSS in MiB) of one `convarith summary` process."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    done = subprocess.run(["/usr/bin/time", "-v", sys.executable, "-m", "convarith.cli", "summary", str(path),
                           "--json"], capture_output=True, text=True, env=env, check=True)
    wall_text = re.search(r"Elapsed \(wall clock\) time .*: (\S+)", done.stderr)
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", done.stderr)
    user = re.search(r"User time \(seconds\): (\S+)", done.stderr)
    system = re.search(r"System time \(seconds\): (\S+)", done.stderr)
    assert wall_text and peak and user and system, done.stderr
    parts = [float(p) for p in wall_text.group(1).split(":")]
    wall = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    cpu = float(user.group(1)) + float(system.group(1))
    return json.loads(done.stdout), wall, cpu, int(peak.group(1)) / 1024


def last_feature_map(summary: dict[str, Any]) -> str:
    """The receptive field of the last layer whose output still has a spatial axis longer than 1."""
    for layer in reversed(summary["layers"]):
        shape, field = layer["output_shape"], layer["receptive_field"]
        spatial = shape[2:] if summary["data_format"] == "channels_first" else shape[1:-1] if shape else []
        if field and any(v > 1 for v in spatial):
            size, jump, start = (field[k] for k in ("size", "jump", "start"))
            return (f"{layer['name']}: {'x'.join(map(str, size))}, jump {'x'.join(map(str, jump))}, "
                    f"start {'x'.join(map(str, start))}")
    return "-"


# --------------------------------------------------------------------------- ONNX references


def onnx_references(name: str, light: Path) -> tuple[tuple[int, ...], int, int]:
    import numpy as np
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(light / f"light_{name}.onnx"))
    shape = tuple(int(d) for d in onnx.load_tensor(str(light / f"light_{name}_output_0.pb")).dims)
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    initializers = {t.name: t for t in model.graph.initializer}
    read = {i for node in model.graph.node for i in node.input}
    params = sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats and t.name in read)
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is None or value.data_type in floats:
                params += int(np.prod(numpy_helper.to_array(initializers[node.input[0]])))
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    constant_shapes = {node.output[0]: [int(v) for v in numpy_helper.to_array(initializers[node.input[0]])]
                       for node in model.graph.node if node.op_type == "ConstantOfShape"}
    macs = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            weight = constant_shapes.get(node.input[1]) or list(initializers[node.input[1]].dims)
            macs += math.prod(shapes[node.output[0]][1:]) * weight[1] * math.prod(weight[2:])
        elif node.op_type == "Gemm":
            macs += math.prod(shapes[node.output[0]]) * shapes[node.input[0]][1]
    return shape, params, macs


# --------------------------------------------------------------------------- Keras references


def keras_archive(name: str, folder: Path) -> tuple[Path, tuple[Any, ...], int, int]:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    model = getattr(keras.applications, name)(weights=None)
    path = folder / f"{name}.keras"
    config = keras.saving.serialize_keras_object(model)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": keras.__version__}))
        archive.writestr("config.json", json.dumps(config))
    macs = 0
    for layer in model.layers:
        kind = type(layer).__name__
        out = tuple(layer.output.shape)
        positions = math.prod(out[1:-1]) if len(out) > 2 else 1
        if kind in ("Conv2D", "DepthwiseConv2D", "Dense"):
            macs += positions * math.prod(layer.weights[0].shape)
        elif kind == "SeparableConv2D":
            macs += positions * (math.prod(layer.weights[0].shape) + math.prod(layer.weights[1].shape))
    return path, tuple(model.output.shape), model.count_params(), macs


# --------------------------------------------------------------------------- the table


def row(name: str, source: str, path: Path, shape: tuple[Any, ...], params: int, macs: int) -> str:
    summary, wall, cpu, peak = run_summary(path)
    final = summary["layers"][-1]["output_shape"]
    shown = "(" + ", ".join("None" if v is None else str(v) for v in final) + ")"
    reference = "(" + ", ".join("None" if v is None else str(v) for v in shape) + ")"
    same = (final[1:] == list(shape)[1:], summary["total_params"] == params, summary["total_macs"] == macs)
    mark = ["=" if ok else "**differs**" for ok in same]
    print(f"{name}: {wall:.2f} s wall, {cpu:.2f} s CPU, {peak:.0f} MiB", file=sys.stderr)
    return (f"| {name} | {source} | {'x'.join(map(str, summary['input_size']))} | {wall:.2f} | {cpu:.2f} | {peak:.0f} | "
            f"{shown} {mark[0]} {reference} | {summary['total_params']:,} {mark[1]} {params:,} | "
            f"{summary['total_macs']:,} {mark[2]} {macs:,} | {last_feature_map(summary)} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "real-models.md"))
    parser.add_argument("--only", nargs="*", help="model names to run (default: all fifteen)")
    args = parser.parse_args(argv)
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    lines = []
    with tempfile.TemporaryDirectory() as folder:
        for name in ZOO:
            if args.only and name not in args.only:
                continue
            shape, params, macs = onnx_references(name, light)
            lines.append(row(name, "ONNX zoo (onnx wheel)", light / f"light_{name}.onnx", shape, params, macs))
        for name in KERAS_APPS:
            if args.only and name not in args.only:
                continue
            path, shape, params, macs = keras_archive(name, Path(folder))
            lines.append(row(name, "keras.applications", path, shape, params, macs))
    header = [
        "| model | source | input | wall s | CPU s | peak MiB | final shape (convarith vs reference) | "
        "params (convarith vs reference) | MACs (convarith vs reference) | receptive field of the last feature map |",
        "|---|---|---|---:|---:|---:|---|---|---|---|",
    ]
    text = Path(args.out).read_text() if Path(args.out).exists() else ""
    begin, end = "<!-- table begin -->", "<!-- table end -->"
    table = "\n".join([begin, *header, *lines, end])
    if begin in text and end in text:
        text = text[:text.index(begin)] + table + text[text.index(end) + len(end):]
    else:
        text = text + "\n" + table + "\n"
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
