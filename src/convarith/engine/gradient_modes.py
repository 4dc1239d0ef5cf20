"""How a backward pass runs its two gradients, chosen by timing its own first calls.

:func:`.core.conv_vjp` computes the input gradient and the kernel gradient, two
independent jobs. With two or more workers it can run them in three ways:

``"pair"``
    side by side, one thread each (the calling thread takes the kernel gradient, a
    helper the input gradient);
``"pair_swapped"``
    side by side, the calling thread taking the input gradient and a helper the kernel
    gradient;
``"one"``
    one after the other on the calling thread alone;
``"all"``
    one after the other, each shared among every worker.

Which is fastest depends on how long the two jobs are, on how much of each is
Python (a helper running a Python job needs the GIL the caller holds between its
compiled calls) and on how soon the machine runs a woken thread: on a 2-core
virtual machine ResNeXt-50's 3×3 g32 layers at batch 1 took 0.61-0.66× the time
one after the other on one thread that they took side by side, while VGG-16's 3×3
64 on one 112² image took 1.9× (the networks suite's layers, two threads against
one, alternating processes, 2026-12-07). Cost constants fitted on one machine on
one day chose wrongly on the same machine on another (the pair had gained 4-14% on
those ResNeXt layers a day earlier).

A helper starts its job after the caller's: it needs the GIL, which the caller holds
until its own job reaches compiled code. A helper that asked for it meanwhile slept,
and on a virtual machine a thread that slept runs again only ~0.1 ms later (ResNet-50's
3×3 128 on one 14² image: the caller's job started 0.04 ms into the pair, the
helper's 0.2 ms); so the helper is held back, spinning, until the caller lets go of
the GIL (:func:`.algorithms._threads.run_pair`), and starts ~0.01-0.04 ms after the
caller's job reaches compiled code. The caller should still take the longer job, and
which is longer depends on the layer and its algorithms: side by side with
the input gradient on the caller, ResNet-50's batch-1 3×3 layers took 0.85-0.93 of the
time of the usual way on 128 on 14², 256 on 7² and the 3 -> 64 stem on 112², and 1.2×
on 64 on 28² (two threads, one process, back-to-back blocks, before the hold).

So the first calls of each backward problem that the constants would run side by
side also time it the other way round and against one after the other on the calling
thread (:data:`CANDIDATES`), in their real work: the first call runs the constants' choice
untimed (it builds the plans and may compile), the next :data:`TRIALS` rounds run
each candidate once, timed, the other mode first and last (the calls just after the
first are often still slow, and that counts against the other mode, not for it), and
from then on the problem runs the candidate whose quickest call was quickest (the
constants' choice unless the other beat it by :data:`MARGIN`). Both compute each
gradient on one thread (BLAS too) with the same algorithms, so the choice changes
the speed, never the values: the results are the same bit for bit either way
(tested). ``"all"`` is left to the constants: a gradient shared among threads adds
its partial sums in another order, and a choice that timing makes must not change a
result's last bits from one run to the next. Passes that the constants run on the
calling thread are not measured: the other modes cost more to start than such a
pass takes.

``CONVARITH_AUTOTUNE=0`` (or ``false``, ``no``, ``off``) turns the measuring off:
the constants choose, the same on every run. Nothing is written to disk; the
choices live in this process (:func:`convarith.engine.clear_caches` forgets them).

Examples
--------
>>> clear()
>>> times = {"pair": [1.0, 1.1], "one": [0.9, 0.7]}
>>> picked = []
>>> for _ in range(7):
...     mode, timed = next_mode("layer", "pair", ("pair", "one"))
...     picked.append(mode)
...     if timed:
...         record("layer", mode, times[mode].pop(0))
>>> picked  # an untimed first call, two trials each, then the quicker
['pair', 'one', 'pair', 'pair', 'one', 'one', 'one']
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Mapping, Sequence

from .state import environment

__all__ = ["MODES", "CANDIDATES", "TRIALS", "MARGIN", "KEPT", "measuring", "next_mode", "record",
           "chosen", "clear"]

#: The ways of running the two gradients (see the module's docstring).
MODES = ("pair", "pair_swapped", "one", "all")

#: The modes the first calls measure (the same results bit for bit).
CANDIDATES = ("pair", "pair_swapped", "one")

#: Timed calls of each candidate before the choice is made (the quickest of them
#: counts: a candidate's first call may build its own plans).
TRIALS = 2

#: Another mode than the constants' is kept only where its quickest call took at most
#: this share of theirs: two trials each, 3% apart, once kept the slower of two modes
#: (ResNet-50's 1×1 1024 -> 512 on one 7² image, 1.32× the constants' time; two trials
#: each, interleaved in one process).
MARGIN = 0.95

#: Backward problems whose choice is remembered; past this many the oldest half is
#: dropped (a choice dropped is measured again if its problem comes back).
KEPT = 4096

_VARIABLE = "CONVARITH_AUTOTUNE"


class _Choice:
    """One problem's trials: the schedule still to run, the times seen, the pick."""

    __slots__ = ("static", "schedule", "times", "pending", "pick")

    def __init__(self, static: str, candidates: Sequence[str]) -> None:
        self.static = static
        # the others first: the calls after the untimed first one are often still slow
        # (caches, the helper's first wake-up), which counts against the others, not for
        order = [mode for mode in candidates if mode != static] + [static]
        schedule = [static]  # the warm-up call, untimed
        for round_ in range(TRIALS):
            schedule += order if round_ % 2 == 0 else order[::-1]
        self.schedule = schedule
        self.times: dict[str, float] = {}
        self.pending = 0  # trials handed out, not yet recorded
        self.pick: str | None = None


