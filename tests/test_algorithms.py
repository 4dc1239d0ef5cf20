"""Every fast algorithm path against a slow reference and against PyTorch.

The reference below is the definition written out tap by tap and group by
group in float64; the algorithms are called directly (forcing each path,
with and without numba / SciPy's BLAS) on random shapes they apply to.
Bounds: relative error ``‖a − b‖ / ‖b‖`` ≤ 1e-5 in float32, ≤ 1e-10 in float64.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from _helpers import (
    DTYPES,
    assert_cheapest_applies,
    assert_runs_as_reference,
    check,
    random_padding,
    reference_direct,
    reference_transposed,
    reference_weight_grad,
    relative_error,
)
from convarith.arithmetic import conv_output_size
from convarith.engine.algorithms import depthwise, fft, flat_rows, phase, winograd
from convarith.engine.dispatch import ConvProblem
from numba_free import run_without_numba

SEEDS = range(6)


# --------------------------------------------------------------------------- slow reference


def random_problem(rng, rank, *, kernel=None, strides=None, dilation=None, groups=1,
                   channels=None, filters=None):
    kernel = kernel or tuple(int(v) for v in rng.integers(1, 4, rank))
    strides = strides or tuple(int(v) for v in rng.integers(1, 4, rank))
    dilation = dilation or tuple(int(v) for v in rng.integers(1, 3, rank))
    channels = channels or groups * int(rng.integers(1, 5))
    filters = filters or groups * int(rng.integers(1, 5))
    effective = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
    padded = tuple(e + int(rng.integers(0, 8)) for e in effective)
    out_size = tuple((p - e) // s + 1 for p, e, s in zip(padded, effective, strides))
    batch = int(rng.integers(1, 3))
    xp = rng.standard_normal((batch, *padded, channels))
    k = rng.standard_normal((*kernel, channels // groups, filters))
    return xp, k, strides, dilation, out_size


# --------------------------------------------------------------------------- flat rows


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_flat_rows_forward_and_weight_grad(seed, rank):
    rng = np.random.default_rng(100 * rank + seed)
    xp, k, strides, dilation, out_size = random_problem(rng, rank)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    dy = rng.standard_normal((xp.shape[0], *out_size, k.shape[-1]))
    expected_dk = reference_weight_grad(xp, dy, k.shape[:rank], strides, dilation, 1)
    for dtype in DTYPES:
        for gather, use_blas in itertools.product([True, False], [True, False]):
            y = flat_rows.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, 1,
                                 out_size, gather=gather, use_blas=use_blas)
            check(y, expected, dtype, seed, f"flat_rows gather={gather} blas={use_blas}")
        # gathering without numba (NumPy copies instead of the compiled im2col)
        y = flat_rows.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, 1,
                             out_size, gather=True, use_numba=False, threads=2, chunk_bytes=1)
        check(y, expected, dtype, seed, "flat_rows gather without numba")
        # one row per chunk: many chunks, on 1 or 2 threads, per-tap products or default
        for threads, gather in itertools.product((1, 2), (False, None)):
            y = flat_rows.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, 1,
                                 out_size, threads=threads, chunk_bytes=1, gather=gather)
            check(y, expected, dtype, seed,
                  f"flat_rows threads={threads} gather={gather} one-row chunks")
        dk = flat_rows.weight_grad(xp.astype(dtype), dy.astype(dtype), k.shape[:rank],
                                   strides, dilation, 1)
        check(dk, expected_dk, dtype, seed, "flat_rows weight_grad")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_flat_rows_zero_padding(seed, rank):
    """``padding=`` (written into the im2col columns, or padded first) equals the padded input's result."""
    rng = np.random.default_rng(800 + 10 * rank + seed)
    x, k, strides, dilation, _ = random_problem(rng, rank)
    if seed == 0:
        k = k[(slice(0, 1),) * rank]  # 1×1
    pads, xp, out_size = random_padding(rng, x, k, strides, dilation)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    for gather, use_numba in itertools.product([None, True, False], [None, False]):
        y = flat_rows.direct(x, k, strides, dilation, 1, out_size, gather=gather,
                             use_numba=use_numba, threads=2, chunk_bytes=[None, 1][seed % 2],
                             padding=pads)
        check(y, expected, np.float64, seed,
              f"flat_rows padding={pads} gather={gather} numba={use_numba}")
    dy = rng.standard_normal((x.shape[0], *out_size, k.shape[-1]))
    dk = flat_rows.weight_grad(x, dy, k.shape[:rank], strides, dilation, 1, padding=pads)
    check(dk, reference_weight_grad(xp, dy, k.shape[:rank], strides, dilation, 1), np.float64,
          seed, f"flat_rows weight_grad padding={pads}")


