"""The two weight-gradient-only algorithms (batch_as_channels, tap_columns): the
choice for the ``convarith train`` model's layers, and batch_as_channels' NumPy copy
where numba is missing. Their values against the reference are checked with every
registered algorithm's (test_dispatch_weight_grad, test_algorithms)."""

from __future__ import annotations

import numpy as np
import pytest

from _helpers import weight_grad_suppliers
from convarith.engine import dispatch
from convarith.engine.algorithms import _llvm
from convarith.engine.dispatch import ConvProblem
from numba_free import run_without_numba

F32 = np.dtype(np.float32)


def test_train_model_layers_take_the_cheaper_weight_gradients() -> None:
    if not _llvm.available(F32):
        pytest.skip("no compiled kernels on this machine (register_tiles missing)")
    first = ConvProblem((32, 18, 18, 1), (3, 3, 1, 16), (1, 1), (1, 1), 1, (16, 16), F32)
    second = ConvProblem((32, 18, 18, 16), (3, 3, 16, 16), (1, 1), (1, 1), 1, (16, 16), F32)
    # the register-tiled kernel gradient (one thread, AVX-512 and AVX2 kernels alike:
    # 0.075-0.081 ms against tap_columns' 0.13-0.20, 0.42 against batch_as_channels' 0.59)
    assert dispatch.cheapest_weight_grad(first).name == "register_tiles"
    assert dispatch.cheapest_weight_grad(second).name == "register_tiles"

    def next_cheapest(problem: ConvProblem) -> str:
        return min((a for a in weight_grad_suppliers(problem).values()
                    if a.name != "register_tiles"),
                   key=lambda a: (a.gradient_cost(problem), a.name)).name

    # after it, the swapped layouts (0.13 against per-tap products' 0.16 and flat_rows'
    # 0.15; 0.59 against 0.78-0.80)
    assert next_cheapest(first) == "tap_columns"
    assert next_cheapest(second) == "batch_as_channels"
    # neither is ever a forward choice
    forward = dispatch.cheapest(second)
    assert forward is not None and forward.name not in ("tap_columns", "batch_as_channels")


def test_batch_as_channels_without_numba_copies_with_numpy() -> None:
    if not _llvm.available(F32):
        pytest.skip("no compiled kernels on this machine (register_tiles missing)")
    run_without_numba("""
        from convarith.engine.algorithms import batch_as_channels, offset_gemm
        rng = np.random.default_rng(2024)
        x = rng.standard_normal((3, 9, 7, 4)).astype(np.float32)
        dy = rng.standard_normal((3, 9, 6, 5)).astype(np.float32)
        padding = ((1, 1), (0, 1))
        got = batch_as_channels.weight_grad(x, dy, (3, 3), (1, 1), (1, 1), 1, padding=padding)
        expected = offset_gemm.weight_grad(np.pad(x, ((0, 0), (1, 1), (0, 1), (0, 0))), dy,
                                           (3, 3), (1, 1), (1, 1), 1)
        error = np.linalg.norm(got - expected) / np.linalg.norm(expected)
        assert error < 1e-6, ("seed 2024", error)
    """)


@pytest.mark.parametrize(("name", "x_shape", "filters"), [
    ("batch_as_channels", (32, 16, 16, 16), 16),   # the train model's second layer
    ("batch_as_channels", (8, 28, 28, 64), 64),
    ("batch_as_channels", (4, 14, 14, 256), 256),
    ("tap_columns", (32, 16, 16, 1), 16),          # its first layer
    ("tap_columns", (16, 28, 28, 3), 32),
])
def test_swapped_weight_gradients_keep_the_memory_rule(name: str, x_shape: tuple[int, ...],
                                                       filters: int) -> None:
    """Peak extra memory at most 1.5x (x + dy + dk), as every fast path
    (tests/_helpers.peak_extra_bytes)."""
    from _helpers import peak_extra_bytes

    algorithm = dispatch.get_algorithm(name)
    if name == "batch_as_channels" and not _llvm.available(F32):
        pytest.skip("no compiled kernels on this machine (register_tiles missing)")
    rng = np.random.default_rng(77)
    x = rng.standard_normal(x_shape).astype(np.float32)
    dy = rng.standard_normal((*x_shape[:-1], filters)).astype(np.float32)
    assert algorithm.weight_grad is not None
    weight_grad = algorithm.weight_grad
    peak = peak_extra_bytes(lambda: weight_grad(x, dy, (3, 3), (1, 1), (1, 1), 1,
                                                padding=((1, 1), (1, 1))))
    operands = x.nbytes + dy.nbytes + 9 * x_shape[-1] * filters * 4
    assert peak <= 1.5 * operands, (name, x_shape, peak / operands)
