"""`convarith summary` on the model-zoo networks the onnx wheel ships, read as they ship.

The nine ``light_*.onnx`` models (AlexNet, VGG-19, ResNet-50, Inception v1/v2,
DenseNet-121, SqueezeNet, ShuffleNet, ZFNet-512) hold their weights as
``ConstantOfShape`` nodes, reshape with constant shape tensors, and scale with
``Unsqueeze``-d weights. The references come from outside convarith:

* the final output shape is the one of the reference output tensor shipped
  beside each model (``light_*_output_0.pb``, produced by the real network);
* the parameter count is the number of floating-point weight values the file
  describes (float initializers some node reads, plus every float
  ``ConstantOfShape``);
* the multiply-adds are counted from ONNX's own shape inference: for every
  Conv, output cells times ``C_in/groups * prod(kernel)``, for every Gemm
  ``M * N * K``.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import numpy_helper, shape_inference  # noqa: E402

from convarith.cli import main  # noqa: E402
from convarith.io import read_model  # noqa: E402
from convarith.summary import summarize  # noqa: E402

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
MODELS = ["bvlc_alexnet", "vgg19", "resnet50", "inception_v1", "inception_v2", "densenet121",
          "squeezenet", "shufflenet", "zfnet512"]


def model_path(name: str) -> Path:
    path = LIGHT / f"light_{name}.onnx"
    if not path.exists():
        pytest.skip(f"{path} is not shipped with this onnx")
    return path


def reference_output_shape(name: str) -> tuple[int, ...]:
    tensor = onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb"))
    return tuple(int(d) for d in tensor.dims)


def reference_params(model) -> int:
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16}
    initializers = {t.name: t for t in model.graph.initializer}
    read = {name for node in model.graph.node for name in node.input}
    total = sum(math.prod(t.dims) for t in model.graph.initializer if t.data_type in floats and t.name in read)
    for node in model.graph.node:
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            if value is None or value.data_type in floats:
                total += int(np.prod(numpy_helper.to_array(initializers[node.input[0]])))
    return total


def reference_macs(model) -> int:
    inferred = shape_inference.infer_shapes(model)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)}
    initializers = {t.name: t for t in model.graph.initializer}

    def weight_shape(name):
        for node in model.graph.node:
            if node.op_type == "ConstantOfShape" and node.output[0] == name:
                return [int(v) for v in numpy_helper.to_array(initializers[node.input[0]])]
        return list(initializers[name].dims)

    total = 0
    for node in model.graph.node:
        if node.op_type == "Conv":
            groups = next((a.i for a in node.attribute if a.name == "group"), 1)
            weight = weight_shape(node.input[1])
            out = shapes[node.output[0]]
            total += math.prod(out[1:]) * weight[1] * math.prod(weight[2:])
            assert weight[0] % groups == 0
        elif node.op_type == "Gemm":
            a, out = shapes[node.input[0]], shapes[node.output[0]]
            total += math.prod(out) * a[1]
    return total


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_summarises_as_shipped(name: str) -> None:
    path = model_path(name)
    start = time.perf_counter()
    summary = summarize(read_model(path))
    elapsed = time.perf_counter() - start
    model = onnx.load(str(path))
    final = summary.rows[-1]
    # the shapes keep the batch axis (None); the shipped output has the file's batch of 1
    assert final.output_shape[0] is None and final.output_shape[1:] == reference_output_shape(name)[1:], (name, final)
    assert summary.total_params == reference_params(model), name
    assert summary.total_macs == reference_macs(model), name
    assert not [w for w in summary.warnings if "unknown" in w], summary.warnings
    limit = 30 if os.environ.get("CI") else 10  # DenseNet-121 takes about 2 s on a quiet core
    assert elapsed < limit, (name, elapsed)


def test_alexnet_flattening_reshape_feeds_one_gemm(capsys) -> None:
    path = model_path("bvlc_alexnet")
    assert main(["summary", str(path), "--plain"]) == 0
    out = capsys.readouterr().out
    summary = summarize(read_model(path))
    reshape = next(r for r in summary.rows if r.type == "Reshape")
    assert reshape.output_shape == (None, 256 * 6 * 6)
    gemm = next(r for r in summary.rows if r.type == "Gemm")
    assert gemm.macs == 9216 * 4096  # once, not per position
    # pool5 of the BVLC AlexNet at 224: field 195, jump 32 (conv1 11/4, pool 3/2, conv2 5 pad 2, ...)
    pool5 = [r for r in summary.rows if r.type == "MaxPool"][-1]
    assert pool5.field.size == (195, 195) and pool5.field.jump == (32, 32)
    assert "Total params: 60,965,224" in out


def test_shufflenet_channel_shuffle_keeps_the_receptive_field() -> None:
    summary = summarize(read_model(model_path("shufflenet")))
    rows = list(summary.rows)
    for index, row in enumerate(rows):
        if row.type == "Transpose":
            before, after = rows[index - 2], rows[index + 1]  # Reshape, Transpose, Reshape
            assert before.field == row.field == after.field and row.field is not None
            assert len(row.output_shape) == 5 and after.output_shape == before.output_shape[:1] + (
                row.output_shape[1] * row.output_shape[2], *row.output_shape[3:])


def test_input_size_is_passed_to_shape_inference() -> None:
    summary = summarize(read_model(model_path("squeezenet"), (320, 320)), (320, 320))
    assert summary.input_size == (320, 320)
    conv1 = next(r for r in summary.rows if r.type == "Conv")
    assert conv1.output_shape[2:] == (159, 159)  # 7x7 stride 2 valid on 320


def test_layer_limit_is_settable_from_the_cli(capsys) -> None:
    path = model_path("densenet121")
    assert main(["summary", str(path), "--max-layers", "100"]) == 2
    err = capsys.readouterr().err
    assert "max_model_layers=100" in err and "--max-layers" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("name", ["squeezenet", "densenet121", "shufflenet"])
def test_final_shape_is_onnxruntimes_with_the_batch_axis(name: str, capsys) -> None:
    ort = pytest.importorskip("onnxruntime")
    path = model_path(name)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    declared = session.get_inputs()[0]
    batch = np.random.default_rng(0).random(declared.shape, dtype=np.float32)
    (real,) = session.run(None, {declared.name: batch})[:1]
    summary = summarize(read_model(path))
    shown = summary.rows[-1].output_shape
    assert shown is not None and shown[0] is None
    assert (declared.shape[0], *shown[1:]) == real.shape  # (1, 1000, 1, 1) for DenseNet and SqueezeNet
    assert main(["summary", str(path), "--plain"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "Output shapes include the batch axis, first, shown as None (any batch size)"
    assert f"({', '.join(['None', *map(str, real.shape[1:])])})" in next(line for line in out if line.startswith(
        summary.rows[-1].name + " "))


def test_densenet_summary_process_imports_little_and_is_quick() -> None:
    """`convarith summary light_densenet121.onnx` as a process: no torch, JAX, Keras or onnxruntime is
    imported, and its CPU time (a busy machine stretches wall time, not CPU time) stays under 3 s."""
    import resource
    import subprocess
    import sys

    path = model_path("densenet121")
    probe = ("import sys, io, contextlib\nfrom convarith.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             f"    code = main(['summary', {str(path)!r}, '--plain'])\n"
             "heavy = {'torch', 'jax', 'keras', 'onnxruntime', 'tensorflow', 'numba', 'llvmlite', 'starlette'}\n"
             "print(code, sorted({m.split('.')[0] for m in sys.modules} & heavy))\n")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")})
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert done.stdout.split() == ["0", "[]"], (done.stdout, done.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < (6 if os.environ.get("CI") else 3), cpu
