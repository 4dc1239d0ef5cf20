"""``depthwise_tiles``: the depthwise row kernels reading the input in place, edge tiles
compiled without the products on the padding.

Expected values come from PyTorch's depthwise ``conv2d`` in float64 (2-D) and from
the float64 definition (``_helpers.reference_direct``, 1-D). Configurations are
random (channels of 1-3 vectors or ending in a partial one, kernels 1-7 per axis, strides 1-3, dilation 1-3,
padding and crops, 1-3 images, 1-4 jobs); each failure names its seed. Bounds:
relative error ≤ 1e-5 in float32, ≤ 1e-10 in float64. The AVX2 code runs here too
where it can.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from _helpers import (
    TOLERANCE,
    assert_cheapest_applies,
    compiled_isas,
    kernels_here,
    peak_extra_bytes,
    reference_direct,
    relative_error,
)
from convarith.engine.algorithms import _llvm, _llvm_depthwise, depthwise
from convarith.engine.dispatch import ConvProblem
from convarith.engine.padding import pad

CI = os.environ.get("CI") == "true"
ISAS = compiled_isas()


def torch_depthwise(x, weights, strides, dilation, pads):
    """PyTorch's depthwise ``conv2d`` of channels-last ``x`` with per-side zero padding
    (negative: crops), back in channels-last float64."""
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).double()
    (top, bottom), (left, right) = pads
    t = torch.nn.functional.pad(t, (left, right, top, bottom))
    k = torch.from_numpy(np.ascontiguousarray(np.moveaxis(weights[:, :, 0, :], -1, 0)[:, None]))
    y = torch.nn.functional.conv2d(t, k.double(), stride=strides, dilation=dilation,
                                   groups=x.shape[-1])
    return np.moveaxis(y.numpy(), 1, -1)


def expected_of(x, weights, strides, dilation, pads, out):
    """The oracle of a :func:`random_case`: PyTorch for 2-D layers, else the slow reference."""
    if len(out) == 2:
        return torch_depthwise(x, weights, strides, dilation, pads)
    return reference_direct(pad(x, pads), weights, strides, dilation, x.shape[-1], out)


def random_case(seed: int, width: int):
    rng = np.random.default_rng(seed)
    rank = 1 if rng.random() < 0.2 else 2
    while True:
        channels = int(rng.choice([width, 2 * width, 3 * width, 5, 13, 24, 40, 33]))
        kernel = tuple(int(v) for v in rng.integers(1, 8, rank))
        strides = tuple(int(v) for v in rng.integers(1, 4, rank))
        dilation = tuple(int(v) for v in rng.choice([1, 1, 2, 3], rank))
        size = tuple(int(v) for v in rng.integers(1, 30, rank))
        pads = tuple((int(a), int(b)) for a, b in rng.choice([-1, 0, 1, 2, 3, 7], (rank, 2)))
        out = tuple((n + lo + hi - (k - 1) * d - 1) // s + 1
                    for n, (lo, hi), k, d, s in zip(size, pads, kernel, dilation, strides))
        if min(out) > 0:
            break
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, channels))
    weights = rng.standard_normal((*kernel, 1, channels))
    return x, weights, strides, dilation, pads, out, int(rng.integers(1, 5))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(5 if CI else 40))  # each compiles a few modules
def test_tiles_against_torch(seed, isa, monkeypatch):
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    width = _llvm.vector_width(np.float32)
    x, weights, strides, dilation, pads, out, threads = random_case(7700 + seed, width)
    expected = expected_of(x, weights, strides, dilation, pads, out)
    for dtype in (np.float32, np.float64) if seed % 2 else (np.float32,):
        what = (f"seed {7700 + seed} ({isa}, {dtype.__name__}, {threads} threads): x {x.shape}, "
                f"kernel {weights.shape}, strides {strides}, dilation {dilation}, padding {pads}")
        y = depthwise.tiles(x.astype(dtype), weights.astype(dtype), strides, dilation,
                            x.shape[-1], out, padding=pads, threads=threads)
        assert y.dtype == dtype and y.shape == expected.shape, what
        error = relative_error(y, expected)
        assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e}"


@pytest.mark.skipif(not kernels_here("native"), reason="no compiled kernels here")
@pytest.mark.parametrize("seed", range(3 if CI else 12))
def test_tiles_by_ctypes_against_torch(seed, monkeypatch):
    """Without numba the runner is called by ctypes, with the arrays' addresses."""
    made = _llvm_depthwise.call_runner()
    if made is None:
        pytest.skip("no compiled kernels here")
    monkeypatch.setattr(_llvm_depthwise, "call_runner",
                        lambda target=None: dataclasses.replace(made, call=None))
    depthwise._tiles_plan.cache_clear()  # (the plans hold their runner)
    try:
        x, weights, strides, dilation, pads, out, threads = random_case(7800 + seed, 16)
        expected = expected_of(x, weights, strides, dilation, pads, out)
        y = depthwise.tiles(x.astype(np.float32), weights.astype(np.float32), strides,
                            dilation, x.shape[-1], out, padding=pads, threads=threads)
        assert depthwise._tiles_plan.cache_info().currsize > 0
        error = relative_error(y, expected)
        assert error <= TOLERANCE[np.float32], f"seed {7800 + seed}: relative error {error:.2e}"
    finally:
        depthwise._tiles_plan.cache_clear()


