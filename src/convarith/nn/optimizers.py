"""SGD (with momentum), Adam and RMSprop, updating exactly as Keras 3 does.

An optimizer updates the variables in place: ``optimizer.apply(variables,
gradients)``. Every update rule is elementwise, so one step runs each rule once
over all the variables of a dtype laid end to end (a few NumPy calls per step,
not a few per variable); the state slots (``m``, ``v`` ...) are kept in that flat
layout, keyed by it: a different list of variable shapes starts fresh slots.

Examples
--------
>>> import numpy as np
>>> w = np.array([1.0], np.float32)
>>> SGD(learning_rate=0.1, momentum=0.9).apply([w], [np.array([1.0], np.float32)])
>>> w
array([0.9], dtype=float32)
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..engine.state import cached_once

__all__ = ["Optimizer", "SGD", "Adam", "RMSprop", "get"]


def _rate(name: str, value: Any, low: float = 0.0, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not np.isfinite(value) or value < low or (high is not None and value > high):
        span = f"[{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {span}, got {value}")
    return value


#: the key of one flat group of variables: their dtype and (position, shape) of each
Layout = tuple[str, tuple[tuple[int, tuple[int, ...]], ...]]
State = dict[Layout, dict[str, np.ndarray]]


def _copy_state(state: State) -> State:
    """The slots' arrays copied (taken every step; ``copy.deepcopy`` took 6x as long)."""
    return {key: {name: array.copy() for name, array in slot.items()}
            for key, slot in state.items()}


def flat_groups(variables: Sequence[np.ndarray]) -> list[Layout]:
    """The variables grouped by dtype, in order: one flat layout per dtype.

    >>> flat_groups([np.zeros((2, 3), np.float32), np.zeros(4, np.float64), np.zeros(5, np.float32)])
    [('<f4', ((0, (2, 3)), (2, (5,)))), ('<f8', ((1, (4,)),))]
    """
    groups: dict[str, list[tuple[int, tuple[int, ...]]]] = {}
    for position, variable in enumerate(variables):
        groups.setdefault(variable.dtype.str, []).append((position, variable.shape))
    return [(dtype, tuple(members)) for dtype, members in groups.items()]


def _all_finite(values: np.ndarray) -> bool:
    """Whether no value is NaN or infinite."""
    return bool(np.isfinite(values).all())


