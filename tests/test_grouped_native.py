"""Grouped forward passes as one table of compiled calls (``_native_jobs``) on the
helper threads: the same results bit for bit as the Python jobs (the same calls in
the same order within a chunk), checked against PyTorch, for random grouped layers
(every family of grouped kernels: groups of 2-4, half a vector, one vector, whole
vectors), padding, strides and dilation. Each case prints its seed on failure."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import peak_extra_bytes, relative_error
from convarith.engine.algorithms import _llvm, _native_jobs, _spin, _threads
from convarith.engine.algorithms import grouped_tiles as gt

pytestmark = pytest.mark.skipif(
    not _llvm.available(np.float32) or _spin.spinner() is None
    or _native_jobs.rows_runner(_native_jobs.KERNEL_POINTERS,
                                _native_jobs.KERNEL_FIELDS) is None,
    reason="no compiled kernels or spinner on this machine")

CASES = 4 if os.environ.get("CI") == "true" else 40


@pytest.fixture(autouse=True)
def _spinning(monkeypatch):
    """The helpers spin (the table needs them); every forward pass is cut for threads."""
    monkeypatch.setenv("CONVARITH_SPIN_US", "1000")
    monkeypatch.setattr(gt, "PARALLEL_FLOPS", 0.0)
    gt._forward_plan.cache_clear()
    yield
    gt._forward_plan.cache_clear()


def _layer(rng: random.Random) -> dict:
    group = rng.choice([2, 4, 8, 16, 32])
    groups = rng.choice([2, 4, 8, 32]) if group >= 8 else rng.choice([8, 16, 32, 64])
    size = rng.randint(2, 16)
    kernel = rng.choice([1, 2, 3, 5])
    dilation = rng.choice([1, 1, 2])
    reach = dilation * (kernel - 1) + 1
    pad = rng.choice([(0, 0), (1, 1), (0, 1), (2, 1)])
    size = max(size, reach - pad[0] - pad[1])
    return dict(n=rng.randint(1, 5), size=size, channels=group * groups, groups=groups,
                kernel=kernel, stride=rng.choice([1, 2]), dilation=dilation, pad=pad,
                dtype=rng.choice([np.float32, np.float32, np.float64]))


#: ResNeXt-50's 3×3 32-group layer on 14², two images.
RESNEXT_LAYER = dict(n=2, size=14, channels=256, groups=32, kernel=3, stride=1, dilation=1,
                     pad=(1, 1), dtype=np.float32)


def _run(layer: dict, seed: int, threads: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    data = np.random.default_rng(seed)
    c, k = layer["channels"], layer["kernel"]
    x = data.standard_normal((layer["n"], layer["size"], layer["size"], c)).astype(
        layer["dtype"])
    kernel = data.standard_normal((k, k, c // layer["groups"], c)).astype(layer["dtype"])
    lo, hi = layer["pad"]
    out = (layer["size"] + lo + hi - layer["dilation"] * (k - 1) - 1) // layer["stride"] + 1
    y = gt.direct(x, kernel, (layer["stride"],) * 2, (layer["dilation"],) * 2,
                  layer["groups"], (out, out), padding=(layer["pad"], layer["pad"]),
                  threads=threads)
    return x, kernel, y


def test_the_table_gives_the_python_jobs_results_and_pytorchs(monkeypatch):
    torch = pytest.importorskip("torch")
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    tabled = 0
    original = _threads.run_native_jobs

    def counting(*arguments, **keywords):
        nonlocal tabled
        tabled += 1
        return original(*arguments, **keywords)

    original_table = _threads.run_native_table

    def counting_table(*arguments, **keywords):  # (the runners made once: _fast_runner)
        nonlocal tabled
        tabled += 1
        return original_table(*arguments, **keywords)

    monkeypatch.setattr(gt, "run_native_jobs", counting)
    monkeypatch.setattr(gt, "run_native_table", counting_table)
    for case in range(CASES + 1):
        # case 0: ResNeXt's layer, which runs as a table, so that a draw of layers that
        # all run otherwise still checks a table
        layer = RESNEXT_LAYER if case == 0 else _layer(rng)
        threads = 2 if case == 0 else rng.choice([2, 3])
        where = f"seed {seed}, case {case}: {layer}, {threads} threads"
        x, kernel, y = _run(layer, case, threads)
        with monkeypatch.context() as patch:  # (the Python jobs: no runner, none kept)
            patch.setattr(gt, "_table_runner", lambda *arguments: None)
            patch.setattr(gt, "_fast_runner", lambda *arguments: None)
            _, _, expected = _run(layer, case, threads)
        assert np.array_equal(y, expected), where
        lo, hi = layer["pad"]
        xt = torch.nn.functional.pad(torch.from_numpy(np.moveaxis(x, -1, 1).copy()),
                                     (lo, hi, lo, hi))
        wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
        reference = torch.nn.functional.conv2d(xt, wt, stride=layer["stride"],
                                               dilation=layer["dilation"],
                                               groups=layer["groups"]).numpy()
        tolerance = 1e-5 if layer["dtype"] == np.float32 else 1e-10
        assert relative_error(y, np.moveaxis(reference, 1, -1)) <= tolerance, where
    assert tabled > 0, f"seed {seed}: no layer ran as a table"


@pytest.mark.parametrize("batch, size, channels, stride", [
    (1, 28, 128, 1), (1, 14, 256, 1), (1, 7, 1024, 2), (1, 4, 1024, 1), (8, 4, 1024, 1),
    (4, 14, 256, 2)])
def test_resnext_layers_run_as_a_table_within_the_memory_target(monkeypatch, batch, size,
                                                                channels, stride):
    """ResNeXt's grouped layers on two threads run as one table on the helpers, their
    padded copy and output within 1.5x the input, kernel and output bytes."""
    ran: list[int] = []
    original = _spin.SpinningPool.run_native

    def spy(self, *arguments):
        ran.append(arguments[3])
        return original(self, *arguments)

    monkeypatch.setattr(_spin.SpinningPool, "run_native", spy)
    rng = np.random.default_rng(size * channels + batch)
    x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, channels // 32, channels)).astype(np.float32)
    out = (size - 1) // stride + 1

    def forward() -> np.ndarray:
        return gt.direct(x, kernel, (stride, stride), (1, 1), 32, (out, out),
                         padding=((1, 1), (1, 1)), threads=2)

    y = forward()
    assert ran and all(jobs >= 2 for jobs in ran), ran
    with monkeypatch.context() as patch:  # (the Python jobs: no runner, none kept)
        patch.setattr(gt, "_table_runner", lambda *arguments: None)
        patch.setattr(gt, "_fast_runner", lambda *arguments: None)
        assert np.array_equal(y, forward())
    extra = peak_extra_bytes(forward)
    assert extra <= 1.5 * (x.nbytes + kernel.nbytes + y.nbytes), extra


def test_the_row_filler_pads_as_numpy_does():
    """The table's filler row copies rows of images zero-padded as ``np.pad`` does, rows
    above and below the input zeros (random shapes; seed printed)."""
    import ctypes

    filler = _native_jobs.padded_rows_filler()
    assert filler is not None
    fill = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * _native_jobs.KERNEL_POINTERS,
                            *[ctypes.c_int64] * _native_jobs.KERNEL_FIELDS)(filler.address)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for _ in range(20):
        n, h, w, c = (rng.randint(1, 3), rng.randint(1, 6), rng.randint(1, 6),
                      rng.randint(1, 9))
        top, bottom, left, right = (rng.randint(0, 3) for _ in range(4))
        dtype = rng.choice([np.float32, np.float64])
        x = np.random.default_rng(seed).standard_normal((n, h, w, c)).astype(dtype)
        first = rng.randint(-top, h + bottom - 1)  # the slab's first row, in input rows
        rows = rng.randint(1, h + bottom - first)
        slab = np.full((n, rows, w + left + right, c), np.nan, dtype)
        item = x.itemsize
        fields = (n, rows, first, h, w * c * item, h * w * c * item,
                  (w + left + right) * c * item, rows * (w + left + right) * c * item,
                  left * c * item, w * c * item, right * c * item)
        fill(slab.ctypes.data, x.ctypes.data, 0, 0, *fields,
             *[0] * (_native_jobs.KERNEL_FIELDS - len(fields)))
        padded = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
        expected = padded[:, first + top:first + top + rows]
        assert np.array_equal(slab, expected), (seed, x.shape, first, rows, top, left, right)
