"""Short 1-D stride-1 layers by chunks of output cells (``rows_1d``).

Random taps, dilations, lengths and channel counts against the slow reference
(forward and kernel gradient, chunks cut down to a few cells, one to three
workers); the planner's choice by properties; and whole ``conv_vjp`` calls of
WaveNet-style causal dilated layers against ``torch.autograd.grad``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import (
    TOLERANCE,
    assert_cheapest_applies,
    assert_runs_as_reference,
    reference_direct,
    reference_weight_grad,
    relative_error,
)
from convarith import ConvSpec
from convarith.engine.algorithms import pointwise_rows, rows_1d
from convarith.engine.dispatch import ConvProblem, choose_weight_grad, get_algorithm

CASES = 30 if os.environ.get("CI") == "true" else 200


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_1d_forward_and_weight_grad_equal_the_reference(dtype, monkeypatch) -> None:
    monkeypatch.setattr(pointwise_rows, "MIN_CHUNK_CELLS", 1)
    monkeypatch.setattr(rows_1d, "CHUNK_BYTES", 256)  # chunks of a few cells
    seed = 41 if dtype == np.float32 else 42
    rng = np.random.default_rng(seed)
    for trial in range(CASES):
        taps = int(rng.integers(2, 5))
        dilation = int(rng.integers(1, 6))
        length = int(rng.integers(1, 40))
        channels, filters = (int(v) for v in rng.integers(1, 20, 2))
        batch = int(rng.integers(1, 4))
        xp = rng.standard_normal((batch, length + (taps - 1) * dilation, channels)).astype(dtype)
        kernel = rng.standard_normal((taps, channels, filters)).astype(dtype)
        dy = rng.standard_normal((batch, length, filters)).astype(dtype)
        expected = reference_direct(xp, kernel, (1,), (dilation,), 1, (length,))
        expected_dk = reference_weight_grad(xp, dy, (taps,), (1,), (dilation,), 1)
        for threads, partials in ((1, 4 << 20), (2, 4 << 20), (3, 1)):
            monkeypatch.setattr(rows_1d, "PARTIALS_BYTES", partials)
            what = (f"seed {seed} trial {trial}: {xp.shape} taps {taps} dilation {dilation}, "
                    f"{threads} threads")
            y = rows_1d.direct(xp, kernel, (1,), (dilation,), 1, (length,), threads=threads)
            assert y.dtype == dtype and relative_error(y, expected) <= TOLERANCE[dtype], what
            dk = rows_1d.weight_grad(xp, dy, (taps,), (1,), (dilation,), 1, threads=threads)
            assert dk.dtype == dtype and relative_error(dk, expected_dk) <= TOLERANCE[dtype], what


@pytest.mark.parametrize("workers", ["1", "2"])
def test_the_planner_picks_the_cheapest_and_it_runs_as_the_reference(workers,
                                                                     monkeypatch) -> None:
    from convarith.engine import clear_caches

    monkeypatch.setenv("CONVARITH_NUM_THREADS", workers)
    clear_caches()
    try:
        for seed, dilation in enumerate((1, 4, 512)):
            # WaveNet's dilated causal 2-tap layer on 4096 (its padded input)
            problem = ConvProblem((1, 4096 + dilation, 64), (2, 64, 128), (1,), (dilation,), 1,
                                  (4096,), np.dtype("float32"))
            assert get_algorithm("rows_1d").applies(problem)
            assert_cheapest_applies(problem)
            assert_runs_as_reference(problem, seed)
            chosen = choose_weight_grad(problem)
            costs = {name: get_algorithm(name).cost(problem) for name in ("flat_rows", "rows_1d")}
            assert chosen.weight_grad is not None and chosen.applies(problem)
            assert chosen.cost(problem) <= min(costs.values()), (chosen.name, costs)
    finally:
        clear_caches()


def test_causal_dilated_gradients_against_pytorch(monkeypatch) -> None:
    torch = pytest.importorskip("torch")
    from convarith.engine import clear_caches, conv, conv_vjp

    monkeypatch.setenv("CONVARITH_NUM_THREADS", "2")
    clear_caches()
    rng = np.random.default_rng(43)
    try:
        for trial in range(CASES // 6):
            dilation = int(rng.integers(1, 9))
            length = int(rng.integers(16, 300))
            channels, filters = (int(v) for v in rng.integers(1, 60, 2))
            batch = int(rng.integers(1, 3))
            x = rng.standard_normal((batch, length, channels))
            kernel = rng.standard_normal((2, channels, filters))
            dy = rng.standard_normal((batch, length, filters))
            spec = ConvSpec(2, dilation=dilation, padding="causal", rank=1)
            y = conv(x, kernel, spec, algorithm="rows_1d")
            dx, dk = conv_vjp(x, kernel, spec, dy)[:2]
            tx = torch.tensor(np.moveaxis(x, -1, 1), requires_grad=True)
            tk = torch.tensor(np.transpose(kernel, (2, 1, 0)), requires_grad=True)
            padded = torch.nn.functional.pad(tx, (dilation, 0))
            ty = torch.nn.functional.conv1d(padded, tk, dilation=dilation)
            ex, ek = torch.autograd.grad(ty, (tx, tk), torch.tensor(np.moveaxis(dy, -1, 1)))
            what = f"seed 43 trial {trial}: {x.shape} dilation {dilation} -> {filters}"
            assert relative_error(y, np.moveaxis(ty.detach().numpy(), 1, -1)) <= 1e-10, what
            assert relative_error(dx, np.moveaxis(ex.numpy(), 1, -1)) <= 1e-10, what
            assert relative_error(dk, np.transpose(ek.numpy(), (2, 1, 0))) <= 1e-10, what
    finally:
        clear_caches()