_CHOICES: dict[Hashable, _Choice] = {}
_LOCK = threading.Lock()


def measuring(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the first calls measure (``CONVARITH_AUTOTUNE`` not ``0``, ``false``,
    ``no`` or ``off``).

    >>> measuring({}), measuring({"CONVARITH_AUTOTUNE": "0"}), measuring({"CONVARITH_AUTOTUNE": "1"})
    (True, False, True)
    """
    value = environment(_VARIABLE) if environ is None else environ.get(_VARIABLE, "")
    return value.strip().lower() not in ("0", "false", "no", "off")


def next_mode(problem: Hashable, static: str, candidates: Sequence[str]) -> tuple[str, bool]:
    """The mode the next call of ``problem`` runs, and whether to time it (then
    :func:`record` its time): ``static`` (the constants' choice) for the first call,
    each of ``candidates`` :data:`TRIALS` times, then the quickest."""
    choice = _CHOICES.get(problem)
    if choice is not None and choice.pick is not None:
        return choice.pick, False
    with _LOCK:
        choice = _CHOICES.get(problem)
        if choice is None:
            if len(_CHOICES) >= KEPT:
                for old in list(_CHOICES)[:KEPT // 2]:
                    del _CHOICES[old]
            choice = _CHOICES[problem] = _Choice(static, candidates)
            return choice.schedule.pop(0), False
        if choice.pick is not None:
            return choice.pick, False
        if not choice.schedule:
            # every trial handed out, some still running on other threads: the best so far
            return (_quickest(choice) if choice.times else static), False
        choice.pending += 1
        return choice.schedule.pop(0), True


def record(problem: Hashable, mode: str, seconds: float) -> None:
    """Count a timed call of ``problem`` in ``mode``; once every trial is in, pick."""
    with _LOCK:
        choice = _CHOICES.get(problem)
        if choice is None or choice.pick is not None:
            return
        best = choice.times.get(mode)
        choice.times[mode] = seconds if best is None else min(best, seconds)
        choice.pending -= 1
        if not choice.schedule and choice.pending <= 0:
            choice.pick = _quickest(choice)


def _quickest(choice: _Choice) -> str:
    """The mode to keep: the quickest, the constants' unless another beat it by
    :data:`MARGIN`."""
    best = min(choice.times, key=choice.times.__getitem__)
    static = choice.times.get(choice.static)
    if static is not None and choice.times[best] > MARGIN * static:
        return choice.static
    return best


def chosen(problem: Hashable) -> str | None:
    """The mode picked for ``problem``, or ``None`` (not yet, or not measured)."""
    choice = _CHOICES.get(problem)
    return None if choice is None else choice.pick


def clear() -> None:
    """Forget every choice (the next calls measure again)."""
    with _LOCK:
        _CHOICES.clear()
