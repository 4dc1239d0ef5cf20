"""Record golden shape cases from the real frameworks.

For each convention (Keras 3 on JAX, PyTorch, JAX ``lax``, ONNX through
onnxruntime) this draws random layer configurations -- ranks 1 to 3, direct,
transposed, depthwise/separable and pooling layers, including configurations
the framework rejects -- runs the framework on a small input and writes
``tests/golden/shapes_<convention>.json``::

    {"convention": ..., "versions": {...}, "seed": ..., "cases": [
        {"op": "Conv2D", "kwargs": {...}, "input_shape": [...],
         "output_shape": [...], "pad_lo": [...]}                  # accepted
        {"op": ..., "kwargs": ..., "input_shape": ...,
         "error": ["ValueError", "first line of the message"]},   # rejected
    ]}

``pad_lo`` is the observed padding before the first cell on each spatial axis
(for transposed convolutions: the crop of the full output at its start), or
``null`` on an axis where it cannot be seen. It is measured, not computed: the
input carries the code ``1 + i0 + 16 i1 + 256 i2`` of each cell's index in
channel 0 (zeros elsewhere) and the kernel is one-hot at its first tap, so an
output cell that reads input cell ``i`` shows ``i``'s code, and
``lo = o * stride - i`` (direct) or ``crop_lo = i * stride - o`` (transposed).
Max pooling uses minus the code, so each window reports its first real cell.

Usage::

    python scripts/gen_golden_shapes.py [--n 2000] [--seed 0] [--only torch]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
warnings.filterwarnings("ignore")

GOLDEN = Path(__file__).resolve().parent.parent / "tests" / "golden"
CODE_BASE = 16  # spatial sizes stay below this, so codes decode uniquely
Case = dict[str, Any]


# ---------------------------------------------------------------- random draws


class Draw:
    """Random building blocks; rare draws produce values frameworks reject."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng

    def chance(self, p: float) -> bool:
        return bool(self.rng.random() < p)

    def pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def integer(self, low: int, high: int) -> int:
        return int(self.rng.integers(low, high + 1))

    def per_axis(
        self, rank: int, low: int, high: int, bad: float = 0.03, bad_values: tuple[int, ...] = (0, -1)
    ) -> Any:
        """An int or a per-axis list; with probability ``bad`` one entry is a bad value."""
        values = [self.integer(low, high) for _ in range(rank)]
        if self.chance(bad):
            values[self.integer(0, rank - 1)] = self.pick(list(bad_values))
        if len(set(values)) == 1 and self.chance(0.5):
            return values[0]
        return values

    def sizes(self, rank: int) -> list[int]:
        top = {1: 12, 2: 10, 3: 6}[rank]
        sizes = [self.integer(1, top) for _ in range(rank)]
        if self.chance(0.02):
            sizes[self.integer(0, rank - 1)] = 0
        return sizes

    def stride_dilation(self, rank: int) -> tuple[Any, Any]:
        strides = self.per_axis(rank, 1, 3)
        dilation = self.per_axis(rank, 1, 3) if self.chance(0.35) else 1
        return strides, dilation


def axis_list(value: Any, rank: int) -> list[int]:
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)] * rank


# ---------------------------------------------------------------- observation


def coded_input(spatial: list[int], channels: int, channels_last: bool, sign: float) -> np.ndarray:
    """Input whose channel 0 holds each cell's index code; other channels are 0."""
    grids = np.meshgrid(*[np.arange(s) for s in spatial], indexing="ij")
    code = 1.0 + sum(g * CODE_BASE**d for d, g in enumerate(grids))
    x = np.zeros([1, max(channels, 0), *spatial], dtype=np.float32)
    if channels > 0 and all(spatial):
        x[0, 0] = sign * code
    return np.moveaxis(x, 1, -1) if channels_last else x


