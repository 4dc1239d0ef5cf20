"""Every 1×1 path against PyTorch over a spread of layers, and the narrow layers' memory.

Random 1×1 layers (1-D to 3-D, 1 to 300 channels on either side, narrow and wide,
batch 1, 2 and 16, strides 1 to 3, float32 and float64): every registered direct
algorithm that applies, forced, and the planner's choice through ``conv``, each against
PyTorch's convolution in float64 on the same values. Then the peak extra memory of the
narrow 1×1 layers of MobileNetV2 and EfficientNet-B0 (and a wide one) on the path the
planner picks, at most 1.5× the bytes of input, kernel and output.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from _helpers import TOLERANCE, peak_extra_bytes, relative_error
from convarith import ConvSpec
from convarith.engine import conv
from convarith.engine.dispatch import ConvProblem, applicable, get_algorithm

#: Random layers per run (a small budget under CI: each layer runs every path).
LAYERS = 8 if os.environ.get("CI") == "true" else 40

#: The networks benchmark's bound: peak extra bytes / (x + kernel + output bytes).
PEAK_LIMIT = 1.5

CHANNELS = (1, 3, 4, 8, 16, 24, 32, 40, 96, 144, 300)


def _torch_conv(x: np.ndarray, kernel: np.ndarray, strides: tuple[int, ...]) -> np.ndarray:
    """PyTorch's valid 1×1 convolution in float64, channels-last in and out."""
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    rank = x.ndim - 2
    a = torch.from_numpy(np.moveaxis(x.astype(np.float64), -1, 1).copy())
    w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel.astype(np.float64), (-1, -2),
                                                          (0, 1))))
    y = getattr(functional, f"conv{rank}d")(a, w, None, strides)
    return np.moveaxis(y.numpy(), 1, -1)


def _random_layer(rng: np.random.Generator) -> tuple[tuple[int, ...], tuple[int, ...],
                                                     tuple[int, ...], np.dtype]:
    """``(input shape, kernel shape, strides, dtype)`` of a random 1×1 layer."""
    rank = int(rng.choice([1, 2, 2, 2, 3]))
    batch = int(rng.choice([1, 2, 16]))
    channels, filters = (int(rng.choice(CHANNELS)) for _ in range(2))
    largest = {1: 200, 2: 20, 3: 7}[rank] if batch < 16 else {1: 60, 2: 9, 3: 4}[rank]
    size = tuple(int(rng.integers(1, largest + 1)) for _ in range(rank))
    strides = tuple(int(rng.choice([1, 1, 2, 3])) for _ in range(rank))
    dtype = np.dtype(np.float32 if rng.random() < 0.5 else np.float64)
    return (batch, *size, channels), (*(1,) * rank, channels, filters), strides, dtype


def test_every_pointwise_path_matches_pytorch() -> None:
    pytest.importorskip("torch")
    seed = 1700
    rng = np.random.default_rng(seed)
    for trial in range(LAYERS):
        x_shape, kernel_shape, strides, dtype = _random_layer(rng)
        rank = len(strides)
        x = rng.standard_normal(x_shape).astype(dtype)
        kernel = rng.standard_normal(kernel_shape).astype(dtype)
        expected = _torch_conv(x, kernel, strides)
        out_size = expected.shape[1:-1]
        problem = ConvProblem(x_shape, kernel_shape, strides, (1,) * rank, 1, out_size, dtype)
        what = f"seed {seed} trial {trial}: x {x_shape} kernel {kernel_shape} strides {strides} {dtype}"
        names = applicable(problem)
        assert {"flat_rows", "pointwise_rows"} <= set(names), f"{what}: {names}"
        for name in names:
            y = get_algorithm(name).direct(x, kernel, strides, (1,) * rank, 1, out_size)
            assert y.shape == expected.shape and y.dtype == dtype, f"{what}: {name} {y.shape}"
            error = relative_error(y, expected)
            assert error <= TOLERANCE[dtype.type], f"{what}: {name} relative error {error:.2e}"
        y = conv(x, kernel, ConvSpec(kernel_size=(1,) * rank, strides=strides))
        error = relative_error(y, expected)
        assert error <= TOLERANCE[dtype.type], f"{what}: planner's path, relative error {error:.2e}"


@pytest.mark.parametrize("batch, size, channels, filters", [
    (16, 28, 144, 24),   # MobileNetV2 / EfficientNet-B0
    (16, 56, 32, 16),
    (16, 14, 192, 32),
    (1, 4, 1152, 320),   # EfficientNet-B0 at batch 1
    (1, 28, 24, 144),
    (16, 14, 40, 240),
])
def test_narrow_layers_stay_within_their_memory(batch, size, channels, filters) -> None:
    rng = np.random.default_rng(1800 + channels)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, channels, filters)).astype(np.float32)
    spec = ConvSpec(kernel_size=(1, 1))
    out_bytes = batch * size * size * filters * 4
    peak = peak_extra_bytes(lambda: conv(x, kernel, spec))
    ratio = peak / (x.nbytes + kernel.nbytes + out_bytes)
    assert ratio <= PEAK_LIMIT, (
        f"{batch}×{size}² {channels} -> {filters}: peak {peak} bytes = {ratio:.2f}x "
        f"(x + kernel + output)")
    assert math.isfinite(ratio)


@pytest.mark.parametrize("x_shape, filters, strides, dtype", [
    ((16, 28, 28, 144), 24, (1, 1), np.float32),
    ((3, 57, 55, 32), 16, (1, 1), np.float64),
    ((2, 60, 61, 40), 32, (2, 3), np.float32),
    ((16, 3136, 64), 16, (1,), np.float32),
    ((2, 9, 10, 11, 48), 8, (1, 2, 1), np.float64),
    ((4, 30, 31, 200), 32, (1, 1), np.float32),
])
def test_one_worker_runs_narrow_outputs_in_pieces_as_pytorch(x_shape, filters, strides,
                                                             dtype) -> None:
    from convarith.engine.algorithms import pointwise_rows

    seed = 1900 + sum(x_shape)
    rng = np.random.default_rng(seed)
    rank = len(strides)
    x = rng.standard_normal(x_shape).astype(dtype)
    kernel = rng.standard_normal((*(1,) * rank, x_shape[-1], filters)).astype(dtype)
    expected = _torch_conv(x, kernel, strides)
    out_size = expected.shape[1:-1]
    assert pointwise_rows.cached_chunks(x_shape[0], out_size, x_shape[-1], filters,
                                        np.dtype(dtype).itemsize)
    y = pointwise_rows.direct(x, kernel, strides, (1,) * rank, 1, out_size, threads=1)
    error = relative_error(y, expected)
    assert error <= TOLERANCE[dtype], f"seed {seed}: x {x_shape} -> {filters}: {error:.2e}"
