"""Costs that know the worker count, and the dense paths' work shared among workers.

The costs of winograd, flat_rows, register_tiles and offset_gemm are one core's
time plus what more workers add (work left to the calling thread, chunks too few
or too many): tested as properties (the same with one worker as the one-core fit,
never lower with two, the planner's choice the cheapest under each count), never
as a measured winner. The paths cut for two workers are checked against PyTorch
on random layers (seed printed on failure).
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

from _helpers import check, reference_direct
from convarith.engine import dispatch
from convarith.engine.algorithms import _llvm, _threads, flat_rows, register_tiles, winograd
from convarith.engine.dispatch import ConvProblem
from convarith.engine.state import clear_caches

_COSTED = ("winograd", "flat_rows", "register_tiles", "offset_gemm")


def _set_workers(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    """Make every module that reads the worker count see ``workers``."""
    def count() -> int:
        return workers

    monkeypatch.setattr(_threads, "worker_count", count)
    monkeypatch.setattr(dispatch, "worker_count", count)
    for name in _COSTED:
        module = importlib.import_module(f"convarith.engine.algorithms.{name}")
        if hasattr(module, "worker_count"):
            monkeypatch.setattr(module, "worker_count", count)


def _problem(batch: int, size: int, c: int, f: int, stride: int) -> ConvProblem:
    out = -(-size // stride)
    padded = size + max(0, (out - 1) * stride + 3 - size)
    return ConvProblem((batch, padded, padded, c), (3, 3, c, f), (stride, stride), (1, 1), 1,
                       (out, out), np.dtype(np.float32))


SPREAD = [_problem(n, h, c, f, s) for n in (1, 2, 16) for h in (4, 7, 14, 28, 56)
          for c, f in ((32, 32), (64, 128), (128, 128), (256, 512), (512, 512), (1024, 1024))
          for s in (1, 2) if n * h * h * c <= 16 * 28 * 28 * 256]


def _costs(problem: ConvProblem) -> dict[str, float]:
    return {name: dispatch.get_algorithm(name).cost(problem) for name in _COSTED
            if dispatch.get_algorithm(name).applies(problem)}


def test_two_workers_never_cost_less_than_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """On every layer of the spread each cost with two workers is the one-worker cost
    or more (what the second worker cannot take); without per-block or per-chunk
    terms at most twice it (the second worker idle)."""
    _set_workers(monkeypatch, 1)
    one = {p: _costs(p) for p in SPREAD}
    _set_workers(monkeypatch, 2)
    for problem in SPREAD:
        two = _costs(problem)
        for name, cost in two.items():
            alone = one[problem][name]
            if math.isinf(alone):
                assert math.isinf(cost), (name, problem)
                continue
            assert alone <= cost, (name, problem, alone, cost)
            if name in ("flat_rows", "offset_gemm"):  # no per-block or per-chunk terms
                assert cost <= 2 * alone, (name, problem, alone, cost)


def test_one_product_costs_more_with_two_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Work that runs as one product in the caller costs :func:`parallel_penalty` more
    with two workers; work cut into chunks for every worker does not."""
    small_image = _problem(1, 14, 256, 512, 1)  # flat_rows: one product per tap, 14² grid
    assert flat_rows.chunk_count(small_image, 2) == 1
    _set_workers(monkeypatch, 1)
    alone = flat_rows.cost(small_image)
    offset_alone = dispatch.get_algorithm("offset_gemm").cost(small_image)
    _set_workers(monkeypatch, 2)
    assert flat_rows.cost(small_image) == pytest.approx(alone * _threads.parallel_penalty(1, 2))
    assert dispatch.get_algorithm("offset_gemm").cost(small_image) > offset_alone
    few_cells = _problem(1, 7, 512, 512, 1)  # im2col of 49 cells, its columns cut in two
    assert flat_rows.chunk_count(few_cells, 2) == 2
    assert flat_rows.cost(few_cells) == pytest.approx(flat_rows.cells_cost(few_cells))


