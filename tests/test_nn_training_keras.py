"""Regularizers, constraints and callbacks against real Keras: the same model and initial
weights, SGD steps compared loss for loss and weight for weight."""

from __future__ import annotations

import numpy as np
import pytest

from convarith import nn

keras = pytest.importorskip("keras")


def _model(lib: object) -> object:
    L = lib.layers if lib is keras else lib  # type: ignore[attr-defined]
    R = lib.regularizers  # type: ignore[attr-defined]
    C = lib.constraints  # type: ignore[attr-defined]
    return lib.Sequential([  # type: ignore[attr-defined]
        lib.Input((6, 6, 2)),  # type: ignore[attr-defined]
        L.Conv2D(3, 3, activation="relu", kernel_regularizer=R.L2(0.05),
                 bias_regularizer=R.L1(0.02), activity_regularizer=R.L1(0.01),
                 kernel_constraint=C.MaxNorm(0.8, axis=[0, 1, 2]), bias_constraint=C.NonNeg()),
        L.Flatten(),
        L.Dense(4, kernel_regularizer=R.L1L2(l1=0.01, l2=0.03),
                kernel_constraint=C.UnitNorm(axis=0)),
    ])


def test_regularizers_and_constraints_train_like_keras() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    y = rng.standard_normal((8, 4)).astype(np.float32)
    theirs, ours = _model(keras), _model(nn)
    ours.set_weights(theirs.get_weights())
    theirs.compile(keras.optimizers.SGD(0.1), "mse")
    ours.compile(nn.SGD(0.1), "mse")
    for step in range(3):
        expected = float(theirs.train_on_batch(x, y))
        got = float(ours.train_on_batch(x, y))
        assert got == pytest.approx(expected, rel=1e-4), f"step {step}"
        for a, b in zip(ours.get_weights(), theirs.get_weights()):
            np.testing.assert_allclose(a, np.asarray(b), rtol=1e-4, atol=1e-6)


def test_regularized_config_matches_keras() -> None:
    theirs, ours = _model(keras), _model(nn)
    for a, b in zip(ours.layers, theirs.layers):
        config, expected = a.get_config(), b.get_config()
        config["name"] = expected["name"]
        assert config == expected
        assert type(a).from_config(a.get_config()).get_config() == a.get_config()


def test_early_stopping_and_reduce_lr_follow_keras_rules(tmp_path) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((64, 6, 6, 2)).astype(np.float32)
    y = rng.standard_normal((64, 4)).astype(np.float32)
    model = _model(nn)
    model.compile(nn.SGD(0.05), "mse")
    stop = nn.callbacks.EarlyStopping(monitor="val_loss", patience=1, min_delta=10.0,
                                      restore_best_weights=True)
    reduce = nn.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=0,
                                            min_delta=10.0)
    checkpoint = nn.callbacks.ModelCheckpoint(str(tmp_path / "m-{epoch}.npz"))
    history = model.fit(x, y, epochs=10, verbose=0, validation_split=0.25,
                        callbacks=[stop, reduce, checkpoint])
    # min_delta=10 means no epoch improves: stop after patience + 1 epochs, as Keras does
    assert len(history.epoch) == 2 and stop.stopped_epoch == 1
    assert model.optimizer.learning_rate == pytest.approx(0.05 * 0.5 ** 1)
    assert len(checkpoint.saved) == 2
    assert nn.load_model(checkpoint.saved[0]).count_params() == model.count_params()


def test_keras_callbacks_stop_at_the_same_epoch() -> None:
    """EarlyStopping on a fixed sequence of losses: Keras's callback and ours agree."""
    losses = [1.0, 0.8, 0.81, 0.79, 0.795, 0.9, 0.7, 0.71, 0.72, 0.73]
    for patience in (0, 1, 2):
        for min_delta in (0.0, 0.015):
            stops = []
            for callback in (keras.callbacks.EarlyStopping(monitor="loss", patience=patience,
                                                           min_delta=min_delta),
                             nn.callbacks.EarlyStopping(monitor="loss", patience=patience,
                                                        min_delta=min_delta)):
                class Holder:
                    stop_training = False
                holder = Holder()
                callback.set_model(holder)  # type: ignore[arg-type]
                callback.on_train_begin()
                for epoch, loss in enumerate(losses):
                    callback.on_epoch_end(epoch, {"loss": loss})
                    if holder.stop_training:
                        break
                stops.append(epoch)
            assert stops[0] == stops[1], (patience, min_delta, stops)
