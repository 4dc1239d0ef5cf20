"""The Functional API against real Keras: residual and U-Net-style models, shared layers,
open input sizes, imports from Keras models and ``.keras`` files, configs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from convarith import nn

keras = pytest.importorskip("keras")


def _close(ours: np.ndarray, theirs: np.ndarray) -> None:
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape
    error = float(np.linalg.norm(ours - theirs)) / max(float(np.linalg.norm(theirs)), 1e-6)
    assert error <= 1e-4, f"relative error {error:.2e}"


def _residual(lib: object, shape: tuple) -> object:
    L = lib.layers if lib is keras else lib  # type: ignore[attr-defined]
    inputs = lib.Input(shape, name="image")  # type: ignore[attr-defined]
    x = L.Conv2D(8, 3, padding="same", activation="relu", name="stem")(inputs)
    y = L.Conv2D(8, 3, padding="same", activation="relu", name="body1")(x)
    y = L.Conv2D(8, 3, padding="same", name="body2")(y)
    x = L.Add(name="residual")([x, y])
    x = L.MaxPooling2D(name="pool")(x)
    x = L.GlobalAveragePooling2D(name="gap")(x)
    outputs = L.Dense(10, activation="softmax", name="head")(x)
    return lib.Model(inputs, outputs, name="resnet")  # type: ignore[attr-defined]


def _unet(lib: object, shape: tuple) -> object:
    L = lib.layers if lib is keras else lib  # type: ignore[attr-defined]
    inputs = lib.Input(shape, name="image")  # type: ignore[attr-defined]
    d1 = L.Conv2D(4, 3, padding="same", activation="relu", name="down1")(inputs)
    p1 = L.MaxPooling2D(name="pool1")(d1)
    b = L.Conv2D(8, 3, padding="same", activation="relu", name="bottom")(p1)
    u1 = L.Conv2DTranspose(4, 2, strides=2, name="up1")(b)
    c1 = L.Concatenate(name="skip1")([u1, d1])
    o = L.Conv2D(1, 1, activation="sigmoid", name="out")(c1)
    return lib.Model(inputs, o, name="unet")  # type: ignore[attr-defined]


# each Keras model compiles on first call: under CI one builder (the U-Net, which has
# the transposed convolution and the skip), both otherwise
BUILDERS = [_unet] if os.environ.get("CI") == "true" else [_residual, _unet]


@pytest.mark.parametrize("builder", BUILDERS)
def test_imported_keras_functional_model_matches(builder, tmp_path) -> None:
    theirs = builder(keras, (None, None, 1))
    x = np.random.default_rng(0).standard_normal((3, 12, 12, 1)).astype(np.float32)
    ours = nn.from_keras(theirs)
    _close(ours.predict(x), theirs.predict(x, verbose=0))
    bigger = np.random.default_rng(1).standard_normal((2, 16, 20, 1)).astype(np.float32)
    _close(ours.predict(bigger), theirs.predict(bigger, verbose=0))
    path = str(tmp_path / "model.keras")
    theirs.save(path)
    _close(nn.from_keras(path).predict(x), theirs.predict(x, verbose=0))


@pytest.mark.parametrize("builder", BUILDERS)
def test_functional_config_equals_keras(builder) -> None:
    theirs = builder(keras, (12, 12, 1)).get_config()
    ours = builder(nn, (12, 12, 1)).get_config()
    for entry in theirs["layers"]:
        entry.pop("build_config", None)
    # Keras's own serialization of tuples inside nodes: compare through JSON
    import json
    assert json.loads(json.dumps(ours)) == json.loads(json.dumps(theirs))


def test_built_model_matches_keras_on_same_weights() -> None:
    ours = _unet(nn, (None, None, 2))
    theirs = _unet(keras, (None, None, 2))
    for layer in ours.layers:
        if layer.variables:
            layer.set_weights(theirs.get_layer(layer.name).get_weights())
    x = np.random.default_rng(3).standard_normal((2, 8, 12, 2)).astype(np.float32)
    _close(ours.predict(x), theirs.predict(x, verbose=0))


def test_shared_layer_and_two_inputs() -> None:
    a, b = nn.Input((6, 6, 2), name="a"), nn.Input((6, 6, 2), name="b")
    shared = nn.Conv2D(3, 3, name="shared")
    out = nn.Subtract()([shared(a), shared(b)])
    model = nn.Model([a, b], out)
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 2)).astype(np.float32)
    assert np.allclose(model.predict([x, x]), 0)
    assert model.count_params() == 3 * 3 * 2 * 3 + 3


def test_functional_training_reduces_loss_and_gradients_are_right() -> None:
    model = _residual(nn, (8, 8, 1))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 32)
    model.compile("adam", "sparse_categorical_crossentropy")
    before = model.evaluate(x, y)
    model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert model.evaluate(x, y) < before


def test_summary_follows_branches() -> None:
    model = _unet(nn, (None, None, 1))
    text = model.summary(print_fn=lambda _: None)
    assert "(None, None, None, 8)" in text  # the concatenation: 4 + 4 channels
    lines = {line.split()[0]: line for line in text.splitlines()[3:-4]}
    # bottom: 3x3 after 2x2 pool after 3x3 -> 3 + 1 + 2*2 = 8, jump 2
    assert "8x8" in lines["bottom"] and "2x2" in lines["bottom"]


@pytest.mark.parametrize("builder", BUILDERS)
def test_keras_loads_our_keras_file(builder, tmp_path) -> None:
    ours = builder(nn, (None, None, 1))
    path = str(tmp_path / "ours.keras")
    ours.save(path)
    theirs = keras.saving.load_model(path)
    x = np.random.default_rng(5).standard_normal((2, 12, 12, 1)).astype(np.float32)
    _close(ours.predict(x), theirs.predict(x, verbose=0))


def test_keras_loads_our_sequential_keras_file(tmp_path) -> None:
    ours = nn.Sequential([nn.Input((8, 8, 2)), nn.SeparableConv2D(3, 3, activation="relu"),
                          nn.ZeroPadding2D(1), nn.Conv2DTranspose(2, 3, strides=2),
                          nn.GlobalMaxPooling2D(), nn.Dense(4)])
    path = str(tmp_path / "seq.keras")
    ours.save(path)
    theirs = keras.saving.load_model(path)
    x = np.random.default_rng(6).standard_normal((2, 8, 8, 2)).astype(np.float32)
    _close(ours.predict(x), theirs.predict(x, verbose=0))


def test_unet_fit_follows_keras_step_by_step() -> None:
    """Same initial weights, Adam, partial last batch, no shuffling: the weights after
    every epoch equal Keras's (rtol 1e-4), so training diverges from Keras only by float
    rounding amplified over many steps."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((20, 8, 8, 1)).astype(np.float32)
    y = rng.random((20, 8, 8, 1)).astype(np.float32)
    ours, theirs = _unet(nn, (8, 8, 1)), _unet(keras, (8, 8, 1))
    for layer in ours.layers:  # type: ignore[attr-defined]
        if layer.get_weights():
            theirs.get_layer(layer.name).set_weights(layer.get_weights())  # type: ignore[attr-defined]
    ours.compile(nn.Adam(0.01), "mse")  # type: ignore[attr-defined]
    theirs.compile(keras.optimizers.Adam(0.01), "mse")  # type: ignore[attr-defined]
    for epoch in range(2):
        got = ours.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # type: ignore[attr-defined]
        expected = theirs.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False)  # type: ignore[attr-defined]
        np.testing.assert_allclose(got.history["loss"], expected.history["loss"], rtol=1e-4)
        for layer in ours.layers:  # type: ignore[attr-defined]
            for mine, reference in zip(layer.get_weights(),
                                       theirs.get_layer(layer.name).get_weights()):  # type: ignore[attr-defined]
                np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5,
                                           err_msg=f"{layer.name} after epoch {epoch + 1}")
