"""The helper threads' pool: threads that wait for work a moment by spinning, not sleeping.

A helper thread that sleeps between calls (on a lock, as ``ThreadPoolExecutor``'s
do) takes a long while to run again once it is handed work: the kernel wakes
it, and on a virtual machine an idle core first has to be woken by the host.
For a layer that takes a few hundred microseconds the caller has then done
most of the chunks itself before the helper starts. OpenMP runtimes (PyTorch's)
keep their threads spinning for a while after a parallel region for the same
reason. Here a helper that finds no work spins for up to ``CONVARITH_SPIN_US``
microseconds (default :data:`SPIN_MICROSECONDS`; 0 turns spinning off) on a
word in memory that :meth:`SpinningPool.submit` changes, inside a tiny compiled
function called through ctypes, so the spinning thread does not hold the GIL,
and yields its core at each turn (``sched_yield``), so that BLAS's own threads
or another process's are not slowed by it; only then does it sleep on a condition. The caller waiting for a helper's last
chunk spins the same way before it sleeps.

The spinner is compiled with llvmlite for x86-64 (``pause`` in the loop, the
time-stamp counter for the budget); elsewhere, with ``CONVARITH_JIT=0`` or
without llvmlite, the threads sleep at once, as before.

Examples
--------
>>> pool = SpinningPool(1)
>>> task = pool.submit(lambda: 6 * 7)
>>> task.result()
42
>>> pool.shutdown()
"""

from __future__ import annotations

import collections
import ctypes
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..state import cached_once

__all__ = ["SpinningPool", "SPIN_MICROSECONDS", "spin_microseconds", "spinner"]

#: How long an idle helper (and a caller waiting for a helper) spins before it
#: sleeps, in microseconds, unless ``CONVARITH_SPIN_US`` says otherwise.
SPIN_MICROSECONDS = 1000

_SPIN_VARIABLE = "CONVARITH_SPIN_US"

_IR = """
declare void @llvm.x86.sse2.pause()
declare i64 @llvm.readcyclecounter()

define i64 @ticks() {
  %t = call i64 @llvm.readcyclecounter()
  ret i64 %t
}

define i32 @drive(i32* %word, i32 %old, i64 %budget, i32 ()* %yield) {
entry:
  %start = call i64 @llvm.readcyclecounter()
  br label %check
check:
  %value = load atomic i32, i32* %word acquire, align 4
  %changed = icmp ne i32 %value, %old
  br i1 %changed, label %done, label %wait
wait:
  call void @llvm.x86.sse2.pause()
  %ignored = call i32 %yield()
  %now = call i64 @llvm.readcyclecounter()
  %spent = sub i64 %now, %start
  %over = icmp uge i64 %spent, %budget
  br i1 %over, label %done, label %check
done:
  %last = load atomic i32, i32* %word acquire, align 4
  ret i32 %last
}
"""


def spin_microseconds() -> int:
    """The spin budget: ``CONVARITH_SPIN_US`` if it is a whole number, else
    :data:`SPIN_MICROSECONDS`.

    >>> isinstance(spin_microseconds(), int)
    True
    """
    setting = os.environ.get(_SPIN_VARIABLE, "").strip()
    if setting.isdigit():
        return int(setting)
    return SPIN_MICROSECONDS


class _Spinner:
    """``wait(address, old, microseconds)``: spin (GIL released) until the int32 at
    ``address`` differs from ``old`` or the time is up; returns the word's value."""

    def __init__(self, spin: Any, ticks_per_microsecond: float, engine: Any,
                 yield_address: int) -> None:
        self._spin = spin
        self._per_microsecond = ticks_per_microsecond
        self._engine = engine  # owns the code
        self._yield = yield_address

    def wait(self, address: int, old: int, microseconds: float) -> int:
        return int(self._spin(address, old, int(microseconds * self._per_microsecond),
                              self._yield))