def test_winograd_serial_blocks_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks of tiles repeat the input transform for each block of output channels:
    each block past the first adds :data:`winograd.SERIAL_PER_BLOCK` per extra worker.
    Shared tiles (few tiles) make no such blocks."""
    layer = _problem(1, 28, 512, 512, 1)  # 196 tiles of F(2×2) over the shared bound
    blocks = winograd._block_count(layer, 2)
    assert blocks > 1 and not winograd.use_shared_tiles(196, 4, 512, 4, True)
    _set_workers(monkeypatch, 1)
    alone = winograd.cost(layer)
    _set_workers(monkeypatch, 2)
    if _llvm.available(np.dtype(np.float32)):
        expected = (alone * (1 + winograd.PARALLEL_EXTRA) + winograd.PER_WORKER_HANDOVER
                    + winograd.SERIAL_PER_BLOCK * (blocks - 1))
    else:
        expected = alone + winograd.SERIAL_PER_BLOCK * blocks
    assert winograd.cost(layer) == pytest.approx(expected)


@pytest.mark.skipif(not _llvm.available(np.dtype(np.float32)), reason="no compiled kernels")
def test_register_tiles_more_chunks_reread_panels(monkeypatch: pytest.MonkeyPatch) -> None:
    """With two workers register_tiles cuts one image into more chunks, each reading
    the kernel's panels again: the cost grows by that and nothing else (a kernel smaller
    than the input: larger ones are shared by output channels, see
    test_register_tiles_many_channels)."""
    layer = _problem(1, 56, 64, 128, 1)
    _set_workers(monkeypatch, 1)
    alone = register_tiles.cost(layer)
    _set_workers(monkeypatch, 2)
    more = register_tiles._chunk_cells(layer, 2)[0] - register_tiles._chunk_cells(layer, 1)[0]
    assert more > 0
    panel_bytes = 9 * 64 * 128 * 4
    assert register_tiles.cost(layer) == pytest.approx(
        alone + register_tiles.PANEL_REREAD * more * panel_bytes)


@pytest.mark.parametrize("workers", [1, 2])
def test_choice_is_the_cheapest_for_the_worker_count(monkeypatch: pytest.MonkeyPatch,
                                                     workers: int) -> None:
    """The planner's choice is the cheapest applying algorithm by the costs under the
    worker count in force (its memo is keyed on the count)."""
    clear_caches()
    _set_workers(monkeypatch, workers)
    for problem in SPREAD[::3]:
        costs = {a.name: a.cost(problem) for a in dispatch._REGISTRY.snapshot()
                 if a.kind == "direct" and a.applies(problem)}
        chosen = dispatch.choose(problem).name
        assert costs[chosen] == min(costs.values()), (problem, workers, chosen, costs)
    clear_caches()


def test_parallel_penalty() -> None:
    assert _threads.parallel_penalty(4, 2) == 1.0
    assert _threads.parallel_penalty(5, 2) == pytest.approx(6 / 5)
    assert _threads.parallel_penalty(1, 2) == pytest.approx(1 + _threads.BLAS_SERIAL_SHARE)
    assert _threads.parallel_penalty(1, 4, blas=False) == 4.0
    assert _threads.parallel_penalty(3, 1) == 1.0


def test_balanced_blocks_cover_the_batch_once() -> None:
    """flat_rows' few-cells blocks and register_tiles' row chunks: every image or row
    exactly once, the chunk count a multiple of the workers where it can be."""
    for batch in range(1, 40):
        for most in range(1, batch + 1):
            for workers in (1, 2, 3, 4):
                edges = flat_rows.image_edges(batch, most, workers)
                sizes = np.diff(edges)
                assert edges[0] == 0 and edges[-1] == batch and sizes.min() >= 1
                assert sizes.max() <= most and sizes.max() - sizes.min() <= 1
                blocks = len(sizes)
                assert blocks % workers == 0 or blocks == batch, (batch, most, workers)
    for rows in range(1, 60):
        for count in range(1, rows + 1):
            for images, workers in ((1, 2), (3, 2), (1, 3)):
                edges = register_tiles._row_edges(rows, count, images, workers)
                sizes = np.diff(edges)
                assert edges[0] == 0 and edges[-1] == rows and sizes.min() >= 1
                assert sizes.max() <= -(-rows // count)  # no chunk above the slab's rows
                assert sizes.max() - sizes.min() <= 1
    assert flat_rows.cells_column_edges(1, 1000, 2) == [0, 496, 1000]


def test_threads_keep_the_callers_error_handling() -> None:
    """A float overflow in a helper thread follows the caller's ``np.errstate``."""
    big = np.full((64, 64), 3e38, np.float32)

    def work(start: int, stop: int) -> None:
        for _ in range(start, stop):
            _ = big * np.float32(10)

    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        _threads.run_chunks(work, 8, 1, threads=2)
    with np.errstate(over="ignore"):
        _threads.run_chunks(work, 8, 1, threads=2)


def _torch_conv(x: np.ndarray, kernel: np.ndarray, stride: int, padding: int) -> np.ndarray:
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2)
    kt = torch.from_numpy(kernel.astype(np.float64)).permute(3, 2, 0, 1)
    y = torch.nn.functional.conv2d(xt, kt, stride=stride, padding=padding)
    return y.permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("seed", range(6))
