"""Coarse-grained parallel chunks with single-threaded BLAS inside each.

The fast algorithms cut their work into independent chunks (rows of output,
blocks of tiles) whose working set fits in a core's cache, and run them on
one thread per core, each calling BLAS single-threaded (threadpoolctl) and
numba kernels that release the GIL. Compared with one multi-threaded BLAS call
per small product this has no barrier between products, balances itself when
another process takes a core for a while, and never runs more threads than
cores (BLAS and numba never compete). The helper threads are kept between
calls (per process) and, on Linux, off the core the caller is on: after an
idle moment a woken thread often lands on the caller's core, and both then
share it. Without threadpoolctl the chunks
run one after another with BLAS multi-threaded.

Examples
--------
>>> seen = []
>>> _ = run_chunks(lambda start, stop: seen.append((start, stop)), 10, 4, threads=1)
>>> seen
[(0, 4), (4, 8), (8, 10)]
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..state import cached_once, environment
from ._spin import SpinningPool

__all__ = ["run_chunks", "worker_count", "thread_limit", "blas_single_threaded", "workspace", "aligned_empty",
           "aligned_copy", "chunk_workers",
           "SMALL_WORK", "SMALL_WORK_NO_BLAS", "parallel_penalty", "BLAS_SERIAL_SHARE",
           "run_native_jobs", "run_native_table", "native_workers", "run_pair", "call_native",
           "releasing_gil", "HOLD_MICROSECONDS", "GO_DELAY_MICROSECONDS"]

#: Below this many FLOPs a problem runs inline: starting threads and limiting
#: BLAS costs about a millisecond, more than the work itself.
SMALL_WORK = 3e7

#: The same for work that calls no BLAS (nothing to limit) and can use the kept
#: helper threads: handing chunks to one costs about 16 µs of the caller's time
#: (measured, two chunks of nothing on two threads; 150 µs with BLAS limited).
SMALL_WORK_NO_BLAS = 5e6


#: The share of a product's time that does not shrink when BLAS runs it on more
#: threads itself (one product too small or too few to cut into chunks: ``1 + s·(w − 1)``
#: of the core time of ``w`` workers). Measured: one 3×3 256 -> 512 layer on 1×14²
#: (nine products of 256 rows) 6.4 ms on one thread, 5.3 on two.
BLAS_SERIAL_SHARE = 0.6


def parallel_penalty(chunks: int, workers: int | None = None, *, blas: bool = True) -> float:
    """How much more core time a job of ``chunks`` equal chunks takes on ``workers``
    threads (default :func:`worker_count`) than its one-thread time spread evenly: each
    thread takes whole chunks (``⌈chunks / workers⌉ · workers / chunks``); one chunk
    runs in the caller, with BLAS on its own threads (``blas``, see
    :data:`BLAS_SERIAL_SHARE`) or alone. The costs of the algorithms are one core's
    time: times this, they compare with others that share the work evenly.

    >>> parallel_penalty(8, 2), parallel_penalty(3, 2), parallel_penalty(1, 2)
    (1.0, 1.3333333333333333, 1.6)
    >>> parallel_penalty(1, 2, blas=False), parallel_penalty(1, 1)
    (2.0, 1.0)
    """
    workers = worker_count() if workers is None else workers
    if workers <= 1:
        return 1.0
    if chunks <= 1:
        return 1.0 + (BLAS_SERIAL_SHARE if blas else 1.0) * (workers - 1)
    return -(-chunks // workers) * workers / chunks


# A limit set by thread_limit() for the calls made in this context (thread or task).
_LIMIT: contextvars.ContextVar[int | None] = contextvars.ContextVar("convarith_threads",
                                                                   default=None)


@functools.cache  # no lock: an int, the same whoever reads it first
def _affinity_cores() -> int:
    """The cores this process may run on, read once per process (``clear_caches`` reads
    them again, e.g. after ``os.sched_setaffinity``)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def worker_count() -> int:
    """Threads to use: the cores this process may run on, at most the
    :func:`thread_limit` in force and the ``CONVARITH_NUM_THREADS`` environment variable."""
    cores = _affinity_cores()
    limit = _LIMIT.get()
    if limit is not None:
        cores = min(cores, limit)
    setting = environment("CONVARITH_NUM_THREADS").strip()
    if setting.isdigit() and int(setting) > 0:
        cores = min(cores, int(setting))
    return cores


