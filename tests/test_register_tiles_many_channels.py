"""``register_tiles`` on the layers of deep network stages (many channels, small images)
against PyTorch's ``conv2d``, with the kernel read where it lies (``in_place``) and
packed into panels, natively and with the AVX2 kernels.

Configurations are drawn at random (the seed is in every failure message): 3×3 and 1×1
kernels, stride 1 and 2, 16 to 1024 channels on 1² to 14² images, 1, 2 or 5 images,
float32 and float64. Bounds: relative error ≤ 1e-5 in float32, ≤ 1e-10 in float64.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine.algorithms import _llvm, register_tiles

torch = pytest.importorskip("torch")

TOLERANCE = {np.float32: 1e-5, np.float64: 1e-10}
SEEDS = 6 if os.environ.get("CI") == "true" else 20

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")


@pytest.fixture(autouse=True)
def fresh_layouts():
    register_tiles._layout.cache_clear()
    yield
    register_tiles._layout.cache_clear()


def torch_conv(x, kernel, stride, pad):
    """PyTorch's result for channels-last ``x`` and a ``(KH, KW, C, F)`` kernel."""
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    kt = torch.from_numpy(np.ascontiguousarray(kernel.transpose(3, 2, 0, 1)))
    with torch.no_grad():
        y = torch.nn.functional.conv2d(xt, kt, stride=stride, padding=pad)
    return y.numpy().transpose(0, 2, 3, 1)


def random_layer(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.choice([1, 3]))
    stride = int(rng.choice([1, 2]))
    size = int(rng.choice([1, 2, 3, 4, 7, 14]))
    channels = int(rng.choice([16, 128, 256, 512, 1024]))
    filters = int(rng.choice([16, 48, 128, 256, 512]))
    batch = int(rng.choice([1, 2, 5]))
    dtype = [np.float32, np.float64][int(rng.integers(2))]
    x = rng.standard_normal((batch, size, size, channels)).astype(dtype)
    kernel = rng.standard_normal((k, k, channels, filters)).astype(dtype)
    return x, kernel, stride, k // 2


def run(x, kernel, stride, pad, threads):
    out = (x.shape[1] + 2 * pad - kernel.shape[0]) // stride + 1
    return register_tiles.direct(x, kernel, (stride, stride), (1, 1), 1, (out, out),
                                 padding=((pad, pad), (pad, pad)), threads=threads)


@pytest.mark.parametrize("isa", ["native", "avx2"])
@pytest.mark.parametrize("seed", range(SEEDS))
def test_many_channels_against_torch(seed, isa, monkeypatch):
    if isa == "avx2":
        if not _llvm.target_named("avx2").runs_here:
            pytest.skip("this CPU (or llvmlite) does not run AVX2 with FMA")
        monkeypatch.setenv(_llvm.ISA_VARIABLE, "avx2")
    x, kernel, stride, pad = random_layer(4400 + seed)
    expected = torch_conv(x, kernel, stride, pad)
    what = (f"seed {4400 + seed} ({isa}): x {x.shape} {x.dtype}, kernel {kernel.shape}, "
            f"stride {stride}, padding {pad}")
    # the kernel read in place, then packed (a non-contiguous copy of it)
    assert register_tiles.in_place(kernel, x.shape[-1])
    strided = np.asfortranarray(kernel)
    assert not register_tiles.in_place(strided, x.shape[-1])
    for k in (kernel, strided):
        for threads in (1, 2):
            y = run(x, k, stride, pad, threads)
            assert relative_error(y, expected) <= TOLERANCE[x.dtype.type], (
                f"{what}, contiguous {k.flags.c_contiguous}, threads {threads}")


