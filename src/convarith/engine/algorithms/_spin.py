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

A spinning helper also watches the pool's *native batch slot*: jobs of compiled
calls that :meth:`SpinningPool.run_native` publishes (a runner's address, a table,
``(first row, rows)`` per job, and one 64-bit counter packing the batch's epoch,
its job count and the next job). A helper claims a job with one atomic add on the
counter (the value it gets back says whether that job exists in that batch, whose
fields stay put until every job is finished), runs it, counts it finished, and
spins on (its budget starts again); it goes back to Python only for a submitted
task or once the budget is spent. No thread needs the GIL to start or end such a
batch, so a helper joins as soon as it is published, not once the caller lets go
of the GIL (a Python chunk handed to a helper on a virtual machine started ~0.1 ms
late). While every helper spins, one compiled call (``publish``) stores a batch's fields
and runs it: a two-job batch of empty calls took 4.4 µs from Python, against 5.7 with
the fields stored one by one through ctypes and the caller's cores read at every call
(:meth:`SpinningPool.keep_off_due`). Helpers asleep past the budget are woken with a task that joins late. The
caller, its own jobs done, spins for the budget until the last one is finished,
then naps 20 µs at a time.

A Python task handed to a spinning helper while the caller holds the GIL makes the
helper sleep on the GIL until the caller lets go of it (and then wake ~0.1 ms late on a
virtual machine). :meth:`SpinningPool.submit_held` hands one over held: the helper
that sees it spins on until the caller says, from compiled code, that it has let go
of the GIL (:meth:`SpinningPool.signal_call`: a go counter bumped, then the caller's
compiled call), or until a time stamp the caller sets just before a call that lets
go of the GIL by itself (:meth:`SpinningPool.go_soon`, NumPy's BLAS products), or,
failing both, for the hold asked; only then does it go back to Python, and finds
the GIL free. :func:`._threads.run_pair` runs a batch-1 backward pass's two
gradients this way.

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
import contextlib
import ctypes
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from ..state import cached_once, environment

__all__ = ["SpinningPool", "SPIN_MICROSECONDS", "spin_microseconds", "spinner", "MAX_NATIVE_JOBS"]

#: Most jobs one native batch may hold (the claim counter's 20-bit fields, with room for
#: the claims past the end, one per thread at most).
MAX_NATIVE_JOBS = 1 << 19

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

; a native batch slot (int64): [0] the claim counter (epoch << 40 | count << 20 | next),
; [1] the runner's address, runner(table, first row, rows), [2] the table's address,
; [3] the address of the jobs (first row, rows), [4] helpers allowed to join,
; [5] helpers that asked to join (tickets), [8] jobs finished; [9], [10] and [11] are
; serve's hold (ticks), go counter and go time stamp (see serve)
define internal i64 @claim_one(i64* %slot) {
entry:
  %seen = load atomic i64, i64* %slot acquire, align 8
  %seen_next = and i64 %seen, 1048575
  %seen_shift = lshr i64 %seen, 20
  %seen_count = and i64 %seen_shift, 1048575
  %open = icmp ult i64 %seen_next, %seen_count
  br i1 %open, label %claim, label %none
claim:
  %old = atomicrmw add i64* %slot, i64 1 acq_rel
  %next = and i64 %old, 1048575
  %shift = lshr i64 %old, 20
  %count = and i64 %shift, 1048575
  %mine = icmp ult i64 %next, %count
  br i1 %mine, label %run, label %none
run:
  %runner_at = getelementptr i64, i64* %slot, i64 1
  %runner_value = load i64, i64* %runner_at, align 8
  %runner = inttoptr i64 %runner_value to void (i64*, i64, i64)*
  %table_at = getelementptr i64, i64* %slot, i64 2
  %table_value = load i64, i64* %table_at, align 8
  %table = inttoptr i64 %table_value to i64*
  %jobs_at = getelementptr i64, i64* %slot, i64 3
  %jobs_value = load i64, i64* %jobs_at, align 8
  %jobs = inttoptr i64 %jobs_value to i64*
  %pair = mul i64 %next, 2
  %first_at = getelementptr i64, i64* %jobs, i64 %pair
  %first = load i64, i64* %first_at, align 8
  %pair1 = add i64 %pair, 1
  %rows_at = getelementptr i64, i64* %jobs, i64 %pair1
  %rows = load i64, i64* %rows_at, align 8
  call void %runner(i64* %table, i64 %first, i64 %rows)
  %finished = getelementptr i64, i64* %slot, i64 8
  %ignored = atomicrmw add i64* %finished, i64 1 release
  ret i64 1
none:
  ret i64 0
}

define i64 @drain(i64* %slot) {
entry:
  br label %loop
loop:
  %jobs = phi i64 [0, %entry], [%jobs1, %loop]
  %ran = call i64 @claim_one(i64* %slot)
  %jobs1 = add i64 %jobs, %ran
  %more = icmp ne i64 %ran, 0
  br i1 %more, label %loop, label %done
done:
  ret i64 %jobs
}

define i64 @work(i64* %slot, i64 %counter, i64 %count, i32 ()* %yield, i64 %budget,
                 i32 (i32)* %nap) {
entry:
  store atomic i64 %counter, i64* %slot release, align 8
  %mine = call i64 @drain(i64* %slot)
  %finished = getelementptr i64, i64* %slot, i64 8
  %start = call i64 @llvm.readcyclecounter()
  br label %check
check:
  %done_jobs = load atomic i64, i64* %finished acquire, align 8
  %all = icmp uge i64 %done_jobs, %count
  br i1 %all, label %done, label %wait
wait:
  ; spin for the budget, then nap (a helper's job may last long)
  %now = call i64 @llvm.readcyclecounter()
  %spent = sub i64 %now, %start
  %over = icmp uge i64 %spent, %budget
  br i1 %over, label %sleep, label %spin
spin:
  call void @llvm.x86.sse2.pause()
  %ignored = call i32 %yield()
  br label %check
sleep:
  %slept = call i32 %nap(i32 20)
  br label %check
done:
  ret i64 %mine
}

; work, with the batch's fields stored first: the runner [1], the table [2], the jobs [3],
; the helpers allowed [4]; tickets [5] and jobs finished [8] back to 0 (one call from
; Python for what took six stores through ctypes and a call)
define i64 @publish(i64* %slot, i64 %runner, i64 %table, i64 %jobs, i64 %helpers,
                    i64 %counter, i64 %count, i32 ()* %yield, i64 %budget, i32 (i32)* %nap) {
entry:
  %runner_at = getelementptr i64, i64* %slot, i64 1
  store i64 %runner, i64* %runner_at, align 8
  %table_at = getelementptr i64, i64* %slot, i64 2
  store i64 %table, i64* %table_at, align 8
  %jobs_at = getelementptr i64, i64* %slot, i64 3
  store i64 %jobs, i64* %jobs_at, align 8
  %allowed_at = getelementptr i64, i64* %slot, i64 4
  store i64 %helpers, i64* %allowed_at, align 8
  %tickets_at = getelementptr i64, i64* %slot, i64 5
  store i64 0, i64* %tickets_at, align 8
  %finished_at = getelementptr i64, i64* %slot, i64 8
  store i64 0, i64* %finished_at, align 8
  %mine = call i64 @work(i64* %slot, i64 %counter, i64 %count, i32 ()* %yield,
                         i64 %budget, i32 (i32)* %nap)
  ret i64 %mine
}

define i64 @join(i64* %slot) {
entry:
  %tickets = getelementptr i64, i64* %slot, i64 5
  %ticket = atomicrmw add i64* %tickets, i64 1 acq_rel
  %allowed_at = getelementptr i64, i64* %slot, i64 4
  %allowed = load atomic i64, i64* %allowed_at acquire, align 8
  %in = icmp ult i64 %ticket, %allowed
  br i1 %in, label %run, label %out
run:
  %jobs = call i64 @drain(i64* %slot)
  ret i64 1
out:
  ret i64 0
}

define i32 @serve(i32* %word, i32 %old, i64 %budget, i32 ()* %yield, i64* %slot) {
entry:
  %since = alloca i64, align 8
  %refused = alloca i64, align 8
  %last_epoch = alloca i64, align 8
  %start = call i64 @llvm.readcyclecounter()
  store i64 %start, i64* %since, align 8
  store i64 -1, i64* %refused, align 8
  %first_seen = load atomic i64, i64* %slot acquire, align 8
  %first_epoch = lshr i64 %first_seen, 40
  store i64 %first_epoch, i64* %last_epoch, align 8
  %first_go_at = getelementptr i64, i64* %slot, i64 10
  %first_go = load atomic i64, i64* %first_go_at acquire, align 8
  br label %check
check:
  %value = load atomic i32, i32* %word acquire, align 4
  %changed = icmp ne i32 %value, %old
  br i1 %changed, label %hold, label %look
hold:
  ; a task that asked to be held [9] (ticks): wait that long before going back to Python
  ; (where this thread takes the GIL, sleeping if the caller still holds it), or until a
  ; go [10] past the one seen at the start: the caller has let go of the GIL
  %held_at = getelementptr i64, i64* %slot, i64 9
  %held = load atomic i64, i64* %held_at acquire, align 8
  %go_at = getelementptr i64, i64* %slot, i64 10
  %hold_start = call i64 @llvm.readcyclecounter()
  br label %holding
holding:
  %go_now = load atomic i64, i64* %go_at acquire, align 8
  %went = icmp ne i64 %go_now, %first_go
  br i1 %went, label %done, label %hold_time
hold_time:
  %hold_now = call i64 @llvm.readcyclecounter()
  %hold_spent = sub i64 %hold_now, %hold_start
  %hold_over = icmp uge i64 %hold_spent, %held
  br i1 %hold_over, label %done, label %hold_soon
hold_soon:
  ; a go at a time stamp [11] (0: none): the caller is about to let go of the GIL
  %soon_at = getelementptr i64, i64* %slot, i64 11
  %soon = load atomic i64, i64* %soon_at acquire, align 8
  %soon_set = icmp ne i64 %soon, 0
  %soon_past = icmp uge i64 %hold_now, %soon
  %soon_due = and i1 %soon_set, %soon_past
  br i1 %soon_due, label %done, label %hold_pause
hold_pause:
  call void @llvm.x86.sse2.pause()
  br label %holding
look:
  %seen = load atomic i64, i64* %slot acquire, align 8
  ; a new batch starts the budget again (joined or not, the caller is busy now)
  %seen_epoch = lshr i64 %seen, 40
  %known_epoch = load i64, i64* %last_epoch, align 8
  %new_batch = icmp ne i64 %seen_epoch, %known_epoch
  br i1 %new_batch, label %renew, label %status
renew:
  store i64 %seen_epoch, i64* %last_epoch, align 8
  %renewed = call i64 @llvm.readcyclecounter()
  store i64 %renewed, i64* %since, align 8
  br label %status
status:
  %seen_next = and i64 %seen, 1048575
  %seen_shift = lshr i64 %seen, 20
  %seen_count = and i64 %seen_shift, 1048575
  %open = icmp ult i64 %seen_next, %seen_count
  br i1 %open, label %fresh, label %wait
fresh:
  %epoch = lshr i64 %seen, 40
  %was_refused = load i64, i64* %refused, align 8
  %again = icmp eq i64 %epoch, %was_refused
  br i1 %again, label %wait, label %try
try:
  %joined = call i64 @join(i64* %slot)
  %worked = icmp ne i64 %joined, 0
  br i1 %worked, label %ran, label %refuse
refuse:
  store i64 %epoch, i64* %refused, align 8
  br label %wait
ran:
  %restart = call i64 @llvm.readcyclecounter()
  store i64 %restart, i64* %since, align 8
  br label %check
wait:
  call void @llvm.x86.sse2.pause()
  %ignored = call i32 %yield()
  %now = call i64 @llvm.readcyclecounter()
  %from = load i64, i64* %since, align 8
  %spent = sub i64 %now, %from
  %over = icmp uge i64 %spent, %budget
  br i1 %over, label %done, label %check
done:
  %last = load atomic i32, i32* %word acquire, align 4
  ret i32 %last
}

; go [10] (a held helper may take the GIL now: this thread let go of it to run this
; call), then function(a0 ... a6)
define void @signal_call(i64* %slot, i64 %function, i64 %a0, i64 %a1, i64 %a2, i64 %a3,
                         i64 %a4, i64 %a5, i64 %a6) {
entry:
  %go_at = getelementptr i64, i64* %slot, i64 10
  %ignored = atomicrmw add i64* %go_at, i64 1 release
  %fn = inttoptr i64 %function to void (i64, i64, i64, i64, i64, i64, i64)*
  call void %fn(i64 %a0, i64 %a1, i64 %a2, i64 %a3, i64 %a4, i64 %a5, i64 %a6)
  ret void
}
"""


def spin_microseconds() -> int:
    """The spin budget: ``CONVARITH_SPIN_US`` if it is a whole number, else
    :data:`SPIN_MICROSECONDS`.

    >>> isinstance(spin_microseconds(), int)
    True
    """
    setting = environment(_SPIN_VARIABLE).strip()
    if setting.isdigit():
        return int(setting)
    return SPIN_MICROSECONDS


class _Spinner:
    """``wait(address, old, microseconds)``: spin (GIL released) until the int32 at
    ``address`` differs from ``old`` or the time is up; returns the word's value."""

    def __init__(self, spin: Any, ticks_per_microsecond: float, engine: Any,
                 yield_address: int, nap_address: int) -> None:
        self._spin = spin
        self._now = ctypes.CFUNCTYPE(ctypes.c_int64)(engine.get_function_address("ticks"))
        self._per_microsecond = ticks_per_microsecond
        self._engine = engine  # owns the code
        self._yield = yield_address
        self._nap = nap_address  # libc's usleep
        pointer, i64 = ctypes.c_void_p, ctypes.c_int64
        self._serve = ctypes.CFUNCTYPE(ctypes.c_int32, pointer, ctypes.c_int32, i64, pointer,
                                       pointer)(engine.get_function_address("serve"))
        self._work = ctypes.CFUNCTYPE(i64, pointer, i64, i64, pointer, i64, pointer)(
            engine.get_function_address("work"))
        self._publish = ctypes.CFUNCTYPE(i64, pointer, i64, i64, i64, i64, i64, i64, pointer,
                                         i64, pointer)(engine.get_function_address("publish"))
        self._budgets: tuple[float, int] = (-1.0, 0)  # (microseconds, ticks) last asked
        #: ``join(slot)``: run the jobs of a native batch slot until none is left, if
        #: the slot allows one more helper
        self.join = ctypes.CFUNCTYPE(i64, pointer)(engine.get_function_address("join"))
        #: ``signal_call(slot, function, a0 … a6)``: the slot's go, then a compiled
        #: ``void function(a0 … a6)`` (int64 or pointer arguments; unused ones ignored)
        self.signal_call = ctypes.CFUNCTYPE(None, pointer, *([i64] * 8))(
            engine.get_function_address("signal_call"))

    def wait(self, address: int, old: int, microseconds: float) -> int:
        return int(self._spin(address, old, int(microseconds * self._per_microsecond),
                              self._yield))

    def serve(self, address: int, old: int, microseconds: float, slot: int) -> int:
        """:meth:`wait`, running meanwhile the jobs published in the native batch ``slot``
        (the budget starts again after each); returns the word's value."""
        return int(self._serve(address, old, int(microseconds * self._per_microsecond),
                               self._yield, slot))

    def now(self) -> int:
        """The time-stamp counter now."""
        return int(self._now())

    def ticks(self, microseconds: float) -> int:
        """Time-stamp counter ticks in ``microseconds``."""
        return int(microseconds * self._per_microsecond)

    def _ticks(self, microseconds: float) -> int:
        microseconds_seen, ticks = self._budgets
        if microseconds_seen != microseconds:
            ticks = int(microseconds * self._per_microsecond)
            self._budgets = (microseconds, ticks)
        return ticks

    def publish(self, slot: int, runner: int, table: int, jobs: int, helpers: int,
                counter: int, count: int, microseconds: float) -> int:
        """:meth:`work`, storing first the batch's runner, table, jobs and helpers
        allowed in ``slot`` (and its tickets and finished jobs back to 0), all in one
        compiled call."""
        return int(self._publish(slot, runner, table, jobs, helpers, counter, count,
                                 self._yield, self._ticks(microseconds), self._nap))

    def work(self, slot: int, counter: int, count: int, microseconds: float) -> int:
        """Publish ``counter`` in ``slot``, run its jobs with the others, wait for all
        ``count`` of them to be finished (spinning ``microseconds``, yielding the core,
        then napping 20 µs at a time); how many this thread ran."""
        return int(self._work(slot, counter, count, self._yield, self._ticks(microseconds),
                              self._nap))


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
        libc = ctypes.CDLL(None)
        yield_address = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
        nap_address = ctypes.cast(libc.usleep, ctypes.c_void_p).value
    except (OSError, AttributeError):  # pragma: no cover - a libc without them
        return None
    if not yield_address or not nap_address:  # pragma: no cover
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
    return _Spinner(spin, per_microsecond, engine, yield_address, nap_address)


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
        # the native batch slot (see the IR) and the one caller that may fill it
        self._slot = (ctypes.c_int64 * 16)()
        self._slot_address = ctypes.addressof(self._slot)
        self._native = threading.Lock()
        self._epoch = 0
        self._kept_on: frozenset[int] = frozenset()  # the cores keep_off last set
        self._kept_cpu = -1  # the caller's core keep_off last saw
        self._keep_calls = 0
        self._threads = [threading.Thread(target=self._serve, name=f"{name}_{index}",
                                          daemon=True) for index in range(max(1, threads))]
        for thread in self._threads:
            thread.start()

    def submit(self, call: Callable[..., Any], *arguments: Any) -> Task:
        """Queue ``call(*arguments)``; a ``RuntimeError`` once the pool is shut down."""
        return self._submit((lambda: call(*arguments)) if arguments else call, 0)

    def submit_held(self, call: Callable[[], Any], microseconds: float) -> Task:
        """:meth:`submit` ``call``, a spinning helper that takes it holding back for up
        to ``microseconds`` before it goes for the GIL, or until a call through
        :meth:`signal_call` (the caller, in compiled code, has let go of the GIL).

        Why: a helper that asks for the GIL while the caller holds it sleeps until
        the caller lets go, and on a virtual machine a thread that slept runs again
        only ~0.1 ms later; one that asks once the GIL is free takes it at once.
        """
        wait = self._spinner
        ticks = wait.ticks(microseconds) if wait is not None else 0
        return self._submit(call, ticks)

    def can_hold(self) -> bool:
        """Whether :meth:`submit_held` can hold a helper back: a compiled spinner,
        spinning on, and every helper spinning now (a sleeping one is woken as usual)."""
        return (self._spinner is not None and spin_microseconds() > 0 and not self._sleeping
                and not self._closed)

    def signal_call(self, function: int, arguments: tuple[int, ...]) -> None:
        """``function(*arguments)`` (a compiled function's address, at most seven int64
        or pointer arguments) on this thread, a held helper (:meth:`submit_held`) told
        first, from compiled code, that it may go for the GIL."""
        wait = self._spinner
        assert wait is not None and len(arguments) <= 7
        wait.signal_call(self._slot_address, function, *arguments,
                         *([0] * (7 - len(arguments))))

    def go_soon(self, microseconds: float) -> None:
        """Let a held helper (:meth:`submit_held`) go for the GIL ``microseconds`` from
        now: the caller is about to let go of it in a call of its own (NumPy's BLAS)."""
        wait = self._spinner
        if wait is not None:
            self._slot[11] = wait.now() + wait.ticks(microseconds)

    def _submit(self, call: Callable[[], Any], hold: int) -> Task:
        task = Task(call, self)
        with self._lock:
            if self._closed:
                raise RuntimeError("the pool is shut down")
            self._slot[9] = hold
            self._slot[11] = 0
            self._queue.append(task)
            self._generation = (self._generation + 1) & 0x7FFFFFFF
            self._word.value = self._generation
            if self._sleeping:
                self._wake.notify()
        return task

    def run_native(self, runner: int, table: int, jobs: int, count: int,
                   helpers: int) -> int | None:
        """Run ``count`` jobs of compiled calls on this thread and the helpers, the GIL
        released throughout: job ``i`` is ``runner(table, jobs[2i], jobs[2i + 1])``
        (``runner`` a compiled ``void (i64* table, i64 first, i64 rows)``'s address,
        ``table`` and ``jobs`` int64 arrays' addresses, kept alive by the caller until
        this returns). At most ``helpers`` helpers join: spinning ones at once, sleeping
        ones woken with a task that joins; jobs run in any order, on any thread. ``False`` (nothing run)
        where the pool cannot: no spinner, spinning turned off, another caller using
        it, too many jobs, the pool shut down); else how many jobs this thread ran
        (the helpers ran the others).

        >>> pool = SpinningPool(1)
        >>> pool.run_native(0, 0, 0, 0, 1) in (0, None)
        True
        >>> pool.shutdown()
        """
        wait = self._spinner
        budget = spin_microseconds()
        if (wait is None or budget <= 0 or not 0 <= count <= MAX_NATIVE_JOBS
                or self._closed):
            return None
        if count == 0:
            return 0
        if not self._native.acquire(blocking=False):
            return None
        try:
            if not self._sleeping:
                # every helper spins: one compiled call stores the batch and runs it
                self._epoch = (self._epoch + 1) & 0x7FFFFF
                return wait.publish(self._slot_address, runner, table, jobs, max(0, helpers),
                                    (self._epoch << 40) | (count << 20), count, budget)
            slot = self._slot
            slot[1], slot[2], slot[3], slot[8] = runner, table, jobs, 0
            slot[4], slot[5] = max(0, helpers), 0
            self._epoch = (self._epoch + 1) & 0x7FFFFF
            address = ctypes.addressof(slot)
            for _ in range(min(self._sleeping, helpers)):
                # past its spin budget a helper sleeps on the condition: a task wakes it
                # (it joins late, or finds nothing left)
                with contextlib.suppress(RuntimeError):
                    self.submit(wait.join, address)
            return wait.work(address, (self._epoch << 40) | (count << 20), count, budget)
        finally:
            self._native.release()

    def keep_off_due(self, cpu: int) -> bool:
        """Whether a caller on core ``cpu`` should call :meth:`keep_off` (reading the
        process's cores costs ~0.5 µs, the whole check ~1.5): when the caller's core
        is not the last one told, and at every 256th call in any case (the cores
        allowed may have changed)."""
        self._keep_calls = calls = (self._keep_calls + 1) & 255
        return cpu != self._kept_cpu or not calls

    def keep_off(self, cpu: int, allowed: set[int]) -> None:
        """Keep the threads on the cores ``allowed`` but ``cpu`` (the caller's: a helper
        woken after an idle moment often lands on its core, and both then share it);
        nothing if that is what they were last told, or no other core is allowed."""
        self._kept_cpu = cpu
        others = frozenset(allowed - {cpu})
        if not others or others == self._kept_on:
            return
        self._kept_on = others
        for thread in self._threads:
            with contextlib.suppress(OSError, AttributeError, TypeError):
                os.sched_setaffinity(thread.native_id or 0, others)

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
            if wait is not None and budget > 0 and wait.serve(
                    address, generation, budget, ctypes.addressof(self._slot)) != generation:
                continue  # work came while spinning
            with self._lock:
                while not self._queue and not self._closed:
                    self._sleeping += 1
                    try:
                        self._wake.wait()
                    finally:
                        self._sleeping -= 1
