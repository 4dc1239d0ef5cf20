"""One-group layers' kernel gradient on the register-tiled kernels (``register_tiles``'
``weight_grad``, which the planner takes by ``gradient_costs.register_tiles``): random
1-D and 2-D layers (1 to 70 input and output channels, 1×1 to 7×7, strides,
dilation, explicit, "same", "valid" and causal padding, 1 to 9 images, float32 and
float64, one and two threads, AVX-512 and AVX2 kernels, blocks and chunks made small to
have many) through ``conv_vjp`` with the algorithm named, against PyTorch's gradients;
and the planner's own choice through ``conv_vjp`` on layers where it takes these
kernels. Each case prints its seed."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import kernels_here, relative_error, torch_vjp_nhwc, weight_grad_suppliers
from convarith import ConvSpec, engine
from convarith.engine import dispatch, gradient_costs
from convarith.engine.algorithms import _llvm, grouped_tiles

CASES = 10 if os.environ.get("CI") == "true" else 80
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}

pytestmark = pytest.mark.skipif(not _llvm.available(np.float32),
                                reason="no compiled kernels on this machine")


def _random_layer(rng: random.Random):
    rank = rng.choice([1, 2, 2])
    kernel = rng.choice([1, 2, 3, 3, 5, 7])
    stride, dilation = rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2])
    if rank == 1 and rng.random() < 0.3:
        padding = "causal"
        stride = 1
    else:
        padding = rng.choice(["same", "valid", [(rng.randrange(3), rng.randrange(3))] * rank])
    if padding == "same":
        stride = 1 if stride > 1 and rng.random() < 0.5 else stride
    size = [rng.randrange(dilation * (kernel - 1) + 1, 20) for _ in range(rank)]
    spec = ConvSpec(kernel, rank=rank, strides=stride, dilation=dilation, padding=padding)
    channels, filters = rng.choice([1, 3, 4, 16, 17, 32, 70]), rng.choice([1, 8, 16, 24, 33, 64])
    dtype = np.dtype(rng.choice([np.float32, np.float32, np.float64]))
    return spec, (rng.choice([1, 1, 2, 9]), *size, channels), (kernel,) * rank + (channels,
                                                                                 filters), dtype


@pytest.mark.parametrize("isa", ["", "avx2"])
def test_dense_kernel_gradient_on_the_tiles_matches_pytorch(isa, monkeypatch):
    if isa:
        if not kernels_here(isa):
            pytest.skip(f"no {isa} kernels on this machine")
        monkeypatch.setenv("CONVARITH_VECTOR_ISA", isa)
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data = np.random.default_rng(seed)
    for case in range(CASES):
        spec, x_shape, kernel_shape, dtype = _random_layer(rng)
        small = rng.random() < 0.4
        threads = rng.choice([1, 2])
        with monkeypatch.context() as patch:
            if small:  # many blocks per chunk, many chunks
                patch.setattr(grouped_tiles, "MIN_SHARE", 4)
                patch.setattr(grouped_tiles, "BLOCK_BYTES", 1)
            x = data.standard_normal(x_shape).astype(dtype)
            kernel = data.standard_normal(kernel_shape).astype(dtype)
            out = spec.resolve(x.shape).output_size
            dy = data.standard_normal((x_shape[0], *out, kernel_shape[-1])).astype(dtype)
            with engine.thread_limit(threads):
                d_x, d_kernel, _ = engine.conv_vjp(x, kernel, spec, dy,
                                                   algorithm="register_tiles")
        expected_x, expected_kernel = torch_vjp_nhwc(x, kernel, dy, spec)
        what = (f"seed {seed}, case {case}: {spec}, x {x_shape}, kernel {kernel_shape}, "
                f"{dtype}, {threads} threads, small blocks {small}, isa {isa or 'native'}")
        assert d_kernel.dtype == dtype and d_kernel.shape == kernel.shape, what
        assert relative_error(d_kernel, expected_kernel) <= TOLERANCE[dtype], what
        assert relative_error(d_x, expected_x) <= TOLERANCE[dtype], what


def test_the_planner_takes_the_tiles_where_they_cost_least_and_gets_pytorchs_gradient():
    seed = random.randrange(1 << 30)
    data = np.random.default_rng(seed)
    # 3×3 64 -> 64 on one 28² image, one thread: the tiles' estimate is below flat_rows'
    spec = ConvSpec(3, padding="same")
    x = data.standard_normal((1, 28, 28, 64)).astype(np.float32)
    kernel = data.standard_normal((3, 3, 64, 64)).astype(np.float32)
    dy = data.standard_normal((1, 28, 28, 64)).astype(np.float32)
    problem = dispatch.ConvProblem((1, 30, 30, 64), kernel.shape, (1, 1), (1, 1), 1, (28, 28),
                                   np.dtype(np.float32))
    with engine.thread_limit(1):
        chosen = dispatch.cheapest_weight_grad(problem)
        tiles = gradient_costs.register_tiles(problem)
        d_x, d_kernel, _ = engine.conv_vjp(x, kernel, spec, dy)
    others = [a.gradient_cost(problem) for name, a in weight_grad_suppliers(problem).items()
              if name != "register_tiles"]
    assert (chosen.name == "register_tiles") == (tiles < min(others)), f"seed {seed}"
    expected_x, expected_kernel = torch_vjp_nhwc(x, kernel, dy, spec)
    assert relative_error(d_kernel, expected_kernel) <= 1e-5, f"seed {seed}"
    assert relative_error(d_x, expected_x) <= 1e-5, f"seed {seed}"


def test_grouped_layers_keep_their_own_kernel_gradient():
    problem = dispatch.ConvProblem((1, 16, 16, 64), (3, 3, 2, 64), (1, 1), (1, 1), 32,
                                   (14, 14), np.dtype(np.float32))
    assert gradient_costs.register_tiles(problem) == float("inf")
    assert dispatch.cheapest_weight_grad(problem).name != "register_tiles"
