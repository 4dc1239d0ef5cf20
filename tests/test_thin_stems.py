"""Batch-1 stems (3 input channels) on two workers: shared, in few chunks, equal to PyTorch.

A stem of a few MFLOP (MobileNet's and EfficientNet's 3×3 stride-2 3 -> 32 on a
112² image: 5.4 MFLOP) runs on the calling thread (below ``THIN_INLINE_FLOPS``: one
compiled call, :mod:`.thin_call`); a larger one (the same on a 224² image: 21.7
MFLOP) is shared among the workers as one table of compiled calls, cut into
``thin_call.JOBS_PER_WORKER`` pieces of output rows per worker, each padding its own
input rows; expected values from PyTorch's ``conv2d`` in float64, relative error
≤ 1e-5 in float32.
"""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import TOLERANCE, relative_error
from convarith.engine.algorithms import _llvm, _native_jobs, _threads, register_tiles, thin_call

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(
    not _llvm.available(), reason="no compiled kernels here (llvmlite, AVX2+FMA or AVX-512)")

# (kernel, stride, filters, image, PyTorch-style symmetric padding, Keras "same" pads)
STEMS = [
    (3, 2, 32, 112, ((0, 1), (0, 1))),   # MobileNet-V2 / EfficientNet-B0 at 112²
    (7, 2, 64, 112, ((2, 3), (2, 3))),   # ResNet-50
    (3, 1, 64, 112, ((1, 1), (1, 1))),   # VGG-16 / U-Net
    (3, 2, 32, 64, ((0, 1), (0, 1))),    # 1.7 MFLOP: stays on the calling thread
    (3, 2, 32, 224, ((0, 1), (0, 1))),   # 21.7 MFLOP: shared
]


def torch_conv2d(x, kernel, stride, pads):
    """PyTorch's ``conv2d`` in float64 of channels-last ``x`` and ``kernel`` (KH, KW, C, F)
    with zero padding ``pads`` ((top, bottom), (left, right))."""
    xt = torch.from_numpy(np.asarray(x, np.float64).transpose(0, 3, 1, 2).copy())
    (top, bottom), (left, right) = pads
    xt = torch.nn.functional.pad(xt, (left, right, top, bottom))
    kt = torch.from_numpy(np.asarray(kernel, np.float64).transpose(3, 2, 0, 1).copy())
    with torch.no_grad():
        return torch.nn.functional.conv2d(xt, kt, stride=stride).numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("size, stride, filters, image, pads", STEMS)
def test_stems_on_two_workers(size, stride, filters, image, pads, monkeypatch):
    rng = np.random.default_rng(size * 100 + image)
    x = rng.standard_normal((1, image, image, 3)).astype(np.float32)
    kernel = rng.standard_normal((size, size, 3, filters)).astype(np.float32)
    expected = torch_conv2d(x, kernel, stride, pads)
    out = expected.shape[1:3]
    flops = 2.0 * out[0] * out[1] * kernel.size
    monkeypatch.setattr(_threads, "worker_count", lambda: 2)
    cuts = []
    real = register_tiles.run_chunks

    def recording(work, total, chunk, **options):
        cuts.append((total, options.get("inline_below", _threads.SMALL_WORK)))
        return real(work, total, chunk, **options)

    monkeypatch.setattr(register_tiles, "run_chunks", recording)
    real_native = _threads.run_native_jobs

    def recording_native(runner, rows, jobs, **options):  # a table of compiled calls
        cuts.append((len(jobs), options.get("inline_below", _threads.SMALL_WORK)))
        return real_native(runner, rows, jobs, **options)

    monkeypatch.setattr(_threads, "run_native_jobs", recording_native)
    y = register_tiles.direct(x, kernel, (stride, stride), (1, 1), 1, out, padding=pads)
    assert relative_error(y, expected) <= TOLERANCE[np.float32], (size, stride, image)
    if flops < register_tiles.THIN_INLINE_FLOPS:
        # on the calling thread: thin_call's one compiled call, no chunks
        assert cuts == [], (size, stride, filters, image, flops, cuts)
    elif _native_jobs.kernel_runner() is not None:
        # one table of calls: thin_call's pieces of rows, as many for each worker
        assert len(cuts) == 1, (size, stride, filters, image, flops, cuts)
        pieces = thin_call.pieces(1, out[0], 2 * thin_call.JOBS_PER_WORKER)
        assert cuts[0][0] == len(pieces) == 2 * thin_call.JOBS_PER_WORKER, (
            size, stride, filters, image, flops, cuts)


def test_stems_of_many_images_share_whole_images(monkeypatch):
    """16 images on two workers: pieces of whole images (as many as the workers' jobs),
    each padding its own rows; equal to PyTorch and, bit for bit, to one thread."""
    rng = np.random.default_rng(7001)
    x = rng.standard_normal((16, 24, 24, 3)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    pads = ((0, 1), (0, 1))
    expected = torch_conv2d(x, kernel, 2, pads)
    out = expected.shape[1:3]
    ran = []
    real = _threads.run_native_jobs

    def recording(runner, rows, jobs, **options):  # the pieces' table of calls
        ran.append(list(jobs))
        return real(runner, rows, jobs, **options)

    monkeypatch.setattr(_threads, "run_native_jobs", recording)
    shared = register_tiles.direct(x, kernel, (2, 2), (1, 1), 1, out, padding=pads, threads=2)
    alone = register_tiles.direct(x, kernel, (2, 2), (1, 1), 1, out, padding=pads, threads=1)
    assert relative_error(shared, expected) <= TOLERANCE[np.float32]
    assert np.array_equal(shared, alone)
    if _native_jobs.kernel_runner() is not None:
        # one table: a job per piece, each its filler and one call per panel
        assert len(ran) == 1 and len(ran[0]) == 2 * thin_call.JOBS_PER_WORKER
        assert len({rows for _, rows in ran[0]}) == 1
        assert thin_call.pieces(16, out[0], 2 * thin_call.JOBS_PER_WORKER) == [
            (2 * i, 0, 2 * out[0]) for i in range(8)]


def test_a_non_finite_input_reaches_only_the_windows_that_read_it_on_two_workers():
    """Shared among workers (each piece padding its own rows), a NaN and an inf reach
    exactly the output cells whose windows read them, as one thread's result says."""
    rng = np.random.default_rng(7002)
    x = rng.standard_normal((2, 20, 20, 3)).astype(np.float32)
    x[0, 9, 0, 1] = np.nan  # on a piece's edge rows and the left padding's column
    x[1, 19, 19, 2] = np.inf
    kernel = rng.standard_normal((3, 3, 3, 32)).astype(np.float32)
    pads = ((1, 1), (1, 1))
    shared = register_tiles.direct(x, kernel, (1, 1), (1, 1), 1, (20, 20), padding=pads,
                                   threads=2)
    reads = np.zeros((2, 20, 20), bool)
    reads[0, 8:11, 0:2] = True
    reads[1, 18:20, 18:20] = True
    assert np.array_equal(~np.isfinite(shared).all(axis=-1), reads)
    assert np.isfinite(shared[~reads]).all()