@cached_once
def spinner() -> _Spinner | None:
    """The compiled spinner, or ``None`` where the threads sleep at once (not x86-64,
    ``CONVARITH_JIT=0``, no llvmlite)."""
    from . import _llvm

    llvm = _llvm._llvm()
    if llvm is None or not llvm.get_process_triple().startswith(("x86_64", "amd64")):
        return None
    try:
        spin_address, engine = _llvm.compile_drive(llvm, _llvm._target("native"), _IR)
        ticks_address = engine.get_function_address("ticks")
    except Exception:  # pragma: no cover - an llvmlite that cannot compile this
        return None
    try:  # each turn of the loop yields the core to any other thread waiting for it
        yield_address = ctypes.cast(ctypes.CDLL(None).sched_yield, ctypes.c_void_p).value
    except (OSError, AttributeError):  # pragma: no cover - a libc without sched_yield
        return None
    if not yield_address:  # pragma: no cover
        return None
    spin = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32,
                            ctypes.c_int64, ctypes.c_void_p)(spin_address)
    ticks = ctypes.CFUNCTYPE(ctypes.c_int64)(ticks_address)
    # the time-stamp counter's rate, over about a millisecond
    start_time, start_ticks = time.perf_counter(), ticks()
    while time.perf_counter() - start_time < 1e-3:
        pass
    elapsed = time.perf_counter() - start_time
    per_microsecond = (ticks() - start_ticks) / (elapsed * 1e6)
    if not per_microsecond > 0:  # pragma: no cover - a counter that does not count
        return None
    return _Spinner(spin, per_microsecond, engine, yield_address)


_QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)


class Task:
    """A submitted call: :meth:`cancel` while it is queued, :meth:`result` to wait for it."""

    __slots__ = ("_call", "_state", "_value", "_error", "_word", "_finished", "_pool")

    def __init__(self, call: Callable[[], Any], pool: SpinningPool) -> None:
        self._call = call
        self._state = _QUEUED
        self._value: Any = None
        self._error: BaseException | None = None
        self._word = ctypes.c_int32(0)  # 1 once finished (what a waiting caller spins on)
        self._finished = threading.Event()
        self._pool = pool

    def _run(self) -> None:
        try:
            self._value = self._call()
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits
            self._error = error
        self._state = _DONE
        self._word.value = 1
        self._finished.set()

    def cancel(self) -> bool:
        """Drop the task if no thread has taken it yet (``True``), else ``False``."""
        return self._pool._cancel(self)

    def result(self) -> Any:
        """Wait for the task (spinning a moment first); its value, or raise its error."""
        if not self._finished.is_set():
            wait = self._pool._spinner
            budget = spin_microseconds()
            if wait is not None and budget > 0:
                wait.wait(ctypes.addressof(self._word), 0, budget)
            self._finished.wait()
        if self._error is not None:
            raise self._error
        return self._value


class SpinningPool:
    """``threads`` daemon threads that run submitted calls in order (see the module).

    Parameters
    ----------
    threads
        How many threads (started now).
    name
        Their names' prefix.
    """

    def __init__(self, threads: int, name: str = "convarith") -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._queue: collections.deque[Task] = collections.deque()
        self._closed = False
        self._sleeping = 0
        self._generation = 0
        self._word = ctypes.c_int32(0)  # the generation, where the spinners read it
        self._spinner = spinner()
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{index}",
                                          daemon=True) for index in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., Any], *arguments: Any) -> Task:
        """Queue ``call(*arguments)``; a ``RuntimeError`` once the pool is shut down."""
        task = Task((lambda: call(*arguments)) if arguments else call, self)
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._queue.append(task)
            self._generation = (self._generation + 1) & 0x7FFFFFFF
            self._word.value = self._generation
            if self._sleeping:
                self._wake.notify()
        return task

    def _cancel(self, task: Task) -> bool:
        with self._lock:
            if task._state != _QUEUED:
                return False
            self._queue.remove(task)
            task._state = _CANCELLED
        task._finished.set()
        return True

    def shutdown(self) -> None:
        """Let the threads end once the queued calls are done."""
        with self._lock:
            self._closed = True
            self._generation = (self._generation + 1) & 0x7FFFFFFF
            self._word.value = self._generation
            self._wake.notify_all()

    def _serve(self) -> None:
        address = ctypes.addressof(self._word)
        while True:
            with self._lock:
                task = self._queue.popleft() if self._queue else None
                if task is not None:
                    task._state = _RUNNING
                generation, closed = self._generation, self._closed
            if task is not None:
                task._run()
                continue
            if closed:
                return
            wait = self._spinner
            budget = spin_microseconds()
            if wait is not None and budget > 0 and wait.wait(address, generation,
                                                             budget) != generation:
                continue  # work came while spinning
            with self._lock:
                while not self._queue and not self._closed:
                    self._sleeping += 1
                    try:
                        self._wake.wait()
                    finally:
                        self._sleeping -= 1
