"""Measure the dispatch's choice on this machine, once per shape, remembered on disk.

The dispatch chooses by registered cost estimates (:func:`.dispatch.cheapest`),
fitted on a few machines. With ``CONVARITH_AUTOTUNE=1`` the first time a
process meets a direct convolution problem it also *measures* the few
cheapest candidates (at most :data:`CANDIDATES`, within :data:`SPREAD` of the
best estimate) on random data of the problem's shapes, and keeps the fastest
when it takes at most :data:`MARGIN` of the estimates' choice's time.
The answer is written to the user's cache directory, so later processes on
the same machine reuse it without measuring:

``$XDG_CACHE_HOME/convarith/autotune-<machine>.json`` (``~/.cache/convarith``
when ``XDG_CACHE_HOME`` is not set), one file per *machine key*: the CPU model
and its feature flags, the vector instruction set the kernels are built for,
``CONVARITH_JIT``, and the convarith and NumPy versions. Inside it each entry
is keyed by the problem (shapes, strides, dilation, groups, output size,
dtype), the worker count and the workspace budget.

It is off by default (``CONVARITH_AUTOTUNE`` unset or ``0``): the choice is
then the cost estimates', the same on every run, and nothing is written. The
variable is read when a process first chooses for a problem (the choice is
then remembered: :func:`convarith.engine.clear_caches` makes it read again).
Every candidate computes the same convolution within the conformance bounds,
so autotuning changes the speed, never the meaning of a result; the last bits
of a float32 result may differ from the default choice's.

Bounds: a problem is measured only when its arrays take at most
:data:`MAX_BYTES` and its cheapest estimate at most :data:`MAX_FLOPS`
floating-point operations; each candidate runs once to warm up (compiling a
kernel the first time, as any first call does) and then at most
:data:`RUNS` times, the candidates in turn, or until one has spent
:data:`BUDGET_SECONDS`. A cache file that
cannot be read, parsed or written is ignored: the process measures again, and
never fails because of it. Measuring is serialized by a lock.

Examples
--------
>>> import os
>>> enabled({"CONVARITH_AUTOTUNE": "1"}), enabled({"CONVARITH_AUTOTUNE": "0"}), enabled({})
(True, False, False)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # dispatch imports this module
    from .dispatch import Algorithm, ConvProblem

__all__ = ["BUDGET_SECONDS", "CANDIDATES", "MARGIN", "MAX_BYTES", "MAX_FLOPS", "RUNS", "SPREAD",
           "VARIABLE", "cache_path", "enabled", "machine_key", "tuned_choice"]

#: The environment variable: ``1`` measures, ``0`` or unset does not.
VARIABLE = "CONVARITH_AUTOTUNE"
#: Candidates measured: the cheapest by estimate, at most this many.
CANDIDATES = 3
#: Only candidates whose estimate is within this factor of the best one.
SPREAD = 4.0
#: Timed runs per candidate, at most (after one warm-up run).
RUNS = 3
#: Seconds of timed runs per candidate, at most (a run in progress finishes).
BUDGET_SECONDS = 0.05
#: Another candidate replaces the estimates' choice only when it takes at most this
#: share of its time: a measurement on a busy machine is noisy, and a choice written
#: to disk stays.
MARGIN = 0.9
#: Problems whose cheapest estimate is above this many FLOPs are not measured.
MAX_FLOPS = 5e8
#: Problems whose input, kernel and output take more bytes than this are not measured.
MAX_BYTES = 64 * 2**20
#: Entries kept in one cache file; beyond it the file starts afresh.
MAX_ENTRIES = 4096

# The cache files read by this process: path -> {problem key: algorithm name}. Listed in
# engine.state; cleared by clear_caches() (the next tuned choice reads the file again).
_FILES: dict[str, dict[str, str]] = {}
_LOCK = threading.RLock()


def enabled(environ: Mapping[str, str] | None = None) -> bool:
    """Whether ``CONVARITH_AUTOTUNE`` asks for measuring (``1``, ``true``, ``yes``, ``on``)."""
    value = (os.environ if environ is None else environ).get(VARIABLE, "").strip().lower()
    return value in ("1", "true", "yes", "on")


def cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/convarith``, or ``~/.cache/convarith``.

    >>> str(cache_dir({"XDG_CACHE_HOME": "/tmp/c"}))
    '/tmp/c/convarith'
    """
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"
    return root / "convarith"


def _cpu() -> tuple[str, str]:
    """The CPU's model and feature flags (from ``/proc/cpuinfo`` where there is one)."""
    model, flags = f"{platform.machine()} {platform.processor()}".strip(), ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            first = info.read(2**16).split("\n\n")[0]  # the first processor
        for line in first.splitlines():
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name in ("model name", "cpu model", "cpu part", "hardware"):
                model += " " + value.strip()
            elif name in ("flags", "features"):
                flags = " ".join(sorted(value.split()))
    return model, flags


def machine_key() -> dict[str, str]:
    """What a measured choice depends on besides the problem: CPU model and flags, the
    vector instruction set in use, ``CONVARITH_JIT``, convarith's and NumPy's versions."""
    from .. import __version__
    from .algorithms._llvm import vector_target

    model, flags = _cpu()
    target = vector_target()
    return {
        "cpu": model,
        "flags": hashlib.sha256(flags.encode()).hexdigest()[:16],
        "isa": f"{target.name}:{target.cpu}:{target.vector_bytes}:{target.runs_here}",
        "jit": os.environ.get("CONVARITH_JIT", "").strip(),
        "convarith": __version__,
        "numpy": np.__version__,
    }


