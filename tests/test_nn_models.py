"""Sequential: whole models and training steps against Keras 3 (JAX backend), bad input, files."""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import relative_error as rel_err
from convarith import nn

os.environ.setdefault("KERAS_BACKEND", "jax")

RTOL = 1e-5
SEED = 1234


def keras_or_skip():
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "jax":
        pytest.skip("needs KERAS_BACKEND=jax")
    return keras


def lesson_keras_model(keras, padding="same", strides=2, dilation=1, batchnorm=True):
    layers = [
        keras.Input((12, 12, 1)),
        keras.layers.Conv2D(6, 3, padding=padding, strides=strides, dilation_rate=dilation,
                            activation="relu"),
    ]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    layers += [
        keras.layers.SeparableConv2D(5, 3, padding="same", activation="tanh"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(4, activation="softmax"),
    ]
    model = keras.Sequential(layers)
    rng = np.random.default_rng(SEED)
    model.set_weights([
        (rng.uniform(0.5, 1.5, w.shape) if w.ndim == 1 and i in (2, 3, 4, 5) and batchnorm
         else rng.normal(0, 0.4, w.shape)).astype(np.float32)
        for i, w in enumerate(model.get_weights())
    ])
    return model


@pytest.mark.oracle
@pytest.mark.parametrize("padding, strides, dilation", [("same", 2, 1), ("valid", 1, 2)])
def test_whole_model_forward_and_input_gradient_match_keras(padding, strides, dilation):
    keras = keras_or_skip()
    import jax
    import jax.numpy as jnp

    keras_model = lesson_keras_model(keras, padding, strides, dilation)
    ours = nn.from_keras(keras_model)
    x = np.random.default_rng(SEED).normal(size=(5, 12, 12, 1)).astype(np.float32)
    trainable = [jnp.asarray(v) for v in keras_model.trainable_variables]
    fixed = [jnp.asarray(v) for v in keras_model.non_trainable_variables]
    expected = np.asarray(keras_model.stateless_call(trainable, fixed, x, training=False)[0])
    assert rel_err(ours.predict(x), expected) <= RTOL
    d_out = np.random.default_rng(SEED + 1).normal(size=expected.shape).astype(np.float32)

    def run(params, inputs):
        return keras_model.stateless_call(params, fixed, inputs, training=True)[0]

    _, pullback = jax.vjp(run, trainable, jnp.asarray(x))
    d_params, d_x = pullback(jnp.asarray(d_out))
    ours.forward(x, training=True, keep=True)
    ours_dx = ours.backward(d_out)
    assert rel_err(ours_dx, d_x) <= RTOL
    ours_grads = [layer.grads[n] for layer in ours.layers for n in layer.trainable_names]
    assert len(ours_grads) == len(d_params)
    for mine, theirs in zip(ours_grads, d_params):
        assert rel_err(mine, theirs) <= RTOL


@pytest.mark.oracle
@pytest.mark.parametrize(
    "optimizer, loss",
    [
        (("SGD", {"learning_rate": 0.1, "momentum": 0.9}), "sparse_categorical_crossentropy"),
        (("SGD", {"learning_rate": 0.05, "momentum": 0.5, "nesterov": True}),
         "categorical_crossentropy"),
        (("Adam", {"learning_rate": 0.01}), "categorical_crossentropy"),
        (("RMSprop", {"learning_rate": 0.01}), "sparse_categorical_crossentropy"),
        (("RMSprop", {"learning_rate": 0.005, "momentum": 0.8, "centered": True}),
         "categorical_crossentropy"),
    ],
)
def test_training_steps_match_keras(optimizer, loss):
    keras = keras_or_skip()
    keras_model = lesson_keras_model(keras)
    ours = nn.from_keras(keras_model)
    name, kwargs = optimizer
    keras_model.compile(optimizer=getattr(keras.optimizers, name)(**kwargs), loss=loss)
    ours.compile(optimizer=getattr(nn, name)(**kwargs), loss=loss)
    rng = np.random.default_rng(SEED)
    for step in range(3):  # several steps: momentum and Adam's moments carry over
        x = rng.normal(size=(8, 12, 12, 1)).astype(np.float32)
        labels = rng.integers(0, 4, 8)
        y = labels if loss.startswith("sparse") else np.eye(4, dtype=np.float32)[labels]
        keras_loss = float(keras_model.train_on_batch(x, y))
        ours_loss = ours.train_on_batch(x, y)
        assert ours_loss == pytest.approx(keras_loss, rel=RTOL), f"step {step}"
    for mine, theirs in zip(ours.get_weights(), keras_model.get_weights()):
        assert rel_err(mine, theirs) <= RTOL


@pytest.mark.oracle
def test_keras_file_import(tmp_path):
    pytest.importorskip("h5py")
    keras = keras_or_skip()
    keras_model = lesson_keras_model(keras)
    path = tmp_path / "lesson.keras"
    keras_model.save(path)
    ours = nn.load_model(str(path))
    x = np.random.default_rng(0).normal(size=(3, 12, 12, 1)).astype(np.float32)
    assert rel_err(ours.predict(x), keras_model.predict(x, verbose=0)) <= RTOL
    assert [layer.name for layer in ours.layers] == [layer.name for layer in keras_model.layers]


@pytest.mark.oracle
def test_torch_import_same_output():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    torch.manual_seed(0)
    module = tnn.Sequential(
        tnn.Conv2d(1, 6, 3, padding=1, stride=2), tnn.ReLU(), tnn.BatchNorm2d(6),
        tnn.Conv2d(6, 4, 3, dilation=2), tnn.Tanh(), tnn.MaxPool2d(2),
        tnn.Flatten(), tnn.Dropout(0.3), tnn.Linear(4, 5), tnn.Softmax(dim=1),
    )
    # a 12x12 input: stride 2 -> 6, dilated 3x3 -> 2, pool -> 1
    with torch.no_grad():
        module[2].running_mean.uniform_(-1, 1)
        module[2].running_var.uniform_(0.5, 2)
    module.eval()
    x = np.random.default_rng(0).normal(size=(4, 1, 12, 12)).astype(np.float32)
    expected = module(torch.from_numpy(x)).detach().numpy()
    ours = nn.from_torch(module, (1, 12, 12))
    assert rel_err(ours.predict(x.transpose(0, 2, 3, 1)), expected) <= RTOL


@pytest.mark.oracle
def test_torch_flatten_order_is_converted():
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    torch.manual_seed(1)
    module = tnn.Sequential(tnn.Conv2d(2, 3, 3), tnn.Flatten(), tnn.Linear(3 * 4 * 5, 7)).eval()
    x = np.random.default_rng(1).normal(size=(2, 2, 6, 7)).astype(np.float32)
    expected = module(torch.from_numpy(x)).detach().numpy()
    ours = nn.from_torch(module, (2, 6, 7))
    assert rel_err(ours.predict(x.transpose(0, 2, 3, 1)), expected) <= RTOL
    # the same through a state_dict into a freshly built model
    fresh = nn.Sequential([nn.Input((6, 7, 2)), nn.Conv2D(3, 3), nn.Flatten(), nn.Dense(7)])
    nn.load_torch_state_dict(fresh, module.state_dict())
    assert rel_err(fresh.predict(x.transpose(0, 2, 3, 1)), expected) <= RTOL


# --------------------------------------------------------------------------- no oracle


def small_model(seed=0):
    model = nn.Sequential([
        nn.Input(shape=(8, 8, 1)),
        nn.Conv2D(4, 3, padding="same", strides=2, activation="relu"),
        nn.Flatten(),
        nn.Dense(3, activation="softmax"),
    ], seed=seed)
    model.compile(optimizer=nn.SGD(0.1, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def toy_data(count=96, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, count)
    x = rng.normal(0, 0.3, size=(count, 8, 8, 1)).astype(np.float32)
    for i, label in enumerate(labels):  # class = which third of the image is bright
        x[i, :, label * 3:label * 3 + 2, 0] += 1.0
    return x, labels


def test_gradient_matches_finite_differences():
    model = small_model()
    x, y = toy_data(6)
    model.layers[0].variables["kernel"] = model.layers[0].variables["kernel"].astype(np.float64)
    for layer in model.layers:
        for name in layer.variables:
            layer.variables[name] = layer.variables[name].astype(np.float64)
    x = x.astype(np.float64)
    loss = model.loss
    y_pred = model.forward(x, training=True, keep=True)
    model.backward(loss.gradient(y, y_pred))
    kernel = model.layers[0].variables["kernel"]
    analytic = model.layers[0].grads["kernel"]
    for index in [(0, 0, 0, 0), (1, 2, 0, 3), (2, 1, 0, 1)]:
        saved = kernel[index]
        kernel[index] = saved + 1e-6
        up = loss(y, model.forward(x))
        kernel[index] = saved - 1e-6
        down = loss(y, model.forward(x))
        kernel[index] = saved
        assert analytic[index] == pytest.approx((up - down) / 2e-6, rel=1e-5, abs=1e-9)


def test_fit_learns_and_reports(capsys):
    model = small_model()
    x, y = toy_data()
    history = model.fit(x, y, epochs=6, batch_size=16, validation_split=0.25, verbose=2)
    assert set(history.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["val_accuracy"][-1] >= 0.9
    out = capsys.readouterr().out
    assert "Epoch 6/6" in out and "val_accuracy" in out
    loss, accuracy = model.evaluate(x, y)
    assert accuracy >= 0.9 and loss < 0.5


def test_fit_is_reproducible_with_a_seed():
    x, y = toy_data()
    first, second = small_model(seed=5), small_model(seed=5)
    first.fit(x, y, epochs=2, verbose=0)
    second.fit(x, y, epochs=2, verbose=0)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_wrong_input_shape_names_layer_expected_and_received():
    model = small_model()
    _, y = toy_data(4)
    with pytest.raises(ValueError) as error:
        model.fit(np.zeros((4, 16, 16, 1)), y, verbose=0)
    message = str(error.value)
    assert "conv2d" in message and "(None, 8, 8, 1)" in message and "(4, 16, 16, 1)" in message


def test_labels_out_of_range():
    model = small_model()
    x, _ = toy_data(4)
    with pytest.raises(ValueError, match=r"label 3 is out of range.*3 output classes.*0\.\.2"):
        model.fit(x, np.array([0, 1, 2, 3]), verbose=0)
    with pytest.raises(ValueError, match="label -1"):
        model.fit(x, np.array([0, -1, 2, 1]), verbose=0)
    with pytest.raises(ValueError, match="same number of samples"):
        model.fit(x, np.array([0, 1]), verbose=0)
    model.compile("adam", "categorical_crossentropy")
    with pytest.raises(ValueError, match="one-hot targets of shape"):
        model.fit(x, np.array([0, 1, 2, 1]), verbose=0)


def test_nan_loss_stops_training_and_keeps_previous_weights(capsys):
    model = small_model()
    x, y = toy_data(64)
    before = model.get_weights()
    bad = x.copy()
    bad[40] = np.nan  # batch 3 of 4 (batch_size 16, no shuffle)
    history = model.fit(bad, y, epochs=3, batch_size=16, shuffle=False, verbose=1)
    assert history.stopped is not None and "batch 3" in history.stopped
    assert history.history == {}  # the first epoch never finished
    out = capsys.readouterr().out
    assert "Training stopped" in out and "nan" in out
    after = model.get_weights()
    assert all(np.all(np.isfinite(w)) for w in after)
    # two good batches were applied, the bad one was not
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    replay = small_model()
    replay.fit(x[:32], y[:32], epochs=1, batch_size=16, shuffle=False, verbose=0)
    for a, b in zip(after, replay.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6)


def test_exploding_learning_rate_stops_cleanly():
    model = small_model()
    model.compile(nn.SGD(1e30), "sparse_categorical_crossentropy")
    x, y = toy_data(32)
    history = model.fit(x, y, epochs=5, batch_size=8, verbose=0)
    assert history.stopped is not None
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def test_save_load_round_trip_and_no_overwrite(tmp_path):
    model = small_model()
    x, y = toy_data(32)
    model.fit(x, y, epochs=1, verbose=0)
    path = tmp_path / "model.npz"
    nn.save_model(model, path)
    restored = nn.load_model(path)
    np.testing.assert_array_equal(restored.predict(x), model.predict(x))
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    with pytest.raises(FileExistsError):
        nn.save_model(model, path)
    model.save(str(path))  # Keras's default: overwrite
    with pytest.raises(ValueError, match=".npz"):
        nn.save_model(model, tmp_path / "model.bin")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a convarith"):
        nn.load_model(tmp_path / "junk.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.npz", "model.npz"]


def test_get_set_weights_order_and_errors():
    model = nn.Sequential([nn.Input((6, 6, 2)), nn.SeparableConv2D(3, 3),
                           nn.BatchNormalization(), nn.Flatten(), nn.Dense(2)])
    shapes = [w.shape for w in model.get_weights()]
    assert shapes == [(3, 3, 2, 1), (1, 1, 2, 3), (3,), (3,), (3,), (3,), (3,), (48, 2), (2,)]
    with pytest.raises(ValueError, match="9 weight arrays, got 2"):
        model.set_weights(model.get_weights()[:2])
    weights = model.get_weights()
    weights[0] = np.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="depthwise_kernel"):
        model.set_weights(weights)


def test_summary_receptive_field_jump_and_dropped_rows():
    # hand derivation: 3x3 -> field 3, jump 1; 3x3 stride 2 -> 3 + 2 = 5, jump 2;
    # 3x3 dilation 2 (K_eff 5) -> 5 + 4*2 = 13, jump 2; pool 2 -> 13 + 1*2 = 15, jump 4
    model = nn.Sequential([
        nn.Input((28, 28, 1)),
        nn.Conv2D(4, 3, padding="same"),
        nn.Conv2D(4, 3, strides=2),
        nn.Conv2D(4, 3, dilation_rate=2, padding="same"),
        nn.MaxPooling2D(2),
        nn.Flatten(),
        nn.Dense(10),
    ])
    lines = []
    text = model.summary(print_fn=lines.append)
    assert lines == [text]
    rows = {line.split()[0]: line for line in text.splitlines()}
    assert rows["conv2d"].split()[-2:] == ["3x3", "1x1"]
    assert rows["conv2d_1"].split()[-2:] == ["5x5", "2x2"]
    assert rows["conv2d_2"].split()[-2:] == ["13x13", "2x2"]
    assert rows["max_pooling2d"].split()[-2:] == ["15x15", "4x4"]
    assert "(None, 13, 13, 4)" in rows["conv2d_1"]
    # 28 - 3 = 25 is odd: stride 2 never reads the last row and column
    assert "conv2d_1: the last 1 row of 28 is never read" in text
    assert "Total params: " + str(model.count_params()) in text


def test_unbuilt_model_builds_on_first_data_and_input_shape_argument():
    model = nn.Sequential([nn.Conv2D(2, 3, input_shape=(5, 5, 1)), nn.Flatten()])
    assert model.output_shape == (18,)
    lazy = nn.Sequential([nn.Dense(3)])
    with pytest.raises(ValueError, match="not built"):
        lazy.summary()
    assert lazy.predict(np.ones((2, 4))).shape == (2, 3)


def test_progress_bar_plain_text_without_rich(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "rich.progress", None)  # import fails: plain text
    model = small_model()
    x, y = toy_data(40)
    model.fit(x, y, epochs=2, batch_size=16, verbose=1)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("Epoch 1/2 - 3/3 - ") and "loss: " in lines[0]
    assert "accuracy: " in lines[1]


def test_progress_bar_with_rich(capsys):
    pytest.importorskip("rich")
    model = small_model()
    x, y = toy_data(40)
    model.fit(x, y, epochs=1, batch_size=16, verbose=1)
    out = capsys.readouterr().out
    assert "Epoch 1/1" in out and "3/3" in out and "accuracy" in out


@pytest.mark.oracle
def test_linear_functional_keras_model_import(tmp_path):
    pytest.importorskip("h5py")
    keras = keras_or_skip()
    inputs = keras.Input((10, 10, 2))
    hidden = keras.layers.Conv2D(3, 3, strides=2, padding="same", activation="relu")(inputs)
    hidden = keras.layers.Conv2DTranspose(2, 3, strides=2, padding="same")(hidden)
    hidden = keras.layers.GlobalAveragePooling2D()(hidden)
    outputs = keras.layers.Dense(4, activation="softmax")(hidden)
    keras_model = keras.Model(inputs, outputs)
    x = np.random.default_rng(3).normal(size=(3, 10, 10, 2)).astype(np.float32)
    expected = np.asarray(keras_model.stateless_call(
        [v.value for v in keras_model.trainable_variables],
        [v.value for v in keras_model.non_trainable_variables], x)[0])
    assert rel_err(nn.from_keras(keras_model).predict(x), expected) <= RTOL
    keras_model.save(tmp_path / "functional.keras")
    assert rel_err(nn.load_model(tmp_path / "functional.keras").predict(x), expected) <= RTOL


def test_rmsprop_is_the_default_name_and_checks_its_arguments():
    """compile(optimizer="rmsprop") (Keras's default) gets Keras's defaults; one plain step
    is w - lr·g / √((1 - rho)·g² + ε), derived by hand; bad arguments are named."""
    opt = nn.optimizers.get("rmsprop")
    assert isinstance(opt, nn.RMSprop)
    assert opt.get_config() == {"learning_rate": 0.001, "rho": 0.9, "momentum": 0.0,
                                "epsilon": 1e-7, "centered": False}
    w = np.array([0.5, -1.0])
    g = np.array([3.0, -0.5])
    expected = w - 0.001 * g / np.sqrt(0.1 * g * g + 1e-7)
    opt.apply([w], [g])
    np.testing.assert_allclose(w, expected, rtol=1e-12)
    with pytest.raises(ValueError, match="rho must be"):
        nn.RMSprop(rho=1.5)
    with pytest.raises(TypeError, match="centered must be True or False"):
        nn.RMSprop(centered="yes")
    with pytest.raises(ValueError, match="momentum must be"):
        nn.RMSprop(momentum=-0.1)


def test_from_keras_imports_regularizers_and_constraints() -> None:
    keras = pytest.importorskip("keras")
    keras_model = keras.Sequential([
        keras.Input((6, 6, 2)),
        keras.layers.Conv2D(3, 3, kernel_regularizer=keras.regularizers.L1L2(0.01, 0.02),
                            bias_regularizer=keras.regularizers.L2(0.05),
                            kernel_constraint=keras.constraints.MaxNorm(0.5),
                            bias_constraint=keras.constraints.NonNeg()),
    ])
    keras_model.layers[0].bias.assign(np.array([0.5, -1.0, 2.0], np.float32))
    conv = nn.from_keras(keras_model).layers[-1]
    theirs = keras_model.layers[0]
    for ours_part, their_part in ((conv.kernel_regularizer, theirs.kernel_regularizer),
                                  (conv.bias_regularizer, theirs.bias_regularizer),
                                  (conv.kernel_constraint, theirs.kernel_constraint),
                                  (conv.bias_constraint, theirs.bias_constraint)):
        assert type(ours_part).__name__ == type(their_part).__name__
        assert ours_part.get_config() == pytest.approx(their_part.get_config())
    keras_model(np.zeros((1, 6, 6, 2), np.float32))
    expected = float(sum(np.asarray(v) for v in keras_model.losses))
    assert conv.regularization_loss() == pytest.approx(expected, rel=1e-5)
    conv.apply_constraints()
    assert conv.variables["bias"].min() >= 0.0
