"""Training callbacks with Keras 3's arguments and rules: ``EarlyStopping``,
``ReduceLROnPlateau``, ``ModelCheckpoint``.

``fit(..., callbacks=[...])`` calls ``on_train_begin``, ``on_epoch_end(epoch,
logs)`` after each epoch (``logs`` holds ``loss``, ``accuracy``, ``val_...``;
with several outputs also ``<output>_loss``, ``<output>_accuracy``, so
``monitor="val_<output>_loss"`` watches one output) and ``on_train_end``; a
callback stops training by setting ``model.stop_training``.

Examples
--------
>>> stop = EarlyStopping(monitor="loss", patience=1)
>>> class Toy:
...     stop_training = False
>>> stop.set_model(Toy()); stop.on_train_begin()
>>> for epoch, loss in enumerate([1.0, 0.9, 0.95, 0.97]):
...     stop.on_epoch_end(epoch, {"loss": loss})
...     if stop.model.stop_training:
...         break
>>> stop.stopped_epoch
2
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

__all__ = ["Callback", "EarlyStopping", "ReduceLROnPlateau", "ModelCheckpoint"]


class Callback:
    """Base class: override the hooks you need."""

    model: Any = None

    def set_model(self, model: Any) -> None:
        self.model = model

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        """Before the first epoch."""

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        """After each epoch, with its metrics."""

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        """After the last epoch."""


def _mode(name: str, mode: str, monitor: str) -> str:
    if mode not in ("auto", "min", "max"):
        raise ValueError(f"{name}: mode must be 'auto', 'min' or 'max', got {mode!r}")
    if mode == "auto":
        return "max" if "acc" in monitor else "min"
    return mode


def _monitored(name: str, monitor: str, logs: dict[str, float] | None) -> float | None:
    value = (logs or {}).get(monitor)
    if value is None:
        import warnings

        warnings.warn(f"{name}: the metric {monitor!r} is not in the epoch's logs "
                      f"({', '.join(sorted(logs or {})) or 'none'}); pass validation data for "
                      "val_ metrics", stacklevel=3)
    return value


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs;
    ``restore_best_weights`` puts back the best epoch's weights (Keras 3's rules)."""

    def __init__(self, monitor: str = "val_loss", min_delta: float = 0.0, patience: int = 0,
                 verbose: int = 0, mode: str = "auto", baseline: float | None = None,
                 restore_best_weights: bool = False, start_from_epoch: int = 0) -> None:
        self.monitor = monitor
        self.mode = _mode("EarlyStopping", mode, monitor)
        self.min_delta = abs(float(min_delta)) * (1 if self.mode == "max" else -1)
        self.patience, self.verbose = int(patience), int(verbose)
        self.baseline, self.restore_best_weights = baseline, bool(restore_best_weights)
        self.start_from_epoch = int(start_from_epoch)
        self.on_train_begin()

    def _better(self, value: float, reference: float | None) -> bool:
        if reference is None:
            return True
        if self.mode == "max":
            return value - self.min_delta > reference
        return value - self.min_delta < reference

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.wait, self.stopped_epoch, self.best_epoch = 0, 0, 0
        self.best: float | None = None
        self.best_weights: list[np.ndarray] | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = _monitored("EarlyStopping", self.monitor, logs)
        if current is None or epoch < self.start_from_epoch:
            return
        if self.restore_best_weights and self.best_weights is None:
            self.best_weights = self.model.get_weights()
        self.wait += 1
        if self._better(current, self.best):
            self.best, self.best_epoch = current, epoch
            if self.restore_best_weights:
                self.best_weights = self.model.get_weights()
            if self.baseline is None or self._better(current, self.baseline):
                self.wait = 0
            return
        if self.wait >= self.patience and epoch > 0:
            self.stopped_epoch = epoch
            self.model.stop_training = True

    def on_train_end(self, logs: dict[str, float] | None = None) -> None:
        if self.stopped_epoch and self.verbose:
            print(f"Epoch {self.stopped_epoch + 1}: early stopping")
        if self.restore_best_weights and self.best_weights is not None and self.stopped_epoch:
            self.model.set_weights(self.best_weights)