def test_paths_cut_for_two_workers_match_torch(seed: int) -> None:
    """winograd (kernel transform shared, packed products for every channel count),
    flat_rows' few cells (balanced blocks, column parts at batch 1) and register_tiles
    (panels packed by the workers, balanced rows) on two threads against PyTorch."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(7300 + seed)
    batch = int(rng.choice([1, 2, 3]))
    size = int(rng.integers(3, 15))
    c = int(rng.choice([40, 64, 96, 130]))
    f = int(rng.choice([32, 64, 80, 160]))
    stride = int(rng.integers(1, 3))
    x = rng.standard_normal((batch, size, size, c)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, c, f)) / math.sqrt(9 * c)).astype(np.float32)
    expected = _torch_conv(x, kernel, stride, 1)
    out = expected.shape[1:3]
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    what = f"seed {7300 + seed}: {batch}x{size}² {c}->{f} stride {stride}"
    if stride == 1:
        for m in (2, 4):
            y = winograd.direct(xp, kernel, (1, 1), (1, 1), 1, out, m=m, threads=2)
            check(y, expected, np.float32, seed, f"winograd F({m}) {what}")
    y = flat_rows.direct(xp, kernel, (stride,) * 2, (1, 1), 1, out, threads=2)
    check(y, expected, np.float32, seed, f"flat_rows {what}")
    # few cells with the columns cut in two (filters from 2 × CELLS_PART_CHANNELS)
    wide = (rng.standard_normal((3, 3, c, 160)) / math.sqrt(9 * c)).astype(np.float32)
    if flat_rows.gathers_cells((3, 3), c, out):
        y = flat_rows.direct(xp[:1], wide, (stride,) * 2, (1, 1), 1, out, threads=2)
        check(y, reference_direct(xp[:1].astype(np.float64), wide.astype(np.float64),
                                  (stride,) * 2, (1, 1), 1, out), np.float32, seed,
              f"flat_rows columns cut {what}")
    if _llvm.available(np.dtype(np.float32)):
        # a kernel of 1 MiB or more: its panels packed by both threads
        big = (rng.standard_normal((3, 3, 256, 128)) / 48).astype(np.float32)
        xb = rng.standard_normal((batch, size, size, 256)).astype(np.float32)
        y = register_tiles.direct(xb, big, (stride,) * 2, (1, 1), 1,
                                  _torch_conv(xb, big, stride, 1).shape[1:3],
                                  padding=((1, 1), (1, 1)), threads=2)
        check(y, _torch_conv(xb, big, stride, 1), np.float32, seed, f"register_tiles {what}")
        y = register_tiles.direct(x, kernel, (stride,) * 2, (1, 1), 1, out,
                                  padding=((1, 1), (1, 1)), threads=2)
        check(y, expected, np.float32, seed, f"register_tiles small {what}")


def test_winograd_kernel_transforms_match_the_matrices() -> None:
    """The written-out F(4×4) and F(2×2) kernel transforms equal ``G k Gᵀ`` (float64),
    whole and over a range of input channels, for both dtypes."""
    kernels = winograd._numba_kernels()
    if kernels is None:
        pytest.skip("numba is not installed")
    rng = np.random.default_rng(7400)
    for dtype in (np.float32, np.float64):
        k = rng.standard_normal((3, 3, 11, 21)).astype(dtype)
        for m, run in ((4, kernels[6]), (2, kernels[7])):
            wt = winograd.transform(m)
            a = wt.tile
            expected = np.einsum("xi,ijcf,wj->xwcf", wt.G, k.astype(np.float64), wt.G)
            u = np.zeros((a * a, 11, 13), dtype)
            run(k, wt.G, 8, 3, 9, u)  # output channels 8.., input channels 3..8
            got = u.reshape(a, a, 11, 13)
            tolerance = 1e-6 if dtype == np.float32 else 1e-14
            assert np.abs(got[:, :, 3:9] - expected[:, :, 3:9, 8:]).max() <= tolerance * 10
            assert not got[:, :, :3].any() and not got[:, :, 9:].any()


def test_a_one_thread_winograd_call_counts_a_share_of_the_second_core(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Below :data:`winograd.SHARED_SERIAL_FLOPS` shared tiles run on one thread: with
    two workers the cost is one core's times ``1 + SERIAL_SHARE`` where the transformed
    kernel is at most :data:`winograd.SERIAL_TRANSFORM_BYTES` (float32), twice it where
    larger or in float64."""
    if winograd._numba_kernels() is None or not _llvm.available(np.dtype(np.float32)):
        pytest.skip("the compiled Winograd path only")
    small = _problem(1, 28, 64, 64, 1)  # 49 tiles of F(4×4), a 0.6 MiB transform
    large = _problem(1, 4, 512, 512, 1)  # one tile of F(2×2), a 16 MiB transform
    small64 = ConvProblem(small.input_shape, small.kernel_shape, (1, 1), (1, 1), 1,
                          small.out_size, np.dtype(np.float64))
    for layer, factor in ((small, 1 + winograd.SERIAL_SHARE), (large, 2.0), (small64, 2.0)):
        assert layer.flops < winograd.SHARED_SERIAL_FLOPS
        _set_workers(monkeypatch, 1)
        alone = winograd.cost(layer)
        _set_workers(monkeypatch, 2)
        assert winograd.cost(layer) == pytest.approx(alone * factor), (layer, factor)
    assert 0 < winograd.SERIAL_SHARE < 1
