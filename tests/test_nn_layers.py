"""Layers against Keras 3 (JAX backend): same weights, same outputs and gradients."""

from __future__ import annotations

import os
import zlib

import numpy as np
import pytest

from _helpers import relative_error as rel_err
from convarith import nn

os.environ.setdefault("KERAS_BACKEND", "jax")

RTOL = 1e-5


# (class name, positional args, keyword args, input shape of one sample)
CASES = [
    ("Conv2D", (4, 3), {}, (9, 9, 3)),
    ("Conv2D", (4, 3), {"padding": "same"}, (9, 9, 3)),
    ("Conv2D", (4, 3), {"padding": "same", "strides": 2}, (10, 10, 3)),
    ("Conv2D", (4, 3), {"padding": "valid", "strides": 3}, (10, 11, 2)),
    ("Conv2D", (4, (3, 2)), {"dilation_rate": (2, 3), "padding": "same"}, (11, 10, 2)),
    ("Conv2D", (6, 3), {"groups": 3, "activation": "relu"}, (8, 8, 6)),
    ("Conv2D", (4, 3), {"activation": "sigmoid", "data_format": "channels_first"}, (2, 7, 7)),
    ("Conv1D", (4, 3), {"padding": "causal", "dilation_rate": 2}, (12, 3)),
    ("Conv1D", (4, 5), {"strides": 2, "activation": "tanh"}, (13, 3)),
    ("Conv3D", (3, 2), {"padding": "same", "strides": 2}, (5, 6, 5, 2)),
    ("Conv2DTranspose", (3, 3), {}, (5, 5, 2)),
    ("Conv2DTranspose", (3, 3), {"strides": 2, "padding": "same"}, (5, 4, 2)),
    ("Conv2DTranspose", (3, 4), {"strides": 2, "padding": "valid", "output_padding": 1}, (4, 4, 2)),
    ("Conv2DTranspose", (2, 3), {"dilation_rate": 2, "padding": "same"}, (5, 5, 3)),
    ("DepthwiseConv2D", (3,), {"depth_multiplier": 2, "padding": "same", "strides": 2}, (8, 8, 3)),
    ("DepthwiseConv2D", (3,), {"dilation_rate": 2}, (9, 9, 2)),
    ("SeparableConv2D", (5, 3), {"depth_multiplier": 2, "padding": "same"}, (8, 8, 3)),
    ("SeparableConv2D", (4, 3), {"strides": 2, "activation": "relu"}, (9, 9, 2)),
    ("MaxPooling2D", (), {}, (8, 9, 3)),
    ("MaxPooling2D", (3,), {"strides": 2, "padding": "same"}, (8, 8, 2)),
    ("AveragePooling2D", (3,), {"strides": 2, "padding": "same"}, (7, 8, 2)),
    ("AveragePooling2D", (2,), {}, (6, 6, 2)),
    ("MaxPooling1D", (3,), {"strides": 2}, (11, 2)),
    ("AveragePooling1D", (2,), {"padding": "same", "strides": 1}, (7, 2)),
    ("GlobalAveragePooling2D", (), {}, (5, 6, 3)),
    ("ZeroPadding2D", (((1, 2), (0, 3)),), {}, (4, 5, 2)),
    ("Flatten", (), {}, (3, 4, 2)),
    ("Flatten", (), {"data_format": "channels_first"}, (3, 4, 2)),
    ("Dense", (5,), {}, (7,)),
    ("Dense", (5,), {"activation": "softmax"}, (7,)),
    ("Dense", (4,), {"activation": "relu"}, (3, 6)),
    ("Dropout", (0.5,), {}, (6,)),
    ("BatchNormalization", (), {}, (5, 5, 3)),
    ("Activation", ("tanh",), {}, (4, 3)),
    ("Activation", ("softmax",), {}, (6,)),
]


def _ids(case: tuple) -> str:
    name, args, kwargs, shape = case
    return f"{name}-{args}-{sorted(kwargs.items())}-{shape}"


def _keras_pair(case, seed):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    name, args, kwargs, shape = case
    keras_layer = getattr(keras.layers, name)(*args, **kwargs)
    keras_layer.build((None, *shape))
    ours = getattr(nn, name)(*args, **kwargs)
    ours.build(shape)
    rng = np.random.default_rng(seed)
    weights = []
    for w in keras_layer.get_weights():
        # random non-default values, BatchNormalization variance kept positive
        weights.append(rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if w.ndim == 1
                       and name == "BatchNormalization" else
                       rng.normal(0, 0.5, w.shape).astype(np.float32))
    keras_layer.set_weights(weights)
    ours.set_weights(weights)
    return keras_layer, ours, rng


TRAINING_CASES = [c for c in CASES if c[0] == "BatchNormalization"]


