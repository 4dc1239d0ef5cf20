"""The depthwise loops' fast paths: 3×3 windows summed in registers, row pairs, multipliers.

Each case is built so the 3×3 register path (one row or two rows at a time,
``stride == dilation`` along the height) and the tap-by-tap border cells both
run, with and without numba, against a float64 loop over taps and against
PyTorch. Bounds: relative error ``‖a − b‖ / ‖b‖`` ≤ 1e-5 in float32, ≤ 1e-10
in float64.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from _helpers import relative_error
from convarith.engine.algorithms import depthwise

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}


def reference(x, kernel, strides, dilation, pads, out_size):
    """``y[n, o, c·M + j] = Σ_k xpad[n, o·S + k·D, c] · kernel[k, 0, c·M + j]`` in float64."""
    xpad = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    kernel = np.asarray(kernel, np.float64)
    channels = x.shape[-1]
    multiplier = kernel.shape[-1] // channels
    y = np.zeros((x.shape[0], *out_size, channels, multiplier))
    for a, b in itertools.product(range(kernel.shape[0]), range(kernel.shape[1])):
        rows = slice(a * dilation[0], a * dilation[0] + (out_size[0] - 1) * strides[0] + 1,
                     strides[0])
        cols = slice(b * dilation[1], b * dilation[1] + (out_size[1] - 1) * strides[1] + 1,
                     strides[1])
        taps = kernel[a, b, 0].reshape(channels, multiplier)
        y += xpad[:, rows, cols, :, None] * taps
    return y.reshape(*y.shape[:-2], -1)


def reference_weight_grad(x, dy, kernel_size, strides, dilation, pads):
    xpad = np.pad(np.asarray(x, np.float64), ((0, 0), *pads, (0, 0)))
    channels = x.shape[-1]
    out_size = dy.shape[1:3]
    grad = np.asarray(dy, np.float64).reshape(*dy.shape[:-1], channels, -1)
    dk = np.zeros((*kernel_size, 1, dy.shape[-1]))
    for a, b in itertools.product(range(kernel_size[0]), range(kernel_size[1])):
        rows = slice(a * dilation[0], a * dilation[0] + (out_size[0] - 1) * strides[0] + 1,
                     strides[0])
        cols = slice(b * dilation[1], b * dilation[1] + (out_size[1] - 1) * strides[1] + 1,
                     strides[1])
        dk[a, b, 0] = np.einsum("nhwc,nhwcm->cm", xpad[:, rows, cols], grad).reshape(-1)
    return dk


def random_case(seed):
    """A 2-D depthwise problem whose kernel is 3×3 most of the time."""
    rng = np.random.default_rng(seed)
    channels = int(rng.choice([1, 3, 8, 13, 32]))
    multiplier = int(rng.choice([1, 1, 2, 5, 16, 32]))
    kernel_size = (3, 3) if rng.random() < 0.8 else tuple(int(v) for v in rng.integers(1, 5, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    # stride == dilation along the height takes the two-rows-at-a-time path
    strides = (dilation[0] if rng.random() < 0.6 else int(rng.integers(1, 3)),
               int(rng.integers(1, 3)))
    pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2))
    size = tuple(int(v) for v in rng.integers(7, 15, 2))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    out_size = tuple((n + lo + hi - e) // s + 1
                     for n, (lo, hi), e, s in zip(size, pads, effective, strides))
    batch = int(rng.integers(1, 4))
    x = rng.standard_normal((batch, *size, channels))
    kernel = rng.standard_normal((*kernel_size, 1, channels * multiplier))
    dy = rng.standard_normal((batch, *out_size, channels * multiplier))
    return x, kernel, dy, strides, dilation, pads, out_size


@pytest.mark.parametrize("seed", range(12))
def test_register_paths_match_the_reference(seed):
    x, kernel, dy, strides, dilation, pads, out_size = random_case(5000 + seed)
    channels = x.shape[-1]
    expected = reference(x, kernel, strides, dilation, pads, out_size)
    expected_dk = reference_weight_grad(x, dy, kernel.shape[:2], strides, dilation, pads)
    for dtype, use_numba in itertools.product([np.float32, np.float64], [None, False]):
        what = (f"seed {5000 + seed}, {dtype.__name__}, numba={use_numba}, kernel "
                f"{kernel.shape}, strides {strides}, dilation {dilation}, pads {pads}")
        y = depthwise.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation, channels,
                             out_size, use_numba=use_numba, threads=1 + seed % 2, padding=pads)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what
        dk = depthwise.weight_grad(x.astype(dtype), dy.astype(dtype), kernel.shape[:2], strides,
                                   dilation, channels, use_numba=use_numba,
                                   threads=1 + seed % 2, padding=pads)
        assert dk.dtype == dtype and dk.shape == expected_dk.shape, what
        assert relative_error(dk, expected_dk) <= TOLERANCE[dtype], what


@pytest.mark.parametrize("seed", range(8))
def test_one_input_channel_matches_the_reference(seed):
    """One input channel, 3×3 (a first layer): four cells at a time plus the rest of a row."""
    rng = np.random.default_rng(5500 + seed)
    strides = tuple(int(v) for v in rng.integers(1, 3, 2))
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2))
    size = tuple(int(v) for v in rng.integers(6, 20, 2))
    out_size = tuple((n + lo + hi - 2 * d - 1) // s + 1
                     for n, (lo, hi), d, s in zip(size, pads, dilation, strides))
    multiplier = int(rng.choice([1, 3, 16, 32, 40]))
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, 1))
    kernel = rng.standard_normal((3, 3, 1, multiplier))
    expected = reference(x, kernel, strides, dilation, pads, out_size)
    for dtype in (np.float32, np.float64):
        what = (f"seed {5500 + seed}, {dtype.__name__}, M={multiplier}, strides {strides}, "
                f"dilation {dilation}, pads {pads}, size {size}")
        y = depthwise.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation, 1,
                             out_size, threads=1 + seed % 2, padding=pads)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


@pytest.mark.parametrize("seed", range(8))
def test_row_path_for_few_channels_matches_the_reference(seed):
    """Few channels, multiplier 1, unit stride along the width (1-D and 2-D): each tap is
    one pass over whole rows, with large dilated kernels and any height stride."""
    rng = np.random.default_rng(5800 + seed)
    channels = int(rng.choice([1, 2, 5, 16]))
    kernel_size = (int(rng.integers(1, 8)), int(rng.integers(1, 8)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    strides = (int(rng.integers(1, 3)), 1)
    pads = tuple((int(rng.integers(0, 4)), int(rng.integers(0, 4))) for _ in range(2))
    size = tuple(int(v) for v in rng.integers(15, 30, 2))
    out_size = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                     for n, (lo, hi), k, d, s in zip(size, pads, kernel_size, dilation, strides))
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, channels))
    kernel = rng.standard_normal((*kernel_size, 1, channels))
    expected = reference(x, kernel, strides, dilation, pads, out_size)
    row_of = 0  # the 1-D problem: the first row of the 2-D one, with a 1-row kernel
    expected_1d = reference(x[:, row_of:row_of + 1], kernel[:1], (1, 1), (1, dilation[1]),
                            ((0, 0), pads[1]), (1, out_size[1]))[:, 0]
    for dtype in (np.float32, np.float64):
        what = (f"seed {5800 + seed}, {dtype.__name__}, C={channels}, kernel {kernel_size}, "
                f"strides {strides}, dilation {dilation}, pads {pads}")
        y = depthwise.direct(x.astype(dtype), kernel.astype(dtype), strides, dilation,
                             channels, out_size, threads=1 + seed % 2, padding=pads)
        assert y.dtype == dtype and relative_error(y, expected) <= TOLERANCE[dtype], what
        y1 = depthwise.direct(x[:, row_of].astype(dtype), kernel[0].astype(dtype), (1,),
                              (dilation[1],), channels, (out_size[1],), padding=(pads[1],))
        assert relative_error(y1, expected_1d) <= TOLERANCE[dtype], what + " (1-D)"


@pytest.mark.parametrize("first, last", [(0, 36), (1, 36), (5, 6), (13, 31), (0, 35)])
def test_row_ranges_split_anywhere(first, last):
    """Chunks that start or end on the second row of a pair still write every row once."""
    kernels = depthwise._numba_kernels()
    if kernels is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(first * 100 + last)
    x = rng.standard_normal((3, 12, 9, 16)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 1, 16)).astype(np.float32)
    expected = reference(x, kernel, (1, 1), (1, 1), ((1, 1), (1, 1)), (12, 9))
    y = np.full((3, 12, 9, 16), np.nan, np.float32)
    kernels[0](x, kernel.reshape(3, 3, 16), 1, 1, 1, 1, 1, 1, 3, 3, first, last, y)
    rows = y.reshape(36, 9, 16)
    assert np.isnan(rows[:first]).all() and np.isnan(rows[last:]).all()
    assert relative_error(rows[first:last], expected.reshape(36, 9, 16)[first:last]) <= 1e-5


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_against_torch(seed):
    torch = pytest.importorskip("torch")
    x, kernel, dy, strides, dilation, pads, out_size = random_case(6000 + seed)
    channels = x.shape[-1]
    xt = torch.from_numpy(np.pad(x, ((0, 0), *pads, (0, 0)))).permute(0, 3, 1, 2)
    wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
    xt.requires_grad_(True)
    wt.requires_grad_(True)
    yt = torch.nn.functional.conv2d(xt, wt, stride=strides, dilation=dilation, groups=channels)
    (dwt,) = torch.autograd.grad(yt, wt, torch.from_numpy(dy).permute(0, 3, 1, 2))
    expected = yt.detach().permute(0, 2, 3, 1).numpy()
    expected_dk = np.moveaxis(dwt.numpy(), (0, 1), (-1, -2))
    y = depthwise.direct(x.astype(np.float32), kernel.astype(np.float32), strides, dilation,
                         channels, out_size, padding=pads)
    assert relative_error(y, expected) <= 1e-5, f"seed {6000 + seed}"
    dk = depthwise.weight_grad(x.astype(np.float32), dy.astype(np.float32), kernel.shape[:2],
                               strides, dilation, channels, padding=pads)
    assert relative_error(dk, expected_dk) <= 1e-5, f"seed {6000 + seed}"


def test_benchmark_shapes_float32_error():
    """The benchmark's depthwise shapes (smaller batch) stay far inside the float32 bound."""
    rng = np.random.default_rng(7)
    for shape, filters in [((2, 56, 56, 128), 128), ((4, 28, 28, 1), 32)]:
        x = rng.standard_normal(shape).astype(np.float32)
        kernel = rng.standard_normal((3, 3, 1, filters)).astype(np.float32)
        expected = reference(x, kernel, (1, 1), (1, 1), ((1, 1), (1, 1)), shape[1:3])
        y = depthwise.direct(x, kernel, (1, 1), (1, 1), shape[-1], shape[1:3],
                             padding=((1, 1), (1, 1)))
        assert relative_error(y, expected) <= 1e-6, shape


@pytest.mark.parametrize("multiplier", [1, 4])
def test_weight_grad_over_long_rows(multiplier):
    """Rows longer than one float32 partial-sum block (64 cells) still sum every cell once."""
    rng = np.random.default_rng(40 + multiplier)
    x = rng.standard_normal((2, 4, 301, 5)).astype(np.float32)
    dy = rng.standard_normal((2, 4, 150, 5 * multiplier)).astype(np.float32)
    pads = ((1, 1), (1, 0))
    expected = reference_weight_grad(x, dy, (3, 3), (1, 2), (1, 1), pads)
    dk = depthwise.weight_grad(x, dy, (3, 3), (1, 2), (1, 1), 5, threads=1, padding=pads)
    assert relative_error(dk, expected) <= 1e-5
