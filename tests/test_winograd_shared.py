"""Winograd's shared tiles (few tiles: small images, small batches): the tiles are
transformed once and the workers split the output channels. Random layers against
PyTorch in float64, on one and two threads, F(2×2) and F(4×4), with dilation, padding
and channel counts that are not whole vectors."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import check, relative_error
from convarith.engine.algorithms import winograd

pytest.importorskip("numba")


def _torch_reference(x, k, pads, dilation, out_size):
    torch = pytest.importorskip("torch")
    padded = np.pad(x.astype(np.float64), ((0, 0), *pads, (0, 0)))
    y = torch.nn.functional.conv2d(
        torch.from_numpy(padded).permute(0, 3, 1, 2),
        torch.from_numpy(k.astype(np.float64)).permute(3, 2, 0, 1), dilation=dilation)
    return y[:, :, :out_size[0], :out_size[1]].permute(0, 2, 3, 1).numpy()


@pytest.mark.parametrize("seed", range(8))
def test_shared_tiles_match_torch(seed, monkeypatch):
    rng = np.random.default_rng(700 + seed)
    dtype = [np.float32, np.float64][seed % 2]
    m = [2, 4][seed // 2 % 2]
    channels = int(rng.choice([3, 17, 40, 64]))
    filters = int(rng.choice([5, 16, 24, 64, 80, 128]))
    size = (int(rng.integers(3, 15)), int(rng.integers(3, 15)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    pads = ((int(rng.integers(0, 3)), int(rng.integers(0, 3))),
            (int(rng.integers(0, 3)), int(rng.integers(0, 3))))
    batch = int(rng.integers(1, 3))
    x = rng.standard_normal((batch, *size, channels)).astype(dtype)
    k = rng.standard_normal((3, 3, channels, filters)).astype(dtype)
    grown = [s + lo + hi for s, (lo, hi) in zip(size, pads)]
    out_size = tuple(g - 2 * d for g, d in zip(grown, dilation))
    if min(out_size) < 1:
        out_size = (1, 1)
        pads = tuple((lo, hi + 2 * d) for (lo, hi), d in zip(pads, dilation))
    expected = _torch_reference(x, k, pads, dilation, out_size)
    calls = []
    shared = winograd._shared_tiles
    monkeypatch.setattr(winograd, "_shared_tiles",
                        lambda *args: calls.append(args[2].shape) or shared(*args))
    # small blocks of output channels too: several per worker
    block_bytes = [winograd.CHANNEL_BLOCK_BYTES, 1][seed % 3 == 0]
    monkeypatch.setattr(winograd, "CHANNEL_BLOCK_BYTES", block_bytes)
    for threads in (1, 2):
        y = winograd.direct(x, k, (1, 1), dilation, 1, out_size, m=m, padding=pads,
                            threads=threads)
        check(y, expected, dtype, seed, f"winograd F({m}) shared tiles, threads={threads}, "
              f"dilation={dilation} pads={pads} {channels}->{filters}")
    assert len(calls) == 2, f"seed {seed}: the shared tiles ran {len(calls)} times, not 2"


@pytest.mark.parametrize("seed", range(3))
def test_shared_tiles_equal_chunks_of_tiles(seed):
    # the same transforms and products in another order: equal to rounding
    rng = np.random.default_rng(800 + seed)
    x = rng.standard_normal((1, 14, 14, 48)).astype(np.float32)
    k = rng.standard_normal((3, 3, 48, 96)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    shared = winograd.direct(x, k, (1, 1), (1, 1), 1, (14, 14), padding=pads, threads=2)
    chunks = winograd.direct(x, k, (1, 1), (1, 1), 1, (14, 14), padding=pads, threads=2,
                             shared_tiles=False)
    error = relative_error(shared, chunks)
    assert error <= 1e-6, f"seed {seed}: shared tiles vs chunks of tiles, {error:.2e}"


def test_shared_tiles_only_for_few_tiles():
    assert winograd.use_shared_tiles(49, 6, 64, 4, kernel_blocked=False)
    assert not winograd.use_shared_tiles(winograd.SHARED_MAX_TILES + 1, 6, 64, 4, False)
    assert winograd.use_shared_tiles(winograd.SHARED_MAX_TILES + 1, 6, 64, 4, True)
    # over the bytes bound: never (the calling thread's buffer stays bounded)
    too_many = winograd.SHARED_TILES_BYTES // (36 * 64 * 4) + 1
    assert not winograd.use_shared_tiles(too_many, 6, 64, 4, True)


@pytest.mark.parametrize("filters, workers, width, most", [
    (64, 2, 16, 4), (64, 1, 16, 4), (256, 2, 16, 4), (512, 2, 8, 2), (24, 2, 16, 4),
    (8, 2, 16, 4), (1000, 3, 16, 4), (96, 4, 8, 2)])
def test_shared_channel_blocks_cover_the_channels(filters, workers, width, most):
    for channels, tiles, tile in ((64, 49, 6), (512, 16, 4), (128, 100, 6)):
        block = winograd.shared_channel_block(channels, filters, tiles, tile, 4, workers,
                                              width, most)
        count = -(-filters // block)
        case = (channels, filters, tiles, workers, width, most, block)
        assert 1 <= block <= filters, case
        # whole vectors (the last block excepted), and no worker left without a block
        # where the channels make enough vectors
        assert block % width == 0 or block == filters, case
        assert count >= min(workers, -(-filters // width)), case
        # within the bytes bound unless a vector alone is over it
        per_channel = tile * tile * (channels + tiles) * 4
        assert block * per_channel <= winograd.CHANNEL_BLOCK_BYTES or block <= width * most, case


@pytest.mark.parametrize("isa", ["native", "avx2"])
def test_shared_tiles_on_the_helpers_equal_the_threads_closures(isa, monkeypatch):
    """A prepacked kernel's shared tiles on two workers run as tables of compiled calls
    (the transforms as C callbacks beside the products' kernels): the same values bit for
    bit as the threads' Python chunks and as one thread, against PyTorch, for random
    layers (dilation, padding, batches, output channels in blocks), float32 and float64."""
    from convarith.engine import prepack
    from convarith.engine.algorithms import _llvm, _native_jobs

    if isa == "avx2":
        monkeypatch.setenv("CONVARITH_VECTOR_ISA", "avx2")
    target = _llvm.vector_target()
    if not target.runs_here or _native_jobs.kernel_runner() is None:
        pytest.skip("no compiled kernels or helper tables here")
    rng = np.random.default_rng(900)
    native = []
    runner = winograd._native_shared_tiles
    monkeypatch.setattr(winograd, "_native_shared_tiles",
                        lambda *args: native.append(args[1].shape) or runner(*args))
    taken = 0
    for trial in range(12):
        dtype = [np.float32, np.float64][trial % 2]
        width = target.width(np.dtype(dtype))
        channels = int(rng.choice([3, 16, 40, 64]))
        filters = width * int(rng.choice([1, 2, 3, 4, 6]))
        size = (int(rng.integers(4, 16)), int(rng.integers(4, 16)))
        dilation = (int(rng.integers(1, 3)), 1)
        pads = ((1, 1), (int(rng.integers(0, 3)), int(rng.integers(0, 3))))
        batch = int(rng.integers(1, 3))
        x = rng.standard_normal((batch, *size, channels)).astype(dtype)
        k = prepack(rng.standard_normal((3, 3, channels, filters)).astype(dtype))
        grown = [s + lo + hi for s, (lo, hi) in zip(size, pads)]
        out_size = tuple(g - 2 * d for g, d in zip(grown, dilation))
        if min(out_size) < 1:
            continue
        monkeypatch.setattr(winograd, "CHANNEL_BLOCK_BYTES",
                            [winograd.CHANNEL_BLOCK_BYTES, 1][trial % 3 == 0])
        case = (trial, isa, dtype.__name__, x.shape, k.shape, dilation, pads)
        before = len(native)
        two = winograd.direct(x, k, (1, 1), dilation, 1, out_size, m=4, padding=pads,
                              threads=2)
        if len(native) == before:
            continue  # not shared tiles (too many), or not the helpers' tables
        taken += 1
        one = winograd.direct(x, k, (1, 1), dilation, 1, out_size, m=4, padding=pads,
                              threads=1)
        with monkeypatch.context() as closures:
            closures.setattr(winograd, "_native_runner", lambda *args: None)
            chunks = winograd.direct(x, k, (1, 1), dilation, 1, out_size, m=4, padding=pads,
                                     threads=2)
        assert np.array_equal(two, one), case
        assert np.array_equal(two, chunks), case
        check(two, _torch_reference(x, np.asarray(k), pads, dilation, out_size), dtype, 900,
              f"winograd on the helpers' tables {case}")
    assert taken >= 6, taken


def test_the_helpers_tables_are_kept_per_shape_and_cleared():
    from convarith import engine
    from convarith.engine import prepack
    from convarith.engine.algorithms import _native_jobs

    if _native_jobs.kernel_runner() is None or winograd._table_transforms(
            np.dtype(np.float32)) is None:
        pytest.skip("no helper tables here")
    rng = np.random.default_rng(901)
    k = prepack(rng.standard_normal((3, 3, 32, 64)).astype(np.float32))
    engine.clear_caches()
    for size in (6, 6, 7):
        x = rng.standard_normal((1, size, size, 32)).astype(np.float32)
        winograd.direct(x, k, (1, 1), (1, 1), 1, (size, size), m=4,
                        padding=((1, 1), (1, 1)), threads=2)
    assert len(winograd._NATIVE_TABLES) == 2  # one per shape
    engine.clear_caches()
    assert not winograd._NATIVE_TABLES
