"""Jobs of compiled calls run as one table on the helper threads (``_native_jobs``).

The table's results must be the closures' own bit for bit (the same calls, in the
same order within a chunk): the closures' path runs where spinning is off
(``CONVARITH_SPIN_US=0``), which is also the path taken where the spinner is
unavailable.
"""

from __future__ import annotations

import os
import random
import threading
import time

import numpy as np
import pytest

from _helpers import peak_extra_bytes
from convarith.engine.algorithms import _llvm, _native_jobs, _spin, _threads
from convarith.engine.algorithms import register_tiles as rt

pytestmark = pytest.mark.skipif(
    not _llvm.available(np.float32) or _spin.spinner() is None
    or _native_jobs.rows_runner(4, 18) is None,
    reason="no compiled kernels or spinner on this machine")

CASES = 12 if os.environ.get("CI") == "true" else 60


@pytest.fixture(autouse=True)
def _spinning(monkeypatch):
    """The helpers spin (the table of calls needs them) unless a test says otherwise."""
    monkeypatch.setenv("CONVARITH_SPIN_US", "1000")


def _layer(rng: random.Random) -> dict:
    rank = rng.choice([1, 2, 2])
    dtype = rng.choice([np.float32, np.float64])
    n = rng.randint(1, 4)
    c, f = rng.choice([3, 8, 16, 32, 64]), rng.choice([8, 16, 24, 64])
    size = [rng.randint(3, 20) for _ in range(rank)]
    kernel = [rng.randint(1, 3) for _ in range(rank)]
    strides = [rng.randint(1, 2) for _ in range(rank)]
    dilation = [rng.randint(1, 2) for _ in range(rank)]
    pads = [rng.choice([(0, 0), (1, 1), (0, 1), (2, 1)]) for _ in range(rank)]
    return dict(rank=rank, dtype=dtype, n=n, c=c, f=f, size=size, kernel=kernel,
                strides=strides, dilation=dilation, pads=pads)


