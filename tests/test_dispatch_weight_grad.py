"""The weight gradient's own cost: which algorithm computes a kernel gradient.

Properties, not measured winners: the weight-gradient choice applies, supplies
a ``weight_grad``, and is the cheapest by the registered weight-gradient costs;
the forward choice reads only the forward costs; the chosen weight gradient
equals the slow reference, and the engine's kernel gradient equals PyTorch's on
random configurations (seed printed on failure).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import TOLERANCE, reference_weight_grad, relative_error, weight_grad_suppliers
from convarith import ConvSpec, engine
from convarith.engine import dispatch
from convarith.engine.dispatch import ConvProblem

F32 = np.dtype("float32")
BUDGET = 8 if os.environ.get("CI") == "true" else 30


def _problem(batch, size, kernel, stride, channels, filters, groups=1, dtype=F32):
    padded = size + kernel - 1
    out = (padded - kernel) // stride + 1
    return ConvProblem((batch, padded, padded, channels), (kernel, kernel, channels // groups,
                       filters), (stride, stride), (1, 1), groups, (out, out), dtype)


# the train model's two layers, 3×3/1×1/strided/stems, depthwise and grouped, batch 1..64
PROBLEMS = [
    _problem(b, 16, 3, 1, c, 16) for b in (1, 8, 32, 64) for c in (1, 16)
] + [
    _problem(8, 56, 3, 1, 64, 64), _problem(1, 28, 3, 1, 128, 128),
    _problem(16, 28, 3, 1, 32, 32), _problem(8, 7, 3, 1, 512, 512),
    _problem(1, 56, 1, 1, 64, 256), _problem(32, 7, 1, 1, 512, 2048),
    _problem(8, 56, 3, 2, 128, 128), _problem(32, 14, 3, 2, 256, 256),
    _problem(1, 224, 7, 2, 3, 64), _problem(64, 32, 3, 1, 3, 32),
    _problem(16, 14, 3, 1, 576, 576, groups=576), _problem(4, 56, 3, 1, 128, 128, groups=32),
    _problem(2, 10, 3, 1, 8, 8, dtype=np.dtype("float64")),
]


@pytest.mark.parametrize("problem", PROBLEMS, ids=lambda p: f"{p.input_shape}-{p.kernel_shape}"
                         f"-s{p.strides[0]}-g{p.groups}")
def test_weight_grad_choice_is_cheapest_by_weight_grad_cost(problem):
    for exact in (False, True):
        candidates = weight_grad_suppliers(problem, exact)
        chosen = dispatch.cheapest_weight_grad(problem, exact=exact)
        assert chosen.name in candidates, (problem, chosen.name, sorted(candidates))
        costs = {name: a.gradient_cost(problem) for name, a in candidates.items()}
        assert costs[chosen.name] == min(costs.values()), (problem, chosen.name, costs)
    # the forward choice is the cheapest by the forward costs alone
    forward = dispatch.cheapest(problem)
    assert forward is not None
    direct = {a.name: a.cost(problem) for a in dispatch._REGISTRY.snapshot()
              if a.kind == "direct" and a.applies(problem)}
    assert direct[forward.name] == min(direct.values()), (problem, forward.name, direct)


def test_weight_grad_cost_defaults_to_the_forward_cost():
    problem = PROBLEMS[0]
    for algorithm in dispatch._REGISTRY.snapshot():
        if algorithm.weight_grad is not None and algorithm.weight_grad_cost is None:
            assert algorithm.gradient_cost(problem) == algorithm.cost(problem)


def test_weight_grad_cost_ranks_the_gradient_only():
    """An algorithm whose forward cost is infinite and weight-gradient cost is zero runs
    every weight gradient it applies to and no forward pass."""
    from convarith.engine.algorithms.offset_gemm import direct, weight_grad

    problem = _problem(2, 9, 3, 1, 4, 5)
    try:
        dispatch.register_algorithm("gradient_only", direct, cost=lambda p: float("inf"),
                                    weight_grad=weight_grad, weight_grad_cost=lambda p: 0.0)
        assert dispatch.cheapest_weight_grad(problem).name == "gradient_only"
        assert dispatch.cheapest(problem).name != "gradient_only"
    finally:
        dispatch.unregister_algorithm("gradient_only")
    assert dispatch.cheapest_weight_grad(problem).name != "gradient_only"
    with pytest.raises(ValueError, match="weight_grad_cost needs a weight_grad"):
        dispatch.register_algorithm("no_gradient", direct, weight_grad_cost=lambda p: 0.0)
    assert "no_gradient" not in dispatch.available_algorithms()


@pytest.mark.parametrize("problem", [p for p in PROBLEMS if p.flops < 5e8],
                         ids=lambda p: f"{p.input_shape}-{p.kernel_shape}-s{p.strides[0]}")
def test_chosen_weight_grad_equals_reference(problem):
    seed = sum(problem.input_shape) * 7 + problem.kernel_shape[-1]
    rng = np.random.default_rng(seed)
    batch = min(problem.batch, 4) if problem.flops > 5e7 else problem.batch
    shape = (batch, *problem.input_shape[1:])
    out = (batch, *problem.out_size, problem.out_channels)
    # the choice for the whole batch, run on part of it (the reference is slow)
    chosen = dispatch.cheapest_weight_grad(problem)
    assert chosen.weight_grad is not None
    x = rng.standard_normal(shape).astype(problem.dtype)
    dy = rng.standard_normal(out).astype(problem.dtype)
    dk = chosen.weight_grad(x, dy, problem.kernel_size, problem.strides, problem.dilation,
                            problem.groups)
    expected = reference_weight_grad(x, dy, problem.kernel_size, problem.strides,
                                     problem.dilation, problem.groups)
    error = relative_error(dk, expected)
    assert error <= TOLERANCE[problem.dtype.type], f"seed {seed}, {chosen.name}: {error:.2e}"


def test_kernel_gradient_matches_pytorch_on_random_layers():
    torch = pytest.importorskip("torch")
    seed = int(os.environ.get("CONVARITH_TEST_SEED", "20261206"))
    rng = np.random.default_rng(seed)
    for case in range(BUDGET):
        batch = int(rng.choice([1, 2, 8, 32]))
        size = int(rng.integers(4, 20))
        kernel = int(rng.choice([1, 3, 5]))
        stride = int(rng.choice([1, 1, 2]))
        channels = int(rng.choice([1, 3, 4, 16, 32]))
        filters = int(rng.choice([1, 8, 16, 32]))
        padding = int(rng.integers(0, kernel))
        if size + 2 * padding < kernel:
            continue
        what = (f"seed {seed} case {case}: batch {batch}, {size}², {kernel}×{kernel} stride "
                f"{stride} padding {padding}, {channels} -> {filters}")
        x = rng.standard_normal((batch, size, size, channels)).astype(np.float32)
        k = rng.standard_normal((kernel, kernel, channels, filters)).astype(np.float32)
        spec = ConvSpec(kernel, rank=2, strides=stride, padding=padding)
        y = engine.conv(x, k, spec)
        dy = rng.standard_normal(y.shape).astype(np.float32)
        _, dk, _ = engine.conv_vjp(x, k, spec, dy, need_input_grad=False)
        tx = torch.from_numpy(x).permute(0, 3, 1, 2)
        tk = torch.from_numpy(k).permute(3, 2, 0, 1).contiguous().requires_grad_(True)
        ty = torch.nn.functional.conv2d(tx, tk, stride=stride, padding=padding)
        ty.backward(torch.from_numpy(dy).permute(0, 3, 1, 2))
        expected = tk.grad.permute(2, 3, 1, 0).numpy()
        assert dk is not None
        error = relative_error(dk, expected)
        assert error <= 1e-5, f"{what}: relative error {error:.2e}"


def test_training_losses_are_those_of_the_forward_cost_ranking(monkeypatch):
    """The `convarith train` model's losses over a few steps are the same (to float
    rounding) whichever algorithms compute its kernel gradients."""
    import dataclasses

    from convarith import nn
    from convarith.commands.train import build_model

    rng = np.random.default_rng(7)
    x = rng.standard_normal((96, 16, 16, 1)).astype(np.float32)
    y = rng.integers(0, 10, 96)

    def losses():
        model = build_model(16, "same", 1, 1, 16, 0)
        model.compile(nn.Adam(2e-3), "sparse_categorical_crossentropy")
        return model.fit(x, y, batch_size=32, epochs=2, verbose=0, shuffle=False
                         ).history["loss"]

    dispatch._REGISTRY.load_builtin()
    ours = losses()
    forward_ranked = {name: dataclasses.replace(a, weight_grad_cost=None)
                      for name, a in dispatch._REGISTRY.algorithms.items()}
    monkeypatch.setattr(dispatch._REGISTRY, "algorithms", forward_ranked)
    dispatch._CHOICES.clear()
    dispatch._PLANS.clear()
    try:
        before = losses()
    finally:
        monkeypatch.undo()
        dispatch._CHOICES.clear()
        dispatch._PLANS.clear()
    np.testing.assert_allclose(ours, before, rtol=1e-5)