@pytest.mark.parametrize("panel_bytes", [1, 3000])
def test_kernel_rows_cut_into_runs_add_up(panel_bytes, monkeypatch):
    """In place, the kernel's rows (tap, input channel) are cut into equal runs whose
    columns of a block fit PANEL_BYTES; later runs add to the output: one row per run,
    and runs that cut a tap's 24 channels in the middle give PyTorch's result."""
    monkeypatch.setattr(register_tiles, "PANEL_BYTES", panel_bytes)
    rng = np.random.default_rng(4500)
    x = rng.standard_normal((2, 5, 5, 24))
    kernel = rng.standard_normal((3, 3, 24, 80))
    layout = register_tiles._layout(kernel.shape, kernel.dtype, (1, 1), 7 * 24, False,
                                    panel_bytes, 24, in_place=True)
    width = _llvm.vector_width(np.float64)
    block_bytes = min(-(-80 // width), _llvm.max_vectors()) * width * 8
    fit = max(1, panel_bytes // block_bytes)
    count = -(-9 * 24 // fit)
    size = -(-9 * 24 // count)
    assert [run[:2] for run in layout] == [(r0, min(9 * 24, r0 + size))
                                           for r0 in range(0, 9 * 24, size)]
    assert panel_bytes == 1 or 24 % size  # some run ends inside a tap
    y = run(x, kernel, 1, 1, 2)
    assert relative_error(y, torch_conv(x, kernel, 1, 1)) <= 1e-10


def test_in_place_needs_whole_vectors_and_a_contiguous_kernel():
    width = _llvm.vector_width(np.float32)
    assert register_tiles.in_place(np.zeros((3, 3, 32, 2 * width), np.float32), 32)
    assert not register_tiles.in_place(np.zeros((3, 3, 32, width + 1), np.float32), 32)
    assert register_tiles.in_place(np.zeros((3, 3, 3, 2 * width), np.float32), 3)  # thin too
    assert not register_tiles.in_place(np.zeros((3, 3, 32, 4 * width), np.float32)[..., ::2],
                                       32)


@pytest.mark.parametrize("padding", [0, 1])
@pytest.mark.parametrize("contiguous", [True, False])
@pytest.mark.parametrize("panel_bytes", [1 << 19, 5000])
def test_workers_share_output_channels_of_a_large_kernel(padding, contiguous, panel_bytes,
                                                         monkeypatch):
    """A kernel larger than its input on a small image: two workers' chunks are ranges of
    column blocks (of both runs: 80 float64 channels are two blocks of 4 vectors and one of 2
    with AVX-512), each running every step of the sum in order; the values are PyTorch's."""
    monkeypatch.setattr(register_tiles, "PANEL_BYTES", panel_bytes)
    rng = np.random.default_rng(4600)
    x = rng.standard_normal((1, 3, 3, 96))
    kernel = rng.standard_normal((3, 3, 96, 80))
    if not contiguous:
        kernel = np.asfortranarray(kernel)
    out = 3 + 2 * padding - 2
    pads = [(padding, padding)] * 2
    y = np.empty((1, out, out, 80 + (-80) % _llvm.vector_width(np.float64)))
    jobs = register_tiles._jobs(x, kernel, (1, 1), (1, 1), (out, out), pads, y, 2)
    vectors = -(-80 // _llvm.vector_width(np.float64))
    blocks = vectors // _llvm.max_vectors() + (1 if vectors % _llvm.max_vectors() else 0)
    # (3 blocks with AVX-512: one job per worker, each about half the channels × rows)
    assert len(jobs) == register_tiles.block_job_count(blocks, 2)
    for threads in (2, 1):
        y = run(x, kernel, 1, padding, threads)
        assert relative_error(y, torch_conv(x, kernel, 1, padding)) <= 1e-10, threads


def test_cost_of_shared_output_channels_reads_no_panel_twice(monkeypatch):
    """With two workers a 3×3 512 -> 512 layer on one 4² image is cut over its output
    channels (as ``_jobs`` does): no chunk reads another's panels, so its cost is one
    worker's; a kernel smaller than the input is cut over cells and pays for the panels
    each more chunk reads."""
    from convarith.engine import dispatch
    from convarith.engine.algorithms import _threads
    from convarith.engine.dispatch import ConvProblem

    def problem(size, c, f):
        return ConvProblem((1, size + 2, size + 2, c), (3, 3, c, f), (1, 1), (1, 1), 1,
                           (size, size), np.dtype(np.float32))

    costs = {}
    for workers in (1, 2):
        monkeypatch.setattr(_threads, "worker_count", lambda workers=workers: workers)
        monkeypatch.setattr(dispatch, "worker_count", lambda workers=workers: workers)
        monkeypatch.setattr(register_tiles, "worker_count", lambda workers=workers: workers)
        costs[workers] = (register_tiles.cost(problem(4, 512, 512)),
                          register_tiles.cost(problem(56, 64, 128)))
        assert register_tiles._splits_blocks(problem(4, 512, 512), 2)
        assert not register_tiles._splits_blocks(problem(56, 64, 128), 2)
        x = np.zeros((1, 4, 4, 512), np.float32)
        y = np.empty((1, 4, 4, 512), np.float32)
        jobs = register_tiles._jobs(x, np.zeros((3, 3, 512, 512), np.float32), (1, 1), (1, 1),
                                    (4, 4), [(1, 1), (1, 1)], y, workers)
        blocks = 512 // (_llvm.vector_width(np.float32) * _llvm.max_vectors())
        assert len(jobs) == (1 if workers == 1 else min(blocks, 8))
    assert costs[2][0] == costs[1][0]
    assert costs[2][1] > costs[1][1]


def test_narrower_vectors_than_the_cpu_cost_more(monkeypatch):
    """The AVX2 kernels on an AVX-512 machine (whose BLAS keeps the wide vectors) cost
    NARROW_VECTORS times as much per FLOP as the same layer's AVX2 cost where AVX2 is
    the CPU's own (taken as the native target here)."""
    from convarith.engine.dispatch import ConvProblem

    if not (_llvm.target_named("native").vector_bytes == 64
            and _llvm.target_named("avx2").runs_here):
        pytest.skip("needs an AVX-512 CPU that runs the AVX2 kernels")
    layer = ConvProblem((2, 9, 9, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (7, 7),
                        np.dtype(np.float32))
    monkeypatch.setattr(register_tiles, "worker_count", lambda: 1)
    assert not _llvm.narrower_than_host()
    monkeypatch.setenv(_llvm.ISA_VARIABLE, "avx2")
    assert _llvm.narrower_than_host()
    narrow = register_tiles.cost(layer)
    monkeypatch.setattr(_llvm, "narrower_than_host", lambda: False)
    assert narrow == pytest.approx(register_tiles.NARROW_VECTORS * register_tiles.cost(layer))


@pytest.mark.parametrize("shape", [(16, 4, 512, 512, 1), (16, 7, 256, 256, 2), (1, 4, 512, 512, 1),
                                   (2, 14, 128, 128, 1)])
def test_peak_memory_stays_within_the_budget(shape):
    """Peak extra bytes (output included) at most 1.5x (input + kernel + output), the
    networks benchmark's bound, for slabs sized by the kernel (one thread: the helpers'
    kept buffers vary) and for the workers' shares of the output channels (two)."""
    n, size, c, f, stride = shape
    rng = np.random.default_rng(4700)
    x = rng.standard_normal((n, size, size, c)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    out = (size - 1) // stride + 1
    out_bytes = n * out * out * f * 4
    for threads in (1, 2):
        peak = peak_extra_bytes(lambda threads=threads: register_tiles.direct(
            x, kernel, (stride, stride), (1, 1), 1, (out, out), padding=((1, 1), (1, 1)),
            threads=threads))
        ratio = peak / (x.nbytes + kernel.nbytes + out_bytes)
        assert ratio <= 1.5, f"{shape}, threads {threads}: peak {peak} bytes = {ratio:.2f}x"


def test_balanced_pieces_cover_every_block_row_once_in_even_shares():
    """Random blocks (channels each), rows and job counts: every (block, row) lies in
    exactly one piece of one job, in order, and each job's channels × rows are within
    one block-row of an even share."""
    rng = np.random.default_rng(77)
    for _ in range(300):
        columns = [int(v) for v in rng.choice([8, 16, 32, 48, 64], size=int(rng.integers(1, 12)))]
        rows, count = int(rng.integers(1, 9)), int(rng.integers(1, 9))
        jobs = register_tiles.balanced_pieces(columns, rows, count)
        assert 1 <= len(jobs) <= count
        seen = []
        for pieces in jobs:
            share = 0
            for b0, b1, q0, q1 in pieces:
                assert 0 <= b0 < b1 <= len(columns) and 0 <= q0 < q1 <= rows
                assert b1 - b0 == 1 or (q0, q1) == (0, rows)  # several blocks: all rows
                seen += [(b, q) for b in range(b0, b1) for q in range(q0, q1)]
                share += sum(columns[b0:b1]) * (q1 - q0)
            even = sum(columns) * rows / count
            assert abs(share - even) <= max(columns), (columns, rows, count, jobs)
        assert seen == [(b, q) for b in range(len(columns)) for q in range(rows)]