@contextlib.contextmanager
def thread_limit(threads: int) -> Iterator[None]:
    """Run the engine's calls inside on at most ``threads`` threads (this context only).

    For callers that run several engine calls at once themselves (a Dask
    thread per core, one process per core): without it each call would also
    start one thread per core, and the cores would be oversubscribed.

    >>> with thread_limit(1):
    ...     worker_count()
    1
    """
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    token = _LIMIT.set(threads)
    try:
        yield
    finally:
        _LIMIT.reset(token)


@cached_once
def _controller() -> Any:
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    # the controller sees the BLAS libraries loaded when it is made: load SciPy's too
    with contextlib.suppress(ImportError):
        import scipy.linalg.blas  # noqa: F401
    return ThreadpoolController()


def blas_single_threaded() -> contextlib.AbstractContextManager[bool]:
    """BLAS limited to one thread inside (threadpoolctl; ``False`` where it is missing).

    >>> with blas_single_threaded() as limited:
    ...     limited in (True, False)
    True
    """
    return _blas_single_threaded()


@cached_once
def _blas_libraries() -> tuple[Any, ...] | None:
    """threadpoolctl's controllers of the BLAS libraries loaded (NumPy's and SciPy's
    OpenBLAS: two), or ``None`` without threadpoolctl."""
    controller = _controller()
    if controller is None:
        return None
    return tuple(controller.select(user_api="blas").lib_controllers)


@contextlib.contextmanager
def _blas_single_threaded() -> Iterator[bool]:
    # each library's count read and set through its own controller, as
    # ``ThreadpoolController.limit`` does, without building a limiter object: 19 µs
    # in all against 43 (two OpenBLAS libraries, a busy machine)
    libraries = _blas_libraries()
    if libraries is None:
        yield False
        return
    # (a library whose count cannot be read is left as it is)
    changed = [(library, threads) for library in libraries
               if isinstance(threads := library.get_num_threads(), int) and threads != 1]
    for library, _ in changed:
        library.set_num_threads(1)
    try:
        yield True
    finally:
        for library, threads in changed:
            library.set_num_threads(threads)


