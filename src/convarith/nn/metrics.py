"""Metrics that ``compile(metrics=...)`` accepts, computed as Keras 3 computes them.

Each metric maps ``(y_true, y_pred)`` to one value per sample; ``fit`` and
``evaluate`` report their mean over the samples seen. ``"accuracy"`` (or
``"acc"``) picks binary, sparse categorical or categorical accuracy from the
shapes, by Keras's rule (``compile_utils.get_metric``): a last axis of 1 in
the prediction is binary; targets of lower rank than the prediction, or a
last axis of 1 against several classes, are sparse labels.

:func:`compile_metrics` reads ``compile``'s ``metrics`` argument for a model
with named outputs: one list for a single output, or a list of lists / a dict
by output name for several; the logged names are Keras's (``accuracy`` for
one output, ``<output>_accuracy`` for several).

Examples
--------
>>> import numpy as np
>>> accuracy = metric_function("accuracy", np.array([2, 0]), np.array([[0.1, 0.2, 0.7],
...                                                                   [0.3, 0.6, 0.1]]))
>>> accuracy(np.array([2, 0]), np.array([[0.1, 0.2, 0.7], [0.3, 0.6, 0.1]]))
array([1., 0.])
>>> compile_metrics({"b": ["mae"]}, ["a", "b"]).log_names
['b_mae']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["METRIC_NAMES", "OutputMetric", "CompiledMetrics", "compile_metrics",
           "metric_function"]

MetricFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _per_sample(values: np.ndarray) -> np.ndarray:
    """Mean over every axis but the batch (each sample has as many values as the others)."""
    values = np.asarray(values, dtype=np.float64)
    return values.reshape(len(values), -1).mean(axis=1) if values.ndim > 1 else values


def binary_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``y_true == (y_pred > 0.5)``, averaged over the last axis (Keras's threshold)."""
    y_true = np.asarray(y_true).reshape(y_pred.shape)
    return _per_sample(np.mean(y_true == (y_pred > 0.5), axis=-1))


def sparse_categorical_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``argmax(y_pred) == label``."""
    labels = np.asarray(y_true).reshape(y_pred.shape[:-1])
    return _per_sample(y_pred.argmax(axis=-1) == labels)


def categorical_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """``argmax(y_pred) == argmax(y_true)``."""
    return _per_sample(y_pred.argmax(axis=-1) == np.asarray(y_true).argmax(axis=-1))


def mean_absolute_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return _per_sample(np.abs(y_pred - np.asarray(y_true).reshape(y_pred.shape)))


def mean_squared_error(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    return _per_sample((y_pred - np.asarray(y_true).reshape(y_pred.shape)) ** 2)


_FUNCTIONS: dict[str, MetricFunction] = {
    "binary_accuracy": binary_accuracy,
    "sparse_categorical_accuracy": sparse_categorical_accuracy,
    "categorical_accuracy": categorical_accuracy,
    "mae": mean_absolute_error,
    "mean_absolute_error": mean_absolute_error,
    "mse": mean_squared_error,
    "mean_squared_error": mean_squared_error,
}

METRIC_NAMES = ("accuracy", "acc", *_FUNCTIONS)


def metric_function(name: str, y_true: np.ndarray, y_pred: np.ndarray) -> MetricFunction:
    """The function for metric ``name``; ``"accuracy"`` is chosen from the shapes as Keras does."""
    if name.lower() not in ("accuracy", "acc"):
        return _FUNCTIONS[name.lower()]
    y_true = np.asarray(y_true)
    if y_pred.shape[-1] == 1:
        return binary_accuracy
    if y_true.ndim < y_pred.ndim or (y_true.shape[-1] == 1 and y_pred.shape[-1] > 1):
        return sparse_categorical_accuracy
    return categorical_accuracy


@dataclass(frozen=True)
class OutputMetric:
    """One metric of one output: the output's position, the metric's name as given, and the
    name it is logged under."""

    output: int
    name: str
    log_name: str

    def __call__(self, y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
        """One value per sample."""
        return metric_function(self.name, y_true, y_pred)(y_true, y_pred)


@dataclass(frozen=True)
class CompiledMetrics:
    """Every metric of a compiled model, in Keras's order (outputs in order, then each
    output's metrics as given)."""

    metrics: tuple[OutputMetric, ...] = ()

    @property
    def log_names(self) -> list[str]:
        return [metric.log_name for metric in self.metrics]

    @property
    def outputs(self) -> set[int]:
        """The outputs that some metric reads (their targets are needed)."""
        return {metric.output for metric in self.metrics}

    def per_sample(self, y_true: Sequence[Any], y_pred: Sequence[np.ndarray]
                   ) -> dict[str, np.ndarray]:
        return {m.log_name: m(y_true[m.output], y_pred[m.output]) for m in self.metrics}


def _names(argument: str, value: Any) -> list[str]:
    """One output's metrics: a name or a list of names (``None``: none)."""
    if value is None:
        return []
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"{argument} must be a metric name or a list of names (one of "
                        f"{', '.join(METRIC_NAMES)}), got {value!r}")
    for name in names:
        if name.lower() not in METRIC_NAMES:
            raise ValueError(f"{argument}: unknown metric {name!r}; convarith computes "
                             f"{', '.join(METRIC_NAMES)}")
    return list(names)


def compile_metrics(metrics: Any, output_names: Sequence[str]) -> CompiledMetrics:
    """Read ``compile``'s ``metrics`` for a model whose outputs are ``output_names``.

    One output: a list of names (a dict by that output's name is accepted too).
    Several outputs: a list with one entry per output (a name, a list of names or
    ``None``), or a dict from output names to such entries; outputs left out get
    none. Names are logged as Keras logs them: as given for one output,
    ``<output>_<name>`` for several, a repeated name getting ``_1``, ``_2``...
    """
    outputs = list(output_names)
    listed = ", ".join(outputs)
    if metrics is None:
        return CompiledMetrics()
    if not isinstance(metrics, (list, tuple, dict)):
        raise TypeError(f"metrics must be a list (or a dict by output name), got {metrics!r}; "
                        f"write metrics=[{metrics!r}]")
    per_output: list[list[str]]
    if isinstance(metrics, dict):
        unknown = [key for key in metrics if key not in outputs]
        if unknown:
            raise ValueError(f"metrics has keys {unknown} that are not outputs of the model "
                             f"({listed})")
        per_output = [_names(f"metrics[{name!r}]", metrics.get(name)) for name in outputs]
    elif len(outputs) == 1:
        flat: list[str] = []
        for index, entry in enumerate(metrics):
            flat += _names(f"metrics[{index}]", entry)
        per_output = [flat]
    else:
        if len(metrics) != len(outputs):
            raise ValueError(
                f"metrics has {len(metrics)} entries but the model has {len(outputs)} outputs "
                f"({listed}): give one entry per output, e.g. metrics="
                f"{[['accuracy']] + [[] for _ in outputs[1:]]}, or a dict by output name")
        per_output = [_names(f"metrics[{index}]", entry) for index, entry in enumerate(metrics)]
    result: list[OutputMetric] = []
    taken: dict[str, int] = {}
    for index, names in enumerate(per_output):
        for name in names:
            log_name = name if len(outputs) == 1 else f"{outputs[index]}_{name}"
            if log_name in taken:
                taken[log_name] += 1
                log_name = f"{log_name}_{taken[log_name] - 1}"
            else:
                taken[log_name] = 1
            result.append(OutputMetric(index, name, log_name))
    return CompiledMetrics(tuple(result))