@cached_once
def _compiled_adam() -> Callable[..., None] | None:
    """``adam(variable, gradient, m, v, new_m, new_v, alpha, one_minus_beta_1,
    one_minus_beta_2, epsilon)``: Adam's step over flat arrays in one pass compiled by
    numba (the float operations of :meth:`Adam._update_into`, in its order, value by
    value, so the same values bit for bit), or ``None`` without numba. ``new_m`` and
    ``new_v`` must not overlap ``m`` and ``v`` (the loop is vectorized only then).

    ``error_model="numpy"``: numba's default (Python's) checks each division for a zero
    divisor and raises, which keeps the loop scalar: 0.1 ms for the 43,626 values of
    ``convarith train``'s model, NumPy's eleven passes 0.08, this loop 0.017."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def adam(variable, gradient, m, v, new_m, new_v, alpha, one_minus_beta_1,
             one_minus_beta_2, epsilon):
        for i in range(variable.size):
            g, m_i, v_i = gradient[i], m[i], v[i]
            m_new = m_i + (g - m_i) * one_minus_beta_1
            v_new = v_i + (g * g - v_i) * one_minus_beta_2
            new_m[i] = m_new
            new_v[i] = v_new
            variable[i] = variable[i] - (m_new * alpha) / (np.sqrt(v_new) + epsilon)

    return adam


class Optimizer:
    """Base class. Subclasses define ``update(key, variable, gradient)``, elementwise,
    on one flat group of variables (``key`` names its state slot)."""

    def __init__(self, learning_rate: float) -> None:
        self.learning_rate = _rate("learning_rate", learning_rate)
        self.iterations = 0
        self.state: State = {}
        # per layout: flat arrays rewritten every step (not state: never snapshotted)
        self._buffers: dict[Layout, dict[str, np.ndarray]] = {}

    def apply(self, variables: list[np.ndarray], gradients: list[np.ndarray]) -> None:
        """One step: update every variable in place from its gradient."""
        groups = self._gather(variables, gradients)
        for key, _, flat, flat_gradient in groups:
            self.update(key, flat, flat_gradient)
        self._scatter(groups)

    def apply_if_finite(self, variables: list[np.ndarray], gradients: list[np.ndarray]
                        ) -> str | None:
        """One step, taken only if every gradient and every updated value is finite.

        Returns ``None`` after the step. Otherwise nothing changes (variables, state
        slots, ``iterations``) and it returns ``"gradient"`` (a gradient holds NaN or
        inf) or ``"update"`` (the step would make a variable NaN or infinite): a
        training step's guard, without copying the weights and slots every step. The
        updated values are checked, once: a NaN or inf gradient makes its variable's
        update NaN or inf under every rule here (only then are the gradients read).

        >>> w = np.array([1.0], np.float32)
        >>> Adam().apply_if_finite([w], [np.array([np.nan], np.float32)]), w
        ('gradient', array([1.], dtype=float32))
        >>> SGD(1e38).apply_if_finite([w], [np.array([1e38], np.float32)]), w
        ('update', array([1.], dtype=float32))
        """
        groups = self._gather(variables, gradients)
        staged = [self.stage(key, flat, flat_gradient) for key, _, flat, flat_gradient in groups]
        saved = None if all(commit is not None for commit in staged) else self.snapshot()
        if saved is not None:
            for key, _, flat, flat_gradient in groups:
                self.update(key, flat, flat_gradient)
        if not all(_all_finite(flat) for _, _, flat, _ in groups):
            # the new slots were written aside (or are restored): nothing changed
            if saved is not None:
                self.restore(saved)
            finite = all(_all_finite(gradient) for *_, gradient in groups)
            return "update" if finite else "gradient"
        if saved is None:
            for commit in staged:
                assert commit is not None
                commit()
        self._scatter(groups)
        return None

    def stage(self, key: Layout, variable: np.ndarray, gradient: np.ndarray
              ) -> Callable[[], None] | None:
        """``update(key, variable, gradient)`` with the new state slots written aside, and
        the function that makes them the state; ``None`` (the default) where an
        optimizer cannot (``apply_if_finite`` then snapshots its state instead)."""
        return None

    def _gather(self, variables: list[np.ndarray], gradients: list[np.ndarray]
                ) -> list[tuple[Layout, list[np.ndarray], np.ndarray, np.ndarray]]:
        """Per dtype group: its key, its variables, and their values and gradients laid
        end to end (the flat buffers, rewritten)."""
        if len(variables) != len(gradients):
            raise ValueError(
                f"got {len(gradients)} gradients for {len(variables)} variables"
            )
        groups = []
        for key in flat_groups(variables):
            members = [variables[position] for position, _ in key[1]]
            flat, flat_gradient = self._flat_buffers(key, members[0].dtype,
                                                     sum(v.size for v in members))
            np.concatenate([v.reshape(-1) for v in members], out=flat)
            np.concatenate([gradients[position].reshape(-1) for position, _ in key[1]],
                           out=flat_gradient, casting="same_kind")
            groups.append((key, members, flat, flat_gradient))
        return groups

    def _scatter(self, groups: list[tuple[Layout, list[np.ndarray], np.ndarray, np.ndarray]]
                 ) -> None:
        """The updated flat values written back into the variables; one more step taken."""
        for _, members, flat, _ in groups:
            start = 0
            for variable in members:
                variable[...] = flat[start:start + variable.size].reshape(variable.shape)
                start += variable.size
        self.iterations += 1

    def _flat_buffers(self, key: Layout, dtype: np.dtype, size: int
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The flat variable and gradient of one group, allocated once per layout and
        reused every step (the values are all rewritten before they are read)."""
        buffers = self._buffers.get(key)
        if buffers is None:
            buffers = self._buffers[key] = {name: np.empty(size, dtype) for name in
                                            ("variable", "gradient", "scratch", "other")}
        return buffers["variable"], buffers["gradient"]

    def _scratch(self, key: Layout) -> tuple[np.ndarray, np.ndarray]:
        """Two more flat arrays of the group ``key`` for an update's intermediates."""
        buffers = self._buffers[key]
        return buffers["scratch"], buffers["other"]

    def update(self, key: Layout, variable: np.ndarray, gradient: np.ndarray) -> None:
        raise NotImplementedError

    def snapshot(self) -> tuple[int, State]:
        """The optimizer's state, copied (to restore after a failed step)."""
        return self.iterations, _copy_state(self.state)

    def restore(self, snapshot: tuple[int, State]) -> None:
        self.iterations, self.state = snapshot[0], _copy_state(snapshot[1])

    def get_config(self) -> dict[str, Any]:
        return {"learning_rate": self.learning_rate}


