"""``ConvSpec.from_onnx_node``: an ``onnx.NodeProto`` in, shapes as onnxruntime computes them."""

from __future__ import annotations

import random

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from convarith import ConvSpec  # noqa: E402
from convarith.io.onnx_node import kernel_from_onnx  # noqa: E402


def ort_shape(node, x_shape, w=None):
    ort = pytest.importorskip("onnxruntime")
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))]
    initializers = [] if w is None else [onnx.numpy_helper.from_array(w, "w")]
    graph = helper.make_graph([node], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": np.zeros(x_shape, np.float32)})[0].shape


def random_node(rng: random.Random):
    op = rng.choice(["Conv", "ConvTranspose", "MaxPool", "AveragePool"])
    k = [rng.randint(1, 3) for _ in range(2)]
    attrs = {"kernel_shape": k, "strides": [rng.randint(1, 3) for _ in range(2)]}
    if rng.random() < 0.5:
        attrs["auto_pad"] = rng.choice([b"SAME_UPPER", "SAME_LOWER", b"VALID"])
    else:
        attrs["pads"] = [rng.randint(0, kk - 1) for kk in k * 2]
    weight = None
    inputs = ["x"]
    if op in ("Conv", "ConvTranspose"):
        weight = np.ones((4, 2, *k), np.float32) if op == "Conv" else np.ones((2, 4, *k), np.float32)
        inputs.append("w")
    return helper.make_node(op, inputs, ["y"], **attrs), weight


@pytest.mark.parametrize("seed", range(12))
def test_node_shapes_match_onnxruntime(seed: int) -> None:
    rng = random.Random(seed)
    node, weight = random_node(rng)
    x_shape = (1, 2, rng.randint(5, 11), rng.randint(5, 11))
    try:
        expected = ort_shape(node, x_shape, weight)
    except Exception as error:  # onnxruntime refuses: so must convarith
        with pytest.raises((ValueError, TypeError)):
            ConvSpec.from_onnx_node(node, input_shape=x_shape, weight=weight).resolve(x_shape[1:])
        pytest.skip(f"seed {seed}: onnxruntime refuses ({type(error).__name__})")
    spec = ConvSpec.from_onnx_node(node, input_shape=x_shape, weight=weight)
    resolved = spec.resolve(x_shape[1:])
    assert resolved.output_size == tuple(expected[2:]), f"seed {seed}: {node}"
    if weight is not None:
        assert resolved.out_channels == expected[1]


def test_conv_accepts_input_shape_and_checks_it() -> None:
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[5, 5])
    assert ConvSpec.from_onnx_node(node, input_shape=(1, 3, 8, 8), weight_shape=(4, 3, 5, 5)).kernel_size == (5, 5)
    with pytest.raises(ValueError):
        ConvSpec.from_onnx_node(node, input_shape=(1, 3, 3, 3), weight_shape=(4, 3, 5, 5))


def test_errors_are_typed() -> None:
    with pytest.raises(TypeError, match="NodeProto"):
        ConvSpec.from_onnx_node({"op_type": "Conv"})
    with pytest.raises(ValueError, match="op_type 'Relu'"):
        ConvSpec.from_onnx_node(helper.make_node("Relu", ["x"], ["y"]))
    with pytest.raises(TypeError, match="input_shape"):
        ConvSpec.from_onnx_node(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2]), input_shape="1x2x8")


def test_kernel_from_onnx_runs_like_onnxruntime() -> None:
    import convarith

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
    x = rng.standard_normal((1, 2, 7, 7)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    spec = ConvSpec.from_onnx_node(node, weight=w)
    ours = convarith.conv(x, kernel_from_onnx(w), spec)
    ort = pytest.importorskip("onnxruntime")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    session = ort.InferenceSession(helper.make_model(graph).SerializeToString(), providers=["CPUExecutionProvider"])
    theirs = session.run(None, {"x": x})[0]
    assert np.linalg.norm(ours - theirs) / np.linalg.norm(theirs) < 1e-5


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool"])
@pytest.mark.parametrize("kernel, dilations, strides, auto_pad", [
    ([1, 3], [2, 1], [2, 1], "SAME_UPPER"), ([1, 1], [3, 2], [2, 2], "SAME_LOWER"),
    ([3, 1], [1, 4], [1, 2], "SAME_UPPER")])
def test_same_pooling_with_a_dilation_that_cannot_matter(op, kernel, dilations, strides, auto_pad) -> None:
    """Dilation on an axis whose kernel is 1 changes nothing: accepted, and exact against onnxruntime."""
    import convarith

    node = helper.make_node(op, ["x"], ["y"], kernel_shape=kernel, dilations=dilations, strides=strides,
                            auto_pad=auto_pad)
    x = np.random.default_rng(0).standard_normal((1, 2, 7, 8)).astype(np.float32)
    ort = pytest.importorskip("onnxruntime")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = convarith.conv(x, None, ConvSpec.from_onnx_node(node))
    np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


def test_same_pooling_with_a_dilation_that_matters_is_refused() -> None:
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], dilations=[2, 1], auto_pad="SAME_UPPER")
    with pytest.raises(ValueError, match="auto_pad"):
        ConvSpec.from_onnx_node(node)