@functools.cache
def _sched_getcpu() -> Callable[[], int] | None:
    """libc's ``sched_getcpu`` (Linux), or ``None``."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        getcpu: Callable[[], int] = libc.sched_getcpu
    except (OSError, AttributeError):
        return None
    return getcpu


def _current_cpu() -> int | None:
    """The core this thread runs on now, if the platform says."""
    getcpu = _sched_getcpu()
    if getcpu is None:
        return None
    cpu = int(getcpu())
    return cpu if cpu >= 0 else None


def chunk_workers(threads: int | None, flops: float | None,
                  inline_below: float = SMALL_WORK) -> int:
    """Threads :func:`run_chunks` will use for a job of ``flops`` (given ``threads``):
    1 where it runs every chunk inline (below ``inline_below``, ``threads`` not
    given). Cut such a job into one chunk: its chunks would run one after another
    anyway, each paying its own set-up (the 3×3 stride-2 3 -> 32 stem on one 112²
    image: 8 chunks 0.20 ms, one 0.11 ms, one core).

    >>> chunk_workers(None, 1e6), chunk_workers(1, 1e9), chunk_workers(3, 1e6)
    (1, 1, 3)
    """
    if threads is None and flops is not None and flops < inline_below:
        return 1
    return threads if threads is not None else worker_count()


def run_chunks(
    work: Callable[[int, int], Any],
    total: int,
    chunk: int,
    *,
    threads: int | None = None,
    flops: float | None = None,
    blas: bool = True,
    inline_below: float = SMALL_WORK,
) -> list[Any]:
    """Call ``work(start, stop)`` over ``[0, total)`` in chunks; return the results in order.

    Parameters
    ----------
    work
        Must only write to disjoint places for disjoint ranges.
    total, chunk
        Range length and chunk length.
    threads
        Worker threads (default: one per core); 1 runs in this thread. With
        several chunks BLAS runs single-threaded inside them.
    flops
        Size of the whole job; below ``inline_below`` (and with ``threads``
        not given) every chunk runs inline, untouched (no threads, no BLAS
        limits).
    blas
        Whether ``work`` calls BLAS; if not, its thread count is left alone
        (limiting and restoring it costs about 15 µs).
    inline_below
        :data:`SMALL_WORK`, or :data:`SMALL_WORK_NO_BLAS` for work that calls no
        BLAS and whose time per FLOP is known to be small enough.
    """
    chunk = max(1, int(chunk))
    ranges = [(start, min(total, start + chunk)) for start in range(0, total, chunk)]
    workers = min(len(ranges), threads if threads is not None else worker_count())
    if len(ranges) == 1 or (threads is None and flops is not None and flops < inline_below):
        return [work(start, stop) for start, stop in ranges]
    limit = _blas_single_threaded() if blas else contextlib.nullcontext(True)
    with limit as limited:
        if workers <= 1 or not limited:
            return [work(start, stop) for start, stop in ranges]
        # each thread (this one too) takes the next range until none is left:
        # one task per thread, not one per range (each hand-over costs the GIL)
        results: list[Any] = [None] * len(ranges)
        todo = iter(enumerate(ranges))

        def drain() -> None:
            for index, (start, stop) in todo:
                results[index] = work(start, stop)

        caller_cpu = _current_cpu()
        # the caller's cores (a kept helper's own mask is the last call's choice)
        allowed = os.sched_getaffinity(0) if caller_cpu is not None else set()
        # NumPy's error handling is per thread: the helpers take the caller's (an
        # engine call that ignores overflow on huge values ignores it in every chunk)
        errors = np.geterr()

        def helper_drain() -> None:
            # a new thread often starts on the caller's core after an idle moment
            # (the scheduler's wake-up affinity), and the two then share one core:
            # keep helpers off the core the caller is running on
            if caller_cpu is not None:
                with contextlib.suppress(OSError):  # a restricted cpuset: leave it
                    others = allowed - {caller_cpu}
                    if others:
                        os.sched_setaffinity(0, others)
            with np.errstate(**errors):
                drain()

        if getattr(_IN_HELPER, "active", False):
            # chunks inside a chunk: the helpers are busy with the outer call
            drain()
            return results
        pool = _POOL.get()
        helpers = []
        # spinning helpers are held until this thread's chunk lets go of the GIL (see
        # run_pair): one that asks for it sooner sleeps, and wakes ~0.1 ms late
        held = pool.can_hold()
        with contextlib.suppress(RuntimeError):  # the pool let go meanwhile: drain alone
            for _ in range(workers - 1):
                helpers.append(pool.submit_held(functools.partial(_as_helper, helper_drain),
                                                HOLD_MICROSECONDS) if held else
                               pool.submit(_as_helper, helper_drain))
        if held:
            _OWED.pool = pool
        try:
            drain()
        finally:
            _OWED.pool = None
        for helper in helpers:
            # a helper still queued (the pool busy with another caller's chunks) has
            # nothing left to do: drop it rather than wait for it
            if not helper.cancel():
                helper.result()
        return results


def native_workers(threads: int | None, flops: float | None,
                   inline_below: float = SMALL_WORK) -> int:
    """The threads :func:`run_native_jobs` would share a job among (before counting its
    chunks): 1 where it runs inline (below ``inline_below`` with ``threads`` not
    given, or inside a helper), else ``threads`` or :func:`worker_count`.

    >>> native_workers(None, 1e3), native_workers(1, 1e9), native_workers(3, 1e3)
    (1, 1, 3)
    """
    if (threads is None and flops is not None and flops < inline_below) or getattr(
            _IN_HELPER, "active", False):
        return 1
    return threads if threads is not None else worker_count()


def run_native_jobs(
    runner: Any,
    rows: np.ndarray,
    jobs: list[tuple[int, int]],
    *,
    threads: int | None = None,
    flops: float | None = None,
    inline_below: float = SMALL_WORK,
) -> None:
    """Run jobs of compiled calls (:mod:`._native_jobs`): job ``i`` is
    ``runner.drive(table, *jobs[i])`` on the int64 ``rows``, every job on this thread
    and the helpers with the GIL released (:meth:`._spin.SpinningPool.run_native`),
    as :func:`run_chunks` would share them (``threads``, ``flops``, ``inline_below``).
    Where the pool cannot take them (no spinner, another caller using it, inside a
    helper) they run here one after another, in one call.

    >>> from convarith.engine.algorithms import _native_jobs
    >>> runner = _native_jobs.rows_runner(0, 0)
    >>> run_native_jobs(runner, np.zeros((0, 1), np.int64), []) if runner else None
    """
    rows = np.ascontiguousarray(rows, np.int64)
    if not len(rows):
        return
    spans = np.ascontiguousarray(np.asarray(jobs, np.int64).reshape(-1, 2))
    run_native_table(runner, rows.ctypes.data, len(rows), spans.ctypes.data, len(spans),
                     native_workers(threads, flops, inline_below))


def run_native_table(runner: Any, table: int, rows: int, jobs: int, count: int,
                     workers: int) -> None:
    """:func:`run_native_jobs` for a caller that holds the addresses already (an array's
    ``.ctypes.data`` costs about a microsecond): the table's (``rows`` rows) and the
    jobs' (``count`` pairs), shared among at most ``workers`` threads (one inside a
    helper), or run here in one call.

    >>> from convarith.engine.algorithms import _native_jobs
    >>> runner = _native_jobs.rows_runner(0, 0)
    >>> run_native_table(runner, 0, 0, 0, 0, 2) if runner else None
    """
    if not rows:
        return
    workers = min(count, workers)
    if workers > 1 and not getattr(_IN_HELPER, "active", False):
        pool = _POOL.get()
        caller_cpu = _current_cpu()
        if caller_cpu is not None and pool.keep_off_due(caller_cpu):
            # the caller's cores (a kept helper's own mask is the last call's choice)
            pool.keep_off(caller_cpu, os.sched_getaffinity(0))
        with contextlib.suppress(RuntimeError):  # the pool let go meanwhile: run here
            if pool.run_native(runner.address, table, jobs, count, workers - 1) is not None:
                return
    call_native(runner.drive, runner.address, table, 0, rows)


# Marks the helper threads (nested calls run inline there).
_IN_HELPER = threading.local()

# The pool whose held helper this thread owes a go (:func:`run_pair`), if any.
_OWED = threading.local()

#: How long (µs) a helper handed the second job of :func:`run_pair` waits, spinning,
#: for the caller's first compiled call before it goes for the GIL anyway. A job
#: whose compiled work does not go through :func:`call_native` (BLAS through NumPy)
#: sends no go; by then the caller has usually let go of the GIL for it.
HOLD_MICROSECONDS = 40.0


#: How long (µs) after :func:`releasing_gil` a held helper goes for the GIL: the caller's
#: call (a NumPy product) has let go of it by then.
GO_DELAY_MICROSECONDS = 8.0


def releasing_gil() -> None:
    """Called just before a call that lets go of the GIL by itself (NumPy's BLAS
    products): where this thread runs the first job of :func:`run_pair` and has not
    told the helper yet, the helper may go for the GIL :data:`GO_DELAY_MICROSECONDS`
    from now."""
    pool = getattr(_OWED, "pool", None)
    if pool is not None:
        _OWED.pool = None
        pool.go_soon(GO_DELAY_MICROSECONDS)


def call_native(function: Callable[..., Any], address: int, *arguments: int) -> None:
    """``function(*arguments)``: a compiled function (at ``address``) of at most seven
    int64 or pointer arguments, called from Python. Where this thread runs the first
    job of :func:`run_pair`, its first such call tells the held helper, from
    compiled code once the GIL is let go, that it may take the GIL now."""
    pool = getattr(_OWED, "pool", None)
    if pool is None:
        function(*arguments)
        return
    _OWED.pool = None
    pool.signal_call(address, arguments)


def run_pair(first: Callable[[], Any], second: Callable[[], Any]) -> tuple[Any, Any]:
    """``(first(), second())``: ``first`` on this thread, ``second`` on a helper at once.

    A helper handed a job while the caller holds the GIL sleeps until the caller lets
    go of it, and on a virtual machine a thread that slept runs again ~0.1 ms later
    (a quarter of a batch-1 backward pass). So the helper spins on until this thread's
    first compiled call through :func:`call_native` (which lets go of the GIL first),
    or for :data:`HOLD_MICROSECONDS`, before it takes the GIL. Where the pool cannot
    hold a helper (no spinner, spinning off, inside a helper) this is
    :func:`run_chunks` with two threads. Each job's error is raised here, after both
    have ended.
    """
    jobs = (first, second)

    def outcome(index: int) -> tuple[Any, BaseException | None]:
        try:
            return jobs[index](), None
        except BaseException as error:  # noqa: BLE001 - raised once both have ended
            return None, error

    pool = _POOL.get() if not getattr(_IN_HELPER, "active", False) else None
    if pool is None or not pool.can_hold():
        done = run_chunks(lambda start, stop: outcome(start), 2, 1, threads=2, blas=False)
        return _both(done[0], done[1])
    caller_cpu = _current_cpu()
    if caller_cpu is not None and pool.keep_off_due(caller_cpu):
        pool.keep_off(caller_cpu, os.sched_getaffinity(0))
    errors = np.geterr()

    def helper() -> tuple[Any, BaseException | None]:
        with np.errstate(**errors):
            return outcome(1)

    try:
        task = pool.submit_held(functools.partial(_as_helper, helper), HOLD_MICROSECONDS)
    except RuntimeError:  # the pool let go meanwhile
        return _both(outcome(0), outcome(1))
    _OWED.pool = pool
    try:
        mine = outcome(0)
    finally:
        _OWED.pool = None
    # a helper that has not taken the job yet (it is still held, or busy elsewhere)
    # leaves it to this thread
    return _both(mine, outcome(1) if task.cancel() else task.result())


def _both(first: tuple[Any, BaseException | None], second: tuple[Any, BaseException | None]
          ) -> tuple[Any, Any]:
    """Two jobs' ``(value, error)`` as their values, or the first error raised."""
    for _, error in (first, second):
        if error is not None:
            raise error
    return first[0], second[0]


