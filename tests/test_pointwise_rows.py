"""1×1 convolutions as chunked row products (``pointwise_rows``).

Random ranks, strides, sizes, channel counts and worker counts against the slow
reference (with chunks cut down to single rows, so every way of cutting is run);
the chunks against their contract (each output cell once, balanced); whole
``conv`` calls against PyTorch; the planner's choice by properties (applies,
cheapest, equals the reference); and the peak memory of a squeeze-excitation 1×1.
"""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

from _helpers import (
    TOLERANCE,
    assert_cheapest_applies,
    assert_runs_as_reference,
    reference_direct,
    relative_error,
)
from convarith import ConvSpec
from convarith.engine import conv
from convarith.engine.algorithms import pointwise_rows
from convarith.engine.algorithms.pointwise_rows import busy_share, chunks, direct
from convarith.engine.dispatch import ConvProblem, get_algorithm

CASES = 40 if os.environ.get("CI") == "true" else 300


def _random_case(rng):
    rank = int(rng.integers(1, 4))
    strides = tuple(int(s) for s in rng.integers(1, 4, rank))
    out_size = tuple(int(o) for o in rng.integers(1, 7, rank))
    # the padded input reaches at least the last output cell, and a little beyond
    size = tuple((o - 1) * s + 1 + int(rng.integers(0, s + 1)) for o, s in zip(out_size, strides))
    channels, filters = (int(v) for v in rng.integers(1, 40, 2))
    batch = int(rng.integers(1, 5))
    return rank, strides, out_size, size, channels, filters, batch


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_pointwise_rows_equals_the_reference(dtype, monkeypatch) -> None:
    monkeypatch.setattr(pointwise_rows, "MIN_CHUNK_CELLS", 1)  # cut into single rows too
    seed = 7 if dtype == np.float32 else 8
    rng = np.random.default_rng(seed)
    for trial in range(CASES):
        rank, strides, out_size, size, channels, filters, batch = _random_case(rng)
        xp = rng.standard_normal((batch, *size, channels)).astype(dtype)
        kernel = rng.standard_normal((*(1,) * rank, channels, filters)).astype(dtype)
        expected = reference_direct(xp, kernel, strides, (1,) * rank, 1, out_size)
        for threads in (1, 2, 3):
            y = direct(xp, kernel, strides, (1,) * rank, 1, out_size, threads=threads)
            what = f"seed {seed} trial {trial}: {xp.shape} {strides} {out_size}, {threads} threads"
            assert y.dtype == dtype and y.shape == expected.shape, what
            assert relative_error(y, expected) <= TOLERANCE[dtype], what


def test_chunks_cover_every_output_cell_once() -> None:
    rng = np.random.default_rng(11)
    for trial in range(200):
        rank = int(rng.integers(1, 4))
        out_size = tuple(int(o) for o in rng.integers(1, 60, rank))
        batch = int(rng.integers(1, 20))
        workers = int(rng.integers(1, 5))
        channels, filters = (int(v) for v in rng.integers(1, 2049, 2))
        pieces = chunks(batch, out_size, channels, filters, 4, workers)
        covered = np.zeros(batch * out_size[0], int)
        for row0, row1 in pieces:
            assert 0 <= row0 < row1 <= covered.size, (trial, pieces)
            covered[row0:row1] += 1
        assert (covered == 1).all(), f"trial {trial}: {batch} {out_size} {workers}: {pieces}"
        share = busy_share(pieces, workers)
        assert 1 / workers - 1e-12 <= share <= 1, (trial, share)
        if workers == 1:
            assert len(pieces) == 1


