"""`convarith summary`: shapes and parameter counts against Keras and onnxruntime, the CLI, bad files.

Keras models are built in the test, saved to ``.keras`` and read back with
convarith's reader (``config.json`` only); every layer's output shape must be
Keras's ``layer.output.shape`` and its parameter count ``layer.count_params()``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from convarith.cli import main
from convarith.io import read_model
from convarith.io.layers_file import layers_from_data
from convarith.summary import summarize


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- Keras oracle


def vgg_like(keras):
    return keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Conv2D(16, 3, padding="same", activation="relu"),
        keras.layers.Conv2D(16, 3, padding="same"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(32, 3, padding="same"),
        keras.layers.BatchNormalization(),
        keras.layers.Conv2D(32, 3, padding="valid"),
        keras.layers.MaxPooling2D(3, strides=2, padding="same"),
        keras.layers.Flatten(),
        keras.layers.Dense(64),
        keras.layers.Dropout(0.5),
        keras.layers.Dense(10),
    ])


def resnet_block(keras):
    inputs = keras.Input((30, 30, 8))
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Conv2D(16, 3, padding="same")(x)
    shortcut = keras.layers.Conv2D(16, 1, strides=2)(inputs)
    x = keras.layers.Add()([x, shortcut])
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=2)(x)
    y = keras.layers.SeparableConv2D(8, 3, padding="same")(x)
    z = keras.layers.Conv2D(8, 1)(x)
    x = keras.layers.Concatenate()([y, z])
    x = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def dilated_stack(keras):
    return keras.Sequential([
        keras.Input((64, 2)),
        keras.layers.Conv1D(8, 3, dilation_rate=1, padding="causal"),
        keras.layers.Conv1D(8, 3, dilation_rate=2, padding="causal"),
        keras.layers.Conv1D(8, 3, dilation_rate=4, padding="causal"),
        keras.layers.Conv1D(8, 3, dilation_rate=8, padding="valid"),
        keras.layers.ZeroPadding1D((1, 2)),
        keras.layers.Cropping1D((2, 0)),
        keras.layers.UpSampling1D(2),
        keras.layers.AveragePooling1D(3, strides=2),
    ])


@pytest.mark.oracle
@pytest.mark.parametrize("build", [vgg_like, resnet_block, dilated_stack])
def test_shapes_and_params_match_keras(build, tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    model = build(keras)
    path = tmp_path / "model.keras"
    model.save(path)
    summary = summarize(read_model(path))
    by_name = {row.name: row for row in summary.rows}
    for layer in model.layers:
        row = by_name[layer.name]
        assert row.output_shape == tuple(layer.output.shape), layer.name
        assert row.params == layer.count_params(), layer.name
    assert summary.total_params == model.count_params()


@pytest.mark.oracle
def test_resnet_block_warns_about_the_misaligned_shortcut(tmp_path: Path) -> None:
    keras = pytest.importorskip("keras")
    path = tmp_path / "block.keras"
    resnet_block(keras).save(path)
    summary = summarize(read_model(path))
    add = next(row for row in summary.rows if row.type == "Add")
    # 3x3 'same' stride 2 on 30 pads (0, 1): cell 0 is centred on pixel 1, the 1x1 shortcut's on 0
    assert any("misaligned" in w and "off by" in w for w in add.warnings)
    concat = next(row for row in summary.rows if row.type == "Concatenate")
    assert not concat.warnings
    assert add.field is not None and add.field.jump == (2, 2)


def test_reader_does_not_import_keras(tmp_path: Path) -> None:
    config = {"class_name": "Sequential", "config": {"name": "s", "layers": [
        {"class_name": "InputLayer", "config": {"batch_shape": [None, 28, 28, 1]}},
        {"class_name": "Conv2D", "config": {"name": "c", "filters": 4, "kernel_size": [3, 3],
                                            "strides": [2, 2], "padding": "same"}}]}}
    path = tmp_path / "m.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", json.dumps(config))
    code = ("import sys, convarith.io, convarith.summary as s; "
            f"r = s.summarize(convarith.io.read_model({str(path)!r})); "
            "print(r.rows[-1].output_shape, 'keras' in sys.modules, 'tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(None, 14, 14, 4) False False"


# --------------------------------------------------------------------------- ONNX oracle


@pytest.mark.oracle
def test_onnx_shapes_match_onnxruntime(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def weight(name, *shape):
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1", kernel_shape=[3, 3], strides=[2, 2],
                         auto_pad="SAME_UPPER"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Conv", ["p1", "W2"], ["c2"], name="conv2", kernel_shape=[3, 3], pads=[2, 2, 2, 2],
                         dilations=[2, 2], group=2),
        helper.make_node("Conv", ["p1", "W3"], ["c3"], name="skip", kernel_shape=[1, 1]),
        helper.make_node("Add", ["c2", "c3"], ["a"], name="add"),
        helper.make_node("ConvTranspose", ["a", "W4", "B4"], ["t"], name="up", kernel_shape=[4, 4],
                         strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["t"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "W5", "B5"], ["y"], name="fc", transB=1),
    ]
    inits = [weight("W1", 8, 3, 3, 3), weight("B1", 8), weight("W2", 8, 4, 3, 3), weight("W3", 8, 8, 1, 1),
             weight("W4", 8, 4, 4, 4), weight("B4", 4), weight("W5", 10, 4), weight("B5", 10)]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 37, 40])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "net.onnx"
    onnx.save(model, path)

    probe = onnx.load(path)
    for node in probe.graph.node:
        probe.graph.output.append(helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"x": rng.standard_normal((1, 3, 37, 40)).astype(np.float32)})
    actual = {node.name: out.shape[1:] for node, out in zip(probe.graph.node, outputs[1:])}

    summary = summarize(read_model(path))
    for row in summary.rows[1:]:
        assert row.output_shape is not None and row.output_shape[1:] == actual[row.name], row.name
    assert summary.row("conv2").params == 8 * 4 * 9
    assert summary.total_params == sum(int(np.prod(t.dims)) for t in inits)


# --------------------------------------------------------------------------- layer lists


def test_layer_list_with_branches_and_unknown_type() -> None:
    graph = layers_from_data({"input": [16, 16, 3], "layers": [
        "Conv2D(8, 3, strides=2, padding='same')",
        {"type": "MaxPooling2D", "pool_size": 2, "name": "pool"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 3, "padding": "same", "name": "main"},
        {"type": "Conv2D", "filters": 8, "kernel_size": 1, "name": "skip", "inputs": ["pool"]},
        {"type": "Add", "inputs": ["main", "skip"]},
        {"type": "MysteryNorm"},
        "Conv2D(4, 3)",
    ]})
    summary = summarize(graph)
    assert [row.output_shape for row in summary.rows] == [
        (None, 16, 16, 3), (None, 8, 8, 8), (None, 4, 4, 8), (None, 4, 4, 8), (None, 4, 4, 8),
        (None, 4, 4, 8), (None, 4, 4, 8), (None, 2, 2, 4)]
    # hand counts: 3*3*3*8 + 8 = 224; 3*3*8*8 + 8 = 584; 8*8 + 8 = 72; 3*3*8*4 + 4 = 292
    assert [row.params for row in summary.rows] == [0, 224, 0, 584, 72, 0, 0, 292]
    assert any("MysteryNorm" in w for w in summary.warnings)
    last = summary.rows[-1].field
    assert last is not None and last.jump == (4, 4)


def test_torch_layer_list() -> None:
    graph = layers_from_data({"framework": "torch", "input": [3, 32, 32], "layers": [
        "Conv2d(3, 16, 3, stride=2, padding=1)", "BatchNorm2d(16)", "ReLU()",
        "MaxPool2d(2)", "Flatten()", "Linear(1024, 10)"]})
    summary = summarize(graph)
    assert summary.rows[1].output_shape == (None, 16, 16, 16)
    assert summary.rows[-1].output_shape == (None, 10)
    assert [row.params for row in summary.rows] == [0, 448, 32, 0, 0, 0, 10250]


# --------------------------------------------------------------------------- the command


def write_yaml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "net.yaml"
    path.write_text(text)
    return path


NET = """
name: demo
input: [28, 28, 1]
layers:
  - Conv2D(8, 3, strides=2, padding='same')
  - Conv2D(8, 3, strides=2)
  - {type: Swish3000}
  - {type: Conv2D, filters: 4, kernel_size: 3, padding: same}
