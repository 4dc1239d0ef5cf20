"""The helper threads' spinning pool: the same results as a plain pool, spinning or not."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from convarith.engine.algorithms import _spin, _threads


@pytest.mark.parametrize("spin_us", ["0", "2000"])
def test_pool_runs_every_call_once_in_order_and_hands_back_errors(monkeypatch, spin_us):
    monkeypatch.setenv("CONVARITH_SPIN_US", spin_us)
    pool = _spin.SpinningPool(2, "test_spin")
    try:
        seen: list[int] = []
        lock = threading.Lock()

        def record(value: int) -> int:
            with lock:
                seen.append(value)
            return value * value

        tasks = [pool.submit(record, value) for value in range(200)]
        assert [task.result() for task in tasks] == [v * v for v in range(200)]
        assert sorted(seen) == list(range(200))

        def fail() -> None:
            raise KeyError("inside a helper")

        with pytest.raises(KeyError, match="inside a helper"):
            pool.submit(fail).result()
        # work handed over after an idle moment (the helpers spinning or asleep) still runs
        time.sleep(0.005)
        assert pool.submit(lambda: 7).result() == 7
    finally:
        pool.shutdown()


def test_a_queued_call_can_be_cancelled_and_a_shut_pool_refuses_work():
    pool = _spin.SpinningPool(1, "test_spin")
    started, release = threading.Event(), threading.Event()

    def block() -> str:
        started.set()
        release.wait(5)
        return "done"

    first = pool.submit(block)
    started.wait(5)
    second = pool.submit(lambda: "never")
    assert second.cancel() is True
    assert first.cancel() is False  # already running
    release.set()
    assert first.result() == "done"
    pool.shutdown()
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(lambda: None)


def test_spin_budget_reads_the_environment(monkeypatch):
    monkeypatch.setenv("CONVARITH_SPIN_US", "0")
    assert _spin.spin_microseconds() == 0
    monkeypatch.setenv("CONVARITH_SPIN_US", "250")
    assert _spin.spin_microseconds() == 250
    monkeypatch.setenv("CONVARITH_SPIN_US", "lots")
    assert _spin.spin_microseconds() == _spin.SPIN_MICROSECONDS


def test_spinner_returns_when_the_word_changes_or_time_is_up():
    wait = _spin.spinner()
    if wait is None:
        pytest.skip("no compiled spinner here (not x86-64, CONVARITH_JIT=0 or no llvmlite)")
    import ctypes

    word = ctypes.c_int32(5)
    start = time.perf_counter()
    assert wait.wait(ctypes.addressof(word), 4, 1e6) == 5  # already different: at once
    assert time.perf_counter() - start < 0.5
    start = time.perf_counter()
    assert wait.wait(ctypes.addressof(word), 5, 2000) == 5  # unchanged: the budget runs out
    assert time.perf_counter() - start >= 0.0015

    def change() -> None:
        time.sleep(0.01)
        word.value = 9

    changer = threading.Thread(target=change)
    changer.start()
    assert wait.wait(ctypes.addressof(word), 5, 5e6) == 9  # the spinner does not hold the GIL
    changer.join()


def test_run_chunks_on_the_spinning_helpers_covers_the_range_once(monkeypatch):
    monkeypatch.setenv("CONVARITH_SPIN_US", "1000")
    out = np.zeros(1000)

    def work(start: int, stop: int) -> int:
        out[start:stop] += 1
        return stop - start

    for _ in range(20):
        sizes = _threads.run_chunks(work, 1000, 37, threads=2)
        assert sum(sizes) == 1000
    assert (out == 20).all()