def _as_helper(fn: Callable[[], Any]) -> Any:
    _IN_HELPER.active = True
    try:
        return fn()
    finally:
        _IN_HELPER.active = False


class _HelperPool:
    """The process's one pool of helper threads, kept between calls (starting a thread
    costs about 0.15 ms): one thread per core but the caller's, started with the pool,
    shared by every chunk count and calling thread; idle threads spin a moment before
    they sleep (:mod:`._spin`). Made again in a forked child, which has none of its
    parent's threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: SpinningPool | None = None
        self._pid = -1

    def get(self) -> SpinningPool:
        pid = os.getpid()
        pool = self._pool
        if pool is not None and self._pid == pid:
            return pool
        with self._lock:
            if self._pool is None or self._pid != pid:
                self._pool = SpinningPool(max(1, (os.cpu_count() or 1) - 1), "convarith")
                self._pid = pid
            return self._pool

    def clear(self) -> None:
        """Let the threads end (they finish the work they hold); the next call starts anew."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.shutdown()


_POOL = _HelperPool()


def clear_workspaces() -> None:
    """Drop the calling thread's kept scratch arrays (other threads keep theirs until
    they end; each is at most :data:`WORKSPACE_KEEP_BYTES` per name)."""
    _SCRATCH.__dict__.clear()


