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


def _spinning_pool() -> _spin.SpinningPool:
    """A one-helper pool whose helper spins now (it ran a task a moment ago)."""
    pool = _spin.SpinningPool(1, "test_hold")
    for _ in range(50):
        pool.submit(lambda: None).result()
        if pool.can_hold():
            return pool
        time.sleep(0.001)
    pool.shutdown()
    pytest.skip("the helper does not spin here (no compiled spinner, or spinning off)")


def _memset():
    import ctypes

    libc = ctypes.CDLL(None)
    memset = libc.memset
    memset.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    memset.restype = ctypes.c_void_p
    return memset, ctypes.cast(memset, ctypes.c_void_p).value


def test_a_held_helper_waits_for_the_go_or_its_hold(monkeypatch):
    """A task handed over with submit_held starts once the caller calls through
    signal_call (its arguments passed on), or, without one, only after its hold."""
    monkeypatch.setenv("CONVARITH_SPIN_US", "200000")
    if _spin.spinner() is None:
        pytest.skip("no compiled spinner here")
    memset, address = _memset()
    pool = _spinning_pool()
    try:
        started: dict[str, float] = {}
        # with a go: well before a 0.5 s hold is up
        buffer = np.zeros(16, np.uint8)
        begin = time.perf_counter()
        task = pool.submit_held(lambda: started.setdefault("go", time.perf_counter()), 500_000)
        pool.signal_call(address, (buffer.ctypes.data, 7, 5))
        task.result()
        assert buffer.tolist() == [7] * 5 + [0] * 11  # memset(buffer, 7, 5) ran
        assert started["go"] - begin < 0.4
        # no go: not before the 0.3 s hold is up
        pool.submit(lambda: None).result()
        assert pool.can_hold()
        begin = time.perf_counter()
        task = pool.submit_held(lambda: started.setdefault("hold", time.perf_counter()), 300_000)
        task.result()
        assert started["hold"] - begin >= 0.25
        # a plain task after a held one is not held
        begin = time.perf_counter()
        pool.submit(lambda: started.setdefault("plain", time.perf_counter())).result()
        assert started["plain"] - begin < 0.2
    finally:
        pool.shutdown()


def test_run_pair_returns_both_results_and_hands_back_errors_after_both():
    ran: list[str] = []

    def slow() -> str:
        time.sleep(0.02)
        ran.append("second")
        return "b"

    assert _threads.run_pair(lambda: "a", slow) == ("a", "b")

    def fail() -> None:
        raise ValueError("first job")

    ran.clear()
    with pytest.raises(ValueError, match="first job"):
        _threads.run_pair(fail, slow)
    assert ran == ["second"]  # the other job ended before the error came back
    with pytest.raises(KeyError, match="second job"):
        _threads.run_pair(lambda: "a", lambda: {}["second job"])


def test_run_pair_tells_the_helper_at_the_first_compiled_call(monkeypatch):
    """The first job's first call through call_native goes through the pool's
    signal_call (once: later calls go straight), and calls the function either way."""
    monkeypatch.setenv("CONVARITH_SPIN_US", "200000")
    if _spin.spinner() is None:
        pytest.skip("no compiled spinner here")
    memset, address = _memset()
    pool = _threads._POOL.get()
    for _ in range(50):
        pool.submit(lambda: None).result()
        if pool.can_hold():
            break
    signalled: list[tuple[int, ...]] = []
    through = pool.signal_call

    def spy(function: int, arguments: tuple[int, ...]) -> None:
        signalled.append(arguments)
        through(function, arguments)

    monkeypatch.setattr(pool, "signal_call", spy)
    buffer = np.zeros(8, np.uint8)

    def first() -> str:
        _threads.call_native(memset, address, buffer.ctypes.data, 3, 2)
        _threads.call_native(memset, address, buffer.ctypes.data + 4, 5, 1)
        return "first"

    assert _threads.run_pair(first, lambda: "second") == ("first", "second")
    assert buffer.tolist() == [3, 3, 0, 0, 5, 0, 0, 0]
    if pool.can_hold() or signalled:
        assert signalled == [(buffer.ctypes.data, 3, 2)]
    # outside a pair: straight through, nothing signalled
    signalled.clear()
    _threads.call_native(memset, address, buffer.ctypes.data, 9, 1)
    assert buffer[0] == 9 and signalled == []
