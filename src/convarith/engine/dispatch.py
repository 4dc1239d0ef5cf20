"""Choose an algorithm for one convolution problem, from a registry.

Every algorithm computes the same thing, a *direct* convolution of an input
that is already padded and channels-last, and obeys one contract::

    direct(xp, kernel, strides, dilation, groups, out_size) -> y

``xp`` is ``(N, *spatial, C)`` (float32 or float64, padding already applied),
``kernel`` is ``(*K, C // groups, F)``, ``y`` is ``(N, *out_size, F)`` of
``xp``'s dtype, with ``y[n, o, g*Fg + f] = sum_{k, c} xp[n, o*S + k*D, g*Cg + c]
* kernel[k, c, g*Fg + f]``. An algorithm may also supply the weight gradient::

    weight_grad(xp, dy, kernel_size, strides, dilation, groups) -> dk  # (*K, C//g, F)

Algorithms register themselves with :func:`register_algorithm` when their
module under :mod:`convarith.engine.algorithms` is imported; :func:`choose`
picks the cheapest one whose ``applies`` predicate accepts the problem.

A second kind, ``kind="transposed"``, computes a transposed convolution
without the zero-inserted grid::

    transposed(x, kernel, strides, dilation, groups, padding, out_size) -> y

``x`` is ``(N, *spatial, C)`` (not padded), ``kernel`` ``(*K, F // groups, C)``,
``padding`` the resolved padding of the zero-inserted grid (negative values
crop), ``y`` ``(N, *out_size, F)``: exactly the stride-1 direct convolution of
that grid with the flipped, in/out-swapped kernel. ``out_size`` is derived once,
by the engine (:func:`convarith.arithmetic.transposed_grid_output_size`, the
resolved spec's output size), and checked by the planner against the grid, so
no algorithm derives it again. Its ``applies`` and ``cost``
see a :class:`ConvProblem` whose ``input_shape`` is ``x``'s shape and whose
``kernel_shape`` is the transposed kernel's; the engine uses it when it is
cheaper than the best direct algorithm on the zero-inserted grid.

The engine decides in one place: :func:`plan` (direct), :func:`plan_weight_grad`
and :func:`plan_transposed` (transposed algorithm or direct on the grid) return
the algorithm to run, after checking the actual arrays against the
:class:`ConvProblem` (shapes, dtypes, contiguity, an ``out_size`` that fits), so
no algorithm, compiled or not, reads past a buffer. Algorithms that transform
their operands (Winograd, FFT, sub-pixel) declare a ``value_gain``; the
engine checks the values first (:func:`value_limits`: ``max``, ``min`` and a
dot product of the input), sets aside the values a transform would not take
(not finite, could overflow, or far above the others' rms), runs the fast
algorithm on the rest and sums directly the outputs that read a value set
aside, so a non-finite or huge input reaches only the outputs whose window
reads it, as with a direct sum. A named algorithm runs as
named, and one that does not apply is an error naming the conditions it fails
and the algorithms that apply.

The registry and the remembered choices are process state, like the engine's
other caches: :mod:`convarith.engine.state` lists them all, with what
invalidates each, and ``convarith.engine.clear_caches()`` empties them.

Examples
--------
>>> from convarith.engine import available_algorithms
>>> "offset_gemm" in available_algorithms()
True
"""

from __future__ import annotations

import importlib
import math
import pkgutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from ..arithmetic import conv_output_size, transposed_grid_output_size, window_reach
from . import autotune
from .algorithms._threads import worker_count

__all__ = [
    "Algorithm",
    "ConvProblem",
    "DirectFn",
    "WeightGradFn",
    "WORKSPACE_BYTES",
    "available_algorithms",
    "cheapest",
    "choose",
    "choose_weight_grad",
    "get_algorithm",
    "register_algorithm",
    "remembered",
    "recalled_plan",
    "remembered_arrays",
    "remembered_layout",
    "remembered_plan",
    "workspace_budget",
    "grid_kernel_cost",
]

#: Working memory an algorithm may use beyond its input, kernel and output.
WORKSPACE_BYTES = 64 * 2**20

DirectFn = Callable[..., np.ndarray]
WeightGradFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class ConvProblem:
    """The shapes of one direct convolution, as an algorithm sees them.

    ``input_shape`` is the padded channels-last input ``(N, *spatial, C)``.
    ``prepacked``: the kernel cannot change (:func:`.algorithms.prepacked.prepack`), so
    an algorithm that keeps a packed or transformed copy of it makes that copy once
    (:func:`plan` sets it; costs leave the copy out).
    """

    input_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    out_size: tuple[int, ...]
    dtype: np.dtype[Any]
    prepacked: bool = False

    @property
    def rank(self) -> int:
        return len(self.out_size)

    @property
    def kernel_size(self) -> tuple[int, ...]:
        return self.kernel_shape[:-2]

    @property
    def in_channels(self) -> int:
        return self.input_shape[-1]

    @property
    def out_channels(self) -> int:
        return self.kernel_shape[-1]

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def flops(self) -> int:
        """Multiply-adds times two of the plain definition."""
        cells = self.batch * math.prod(self.out_size)
        taps = math.prod(self.kernel_size)
        return 2 * cells * taps * self.kernel_shape[-2] * self.out_channels


