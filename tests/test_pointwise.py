"""1×1 transposed convolutions (``pointwise``) and 1×1 layers' gradients against PyTorch.

Random strides, paddings (crops of the zero-inserted grid), ranks and channel
counts: the algorithm against the scatter reference, the planner's choice
(applies, cheapest), and whole ``conv_vjp`` calls of 1×1 layers against
``torch.autograd.grad``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _helpers import (
    assert_transposed_cheapest_applies,
    assert_transposed_runs_as_reference,
    reference_scatter,
    relative_error,
)
from convarith import ConvSpec
from convarith.engine import conv, conv_vjp
from convarith.engine.algorithms.pointwise import transposed

CASES = 30 if os.environ.get("CI") == "true" else 200


def test_pointwise_equals_the_scatter_reference() -> None:
    rng = np.random.default_rng(31)
    for trial in range(CASES):
        rank = int(rng.integers(1, 4))
        size = tuple(int(n) for n in rng.integers(1, 6, rank))
        strides = tuple(int(s) for s in rng.integers(1, 4, rank))
        padding = tuple((int(lo), int(hi)) for lo, hi in rng.integers(-2, 3, (rank, 2)))
        channels, filters = (int(n) for n in rng.integers(1, 7, 2))
        x = rng.standard_normal((2, *size, channels))
        kernel = rng.standard_normal((*(1,) * rank, filters, channels))
        # the zero-inserted grid's extent, cropped: a padding that crops it all is skipped
        if any((n - 1) * s + 1 + lo + hi < 1 for n, s, (lo, hi) in zip(size, strides, padding)):
            continue
        expected = reference_scatter(x, kernel, strides, (1,) * rank, 1, padding)
        out_size = expected.shape[1:-1]
        y = transposed(x, kernel, strides, (1,) * rank, 1, padding, out_size)
        assert y.shape == expected.shape, f"trial {trial}: {strides} {padding} {size}"
        assert relative_error(y, expected) <= 1e-12, f"trial {trial}: {strides} {padding} {size}"


@pytest.mark.parametrize(("x_shape", "kernel_shape", "strides", "padding"), [
    ((1, 1, 1, 48), (1, 1, 1152, 48), (1, 1), ((0, 0), (0, 0))),  # a squeeze-excitation input grad
    ((1, 4, 4, 1024), (1, 1, 2048, 1024), (1, 1), ((0, 0), (0, 0))),
    ((2, 7, 7, 64), (1, 1, 32, 64), (2, 2), ((0, 1), (0, 1))),
    ((1, 9, 16), (1, 8, 16), (3,), ((-1, 2),)),
])
def test_pointwise_is_chosen_where_cheapest_and_runs_as_reference(x_shape, kernel_shape, strides,
                                                                   padding) -> None:
    rank = len(strides)
    name = assert_transposed_cheapest_applies(x_shape, kernel_shape, strides, (1,) * rank, 1,
                                              padding)
    assert name == "pointwise"
    assert_transposed_runs_as_reference(x_shape, kernel_shape, strides, (1,) * rank, 1, padding,
                                        seed=sum(x_shape), batch=2)


def test_pointwise_layer_gradients_match_pytorch() -> None:
    torch = pytest.importorskip("torch")
    functional = pytest.importorskip("torch.nn.functional")
    rng = np.random.default_rng(37)
    for trial in range(CASES // 2):
        rank = int(rng.integers(1, 3))
        strides = tuple(int(s) for s in rng.integers(1, 4, rank))
        size = tuple(int(n) for n in rng.integers(1, 7, rank))
        pads = tuple(int(p) for p in rng.integers(0, 2, rank))
        channels, filters = (int(n) for n in rng.integers(2, 9, 2))  # 1 channel: depthwise
        x = rng.standard_normal((int(rng.integers(1, 3)), *size, channels))
        kernel = rng.standard_normal((*(1,) * rank, channels, filters))
        spec = ConvSpec(1, strides=strides, padding=tuple((p, p) for p in pads), rank=rank)
        dy = rng.standard_normal(conv(x, kernel, spec).shape)
        for _ in range(2):  # a first call, then the remembered plans
            dx, dk, _ = conv_vjp(x, kernel, spec, dy)
            xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy()).requires_grad_(True)
            wt = torch.from_numpy(np.moveaxis(kernel, (-1, -2), (0, 1)).copy()).requires_grad_(True)
            yt = (functional.conv1d if rank == 1 else functional.conv2d)(
                xt, wt, stride=strides, padding=pads)
            gx, gw = torch.autograd.grad(yt, (xt, wt),
                                         torch.from_numpy(np.moveaxis(dy, -1, 1).copy()))
            what = f"trial {trial}: strides {strides}, size {size}, padding {pads}"
            assert relative_error(dx, np.moveaxis(gx.numpy(), 1, -1)) <= 1e-12, what
            assert relative_error(dk, np.moveaxis(gw.numpy(), (0, 1), (-1, -2))) <= 1e-12, what
