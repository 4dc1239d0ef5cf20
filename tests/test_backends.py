"""The PyTorch and JAX backends compute what the NumPy engine computes, on random specs.

The engine is itself checked against the frameworks' own layers elsewhere;
here the backends (explicit padding from the resolved spec, full transposed
output cropped, pooling as windowed sums) must match it to float32
tolerance for every kind of spec, both layouts, and unbatched input.
"""

from __future__ import annotations

import numpy as np
import pytest

import convarith
from _helpers import random_backend_calls
from _helpers import relative_error as rel_error
from convarith import ConvSpec

pytestmark = pytest.mark.oracle

COUNT = 40


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_backend_matches_engine(backend: str) -> None:
    pytest.importorskip(backend)
    for spec, x, kernel, bias, seed in random_backend_calls(COUNT):
        expected = convarith.conv(x, kernel, spec, bias)
        got = convarith.conv(x, kernel, spec, bias, backend=backend)
        error = rel_error(got, expected)
        assert error <= 1e-5, f"seed {seed}: {spec} on {x.shape}: relative error {error:.2e}"


def test_backend_errors_are_clear() -> None:
    pytest.importorskip("torch")
    spec = ConvSpec(3)
    x = np.ones((1, 5, 5, 1), np.float32)
    with pytest.raises(ValueError, match="backend must be one of"):
        convarith.conv(x, np.ones((3, 3, 1, 1), np.float32), spec, backend="tensorflow")
    with pytest.raises(ValueError, match="kernel is required"):
        convarith.conv(x, None, spec, backend="torch")
    with pytest.raises(ValueError, match="algorithm="):
        convarith.conv(x, np.ones((3, 3, 1, 1), np.float32), spec, algorithm="offset_gemm", backend="jax")