@dataclass(frozen=True)
class Algorithm:
    """One registered algorithm: its function, when it applies, what it costs."""

    name: str
    direct: DirectFn
    applies: Callable[[ConvProblem], bool]
    cost: Callable[[ConvProblem], float]
    weight_grad: WeightGradFn | None = None
    kind: str = "direct"
    pads_zeros: bool = False
    value_gain: Callable[[ConvProblem], float] | None = None
    weight_grad_cost: Callable[[ConvProblem], float] | None = None
    bind: Callable[[ConvProblem], Callable[[np.ndarray, np.ndarray], np.ndarray] | None] | None = None

    def gradient_cost(self, problem: ConvProblem) -> float:
        """Estimated cost of :attr:`weight_grad` on ``problem`` (lower wins): its own
        ``weight_grad_cost``, else the forward :attr:`cost`."""
        return (self.weight_grad_cost or self.cost)(problem)

    def why_not(self, problem: ConvProblem) -> list[str]:
        """The conditions of :attr:`applies` that ``problem`` fails (empty if it applies)."""
        if self.applies(problem):
            return []
        failed = getattr(self.applies, "failed", None)
        if failed is not None:
            return list(failed(problem))
        doc = (self.applies.__doc__ or "").strip().split("\n\n")[0]
        return [" ".join(doc.split()).rstrip(".") or "its applies() predicate to hold"]


@dataclass(frozen=True)
class Requirements:
    """An ``applies`` predicate made of named conditions, so a refusal can say which failed.

    Examples
    --------
    >>> needs = Requirements((("2-D", lambda p: p.rank == 2), ("one group", lambda p: p.groups == 1)))
    >>> problem = ConvProblem((1, 5, 4), (3, 4, 4), (1,), (1,), 1, (3,), np.dtype("float32"))
    >>> needs(problem), needs.failed(problem)
    (False, ['2-D'])
    """

    conditions: tuple[tuple[str, Callable[[ConvProblem], bool]], ...]

    def __call__(self, problem: ConvProblem) -> bool:
        return all(test(problem) for _, test in self.conditions)

    def failed(self, problem: ConvProblem) -> list[str]:
        """The descriptions of the conditions ``problem`` fails."""
        return [text for text, test in self.conditions if not test(problem)]


def _always(problem: ConvProblem) -> bool:
    return True


def _flops(problem: ConvProblem) -> float:
    return float(problem.flops)


class _Registry:
    """The algorithms known to this process (filled as their modules load).

    :meth:`load_builtin` imports every module under :mod:`.algorithms` once,
    under a lock, and marks the registry loaded only when all have registered:
    a thread making its first call while another loads waits for the whole
    registry, never chooses from part of it. The import runs in the loading
    thread only (registering from inside it re-enters without waiting).
    ``generation`` counts registrations, so a choice computed while the
    registry changed is not remembered.
    """

    def __init__(self) -> None:
        self.algorithms: dict[str, Algorithm] = {}
        self.loaded = False
        self.generation = 0
        self._lock = threading.RLock()
        self._loading = False

    def load_builtin(self) -> None:
        if self.loaded:
            return
        with self._lock:
            if self.loaded or self._loading:  # done meanwhile, or this thread is loading
                return
            self._loading = True
            try:
                from . import algorithms

                for module in pkgutil.iter_modules(algorithms.__path__):
                    importlib.import_module(f"{algorithms.__name__}.{module.name}")
            finally:
                self._loading = False
            self.loaded = True

    def snapshot(self) -> tuple[Algorithm, ...]:
        """The registered algorithms now (a copy: safe while another thread registers)."""
        self.load_builtin()
        return tuple(self.algorithms.values())


# Which algorithms exist (see the process-state list in the module docstring).
_REGISTRY = _Registry()


