"""Small 1×1 layers' backward passes taken as two products once their plan is made
(``core._tiny_pointwise_vjp``): random layers (1-D to 3-D, 1 to 16 images, 1 to 300
channels either side, float32 and float64, with and without a bias, input gradient
wanted or not) against PyTorch's ``convolution_backward`` in float64, and the same
layers' later calls taking that way only where the plan allows it (a named algorithm,
padding, strides, groups, larger layers and arrays the plan does not take as they are
keep the usual way). Each case prints its seed."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from _helpers import relative_error, torch_vjp_nhwc
from convarith import ConvSpec, engine
from convarith.engine import core, state

CASES = 12 if os.environ.get("CI") == "true" else 120
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


@pytest.fixture
def tiny_calls(monkeypatch):
    """Counts the calls that take the two products (with no plan remembered from before:
    a layer's first call here makes its plan)."""
    state.process_caches()["remembered plans"]()
    calls = []
    original = core._tiny_pointwise_vjp

    def spy(*arguments):
        calls.append(arguments[0].shape)
        return original(*arguments)

    monkeypatch.setattr(core, "_tiny_pointwise_vjp", spy)
    return calls


def _random_layer(rng: random.Random):
    rank = rng.choice([1, 2, 2, 3])
    side = rng.choice([1, 1, 2, 3, 4, 7])
    spatial = tuple(rng.choice([side, 1]) for _ in range(rank))
    channels, filters = rng.choice([1, 3, 4, 20, 48, 96, 300]), rng.choice([1, 4, 8, 96, 200])
    batch = rng.choice([1, 1, 2, 16])
    dtype = np.dtype(rng.choice([np.float32, np.float64]))
    return rank, (batch, *spatial, channels), filters, dtype


def test_small_pointwise_gradients_match_pytorch(tiny_calls):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    data = np.random.default_rng(seed)
    taken = 0
    planned = set()  # (a layer drawn again finds its plan made)
    for case in range(CASES):
        rank, shape, filters, dtype = _random_layer(rng)
        spec = ConvSpec(1, rank=rank, padding=rng.choice(["valid", "same"]))
        x = data.standard_normal(shape).astype(dtype)
        kernel = data.standard_normal((1,) * rank + (shape[-1], filters)).astype(dtype)
        dy = data.standard_normal((*shape[:-1], filters)).astype(dtype)
        bias = data.standard_normal(filters).astype(dtype) if rng.random() < 0.5 else None
        need_input_grad = rng.random() < 0.8
        expected_x, expected_kernel = torch_vjp_nhwc(x, kernel, dy, spec)
        expected_bias = dy.astype(np.float64).reshape(-1, filters).sum(axis=0)
        what = f"seed {seed}, case {case}: {shape} -> {filters}, {dtype}"
        tiny = 4.0 * np.prod(shape[:-1]) * shape[-1] * filters <= core.TINY_POINTWISE_FLOPS
        layer = (shape, filters, dtype, spec, bias is None)
        for call in range(2):  # the first call makes the plan, the second may take the products
            before = len(tiny_calls)
            d_x, d_kernel, d_bias = engine.conv_vjp(x, kernel, spec, dy, bias,
                                                    need_input_grad=need_input_grad)
            made = call == 1 or layer in planned
            assert len(tiny_calls) - before == int(made and tiny), what
            assert d_kernel.dtype == dtype and d_kernel.shape == kernel.shape, what
            assert relative_error(d_kernel, expected_kernel) <= TOLERANCE[dtype], what
            if need_input_grad:
                assert d_x.dtype == dtype and d_x.shape == x.shape, what
                assert relative_error(d_x, expected_x) <= TOLERANCE[dtype], what
            else:
                assert d_x is None, what
            if bias is None:
                assert d_bias is None, what
            else:
                assert d_bias.dtype == dtype and d_bias.shape == bias.shape, what
                assert relative_error(d_bias, expected_bias) <= TOLERANCE[dtype], what
        taken += tiny
        planned.add(layer)
    assert taken, f"seed {seed}: no layer small enough drawn"


def test_the_products_keep_infinities_and_nans(tiny_calls):
    x = np.ones((1, 2, 2, 3), np.float32)
    x[0, 0, 0, 1] = np.inf
    kernel = np.ones((1, 1, 3, 4), np.float32)
    kernel[0, 0, 2, 3] = np.nan
    dy = np.ones((1, 2, 2, 4), np.float32)
    spec = ConvSpec(1)
    for _ in range(2):
        d_x, d_kernel, _ = engine.conv_vjp(x, kernel, spec, dy)
        expected_x, expected_kernel = torch_vjp_nhwc(x, kernel, dy, spec)
        np.testing.assert_array_equal(d_x, expected_x.astype(np.float32))
        np.testing.assert_array_equal(d_kernel, expected_kernel.astype(np.float32))
    assert len(tiny_calls) == 1


@pytest.mark.parametrize("change", ["algorithm", "padding", "strides", "groups", "larger",
                                    "channels first", "unbatched", "float16", "d_out float64",
                                    "d_out strided", "d_out shape"])
def test_only_plain_small_pointwise_layers_take_the_products(change, tiny_calls):
    data = np.random.default_rng(7)
    spec = ConvSpec(1)
    x, kernel = data.standard_normal((1, 3, 3, 8)), data.standard_normal((1, 1, 8, 16))
    x, kernel = x.astype(np.float32), kernel.astype(np.float32)
    dy = data.standard_normal((1, 3, 3, 16)).astype(np.float32)
    algorithm = None
    if change == "algorithm":
        algorithm = "pointwise_rows"
    elif change == "padding":
        spec = ConvSpec(1, padding=((1, 0), (0, 1)))
        dy = data.standard_normal((1, 4, 4, 16)).astype(np.float32)
    elif change == "strides":
        spec = ConvSpec(1, strides=2)
        dy = dy[:, ::2, ::2].copy()
    elif change == "groups":
        spec, kernel = ConvSpec(1, groups=2), kernel[..., :4, :].copy()
    elif change == "larger":
        x = data.standard_normal((16, 14, 14, 32)).astype(np.float32)
        kernel = data.standard_normal((1, 1, 32, 16)).astype(np.float32)
        dy = data.standard_normal((16, 14, 14, 16)).astype(np.float32)
    elif change == "channels first":
        spec = ConvSpec(1, data_format="channels_first")
        x, dy = np.moveaxis(x, -1, 1).copy(), np.moveaxis(dy, -1, 1).copy()
    elif change == "unbatched":
        x, dy = x[0], dy[0]
    elif change == "float16":
        x, kernel, dy = x.astype(np.float16), kernel.astype(np.float16), dy.astype(np.float16)
    elif change == "d_out float64":
        dy = dy.astype(np.float64)
    elif change == "d_out strided":
        dy = np.repeat(dy, 2, axis=-1)[..., ::2]
    elif change == "d_out shape":
        dy = dy[:, :2]
    if change == "d_out shape":
        with pytest.raises(ValueError, match="d_out must have the output's shape"):
            engine.conv_vjp(x, kernel, spec, dy)
        with pytest.raises(ValueError, match="d_out must have the output's shape"):
            engine.conv_vjp(x, kernel, spec, dy)
        assert not tiny_calls
        return
    results = [engine.conv_vjp(x, kernel, spec, dy, algorithm=algorithm) for _ in range(2)]
    assert not tiny_calls, change
    for first, second in zip(*results):
        np.testing.assert_array_equal(first, second)
