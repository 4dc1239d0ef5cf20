"""The training step's shortcuts keep its numbers.

- optimizers update all variables of a dtype as one flat array: the result must be
  bit-for-bit the per-variable update (each variable through its own optimizer);
- conv layers write the activation over the engine's output and read every
  activation's gradient from its output alone;
- bias gradients are one BLAS product with a vector of ones;
- ``fit`` lets glibc reuse the blocks a step frees (no page fault storm).
"""

from __future__ import annotations

import os
import resource
import sys

import numpy as np
import pytest

from convarith import nn
from convarith.nn import activations, optimizers
from convarith.nn.layers import bias_gradient
from convarith.nn.models import keep_freed_blocks

SEED = 2417

OPTIMIZERS = {
    "sgd": lambda: nn.SGD(0.05),
    "sgd-momentum": lambda: nn.SGD(0.05, momentum=0.9, nesterov=True),
    "adam": lambda: nn.Adam(2e-3),
    "rmsprop": lambda: nn.RMSprop(1e-3, momentum=0.5, centered=True),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_flat_update_is_the_per_variable_update(name: str) -> None:
    rng = np.random.default_rng(SEED)
    shapes = [(3, 3, 2, 4), (4,), (5, 7), (1,), (2, 3)]
    dtypes = [np.float32, np.float32, np.float64, np.float32, np.float64]
    variables = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    alone = [v.copy() for v in variables]
    joint = OPTIMIZERS[name]()
    separate = [OPTIMIZERS[name]() for _ in variables]
    for step in range(5):
        gradients = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
        joint.apply(variables, gradients)
        for optimizer, variable, gradient in zip(separate, alone, gradients):
            optimizer.apply([variable], [gradient])
        for index, (a, b) in enumerate(zip(variables, alone)):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(
                a, b, err_msg=f"seed {SEED}, {name}, step {step}, variable {index}")
    assert joint.iterations == 5


def test_flat_state_restores_after_a_snapshot() -> None:
    rng = np.random.default_rng(SEED)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    g1, g2 = (rng.standard_normal(w.shape).astype(np.float32) for _ in range(2))
    optimizer = nn.Adam(0.01)
    optimizer.apply([w], [g1])
    saved, kept = optimizer.snapshot(), w.copy()
    optimizer.apply([w], [g2])
    first_try = w.copy()
    optimizer.apply([w], [g2])  # a step to undo
    optimizer.restore(saved)
    w[...] = kept
    optimizer.apply([w], [g2])
    np.testing.assert_array_equal(w, first_try, err_msg=f"seed {SEED}")
    assert optimizer.iterations == 2


def test_flat_groups_keep_positions_per_dtype() -> None:
    layout = optimizers.flat_groups([np.zeros(2, np.float64), np.zeros((1, 2), np.float32),
                                     np.zeros(3, np.float64)])
    assert layout == [("<f8", ((0, (2,)), (2, (3,)))), ("<f4", ((1, (1, 2)),))]


@pytest.mark.parametrize("name", activations.ACTIVATIONS)
def test_overwrite_gives_forward_and_the_same_gradient(name: str) -> None:
    rng = np.random.default_rng(SEED)
    activation = activations.get(name)
    z = rng.standard_normal((6, 5)).astype(np.float32)
    z[0, :3] = 0.0  # relu's kink
    d_y = rng.standard_normal(z.shape).astype(np.float32)
    expected_y = activation.forward(z.copy())
    expected_dz = activation.backward(d_y, z, expected_y)
    y = activation.overwrite(z.copy())
    np.testing.assert_array_equal(y, expected_y, err_msg=f"seed {SEED}, {name}")
    np.testing.assert_array_equal(activation.backward(d_y, y, y), expected_dz,
                                  err_msg=f"seed {SEED}, {name}")


def test_bias_gradient_is_the_sum_over_leading_axes() -> None:
    rng = np.random.default_rng(SEED)
    for trial in range(6):
        shape = tuple(int(n) for n in rng.integers(1, 9, size=int(rng.integers(1, 5))))
        dtype = [np.float32, np.float64][trial % 2]
        d_z = (rng.standard_normal(shape) + rng.uniform(-3, 3)).astype(dtype)
        got = bias_gradient(d_z)
        expected = d_z.astype(np.float64).reshape(-1, shape[-1]).sum(axis=0)
        assert got.dtype == dtype and got.shape == (shape[-1],)
        np.testing.assert_allclose(got, expected, rtol=1e-5 if dtype == np.float32 else 1e-12,
                                   atol=1e-5, err_msg=f"seed {SEED} trial {trial} {shape}")


def test_conv_layer_gradients_match_pytorch_after_the_shortcuts() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((3, 7, 6, 2)).astype(np.float32)
    layer = nn.Conv2D(4, 3, padding="same", activation="relu")
    layer.build(x.shape[1:], rng)
    layer.variables["bias"][...] = rng.standard_normal(4)
    y = layer.forward(x, keep=True)
    d_y = rng.standard_normal(y.shape).astype(np.float32)
    d_x = layer.backward(d_y)
    kernel = torch.from_numpy(layer.variables["kernel"]).permute(3, 2, 0, 1).requires_grad_()
    bias = torch.from_numpy(layer.variables["bias"]).requires_grad_()
    xt = torch.from_numpy(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.relu(torch.nn.functional.conv2d(xt, kernel, bias, padding=1))
    yt.backward(torch.from_numpy(d_y).permute(0, 3, 1, 2))
    np.testing.assert_allclose(y, yt.detach().permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    assert xt.grad is not None and kernel.grad is not None and bias.grad is not None
    np.testing.assert_allclose(d_x, xt.grad.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["kernel"], kernel.grad.permute(2, 3, 1, 0).numpy(),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.grads["bias"], bias.grad.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's page faults")
def test_steady_epochs_reuse_freed_blocks() -> None:
    rng = np.random.default_rng(SEED)
    x = rng.random((64, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    model = nn.Sequential([nn.Input(shape=(16, 16, 1)),
                           nn.Conv2D(16, 3, padding="same", activation="relu"),
                           nn.Conv2D(16, 3, padding="same", activation="relu"),
                           nn.Flatten(), nn.Dense(10, activation="softmax")], seed=SEED)
    model.compile(nn.Adam(1e-3), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    if not keep_freed_blocks():
        pytest.skip("not glibc")
    # each step frees and allocates ~3 MB (~800 pages) of activations and gradients:
    # without reuse, four steps take over 3000 page faults
    assert faults < 1000, f"seed {SEED}: {faults} page faults in four steps"


def test_input_gradient_without_the_padding_cells_matches_pytorch() -> None:
    """``conv_vjp`` leaves zero padding out of the input gradient's grid (a crop of it,
    negative where the padding is wider than the dilated kernel less one)."""
    torch = pytest.importorskip("torch")
    from convarith import ConvSpec, conv_vjp, engine

    rng = np.random.default_rng(SEED)
    functions = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}
    trials = 10 if os.environ.get("CI") == "true" else 30
    checked = 0
    for trial in range(trials):
        rank, k = int(rng.integers(1, 3)), int(rng.integers(1, 5))
        s, d, g = (int(v) for v in rng.integers(1, [4, 3, 3]))
        channels, filters = g * int(rng.integers(1, 3)), g * int(rng.integers(1, 3))
        size, pad = int(rng.integers(k * d, k * d + 6)), int(rng.integers(0, k * d + 1))
        spec = ConvSpec(k, strides=s, dilation=d, groups=g, padding=pad, rank=rank)
        x = rng.standard_normal((2, *(size,) * rank, channels))
        kernel = rng.standard_normal((*(k,) * rank, channels // g, filters))
        try:
            y = engine.conv(x, kernel, spec)
        except ValueError:
            continue
        d_y = rng.standard_normal(y.shape)
        d_x, _, _ = conv_vjp(x, kernel, spec, d_y)
        xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_()
        kt = torch.from_numpy(np.moveaxis(np.moveaxis(kernel, -1, 0), -1, 1).copy())
        yt = functions[rank](xt, kt, stride=s, padding=pad, dilation=d, groups=g)
        yt.backward(torch.from_numpy(np.moveaxis(d_y, -1, 1).copy()))
        assert xt.grad is not None
        np.testing.assert_allclose(d_x, np.moveaxis(xt.grad.numpy(), 1, -1), rtol=1e-10,
                                   atol=1e-10, err_msg=f"seed {SEED} trial {trial}: {spec}")
        checked += 1
    assert checked >= trials // 2


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_if_finite_is_apply_or_changes_nothing(name: str) -> None:
    """The guarded step equals ``apply`` bit for bit; a non-finite gradient or update
    leaves the variables, the state slots and ``iterations`` as they were."""
    rng = np.random.default_rng(SEED)
    shapes, dtypes = [(3, 2, 4), (4,), (5, 3)], [np.float32, np.float32, np.float64]
    guarded = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    plain = [v.copy() for v in guarded]
    first, second = OPTIMIZERS[name](), OPTIMIZERS[name]()
    for step in range(4):
        gradients = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
        assert first.apply_if_finite(guarded, gradients) is None
        second.apply(plain, gradients)
        for a, b in zip(guarded, plain):
            np.testing.assert_array_equal(a, b, err_msg=f"seed {SEED}, {name}, step {step}")
        kept, state = [v.copy() for v in guarded], first.snapshot()
        bad = [g.copy() for g in gradients]
        bad[step % 3].reshape(-1)[step] = [np.nan, np.inf, -np.inf, np.nan][step]
        assert first.apply_if_finite(guarded, bad) == "gradient"
        huge = [np.full(s, 3e38).astype(d) for s, d in zip(shapes, dtypes)]
        huge[2] *= -1
        first.learning_rate = 1e39  # inf in float32: every step overflows
        assert first.apply_if_finite(guarded, huge) == "update"
        first.learning_rate = OPTIMIZERS[name]().learning_rate
        for a, b in zip(guarded, kept):
            np.testing.assert_array_equal(a, b, err_msg=f"seed {SEED}, {name}, step {step}")
        assert first.iterations == state[0] == step + 1
        for key, slot in state[1].items():
            for slot_name, value in slot.items():
                np.testing.assert_array_equal(first.state[key][slot_name], value,
                                              err_msg=f"seed {SEED}, {name}, {slot_name}")


def test_a_constrained_model_that_overflows_stops_with_its_weights() -> None:
    rng = np.random.default_rng(SEED)
    x = rng.random((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = nn.Sequential([nn.Input(shape=(6,)), nn.Dense(4, kernel_constraint="non_neg"),
                           nn.Dense(3, activation="softmax")], seed=SEED)
    model.compile(nn.SGD(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = model.get_weights()
    assert model.optimizer is not None
    model.optimizer.learning_rate = 1e39  # inf in float32
    history = model.fit(x, y, epochs=3, batch_size=16, shuffle=False, verbose=0)
    assert history.stopped is not None and "epoch 1, batch 1" in history.stopped
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b, err_msg=f"seed {SEED}")
    assert model.optimizer.iterations == 1


def test_a_nan_gradient_is_named_and_changes_nothing() -> None:
    rng = np.random.default_rng(SEED)
    x = rng.random((16, 6)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = nn.Sequential([nn.Input(shape=(6,)), nn.Dense(4, name="first"),
                           nn.BatchNormalization(name="norm"),
                           nn.Dense(3, activation="softmax", name="last")], seed=SEED)
    model.compile(nn.Adam(0.01), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    before = model.get_weights()
    last = model.get_layer("last")
    backward = last.backward

    def poisoned(d_out: np.ndarray) -> np.ndarray:
        d_x = backward(d_out)
        last.grads["kernel"][1, 2] = np.nan
        return d_x

    last.backward = poisoned  # type: ignore[method-assign]
    history = model.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert history.stopped is not None and "gradient of last.kernel" in history.stopped
    # the batch normalization's moving statistics (updated by forward) are restored too
    for a, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(a, b, err_msg=f"seed {SEED}")
    assert model.optimizer is not None and model.optimizer.iterations == 1


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_step_is_keras_formula_bit_for_bit(compiled: bool, dtype: type,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Adam's step, compiled (numba) or NumPy's passes, gives Keras 3's update rule
    (``Adam.update_step``, its operations in its order, written out here in NumPy) bit for
    bit, over values of many magnitudes, zero and non-finite gradients included."""
    if compiled:
        pytest.importorskip("numba")
        assert optimizers._compiled_adam() is not None
    else:
        monkeypatch.setattr(optimizers, "_compiled_adam", lambda: None)
    rng = np.random.default_rng(SEED)
    shapes = [(3, 3, 2, 5), (5,), (37, 3)]
    variables = [(rng.standard_normal(s) * 10.0 ** rng.integers(-3, 4, s)).astype(dtype)
                 for s in shapes]
    expected = [v.copy() for v in variables]
    m = [np.zeros_like(v) for v in variables]
    v2 = [np.zeros_like(v) for v in variables]
    optimizer = nn.Adam(3e-3, beta_1=0.8, beta_2=0.99, epsilon=1e-6)
    for step in range(1, 7):
        gradients = [(rng.standard_normal(s) * 10.0 ** rng.integers(-6, 3, s)).astype(dtype)
                     for s in shapes]
        gradients[1][step % 5] = 0.0
        if step == 6:  # a NaN and an inf gradient: the step's values say so, as Keras's
            gradients[0].reshape(-1)[3], gradients[2][4, 1] = np.nan, -np.inf
        optimizer.apply(variables, gradients)
        t = dtype(step)
        alpha = dtype(3e-3) * np.sqrt(1 - dtype(0.99) ** t) / (1 - dtype(0.8) ** t)
        with np.errstate(invalid="ignore"):
            for w, g, m_i, v_i in zip(expected, gradients, m, v2):
                m_i += (g - m_i) * dtype(1 - 0.8)
                v_i += (np.square(g) - v_i) * dtype(1 - 0.99)
                w -= (m_i * alpha) / (np.sqrt(v_i) + dtype(1e-6))
        for index, (actual, wanted) in enumerate(zip(variables, expected)):
            np.testing.assert_array_equal(
                actual, wanted, err_msg=f"seed {SEED}, {np.dtype(dtype)}, compiled {compiled}, "
                f"step {step}, variable {index}")