def register_algorithm(
    name: str,
    fn: DirectFn,
    applies: Callable[[ConvProblem], bool] | None = None,
    cost: Callable[[ConvProblem], float] | None = None,
    weight_grad: WeightGradFn | None = None,
    kind: str = "direct",
    pads_zeros: bool = False,
    value_gain: Callable[[ConvProblem], float] | None = None,
    weight_grad_cost: Callable[[ConvProblem], float] | None = None,
    bind: Callable[[ConvProblem], Callable[[np.ndarray, np.ndarray], np.ndarray] | None]
    | None = None,
) -> Algorithm:
    """Make an algorithm available to :func:`choose` (replaces one of the same name).

    Parameters
    ----------
    name
        What ``algorithm=`` calls it.
    fn
        ``direct(xp, kernel, strides, dilation, groups, out_size) -> y``.
    applies
        Predicate on a :class:`ConvProblem`; default: every problem.
    cost
        Estimated cost (lower wins); default: the plain FLOP count. Compare
        with ``problem.flops`` to express a speed-up.
    weight_grad
        Optional ``weight_grad(xp, dy, kernel_size, strides, dilation, groups)``.
    kind
        ``"direct"`` (the contract above) or ``"transposed"`` (``fn`` is
        ``transposed(x, kernel, strides, dilation, groups, padding, out_size)``).
    pads_zeros
        ``fn`` (and ``weight_grad``) also take ``padding=((before, after), ...)``:
        zero padding still to apply to ``xp`` (the engine then skips its padded copy).
    value_gain
        For algorithms that transform their operands (Winograd, FFT): a bound on
        how much larger than ``max|x| · max|kernel|`` any intermediate value can
        grow. The engine then checks the values before running it, and takes the
        cheapest algorithm without transforms when they hold a non-finite value
        or could overflow (a transform would spread it over every output it
        mixes). ``None`` (default): each output is a plain sum of the products
        its window reads.
    weight_grad_cost
        Estimated cost of ``weight_grad`` on a problem (the forward problem whose
        kernel gradient it computes), in the units of ``cost``;
        :func:`cheapest_weight_grad` ranks by it. Default: ``cost``, the forward
        pass's (a weight gradient has the same FLOPs, not always the same speed).
    bind
        Optional ``bind(problem) -> run`` (or ``None``): ``run(xp, kernel)`` computes
        ``fn(xp, kernel, strides, dilation, groups, out_size)`` of that one problem
        (unpadded: ``padding`` is never passed), with what ``fn`` decides from the
        shapes decided once. The engine remembers it with the call's plan and calls
        it on arrays already checked against the problem: a layer whose work is a
        few microseconds (a 1×1 convolution on a 1×1 image) then pays little more
        than its product.

    Examples
    --------
    >>> from convarith.engine.algorithms.offset_gemm import direct
    >>> algo = register_algorithm("offset_gemm_copy", direct, cost=lambda p: float("inf"))
    >>> algo.name
    'offset_gemm_copy'
    >>> _ = unregister_algorithm("offset_gemm_copy")
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty string, got {name!r}")
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {fn!r}")
    if kind not in ("direct", "transposed"):
        raise ValueError(f"kind must be 'direct' or 'transposed', got {kind!r}")
    if weight_grad_cost is not None and weight_grad is None:
        raise ValueError(f"weight_grad_cost needs a weight_grad (algorithm {name!r} has none)")
    if bind is not None and not callable(bind):
        raise TypeError(f"bind must be callable or None, got {bind!r}")
    algorithm = Algorithm(name, fn, applies or _always, cost or _flops, weight_grad, kind,
                          pads_zeros, value_gain, weight_grad_cost, bind)
    _REGISTRY.algorithms[name] = algorithm
    _REGISTRY.generation += 1
    _CHOICES.clear()
    _PLANS.clear()
    return algorithm


def unregister_algorithm(name: str) -> Algorithm | None:
    """Remove an algorithm (for tests); returns it, or ``None`` if unknown."""
    removed = _REGISTRY.algorithms.pop(name, None)
    _REGISTRY.generation += 1
    _CHOICES.clear()
    _PLANS.clear()
    return removed


def available_algorithms() -> tuple[str, ...]:
    """Names of the registered algorithms, sorted.

    >>> "offset_gemm" in available_algorithms()
    True
    """
    _REGISTRY.load_builtin()
    return tuple(sorted(_REGISTRY.algorithms))


def get_algorithm(name: str) -> Algorithm:
    """The algorithm called ``name``; a ValueError lists the known ones."""
    _REGISTRY.load_builtin()
    try:
        return _REGISTRY.algorithms[name]
    except KeyError:
        raise ValueError(
            f"algorithm={name!r} is not registered; available: {available_algorithms()}"
        ) from None


def describe(problem: ConvProblem) -> str:
    """``problem`` in words, for error messages.

    >>> describe(ConvProblem((1, 5, 4), (3, 4, 4), (1,), (1,), 1, (3,), np.dtype("float32")))
    'a 1-D float32 convolution: input (1, 5, 4), kernel (3, 4, 4), strides (1,), dilation (1,), groups 1, output size (3,)'
    """
    return (
        f"a {problem.rank}-D {np.dtype(problem.dtype).name} convolution: input "
        f"{problem.input_shape}, kernel {problem.kernel_shape}, strides {problem.strides}, "
        f"dilation {problem.dilation}, groups {problem.groups}, output size {problem.out_size}"
    )


def applicable(problem: ConvProblem, kind: str = "direct") -> tuple[str, ...]:
    """Names of the ``kind`` algorithms that apply to ``problem``, sorted."""
    return tuple(sorted(a.name for a in _REGISTRY.snapshot()
                        if a.kind == kind and a.applies(problem)))


def choose(problem: ConvProblem, algorithm: str | None = None, kind: str = "direct"
           ) -> Algorithm:
    """The ``kind`` algorithm to run ``problem``: ``algorithm`` if named, else the cheapest.

    A named algorithm that does not apply to the problem is an error naming
    the conditions it fails and the algorithms that do apply (tests force
    paths with it, and must not silently test another).
    """
    if algorithm is not None:
        chosen = get_algorithm(algorithm)
        if chosen.kind != kind:
            raise ValueError(f"algorithm={algorithm!r} is a {chosen.kind} algorithm, not {kind}")
        failed = chosen.why_not(problem)
        if failed:
            raise ValueError(
                f"algorithm={algorithm!r} does not apply to {describe(problem)}: it needs "
                f"{'; '.join(failed)}. Algorithms that apply: "
                f"{', '.join(applicable(problem, kind)) or 'none'}"
            )
        return chosen
    found = cheapest(problem, kind)
    if found is None:
        raise ValueError(f"no registered {kind} algorithm applies to {describe(problem)}")
    return found


# Choices made so far: (problem, what, exact-only, worker count, workspace budget) ->
# algorithm. Asking every algorithm whether it applies and what it costs takes
# ~0.1-0.2 ms, paid by every call of a layer; the answer depends only on the key and
# the registry (emptied when an algorithm is registered or removed). See engine.state.
_CHOICES: dict[tuple[Any, ...], Algorithm | None] = {}
_CHOICES_MAX = 4096


def remembered(key: tuple[Any, ...], find: Callable[[], Algorithm | None]) -> Algorithm | None:
    """``find()``, remembered under ``key`` until the registry changes.

    For choices that depend only on shapes and the registered algorithms; the
    key also holds everything else the costs read: the workspace budget and the
    worker count (:func:`~.algorithms._threads.worker_count`, which
    ``thread_limit`` and ``CONVARITH_NUM_THREADS`` change). A choice computed
    while another thread changed the registry is returned but not kept.
    """
    key = (*key, worker_count(), WORKSPACE_BYTES)
    try:
        return _CHOICES[key]
    except KeyError:
        pass
    _REGISTRY.load_builtin()  # loading registers: it would look like a change
    generation = _REGISTRY.generation
    found = find()
    if generation == _REGISTRY.generation:
        if len(_CHOICES) >= _CHOICES_MAX:
            _CHOICES.clear()
        _CHOICES[key] = found
    return found


def cheapest(problem: ConvProblem, kind: str = "direct", exact: bool = False
             ) -> Algorithm | None:
    """The cheapest ``kind`` algorithm that applies to ``problem``, if any.

    ``exact``: only algorithms without transforms (no ``value_gain``), whose
    outputs each read only their own window. With ``CONVARITH_AUTOTUNE=1`` a
    direct problem's few cheapest candidates are measured instead (once per
    machine and shape, remembered on disk: :mod:`.autotune`).
    """

    def find() -> Algorithm | None:
        candidates = [
            a for a in _REGISTRY.snapshot() if a.kind == kind and a.applies(problem)
            and not (exact and a.value_gain is not None)
        ]
        if not candidates:
            return None
        if kind == "direct" and not exact and autotune.enabled():
            ranked = sorted(candidates, key=lambda a: (a.cost(problem), a.name))
            return autotune.tuned_choice(problem, ranked, worker_count(), WORKSPACE_BYTES)
        return min(candidates, key=lambda a: (a.cost(problem), a.name))

    return remembered((problem, kind, exact), find)


def choose_weight_grad(problem: ConvProblem, algorithm: str | None = None) -> Algorithm:
    """Like :func:`choose`, among algorithms that supply ``weight_grad``.

    A named algorithm without a weight gradient falls back to the cheapest one
    that has it (the forward path is still the one named).
    """
    if algorithm is not None:
        chosen = get_algorithm(algorithm)
        if chosen.weight_grad is not None and chosen.kind == "direct" and chosen.applies(problem):
            return chosen
    return cheapest_weight_grad(problem)


def cheapest_weight_grad(problem: ConvProblem, exact: bool = False) -> Algorithm:
    """The algorithm with a ``weight_grad`` for ``problem`` whose weight-gradient cost
    (:meth:`Algorithm.gradient_cost`) is lowest (``exact``: see :func:`cheapest`); a
    ValueError if none. The forward choice (:func:`cheapest`) reads only the forward
    costs: the two passes may run different algorithms."""

    def find() -> Algorithm | None:
        candidates = [
            a for a in _REGISTRY.snapshot()
            if a.weight_grad is not None and a.kind == "direct" and a.applies(problem)
            and not (exact and a.value_gain is not None)
        ]
        return min(candidates, key=lambda a: (a.gradient_cost(problem), a.name)
                   ) if candidates else None

    found = remembered((problem, "weight_grad", exact), find)
    if found is None:
        raise ValueError(
            f"no registered algorithm computes the weight gradient of {describe(problem)}")
    return found


# Plans made so far: (what, the call's arguments, each array's shape, strides and dtype,
# worker count, workspace budget) -> what the planner returned for that call: the
# algorithm plans of direct_conv, the weight gradient and transposed_conv, and the
# engine's call plans (``core.call_plan``: prepare's checks and the algorithm plan of
# one ``conv`` call). The checks read only the key, and the choice only the problem they
# give, so a call that matches a remembered key skips both: ~1 µs instead of ~15 µs
# (~50 µs for a whole call), paid by every call of a layer. Emptied with the
# remembered choices.
_PLANS: dict[tuple[Any, ...], Any] = {}
_PLANS_MAX = 1024

Plan = TypeVar("Plan")


def remembered_plan(key: tuple[Any, ...], first: Any, second: Any,
                    make: Callable[[], Plan]) -> Plan:
    """``make()``, a plan that checks the arrays ``first`` and ``second`` and chooses an
    algorithm, remembered under ``key`` and the arrays' shapes, strides and dtypes.

    ``key`` must hold everything else ``make`` reads (the call's arguments,
    hashable), so that a call with the same key and arrays of the same layout
    passes the same checks and gets the same choice. The worker count and
    workspace budget are added here. Arrays other than a plain ``numpy.ndarray``
    and unhashable arguments are planned every time; a plan that raises is not
    remembered (the next call raises again); one made while another thread
    changed the registry is returned but not kept.

    >>> x, k, calls = np.zeros((1, 4, 1)), np.zeros((3, 1, 1)), []
    >>> remembered_plan(("doctest",), x, k, lambda: calls.append(1) or "made")
    'made'
    >>> remembered_plan(("doctest",), x, k, lambda: calls.append(1) or "made"), calls
    ('made', [1])
    """
    if type(first) is not np.ndarray or type(second) is not np.ndarray:
        return make()
    return _remember((*key, first.shape, first.strides, first.dtype, second.shape,
                      second.strides, second.dtype, _frozen(second), worker_count(),
                      WORKSPACE_BYTES), make)


def remembered_arrays(key: tuple[Any, ...], arrays: tuple[np.ndarray | None, ...],
                      make: Callable[[], Plan], chooses: bool = True) -> Plan:
    """:func:`remembered_plan` for any number of plain arrays, each of which may be ``None``.

    ``chooses=False``: ``make`` chooses no algorithm (a pooling's plan), so the
    worker count and workspace budget are left out of the key.

    >>> calls = []
    >>> remembered_arrays(("doctest",), (np.zeros(3), None), lambda: calls.append(1) or "made")
    'made'
    >>> remembered_arrays(("doctest",), (np.zeros(3), None), lambda: calls.append(1) or "made"), calls
    ('made', [1])
    """
    layout: list[Any] = list(key)
    for array in arrays:
        if array is None:
            layout.append(None)
        else:
            layout += (array.shape, array.strides, array.dtype)
    if chooses:
        layout += (worker_count(), WORKSPACE_BYTES)
    return _remember(tuple(layout), make)


def recalled_plan(key: tuple[Any, ...]) -> Any:
    """The plan remembered under a full ``key`` (see :func:`remembered_layout`), or
    ``None``: the lookup alone, for a caller that makes its ``make`` only on a miss.

    >>> recalled_plan(("doctest", "never made")) is None
    True
    """
    try:
        return _PLANS.get(key)
    except TypeError:  # an unhashable argument
        return None


def remembered_layout(key: tuple[Any, ...], make: Callable[[], Plan]) -> Plan:
    """:func:`remembered_plan` for a ``key`` that already holds each array's shape,
    strides and dtype, the worker count and :data:`WORKSPACE_BYTES` (built by the
    caller in one tuple: ``core.call_plan``, paid by every call of a layer).

    >>> remembered_layout(("doctest", (3,), (8,), np.dtype("float64"), 1, 1 << 26), lambda: "made")
    'made'
    """
    try:
        return _PLANS[key]
    except KeyError:
        pass
    except TypeError:  # an unhashable argument (a list): plan every time
        return make()
    return _remember(key, make)


def _remember(full: tuple[Any, ...], make: Callable[[], Plan]) -> Plan:
    try:
        return _PLANS[full]
    except KeyError:
        pass
    except TypeError:  # an unhashable argument (a list): plan every time
        return make()
    _REGISTRY.load_builtin()  # loading registers: it would look like a change
    generation = _REGISTRY.generation
    made = make()
    if generation == _REGISTRY.generation:
        if len(_PLANS) >= _PLANS_MAX:
            _PLANS.clear()
        _PLANS[full] = made
    return made


def workspace_budget(output_bytes: int) -> int:
    """Bytes of working memory allowed: 64 MiB, or the output's size if larger."""
    return max(WORKSPACE_BYTES, int(output_bytes))


# --------------------------------------------------------------------------- planning


def _refuse(problem: ConvProblem, what: str) -> ValueError:
    return ValueError(f"the arrays do not match {describe(problem)}: {what}")


def _check_array(problem: ConvProblem, name: str, array: Any, shape: tuple[int, ...]) -> None:
    if not isinstance(array, np.ndarray):
        raise _refuse(problem, f"{name} must be a numpy.ndarray, got {type(array).__name__}")
    if array.dtype != problem.dtype:
        raise _refuse(problem, f"{name} has dtype {array.dtype}, the problem {problem.dtype} "
                               f"(pass {name}.astype({np.dtype(problem.dtype).name!r}))")
    if tuple(array.shape) != shape:
        raise _refuse(problem, f"{name} has shape {array.shape}, the problem needs {shape}")
    if not array.flags.c_contiguous:
        raise _refuse(problem, f"{name} (strides {array.strides}) is not C-contiguous "
                               f"(pass np.ascontiguousarray({name}))")


def check_problem(problem: ConvProblem) -> None:
    """Refuse a problem whose output cells would read outside its input.

    Every output cell ``o`` reads input cells up to ``o·S + (K - 1)·D`` on each
    axis: that must stay inside the padded input, or a compiled kernel would
    read past its buffer.

    >>> check_problem(ConvProblem((1, 5, 4), (3, 4, 4), (1,), (1,), 1, (4,), np.dtype("float32")))
    Traceback (most recent call last):
    ...
    ValueError: the arrays do not match a 1-D float32 convolution: input (1, 5, 4), kernel (3, 4, 4), strides (1,), dilation (1,), groups 1, output size (4,): out_size[0]=4 needs 6 input cells on that axis, the input has 5 (at most 3 outputs fit)
    """
    rank = len(problem.input_shape) - 2
    if rank < 1 or len(problem.kernel_shape) != rank + 2 or not (
            len(problem.strides) == len(problem.dilation) == len(problem.out_size) == rank):
        raise _refuse(problem, f"input, kernel, strides, dilation and out_size must all have "
                               f"{max(rank, 1)} spatial axes")
    if problem.groups < 1 or problem.kernel_shape[-2] * problem.groups != problem.in_channels \
            or problem.out_channels % problem.groups:
        raise _refuse(problem, f"the kernel's {problem.kernel_shape[-2]} input channels x groups "
                               f"{problem.groups} must equal the input's {problem.in_channels}, "
                               f"and its {problem.out_channels} outputs divide by the groups")
    for axis, (n, k, s, d, o) in enumerate(zip(problem.input_shape[1:-1], problem.kernel_size,
                                               problem.strides, problem.dilation,
                                               problem.out_size)):
        if s < 1 or d < 1 or k < 1 or o < 0:
            raise _refuse(problem, f"axis {axis}: strides, dilation and kernel size must be >= 1 "
                                   f"and out_size >= 0")
        if o > 0:
            reach = window_reach(o, k, s, d)
            if reach > n:
                raise _refuse(problem, f"out_size[{axis}]={o} needs {reach} input cells on "
                                       f"that axis, the input has {n} (at most "
                                       f"{conv_output_size(n, k, s, d)} outputs fit)")


def check_arrays(problem: ConvProblem, x: Any, kernel: Any,
                 padding: Any = None) -> None:
    """Refuse, before any algorithm runs, arrays that do not match ``problem``.

    ``x`` (padded by ``padding`` when given) must have ``problem.input_shape``,
    ``kernel`` ``problem.kernel_shape``; both the problem's dtype and
    C-contiguous; and the output size must fit in the input (:func:`check_problem`).
    """
    check_problem(problem)
    shape = tuple(problem.input_shape)
    if padding is not None:
        if len(padding) != problem.rank or any(lo < 0 or hi < 0 for lo, hi in padding):
            raise _refuse(problem, f"padding {padding} must be one non-negative (before, after) "
                                   f"per spatial axis")
        shape = (shape[0], *(n - lo - hi for n, (lo, hi) in zip(shape[1:-1], padding)),
                 shape[-1])
    _check_array(problem, "x", x, shape)
    _check_array(problem, "kernel", kernel, tuple(problem.kernel_shape))


def magnitude(a: np.ndarray) -> float:
    """``max |a|``: ``nan`` if ``a`` holds a NaN, ``0`` if it is empty.

    Two reductions without a temporary (``max`` and ``min``), about a third of
    the time of ``np.abs(a).max()``.

    >>> magnitude(np.array([1.0, -3.0])), magnitude(np.array([np.nan, 1.0]))
    (3.0, nan)
    """
    if a.size == 0:
        return 0.0
    high, low = float(a.max()), float(a.min())
    if math.isnan(high) or math.isnan(low):
        return math.nan
    return max(abs(high), abs(low))


#: How far above the root-mean-square of the other values (``rms``) one value of a
#: transformed operand may be before it is set aside and its outputs are summed
#: directly. A transform spreads a value's rounding error over outputs that do not
#: read it: measured with Winograd F(4×4, 3×3) in float32 (32 channels, Gaussian
#: data), one value at ``10³·rms`` costs the other outputs a relative error of
#: 1.4e-5 at worst (1.5e-6 across them), ``10⁴·rms`` 1.5e-4; FFT stays under 1e-6 up
#: to ``10³·rms``. ``100`` keeps the untouched outputs within the conformance bound
#: (1e-5) with a factor ~10 to spare; for float64 the bound (1e-10) over the
#: unit roundoff (1.1e-16) allows ``5400×`` more.
OUTLIER_RATIO = {np.dtype(np.float32): 100.0, np.dtype(np.float64): 100.0 * 5400.0}


@dataclass(frozen=True)
class ValueLimits:
    """The largest ``|value|`` of each operand a transforming algorithm takes.

    ``first`` bounds the input (or ``x`` of a weight gradient), ``second`` the
    kernel (or ``dy``); a value above its limit, or not finite, is set aside
    (:func:`set_aside`) and the outputs that read it are summed directly.
    """

    first: float
    second: float


def _rms_rest(a: np.ndarray, largest: float) -> float:
    """Root-mean-square of ``a`` without its largest magnitude (0 for one value)."""
    flat = a.reshape(-1)
    if flat.size < 2:
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        squares = float(np.dot(flat, flat))
    if math.isfinite(squares) or largest == 0:
        return math.sqrt(max(squares - largest * largest, 0.0) / (flat.size - 1))
    wide = flat.astype(np.float64) / largest  # in units of the largest: no overflow
    squares = float(np.dot(wide, wide))
    return largest * math.sqrt(max(squares - 1.0, 0.0) / (flat.size - 1))


def value_limits(algorithm: Algorithm, problem: ConvProblem, first: np.ndarray,
                 second: np.ndarray, spatial: bool = True) -> ValueLimits | None:
    """``None`` when ``algorithm``'s transforms take these values as they are, else the
    :class:`ValueLimits` beyond which a value is set aside.

    A value fits when it is finite, ``max|first| · max|second| · value_gain``
    stays below the dtype's largest value (no overflow), and, with ``spatial``
    (a forward pass: the transforms mix neighbouring input cells), each value of
    ``first`` is at most :data:`OUTLIER_RATIO` times the rms of the others, so
    its rounding error does not swamp outputs that do not read it. The kernel's
    (and a weight gradient's) values only reach outputs that read them anyway:
    their channel. The check reads ``first`` three times (``max``, ``min``, a
    dot product) and ``second`` twice, a prepacked ``second`` (a kernel that cannot
    change, :func:`.algorithms.prepacked.prepack`) once in all (its ``max |value|`` is
    remembered with it: ~0.1 ms of a 0.4 ms batch-1 layer with a 2.4 MB kernel).

    >>> from convarith.engine.dispatch import get_algorithm
    >>> p = ConvProblem((1, 10, 10, 32), (3, 3, 32, 32), (1, 1), (1, 1), 1, (8, 8), np.dtype("float64"))
    >>> rng = np.random.default_rng(0)
    >>> x, k = rng.standard_normal(p.input_shape), rng.standard_normal(p.kernel_shape)
    >>> value_limits(get_algorithm("winograd"), p, x, k) is None
    True
    >>> x[0, 4, 4, 0] = np.inf
    >>> limits = value_limits(get_algorithm("winograd"), p, x, k)
    >>> 10 < limits.first < 1e8
    True
    """
    if algorithm.value_gain is None:
        return None
    top = float(np.finfo(problem.dtype).max)
    ratio = OUTLIER_RATIO.get(np.dtype(problem.dtype), 100.0)
    gain = algorithm.value_gain(problem)
    sizes, limits = [], []
    kept = 0.0
    for operand, spread in ((first, spatial), (second, False)):
        size = magnitude(operand) if spread or not _frozen(operand) else _kept_magnitude(
            operand)
        sizes.append(size)
        if not spread:
            limits.append(top)
            kept = size if size < top else magnitude(operand[np.isfinite(operand)])
            continue
        rest = size
        if not size < top:  # NaN or infinite: the rms of the finite values
            operand = operand[np.isfinite(operand)]
            rest = magnitude(operand)
        limits.append(ratio * _rms_rest(operand, rest))
    # kept: the largest kernel (or dy) value the transforms see
    overflow = top / (2.0 * max(gain, 1.0) * kept) if kept > 0 else math.inf
    first_limit = min(limits[0], overflow)
    if sizes[0] <= first_limit and sizes[1] < top:  # False for NaN
        return None
    return ValueLimits(first_limit, limits[1])


def values_fit(algorithm: Algorithm, problem: ConvProblem, first: np.ndarray,
               second: np.ndarray) -> bool:
    """Whether ``algorithm``'s transforms take these values as they are
    (:func:`value_limits` is ``None``)."""
    return value_limits(algorithm, problem, first, second) is None


def set_aside(a: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray] | None:
    """``a`` with every value above ``limit`` or not finite set to zero, and where
    they were; ``None`` when there is none.

    >>> clean, where = set_aside(np.array([1.0, np.nan, -5.0, 2.0]), 3.0)
    >>> clean.tolist(), where.tolist()
    ([1.0, 0.0, 0.0, 2.0], [False, True, True, False])
    """
    where = ~(np.abs(a) <= limit)
    if not where.any():
        return None
    clean = a.copy()
    clean[where] = 0
    return clean, where


def plan(problem: ConvProblem, x: np.ndarray, kernel: np.ndarray, algorithm: str | None = None,
         padding: Any = None) -> Algorithm:
    """The direct algorithm that runs ``problem`` on these arrays: the dispatch's decision.

    Checks the arrays against the problem (:func:`check_arrays`), then takes
    ``algorithm`` if named, else the cheapest that applies. An algorithm with
    transforms runs on values it takes (:func:`value_limits`); the engine
    (:func:`.core.direct_conv`) sets the others aside and sums the outputs that
    read them directly, so a non-finite or huge input reaches only the outputs
    whose window reads it.

    >>> x, k = np.ones((1, 130, 130, 32), np.float32), np.ones((3, 3, 32, 32), np.float32)
    >>> problem = ConvProblem(x.shape, k.shape, (1, 1), (1, 1), 1, (128, 128), x.dtype)
    >>> plan(problem, x, k).name
    'winograd'
    """
    check_arrays(problem, x, kernel, padding)
    if not problem.prepacked and _frozen(kernel):
        problem = replace(problem, prepacked=True)
    return choose(problem, algorithm)


def _kept_magnitude(kernel: np.ndarray) -> float:
    """:func:`magnitude` of a prepacked ``kernel``, worked out once
    (:func:`.algorithms.prepacked.remembered`; at each call where it is not kept)."""
    from .algorithms import prepacked  # (algorithms import this module)

    kept = prepacked.remembered(kernel, "magnitude", lambda: (magnitude(kernel), 0))
    return magnitude(kernel) if kept is None else float(kept)


def _frozen(kernel: Any) -> bool:
    """Whether ``kernel`` is a prepacked kernel (:func:`.algorithms.prepacked.frozen_owner`)."""
    from .algorithms.prepacked import frozen_owner  # (algorithms import this module)

    return (type(kernel) is np.ndarray and not kernel.flags.writeable
            and frozen_owner(kernel) is not None)


def plan_weight_grad(problem: ConvProblem, x: np.ndarray, dy: np.ndarray,
                     algorithm: str | None = None, padding: Any = None) -> Algorithm:
    """Like :func:`plan`, for the kernel gradient of ``problem`` from ``x`` and ``dy``
    (the engine's ``_weight_grad`` handles values the transforms do not take)."""
    check_problem(problem)
    shape = tuple(problem.input_shape)
    if padding is not None:
        shape = (shape[0], *(n - lo - hi for n, (lo, hi) in zip(shape[1:-1], padding)),
                 shape[-1])
    _check_array(problem, "x", x, shape)
    _check_array(problem, "dy", dy, (problem.batch, *problem.out_size, problem.out_channels))
    return choose_weight_grad(problem, algorithm)


def check_transposed_out_size(problem: ConvProblem, grid_problem: ConvProblem) -> None:
    """Refuse a transposed problem whose ``out_size`` is not its zero-inserted grid's.

    >>> f32 = np.dtype("float32")
    >>> grid = ConvProblem((1, 7, 1), (2, 1, 1), (1,), (1,), 1, (6,), f32)
    >>> check_transposed_out_size(ConvProblem((1, 3, 1), (2, 1, 1), (2,), (1,), 1, (6,), f32), grid)
    >>> check_transposed_out_size(ConvProblem((1, 3, 1), (2, 1, 1), (2,), (1,), 1, (5,), f32), grid)
    Traceback (most recent call last):
    ...
    ValueError: the arrays do not match a 1-D float32 convolution: input (1, 3, 1), kernel (2, 1, 1), strides (2,), dilation (1,), groups 1, output size (5,): out_size (5,) is not the zero-inserted grid's (6,)
    """
    rank = len(problem.strides)
    # the grid is already zero-inserted and padded: stride 1, no padding (not clamped)
    grid_out = tuple(transposed_grid_output_size(n, k, 1, d) for n, k, d in zip(
        grid_problem.input_shape[1:-1], grid_problem.kernel_shape[:rank], grid_problem.dilation))
    if len(problem.out_size) != rank or tuple(problem.out_size) != grid_out or tuple(
            grid_problem.out_size) != grid_out:
        raise _refuse(problem, f"out_size {tuple(problem.out_size)} is not the zero-inserted "
                               f"grid's {grid_out}")


#: Cost per kernel element (in :mod:`.algorithms.flat_rows` units, ``0.7 × FLOPs``
#: there) of the grid way's kernel: :func:`~.core.flip_swap` copies it transposed.
#: Measured on one core (CPU time, float32): 5.7 ms for a 3×3×512×512 kernel, 2.4 ns
#: an element, where 3×3 512 -> 512 on 1×7² (0.58 × FLOPs) took 3.5 ms.
FLIP_SWAP_COST = 90.0


def grid_kernel_cost(problem: ConvProblem) -> float:
    """What the grid way of the transposed ``problem`` adds to its direct algorithm's cost:
    the flipped, in/out-swapped copy of the kernel.

    >>> p = ConvProblem((1, 4, 4, 512), (3, 3, 512, 512), (1, 1), (1, 1), 1, (4, 4), np.dtype("float32"))
    >>> grid_kernel_cost(p) / p.flops
    2.8125
    """
    if problem.prepacked and problem.groups > 1:
        return 0.0  # made once (:func:`.core.flipped`; set for grouped kernels only)
    return FLIP_SWAP_COST * math.prod(problem.kernel_shape)


def plan_transposed(problem: ConvProblem, grid_problem: ConvProblem, algorithm: str | None = None,
                    x: np.ndarray | None = None, kernel: np.ndarray | None = None
                    ) -> Algorithm | None:
    """The ``kind="transposed"`` algorithm to run, or ``None``: the direct one on the grid.

    ``problem`` is the transposed problem, ``grid_problem`` the stride-1 direct
    problem on the zero-inserted grid. A named transposed algorithm runs (an
    error if it does not apply); a named direct one runs on the grid;
    otherwise the cheaper of the best transposed and the best direct on the
    grid (the engine sets aside the values a transforming one does not take, as
    for :func:`plan`); the grid way's cost counts its copy of the kernel
    (:func:`grid_kernel_cost`). Both problems' ``out_size`` must be the one the grid gives
    (``grid - (K - 1)·D`` on each axis): the size every transposed algorithm is handed.
    """
    check_transposed_out_size(problem, grid_problem)
    if x is not None:
        _check_array(problem, "x", x, tuple(problem.input_shape))
    if kernel is not None:
        _check_array(problem, "kernel", kernel, tuple(problem.kernel_shape))
    if algorithm is not None:
        named = get_algorithm(algorithm)
        return choose(problem, algorithm, kind="transposed") if named.kind == "transposed" else None
    if problem.groups > 1 and _frozen(kernel):
        # the flipped kernel and the phases' panels of a prepacked grouped kernel are made
        # once (:func:`.core.flipped`, ``register_tiles_phases``): costed without them
        problem = replace(problem, prepacked=True)
        grid_problem = replace(grid_problem, prepacked=True)

    def decide(exact: bool) -> Algorithm | None:
        transposed = cheapest(problem, kind="transposed", exact=exact)
        grid = cheapest(grid_problem, exact=exact)
        if transposed is not None and grid is not None and (
                transposed.cost(problem) >= grid.cost(grid_problem) + grid_kernel_cost(problem)):
            return None
        return transposed

    return remembered((problem, grid_problem, "transposed or grid"), lambda: decide(False))
