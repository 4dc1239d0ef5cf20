"""1-D convolutions of few images cut along their cells (``segments``) against PyTorch.

Expected values come from PyTorch's ``conv1d`` in float64 (paddings written out
by hand: "same" as Keras, causal as Keras' ``Conv1D``, explicit pairs with
negative crops); bound: relative error ≤ 1e-5 in float32, ≤ 1e-10 in float64.
The register-tiled kernels run with two and three workers, so their segments
(and the segments' halos and padding) are what is compared.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from _helpers import TOLERANCE, peak_extra_bytes, relative_error
from convarith import ConvSpec
from convarith.engine import conv
from convarith.engine.algorithms import _llvm, register_tiles, segments

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")

CI = os.environ.get("CI") == "true"

#: Multiply-adds of one random case at most (a few ms each).
CASE_MACS = 1e7 if CI else 1e8


def torch_conv1d(x, kernel, stride, dilation, groups, pads):
    """PyTorch's ``conv1d`` in float64 of channels-last ``x`` (N, L, C) and ``kernel``
    (K, C/g, F), zero padding ``pads`` (lo, hi), negative values crop; (N, O, F)."""
    xt = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 2, 1).copy())
    lo, hi = pads
    xt = xt[:, :, max(0, -lo): xt.shape[2] - max(0, -hi)]
    xt = torch.nn.functional.pad(xt, (max(0, lo), max(0, hi)))
    kt = torch.from_numpy(np.asarray(kernel, np.float64).transpose(2, 1, 0).copy())
    with torch.no_grad():
        y = torch.nn.functional.conv1d(xt, kt, stride=stride, dilation=dilation, groups=groups)
    return y.numpy().transpose(0, 2, 1)


def guarded(a, dtype):
    """A C-contiguous copy of ``a`` inside a buffer of NaNs: a read past either end of it
    (a segment's halo reaching beyond the input instead of into its padding) spoils
    the result."""
    buffer = np.full(a.size + 2 * GUARD, np.nan, dtype)
    inner = buffer[GUARD:GUARD + a.size].reshape(a.shape)
    inner[...] = a
    return inner


#: NaN elements before and after a :func:`guarded` input.
GUARD = 4096


def hand_padding(mode, length, size, stride, dilation, rng):
    """``(lo, hi)`` of a padding mode, derived here: "same" as Keras (output
    ``ceil(L / S)``, the odd cell after), causal (all before), "valid", or random
    explicit pairs (negative: crops)."""
    reach = (size - 1) * dilation + 1
    if mode == "same":
        total = max(0, (-(-length // stride) - 1) * stride + reach - length)
        return total // 2, total - total // 2
    if mode == "causal":
        return reach - 1, 0
    if mode == "valid":
        return 0, 0
    return int(rng.integers(-2, reach + 1)), int(rng.integers(-2, reach + 1))


def random_case(seed):
    """A 1-D convolution of few images: lengths 16 … 65536, kernels 1–5, strides 1–3,
    dilations up to 512, groups 1, 2 or 4, each padding mode."""
    rng = np.random.default_rng(seed)
    while True:
        size = int(rng.choice([1, 2, 2, 3, 5]))
        stride = int(rng.choice([1, 1, 2, 3]))
        dilation = int(rng.choice([1, 2, 7, 64, 512])) if size > 1 else 1
        length = int(2 ** rng.uniform(4, 16))
        groups = int(rng.choice([1, 1, 2, 4]))
        channels = groups * int(rng.choice([1, 3, 16, 64]))
        filters = groups * int(rng.choice([1, 5, 16, 32, 40]))
        batch = int(rng.choice([1, 1, 2, 3]))
        mode = str(rng.choice(["same", "causal", "valid", "explicit"]))
        lo, hi = hand_padding(mode, length, size, stride, dilation, rng)
        out = (length + lo + hi - (size - 1) * dilation - 1) // stride + 1
        macs = batch * out * size * channels * filters / groups
        if out > 0 and macs <= CASE_MACS:
            break
    x = rng.standard_normal((batch, length, channels))
    kernel = rng.standard_normal((size, channels // groups, filters))
    return x, kernel, stride, dilation, groups, (lo, hi), out, mode


@pytest.mark.parametrize("seed", range(10 if CI else 80))
def test_segments_against_torch(seed):
    x, kernel, stride, dilation, groups, pads, out, mode = random_case(5300 + seed)
    expected = torch_conv1d(x, kernel, stride, dilation, groups, pads)
    for dtype in (np.float32, np.float64):
        for threads in (2, 3):
            what = (f"seed {5300 + seed}, {dtype.__name__}, threads {threads}, x {x.shape}, "
                    f"kernel {kernel.shape}, stride {stride}, dilation {dilation}, "
                    f"groups {groups}, {mode} padding {pads}")
            y = register_tiles.direct(guarded(x, dtype), kernel.astype(dtype), (stride,),
                                      (dilation,), groups, (out,), padding=(pads,),
                                      threads=threads)
            assert y.dtype == dtype and y.shape == expected.shape, what
            assert relative_error(y, expected) <= TOLERANCE[dtype], what


def torch_conv2d(x, kernel, strides, dilation, groups, pads):
    """PyTorch's ``conv2d`` in float64 of channels-last ``x`` (N, H, W, C) and ``kernel``
    (KH, KW, C/g, F), zero padding ``pads`` per axis (negative values crop)."""
    xt = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2).copy())
    (top, bottom), (left, right) = pads
    xt = xt[:, :, max(0, -top): xt.shape[2] - max(0, -bottom),
            max(0, -left): xt.shape[3] - max(0, -right)]
    xt = torch.nn.functional.pad(xt, (max(0, left), max(0, right), max(0, top),
                                      max(0, bottom)))
    kt = torch.from_numpy(np.asarray(kernel, np.float64).transpose(3, 2, 0, 1).copy())
    with torch.no_grad():
        y = torch.nn.functional.conv2d(xt, kt, stride=strides, dilation=dilation,
                                       groups=groups)
    return y.numpy().transpose(0, 2, 3, 1)


def random_flat_case(seed):
    """A 2-D convolution of one or two images with one to three output rows and many
    cells per row: kernels 1–3 × 1–5, strides and dilations 1–2, explicit padding pairs
    (negative: crops), groups 1 or 2."""
    rng = np.random.default_rng(seed)
    while True:
        kernel_size = (int(rng.integers(1, 4)), int(rng.integers(1, 6)))
        strides = tuple(int(v) for v in rng.integers(1, 3, 2))
        dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
        size = (int(rng.integers(1, 6)), int(rng.integers(64, 2500)))
        pads = tuple((int(a), int(b)) for a, b in rng.integers(-1, 3, (2, 2)))
        out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1 for n, (lo, hi), k, d, s
                    in zip(size, pads, kernel_size, dilation, strides))
        if 1 <= out[0] <= 3 and out[1] > 0:
            break
    groups = int(rng.choice([1, 1, 2]))
    channels = groups * int(rng.choice([1, 3, 8, 24]))
    filters = groups * int(rng.choice([5, 16, 40]))
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, channels))
    kernel = rng.standard_normal((*kernel_size, channels // groups, filters))
    return x, kernel, strides, dilation, groups, pads, out


@pytest.mark.parametrize("seed", range(8 if CI else 60))
def test_few_rows_against_torch(seed):
    """2-D convolutions of fewer output rows than chunks, cut along their cells."""
    x, kernel, strides, dilation, groups, pads, out = random_flat_case(6100 + seed)
    expected = torch_conv2d(x, kernel, strides, dilation, groups, pads)
    for dtype in (np.float32, np.float64):
        what = (f"seed {6100 + seed}, {dtype.__name__}, x {x.shape}, kernel {kernel.shape}, "
                f"strides {strides}, dilation {dilation}, groups {groups}, padding {pads}")
        y = register_tiles.direct(guarded(x, dtype), kernel.astype(dtype), strides, dilation,
                                  groups, out, padding=pads, threads=2)
        assert y.dtype == dtype and y.shape == expected.shape, what
        assert relative_error(y, expected) <= TOLERANCE[dtype], what


def test_few_rows_are_cut_along_their_cells():
    """One or two output rows of many cells run as segments (more chunks than rows);
    rows enough for the chunks, or rows of few cells, as rows."""
    flops = 1e9
    assert segments.cut_along_cells(1, 2, 1000, 2, flops)
    assert not segments.cut_along_cells(1, 8, 1000, 2, flops)
    assert not segments.cut_along_cells(1, 4, 4, 2, flops)  # 512 channels on 4²: rows


WAVENET = [(2, d, 64, 128) for d in ((1, 16, 512) if CI else (1, 2, 4, 8, 16, 32, 64, 128,
                                                                 256, 512))] + [
    (2, 1, 256, 64), (1, 1, 256, 256)]


@pytest.mark.parametrize("size, dilation, channels, filters", WAVENET)
def test_wavenet_layers_through_the_engine(size, dilation, channels, filters):
    """The networks suite's WaveNet layers (4096 samples, batch 1) through ``conv``
    with Keras' causal padding, cut for two workers."""
    rng = np.random.default_rng(dilation + channels)
    x = rng.standard_normal((1, 4096, channels)).astype(np.float32)
    kernel = rng.standard_normal((size, channels, filters)).astype(np.float32)
    expected = torch_conv1d(x, kernel, 1, dilation, 1, ((size - 1) * dilation, 0))
    spec = ConvSpec(kernel_size=(size,), dilation=(dilation,), padding="causal")
    y = conv(x, kernel, spec, algorithm="register_tiles")
    assert relative_error(y, expected) <= TOLERANCE[np.float32], (size, dilation)
    direct = register_tiles.direct(x, kernel, (1,), (dilation,), 1, (4096,),
                                   padding=(((size - 1) * dilation, 0),), threads=2)
    np.testing.assert_array_equal(direct, y)


def test_every_cell_written_once_and_the_workers_share_evenly():
    """The segments cover each image's cells in order, none shorter than the least,
    and their count is a multiple of the workers where the cells allow."""
    rng = np.random.default_rng(11)
    for _ in range(500):
        cells, images = int(rng.integers(1, 70000)), int(rng.integers(1, 9))
        workers = int(rng.integers(2, 9))
        edges = segments.segment_edges(cells, images, workers)
        case = (cells, images, workers, edges)
        assert edges[0] == 0 and edges[-1] == cells, case
        assert all(b > a for a, b in zip(edges, edges[1:])), case
        count = len(edges) - 1
        if count > 1:
            assert min(b - a for a, b in zip(edges, edges[1:])) >= segments.MIN_SEGMENT_CELLS - \
                segments.CELL_ALIGN // 2, case
        wanted = math.ceil(register_tiles.JOBS_PER_WORKER * workers / images)
        if cells >= segments.MIN_SEGMENT_CELLS * (wanted + workers):
            assert count >= wanted and (count * images) % workers == 0, case


def test_a_long_signal_is_not_copied():
    """Segments inside the input read it where it lies: a call's peak extra memory is
    its output and the padded rows of the two end segments, not a copy of the input."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 65536, 64)).astype(np.float32)
    kernel = rng.standard_normal((2, 64, 16)).astype(np.float32)
    out_bytes = 65536 * 16 * 4
    peak = peak_extra_bytes(lambda: register_tiles.direct(
        x, kernel, (1,), (8,), 1, (65536,), padding=((8, 0),), threads=2))
    assert peak <= out_bytes + 0.1 * x.nbytes, (peak, out_bytes, x.nbytes)


def test_non_finite_inputs_reach_only_the_windows_that_read_them():
    """A NaN and an inf at segment edges and in the padding's neighbourhood reach the
    outputs whose windows read them, as in PyTorch, and no other."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 4096, 16))
    for position, value in ((0, np.nan), (511, np.inf), (512, -np.inf), (4095, np.nan),
                            (2050, np.nan)):
        x[0, position, 3] = value
    kernel = rng.standard_normal((3, 16, 32))
    for pads, dilation in (((8, 0), 4), ((2, 2), 2), ((0, 0), 1)):
        out = 4096 + sum(pads) - 2 * dilation
        expected = torch_conv1d(x, kernel, 1, dilation, 1, pads)
        y = register_tiles.direct(guarded(x, np.float32), kernel.astype(np.float32), (1,),
                                  (dilation,), 1, (out,), padding=(pads,), threads=2)
        np.testing.assert_array_equal(np.isnan(y), np.isnan(expected), err_msg=str(pads))
        np.testing.assert_array_equal(np.isinf(y), np.isinf(expected), err_msg=str(pads))