class SGD(Optimizer):
    """Stochastic gradient descent; Keras's defaults and update rule.

    With momentum: ``m = momentum * m - lr * g``; ``w += m`` (Nesterov:
    ``w += momentum * m - lr * g``).
    """

    def __init__(self, learning_rate: float = 0.01, momentum: float = 0.0,
                 nesterov: bool = False) -> None:
        super().__init__(learning_rate)
        self.momentum = _rate("momentum", momentum, 0.0, 1.0)
        if not isinstance(nesterov, bool):
            raise TypeError(f"nesterov must be True or False, got {nesterov!r}")
        self.nesterov = nesterov

    def update(self, key: Layout, variable: np.ndarray, gradient: np.ndarray) -> None:
        lr = variable.dtype.type(self.learning_rate)
        if self.momentum == 0:
            variable -= gradient * lr
            return
        momentum = variable.dtype.type(self.momentum)
        slot = self.state.setdefault(key, {"m": np.zeros_like(variable)})
        m = slot["m"]
        m[...] = m * momentum - gradient * lr
        if self.nesterov:
            variable += m * momentum - gradient * lr
        else:
            variable += m

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam with Keras's defaults (``epsilon=1e-7``) and update rule."""

    def __init__(self, learning_rate: float = 0.001, beta_1: float = 0.9, beta_2: float = 0.999,
                 epsilon: float = 1e-7) -> None:
        super().__init__(learning_rate)
        self.beta_1 = _rate("beta_1", beta_1, 0.0, 1.0)
        self.beta_2 = _rate("beta_2", beta_2, 0.0, 1.0)
        self.epsilon = _rate("epsilon", epsilon)

    def _constants(self, dtype: Any) -> tuple[Any, Any, Any, Any]:
        """``(alpha, 1 - beta_1, 1 - beta_2, epsilon)`` of this step in ``dtype``: Keras
        takes ``1 - beta`` in Python floats, then casts (float32(1 - 0.999) is 1.3e-5
        away from 1 - float32(0.999), enough to steer Adam elsewhere)."""
        step = dtype(self.iterations + 1)
        beta_1, beta_2 = dtype(self.beta_1), dtype(self.beta_2)
        alpha = dtype(self.learning_rate) * np.sqrt(1 - beta_2**step) / (1 - beta_1**step)
        return alpha, dtype(1 - self.beta_1), dtype(1 - self.beta_2), dtype(self.epsilon)

    def _slots(self, key: Layout, variable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot = self.state.setdefault(
            key, {"m": np.zeros_like(variable), "v": np.zeros_like(variable)}
        )
        return slot["m"], slot["v"]

    def update(self, key: Layout, variable: np.ndarray, gradient: np.ndarray) -> None:
        # the new slots aside, then swapped in: the compiled pass wants them apart
        self.stage(key, variable, gradient)()

    def stage(self, key: Layout, variable: np.ndarray, gradient: np.ndarray
              ) -> Callable[[], None]:
        m, v = self._slots(key, variable)
        aside = self._buffers[key]
        if "new_m" not in aside:
            aside["new_m"], aside["new_v"] = np.empty_like(m), np.empty_like(v)
        new_m, new_v = aside["new_m"], aside["new_v"]
        self._update_into(key, variable, gradient, m, v, new_m, new_v)

        def commit() -> None:  # the slots and the arrays aside trade places
            self.state[key] = {"m": new_m, "v": new_v}
            aside["new_m"], aside["new_v"] = m, v

        return commit

    def _update_into(self, key: Layout, variable: np.ndarray, gradient: np.ndarray,
                     m: np.ndarray, v: np.ndarray, new_m: np.ndarray, new_v: np.ndarray
                     ) -> None:
        """``variable`` updated in place; the new ``m`` and ``v`` written into ``new_m`` and
        ``new_v`` (which may be ``m`` and ``v``)."""
        alpha, one_minus_beta_1, one_minus_beta_2, epsilon = self._constants(variable.dtype.type)
        compiled = _compiled_adam() if variable.dtype in (np.float32, np.float64) else None
        arrays = (variable, gradient, m, v, new_m, new_v)
        if compiled is not None and all(a.ndim == 1 and a.dtype == variable.dtype
                                        for a in arrays) and not (
                np.may_share_memory(new_m, m) or np.may_share_memory(new_v, v)):
            compiled(variable, gradient, m, v, new_m, new_v, alpha, one_minus_beta_1,
                     one_minus_beta_2, epsilon)
            return
        scratch, denominator = self._scratch(key)
        np.subtract(gradient, m, out=scratch)
        scratch *= one_minus_beta_1
        np.add(m, scratch, out=new_m)
        np.multiply(gradient, gradient, out=scratch)
        scratch -= v
        scratch *= one_minus_beta_2
        np.add(v, scratch, out=new_v)
        np.sqrt(new_v, out=denominator)
        denominator += epsilon
        np.multiply(new_m, alpha, out=scratch)
        scratch /= denominator
        variable -= scratch

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta_1": self.beta_1, "beta_2": self.beta_2,
                "epsilon": self.epsilon}


