"""fit / evaluate / predict of functional models with several inputs and outputs, held to
Keras 3 (JAX backend) on identical initial weights: per-output losses, the weighted total,
metrics, the History keys, evaluate's list and dict, validation, callbacks; list and dict
forms of every argument give the same training; bad arguments get one clear line."""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import pytest

from convarith import nn

keras = pytest.importorskip("keras")

SEED = 19


def _two_heads(lib: Any) -> Any:
    """Two inputs (an image and a vector), a conv trunk shared by two heads: a softmax
    classifier and a linear regressor."""
    L = lib.layers if lib is keras else lib
    image = lib.Input((6, 6, 1), name="img")
    aux = lib.Input((3,), name="aux")
    x = L.Conv2D(4, 3, activation="relu", name="trunk")(image)
    x = L.Conv2D(4, 3, padding="same", activation="relu", name="trunk2")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    x = L.Concatenate(name="cat")([x, aux])
    cls = L.Dense(3, activation="softmax", name="cls")(x)
    reg = L.Dense(2, name="reg")(x)
    return lib.Model([image, aux], [cls, reg], name="two_heads")


def _data(count: int, seed: int = SEED) -> tuple[list[Any], list[Any]]:
    rng = np.random.default_rng(seed)
    x = [rng.standard_normal((count, 6, 6, 1)).astype(np.float32),
         rng.standard_normal((count, 3)).astype(np.float32)]
    y = [rng.integers(0, 3, count), rng.standard_normal((count, 2)).astype(np.float32)]
    return x, y


def _pair() -> tuple[Any, Any]:
    ours, theirs = _two_heads(nn), _two_heads(keras)
    for layer in ours.layers:
        if layer.get_weights():
            theirs.get_layer(layer.name).set_weights(layer.get_weights())
    return ours, theirs


def _same_weights(ours: Any, theirs: Any, when: str) -> None:
    for layer in ours.layers:
        for mine, reference in zip(layer.get_weights(),
                                   theirs.get_layer(layer.name).get_weights()):
            np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-6,
                                       err_msg=f"{layer.name} {when} (seed {SEED})")


def _same_logs(ours: dict, theirs: dict, when: str) -> None:
    assert list(ours) == list(theirs), f"{when}: keys {list(ours)} != Keras's {list(theirs)}"
    for key in theirs:
        np.testing.assert_allclose(ours[key], theirs[key], rtol=1e-4, atol=1e-6,
                                   err_msg=f"{key} {when} (seed {SEED})")


COMPILE: dict[str, Any] = dict(loss=["sparse_categorical_crossentropy", "mse"], loss_weights=[1.0, 0.3],
               metrics=[["accuracy"], ["mae", "mse"]])


def test_two_inputs_two_outputs_train_like_keras() -> None:
    """SGD, partial last batch, no shuffling: every logged value (total, per-output losses,
    metrics, validation) and the weights after each epoch equal Keras's; so do evaluate
    (list and dict) and predict."""
    x, y = _data(10)
    x_val, y_val = _data(5, seed=SEED + 1)
    ours, theirs = _pair()
    ours.compile(nn.SGD(0.1), **COMPILE)
    theirs.compile(keras.optimizers.SGD(0.1), **COMPILE)
    runs: list[dict[str, Any]] = [dict(validation_data=(x_val, y_val)),
                                  dict(validation_split=0.2), {}]
    for epoch, extra in enumerate(runs, start=1):
        got = ours.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, **extra)
        expected = theirs.fit(x, y, batch_size=4, epochs=1, verbose=0, shuffle=False, **extra)
        _same_logs(got.history, expected.history, f"epoch {epoch} {list(extra)}")
        _same_weights(ours, theirs, f"after epoch {epoch}")
    got_list = ours.evaluate(x_val, y_val)
    expected_list = theirs.evaluate(x_val, y_val, verbose=0)
    assert len(got_list) == len(expected_list) == 6
    np.testing.assert_allclose(got_list, expected_list, rtol=1e-4, atol=1e-6)
    _same_logs(ours.evaluate(x_val, y_val, return_dict=True),
               theirs.evaluate(x_val, y_val, verbose=0, return_dict=True), "evaluate")
    _same_logs(ours.train_on_batch(x_val, y_val, return_dict=True),
               theirs.train_on_batch(x_val, y_val, return_dict=True), "train_on_batch")
    _same_weights(ours, theirs, "after train_on_batch")
    np.testing.assert_allclose(ours.train_on_batch(x, y), theirs.train_on_batch(x, y),
                               rtol=1e-4, atol=1e-6)
    got_pred = ours.predict(x_val)
    expected_pred = theirs.predict(x_val, verbose=0)
    assert isinstance(got_pred, list) and len(got_pred) == 2
    for mine, reference in zip(got_pred, expected_pred):
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-6)


