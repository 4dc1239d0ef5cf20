"""Every emitted port snippet is executed in the target framework and compared with the source.

Random layers are written as the source framework's constructor text, run in
the source framework (Keras 3 on JAX, PyTorch, onnxruntime) on a random input,
ported with :func:`convarith.port.port_text`, and the snippet is executed with
the source's own weights. Outputs must agree to float32 tolerance
(relative error <= 1e-5).

Each direction runs ``CONVARITH_PORT_CONFIGS`` configurations (default 20 to
keep the suite fast; CI's full run sets 300). Configurations the target cannot
express must raise :class:`~convarith.port.PortError` with an explanation;
they are counted apart and do not count towards the total.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from _helpers import relative_error as rel_error
from convarith.port import PortError, port_text

pytestmark = pytest.mark.oracle

CONFIGS = int(os.environ.get("CONVARITH_PORT_CONFIGS", "20"))
TOLERANCE = 1e-5


def to_first(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, -1, 1))


def to_last(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 1, -1))


def execute(code: str, kernel: np.ndarray | None, bias: np.ndarray | None) -> Callable[[Any], Any]:
    namespace: dict[str, Any] = {"kernel": kernel, "bias": bias}
    exec(compile(code, "<port>", "exec"), namespace)
    return namespace["forward"]


def ints(rng: random.Random, rank: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(rng.randint(low, high) for _ in range(rank))


def lit(values: tuple[int, ...], rng: random.Random) -> Any:
    """Sometimes one int (broadcast), sometimes a tuple: both spellings get exercised."""
    if len(set(values)) == 1 and rng.random() < 0.5:
        return values[0]
    return values


# --------------------------------------------------------------------------- Keras source


def keras_config(rng: random.Random) -> tuple[str, tuple[int, ...]]:
    """(constructor text, NHWC input shape without batch)."""
    kind = rng.choice(["Conv", "Conv", "Conv", "ConvTranspose", "ConvTranspose", "DepthwiseConv",
                       "MaxPooling", "AveragePooling"])
    rank = rng.choice([1, 2, 2, 2, 3]) if kind != "DepthwiseConv" else rng.choice([1, 2])
    if rank == 3:
        size = ints(rng, rank, 3, 6)
    else:
        size = ints(rng, rank, 3, 11)
    channels = rng.choice([1, 2, 3, 4])
    kernel = ints(rng, rank, 1, 4)
    strides = ints(rng, rank, 1, 3)
    dilation = (1,) * rank
    if rng.random() < 0.35 and kind not in ("MaxPooling", "AveragePooling"):
        dilation = ints(rng, rank, 1, 3)
        if kind in ("Conv", "ConvTranspose"):
            strides = (1,) * rank
    padding = rng.choice(["valid", "same"])
    if kind == "Conv" and rank == 1 and rng.random() < 0.3:
        padding = "causal"
    name = {"Conv": f"Conv{rank}D", "ConvTranspose": f"Conv{rank}DTranspose",
            "DepthwiseConv": f"DepthwiseConv{rank}D", "MaxPooling": f"MaxPooling{rank}D",
            "AveragePooling": f"AveragePooling{rank}D"}[kind]
    use_bias = rng.random() < 0.8
    if kind in ("MaxPooling", "AveragePooling"):
        text = f"{name}({lit(kernel, rng)!r}, strides={lit(strides, rng)!r}, padding={padding!r})"
    elif kind == "DepthwiseConv":
        text = (f"{name}({lit(kernel, rng)!r}, strides={lit(strides, rng)!r}, padding={padding!r}, "
                f"depth_multiplier={rng.choice([1, 2])}, dilation_rate={lit(dilation, rng)!r}, "
                f"use_bias={use_bias})")
    elif kind == "ConvTranspose":
        filters = rng.choice([1, 2, 3, 5])
        output_padding = None
        if rng.random() < 0.3:
            output_padding = tuple(rng.randrange(s) for s in strides)
        text = (f"{name}({filters}, {lit(kernel, rng)!r}, strides={lit(strides, rng)!r}, "
                f"padding={padding!r}, output_padding={output_padding!r}, "
                f"dilation_rate={lit(dilation, rng)!r}, use_bias={use_bias})")
    else:
        groups = rng.choice([g for g in (1, 2, 3) if channels % g == 0])
        filters = groups * rng.choice([1, 2, 3])
        text = (f"{name}({filters}, {lit(kernel, rng)!r}, strides={lit(strides, rng)!r}, "
                f"padding={padding!r}, dilation_rate={lit(dilation, rng)!r}, groups={groups}, "
                f"use_bias={use_bias})")
    return text, (*size, channels)


def run_keras(text: str, shape: tuple[int, ...], rng: np.random.Generator):
    import keras

    from convarith.port import parse_layer

    parsed = parse_layer(text, "keras")
    layer = getattr(keras.layers, parsed.name)(**parsed.kwargs)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    layer.build(x.shape)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in layer.get_weights()]
    layer.set_weights(weights)
    y = np.asarray(layer(x))
    kernel = weights[0] if weights else None
    bias = weights[1] if len(weights) > 1 else None
    return x, y, kernel, bias


def check_direction(source_config, run_source, source, target, seed0: int,
                    count: int | None = None) -> dict[str, int]:
    count = CONFIGS if count is None else count
    executed = inexpressible = skipped = 0
    attempt = 0
    while executed < count:
        attempt += 1
        assert attempt < count * 20, "too many configurations skipped"
        seed = seed0 + attempt
        rng = random.Random(seed)
        text, shape = source_config(rng)
        try:
            x, y, kernel, bias = run_source(text, shape, np.random.default_rng(seed))
        except (ValueError, TypeError):
            skipped += 1  # the source framework itself rejects it (e.g. kernel larger than input)
            continue
        if y.size == 0:
            skipped += 1
            continue
        try:
            ported = port_text(text, source, target, shape)
        except PortError as error:
            message = str(error)
            assert len(message) > 40 and "\n" not in message, message
            inexpressible += 1
            continue
        forward = execute(ported.code, kernel, bias)
        source_first = source in ("torch", "onnx")
        target_first = target in ("torch", "onnx")
        xt = x if source_first == target_first else (to_first(x) if target_first else to_last(x))
        if target == "torch":
            import torch

            out = forward(torch.from_numpy(xt)).detach().numpy()
        else:
            out = np.asarray(forward(xt))
        if source_first != target_first:
            out = to_last(out) if target_first else to_first(out)
        error = rel_error(out, y)
        assert error <= TOLERANCE, (
            f"seed {seed}: {source} {text} on {shape} -> {target}: relative error {error:.2e}\n"
            f"{ported.code}")
        executed += 1
    print(f"{source}->{target}: {executed} executed, {inexpressible} inexpressible (explained), "
          f"{skipped} rejected by {source}")
    return {"executed": executed, "inexpressible": inexpressible}


def test_keras_to_torch() -> None:
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    check_direction(keras_config, run_keras, "keras", "torch", 1000)


def test_keras_to_jax() -> None:
    pytest.importorskip("keras")
    pytest.importorskip("jax")
    check_direction(keras_config, run_keras, "keras", "jax", 2000)


# --------------------------------------------------------------------------- PyTorch source


def torch_config(rng: random.Random) -> tuple[str, tuple[int, ...]]:
    """(constructor text, NCHW input shape without batch)."""
    kind = rng.choice(["Conv", "Conv", "Conv", "ConvTranspose", "ConvTranspose", "MaxPool", "AvgPool"])
    rank = rng.choice([1, 2, 2, 2, 3])
    size = ints(rng, rank, 3, 6) if rank == 3 else ints(rng, rank, 3, 11)
    channels = rng.choice([1, 2, 3, 4])
    kernel = ints(rng, rank, 1, 4)
    strides = ints(rng, rank, 1, 3)
    dilation = ints(rng, rank, 1, 3) if rng.random() < 0.35 else (1,) * rank
    name = f"{kind}{rank}d"
    if kind == "MaxPool":
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        padding = tuple(rng.randint(0, e // 2) for e in eff)
        text = (f"{name}({lit(kernel, rng)!r}, stride={lit(strides, rng)!r}, padding={lit(padding, rng)!r}, "
                f"dilation={lit(dilation, rng)!r}, ceil_mode={rng.random() < 0.3})")
        return text, (channels, *size)
    if kind == "AvgPool":
        padding = tuple(rng.randint(0, k // 2) for k in kernel)
        text = (f"{name}({lit(kernel, rng)!r}, stride={lit(strides, rng)!r}, padding={lit(padding, rng)!r}, "
                f"ceil_mode={rng.random() < 0.3}, count_include_pad={rng.random() < 0.5})")
        return text, (channels, *size)
    groups = rng.choice([g for g in (1, 2, 3) if channels % g == 0])
    out = groups * rng.choice([1, 2, 3])
    bias = rng.random() < 0.8
    if kind == "ConvTranspose":
        padding = ints(rng, rank, 0, 2)
        output_padding = tuple(rng.randrange(max(s, d)) for s, d in zip(strides, dilation))
        text = (f"{name}({channels}, {out}, {lit(kernel, rng)!r}, stride={lit(strides, rng)!r}, "
                f"padding={lit(padding, rng)!r}, output_padding={lit(output_padding, rng)!r}, "
                f"groups={groups}, bias={bias}, dilation={lit(dilation, rng)!r})")
        return text, (channels, *size)
    if rng.random() < 0.2:
        strides = (1,) * rank
        padding_text: Any = rng.choice(["same", "valid"])
    else:
        padding_text = lit(ints(rng, rank, 0, 2), rng)
    mode = rng.choice(["zeros", "zeros", "zeros", "reflect", "replicate", "circular"])
    text = (f"{name}({channels}, {out}, {lit(kernel, rng)!r}, stride={lit(strides, rng)!r}, "
            f"padding={padding_text!r}, dilation={lit(dilation, rng)!r}, groups={groups}, bias={bias}, "
            f"padding_mode={mode!r})")
    return text, (channels, *size)


def run_torch(text: str, shape: tuple[int, ...], rng: np.random.Generator):
    import torch

    from convarith.port import parse_layer

    parsed = parse_layer(text, "torch")
    module = getattr(torch.nn, parsed.name)(**parsed.kwargs)
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    kernel = bias = None
    with torch.no_grad():
        if hasattr(module, "weight"):
            kernel = rng.standard_normal(tuple(module.weight.shape)).astype(np.float32)
            module.weight.copy_(torch.from_numpy(kernel))
            if module.bias is not None:
                bias = rng.standard_normal(tuple(module.bias.shape)).astype(np.float32)
                module.bias.copy_(torch.from_numpy(bias))
        try:
            y = module(torch.from_numpy(x)).numpy()
        except RuntimeError as error:  # PyTorch's size checks at call time
            raise ValueError(str(error)) from None
    return x, y, kernel, bias


def test_torch_to_keras() -> None:
    pytest.importorskip("keras")
    pytest.importorskip("torch")
    check_direction(torch_config, run_torch, "torch", "keras", 3000)


# --------------------------------------------------------------------------- ONNX source


def onnx_config(rng: random.Random) -> tuple[str, tuple[int, ...]]:
    op = rng.choice(["Conv", "Conv", "Conv", "ConvTranspose", "ConvTranspose", "MaxPool", "AveragePool"])
    rank = rng.choice([1, 2, 2, 2, 3])
    size = ints(rng, rank, 3, 6) if rank == 3 else ints(rng, rank, 3, 11)
    channels = rng.choice([1, 2, 3, 4])
    kernel = list(ints(rng, rank, 1, 4))
    strides = list(ints(rng, rank, 1, 3))
    dilations = list(ints(rng, rank, 1, 3)) if rng.random() < 0.35 else [1] * rank
    auto_pad = rng.choice(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
    attrs: dict[str, Any] = {"kernel_shape": kernel, "strides": strides}
    if op in ("MaxPool", "AveragePool"):
        if auto_pad == "NOTSET":
            attrs["pads"] = [rng.randint(0, k - 1) for k in kernel] + [rng.randint(0, k - 1) for k in kernel]
        else:
            attrs["auto_pad"] = auto_pad
        attrs["ceil_mode"] = int(rng.random() < 0.3)
        if op == "MaxPool":
            # auto_pad with dilation: onnxruntime pads as if undilated, which convarith refuses
            attrs["dilations"] = dilations if auto_pad == "NOTSET" else [1] * rank
        else:
            attrs["count_include_pad"] = int(rng.random() < 0.5)
        return f"{op}({', '.join(f'{k}={v!r}' for k, v in attrs.items())})", (channels, *size)
    groups = rng.choice([g for g in (1, 2, 3) if channels % g == 0])
    out = groups * rng.choice([1, 2, 3])
    attrs["dilations"] = dilations
    attrs["group"] = groups
    if op == "Conv":
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") and max(dilations) > 1:
            auto_pad = "NOTSET"
        attrs["weight_shape"] = [out, channels // groups, *kernel]
    else:
        attrs["weight_shape"] = [channels, out // groups, *kernel]
        attrs["output_padding"] = [rng.randrange(max(s, d)) for s, d in zip(strides, dilations)]
    if auto_pad == "NOTSET":
        high = 2
        attrs["pads"] = [rng.randint(0, high) for _ in range(2 * rank)]
    else:
        attrs["auto_pad"] = auto_pad
    attrs["bias"] = rng.random() < 0.8
    return f"{op}({', '.join(f'{k}={v!r}' for k, v in attrs.items())})", (channels, *size)


def run_onnx(text: str, shape: tuple[int, ...], rng: np.random.Generator):
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from convarith.port import parse_layer

    parsed = parse_layer(text, "onnx")
    attrs = dict(parsed.kwargs)
    if attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID") and not attrs.get("ceil_mode"):
        # a window longer than the padded input: onnxruntime's size formula truncates toward zero
        # and returns one cell, convarith (like PyTorch) rejects it; not a porting question
        rank = len(attrs["kernel_shape"])
        pads = attrs.get("pads") or [0] * (2 * rank)
        for axis in range(rank):
            span = (attrs["kernel_shape"][axis] - 1) * attrs.get("dilations", [1] * rank)[axis] + 1
            if shape[1 + axis] + pads[axis] + pads[axis + rank] < span:
                raise ValueError("window longer than the padded input")
    has_bias = attrs.pop("bias", False)
    weight_shape = attrs.pop("weight_shape", None)
    inputs, inits = ["x"], []
    kernel = bias = None
    if weight_shape is not None:
        kernel = rng.standard_normal(weight_shape).astype(np.float32)
        inputs.append("W")
        inits.append(numpy_helper.from_array(kernel, "W"))
        if has_bias:
            out = weight_shape[0] if parsed.name == "Conv" else weight_shape[1] * attrs.get("group", 1)
            bias = rng.standard_normal(out).astype(np.float32)
            inputs.append("B")
            inits.append(numpy_helper.from_array(bias, "B"))
    node = helper.make_node(parsed.name, inputs, ["y"], **attrs)
    graph = helper.make_graph([node], "source", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    x = rng.standard_normal((2, *shape)).astype(np.float32)
    try:
        session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        y = session.run(None, {"x": x})[0]
    except Exception as error:  # onnxruntime's own checks (kernel larger than input, ...)
        raise ValueError(str(error)) from None
    return x, y, kernel, bias


def test_onnx_to_torch() -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    check_direction(onnx_config, run_onnx, "onnx", "torch", 4000)


# --------------------------------------------------------------------------- further directions, fewer configs


def test_torch_to_jax() -> None:
    pytest.importorskip("jax")
    pytest.importorskip("torch")
    check_direction(torch_config, run_torch, "torch", "jax", 5000, count=max(CONFIGS // 2, 10))


def test_torch_to_onnx() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("torch")
    check_direction(torch_config, run_torch, "torch", "onnx", 6000, count=max(CONFIGS // 2, 10))


def test_keras_to_onnx() -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("keras")
    check_direction(keras_config, run_keras, "keras", "onnx", 7000, count=max(CONFIGS // 2, 10))


@pytest.mark.parametrize("target", ["torch", "jax", "keras", "onnx"])
def test_torch_negative_padding_with_copying_modes(target: str) -> None:
    """PyTorch crops negative padding before copying (reflect, replicate, circular):
    every port of such a layer gives PyTorch's numbers, or an explanation."""
    configs = [
        ("Conv1d(2, 3, 2, padding=-1, padding_mode='circular')", (2, 12)),
        ("Conv2d(2, 3, 3, padding=(-1, 1), padding_mode='reflect')", (2, 9, 8)),
        ("Conv2d(1, 2, (2, 3), padding=(0, -1), padding_mode='replicate')", (1, 7, 9)),
    ]
    for seed, (text, shape) in enumerate(configs):
        x, y, kernel, bias = run_torch(text, shape, np.random.default_rng(seed))
        try:
            ported = port_text(text, "torch", target, shape)
        except PortError as error:
            assert len(str(error)) > 40, str(error)
            continue
        forward = execute(ported.code, kernel, bias)
        if target == "torch":
            import torch

            out = forward(torch.from_numpy(x)).detach().numpy()
        else:
            xt = x if target == "onnx" else to_last(x)
            out = np.asarray(forward(xt))
            out = out if target == "onnx" else to_first(out)
        error = rel_error(out, y)
        assert error <= TOLERANCE, f"{text} on {shape} -> {target}: {error:.2e}\n{ported.code}"