def cache_path(environ: Mapping[str, str] | None = None) -> Path:
    """This machine's cache file (see the module docstring)."""
    text = json.dumps(machine_key(), sort_keys=True)
    return cache_dir(environ) / f"autotune-{hashlib.sha256(text.encode()).hexdigest()[:16]}.json"


def problem_key(problem: ConvProblem, workers: int, budget: int) -> str:
    """The entry's key in a cache file.

    >>> from convarith.engine.dispatch import ConvProblem
    >>> problem_key(ConvProblem((1, 5, 4), (3, 4, 4), (1,), (1,), 1, (3,), np.dtype("float32")), 2, 64)
    '[1,5,4]|[3,4,4]|[1]|[1]|1|[3]|float32|2|64'
    """
    def ints(values: Sequence[int]) -> str:
        return "[" + ",".join(str(int(v)) for v in values) + "]"

    return "|".join((ints(problem.input_shape), ints(problem.kernel_shape), ints(problem.strides),
                     ints(problem.dilation), str(int(problem.groups)), ints(problem.out_size),
                     np.dtype(problem.dtype).name, str(int(workers)), str(int(budget))))


def _read(path: Path) -> dict[str, str]:
    """The file's entries; empty when it is missing, unreadable or not ours."""
    key = str(path)
    if key in _FILES:
        return _FILES[key]
    entries: dict[str, str] = {}
    with contextlib.suppress(OSError, ValueError, UnicodeDecodeError):
        if path.is_file() and path.stat().st_size <= 8 * 2**20:
            data = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(data, dict) and isinstance(data.get("choices"), dict):
                entries = {k: v for k, v in data["choices"].items()
                           if isinstance(k, str) and isinstance(v, str)}
    _FILES[key] = entries
    return entries


def _write(path: Path, entries: dict[str, str]) -> None:
    """Write ``entries`` atomically; any failure leaves the file as it was, silently."""
    from .._atomic import write_atomic

    data = {"machine": machine_key(), "choices": entries}
    with contextlib.suppress(OSError, ValueError):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=0, sort_keys=True), force=True)


def _arrays(problem: ConvProblem) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    dtype = np.dtype(problem.dtype)
    x = rng.standard_normal(problem.input_shape).astype(dtype)
    kernel = rng.standard_normal(problem.kernel_shape).astype(dtype)
    return x, kernel


def measure(candidates: Sequence[Algorithm], problem: ConvProblem, x: np.ndarray,
            kernel: np.ndarray) -> dict[str, float]:
    """Best seconds of each candidate on the arrays (``inf`` for one that fails).

    One warm-up run each, then rounds that run each candidate once, so that a
    burst of load from elsewhere falls on all of them alike: at most
    :data:`RUNS` rounds, and none after one where a candidate's runs reached
    :data:`BUDGET_SECONDS`.
    """
    args = (x, kernel, problem.strides, problem.dilation, problem.groups, problem.out_size)

    def seconds(algorithm: Algorithm) -> float:
        try:
            start = time.perf_counter()
            algorithm.direct(*args)
            return time.perf_counter() - start
        except Exception:  # not chosen; the call itself shows the error, if it runs it
            return math.inf

    best = {a.name: math.inf for a in candidates}
    running = [a for a in candidates if math.isfinite(seconds(a))]
    spent = dict.fromkeys(best, 0.0)
    for _ in range(RUNS):
        for algorithm in running:
            took = seconds(algorithm)
            best[algorithm.name] = min(best[algorithm.name], took)
            spent[algorithm.name] += took
        if max(spent.values()) >= BUDGET_SECONDS:
            break
    return best


def worth_measuring(problem: ConvProblem, candidates: Sequence[Algorithm]) -> bool:
    """More than one candidate, and a problem small enough to run a few times now."""
    if len(candidates) < 2:
        return False
    itemsize = np.dtype(problem.dtype).itemsize
    size = (math.prod(problem.input_shape) + math.prod(problem.kernel_shape)
            + problem.batch * math.prod(problem.out_size) * problem.out_channels) * itemsize
    return size <= MAX_BYTES and 0 < problem.flops <= MAX_FLOPS


def tuned_choice(problem: ConvProblem, ranked: Sequence[Algorithm], workers: int,
                 budget: int) -> Algorithm:
    """The fastest of ``ranked``'s first candidates (sorted by estimate, cheapest first) on
    this machine: read from the cache file, else measured and written there."""
    best_cost = ranked[0].cost(problem)
    candidates = [a for a in ranked[:CANDIDATES] if a.cost(problem) <= SPREAD * best_cost]
    if not worth_measuring(problem, candidates):
        return ranked[0]
    key = problem_key(problem, workers, budget)
    by_name = {a.name: a for a in candidates}
    with _LOCK:
        path = cache_path()
        entries = _read(path)
        known = entries.get(key)
        if known in by_name:
            return by_name[known]
        x, kernel = _arrays(problem)
        times = measure(candidates, problem, x, kernel)
        fastest = min(candidates, key=lambda a: (times[a.name], a.name))
        if not math.isfinite(times[fastest.name]):
            return ranked[0]
        if times[fastest.name] > MARGIN * times[ranked[0].name]:
            fastest = ranked[0]
        if len(entries) >= MAX_ENTRIES:
            entries.clear()
        entries[key] = fastest.name
        _write(path, entries)
        return fastest


def clear() -> None:
    """Forget the cache files read (the files themselves stay)."""
    with _LOCK:
        _FILES.clear()