def test_narrow_layers_keep_every_worker_busy() -> None:
    # MobileNetV2's 32 -> 16 on 16×56², WaveNet's 1×1 on 4096, a 1×1 stride 2
    for batch, out_size, channels, filters in [(16, (56, 56), 32, 16), (1, (4096,), 64, 64),
                                               (1, (28, 28), 96, 24), (16, (28, 28), 64, 128)]:
        for workers in (2, 4):
            pieces = chunks(batch, out_size, channels, filters, 4, workers)
            assert len(pieces) >= 2 * workers, (batch, out_size, workers, pieces)
            assert busy_share(pieces, workers) <= 1.15 / workers, (batch, out_size, pieces)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_planner_picks_the_cheapest_and_it_runs_as_the_reference(workers,
                                                                     monkeypatch) -> None:
    from convarith.engine import clear_caches

    monkeypatch.setenv("CONVARITH_NUM_THREADS", workers)
    clear_caches()
    try:
        for seed, (shape, filters, stride) in enumerate([
                ((16, 56, 56, 32), 16, 1), ((1, 4096, 64), 64, 1), ((16, 14, 14, 96), 24, 2),
                ((16, 7, 7, 1024), 512, 1), ((1, 1, 1, 32), 8, 1), ((16, 1, 1, 1152), 48, 1)]):
            rank = len(shape) - 2
            out = tuple((n - 1) // stride + 1 for n in shape[1:-1])
            problem = ConvProblem(shape, (*(1,) * rank, shape[-1], filters), (stride,) * rank,
                                  (1,) * rank, 1, out, np.dtype("float32"))
            assert get_algorithm("pointwise_rows").applies(problem)
            assert_cheapest_applies(problem)
            assert_runs_as_reference(problem, seed, batch=1)
    finally:
        clear_caches()


def test_one_product_of_many_rows_costs_less_than_the_chunks(monkeypatch) -> None:
    """The cost model's claims: without the compiled kernel, a 1×1 over many cells costs
    less as :mod:`flat_rows`' one product (BLAS shares its rows among its own threads)
    than in BLAS chunks on two workers (measured on a quiet two-core machine: 32 -> 16
    on 16×56², 0.39 ms against 0.54-0.70); on one worker narrow outputs cost less in
    cached pieces (one core, CPU time: 0.84 of the one product). With the compiled
    kernel (:mod:`._llvm_pointwise`), the layer costs less here on both."""
    from convarith.engine import clear_caches
    from convarith.engine.algorithms import pointwise_rows

    problem = ConvProblem((16, 56, 56, 32), (1, 1, 32, 16), (1, 1), (1, 1), 1, (56, 56),
                          np.dtype("float32"))
    kernel = pointwise_rows.compiled_narrow(problem.dtype, 16 * 56 * 56, 32, 16)
    for workers, cheaper in (("2", False), ("1", True)):
        monkeypatch.setenv("CONVARITH_NUM_THREADS", workers)
        clear_caches()
        if kernel:
            ours = get_algorithm("pointwise_rows").cost(problem)
            theirs = get_algorithm("flat_rows").cost(problem)
            assert ours < theirs, ("kernel", workers, ours, theirs)
        with monkeypatch.context() as blas_only:
            blas_only.setattr(pointwise_rows, "compiled_narrow", lambda *args: False)
            ours = get_algorithm("pointwise_rows").cost(problem)
            theirs = get_algorithm("flat_rows").cost(problem)
        assert (ours < theirs) == cheaper, (workers, ours, theirs)
    clear_caches()


def test_a_squeeze_excitation_layer_stays_within_its_memory() -> None:
    from convarith.bench import _peak_memory

    x = np.random.default_rng(3).standard_normal((1, 1, 1, 32)).astype(np.float32)
    kernel = np.random.default_rng(4).standard_normal((1, 1, 32, 8)).astype(np.float32)
    spec = ConvSpec(1, rank=2)
    conv(x, kernel, spec)
    arrays = x.nbytes + kernel.nbytes + 8 * 4
    peak = min(_peak_memory(lambda: conv(x, kernel, spec)) for _ in range(3))
    assert peak <= 1.5 * arrays, (peak, arrays)


def test_conv_calls_against_pytorch() -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(23)
    ops = {1: functional.conv1d, 2: functional.conv2d, 3: functional.conv3d}
    for trial in range(CASES // 4):
        rank = int(rng.integers(1, 4))
        stride = int(rng.integers(1, 3))
        padding = int(rng.integers(0, 2))
        size = tuple(int(n) for n in rng.integers(1, 12 if rank < 3 else 6, rank))
        channels, filters = (int(v) for v in rng.integers(1, 70, 2))
        batch = int(rng.integers(1, 4))
        x = rng.standard_normal((batch, *size, channels)).astype(np.float32)
        kernel = rng.standard_normal((*(1,) * rank, channels, filters)).astype(np.float32)
        spec = ConvSpec(1, strides=stride, padding=padding, rank=rank)
        y = conv(x, kernel, spec, algorithm="pointwise_rows")
        axes = (0, rank + 1, *range(1, rank + 1))
        weight = np.transpose(kernel, (rank + 1, rank, *range(rank)))
        expected = ops[rank](torch.from_numpy(np.ascontiguousarray(np.transpose(x, axes))),
                             torch.from_numpy(np.ascontiguousarray(weight)),
                             stride=stride, padding=padding).numpy()
        expected = np.moveaxis(expected, 1, -1)
        what = f"seed 23 trial {trial}: {x.shape} stride {stride} padding {padding}"
        assert y.shape == expected.shape, what
        assert relative_error(y, expected) <= 1e-5, what
        assert math.isfinite(float(np.abs(y).max())), what


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_weight_grad_equals_the_reference(dtype, monkeypatch) -> None:
    from _helpers import reference_weight_grad

    monkeypatch.setattr(pointwise_rows, "MIN_CHUNK_CELLS", 1)
    seed = 17 if dtype == np.float32 else 18
    rng = np.random.default_rng(seed)
    for trial in range(CASES // 2):
        rank, strides, out_size, size, channels, filters, batch = _random_case(rng)
        xp = rng.standard_normal((batch, *size, channels)).astype(dtype)
        dy = rng.standard_normal((batch, *out_size, filters)).astype(dtype)
        kernel_size = (1,) * rank
        expected = reference_weight_grad(xp, dy, kernel_size, strides, kernel_size, 1)
        for threads, partials in ((1, 4 << 20), (2, 4 << 20), (3, 1)):
            monkeypatch.setattr(pointwise_rows, "PARTIALS_BYTES", partials)
            dk = pointwise_rows.weight_grad(xp, dy, kernel_size, strides, kernel_size, 1,
                                            threads=threads)
            what = f"seed {seed} trial {trial}: {xp.shape} {strides} {out_size}, {threads} threads"
            assert dk.dtype == dtype and dk.shape == expected.shape, what
            assert relative_error(dk, expected) <= TOLERANCE[dtype], what


def test_layer_gradients_against_pytorch(monkeypatch) -> None:
    """Whole ``conv_vjp`` calls of 1×1 layers (the input gradient by ``pointwise``, cut
    into chunks on two workers; the kernel gradient by whichever the planner picks)."""
    torch = pytest.importorskip("torch")
    from convarith.engine import clear_caches, conv_vjp

    monkeypatch.setenv("CONVARITH_NUM_THREADS", "2")
    monkeypatch.setattr("convarith.engine.algorithms._threads.SMALL_WORK", 0)
    monkeypatch.setattr("convarith.engine.algorithms.pointwise.SMALL_WORK", 0)
    clear_caches()
    rng = np.random.default_rng(29)
    try:
        for trial in range(CASES // 8):
            stride = int(rng.integers(1, 3))
            size = tuple(int(n) for n in rng.integers(1, 15, 2))
            channels, filters = (int(v) for v in rng.integers(1, 70, 2))
            batch = int(rng.integers(1, 4))
            x = rng.standard_normal((batch, *size, channels))
            kernel = rng.standard_normal((1, 1, channels, filters))
            spec = ConvSpec(1, strides=stride, rank=2)
            out = tuple((n - 1) // stride + 1 for n in size)
            dy = rng.standard_normal((batch, *out, filters))
            dx, dk = conv_vjp(x, kernel, spec, dy)[:2]
            tx = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
            tk = torch.tensor(np.transpose(kernel, (3, 2, 0, 1)), requires_grad=True)
            ty = torch.nn.functional.conv2d(tx, tk, stride=stride)
            ex, ek = torch.autograd.grad(ty, (tx, tk), torch.tensor(np.moveaxis(dy, -1, 1)))
            what = f"seed 29 trial {trial}: {x.shape} stride {stride} -> {filters}"
            assert relative_error(dx, np.moveaxis(ex.numpy(), 1, -1)) <= 1e-10, what
            assert relative_error(dk, np.transpose(ek.numpy(), (2, 3, 1, 0))) <= 1e-10, what
    finally:
        clear_caches()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_small_products_with_cached_kernels_run_inline(workers, monkeypatch) -> None:
    """MobileNetV2 / EfficientNet-B0's 1×1 layers on a 4² image at batch 1 (kernels under
    1 MiB) run as pointwise_rows' one inline product, which beat register_tiles there on
    one core (576 -> 160 0.050 against 0.093 ms); larger kernels (320 -> 1280, 256 ->
    1024, float64 1152 -> 320) do not get the cached kernel's share, and 4 KiB-wide rows
    over 16 cells (128 -> 1024, 512 float64 outputs, which BLAS packs slowly) get neither
    it nor two workers' share. On two workers every other inline product runs on BLAS's
    threads (ResNet-50's 256 -> 1024 on 1×7²: 0.25 against register_tiles' 0.32 ms).
    Each choice also runs as the reference."""
    from convarith.engine import clear_caches
    from convarith.engine.dispatch import choose

    monkeypatch.setenv("CONVARITH_NUM_THREADS", workers)
    clear_caches()
    two = workers == "2"
    try:
        inline = [(4, 576, 160, "float32"), (4, 160, 960, "float32"), (4, 960, 160, "float32"),
                  (4, 672, 192, "float32"), (4, 192, 1152, "float32"), (4, 576, 160, "float64")]
        large = [(4, 320, 1280, "float32"), (4, 1152, 320, "float64")]
        aliased = [(4, 128, 1024, "float32"), (4, 256, 512, "float64")]
        if two:
            inline += large + [(7, 256, 1024, "float32"), (7, 1024, 256, "float32")]
        for seed, (size, channels, filters, dtype) in enumerate(inline + large + aliased):
            problem = ConvProblem((1, size, size, channels), (1, 1, channels, filters),
                                  (1, 1), (1, 1), 1, (size, size), np.dtype(dtype))
            pick = choose(problem).name
            ours = get_algorithm("pointwise_rows").cost(problem) / (0.7 * problem.flops)
            if (size, channels, filters, dtype) in inline:
                assert pick == "pointwise_rows", (problem, pick)
            if (size, channels, filters, dtype) in large:
                assert ours == pytest.approx(0.95 * (0.8 if two else 1.0)), (problem, ours)
            if (size, channels, filters, dtype) in aliased:
                assert ours == pytest.approx(0.95), (problem, ours)
            assert_cheapest_applies(problem)
            assert_runs_as_reference(problem, 40 + seed)
    finally:
        clear_caches()
