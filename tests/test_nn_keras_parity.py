"""convarith.nn layers against real Keras 3: forward values on identical weights and
``get_config``, over randomized configurations of every convolution-family layer.

Each case builds the Keras layer and ours from the same arguments, copies Keras's
(random) weights into ours, and compares outputs (relative error 1e-4, float32)
and the config dicts (equal keys and values, Keras's serialization).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest

from convarith import nn

keras = pytest.importorskip("keras")

CASES = 8 if os.environ.get("CI") == "true" else 30


def _close(ours: np.ndarray, theirs: np.ndarray, context: str) -> None:
    theirs = np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{context}: shape {ours.shape} != {theirs.shape}"
    scale = max(float(np.linalg.norm(theirs)), 1e-6)
    error = float(np.linalg.norm(ours.astype(np.float64) - theirs)) / scale
    assert error <= 1e-4, f"{context}: relative error {error:.2e}"


def _config(name: str, rng: np.random.Generator) -> tuple[dict[str, Any], tuple[int, ...]]:
    """Random arguments for layer ``name`` and a sample shape it accepts."""
    rank = int(name[-2]) if name[-2].isdigit() else int(name.split("D")[0][-1])
    fmt = "channels_first" if rng.random() < 0.3 else "channels_last"
    spatial = tuple(int(v) for v in rng.integers(5, 9 if rank < 3 else 7, rank))
    channels = int(rng.integers(1, 5))
    shape = (*spatial, channels) if fmt == "channels_last" else (channels, *spatial)
    k = int(rng.integers(1, 4))
    padding = str(rng.choice(["valid", "same"]))
    args: dict[str, Any] = {}
    base = name.rstrip("0123456789D").replace("Transpose", "")
    if name.startswith(("Conv", "DepthwiseConv", "SeparableConv")):
        strides, dilation = int(rng.integers(1, 3)), 1
        if strides == 1 and rng.random() < 0.4:
            dilation = 2
        args = dict(kernel_size=k, strides=strides, padding=padding, dilation_rate=dilation,
                    data_format=fmt, activation=str(rng.choice(["linear", "relu", "sigmoid"])),
                    use_bias=bool(rng.random() < 0.8))
        if "Depthwise" in name or "Separable" in name:
            args["depth_multiplier"] = int(rng.integers(1, 3))
        if "Depthwise" not in name:
            args["filters"] = int(rng.integers(1, 5))
        if "Transpose" in name and strides > 1 and rng.random() < 0.5:
            args["output_padding"] = int(rng.integers(0, strides))
        if base == "Conv" and "Transpose" not in name and fmt == "channels_last" and channels % 2 == 0 \
                and args["filters"] % 2 == 0 and rng.random() < 0.5:
            args["groups"] = 2
    elif "Global" in name:
        args = dict(data_format=fmt, keepdims=bool(rng.random() < 0.5))
    elif "Pooling" in name:
        args = dict(pool_size=int(rng.integers(1, 4)), strides=int(rng.integers(1, 3)),
                    padding=padding, data_format=fmt)
    elif name.startswith("ZeroPadding"):
        args = dict(padding=tuple((int(rng.integers(0, 3)), int(rng.integers(0, 3)))
                                  for _ in range(rank)) if rank > 1 else
                    (int(rng.integers(0, 3)), int(rng.integers(0, 3))), data_format=fmt)
    elif name.startswith("Cropping"):
        pairs = tuple((int(rng.integers(0, 2)), int(rng.integers(0, 2))) for _ in range(rank))
        args = dict(cropping=pairs if rank > 1 else pairs[0])
        if rank > 1:
            args["data_format"] = fmt
        else:
            shape = (*spatial, channels)
    elif name.startswith("UpSampling"):
        if rank == 1:
            args, shape = dict(size=int(rng.integers(1, 4))), (*spatial, channels)
        else:
            args = dict(size=tuple(int(v) for v in rng.integers(1, 4, rank)), data_format=fmt)
            if rank == 2:
                args["interpolation"] = str(rng.choice(["nearest", "bilinear"]))
    return args, shape


LAYER_NAMES = [
    "Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
    "DepthwiseConv1D", "DepthwiseConv2D", "SeparableConv1D", "SeparableConv2D",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D",
    "AveragePooling3D", "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
    "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
    "UpSampling1D", "UpSampling2D", "UpSampling3D",
]


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_matches_keras(name: str) -> None:
    """Forward values on Keras's weights, output shapes, weight shapes and get_config."""
    for case in range(CASES):
        seed = hash((name, case)) % 2**32 if False else 1000 * LAYER_NAMES.index(name) + case
        rng = np.random.default_rng(seed)
        args, shape = _config(name, rng)
        context = f"{name}({args}) on {shape}, seed {seed}"
        try:
            theirs = getattr(keras.layers, name)(**args)
            x = rng.standard_normal((2, *shape)).astype(np.float32)
            expected = np.asarray(theirs(x))
        except ValueError:
            continue  # Keras refuses (e.g. kernel larger than the input): not compared here
        ours = getattr(nn, name)(**args)
        ours.build(shape)
        weights = [np.asarray(w) for w in theirs.get_weights()]
        assert [w.shape for w in ours.get_weights()] == [w.shape for w in weights], context
        ours.set_weights(weights)
        _close(ours(x), expected, context)
        assert ours.compute_output_shape(shape) == tuple(theirs.compute_output_shape((2, *shape)))[1:], context
        config = theirs.get_config()
        ours_config = ours.get_config()
        ours_config["name"] = config["name"]
        assert ours_config == config, context
        again = getattr(nn, name).from_config(ours.get_config())
        assert again.get_config() == ours.get_config(), context