@pytest.mark.oracle
@pytest.mark.parametrize(
    "case, training",
    [(c, False) for c in CASES] + [(c, True) for c in TRAINING_CASES],
    ids=[_ids(c) for c in CASES] + [f"training-{_ids(c)}" for c in TRAINING_CASES],
)
def test_layer_forward_and_gradients_match_keras(case, training):
    name = case[0]
    seed = zlib.crc32(_ids(case).encode())
    keras_layer, ours, rng = _keras_pair(case, seed)
    import jax
    import jax.numpy as jnp

    x = rng.normal(size=(3, *case[3])).astype(np.float32)
    trainable = [jnp.asarray(v) for v in keras_layer.trainable_variables]
    fixed = [jnp.asarray(v) for v in keras_layer.non_trainable_variables]

    extra = {"training": training} if name in ("BatchNormalization", "Dropout") else {}

    def run(params, inputs):
        return keras_layer.stateless_call(params, fixed, inputs, **extra)[0]

    expected, pullback = jax.vjp(run, trainable, jnp.asarray(x))
    expected = np.asarray(expected)
    got = ours.forward(x, training=training, keep=True)
    assert got.shape == expected.shape, f"seed {seed}"
    assert rel_err(got, expected) <= RTOL, f"forward, seed {seed}"

    d_out = rng.normal(size=expected.shape).astype(np.float32)
    grads = pullback(jnp.asarray(d_out))
    d_x = ours.backward(d_out)
    assert rel_err(d_x, grads[1]) <= RTOL, f"input gradient, seed {seed}"
    ours_grads = [ours.grads[n] for n in ours.trainable_names]
    assert len(ours_grads) == len(grads[0])
    for mine, theirs, variable in zip(ours_grads, grads[0], keras_layer.trainable_variables):
        assert rel_err(mine, theirs) <= RTOL, f"gradient of {variable.path}, seed {seed}"


@pytest.mark.oracle
@pytest.mark.parametrize("case", [c for c in CASES if c[0] not in ("Dropout",)], ids=_ids)
def test_weight_shapes_and_output_shape_match_keras(case):
    keras = pytest.importorskip("keras")
    name, args, kwargs, shape = case
    keras_layer = getattr(keras.layers, name)(*args, **kwargs)
    keras_layer.build((None, *shape))
    ours = getattr(nn, name)(*args, **kwargs)
    ours.build(shape)
    assert [w.shape for w in ours.get_weights()] == [tuple(w.shape) for w in keras_layer.get_weights()]
    assert (None, *ours.output_shape) == tuple(keras_layer.compute_output_shape((None, *shape)))


def test_glorot_uniform_is_seeded_and_bounded():
    a = nn.Conv2D(8, 3)
    b = nn.Conv2D(8, 3)
    a.build((5, 5, 2), np.random.default_rng(7))
    b.build((5, 5, 2), np.random.default_rng(7))
    kernel = a.get_weights()[0]
    np.testing.assert_array_equal(kernel, b.get_weights()[0])
    limit = np.sqrt(6 / (9 * 2 + 9 * 8))
    assert np.abs(kernel).max() <= limit
    # a uniform on +-limit spreads to near the limit, not much less
    assert np.abs(kernel).max() > 0.9 * limit
    assert not a.get_weights()[1].any()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: nn.Conv2D(4, 3, strides=2, dilation_rate=2), "dilation"),
        (lambda: nn.Conv2D(4, 3, padding="causal"), "padding"),
        (lambda: nn.Conv2D(4, 3, padding="full"), "padding"),
        (lambda: nn.Conv2D(0, 3), "filters"),
        (lambda: nn.Conv2D(4, 3, activation="swishy"), "activation"),
        (lambda: nn.Conv2D(4, 3, kernel_sise=3), "kernel_sise"),
        (lambda: nn.Dropout(1.0), "rate"),
        (lambda: nn.MaxPooling2D(2, padding="causal"), "padding"),
    ],
)
def test_keras_acceptance_rules(make, message):
    with pytest.raises((ValueError, TypeError), match=message):
        make()


def test_too_small_input_names_the_layer():
    with pytest.raises(ValueError, match=r"layer 'conv2d_1' \(Conv2D\).*kernel spans 5"):
        nn.Sequential([nn.Input((9, 9, 1)), nn.Conv2D(1, 3, strides=2),
                       nn.Conv2D(1, 3, dilation_rate=2)])


def test_dropout_training_mask_and_gradient():
    layer = nn.Dropout(0.25, seed=3)
    x = np.ones((200, 50), np.float32)
    y = layer.forward(x, training=True, keep=True)
    kept = y != 0
    assert 0.7 < kept.mean() < 0.8
    np.testing.assert_allclose(y[kept], 1 / 0.75)
    np.testing.assert_array_equal(layer.backward(np.ones_like(x)), y)
    np.testing.assert_array_equal(layer.forward(x), x)


def test_a_separable_first_layer_trains() -> None:
    # a model's first layer gets backward_weights (no input gradient): the separable
    # layer's kept values are its own, not those of the plain convolution
    rng = np.random.default_rng(5)
    model = nn.Sequential([nn.Input(shape=(8, 8, 2)), nn.SeparableConv2D(3, 3), nn.Flatten(),
                           nn.Dense(2)], seed=1)
    model.compile(nn.SGD(0.01), "mse")
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(rng.standard_normal((4, 8, 8, 2)).astype(np.float32),
                        rng.standard_normal((4, 2)).astype(np.float32), epochs=1, verbose=0)
    assert history.stopped is None
    assert all(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