def test_one_loss_for_all_outputs_and_an_output_without_loss_like_keras() -> None:
    """``loss="mse"`` on both outputs logs each output's loss; a ``None`` entry leaves one
    loss, so only ``loss`` is logged and evaluate returns a float, as in Keras."""
    x, y = _data(8)
    one_hot = [np.eye(3, dtype=np.float32)[y[0]], y[1]]
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        (dict(loss="mse"), one_hot), (dict(loss=[None, "mse"], metrics=[None, ["mae"]]), y)]
    if os.environ.get("CI") == "true":  # each Keras model compiles its steps: one case in CI
        cases = cases[1:]
    for compile_args, targets in cases:
        ours, theirs = _pair()
        ours.compile(nn.SGD(0.05), **compile_args)
        theirs.compile(keras.optimizers.SGD(0.05), **compile_args)
        got = ours.fit(x, targets, batch_size=3, epochs=2, verbose=0, shuffle=False)
        expected = theirs.fit(x, targets, batch_size=3, epochs=2, verbose=0, shuffle=False)
        _same_logs(got.history, expected.history, f"compile {compile_args}")
        _same_weights(ours, theirs, f"compile {compile_args}")
        np.testing.assert_allclose(ours.evaluate(x, targets),
                                   theirs.evaluate(x, targets, verbose=0), rtol=1e-4)