# Each thread's scratch arrays, kept between calls (see workspace).
_SCRATCH = threading.local()

#: Scratch arrays above this size are not kept (made fresh each call).
WORKSPACE_KEEP_BYTES = 8 << 20


def workspace(name: str, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised array for this thread's use until its next call with ``name``.

    Chunk buffers of a few MiB are made and dropped at every chunk; the
    allocator returns blocks that size to the system, so each chunk paid for
    fresh pages (measured: Winograd L9, 4.7 ms on one core instead of 2.9 for
    its parts). Keeping one buffer per name and thread (up to
    :data:`WORKSPACE_KEEP_BYTES`) avoids that.

    >>> a = workspace("doc", (2, 3), np.float32)
    >>> b = workspace("doc", (3, 2), np.float32)
    >>> a.shape, b.shape, np.shares_memory(a, b)
    ((2, 3), (3, 2), True)
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    if size * dtype.itemsize > WORKSPACE_KEEP_BYTES:
        return aligned_empty(shape, dtype)
    kept: dict[str, np.ndarray] | None = getattr(_SCRATCH, "arrays", None)
    if kept is None:
        kept = _SCRATCH.arrays = {}
    buffer = kept.get(name)
    if buffer is None or buffer.dtype != dtype or buffer.size < size:
        buffer = kept[name] = aligned_empty((max(size, 1),), dtype)
    return buffer[:size].reshape(shape)


#: Alignment of :func:`aligned_empty` (and :func:`workspace`): a 64-byte vector
#: load that straddles two cache lines costs two (the compiled kernels of
#: :mod:`.register_tiles` measured 189 against 208 GFLOP/s).
ALIGN = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array starting on an :data:`ALIGN`-byte boundary.

    >>> aligned_empty((3, 5), np.float32).ctypes.data % ALIGN
    0
    """
    dtype = np.dtype(dtype)
    size = math.prod(shape) * dtype.itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start:start + size].view(dtype).reshape(shape)


def aligned_copy(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``a`` on an :data:`ALIGN`-byte boundary."""
    copy = aligned_empty(a.shape, a.dtype)
    copy[...] = a
    return copy