@pytest.mark.parametrize("seed", SEEDS)
def test_flat_rows_chunks_across_images(seed):
    """Stride-1 chunks run over the whole batch; any chunk size gives the same result."""
    rng = np.random.default_rng(150 + seed)
    xp, k, strides, dilation, out_size = random_problem(rng, 2, strides=(1, 1))
    xp = np.concatenate([xp, -xp, 2 * xp])  # several images
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    for chunk_bytes in (1, 50, 300, 5000):
        y = flat_rows.direct(xp, k, strides, dilation, 1, out_size, threads=2,
                             chunk_bytes=chunk_bytes)
        check(y, expected, np.float64, seed, f"flat_rows chunk_bytes={chunk_bytes}")


@pytest.mark.parametrize(("strides", "size"), [((2, 2), (17, 18)), ((1, 1), (9, 7)),
                                               ((2, 1), (12, 5)), ((3,), (40,))])
def test_flat_rows_weight_grad_on_two_workers(strides, size, monkeypatch):
    """A short flat grid (under GRAD_CHUNK_ROWS rows a worker) cut into one chunk a
    worker, down to chunks of a few rows: the partial gradients add up to the
    reference's."""
    rng = np.random.default_rng(sum(size) + 10 * len(strides))
    rank = len(strides)
    xp = rng.standard_normal((5, *size, 6))
    k = rng.standard_normal((*(3,) * rank, 6, 7))
    out_size = tuple(conv_output_size(n, 3, s) for n, s in zip(size, strides))
    dy = rng.standard_normal((5, *out_size, 7))
    expected = reference_weight_grad(xp, dy, k.shape[:rank], strides, (1,) * rank, 1)
    for minimum in (flat_rows.GRAD_MIN_CHUNK_ROWS, 7):
        monkeypatch.setattr(flat_rows, "GRAD_MIN_CHUNK_ROWS", minimum)
        for dtype in DTYPES:
            dk = flat_rows.weight_grad(xp.astype(dtype), dy.astype(dtype), k.shape[:rank],
                                       strides, (1,) * rank, 1, threads=2)
            check(dk, expected, dtype, 0, f"flat_rows weight_grad {strides} {size} "
                                          f"min rows {minimum}")
    assert flat_rows.grad_chunk_rows(3584, 2) == 1792
    assert flat_rows.grad_chunk_rows(3584, 1) == 4096