class ReduceLROnPlateau(Callback):
    """Multiplies the learning rate by ``factor`` when ``monitor`` stalls for ``patience``
    epochs (then waits ``cooldown`` epochs), never below ``min_lr`` (Keras 3's rules)."""

    def __init__(self, monitor: str = "val_loss", factor: float = 0.1, patience: int = 10,
                 verbose: int = 0, mode: str = "auto", min_delta: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0) -> None:
        if not 0 <= factor < 1:
            raise ValueError(f"ReduceLROnPlateau: factor must be in [0, 1), got {factor!r}")
        self.monitor, self.factor, self.patience = monitor, float(factor), int(patience)
        self.verbose, self.min_delta, self.cooldown = int(verbose), float(min_delta), int(cooldown)
        self.min_lr = float(min_lr)
        self.mode = _mode("ReduceLROnPlateau", mode, monitor)
        self.on_train_begin()

    def on_train_begin(self, logs: dict[str, float] | None = None) -> None:
        self.best = -math.inf if self.mode == "max" else math.inf
        self.wait = self.cooldown_counter = 0

    def _better(self, value: float) -> bool:
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        current = _monitored("ReduceLROnPlateau", self.monitor, logs)
        optimizer = self.model.optimizer
        if logs is not None:
            logs["learning_rate"] = float(optimizer.learning_rate)
        if current is None:
            return
        if self.cooldown_counter > 0:
            self.cooldown_counter -= 1
            self.wait = 0
        if self._better(current):
            self.best, self.wait = current, 0
        elif self.cooldown_counter <= 0:
            self.wait += 1
            if self.wait >= self.patience and optimizer.learning_rate > self.min_lr:
                optimizer.learning_rate = max(optimizer.learning_rate * self.factor, self.min_lr)
                if self.verbose:
                    print(f"Epoch {epoch + 1}: ReduceLROnPlateau reducing learning rate to "
                          f"{optimizer.learning_rate}.")
                self.cooldown_counter, self.wait = self.cooldown, 0


class ModelCheckpoint(Callback):
    """Saves the model (:func:`convarith.nn.save_model`, a ``.npz`` file) after each epoch,
    or only when ``monitor`` improves with ``save_best_only``. ``filepath`` may hold
    ``{epoch}`` and log keys, e.g. ``"ckpt-{epoch:02d}-{val_loss:.2f}.npz"``."""

    def __init__(self, filepath: str, monitor: str = "val_loss", verbose: int = 0,
                 save_best_only: bool = False, save_weights_only: bool = False,
                 mode: str = "auto", save_freq: str = "epoch",
                 initial_value_threshold: float | None = None) -> None:
        if save_freq != "epoch":
            raise ValueError(f"ModelCheckpoint: save_freq={save_freq!r} is not implemented; "
                             "convarith saves once per epoch (save_freq='epoch')")
        if save_weights_only:
            raise ValueError("ModelCheckpoint: save_weights_only=True is not implemented; "
                             "convarith saves the whole model (architecture and weights)")
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(".npz"):
            raise ValueError(f"ModelCheckpoint: filepath must end in '.npz' (convarith's model "
                             f"file), got {filepath!r}")
        self.monitor, self.verbose, self.save_best_only = monitor, int(verbose), save_best_only
        self.mode = _mode("ModelCheckpoint", mode, monitor)
        self.best = initial_value_threshold
        self.saved: list[str] = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
        logs = logs or {}
        if self.save_best_only:
            current = _monitored("ModelCheckpoint", self.monitor, logs)
            if current is None:
                return
            better = self.best is None or (current > self.best if self.mode == "max"
                                           else current < self.best)
            if not better:
                return
            self.best = current
        path = self.filepath.format(epoch=epoch + 1, **logs)
        from .io import save_model

        save_model(self.model, path, overwrite=True)
        self.saved.append(path)
        if self.verbose:
            print(f"Epoch {epoch + 1}: saved the model to {path}")