def observe_pad_lo(
    y: np.ndarray,
    strides: list[int],
    channels_last: bool,
    transposed: bool,
    pool: bool,
    dilation: list[int] | None = None,
) -> list[int | None]:
    """Padding before the first cell per axis, read from a coded output (see module doc).

    A dilated max-pool window reports its first *real* tap, whose offset in
    the window is unknown, so such axes stay ``None``.
    """
    y = np.moveaxis(y, -1, 1) if channels_last else y
    rank = len(strides)
    y = np.where(np.isfinite(y), y, 0.0)  # max pooling pads with -inf
    values = np.rint(np.abs(y)).astype(np.int64)
    found: list[int | None] = [None] * rank
    blind = [pool and d > 1 for d in (dilation or [1] * rank)]
    for cell in zip(*np.nonzero(values)):
        code = int(values[cell]) - 1
        index = [(code // CODE_BASE**d) % CODE_BASE for d in range(rank)]
        out = [int(c) for c in cell[2:]]
        for d in range(rank):
            if found[d] is not None or blind[d]:
                continue
            if transposed:
                found[d] = index[d] * strides[d] - out[d]
            elif not pool or index[d] > 0:  # a max-pool window clipped at 0 says nothing
                found[d] = out[d] * strides[d] - index[d]
        if all(f is not None or b for f, b in zip(found, blind)):
            break
    return found


def first_line(message: str) -> str:
    """The informative first line of an error, without onnxruntime's source locations."""
    message = re.sub(r"\[ONNXRuntimeError\] : \d+ : \w+ : ", "", message.strip())
    message = re.sub(r"^Non-zero status code returned while running \w+ node\. Name:'[^']*' Status Message: ", "", message)
    message = re.sub(r"^Exception during initialization: ", "", message)
    message = re.sub(r"^\S+\.(cc|h):\d+ \S.*?\) ", "", message)
    message = re.sub(r"^\S+\.(cc|h):\d+ ", "", message)
    # set literals print in hash order; sort them so that reruns give the same file
    message = re.sub(r"\{'[^{}]*'\}", lambda m: "{" + ", ".join(sorted(m[0][1:-1].split(", "))) + "}", message)
    return (message.splitlines() or [""])[0][:200]


def run_case(case: Case, runner: Callable[[Case], tuple[np.ndarray, list[int | None] | None]]) -> Case:
    try:
        y, pad_lo = runner(case)
    except Exception as error:  # the rejection is the data
        message = first_line(str(error))
        case["error"] = [type(error).__name__, message]
        return case
    case["output_shape"] = [int(s) for s in y.shape]
    if pad_lo is not None and any(p is not None for p in pad_lo):
        case["pad_lo"] = pad_lo
    return case


# ---------------------------------------------------------------- Keras


def keras_cases(draw: Draw, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        rank = draw.integer(1, 3)
        kind = draw.pick(["Conv", "Conv", "ConvTranspose", "Depthwise", "Separable", "MaxPool", "AvgPool"])
        if kind in ("Depthwise", "Separable") and rank == 3:
            kind = "Conv"
        strides, dilation = draw.stride_dilation(rank)
        data_format = draw.pick([None, "channels_last", "channels_first"])
        channels = draw.integer(1, 4)
        kwargs: dict[str, Any] = {}
        if kind in ("MaxPool", "AvgPool"):
            op = {"MaxPool": "MaxPooling", "AvgPool": "AveragePooling"}[kind] + f"{rank}D"
            kwargs["pool_size"] = draw.per_axis(rank, 1, 4)
            if draw.chance(0.6):
                kwargs["strides"] = strides
            kwargs["padding"] = draw.pick(["valid", "same", "valid", "same", "SAME", "full"])
        else:
            op = {
                "Conv": "Conv",
                "ConvTranspose": "Conv",
                "Depthwise": "DepthwiseConv",
                "Separable": "SeparableConv",
            }[kind] + f"{rank}D" + ("Transpose" if kind == "ConvTranspose" else "")
            kwargs["kernel_size"] = draw.per_axis(rank, 1, 5)
            kwargs["strides"] = strides
            kwargs["dilation_rate"] = dilation
            words = ["valid", "same", "valid", "same"]
            kwargs["padding"] = draw.pick(words + (["causal"] * 2 if rank == 1 else []) + ["Same", "causal", "full"])
            if kind != "Depthwise":
                kwargs["filters"] = draw.integer(1, 4) if not draw.chance(0.03) else draw.pick([0, -1])
            if kind in ("Depthwise", "Separable"):
                kwargs["depth_multiplier"] = draw.integer(1, 2) if not draw.chance(0.03) else 0
            if kind == "Conv" and draw.chance(0.3):
                groups = draw.integer(1, 3)
                kwargs["groups"] = groups
                channels = groups * draw.integer(1, 2) if draw.chance(0.8) else channels
            if kind == "ConvTranspose" and draw.chance(0.4):
                kwargs["output_padding"] = draw.per_axis(rank, 0, 2, bad=0.05)
        if data_format is not None:
            kwargs["data_format"] = data_format
        spatial = draw.sizes(rank)
        first = data_format == "channels_first"
        shape = [1, channels, *spatial] if first else [1, *spatial, channels]
        cases.append({"op": op, "kwargs": kwargs, "input_shape": shape})
    return cases


def keras_runner(case: Case) -> tuple[np.ndarray, list[int | None] | None]:
    import keras

    op, kwargs, shape = case["op"], case["kwargs"], case["input_shape"]
    layer = getattr(keras.layers, op)(**kwargs)
    channels_last = layer.data_format == "channels_last"
    rank = len(shape) - 2
    spatial = shape[1:-1] if channels_last else shape[2:]
    channels = shape[-1] if channels_last else shape[1]
    pool = "Pooling" in op
    x = coded_input(spatial, channels, channels_last, -1.0 if pool else 1.0)
    layer.build(tuple(shape))
    tap0 = (0,) * rank
    for weight in layer.weights:
        value = np.zeros(weight.shape, dtype="float32")
        if len(weight.shape) == rank + 2 and value.size:  # a kernel: one-hot at the first tap
            if "Transpose" in op:
                value[tap0] = 1.0  # (k..., out, in): only input channel 0 is non-zero anyway
            else:
                value[tap0 + (0,)] = 1.0  # (k..., in, out): read input channel 0 only
        weight.assign(value)
    y = np.asarray(layer(x))
    pad_lo = None
    if "AveragePooling" not in op:
        pad_lo = observe_pad_lo(y, axis_list(layer.strides, rank), channels_last, "Transpose" in op, pool)
    return y, pad_lo


# ---------------------------------------------------------------- PyTorch


def torch_cases(draw: Draw, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        rank = draw.integer(1, 3)
        kind = draw.pick(["Conv", "Conv", "ConvTranspose", "MaxPool", "AvgPool"])
        strides, dilation = draw.stride_dilation(rank)
        kwargs: dict[str, Any] = {}
        channels = draw.integer(1, 4)
        if kind in ("MaxPool", "AvgPool"):
            kernel = draw.per_axis(rank, 1, 4)
            kwargs["kernel_size"] = kernel
            if draw.chance(0.6):
                kwargs["stride"] = strides
            if draw.chance(0.6):
                kwargs["padding"] = draw.per_axis(rank, 0, 2)
            if kind == "MaxPool" and draw.chance(0.3):
                kwargs["dilation"] = dilation
            if draw.chance(0.4):
                kwargs["ceil_mode"] = True
            if kind == "AvgPool" and draw.chance(0.4):
                kwargs["count_include_pad"] = False
        else:
            groups = draw.integer(1, 3) if draw.chance(0.3) else 1
            kwargs["in_channels"] = channels = groups * draw.integer(1, 2) if draw.chance(0.9) else channels
            kwargs["out_channels"] = groups * draw.integer(1, 2) if draw.chance(0.9) else draw.integer(1, 4)
            kwargs["kernel_size"] = draw.per_axis(rank, 1, 5)
            kwargs["stride"] = strides
            if kind == "Conv":
                padding = draw.pick(["int", "int", "same", "valid", "SAME"])
            else:
                padding = draw.pick(["int", "int", "int", "same"])
            kwargs["padding"] = draw.per_axis(rank, 0, 3) if padding == "int" else padding
            kwargs["dilation"] = dilation
            if groups > 1 or draw.chance(0.05):
                kwargs["groups"] = groups if draw.chance(0.95) else 0
            if kind == "Conv" and draw.chance(0.25):
                kwargs["padding_mode"] = draw.pick(["reflect", "replicate", "circular", "zeros", "wrap"])
            if kind == "ConvTranspose" and draw.chance(0.5):
                kwargs["output_padding"] = draw.per_axis(rank, 0, 2, bad=0.0)
                if draw.chance(0.05):
                    kwargs["padding_mode"] = "reflect"
        op = {"Conv": "Conv", "ConvTranspose": "ConvTranspose", "MaxPool": "MaxPool", "AvgPool": "AvgPool"}[kind]
        shape = [1, channels, *draw.sizes(rank)]
        cases.append({"op": f"{op}{rank}d", "kwargs": kwargs, "input_shape": shape})
    return cases


def torch_runner(case: Case) -> tuple[np.ndarray, list[int | None] | None]:
    import torch

    op, kwargs, shape = case["op"], case["kwargs"], case["input_shape"]
    rank = len(shape) - 2
    layer = getattr(torch.nn, op)(**kwargs)
    pool = "Pool" in op
    x = torch.from_numpy(coded_input(shape[2:], shape[1], False, -1.0 if pool else 1.0))
    with torch.no_grad():
        if not pool:
            layer.weight.zero_()
            if layer.weight.numel():
                layer.weight[(slice(None), slice(None)) + (0,) * rank] = 1.0
            if layer.bias is not None:
                layer.bias.zero_()
        y = layer(x).numpy()
    stride = getattr(layer, "stride", None)
    stride = layer.kernel_size if stride is None else stride
    observable = op.startswith(("Conv", "MaxPool")) and kwargs.get("padding_mode", "zeros") == "zeros"
    dilation = axis_list(getattr(layer, "dilation", 1), rank)
    pad_lo = None
    if observable:
        pad_lo = observe_pad_lo(y, axis_list(stride, rank), False, "Transpose" in op, pool, dilation)
    return y, pad_lo


# ---------------------------------------------------------------- JAX


def jax_padding(draw: Draw, rank: int, words: list[str]) -> Any:
    if draw.chance(0.5):
        return draw.pick(words)
    low = -1 if draw.chance(0.1) else 0
    return [[draw.integer(low, 3), draw.integer(low, 3)] for _ in range(rank)]


def jax_cases(draw: Draw, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        rank = draw.integer(1, 3)
        op = draw.pick(["conv_general_dilated", "conv_general_dilated", "conv_transpose", "max_pool", "avg_pool"])
        strides, dilation = draw.stride_dilation(rank)
        channels = draw.integer(1, 4)
        kwargs: dict[str, Any] = {}
        if op in ("max_pool", "avg_pool"):
            kwargs["window_shape"] = axis_list(draw.per_axis(rank, 1, 4), rank)
            if draw.chance(0.6):
                kwargs["strides"] = axis_list(strides, rank)
            kwargs["padding"] = jax_padding(draw, rank, ["VALID", "SAME", "SAME_LOWER", "same"])
            if op == "avg_pool" and draw.chance(0.5):
                kwargs["count_include_pad"] = False
            shape = [1, *draw.sizes(rank), channels]
        else:
            kwargs["kernel_size"] = axis_list(draw.per_axis(rank, 1, 5, bad_values=(0,)), rank)
            kwargs["rhs_dilation"] = axis_list(dilation, rank)
            kwargs["filters"] = draw.integer(1, 4)
            channels_last = draw.chance(0.5)
            if op == "conv_general_dilated":
                kwargs["window_strides"] = axis_list(strides, rank)
                kwargs["padding"] = jax_padding(draw, rank, ["VALID", "SAME", "SAME_LOWER", "same"])
                if draw.chance(0.25):  # lhs dilation is a transposed convolution, unit window stride
                    kwargs["lhs_dilation"] = axis_list(strides, rank)
                    kwargs["window_strides"] = [1] * rank
                if draw.chance(0.3):
                    groups = draw.integer(1, 3)
                    kwargs["feature_group_count"] = groups
                    channels = groups * draw.integer(1, 2) if draw.chance(0.85) else channels
                    kwargs["filters"] = groups * draw.integer(1, 2) if draw.chance(0.85) else kwargs["filters"]
            else:
                kwargs["strides"] = axis_list(strides, rank)
                kwargs["padding"] = jax_padding(draw, rank, ["VALID", "SAME", "VALID", "SAME", "same"])
                if draw.chance(0.3):
                    kwargs["use_consistent_padding"] = True
                channels_last = draw.chance(0.7)
            if channels_last:
                spatial = "DHW"[3 - rank :]
                kwargs["dimension_numbers"] = [f"N{spatial}C", f"{spatial}IO", f"N{spatial}C"]
            spatial_sizes = draw.sizes(rank)
            default_last = op == "conv_transpose"
            last = channels_last or (default_last and "dimension_numbers" not in kwargs)
            shape = [1, *spatial_sizes, channels] if last else [1, channels, *spatial_sizes]
        cases.append({"op": op, "kwargs": kwargs, "input_shape": shape})
    return cases


def jax_runner(case: Case) -> tuple[np.ndarray, list[int | None] | None]:
    import jax.numpy as jnp
    from jax import lax

    op, kwargs, shape = case["op"], dict(case["kwargs"]), case["input_shape"]
    rank = len(shape) - 2
    padding: Any = kwargs.get("padding")
    if isinstance(padding, list):
        padding = [tuple(p) for p in padding]
    if op in ("max_pool", "avg_pool"):  # flax.linen.max_pool / avg_pool on NHWC
        window = (1, *kwargs["window_shape"], 1)
        strides: Any = (1, *kwargs.get("strides", [1] * rank), 1)
        pads = padding if isinstance(padding, str) else [(0, 0), *padding, (0, 0)]
        pool = op == "max_pool"
        x = jnp.asarray(coded_input(shape[1:-1], shape[-1], True, -1.0 if pool else 1.0))
        if pool:
            y = lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pads)
        else:
            y = lax.reduce_window(x, 0.0, lax.add, window, strides, pads)
            if kwargs.get("count_include_pad", True):
                y = y / np.prod(kwargs["window_shape"])
            else:
                ones = jnp.ones(x.shape[:-1] + (1,), x.dtype)
                y = y / lax.reduce_window(ones, 0.0, lax.add, window, strides, pads)
        y = np.asarray(y)
        return y, observe_pad_lo(y, list(strides[1:-1]), True, False, True) if pool else None

    numbers = kwargs.get("dimension_numbers")
    channels_last = numbers is not None or op == "conv_transpose"
    lhs_dilation = kwargs.get("lhs_dilation")
    transposed = op == "conv_transpose" or lhs_dilation is not None and max(lhs_dilation) > 1
    channels = shape[-1] if channels_last else shape[1]
    spatial = shape[1:-1] if channels_last else shape[2:]
    groups = kwargs.get("feature_group_count", 1)
    # lax.conv_general_dilated correlates without flipping: with lhs_dilation its
    # last tap is the first tap of the transposed convolution it computes
    tap0 = tuple(k - 1 for k in kwargs["kernel_size"]) if op == "conv_general_dilated" and transposed else (0,) * rank
    if channels_last:  # kernel (k..., I, O)
        kernel = np.zeros((*kwargs["kernel_size"], channels // max(groups, 1), kwargs["filters"]), "float32")
        if kernel.size:
            kernel[tap0] = 1.0
    else:  # kernel (O, I, k...)
        kernel = np.zeros((kwargs["filters"], channels // max(groups, 1), *kwargs["kernel_size"]), "float32")
        if kernel.size:
            kernel[(slice(None), slice(None)) + tap0] = 1.0
    x = jnp.asarray(coded_input(spatial, channels, channels_last, 1.0))
    numbers = tuple(numbers) if numbers else None
    kernel_array: Any = jnp.asarray(kernel)
    if op == "conv_general_dilated":
        y = lax.conv_general_dilated(
            x, kernel_array, kwargs["window_strides"], padding, lhs_dilation=lhs_dilation,
            rhs_dilation=kwargs["rhs_dilation"], dimension_numbers=numbers, feature_group_count=groups,
        )
        strides = lhs_dilation if transposed else kwargs["window_strides"]
    else:  # gradient semantics, like Keras: transpose_kernel=True, kernel (k..., O, I)
        kernel_array = jnp.swapaxes(kernel_array, -1, -2) if channels_last else jnp.swapaxes(kernel_array, 0, 1)
        y = lax.conv_transpose(
            x, kernel_array, kwargs["strides"], padding, rhs_dilation=kwargs["rhs_dilation"],
            dimension_numbers=numbers, transpose_kernel=True,
            use_consistent_padding=kwargs.get("use_consistent_padding", False),
        )
        strides = kwargs["strides"]
    y = np.asarray(y)
    return y, observe_pad_lo(y, list(strides), channels_last, transposed, False)


# ---------------------------------------------------------------- ONNX


def onnx_cases(draw: Draw, n: int) -> list[Case]:
    cases = []
    for _ in range(n):
        rank = draw.integer(1, 3)
        op = draw.pick(["Conv", "Conv", "ConvTranspose", "MaxPool", "AveragePool"])
        strides, dilation = draw.stride_dilation(rank)
        channels = draw.integer(1, 4)
        kernel = axis_list(draw.per_axis(rank, 1, 5 if op.startswith("Conv") else 4, bad_values=(0,)), rank)
        attrs: dict[str, Any] = {"kernel_shape": kernel}
        if draw.chance(0.7):
            attrs["strides"] = axis_list(strides, rank)
        if draw.chance(0.4) and op != "AveragePool" or draw.chance(0.1):
            attrs["dilations"] = axis_list(dilation, rank)
        auto_pad = draw.pick(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
        if auto_pad != "NOTSET" or draw.chance(0.1):
            attrs["auto_pad"] = auto_pad
        if auto_pad == "NOTSET" and draw.chance(0.7) or draw.chance(0.03):
            attrs["pads"] = [draw.integer(0, 3) for _ in range(2 * rank)]
            if draw.chance(0.03):
                attrs["pads"][0] = -1
        if op in ("Conv", "ConvTranspose"):
            groups = draw.integer(1, 3) if draw.chance(0.3) else 1
            if groups > 1:
                attrs["group"] = groups
                channels = groups * draw.integer(1, 2) if draw.chance(0.85) else channels
            filters = groups * draw.integer(1, 2)
        if op == "ConvTranspose":
            if draw.chance(0.4):
                attrs["output_padding"] = [draw.integer(0, 2) for _ in range(rank)]
            if draw.chance(0.2):
                attrs["output_shape"] = [draw.integer(1, 14) for _ in range(rank)]
        if op in ("MaxPool", "AveragePool") and draw.chance(0.3):
            attrs["ceil_mode"] = 1
        if op == "AveragePool" and draw.chance(0.4):
            attrs["count_include_pad"] = 1
        case: Case = {"op": op, "kwargs": attrs, "input_shape": [1, channels, *draw.sizes(rank)]}
        if op == "Conv":
            case["weight_shape"] = [filters, max(channels // groups, 1), *kernel]
        elif op == "ConvTranspose":
            case["weight_shape"] = [channels, filters // groups, *kernel]
        if op == "Conv" and draw.chance(0.1):
            del attrs["kernel_shape"]  # inferred from the weight
        cases.append(case)
    return cases


def onnx_runner(case: Case) -> tuple[np.ndarray, list[int | None] | None]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    op, attrs, shape = case["op"], dict(case["kwargs"]), case["input_shape"]
    rank = len(shape) - 2
    inputs = [helper.make_tensor_value_info("X", TensorProto.FLOAT, shape)]
    feeds = {"X": coded_input(shape[2:], shape[1], False, -1.0 if op == "MaxPool" else 1.0)}
    names = ["X"]
    if op in ("Conv", "ConvTranspose"):
        w_shape = case["weight_shape"]
        weight = np.zeros(w_shape, "float32")
        if weight.size:
            weight[(slice(None), slice(None)) + (0,) * rank] = 1.0
        inputs.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, w_shape))
        feeds["W"] = weight
        names.append("W")
    node = helper.make_node(op, names, ["Y"], **attrs)
    output = helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)
    graph = helper.make_graph([node], "g", inputs, [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)])
    model.ir_version = 10
    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    y = session.run(None, feeds)[0]
    strides = attrs.get("strides", [1] * rank)
    dilation = attrs.get("dilations", [1] * rank)
    pad_lo = None
    if op != "AveragePool":
        pad_lo = observe_pad_lo(y, strides, False, op == "ConvTranspose", op == "MaxPool", dilation)
    return y, pad_lo


# ---------------------------------------------------------------- main


CONVENTIONS: dict[str, tuple[Callable[[Draw, int], list[Case]], Callable[..., Any], str]] = {
    "keras": (keras_cases, keras_runner, "keras"),
    "torch": (torch_cases, torch_runner, "torch"),
    "jax": (jax_cases, jax_runner, "jax"),
    "onnx": (onnx_cases, onnx_runner, "onnxruntime"),
}


def generate(convention: str, n: int, seed: int) -> dict[str, Any]:
    import importlib

    make_cases, runner, package = CONVENTIONS[convention]
    draw = Draw(np.random.default_rng([seed, list(CONVENTIONS).index(convention)]))
    cases = [run_case(case, runner) for case in make_cases(draw, n)]
    versions = {package: importlib.import_module(package).__version__}
    return {"convention": convention, "versions": versions, "seed": seed, "cases": cases}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="cases per convention")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", choices=list(CONVENTIONS), action="append")
    parser.add_argument("--out", type=Path, default=GOLDEN)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for convention in args.only or list(CONVENTIONS):
        start = time.perf_counter()
        data = generate(convention, args.n, args.seed)
        path = args.out / f"shapes_{convention}.json"
        text = json.dumps(data, separators=(",", ":"))
        path.write_text(text.replace(',{"op"', ',\n{"op"') + "\n")
        rejected = sum("error" in case for case in data["cases"])
        print(
            f"{convention}: {len(data['cases'])} cases, {rejected} rejected, "
            f"{path.stat().st_size / 1e6:.2f} MB, {time.perf_counter() - start:.0f} s",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