@pytest.mark.parametrize(("strides", "cropped"), [((1, 1), 0), ((1, 1), 1), ((2, 3), 0)])
def test_flat_rows_pointwise_is_one_product(strides, cropped):
    """1×1 kernels (one BLAS product): strided, and with input cells left unread."""
    rng = np.random.default_rng(7)
    xp = rng.standard_normal((3, 7, 8, 5))
    k = rng.standard_normal((1, 1, 5, 4))
    out_size = tuple(-(-(n - cropped) // s) for n, s in zip(xp.shape[1:3], strides))
    y = flat_rows.direct(xp, k, strides, (1, 1), 1, out_size)
    check(y, reference_direct(xp, k, strides, (1, 1), 1, out_size), np.float64, 7, "1x1")
    dy = rng.standard_normal((3, *out_size, 4))
    dk = flat_rows.weight_grad(xp, dy, (1, 1), strides, (1, 1), 1)
    check(dk, reference_weight_grad(xp, dy, (1, 1), strides, (1, 1), 1), np.float64, 7,
          "1x1 weight_grad")


@pytest.mark.parametrize("chunk_bytes", [1, 40, 200, 100_000])
def test_flat_rows_im2col_blocks(chunk_bytes):
    """Few channels: compiled im2col in blocks of rows, or of part of a row (1-D)."""
    rng = np.random.default_rng(chunk_bytes)
    xp = rng.standard_normal((2, 60, 3))
    k = rng.standard_normal((3, 3, 4))
    y = flat_rows.direct(xp, k, (2,), (3,), 1, (27,), chunk_bytes=chunk_bytes, threads=2)
    check(y, reference_direct(xp, k, (2,), (3,), 1, (27,)), np.float64, chunk_bytes, "1-D")
    xp = rng.standard_normal((2, 9, 60, 3))
    k = rng.standard_normal((2, 3, 3, 4))
    y = flat_rows.direct(xp, k, (1, 2), (1, 3), 1, (8, 27), chunk_bytes=chunk_bytes,
                         threads=2)
    check(y, reference_direct(xp, k, (1, 2), (1, 3), 1, (8, 27)), np.float64, chunk_bytes,
          "2-D")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_flat_rows_few_cells_many_channels(seed, rank):
    """Small images, many channels: the im2col of the real cells, in blocks of whole
    images or of rows of one image, any stride, dilation and zero padding."""
    rng = np.random.default_rng(900 + 10 * rank + seed)
    kernel = tuple(int(v) for v in rng.integers(2, 4, rank))
    channels = -(-flat_rows.GATHER_BELOW // math.prod(kernel)) + int(rng.integers(0, 9))
    x, k, strides, dilation, _ = random_problem(rng, rank, kernel=kernel, channels=channels,
                                                filters=int(rng.integers(1, 9)))
    x = np.concatenate([x, -x])  # several images per block
    pads, xp, out_size = random_padding(rng, x, k, strides, dilation)
    assert flat_rows.gathers_cells(kernel, channels, out_size), (seed, out_size)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    item = np.dtype(np.float64).itemsize
    one_image = math.prod(out_size) * math.prod(kernel) * channels * item
    for chunk_bytes, threads in [(None, 1), (1, 2), (one_image, 2), (3 * one_image, 2)]:
        images, rows = flat_rows.cells_block(x.shape[0], out_size, math.prod(kernel) * channels,
                                             item, chunk_bytes)
        for padding, source in [(pads, x), (None, xp)]:
            y = flat_rows.direct(source, k, strides, dilation, 1, out_size, threads=threads,
                                 chunk_bytes=chunk_bytes, padding=padding)
            check(y, expected, np.float64, seed,
                  f"few cells chunk_bytes={chunk_bytes} ({images} images, {rows} rows), "
                  f"padding={padding}")
        y32 = flat_rows.direct(xp.astype(np.float32), k.astype(np.float32), strides, dilation,
                               1, out_size, threads=threads, chunk_bytes=chunk_bytes)
        check(y32, expected, np.float32, seed, f"few cells float32 chunk_bytes={chunk_bytes}")
    dy = rng.standard_normal((x.shape[0], *out_size, k.shape[-1]))
    expected_dk = reference_weight_grad(xp, dy, kernel, strides, dilation, 1)
    for threads in (1, 2):
        dk = flat_rows.weight_grad(x, dy, kernel, strides, dilation, 1, threads=threads,
                                   padding=pads)
        check(dk, expected_dk, np.float64, seed, f"few cells weight_grad threads={threads}")


@pytest.mark.parametrize("seed", range(4))
def test_flat_rows_few_cells_against_torch(seed):
    """Wide layers on small images as PyTorch computes them (stride, dilation, padding),
    through the engine with flat_rows named."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec
    from convarith.engine import conv

    rng = np.random.default_rng(950 + seed)
    size = int(rng.integers(2, 9))
    kernel, stride, dilation = int(rng.integers(2, 4)), int(rng.integers(1, 3)), 1
    if size >= 2 * kernel:
        dilation = int(rng.integers(1, 3))
    padding = int(rng.integers(0, kernel))
    channels, filters, batch = int(rng.integers(80, 113)), int(rng.integers(8, 40)), 3
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    k = rng.standard_normal((kernel, kernel, channels, filters)).astype(np.float32)
    spec = ConvSpec(kernel, strides=stride, dilation=dilation, padding=padding)
    y = conv(x, k, spec, algorithm="flat_rows")
    expected = torch.nn.functional.conv2d(
        torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64)),
        torch.from_numpy(k.transpose(3, 2, 0, 1).astype(np.float64)),
        stride=stride, padding=padding, dilation=dilation).numpy().transpose(0, 2, 3, 1)
    out_size = expected.shape[1:3]
    assert flat_rows.gathers_cells((kernel, kernel), channels, out_size)
    check(y, expected, np.float32, seed, f"few cells vs torch {spec}")


@pytest.mark.parametrize("batch", [1, 16])
@pytest.mark.parametrize(("size", "channels", "filters", "kernel"), [
    (2, 512, 512, 3), (4, 512, 512, 3), (7, 256, 256, 3), (7, 1024, 1024, 3),
    (10, 512, 512, 3), (14, 512, 512, 3), (4, 64, 64, 3), (7, 2048, 512, 1),
])
def test_wide_small_layers_choose_the_cheapest(batch, size, channels, filters, kernel):
    """Wide layers on small images: the choice applies and is the cheapest by every cost."""
    pad = kernel // 2
    problem = ConvProblem((batch, size + 2 * pad, size + 2 * pad, channels),
                          (kernel, kernel, channels, filters), (1, 1), (1, 1), 1,
                          (size, size), np.dtype(np.float32))
    name = assert_cheapest_applies(problem)
    if name == "flat_rows" and flat_rows.gathers_cells((kernel, kernel), channels, (size, size)):
        assert flat_rows.cost(problem) == flat_rows.cells_cost(problem)


def test_flat_rows_plan_skips_no_product():
    # stride 2, 3 taps: phases 0 and 1, taps at shifts 0, 0, 1 of their phase
    p = flat_rows.plan((9,), (3,), (2,), (1,))
    assert p.phases == ((0,), (1,))
    assert [(k, ph, shift) for k, ph, shift in p.taps] == [((0,), 0, 0), ((1,), 1, 0),
                                                            ((2,), 0, 1)]


# --------------------------------------------------------------------------- winograd


@pytest.mark.parametrize("seed", SEEDS)
def test_winograd_weight_grad(seed):
    """The F(4×4) weight gradient (and its per-tap fallback) against the slow reference."""
    rng = np.random.default_rng(470 + seed)
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    size = tuple(int(v) for v in rng.integers(5, 30, 2))
    x = rng.standard_normal((int(rng.integers(1, 4)), *size, int(rng.integers(1, 6))))
    filters = int(rng.integers(1, 6))
    pads = tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3))) for _ in range(2))
    xp = np.pad(x, ((0, 0), *pads, (0, 0)))
    out_size = tuple(p - 2 * d for p, d in zip(xp.shape[1:-1], dilation))
    if min(out_size) < 1:
        pytest.skip(f"seed {seed}: input too small for the dilation")
    dy = rng.standard_normal((x.shape[0], *out_size, filters))
    expected = reference_weight_grad(xp, dy, (3, 3), (1, 1), dilation, 1)
    for dtype in DTYPES:
        for chunk_tiles in (None, 3):
            dk = winograd.weight_grad(x.astype(dtype), dy.astype(dtype), (3, 3), (1, 1),
                                      dilation, 1, padding=pads, threads=1 + seed % 2,
                                      chunk_tiles=chunk_tiles)
            check(dk, expected, dtype, seed,
                  f"winograd weight_grad padding={pads} dilation={dilation} chunk={chunk_tiles}")
    # too few tiles for its channels: the per-tap products, same numbers
    wide = rng.standard_normal((1, 6, 6, 40))
    dy_wide = rng.standard_normal((1, 4, 4, 3))
    check(winograd.weight_grad(wide, dy_wide, (3, 3), (1, 1), (1, 1), 1),
          reference_weight_grad(wide, dy_wide, (3, 3), (1, 1), (1, 1), 1), np.float64, seed,
          "winograd weight_grad fallback")


@pytest.mark.parametrize("seed", SEEDS)
def test_winograd_padding_read_in_place(seed):
    """``padding=`` (zeros read by the compiled transform, or padded first) equals the padded input."""
    rng = np.random.default_rng(420 + seed)
    dilation = tuple(int(v) for v in rng.integers(1, 3, 2))
    size = tuple(int(v) for v in rng.integers(1, 14, 2))
    x = rng.standard_normal((int(rng.integers(1, 3)), *size, int(rng.integers(1, 9))))
    k = rng.standard_normal((3, 3, x.shape[-1], int(rng.integers(1, 6))))
    pads, xp, out_size = random_padding(rng, x, k, (1, 1), dilation)
    expected = reference_direct(xp, k, (1, 1), dilation, 1, out_size)
    for dtype in DTYPES:
        for use_numba in ([True, False] if winograd._numba_kernels() else [False]):
            y = winograd.direct(x.astype(dtype), k.astype(dtype), (1, 1), dilation, 1, out_size,
                                use_numba=use_numba, workspace_bytes=[None, 1][seed % 2],
                                padding=pads)
            check(y, expected, dtype, seed,
                  f"winograd padding={pads} dilation={dilation} numba={use_numba}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("m", [2, 4])
def test_winograd_forward(seed, m):
    rng = np.random.default_rng(200 + 10 * m + seed)
    channels, filters = int(rng.integers(1, 40)), int(rng.integers(1, 40))
    xp, k, strides, dilation, out_size = random_problem(
        rng, 2, kernel=(3, 3), strides=(1, 1), channels=channels, filters=filters)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    for dtype in DTYPES:
        for use_numba in (None, False):
            y = winograd.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, 1,
                                out_size, m=m, use_numba=use_numba,
                                workspace_bytes=int(rng.integers(1, 1 << 16)))
            check(y, expected, dtype, seed, f"winograd F({m}) numba={use_numba}")


def test_winograd_float32_error_with_many_channels():
    """F(4×4, 3×3) in float32 on a wide layer (the bench's L1) stays well inside 1e-5."""
    rng = np.random.default_rng(7)
    xp = rng.standard_normal((1, 30, 30, 256)).astype(np.float32)
    k = (rng.standard_normal((3, 3, 256, 64)) / 48).astype(np.float32)
    y = winograd.direct(xp, k, (1, 1), (1, 1), 1, (28, 28))
    error = relative_error(y, reference_direct(xp, k, (1, 1), (1, 1), 1, (28, 28)))
    assert error < 5e-6, error


def test_winograd_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="3x3"):
        winograd.direct(np.zeros((1, 5, 5, 1)), np.zeros((2, 2, 1, 1)), (1, 1), (1, 1), 1,
                        (4, 4))
    with pytest.raises(ValueError, match="m must be 2 or 4"):
        winograd.transform(3)


# --------------------------------------------------------------------------- depthwise


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_depthwise_forward_and_weight_grad(seed, rank):
    rng = np.random.default_rng(300 + 10 * rank + seed)
    channels = int(rng.integers(1, 9))
    multiplier = int(rng.integers(1, 3))
    xp, k, strides, dilation, out_size = random_problem(
        rng, rank, groups=channels, channels=channels, filters=channels * multiplier)
    expected = reference_direct(xp, k, strides, dilation, channels, out_size)
    dy = rng.standard_normal((xp.shape[0], *out_size, k.shape[-1]))
    expected_dk = reference_weight_grad(xp, dy, k.shape[:rank], strides, dilation, channels)
    for dtype in DTYPES:
        for use_numba in (None, False):
            y = depthwise.direct(xp.astype(dtype), k.astype(dtype), strides, dilation,
                                 channels, out_size, use_numba=use_numba,
                                 threads=1 + seed % 2)
            check(y, expected, dtype, seed, f"depthwise numba={use_numba}")
            dk = depthwise.weight_grad(xp.astype(dtype), dy.astype(dtype), k.shape[:rank],
                                       strides, dilation, channels, use_numba=use_numba)
            check(dk, expected_dk, dtype, seed, f"depthwise weight_grad numba={use_numba}")


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_depthwise_skips_zero_padding(seed, rank):
    """``padding=`` (no padded copy in the compiled loop) equals the padded input's result."""
    rng = np.random.default_rng(700 + 10 * rank + seed)
    channels = int(rng.integers(1, 9))
    multiplier = int(rng.integers(1, 3))
    x, k, strides, dilation, _ = random_problem(
        rng, rank, groups=channels, channels=channels, filters=channels * multiplier)
    pads, xp, out_size = random_padding(rng, x, k, strides, dilation)
    expected = reference_direct(xp, k, strides, dilation, channels, out_size)
    dy = rng.standard_normal((x.shape[0], *out_size, k.shape[-1]))
    expected_dk = reference_weight_grad(xp, dy, k.shape[:rank], strides, dilation, channels)
    for dtype in DTYPES:
        for use_numba in (None, False):
            y = depthwise.direct(x.astype(dtype), k.astype(dtype), strides, dilation, channels,
                                 out_size, use_numba=use_numba, threads=1 + seed % 2,
                                 padding=pads)
            check(y, expected, dtype, seed, f"depthwise padding={pads} numba={use_numba}")
            dk = depthwise.weight_grad(x.astype(dtype), dy.astype(dtype), k.shape[:rank],
                                       strides, dilation, channels, use_numba=use_numba,
                                       threads=1 + seed % 2, padding=pads)
            check(dk, expected_dk, dtype, seed,
                  f"depthwise weight_grad padding={pads} numba={use_numba}")


# --------------------------------------------------------------------------- phase (transposed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rank", [1, 2])
def test_phase_transposed(seed, rank):
    rng = np.random.default_rng(400 + 10 * rank + seed)
    kernel_size = tuple(int(v) for v in rng.integers(1, 6, rank))
    strides = tuple(int(v) for v in rng.integers(1, 4, rank))
    dilation = tuple(int(v) for v in rng.integers(1, 3, rank))
    size = tuple(int(v) for v in rng.integers(2, 7, rank))
    padding = tuple(
        (int(rng.integers(-1, (k - 1) * d + 1)), int(rng.integers(-1, (k - 1) * d + 1)))
        for k, d in zip(kernel_size, dilation)
    )
    c, f = int(rng.integers(1, 5)), int(rng.integers(1, 5))
    x = rng.standard_normal((2, *size, c))
    k = rng.standard_normal((*kernel_size, f, c))
    expected = reference_transposed(x, k, strides, dilation, padding)
    if min(expected.shape) == 0:
        pytest.skip(f"empty output for seed {seed}")
    for dtype in DTYPES:
        for use_blas in (True, False):
            y = phase.transposed(x.astype(dtype), k.astype(dtype), strides, dilation, 1,
                                 padding, expected.shape[1:-1], use_blas=use_blas)
            check(y, expected, dtype, seed, f"phase transposed blas={use_blas}")
        y = phase.transposed(x.astype(dtype), k.astype(dtype), strides, dilation, 1, padding,
                             expected.shape[1:-1], threads=2, chunk_bytes=1)
        check(y, expected, dtype, seed, "phase transposed, one-row chunks")


# --------------------------------------------------------------------------- fft


@pytest.mark.parametrize("seed", SEEDS[:3])
@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fft_forward(seed, rank):
    rng = np.random.default_rng(600 + 10 * rank + seed)
    xp, k, strides, dilation, out_size = random_problem(rng, rank, strides=(1,) * rank)
    expected = reference_direct(xp, k, strides, dilation, 1, out_size)
    for dtype in DTYPES:
        y = fft.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, 1, out_size,
                       threads=1 + seed % 2)
        check(y, expected, dtype, seed, "fft")


def test_fft_applies_to_small_and_very_large_kernels_and_the_cheapest_runs():
    """FFT applies to a 7×7 and a 65×65 layer; whichever algorithm the registered costs pick
    (FFT's cost grows with the padded grid, not the taps) applies, is the cheapest, and
    computes the convolution."""
    f32 = np.dtype(np.float32)
    small = ConvProblem((2, 70, 70, 32), (7, 7, 32, 32), (1, 1), (1, 1), 1, (64, 64), f32)
    huge = ConvProblem((64, 160, 160, 4), (65, 65, 4, 4), (1, 1), (1, 1), 1, (96, 96), f32)
    for seed, problem in enumerate((small, huge)):
        assert fft.applies(problem)
        assert_cheapest_applies(problem)
        assert_runs_as_reference(problem, 610 + seed, batch=1)


# --------------------------------------------------------------------------- chunks


def test_run_chunks_covers_the_range_once_in_order():
    from convarith.engine.algorithms._threads import run_chunks

    for threads in (1, 2, 3):
        results = run_chunks(lambda a, b: list(range(a, b)), 23, 5, threads=threads)
        assert [len(r) for r in results] == [5, 5, 5, 5, 3]
        assert sum(results, []) == list(range(23))
    seen = run_chunks(lambda a, b: a, 1000, 1, threads=2)  # many chunks, shared out
    assert seen == list(range(1000))


def _finishes(fn, seconds=20.0):
    """Run ``fn`` in a thread; its result, or a failure if it hangs."""
    import threading

    box = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "run_chunks hung"
    return box[0]


def test_run_chunks_nested_calls_finish():
    """A chunk that runs chunks itself (the helper threads are kept between calls)."""
    from convarith.engine.algorithms._threads import run_chunks

    def outer(start, stop):
        return sum(run_chunks(lambda a, b: sum(range(a, b)), 50, 7, threads=2)) + start

    results = _finishes(lambda: run_chunks(outer, 6, 1, threads=2))
    assert results == [sum(range(50)) + i for i in range(6)]


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_run_chunks_in_a_forked_child():
    """A forked child has none of its parent's helper threads: it makes its own."""
    import os

    from convarith.engine.algorithms._threads import run_chunks

    assert run_chunks(lambda a, b: a, 8, 1, threads=2) == list(range(8))  # parent's pool
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ok = run_chunks(lambda a, b: a, 8, 1, threads=2) == list(range(8))
        finally:
            os._exit(0 if ok else 1)
    code = _finishes(lambda: os.waitpid(pid, 0)[1])
    assert os.waitstatus_to_exitcode(code) == 0


def test_run_chunks_keeps_helpers_off_the_callers_core(monkeypatch):
    import os
    import threading
    import time

    from convarith.engine.algorithms import _threads

    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set()
    getcpu = _threads._sched_getcpu()
    if len(allowed) < 2 or getcpu is None:
        pytest.skip("needs two cores and sched_getcpu")
    caller_core = min(allowed)
    monkeypatch.setattr(_threads, "_current_cpu", lambda: caller_core)
    caller = threading.get_ident()
    cores: list[int] = []

    def work(start, stop):
        if threading.get_ident() != caller:
            cores.append(getcpu())
        time.sleep(0.001)  # leave chunks for the helper
        return start

    _threads.run_chunks(work, 40, 1, threads=2)
    assert cores, "the helper thread ran no chunk"
    assert caller_core not in cores
    assert os.sched_getaffinity(0) == allowed  # the caller's own affinity is untouched


# --------------------------------------------------------------------------- dispatch

@pytest.mark.parametrize(
    ("shape", "kernel", "strides", "dilation", "groups"),
    [
        ((8, 58, 58, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1),
        ((8, 60, 60, 64), (3, 3, 64, 64), (1, 1), (2, 2), 1),
        ((8, 57, 57, 64), (3, 3, 64, 128), (2, 2), (1, 1), 1),
        ((8, 58, 58, 128), (3, 3, 1, 128), (1, 1), (1, 1), 128),
        ((32, 14, 14, 256), (1, 1, 256, 256), (1, 1), (1, 1), 1),
        ((8, 117, 117, 3), (7, 7, 3, 64), (2, 2), (1, 1), 1),
    ],
)
def test_dispatch_takes_the_cheapest_that_applies(shape, kernel, strides, dilation, groups):
    """The benchmark's layers: the algorithm chosen applies, costs least by the registered
    costs (measured on one machine, so the name may differ elsewhere), and computes the
    convolution (on one image)."""
    rank = len(strides)
    out = tuple(conv_output_size(*axis) for axis in zip(shape[1:-1], kernel[:rank], strides,
                                                           dilation))
    problem = ConvProblem(shape, kernel, strides, dilation, groups, out, np.dtype(np.float32))
    assert_cheapest_applies(problem)
    assert_runs_as_reference(problem, 450 + sum(shape), batch=1)


# --------------------------------------------------------------------------- without numba


def test_paths_without_numba_installed():
    """With numba unimportable the default (``use_numba=None``) paths still run, exactly."""
    run_without_numba(
        """
        from convarith.engine.algorithms import depthwise, winograd
        rng = np.random.default_rng(0)
        xp = rng.standard_normal((2, 9, 8, 3))
        k = rng.standard_normal((3, 3, 3, 4))
        y = winograd.direct(xp, k, (1, 1), (1, 1), 1, (7, 6))
        ref = sum(np.einsum("nhwc,cf->nhwf", xp[:, i:i + 7, j:j + 6], k[i, j])
                  for i in range(3) for j in range(3))
        assert np.allclose(y, ref, rtol=0, atol=1e-12), "winograd"
        kd = rng.standard_normal((3, 3, 1, 3))
        y = depthwise.direct(xp, kd, (1, 1), (1, 1), 3, (7, 6))
        ref = sum(xp[:, i:i + 7, j:j + 6] * kd[i, j, 0] for i in range(3) for j in range(3))
        assert np.allclose(y, ref, rtol=0, atol=1e-12), "depthwise"
        from convarith.engine.algorithms import flat_rows
        y = flat_rows.direct(xp, k, (1, 1), (1, 1), 1, (7, 6), gather=True)
        ref = sum(np.einsum("nhwc,cf->nhwf", xp[:, i:i + 7, j:j + 6], k[i, j])
                  for i in range(3) for j in range(3))
        assert np.allclose(y, ref, rtol=0, atol=1e-12), "flat_rows"
        must_refuse(lambda: winograd.direct(xp, k, (1, 1), (1, 1), 1, (7, 6), use_numba=True))
        """
    )


# --------------------------------------------------------------------------- PyTorch oracle


@pytest.mark.oracle
@pytest.mark.parametrize("seed", range(4))
def test_algorithms_agree_with_torch(seed):
    torch = pytest.importorskip("torch")
    tf = torch.nn.functional
    rng = np.random.default_rng(500 + seed)

    def torch_conv(xp, k, strides, dilation, groups):
        xt = torch.from_numpy(np.moveaxis(xp, -1, 1).copy()).requires_grad_(True)
        wt = torch.from_numpy(np.moveaxis(k, (-1, -2), (0, 1)).copy()).requires_grad_(True)
        y = tf.conv2d(xt, wt, stride=strides, dilation=dilation, groups=groups)
        return y, xt, wt

    def to_last(t):
        return np.moveaxis(t.detach().numpy(), 1, -1)

    def kernel_last(t):
        return np.moveaxis(t.detach().numpy(), (0, 1), (-1, -2))

    cases = [
        ("flat_rows", random_problem(rng, 2), 1),
        ("winograd", random_problem(rng, 2, kernel=(3, 3), strides=(1, 1), channels=17,
                                    filters=9), 1),
    ]
    channels = int(rng.integers(2, 6))
    cases.append(("depthwise", random_problem(rng, 2, groups=channels, channels=channels,
                                              filters=2 * channels), channels))
    for name, (xp, k, strides, dilation, out_size), groups in cases:
        y_t, xt, wt = torch_conv(xp, k, strides, dilation, groups)
        dy = rng.standard_normal(y_t.shape)
        (dw_t,) = torch.autograd.grad(y_t, (wt,), torch.from_numpy(dy))
        module = {"flat_rows": flat_rows, "winograd": winograd, "depthwise": depthwise}[name]
        for dtype in DTYPES:
            y = module.direct(xp.astype(dtype), k.astype(dtype), strides, dilation, groups,
                              out_size)
            check(y, to_last(y_t), dtype, seed, f"{name} vs torch")
            grad = getattr(module, "weight_grad", None)
            if grad is not None:
                dk = grad(xp.astype(dtype), np.moveaxis(dy, 1, -1).astype(dtype),
                          k.shape[:2], strides, dilation, groups)
                check(dk, kernel_last(dw_t), dtype, seed, f"{name} weight_grad vs torch")

    # transposed by phases vs torch.conv_transpose2d (symmetric crop p, output padding)
    strides = tuple(int(v) for v in rng.integers(2, 4, 2))
    kernel_size = tuple(int(v) for v in rng.integers(2, 6, 2))
    crop = tuple(int(rng.integers(0, k)) for k in kernel_size)
    x = rng.standard_normal((2, 5, 6, 3))
    k = rng.standard_normal((*kernel_size, 4, 3))  # (K, F, C)
    y_t = tf.conv_transpose2d(torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
                              torch.from_numpy(np.moveaxis(k, (-1, -2), (0, 1)).copy()),
                              stride=strides, padding=crop)
    padding = tuple((kk - 1 - p, kk - 1 - p) for kk, p in zip(kernel_size, crop))
    for dtype in DTYPES:
        y = phase.transposed(x.astype(dtype), k.astype(dtype), strides, (1, 1), 1, padding,
                             y_t.shape[2:])
        check(y, to_last(y_t), dtype, seed, "phase transposed vs torch")


def test_run_chunks_leaves_blas_alone_when_told_it_is_not_used():
    """blas=False skips the single-threaded BLAS limit (pure compiled work); blas=True
    applies it inside the chunks and restores it after."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from convarith.engine.algorithms._threads import run_chunks

    def blas_threads():
        return [lib["num_threads"] for lib in threadpoolctl.threadpool_info()
                if lib["user_api"] == "blas"]

    # the first limited call also loads SciPy's BLAS (more libraries to list)
    seen_limited = run_chunks(lambda a, b: blas_threads(), 4, 1, threads=2)
    outside = blas_threads()
    if not outside or max(outside) < 2:
        pytest.skip("BLAS runs one thread here anyway")
    seen_free = run_chunks(lambda a, b: blas_threads(), 4, 1, threads=2, blas=False)
    assert all(max(counts) == 1 for counts in seen_limited)
    assert all(counts == outside for counts in seen_free)
    assert blas_threads() == outside


def test_thread_limit_and_environment_cap_the_engine_threads(monkeypatch):
    """thread_limit(n) and CONVARITH_NUM_THREADS cap worker_count; under a limit of one,
    every chunk runs on the calling thread; bad limits are refused by name."""
    import threading

    from convarith.engine import thread_limit
    from convarith.engine.algorithms._threads import run_chunks, worker_count

    cores = worker_count()
    with thread_limit(1):
        assert worker_count() == 1
        seen = run_chunks(lambda a, b: threading.get_ident(), 8, 1, flops=1e12)
        assert set(seen) == {threading.get_ident()}
        with thread_limit(64):
            assert worker_count() == cores  # a limit never adds threads
    assert worker_count() == cores
    monkeypatch.setenv("CONVARITH_NUM_THREADS", "1")
    assert worker_count() == 1
    monkeypatch.setenv("CONVARITH_NUM_THREADS", "zero")  # not a count: ignored
    assert worker_count() == cores
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(ValueError, match="threads must be a positive integer"):
            with thread_limit(bad):
                pass