def test_an_onnx_weight_passed_as_is_gets_a_hint() -> None:
    import convarith

    w = np.ones((4, 2, 3, 3), np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3])
    with pytest.raises(ValueError, match="kernel_from_onnx"):
        convarith.conv(np.ones((1, 2, 5, 5), np.float32), w, ConvSpec.from_onnx_node(node, weight=w))


@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_integer_max_pool_keeps_its_dtype_like_onnxruntime(dtype) -> None:
    import convarith

    ort = pytest.importorskip("onnxruntime")
    info = np.iinfo(dtype)
    x = np.random.default_rng(1).integers(info.min, info.max, (1, 3, 9, 8), endpoint=True).astype(dtype)
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 1, 1])
    elem = TensorProto.UINT8 if dtype == np.uint8 else TensorProto.INT8
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", elem, list(x.shape))],
                              [helper.make_tensor_value_info("y", elem, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    theirs = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    ours = convarith.conv(x, None, ConvSpec.from_onnx_node(node))
    assert ours.dtype == theirs.dtype == dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("op", ["AveragePool", "MaxPool"])
@pytest.mark.parametrize("size, kernel, stride, auto_pad", [
    (8, 1, 5, "SAME_UPPER"), (9, 1, 4, "SAME_UPPER"), (10, 2, 6, "SAME_UPPER"), (8, 1, 5, "SAME_LOWER"),
    (11, 2, 7, "SAME_LOWER"), (12, 1, 8, "SAME_LOWER"), (5, 1, 3, "SAME_UPPER"), (7, 3, 2, "SAME_UPPER")])
def test_same_pooling_where_onnx_padding_goes_negative(op, size, kernel, stride, auto_pad) -> None:
    """Where onnxruntime's SAME total is negative: AveragePool crops and equals onnxruntime; MaxPool refused as there."""
    import convarith

    ort = pytest.importorskip("onnxruntime")
    node = helper.make_node(op, ["x"], ["y"], kernel_shape=[kernel], strides=[stride], auto_pad=auto_pad)
    x = np.arange(size, dtype=np.float32).reshape(1, 1, size) ** 1.5
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, size])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    try:
        theirs = ort.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    except Exception:
        theirs = None
    if theirs is None:
        with pytest.raises(ValueError, match="non-negative"):
            ConvSpec.from_onnx_node(node, input_shape=x.shape)
        return
    spec = ConvSpec.from_onnx_node(node, input_shape=x.shape)
    np.testing.assert_allclose(convarith.conv(x, None, spec), theirs, rtol=1e-6)


def test_same_average_pooling_crops_like_onnxruntime_on_random_configs() -> None:
    """Random 1-D and 2-D SAME AveragePools with strides past the kernel (totals often negative), both
    count_include_pad values: convarith's spec for the input size gives onnxruntime's output exactly."""
    import os

    import convarith

    ort = pytest.importorskip("onnxruntime")
    seed = 20261206
    rng = np.random.default_rng(seed)
    cases = 40 if os.environ.get("CI") else 200
    negative = 0
    for case in range(cases):
        rank = int(rng.integers(1, 3))
        kernel = [int(v) for v in rng.integers(1, 4, rank)]
        strides = [int(k + rng.integers(0, 7)) for k in kernel]
        sizes = [int(v) for v in rng.integers(1, 21, rank)]
        auto_pad = str(rng.choice(["SAME_UPPER", "SAME_LOWER"]))
        include = int(rng.integers(0, 2))
        node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=kernel, strides=strides,
                                auto_pad=auto_pad, count_include_pad=include)
        x = rng.random((1, 2, *sizes), dtype=np.float32)
        graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
        theirs = ort.InferenceSession(model.SerializeToString(),
                                      providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        spec = ConvSpec.from_onnx_node(node, input_shape=x.shape)
        negative += any(lo < 0 or hi < 0 for lo, hi in spec.padding) if not isinstance(spec.padding, str) else 0
        context = (f"seed {seed} case {case}: sizes {sizes} kernel {kernel} strides {strides} {auto_pad} "
                   f"count_include_pad={include}")
        ours = convarith.conv(x, None, spec)
        assert ours.shape == theirs.shape, context
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-7, err_msg=context)
    assert negative >= cases // 5  # the crop really was exercised


def test_summary_of_a_cropping_same_average_pool(tmp_path) -> None:
    """The summary reads the crop too: kernel 1, stride 5, SAME_UPPER on 8 cells: onnxruntime's total is
    (2 - 1) * 5 + 1 - 8 = -2, head -1: its windows read cells 1 and 6, so the field of cell 0 starts at 1."""
    import onnx

    from convarith.io import read_model
    from convarith.summary import summarize

    node = helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[1], strides=[5], auto_pad="SAME_UPPER",
                            name="pool")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = tmp_path / "pool.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)]), str(path))
    row = summarize(read_model(path)).row("pool")
    assert row.output_shape == (None, 1, 2) and row.field.start == (1,) and row.field.jump == (5,)
