"""A training step that runs the two halves of its batch on two threads
(:mod:`convarith.nn.parallel`) keeps the whole batch's numbers.

- each weight's gradient (first half's plus second's) equals the whole batch's:
  float64 to 1e-10, float32 to 1e-5 (relative), over random stacks of every
  sample-wise layer kind, odd batches included;
- the result does not depend on which thread ran which half (one thread or two:
  the same bits, again and again);
- layers that read the whole batch (batch normalization, dropout) never split;
- ``fit`` with and without the split: the same losses within float32 tolerance;
  the PyTorch step-by-step tests (``test_nn_train_model_torch``) run through the
  split wherever the engine has two threads.
"""

from __future__ import annotations

import numpy as np
import pytest

from convarith import engine, nn
from convarith.nn import parallel

SEED = 7311


def _stack(rng: np.random.Generator, dtype: str) -> tuple[list[nn.Layer], tuple[int, ...]]:
    """A random 2-D stack of sample-wise layers and its input shape."""
    size = int(rng.integers(7, 12))
    layers: list[nn.Layer] = [nn.Input(shape=(size, size, 2), dtype=dtype)]
    first = rng.choice(["conv", "strided", "dilated", "transposed", "depthwise", "separable"])
    if first == "conv":
        layers.append(nn.Conv2D(3, 3, padding="same", activation="relu", dtype=dtype))
    elif first == "strided":
        layers.append(nn.Conv2D(4, 3, strides=2, padding="same", activation="tanh", dtype=dtype))
    elif first == "dilated":
        layers.append(nn.Conv2D(3, 2, dilation_rate=2, activation="sigmoid", dtype=dtype))
    elif first == "transposed":
        layers.append(nn.Conv2DTranspose(3, 3, strides=2, padding="same", dtype=dtype))
    elif first == "depthwise":
        layers.append(nn.DepthwiseConv2D(3, depth_multiplier=2, padding="same", dtype=dtype))
    else:
        layers.append(nn.SeparableConv2D(3, 3, activation="relu", dtype=dtype))
    middle = rng.choice(["max", "average", "padding", "upsampling", "none"])
    if middle == "max":
        layers.append(nn.MaxPooling2D(2, padding="same", dtype=dtype))
    elif middle == "average":
        layers.append(nn.AveragePooling2D(2, dtype=dtype))
    elif middle == "padding":
        layers.append(nn.ZeroPadding2D(1, dtype=dtype))
    elif middle == "upsampling":
        layers.append(nn.UpSampling2D(2, dtype=dtype))
    layers.append(nn.Conv2D(4, 3, padding="same", activation="relu", dtype=dtype))
    if rng.random() < 0.5:
        layers += [nn.Flatten(dtype=dtype)]
    else:
        layers += [nn.GlobalAveragePooling2D(dtype=dtype)]
    layers += [nn.Dense(5, activation="softmax", dtype=dtype)]
    return layers, (size, size, 2)


def _gradients(model: nn.Sequential) -> list[np.ndarray]:
    return [layer.grads[name] for layer in model.layers if layer.trainable
            for name in layer.trainable_names]


@pytest.mark.parametrize("dtype, tolerance", [("float64", 1e-10), ("float32", 1e-5)])
def test_the_halves_gradients_are_the_whole_batch_gradients(dtype: str, tolerance: float) -> None:
    rng = np.random.default_rng(SEED)
    for case in range(6):
        layers, shape = _stack(rng, dtype)
        model = nn.Sequential(layers, seed=case)
        batch = int(rng.choice([16, 17, 33]))
        x = rng.standard_normal((batch, *shape)).astype(dtype)
        d_out = rng.standard_normal((batch, 5)).astype(dtype)
        with engine.thread_limit(1):
            whole = model.forward(x, training=True, keep=True)
            model._backward(d_out, need_input_grad=False)
        expected = [g.copy() for g in _gradients(model)]
        halves = parallel.BatchHalves.for_layers(model.layers, batch)
        assert halves is not None
        y = halves.forward(x, threads=2)
        halves.backward(d_out, threads=2)
        where = f"seed {SEED}, case {case}, {[type(layer).__name__ for layer in layers]}"
        assert y.dtype == whole.dtype
        assert np.linalg.norm(y - whole) <= tolerance * np.linalg.norm(whole), where
        got = _gradients(model)
        assert len(got) == len(expected) and len(got) >= 4, where
        for index, (a, b) in enumerate(zip(got, expected)):
            assert a.shape == b.shape and a.dtype == b.dtype, where
            error = np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)
            assert error <= tolerance, f"{where}, gradient {index}: relative error {error:.2e}"


