"""The conv layers' fused bias + relu and relu gradient + bias gradient
(activations.Activation.overwrite_with_bias / backward_with_bias) give NumPy's
``maximum(z + bias, 0)`` and ``d * (y > 0)`` bit for bit, non-finite values included,
with numba's compiled loops and without them."""

from __future__ import annotations

import numpy as np
import pytest

from convarith.nn import activations
from numba_free import run_without_numba

SEED = 3141


def _values(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    z = rng.standard_normal(shape).astype(dtype)
    flat = z.reshape(-1)
    flat[rng.integers(0, flat.size, 5)] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    return z


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["relu", "linear", "tanh"])
def test_fused_bias_activation_equals_numpy(name: str, dtype: type) -> None:
    rng = np.random.default_rng(SEED)
    act = activations.get(name)
    z = _values(rng, (3, 5, 4, 6), dtype)
    bias = rng.standard_normal(6).astype(dtype)
    expected = act.forward(z + bias)
    got = act.overwrite_with_bias(z.copy(), bias)
    np.testing.assert_array_equal(got, expected, err_msg=f"seed {SEED}")
    d_y = _values(rng, z.shape, dtype)
    d_z, d_bias = act.backward_with_bias(d_y, expected)
    np.testing.assert_array_equal(d_z, act.backward(d_y, expected, expected),
                                  err_msg=f"seed {SEED}")
    finite = np.nan_to_num(d_z.reshape(-1, 6), nan=0.0, posinf=0.0, neginf=0.0)
    clean = np.isfinite(d_z.reshape(-1, 6)).all(axis=0)
    np.testing.assert_allclose(d_bias[clean], finite.sum(axis=0)[clean], rtol=1e-5)


def test_fused_relu_without_numba() -> None:
    run_without_numba("""
        from convarith.nn import activations
        relu = activations.get("relu")
        z = np.array([[-1.0, np.nan], [2.0, -np.inf]], np.float32)
        y = relu.overwrite_with_bias(z, np.array([0.5, 1.0], np.float32))
        assert np.array_equal(y, np.array([[0.0, np.nan], [2.5, 0.0]], np.float32),
                              equal_nan=True), y
        d_z, d_bias = relu.backward_with_bias(np.ones((2, 2), np.float32), y)
        assert np.array_equal(d_z, [[0.0, 0.0], [1.0, 0.0]]) and np.array_equal(d_bias, [1, 0])
    """)
