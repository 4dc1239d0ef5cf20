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

    transposed(x, kernel, strides, dilation, groups, padding) -> y

``x`` is ``(N, *spatial, C)`` (not padded), ``kernel`` ``(*K, F // groups, C)``,
``padding`` the resolved padding of the zero-inserted grid (negative values
crop), ``y`` ``(N, *out, F)``: exactly the stride-1 direct convolution of that
grid with the flipped, in/out-swapped kernel. Its ``applies`` and ``cost``
see a :class:`ConvProblem` whose ``input_shape`` is ``x``'s shape and whose
``kernel_shape`` is the transposed kernel's; the engine uses it when it is
cheaper than the best direct algorithm on the zero-inserted grid.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

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
    "workspace_budget",
]

#: Working memory an algorithm may use beyond its input, kernel and output.
WORKSPACE_BYTES = 64 * 2**20

DirectFn = Callable[..., np.ndarray]
WeightGradFn = Callable[..., np.ndarray]


@dataclass(frozen=True)
class ConvProblem:
    """The shapes of one direct convolution, as an algorithm sees them.

    ``input_shape`` is the padded channels-last input ``(N, *spatial, C)``.
    """

    input_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    strides: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    out_size: tuple[int, ...]
    dtype: np.dtype[Any]

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


def _always(problem: ConvProblem) -> bool:
    return True


def _flops(problem: ConvProblem) -> float:
    return float(problem.flops)


class _Registry:
    """The algorithms known to this process (filled as their modules load)."""

    def __init__(self) -> None:
        self.algorithms: dict[str, Algorithm] = {}
        self.loaded = False

    def load_builtin(self) -> None:
        if self.loaded:
            return
        self.loaded = True
        from . import algorithms

        for module in pkgutil.iter_modules(algorithms.__path__):
            importlib.import_module(f"{algorithms.__name__}.{module.name}")


# The one piece of process state in the engine: which algorithms exist.
_REGISTRY = _Registry()


def register_algorithm(
    name: str,
    fn: DirectFn,
    applies: Callable[[ConvProblem], bool] | None = None,
    cost: Callable[[ConvProblem], float] | None = None,
    weight_grad: WeightGradFn | None = None,
    kind: str = "direct",
    pads_zeros: bool = False,
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
        ``transposed(x, kernel, strides, dilation, groups, padding)``).
    pads_zeros
        ``fn`` (and ``weight_grad``) also take ``padding=((before, after), ...)``:
        zero padding still to apply to ``xp`` (the engine then skips its padded copy).

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
    algorithm = Algorithm(name, fn, applies or _always, cost or _flops, weight_grad, kind,
                          pads_zeros)
    _REGISTRY.algorithms[name] = algorithm
    _CHOICES.clear()
    return algorithm


def unregister_algorithm(name: str) -> Algorithm | None:
    """Remove an algorithm (for tests); returns it, or ``None`` if unknown."""
    _CHOICES.clear()
    return _REGISTRY.algorithms.pop(name, None)


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


def choose(problem: ConvProblem, algorithm: str | None = None, kind: str = "direct"
           ) -> Algorithm:
    """The ``kind`` algorithm to run ``problem``: ``algorithm`` if named, else the cheapest.

    A named algorithm that does not apply to the problem is an error (tests
    force paths with it, and must not silently test another).
    """
    if algorithm is not None:
        chosen = get_algorithm(algorithm)
        if chosen.kind != kind:
            raise ValueError(f"algorithm={algorithm!r} is a {chosen.kind} algorithm, not {kind}")
        if not chosen.applies(problem):
            raise ValueError(
                f"algorithm={algorithm!r} does not apply to this problem: {problem}"
            )
        return chosen
    _REGISTRY.load_builtin()
    found = cheapest(problem, kind)
    if found is None:
        raise ValueError(f"no registered {kind} algorithm applies to {problem}")
    return found


# Choices made so far: (problem, what, workspace budget) -> algorithm. Asking every
# algorithm whether it applies and what it costs takes ~0.1-0.2 ms, paid by every
# call of a layer; the answer depends only on the shapes and the registry (emptied
# when an algorithm is registered or removed).
_CHOICES: dict[tuple[Any, ...], Algorithm | None] = {}
_CHOICES_MAX = 4096


def remembered(key: tuple[Any, ...], find: Callable[[], Algorithm | None]) -> Algorithm | None:
    """``find()``, remembered under ``key`` (and the workspace budget) until the registry
    changes: for choices that depend only on shapes and the registered algorithms."""
    key = (*key, WORKSPACE_BYTES)
    try:
        return _CHOICES[key]
    except KeyError:
        pass
    found = find()
    if len(_CHOICES) >= _CHOICES_MAX:
        _CHOICES.clear()
    _CHOICES[key] = found
    return found


def cheapest(problem: ConvProblem, kind: str = "direct") -> Algorithm | None:
    """The cheapest ``kind`` algorithm that applies to ``problem``, if any."""
    _REGISTRY.load_builtin()

    def find() -> Algorithm | None:
        candidates = [
            a for a in _REGISTRY.algorithms.values() if a.kind == kind and a.applies(problem)
        ]
        if not candidates:
            return None
        return min(candidates, key=lambda a: (a.cost(problem), a.name))

    return remembered((problem, kind), find)


def choose_weight_grad(problem: ConvProblem, algorithm: str | None = None) -> Algorithm:
    """Like :func:`choose`, among algorithms that supply ``weight_grad``.

    A named algorithm without a weight gradient falls back to the cheapest one
    that has it (the forward path is still the one named).
    """
    if algorithm is not None:
        chosen = get_algorithm(algorithm)
        if chosen.weight_grad is not None and chosen.kind == "direct" and chosen.applies(problem):
            return chosen
    _REGISTRY.load_builtin()

    def find() -> Algorithm | None:
        candidates = [
            a for a in _REGISTRY.algorithms.values()
            if a.weight_grad is not None and a.kind == "direct" and a.applies(problem)
        ]
        return min(candidates, key=lambda a: (a.cost(problem), a.name)) if candidates else None

    found = remembered((problem, "weight_grad"), find)
    if found is None:
        raise ValueError(f"no registered algorithm computes the weight gradient of {problem}")
    return found


def workspace_budget(output_bytes: int) -> int:
    """Bytes of working memory allowed: 64 MiB, or the output's size if larger."""
    return max(WORKSPACE_BYTES, int(output_bytes))