def test_the_result_does_not_depend_on_which_thread_ran_which_half() -> None:
    rng = np.random.default_rng(SEED + 1)
    model = nn.Sequential([nn.Input(shape=(12, 12, 3)), nn.Conv2D(8, 3, padding="same",
                           activation="relu"), nn.Conv2D(8, 3, strides=2), nn.Flatten(),
                           nn.Dense(4)], seed=3)
    x = rng.standard_normal((33, 12, 12, 3)).astype(np.float32)
    d_out = rng.standard_normal((33, 4)).astype(np.float32)
    halves = parallel.BatchHalves.for_layers(model.layers, len(x))
    assert halves is not None
    runs = []
    for threads in (1, 2, 2, 1, 2):
        y = halves.forward(x, threads=threads)
        halves.backward(d_out, threads=threads)
        runs.append([y, *(g.copy() for g in _gradients(model))])
    for index, run in enumerate(runs[1:], start=1):
        for a, b in zip(run, runs[0]):
            np.testing.assert_array_equal(a, b, err_msg=f"seed {SEED + 1}, run {index}")


def test_layers_that_read_the_whole_batch_never_split() -> None:
    base = [nn.Input(shape=(6, 6, 1)), nn.Conv2D(2, 3), nn.Flatten()]
    assert parallel.splits_batch(nn.Sequential([*base, nn.Dense(2)]).layers, 64)
    for layer in (nn.BatchNormalization(), nn.Dropout(0.5), nn.Dense(2, activity_regularizer="l2")):
        model = nn.Sequential([nn.Input(shape=(6, 6, 1)), nn.Conv2D(2, 3), nn.Flatten(), layer])
        assert not parallel.splits_batch(model.layers, 64), type(layer).__name__
        assert model._batch_halves(64) is None
    small = nn.Sequential([*[nn.Input(shape=(6, 6, 1)), nn.Conv2D(2, 3), nn.Flatten()],
                           nn.Dense(2)])
    assert not parallel.splits_batch(small.layers, 2 * parallel.MIN_HALF_SAMPLES - 1)


def _fit_losses(split: bool, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], bool]:
    rng = np.random.default_rng(SEED + 2)
    x = rng.standard_normal((70, 10, 10, 1)).astype(np.float32)
    y = rng.integers(0, 4, 70)
    model = nn.Sequential([nn.Input(shape=(10, 10, 1)),
                           nn.Conv2D(6, 3, padding="same", activation="relu"),
                           nn.MaxPooling2D(2), nn.Conv2D(8, 3, activation="relu"),
                           nn.Flatten(), nn.Dense(4, activation="softmax")], seed=5)
    model.compile(nn.Adam(0.01), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.split_batches = split
    # two workers whatever this machine has, so that the split runs
    monkeypatch.setattr(engine, "worker_count", lambda: 2)
    history = model.fit(x, y, batch_size=32, epochs=4, verbose=0)
    return history.history["loss"], model._halves is not None


def test_fit_with_the_split_trains_as_without(monkeypatch: pytest.MonkeyPatch) -> None:
    split, used = _fit_losses(True, monkeypatch)
    whole, unused = _fit_losses(False, monkeypatch)
    assert used and not unused
    np.testing.assert_allclose(split, whole, rtol=1e-4, err_msg=f"seed {SEED + 2}")
    assert split[-1] < split[0]