@pytest.mark.skipif(not kernels_here("native"), reason="no compiled kernels here")
@pytest.mark.parametrize("shape, kernel, jobs", [((16, 7, 7, 64), 5, 4), ((1, 7, 7, 128), 3, 4),
                                                 ((1, 20, 9, 16), 3, 3), ((3, 4, 4, 32), 5, 3)])
def test_jobs_write_every_cell_once_and_share_evenly(shape, kernel, jobs):
    """Jobs of whole images, then blocks of channels, then rows: written into a strided
    ``out`` filled with a sentinel, every cell is the one-job result's; the jobs' cells
    differ by at most one image, block or row."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal(shape).astype(np.float32)
    weights = rng.standard_normal((kernel, kernel, 1, shape[-1])).astype(np.float32)
    pads = ((kernel // 2, kernel // 2),) * 2
    one = depthwise.tiles(x, weights, (1, 1), (1, 1), shape[-1], shape[1:3], padding=pads,
                          threads=1)
    big = np.full((shape[0], shape[1], 2 * shape[2], shape[3]), np.nan, np.float32)
    target = big[:, :, ::2]
    depthwise.tiles(x, weights, (1, 1), (1, 1), shape[-1], shape[1:3], padding=pads,
                    threads=2, out=target)
    assert np.array_equal(target, one) and np.isnan(big[:, :, 1::2]).all()
    plan = depthwise._tiles_plan(shape, (kernel, kernel), (1, 1), (1, 1), pads, shape[1:3],
                                 (shape[1] * shape[2] * shape[3], shape[2] * shape[3],
                                  shape[3]), np.dtype(np.float32), _llvm.vector_target(),
                                 jobs, False)
    assert plan is not None and jobs <= len(plan.jobs) <= 2 * jobs, len(plan.jobs)
    fields = [[dict(zip(_llvm_depthwise.DRIVE_FIELDS, call.fields)) for call in job]
              for job in plan.jobs]
    # tiles × rows × images × channel blocks each job runs, every kernel row counted once
    work = [sum(f["tiles"] * f["rows"] * f["images"] * f["blocks"] for f in job)
            for job in fields]
    assert max(work) <= 1.2 * min(work) + 2 * max(f["tiles"] for f in fields[0]), work


@pytest.mark.skipif(not kernels_here("native"), reason="no compiled kernels here")
def test_non_finite_input_reaches_only_its_windows():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((1, 7, 9, 32)).astype(np.float32)
    x[0, 0, 8, 3] = np.inf  # a corner: read only by the edge tiles
    weights = rng.standard_normal((5, 5, 1, 32)).astype(np.float32)
    y = depthwise.tiles(x, weights, (1, 1), (1, 1), 32, (7, 9), padding=((2, 2), (2, 2)))
    bad = ~np.isfinite(y)
    expected = np.zeros_like(bad)
    expected[0, 0:3, 6:9, 3] = True
    np.testing.assert_array_equal(bad, expected)


def test_edge_modules_leave_out_the_padding_columns():
    """A tile's module compiled for columns [1, 4) of a 3-tap, 2-cell window loads three
    input columns and does the five products that read them."""
    ir = _llvm_depthwise.row_module_ir(np.float32, 8, kernel=3, stride=1, dilation=1, cells=2,
                                       columns_read=(1, 4))
    assert ir.count("call <8 x float> @llvm.fma") == 5
    assert ir.count("* %xq") == 3


NETWORK_LAYERS = [  # MobileNetV2 and EfficientNet-B0 depthwise layers (112² input)
    (16, 56, 32, 3, 1), (1, 56, 96, 3, 2), (16, 28, 144, 5, 2), (16, 14, 240, 5, 1),
    (16, 7, 576, 3, 2), (16, 7, 672, 5, 1), (1, 7, 672, 5, 2), (16, 4, 960, 3, 1),
    (16, 4, 1152, 5, 1), (1, 4, 1152, 3, 1),
]


@pytest.mark.parametrize("batch, size, channels, kernel, stride", NETWORK_LAYERS)
def test_network_layers_choose_the_cheapest_and_match_the_reference(batch, size, channels,
                                                                    kernel, stride):
    pad_total = kernel - 1
    out = (size + pad_total - kernel) // stride + 1
    problem = ConvProblem((batch, size + pad_total, size + pad_total, channels),
                          (kernel, kernel, 1, channels), (stride, stride), (1, 1), channels,
                          (out, out), np.dtype(np.float32))
    name = assert_cheapest_applies(problem)
    rng = np.random.default_rng(batch * size + channels)
    x = rng.standard_normal((1, size, size, channels)).astype(np.float32)
    weights = rng.standard_normal((kernel, kernel, 1, channels)).astype(np.float32)
    pads = ((kernel // 2, kernel // 2),) * 2
    from convarith.engine.dispatch import choose

    y = choose(problem).direct(pad(x, pads), weights, (stride, stride), (1, 1), channels,
                               (out, out))
    expected = torch_depthwise(x.astype(np.float64), weights.astype(np.float64),
                               (stride, stride), (1, 1), pads)
    assert relative_error(y, expected) <= TOLERANCE[np.float32], (name, batch, size, channels)




@pytest.mark.skipif(not kernels_here("native"), reason="no compiled kernels here")
@pytest.mark.parametrize("shape, kernel, stride", [((4, 28, 28, 96), 3, 1), ((1, 7, 7, 680), 5, 2),
                                                   ((2, 30, 30, 24), 5, 1)])
def test_peak_memory_within_the_benchmarks_bound(shape, kernel, stride):
    """No copy of the input: a call's peak extra memory (result included) stays within
    1.5× its input, kernel and output bytes (the networks benchmark's bound), forward and
    by output phases (the strided layer's input gradient)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape).astype(np.float32)
    weights = rng.standard_normal((kernel, kernel, 1, shape[-1])).astype(np.float32)
    p = kernel // 2
    out = tuple((n + 2 * p - kernel) // stride + 1 for n in shape[1:3])
    y_bytes = shape[0] * out[0] * out[1] * shape[-1] * 4
    peak = peak_extra_bytes(lambda: depthwise.tiles(x, weights, (stride, stride), (1, 1), shape[-1],
                                               out, padding=((p, p), (p, p)), threads=1))
    assert peak <= 1.5 * (x.nbytes + weights.nbytes + y_bytes), (shape, kernel, peak)
    assert peak <= y_bytes + weights.nbytes + (64 << 10), (shape, kernel, peak)  # no copy
    if stride > 1:
        dy = rng.standard_normal((shape[0], *out, shape[-1])).astype(np.float32)
        lo = kernel - 1 - p
        pads = tuple((lo, n + p - ((o - 1) * stride + kernel) + lo) for n, o in zip(shape[1:3], out))
        peak = peak_extra_bytes(lambda: depthwise.transposed(dy, weights, (stride, stride), (1, 1),
                                                        shape[-1], pads, shape[1:3], threads=1))
        assert peak <= 1.5 * (dy.nbytes + weights.nbytes + x.nbytes), (shape, kernel, peak)


def test_depthwise_phases_whose_every_output_cell_is_padding() -> None:
    """A cropped stride-2 depthwise transposed convolution whose one output cell no input
    reaches: zeros (PyTorch's conv_transpose2d gives zeros there), not a missing runner."""
    from convarith.engine.algorithms import depthwise

    x = np.array([[[[0.125, -0.25]]]], np.float32)
    kernel = np.array([[[[0.5, 0.25]]]], np.float32)
    y = depthwise.transposed(x, kernel, (2, 1), (1, 1), 2, ((-1, 1), (0, 0)), (1, 1))
    assert y.shape == (1, 1, 1, 2) and not y.any()


@pytest.mark.skipif(not kernels_here("native"), reason="no compiled kernels here")
@pytest.mark.parametrize("seed", range(4 if CI else 16))
def test_jobs_on_the_spinning_helpers_match_the_closures(seed, monkeypatch):
    """Layers cut into several jobs (the thresholds lowered so that small random layers
    are) run as rows of compiled calls on the spinning helpers: bit for bit the result of
    the same jobs run as closures (spinning turned off), and PyTorch's within bounds."""
    monkeypatch.setattr(depthwise, "TILES_THREADED_FLOPS", 0)
    monkeypatch.setattr(depthwise, "TILES_JOB_FLOPS", 1)
    x, weights, strides, dilation, pads, out, threads = random_case(7900 + seed, 16)
    threads = max(2, threads)
    expected = expected_of(x, weights, strides, dilation, pads, out)
    what = (f"seed {7900 + seed} ({threads} threads): x {x.shape}, kernel {weights.shape}, "
            f"strides {strides}, dilation {dilation}, padding {pads}")
    for dtype in (np.float32, np.float64):
        args = (x.astype(dtype), weights.astype(dtype), strides, dilation, x.shape[-1], out)
        native = depthwise.tiles(*args, padding=pads, threads=threads)
        monkeypatch.setenv("CONVARITH_SPIN_US", "0")
        closures = depthwise.tiles(*args, padding=pads, threads=threads)
        monkeypatch.delenv("CONVARITH_SPIN_US")
        assert np.array_equal(native, closures), what
        error = relative_error(native, expected)
        assert error <= TOLERANCE[dtype], f"{what} {dtype.__name__}: relative error {error:.2e}"


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("seed", range(4 if CI else 16))
def test_bands_of_rows_against_torch(seed, isa, monkeypatch):
    """Channel blocks run one after another band by band of output rows (the thresholds
    lowered so that small random layers are cut into one block a call and bands of one or
    a few rows, across the kernel rows skipped at the top and bottom): PyTorch's result
    within bounds, in float32 and float64, on one thread and several."""
    monkeypatch.setenv(_llvm.ISA_VARIABLE, isa)
    monkeypatch.setattr(depthwise, "TILES_ROWS_BYTES", 1)
    monkeypatch.setattr(depthwise, "TILES_BAND_BLOCKS", 2)
    width = _llvm.vector_width(np.float32)
    x, weights, strides, dilation, pads, out, threads = random_case(8100 + seed, width)
    expected = expected_of(x, weights, strides, dilation, pads, out)
    row_bytes = x.shape[-2] * x.shape[-1] * 4 * strides[0]
    depthwise._tiles_plan.cache_clear()  # (plans are remembered by shape, not by threshold)
    try:
        for band_bytes in (1, 3 * row_bytes):
            monkeypatch.setattr(depthwise, "TILES_BAND_BYTES", band_bytes)
            depthwise._tiles_plan.cache_clear()
            for dtype in (np.float32, np.float64):
                what = (f"seed {8100 + seed} ({isa}, {dtype.__name__}, bands of "
                        f"{band_bytes} bytes, {threads} threads): x {x.shape}, kernel "
                        f"{weights.shape}, strides {strides}, dilation {dilation}, "
                        f"padding {pads}")
                y = depthwise.tiles(x.astype(dtype), weights.astype(dtype), strides, dilation,
                                    x.shape[-1], out, padding=pads, threads=threads)
                error = relative_error(y, expected)
                assert error <= TOLERANCE[dtype], f"{what}: relative error {error:.2e}"
    finally:
        depthwise._tiles_plan.cache_clear()


def test_row_bands_cover_the_rows_once_within_the_bound(monkeypatch):
    """Bands of output rows: consecutive, covering ``[first, last)`` once, each within
    :data:`TILES_BAND_BYTES` of input rows unless it is a single row, of sizes that
    differ by at most one."""
    for band_bytes, first, last, row_bytes in [(512 << 10, 0, 28, 43008), (100, 3, 20, 30),
                                               (1, 0, 5, 7), (10 ** 9, 2, 9, 5), (64, 4, 4, 8)]:
        monkeypatch.setattr(depthwise, "TILES_BAND_BYTES", band_bytes)
        bands = depthwise._row_bands(first, last, row_bytes)
        assert bands[0][0] == first and bands[-1][1] == last
        assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
        sizes = [b - a for a, b in bands]
        assert max(sizes) - min(sizes) <= 1
        assert all(size * row_bytes <= band_bytes or size == 1 for size in sizes if size)