@pytest.mark.parametrize("name", ["Add", "Subtract", "Multiply", "Average", "Maximum",
                                  "Minimum", "Concatenate"])
def test_merge_matches_keras(name: str) -> None:
    rng = np.random.default_rng(7)
    count = 2 if name == "Subtract" else 3
    shapes = [(2, 4, 5, 3)] * count
    if name == "Concatenate":
        shapes = [(2, 4, 5, int(c)) for c in rng.integers(1, 4, count)]
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    expected = np.asarray(getattr(keras.layers, name)()(xs))
    _close(getattr(nn, name)()(xs), expected, name)
    config = getattr(keras.layers, name)().get_config()
    ours = getattr(nn, name)().get_config()
    assert {**ours, "name": config["name"]} == config


def test_layers_accept_new_spatial_sizes() -> None:
    """Built on 8x8, called on 16x12: nothing is rebuilt, the output follows the input."""
    layer = nn.Conv2D(3, 3, strides=2, padding="same")
    layer(np.zeros((1, 8, 8, 2), np.float32))
    weights = layer.get_weights()
    assert layer(np.zeros((1, 16, 12, 2), np.float32)).shape == (1, 8, 6, 3)
    assert all(np.array_equal(a, b) for a, b in zip(weights, layer.get_weights()))
    with pytest.raises(ValueError, match="incompatible"):
        layer(np.zeros((1, 8, 8, 5), np.float32))


def test_unsupported_keras_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="lora_rank=4"):
        nn.Conv2D(2, 3, lora_rank=4)
    with pytest.raises(ValueError, match="unknown argument.*kernal_size"):
        nn.Conv2D(2, 3, kernal_size=4)


def test_sequential_with_open_sizes_matches_keras() -> None:
    """Input(shape=(None, None, 1)): any image size, the summary shows None as Keras does."""
    def build(lib: Any, L: Any) -> Any:
        return lib.Sequential([lib.Input((None, None, 1)), L.Conv2D(4, 3, strides=2),
                               L.MaxPooling2D(), L.GlobalMaxPooling2D(), L.Dense(3)])

    ours, theirs = build(nn, nn), build(keras, keras.layers)
    ours.set_weights(theirs.get_weights())
    text = ours.summary(print_fn=lambda _: None)
    assert "(None, None, None, 4)" in text and "Warnings" not in text
    for shape in ((2, 17, 23, 1), (1, 40, 9, 1)):
        x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        _close(ours.predict(x), theirs.predict(x, verbose=0), str(shape))


@pytest.mark.parametrize("shapes, axes, normalize", [
    (((4, 3), (4, 3)), 1, False), (((4, 3, 5), (4, 5, 2)), (2, 1), True),
    (((4, 3, 5), (4, 3, 2)), 1, True), (((4, 3, 5), (4, 6, 5)), -1, False)])
def test_dot_matches_keras_output_gradients_and_config(shapes: Any, axes: Any,
                                                       normalize: bool) -> None:
    jax = pytest.importorskip("jax")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    theirs, ours = keras.layers.Dot(axes=axes, normalize=normalize), nn.Dot(axes, normalize)
    expected = np.asarray(theirs(xs))
    got = ours.forward(xs, keep=True)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    d_out = rng.standard_normal(expected.shape).astype(np.float32)
    grads = jax.grad(lambda a, b: (theirs([a, b]) * d_out).sum(), argnums=(0, 1))(*xs)
    for mine, reference in zip(ours.backward(d_out), grads):
        np.testing.assert_allclose(mine, np.asarray(reference), rtol=1e-4, atol=1e-5)
    assert ours.get_config() == {**theirs.get_config(), "name": ours.name}


def test_dot_refuses_the_batch_axis() -> None:
    with pytest.raises(ValueError, match="axes"):
        nn.Dot(axes=0)([np.ones((2, 3)), np.ones((2, 3))])
    with pytest.raises(ValueError, match="axes must be an int or a pair"):
        nn.Dot(axes=(1, 2, 3))