class RMSprop(Optimizer):
    """RMSprop with Keras's defaults and update rule.

    ``v = rho·v + (1 - rho)·g²``; centered: ``a = rho·a + (1 - rho)·g`` and the
    denominator is ``√(v - a² + ε)``, else ``√(v + ε)``; the step ``lr·g / denominator``
    is taken directly, or through ``m = momentum·m + step`` when ``momentum > 0``.

    >>> w = np.array([1.0], np.float32)
    >>> RMSprop(learning_rate=0.1).apply([w], [np.array([2.0], np.float32)])
    >>> round(float(w[0]), 4)  # 1 - 0.1·2 / √(0.1·4 + 1e-7)
    0.6838
    """

    def __init__(self, learning_rate: float = 0.001, rho: float = 0.9, momentum: float = 0.0,
                 epsilon: float = 1e-7, centered: bool = False) -> None:
        super().__init__(learning_rate)
        self.rho = _rate("rho", rho, 0.0, 1.0)
        self.momentum = _rate("momentum", momentum, 0.0, 1.0)
        self.epsilon = _rate("epsilon", epsilon)
        if not isinstance(centered, bool):
            raise TypeError(f"centered must be True or False, got {centered!r}")
        self.centered = centered

    def update(self, key: Layout, variable: np.ndarray, gradient: np.ndarray) -> None:
        dtype = variable.dtype.type
        # the constants as Keras has them: computed in Python floats, then cast
        rho, one_minus_rho, epsilon = dtype(self.rho), dtype(1 - self.rho), dtype(self.epsilon)
        names = ["v"] + (["m"] if self.momentum > 0 else []) + (["a"] if self.centered else [])
        slot = self.state.setdefault(key, {name: np.zeros_like(variable) for name in names})
        v = slot["v"]
        v[...] = rho * v + one_minus_rho * (gradient * gradient)
        if self.centered:
            a = slot["a"]
            a[...] = rho * a + one_minus_rho * gradient
            denominator = v - a * a + epsilon
        else:
            denominator = v + epsilon
        increment = dtype(self.learning_rate) * gradient / np.sqrt(denominator)
        if self.momentum > 0:
            m = slot["m"]
            m[...] = dtype(self.momentum) * m + increment
            variable -= m
        else:
            variable -= increment

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "rho": self.rho, "momentum": self.momentum,
                "epsilon": self.epsilon, "centered": self.centered}


_NAMES: dict[str, Callable[[], Optimizer]] = {"sgd": SGD, "adam": Adam, "rmsprop": RMSprop}


def get(identifier: str | Optimizer) -> Optimizer:
    """A fresh optimizer named ``identifier`` with Keras's defaults, or the object given.

    >>> get("adam").learning_rate
    0.001
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _NAMES:
        return _NAMES[identifier.lower()]()
    raise ValueError(f"optimizer must be one of {tuple(_NAMES)} or an Optimizer, got {identifier!r}")
