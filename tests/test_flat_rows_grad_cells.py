"""flat_rows' kernel gradient of images of up to ``GRAD_FEW_CELLS`` output cells with many
kernel inputs (``grad_gathers_cells`` but not ``gathers_cells``): one product per block of
the real cells' im2col instead of per-tap products over the flat grid. Random ranks,
strides, dilations, paddings, batches, thread counts, dtypes and both layouts against
PyTorch's ``convolution_backward`` (float64); each case prints its seed."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from _helpers import relative_error
from convarith import ConvSpec, engine
from convarith.engine.algorithms import flat_rows

CASES = 6 if os.environ.get("CI") == "true" else 16


def _torch_kernel_gradient(x: np.ndarray, dy: np.ndarray, kernel_size: tuple[int, ...],
                           strides: tuple[int, ...], dilation: tuple[int, ...],
                           padding: tuple[tuple[int, int], ...]) -> np.ndarray:
    """PyTorch's (float64) kernel gradient ``(*kernel_size, C, F)`` of channels-last
    ``x`` and ``dy``, any per-side zero padding (applied to ``x`` here)."""
    torch = pytest.importorskip("torch")
    rank = len(strides)
    padded = np.pad(x, ((0, 0), *padding, (0, 0)))
    weight = torch.zeros((dy.shape[-1], x.shape[-1], *kernel_size), dtype=torch.float64)
    _, d_kernel, _ = torch.ops.aten.convolution_backward(
        torch.from_numpy(np.moveaxis(dy, -1, 1).astype(np.float64)),
        torch.from_numpy(np.moveaxis(padded, -1, 1).astype(np.float64)), weight,
        None, list(strides), [0] * rank, list(dilation), False, [0] * rank, 1,
        [False, True, False])
    return np.moveaxis(d_kernel.numpy(), (0, 1), (-1, -2))


Layer = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...],
              tuple[tuple[int, int], ...], tuple[int, ...]]


def _draw(rng: np.random.Generator) -> Layer:
    """``(spatial, kernel_size, strides, dilation, padding, out)`` with the output's cells
    in the new range: more than ``FEW_CELLS`` or fewer kernel inputs than ``gathers_cells``
    wants would test the old paths, so both bounds are drawn across."""
    while True:
        rank = int(rng.choice([1, 2, 2, 2, 3]))
        kernel_size = tuple(int(k) for k in rng.integers(2, 4, rank))
        strides = tuple(int(s) for s in rng.integers(1, 3, rank))
        dilation = tuple(int(d) for d in rng.integers(1, 3, rank))
        padding = tuple((int(lo), int(hi)) for lo, hi in rng.integers(0, 3, (rank, 2)))
        side = {1: (60, 700), 2: (8, 40), 3: (4, 14)}[rank]
        spatial = tuple(int(v) for v in rng.integers(*side, rank))
        out = tuple((n + lo + hi - d * (k - 1) - 1) // s + 1 for n, (lo, hi), k, s, d
                    in zip(spatial, padding, kernel_size, strides, dilation))
        if min(out) >= 1 and flat_rows.FEW_CELLS < math.prod(out) <= flat_rows.GRAD_FEW_CELLS:
            return spatial, kernel_size, strides, dilation, padding, out


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(CASES))
def test_gathered_kernel_gradient_against_torch(seed: int) -> None:
    rng = np.random.default_rng(9500 + seed)
    spatial, kernel_size, strides, dilation, padding, out = _draw(rng)
    taps = math.prod(kernel_size)
    channels = -(-flat_rows.GRAD_GATHER_INNER // taps) + int(rng.integers(0, 40))
    filters = int(rng.integers(1, 70))
    batch = int(rng.integers(1, 4))
    threads = int(rng.choice([1, 2]))
    dtype = np.float64 if seed % 2 else np.float32
    what = (f"seed {9500 + seed}: x {(batch, *spatial, channels)} kernel {kernel_size} "
            f"strides {strides} dilation {dilation} padding {padding} -> {filters}, "
            f"{threads} threads, {dtype.__name__}")
    assert flat_rows.grad_gathers_cells(kernel_size, channels, out), what
    assert not flat_rows.gathers_cells(kernel_size, channels, out), what
    x = rng.standard_normal((batch, *spatial, channels)).astype(dtype)
    dy = rng.standard_normal((batch, *out, filters)).astype(dtype)
    d_kernel = flat_rows.weight_grad(x, dy, kernel_size, strides, dilation, 1,
                                     threads=threads, padding=padding)
    expected = _torch_kernel_gradient(x, dy, kernel_size, strides, dilation, padding)
    tolerance = 1e-10 if dtype == np.float64 else 1e-5
    assert d_kernel.shape == expected.shape, what
    assert relative_error(d_kernel, expected) <= tolerance, what


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(CASES))
def test_conv_vjp_gathered_kernel_gradient_against_torch(seed: int) -> None:
    """Through ``conv_vjp`` (flat_rows asked for), "same" and explicit paddings, both
    layouts: ResNet-50's 3×3 128 on 14² and stride 2 on 28² and their like."""
    rng = np.random.default_rng(9600 + seed)
    stride = int(rng.choice([1, 2]))
    size = int(rng.integers(11, 21)) * stride
    channels = int(rng.choice([120, 128, 160, 256]))
    filters = int(rng.choice([16, 64, 128]))
    data_format = str(rng.choice(["channels_last", "channels_first"]))
    padding = "same" if stride == 1 and rng.random() < 0.5 else [(1, 1), (1, 1)]
    spec = ConvSpec(3, strides=stride, padding=padding, data_format=data_format)
    dtype = np.float64 if seed % 2 else np.float32
    first = data_format == "channels_first"
    x_last = rng.standard_normal((1, size, size, channels)).astype(dtype)
    x = np.moveaxis(x_last, -1, 1) if first else x_last
    kernel = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    resolved = spec.resolve(x.shape)
    what = f"seed {9600 + seed}: {spec} on {x.shape}, {dtype.__name__}"
    assert flat_rows.grad_gathers_cells((3, 3), channels, resolved.output_size), what
    dy_last = rng.standard_normal((1, *resolved.output_size, filters)).astype(dtype)
    dy = np.moveaxis(dy_last, -1, 1) if first else dy_last
    _, d_kernel, _ = engine.conv_vjp(x, kernel, spec, dy, algorithm="flat_rows")
    expected = _torch_kernel_gradient(x_last, dy_last, (3, 3), spec.strides, spec.dilation,
                                      resolved.padding)
    tolerance = 1e-10 if dtype == np.float64 else 1e-5
    assert relative_error(d_kernel, expected) <= tolerance, what