"""


def test_cli_table_json_and_png(capsys, tmp_path: Path) -> None:
    pytest.importorskip("yaml")
    path = write_yaml(tmp_path, NET)
    code, out, err = run(capsys, "summary", str(path), "--plain")
    assert code == 0 and err == ""
    assert "(None, 6, 6, 4)" in out and "Swish3000" in out
    assert "drops 1x1 trailing input rows" in out
    code, out, _ = run(capsys, "summary", str(path), "--json")
    data = json.loads(out)
    assert data["layers"][2]["receptive_field"]["size"] == [7, 7]
    assert data["layers"][2]["receptive_field"]["jump"] == [4, 4]
    pytest.importorskip("PIL")
    from PIL import Image

    png = tmp_path / "field.png"
    code, out, _ = run(capsys, "summary", str(path), "--plain", "--png", str(png), "--cell", "1,2")
    assert code == 0 and png.exists()
    image = np.asarray(Image.open(png).convert("RGB"))
    red = np.all(image == (0xE4, 0x57, 0x2E), axis=-1)
    assert red.any()
    code, _, err = run(capsys, "summary", str(path), "--png", str(png), "--cell", "1,2")
    assert code == 2 and "exists" in err  # no silent overwrite
    code, _, err = run(capsys, "summary", str(path), "--png", str(tmp_path / "b.png"), "--cell", "9,0")
    assert code == 2 and "outside" in err and not (tmp_path / "b.png").exists()
    code, out, err = run(capsys, "summary", str(path), "--plain", "--strict")
    assert code == 2 and "(None, 6, 6, 4)" in out and "Swish3000" in err and err.count("\n") == 1


@pytest.mark.parametrize("content, message", [
    (b"this is not a zip", "not a .keras file (not a zip archive)"),
    (b"", "not a .keras file"),
])
def test_corrupt_keras_file_is_a_one_line_error(capsys, tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.keras"
    path.write_bytes(content)
    code, out, err = run(capsys, "summary", str(path))
    assert code == 2 and out == ""
    assert message in err and err.count("\n") == 1


def test_zip_without_config_and_bad_files(capsys, tmp_path: Path) -> None:
    path = tmp_path / "empty.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", "{}")
    code, _, err = run(capsys, "summary", str(path))
    assert code == 2 and "no config.json" in err and err.count("\n") == 1
    code, _, err = run(capsys, "summary", str(tmp_path / "missing.keras"))
    assert code == 2 and "does not exist" in err
    code, _, err = run(capsys, "summary", str(tmp_path / "model.pb"))
    assert code == 2 and "extension" in err
    bad = tmp_path / "net.json"
    bad.write_text(json.dumps({"input": [8, 8, 1], "layers": ["Conv2D(4, 3) + 1"]}))
    code, _, err = run(capsys, "summary", str(bad))
    assert code == 2 and "not a single constructor call" in err and err.count("\n") == 1