def test_dict_and_list_forms_train_identically() -> None:
    """x, y, loss, loss_weights and metrics by name (dicts in another order than the
    model's) give the very same History and weights as the lists."""
    x, y = _data(9)
    as_list, as_dict = _two_heads(nn), _two_heads(nn)
    as_dict.set_weights(as_list.get_weights())
    as_list.compile(nn.SGD(0.1), **COMPILE)
    as_dict.compile(nn.SGD(0.1),
                    loss={"reg": "mse", "cls": "sparse_categorical_crossentropy"},
                    loss_weights={"reg": 0.3, "cls": 1.0},
                    metrics={"reg": ["mae", "mse"], "cls": ["accuracy"]})
    x_dict = {"aux": x[1], "img": x[0]}
    y_dict = {"reg": y[1], "cls": y[0]}
    first = as_list.fit(x, tuple(y), batch_size=4, epochs=2, verbose=0, shuffle=False,
                        validation_data=(x, y))
    second = as_dict.fit(x_dict, y_dict, batch_size=4, epochs=2, verbose=0, shuffle=False,
                         validation_data=(x_dict, y_dict))
    assert first.history == second.history
    for a, b in zip(as_list.get_weights(), as_dict.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert as_list.evaluate(x, y) == as_dict.evaluate(x_dict, y_dict)
    for a, b in zip(as_list.predict(x), as_dict.predict(x_dict)):
        np.testing.assert_array_equal(a, b)


def test_early_stopping_on_one_output_stops_like_keras() -> None:
    """EarlyStopping on ``val_reg_loss`` finds it in the epoch's logs (no warning) and stops
    at Keras's epoch, with Keras's History."""
    x, y = _data(10)
    ours, theirs = _pair()
    ours.compile(nn.SGD(0.3), **COMPILE)
    theirs.compile(keras.optimizers.SGD(0.3), **COMPILE)
    # Keras's mode="auto" cannot tell the direction of a per-output name: say "min"
    args: dict[str, Any] = dict(epochs=12, batch_size=4, verbose=0, shuffle=False,
                                validation_split=0.3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ours.fit(x, y, callbacks=[nn.callbacks.EarlyStopping(
            monitor="val_reg_loss", patience=1, mode="min")], **args)
    assert len(got.history["loss"]) < 12
    if os.environ.get("CI") == "true":  # Keras compiles three more step shapes: not in CI
        return
    expected = theirs.fit(x, y, callbacks=[keras.callbacks.EarlyStopping(
        monitor="val_reg_loss", patience=1, mode="min")], **args)
    _same_logs(got.history, expected.history, "early stopping")


@pytest.mark.parametrize(("compile_args", "message"), [
    (dict(loss=["mse", "mse", "mse"]),
     r"^loss has 3 entries but the model has 2 outputs \(cls, reg\)$"),
    (dict(loss={"cls": "mse", "rg": "mse"}),
     r"^loss has keys \['cls', 'rg'\] but the model has 2 outputs \(cls, reg\); "
     r"unknown: \['rg'\]; missing: \['reg'\]"),
    (dict(loss=["mse", "hinge"]), r"^loss\[1\]: loss must be one of"),
    (dict(loss=[None, None]), r"no output a loss"),
    (dict(loss=["mse", "mse"], loss_weights=[1.0]),
     r"^loss_weights has 1 entries but the model has 2 outputs \(cls, reg\)$"),
    (dict(loss="mse", loss_weights=[1.0, 0.3]), r"one loss for all 2 outputs"),
    (dict(loss=["mse", "mse"], loss_weights=0.5), r"is one number but the model has 2 outputs"),
    (dict(loss=["mse", "mse"], loss_weights={"cls": 1.0}), r"missing: \['reg'\]"),
    (dict(loss=["mse", "mse"], loss_weights=["accuracy", 1.0]),
     r"loss_weights\[0\] must be a finite number, got 'accuracy'; compile's third argument"),
    (dict(loss=["mse", "mse"], metrics=["accuracy"]),
     r"^metrics has 1 entries but the model has 2 outputs \(cls, reg\)"),
    (dict(loss=["mse", "mse"], metrics={"cls": ["f1"]}), r"metrics\['cls'\]: unknown metric 'f1'"),
    (dict(loss=["mse", "mse"], metrics="accuracy"), r"metrics must be a list"),
])
def test_compile_errors_name_the_argument(compile_args, message) -> None:
    model = _two_heads(nn)
    with pytest.raises((ValueError, TypeError), match=message):
        model.compile("sgd", **compile_args)


@pytest.mark.parametrize(("x", "y", "message"), [
    ("list", "one", r"^y must be a list of 2 arrays in the order of the model's outputs "
                    r"\(cls, reg\) or a dict by output name"),
    ("list", "short", r"^y has 1 entries but the model has 2 outputs \(cls, reg\)$"),
    ("list", "bad_key", r"^y has keys \['cls', 'rg'\] but the model's outputs are \(cls, reg\); "
                        r"unknown: \['rg'\]; missing: \['reg'\]$"),
    ("bad_key", "list", r"^x has keys \['img', 'ax'\] but the model's inputs are \(img, aux\); "
                        r"unknown: \['ax'\]; missing: \['aux'\]$"),
    ("short", "list", r"^x has 1 entries but the model has 2 inputs \(img, aux\)$"),
    ("list", "bad_labels", r"^y for output 'cls': label 7 is out of range"),
    ("list", "bad_shape", r"^y for output 'reg': mean_squared_error targets must have"),
    ("list", "fewer", r"x and y must hold the same number of samples"),
])
def test_fit_errors_name_the_argument(x, y, message) -> None:
    model = _two_heads(nn)
    model.compile("sgd", loss=["sparse_categorical_crossentropy", "mse"])
    xs, ys = _data(4)
    xs_by = {"list": xs, "short": xs[:1], "bad_key": {"img": xs[0], "ax": xs[1]}}
    ys_by = {"list": ys, "one": ys[1], "short": ys[:1],
             "bad_key": {"cls": ys[0], "rg": ys[1]},
             "bad_labels": [np.array([0, 1, 7, 2]), ys[1]],
             "bad_shape": [ys[0], ys[1][:, :1]], "fewer": [ys[0][:3], ys[1][:3]]}
    with pytest.raises(ValueError, match=message):
        model.fit(xs_by[x], ys_by[y], verbose=0)


def test_evaluate_counts_regularization_penalties_like_keras() -> None:
    """Keras's evaluate (and so val_loss) adds the weight and activity penalties; an output
    that also feeds another output trains as in Keras."""
    def build(lib: Any) -> Any:
        L = lib.layers if lib is keras else lib
        inputs = lib.Input((4,), name="v")
        hidden = L.Dense(3, kernel_regularizer="l2", activity_regularizer="l1", name="h")(inputs)
        return lib.Model(inputs, [L.Dense(2, name="a")(hidden), hidden])

    ours, theirs = build(nn), build(keras)
    theirs.set_weights(ours.get_weights())
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((7, 4)).astype(np.float32)
    y = [rng.standard_normal((7, 2)).astype(np.float32), rng.standard_normal((7, 3)).astype(np.float32)]
    for model in (ours, theirs):
        model.compile("sgd", loss=["mse", "mse"], loss_weights=[1.0, 0.5])
    _same_logs(ours.evaluate(x, y, batch_size=3, return_dict=True),
               theirs.evaluate(x, y, batch_size=3, verbose=0, return_dict=True),
               "evaluate with penalties")
    # the second output also feeds the first: its gradient is the sum of both paths
    got = ours.fit(x, y, batch_size=3, epochs=2, verbose=0, shuffle=False)
    expected = theirs.fit(x, y, batch_size=3, epochs=2, verbose=0, shuffle=False)
    _same_logs(got.history, expected.history, "fit with penalties")
    _same_weights(ours, theirs, "after fit with penalties")


def _metric_cases() -> list[tuple[str, tuple[int, ...], tuple[int, ...]]]:
    """(metric, target shape, prediction shape) for every combination Keras accepts."""
    shapes = [((12,), (12, 4)), ((12, 1), (12, 4)), ((12, 4), (12, 4)), ((12, 1), (12, 1)),
              ((12, 3, 3, 1), (12, 3, 3, 1)), ((12, 3, 3), (12, 3, 3, 5))]
    cases = []
    for target, pred in shapes:
        sparse = len(target) < len(pred) or target[-1] == 1 < pred[-1]
        names = ["accuracy", "acc"]
        if sparse:
            names.append("sparse_categorical_accuracy")
        elif pred[-1] > 1:
            names.append("categorical_accuracy")
        if target == pred:
            names += ["binary_accuracy", "mae", "mse"]
        cases += [(name, target, pred) for name in names]
    return cases


@pytest.mark.parametrize(("name", "target_shape", "pred_shape"), _metric_cases())
def test_metrics_equal_keras(name, target_shape, pred_shape) -> None:
    """Each metric's mean equals Keras's metric on the same data; "accuracy" picks the same
    kind as Keras's compile (``compile_utils.get_metric``)."""
    compile_utils = pytest.importorskip("keras.src.trainers.compile_utils")
    from convarith.nn.metrics import metric_function

    rng = np.random.default_rng(SEED)
    y_pred = rng.random(pred_shape).astype(np.float32)
    if len(target_shape) < len(pred_shape) or target_shape[-1] == 1 < pred_shape[-1]:
        y_true = rng.integers(0, pred_shape[-1], target_shape)
    elif pred_shape[-1] == 1:
        y_true = rng.integers(0, 2, target_shape).astype(np.float32)
    else:
        y_true = np.eye(pred_shape[-1], dtype=np.float32)[rng.integers(0, pred_shape[-1],
                                                                       target_shape[:-1])]
    theirs = compile_utils.get_metric(name, y_true, y_pred)
    theirs.update_state(y_true, y_pred)
    ours = metric_function(name, y_true, y_pred)(y_true, y_pred)
    assert ours.shape == (12,)
    np.testing.assert_allclose(ours.mean(), float(theirs.result()), rtol=1e-6,
                               err_msg=f"{name} {target_shape} {pred_shape} (seed {SEED})")


def test_a_list_of_one_output_is_unpacked_as_in_keras() -> None:
    """``Model([a], [out])`` predicts an array and takes ``[x]``/``[y]`` or bare arrays
    (Keras's ``unpack_singleton``)."""
    inputs = nn.Input((3,), name="v")
    model = nn.Model([inputs], [nn.Dense(2, name="d")(inputs)])
    model.compile(nn.SGD(0.1), "mse", metrics=["mae"])
    x, y = np.ones((4, 3), np.float32), np.ones((4, 2), np.float32)
    assert isinstance(model.predict(x), np.ndarray) and model.predict([x]).shape == (4, 2)
    assert list(model.fit([x], [y], verbose=0).history) == ["loss", "mae"]
    assert model.evaluate(x, y) == model.evaluate([x], [y])


def test_predict_takes_lists_and_dicts_and_names_a_bare_array() -> None:
    model = _two_heads(nn)
    x, _ = _data(3)
    by_list = model.predict(x)
    by_dict = model.predict({"aux": x[1], "img": x[0]})
    for a, b in zip(by_list, by_dict):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match=r"^x must be a list of 2 arrays in the order of the "
                                         r"model's inputs \(img, aux\) or a dict by input name"):
        model.predict(x[0])


@pytest.mark.parametrize("from_logits", [False, True])
def test_binary_crossentropy_value_and_gradient_equal_keras(from_logits) -> None:
    """The loss and its gradient (jax.grad of Keras's own loss) on values that include the
    clipped ends."""
    jax = pytest.importorskip("jax")
    from convarith.nn.losses import BinaryCrossentropy

    rng = np.random.default_rng(SEED)
    y_true = rng.integers(0, 2, (6, 3, 1)).astype(np.float32)
    if from_logits:
        y_pred = rng.normal(0, 3, (6, 3, 1)).astype(np.float32)
    else:
        y_pred = rng.random((6, 3, 1)).astype(np.float32)
        y_pred[0, 0, 0], y_pred[1, 1, 0] = 0.0, 1.0  # clipped: no gradient, as in Keras
    loss = BinaryCrossentropy(from_logits=from_logits)

    def theirs(prediction: Any) -> Any:
        return keras.losses.BinaryCrossentropy(from_logits=from_logits)(y_true, prediction)

    np.testing.assert_allclose(loss(y_true, y_pred), float(theirs(y_pred)), rtol=1e-5)
    np.testing.assert_allclose(loss.gradient(y_true, y_pred),
                               np.asarray(jax.grad(theirs)(y_pred)), rtol=1e-4, atol=1e-7,
                               err_msg=f"seed {SEED}")
    assert loss.check_targets(y_true[:, 0, 0], (1,)).shape == (6, 1)  # (batch,) is expanded
