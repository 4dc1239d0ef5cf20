"""Data parallelism inside a training step: each half of the batch on its own core.

A training step of a small network is dozens of engine calls of a few hundred
microseconds each. Shared among threads call by call, each of them pays a
hand-off and a wait for the slower thread, and most are too small to be shared at
all. Here the batch is cut in two halves instead: each half's forward pass runs as
one task on one thread (the caller, or one of the engine's kept helper threads,
through :func:`convarith.engine.run_chunks`), every engine call inside on that
thread alone; the loss and its gradient are computed on the whole batch; each
half's backward pass runs as one task again; each weight's gradient is the first
half's plus the second's. Two hand-offs a step instead of one a layer.

The result does not depend on which thread runs which half (each half is computed
on one thread, and the sum is always first half + second half), and equals the
whole batch's gradient up to float rounding. It applies to a
:class:`~convarith.nn.Sequential` whose layers treat every sample on its own
(:data:`SAMPLE_WISE_LAYERS`: no batch normalization, no dropout, no activity
regularizer) with at least :data:`MIN_HALF_SAMPLES` samples a half, when the
engine may use two threads (:func:`convarith.engine.worker_count`), and only where
the model's ``split_batches`` is on: each engine call gives Python's GIL up and takes
it back around each of its compiled calls, and with two threads doing so at once
every take-back waits for the other thread; on the models of
``scripts/compare_train_keras.py`` a split step took 1.0-3.4x a whole step's time
(``docs/training-speed.md``).

Examples
--------
>>> import numpy as np
>>> from convarith import nn
>>> model = nn.Sequential([nn.Input(shape=(6, 6, 1)), nn.Conv2D(2, 3, activation="relu"),
...                        nn.Flatten(), nn.Dense(3)], seed=0)
>>> halves = BatchHalves.for_layers(model.layers, batch=32)
>>> halves is not None
True
>>> x = np.random.default_rng(0).random((32, 6, 6, 1), dtype=np.float32)
>>> bool(np.allclose(halves.forward(x, threads=1), model.forward(x), atol=1e-6))
True
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import layers as layers_module
from . import reshaping
from .layers import Layer

__all__ = ["BatchHalves", "SAMPLE_WISE_LAYERS", "MIN_HALF_SAMPLES", "splits_batch"]

#: Layers whose outputs and gradients for one sample read only that sample (and the
#: weights), so a batch may be cut and each part run on its own: not
#: ``BatchNormalization`` (batch statistics), not ``Dropout`` (its random masks are
#: drawn for the whole batch in order).
SAMPLE_WISE_LAYERS: tuple[type[Layer], ...] = (
    layers_module.InputLayer, layers_module._Conv, layers_module._Pooling,
    layers_module.Flatten, layers_module.Dense, layers_module.Activation,
    reshaping._ZeroPadding, reshaping._Cropping, reshaping._UpSampling,
    reshaping._GlobalPooling, reshaping.Reshape, reshaping.Permute,
)

#: Fewest samples a half: below it a half's engine calls are mostly fixed costs
#: (planning, layouts) that the split would pay twice.
MIN_HALF_SAMPLES = 8


def splits_batch(layers: Sequence[Layer], batch: int) -> bool:
    """Whether a training step of ``layers`` on ``batch`` samples may run as two halves.

    >>> from convarith import nn
    >>> splits_batch([nn.Dense(2), nn.Dropout(0.5)], 64), splits_batch([nn.Dense(2)], 8)
    (False, False)
    >>> splits_batch([nn.Dense(2)], 16)
    True
    """
    return batch >= 2 * MIN_HALF_SAMPLES and bool(layers) and all(
        isinstance(layer, SAMPLE_WISE_LAYERS) and layer.activity_regularizer is None
        for layer in layers)


@dataclass
class BatchHalves:
    """Two replicas of a model's layers that share its weights (the same arrays) and
    keep their own activations and gradients; :meth:`forward` and :meth:`backward`
    run the two halves of a batch, :meth:`backward` writes the summed gradients into
    the model's layers."""

    layers: list[Layer]
    replicas: tuple[list[Layer], list[Layer]]

    @classmethod
    def for_layers(cls, layers: Sequence[Layer], batch: int) -> BatchHalves | None:
        """Replicas of ``layers`` (built), or ``None`` where :func:`splits_batch` refuses."""
        if not splits_batch(layers, batch) or not all(layer.built for layer in layers):
            return None
        return cls(list(layers), (_replicas(layers), _replicas(layers)))

    def matches(self, layers: Sequence[Layer]) -> bool:
        """Whether these replicas still mirror ``layers`` (the same layers, sharing the
        same weight arrays)."""
        return len(layers) == len(self.layers) and all(
            mine is theirs and all(r.variables is theirs.variables for r in pair)
            for mine, theirs, *pair in zip(self.layers, layers, *self.replicas))

    def forward(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """The training forward pass of ``x``, each half on one thread (``threads=1``:
        both on this one); the halves keep what their backward pass needs."""
        cut = _cut(len(x))
        parts = [x[:cut], x[cut:]]

        def run(replica: list[Layer], part: np.ndarray) -> np.ndarray:
            for layer in replica:
                part = layer.forward(part, training=True, keep=True)
            return part

        outputs = _each_half(run, self.replicas, parts, threads)
        return np.concatenate(outputs)

    def backward(self, d_out: np.ndarray, threads: int | None = None) -> None:
        """Back-propagate ``d_out`` (the gradient of the whole batch's loss) through
        both halves; each layer's ``grads`` become the first half's plus the second's."""
        cut = _cut(len(d_out))
        parts = [d_out[:cut], d_out[cut:]]

        def run(replica: list[Layer], part: np.ndarray) -> None:
            for index in reversed(range(len(replica))):
                if index == 0:
                    replica[0].backward_weights(part)
                else:
                    part = replica[index].backward(part)

        _each_half(run, self.replicas, parts, threads)
        first, second = self.replicas
        for layer, one, other in zip(self.layers, first, second):
            layer.grads = {name: one.grads[name] + other.grads[name] for name in one.grads}
            one.grads, other.grads = {}, {}


def _cut(count: int) -> int:
    """Where the batch is cut: the first half takes the odd sample."""
    return (count + 1) // 2


def _replicas(layers: Sequence[Layer]) -> list[Layer]:
    """Shallow copies of ``layers``: the same configuration and weight arrays (the
    ``variables`` dict itself is shared), their own activations and gradients."""
    replicas = []
    for layer in layers:
        replica = copy.copy(layer)
        replica._cache = None
        replica.grads = {}
        replicas.append(replica)
    return replicas


def _each_half(run: Any, replicas: tuple[list[Layer], list[Layer]],
               parts: list[np.ndarray], threads: int | None) -> list[Any]:
    """``run(replica, part)`` for both halves, as one task each on up to two threads;
    every engine call inside a task runs on that task's thread alone."""
    from .. import engine

    def task(start: int, stop: int) -> Any:
        with engine.thread_limit(1):
            return run(replicas[start], parts[start])

    return engine.run_chunks(task, 2, 1, threads=2 if threads is None else threads,
                             blas=False)