def _run(layer: dict, seed: int, threads: int | None) -> np.ndarray | None:
    data = np.random.default_rng(seed)
    x = data.standard_normal((layer["n"], *layer["size"], layer["c"])).astype(layer["dtype"])
    k = data.standard_normal((*layer["kernel"], layer["c"], layer["f"])).astype(layer["dtype"])
    out = []
    for i, (s, kk, st, d, (lo, hi)) in enumerate(zip(layer["size"], layer["kernel"],
                                                       layer["strides"], layer["dilation"],
                                                       layer["pads"])):
        reach = d * (kk - 1) + 1
        if s + lo + hi < reach:
            return None
        out.append((s + lo + hi - reach) // st + 1)
        del i
    return rt.direct(x, k, layer["strides"], layer["dilation"], 1, out, padding=layer["pads"],
                     threads=threads)


def _closures(monkeypatch, layer: dict, seed: int, threads: int | None) -> np.ndarray | None:
    with monkeypatch.context() as patch:
        patch.setattr(_native_jobs, "kernel_plan", lambda *arguments: None)
        return _run(layer, seed, threads)


def test_the_table_gives_the_closures_results_bit_for_bit(monkeypatch):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    for case in range(CASES):
        layer = _layer(rng)
        threads = rng.choice([2, 3, 4])  # one thread runs the closures
        expected = _closures(monkeypatch, layer, case, threads)
        if expected is None:
            continue
        actual = _run(layer, case, threads)
        assert actual is not None
        assert np.array_equal(actual, expected), f"seed {seed}, case {case}: {layer}, {threads}"


def test_the_table_runs_on_the_helpers(monkeypatch):
    # a layer big enough for two threads: the helper must run some of its jobs
    ran: list[str] = []
    runner = _native_jobs.rows_runner(4, 18)
    assert runner is not None
    original = _spin.SpinningPool.run_native

    def spy(self, *arguments):
        ran.append("pool")
        return original(self, *arguments)

    monkeypatch.setattr(_spin.SpinningPool, "run_native", spy)
    layer = dict(rank=2, dtype=np.float32, n=1, c=64, f=64, size=[28, 28], kernel=[3, 3],
                 strides=[1, 1], dilation=[1, 1], pads=[(1, 1), (1, 1)])
    actual = _run(layer, 1, 2)
    assert ran == ["pool"]
    assert np.array_equal(actual, _closures(monkeypatch, layer, 1, 2))


def test_many_callers_at_once_get_their_own_results(monkeypatch):
    layers = [dict(rank=2, dtype=np.float32, n=1, c=32, f=32, size=[24, 24], kernel=[3, 3],
                   strides=[1, 1], dilation=[1, 1], pads=[(1, 1), (1, 1)]),
              dict(rank=2, dtype=np.float64, n=2, c=16, f=16, size=[20, 20], kernel=[3, 3],
                   strides=[2, 2], dilation=[1, 1], pads=[(0, 1), (0, 1)]),
              dict(rank=1, dtype=np.float32, n=1, c=64, f=64, size=[300], kernel=[2],
                   strides=[1], dilation=[2], pads=[(2, 0)])]
    expected = [_closures(monkeypatch, layer, i, 2) for i, layer in enumerate(layers)]
    failures: list[str] = []

    def caller(index: int) -> None:
        for turn in range(15):
            which = (index + turn) % len(layers)
            result = _run(layers[which], which, 2)
            if not np.array_equal(result, expected[which]):
                failures.append(f"caller {index}, turn {turn}, layer {which}")

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "a caller is stuck"
    assert not failures, failures


def test_a_sleeping_helper_is_woken_and_results_stay_right(monkeypatch):
    # a spin budget of 50 µs: after an idle moment the helpers sleep on the condition
    monkeypatch.setenv("CONVARITH_SPIN_US", "50")
    layer = dict(rank=2, dtype=np.float32, n=1, c=64, f=64, size=[28, 28], kernel=[3, 3],
                 strides=[1, 1], dilation=[1, 1], pads=[(1, 1), (1, 1)])
    expected = _closures(monkeypatch, layer, 3, 2)
    for _ in range(3):
        time.sleep(0.01)
        assert np.array_equal(_run(layer, 3, 2), expected)


def test_without_the_spinner_the_closures_run(monkeypatch):
    monkeypatch.setenv("CONVARITH_SPIN_US", "0")
    x = np.ones((1, 4, 4, 8), np.float32)
    assert _native_jobs.kernel_plan(x, [(1, 1), (1, 1)], 6, 4 * 4 * 16 * 4, 2) is None
    monkeypatch.setattr(_spin, "spinner", lambda: None)
    monkeypatch.setenv("CONVARITH_SPIN_US", "1000")
    assert _native_jobs.kernel_plan(x, [(1, 1), (1, 1)], 6, 4 * 4 * 16 * 4, 2) is None
    pool = _spin.SpinningPool(1, "test_native")
    try:
        assert pool.run_native(0, 0, 0, 1, 1) is None
    finally:
        pool.shutdown()


def test_a_pool_runs_a_table_of_jobs_with_its_helpers(monkeypatch):
    # three helpers share the jobs (any may run any), against one thread
    layer = dict(rank=2, dtype=np.float32, n=3, c=16, f=16, size=[9, 9], kernel=[3, 3],
                 strides=[1, 1], dilation=[1, 1], pads=[(1, 1), (1, 1)])
    expected = _run(layer, 5, 1)
    pool = _spin.SpinningPool(3, "test_native")
    try:
        monkeypatch.setattr(_threads._POOL, "get", lambda: pool)
        for _ in range(20):
            assert np.array_equal(_run(layer, 5, 4), expected)
    finally:
        pool.shutdown()


@pytest.mark.parametrize("shape", [(1, 28, 64, 64, 3, 1, 1), (1, 28, 64, 64, 3, 1, 0),
                                   (1, 28, 128, 128, 3, 2, 1), (1, 4, 512, 512, 3, 1, 1),
                                   (1, 56, 3, 32, 3, 2, 1), (2, 9, 16, 16, 5, 1, 2)])
def test_the_padded_copy_keeps_the_memory_target(shape):
    n, size, c, f, kernel, stride, pad = shape
    data = np.random.default_rng(0)
    x = data.standard_normal((n, size, size, c)).astype(np.float32)
    k = data.standard_normal((kernel, kernel, c, f)).astype(np.float32)
    out = (size + 2 * pad - kernel) // stride + 1
    extra = peak_extra_bytes(lambda: rt.direct(x, k, (stride, stride), (1, 1), 1, (out, out),
                                               padding=[(pad, pad)] * 2, threads=2))
    y_bytes = n * out * out * f * 4
    assert extra <= 1.5 * (x.nbytes + k.nbytes + y_bytes), (shape, extra)


@pytest.mark.parametrize("spin_us", ["20", "1000"])
def test_many_small_batches_on_helpers_that_spin_and_sleep(monkeypatch, spin_us):
    # many batches back to back (helpers joining, refused, asleep and woken late)
    monkeypatch.setenv("CONVARITH_SPIN_US", spin_us)
    layer = dict(rank=2, dtype=np.float64, n=4, c=8, f=8, size=[6, 6], kernel=[1, 1],
                 strides=[1, 1], dilation=[1, 1], pads=[(0, 0), (0, 0)])
    expected = _run(layer, 9, 1)
    pool = _spin.SpinningPool(3, "test_native")
    batches: list[int | None] = []
    run_native = pool.run_native

    def counted(*arguments):
        batches.append(run_native(*arguments))
        return batches[-1]

    try:
        monkeypatch.setattr(_threads._POOL, "get", lambda: pool)
        monkeypatch.setattr(pool, "run_native", counted)
        turns = 150 if os.environ.get("CI") == "true" else 600
        for turn in range(turns):
            threads = 2 + turn % 3
            assert np.array_equal(_run(layer, 9, threads), expected), (turn, threads)
            if turn % 50 == 0:
                time.sleep(0.001)
    finally:
        pool.shutdown()
    assert len(batches) == turns and None not in batches
