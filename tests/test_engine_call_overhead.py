"""The remembered call plans (``core.call_plan``): same results, same refusals.

A call of a layer seen before skips :func:`~convarith.engine.core.prepare`'s checks;
these tests make sure every bad input is still refused with the message of a first
call, and that results, layouts and dtypes match a call made with empty caches.
"""

from __future__ import annotations

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.engine import clear_caches, conv, conv_vjp, dispatch
from convarith.limits import limits


def _fresh_error(call) -> str:  # type: ignore[no-untyped-def]
    clear_caches()
    with pytest.raises((ValueError, TypeError)) as caught:
        call()
    return str(caught.value)


@pytest.mark.parametrize("bad", ["kernel_shape", "bias_shape", "x_channels", "dtype", "no_kernel"])
def test_a_remembered_layer_still_refuses_bad_inputs(bad: str) -> None:
    rng = np.random.default_rng(17)
    x = rng.standard_normal((1, 1, 1, 240)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 240, 10)).astype(np.float32)
    bias = rng.standard_normal(10).astype(np.float32)
    spec = ConvSpec(1)
    args = {
        "kernel_shape": (x, kernel[:, :, :, :9], spec, bias),
        "bias_shape": (x, kernel, spec, bias[:9]),
        "x_channels": (x[..., :200], kernel, spec, bias),
        "dtype": (x.astype(np.complex64), kernel, spec, bias),
        "no_kernel": (x, None, spec, bias),
    }[bad]
    expected = _fresh_error(lambda: conv(*args))
    conv(x, kernel, spec, bias)  # remembered now
    assert any(key[0] == "call" for key in dispatch._PLANS)
    with pytest.raises((ValueError, TypeError)) as caught:
        conv(*args)
    assert str(caught.value) == expected


def test_a_lower_output_limit_refuses_a_remembered_layer() -> None:
    x = np.ones((1, 7, 7, 8), np.float32)
    kernel = np.ones((3, 3, 8, 8), np.float32)
    spec = ConvSpec(3, padding="same")
    conv(x, kernel, spec)
    with limits(max_output_values=100), pytest.raises(ValueError, match="max_output_values=100"):
        conv(x, kernel, spec)
    assert conv(x, kernel, spec).shape == (1, 7, 7, 8)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.int32])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("batched", [True, False])
def test_remembered_calls_match_first_calls(dtype: type, data_format: str, batched: bool) -> None:
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((2, 6, 5, 4)) * 4).astype(dtype)
    if data_format == "channels_first":
        x = np.ascontiguousarray(np.moveaxis(x, -1, 1))
    if not batched:
        x = x[0]
    kernel = (rng.standard_normal((3, 3, 2, 6)) * 4).astype(dtype)
    bias = (rng.standard_normal(6) * 4).astype(dtype)
    spec = ConvSpec(3, padding="same", groups=2, data_format=data_format)
    clear_caches()
    first = conv(x, kernel, spec, bias)
    bias_before = bias.copy()
    again = [conv(x, kernel, spec, bias) for _ in range(2)]
    for later in again:
        assert later.dtype == first.dtype and later.shape == first.shape
        np.testing.assert_array_equal(later, first)
    np.testing.assert_array_equal(bias, bias_before)  # the bias is read, never written
    assert again[0] is not again[1]  # each call returns its own array


def test_pooling_and_non_arrays_take_the_same_path() -> None:
    x = np.arange(2 * 7 * 7 * 3, dtype=np.float32).reshape(2, 7, 7, 3)
    spec = ConvSpec(7, pool="avg")
    expected = x.mean(axis=(1, 2), keepdims=True)
    for _ in range(3):
        np.testing.assert_allclose(conv(x, None, spec), expected, rtol=1e-6)
        np.testing.assert_allclose(conv(x.tolist(), None, spec), expected, rtol=1e-6)
    with pytest.raises(ValueError, match="takes no kernel"):
        conv(x, np.ones((7, 7, 3, 3), np.float32), spec)


def test_the_remembered_calls_are_bounded_and_cleared() -> None:
    clear_caches()
    kernel = np.ones((3, 3, 1), np.float32)
    spec = ConvSpec(3, rank=1)
    for n in range(3, 3 + dispatch._PLANS_MAX + 5):
        conv(np.ones((1, n, 3), np.float32), kernel, spec)
    assert 0 < len(dispatch._PLANS) <= dispatch._PLANS_MAX
    clear_caches()
    assert not dispatch._PLANS


@pytest.mark.parametrize("variant", ["fortran", "strided", "float64", "int", "channels_first",
                                     "non_finite"])
def test_a_remembered_layer_takes_any_layout_of_its_shape(variant: str) -> None:
    """A layer remembered for C-contiguous float32 arrays gives, for arrays of another
    layout or dtype of the same shape, what a first call with empty caches gives."""
    rng = np.random.default_rng(23)
    x = rng.standard_normal((2, 4, 4, 6)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, 6, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    spec = ConvSpec(1)
    other = {
        "fortran": (np.asfortranarray(x), np.asfortranarray(kernel)),
        "strided": (np.ascontiguousarray(np.concatenate([x, x], axis=-1))[..., ::2],
                    kernel[:, :, ::-1][:, :, ::-1]),
        "float64": (x.astype(np.float64), kernel),
        "int": ((x * 4).astype(np.int32), kernel),
        "channels_first": (np.moveaxis(x, -1, 1), kernel),
        "non_finite": (np.where(x > 1.5, np.inf, x).astype(np.float32), kernel),
    }[variant]
    other_spec = ConvSpec(1, data_format="channels_first") if variant == "channels_first" else spec
    clear_caches()
    expected = conv(*other, other_spec, bias)
    d_expected = conv_vjp(*other, other_spec, np.ones_like(expected), bias)
    clear_caches()
    for _ in range(2):
        conv(x, kernel, spec, bias)
        conv_vjp(x, kernel, spec, np.ones((2, 4, 4, 5), np.float32), bias)
    for _ in range(2):
        got = conv(*other, other_spec, bias)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
        for d_got, d_want in zip(conv_vjp(*other, other_spec, np.ones_like(expected), bias),
                                 d_expected):
            np.testing.assert_array_equal(d_got, d_want)


@pytest.mark.parametrize("channels, filters, batch", [(1152, 48, 1), (32, 8, 1), (4, 96, 16)])
def test_a_remembered_squeeze_excitation_call_skips_every_check(
        channels: int, filters: int, batch: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1×1 layer on a 1×1 image seen before runs its bound plan alone: neither
    ``prepare`` nor the planner runs again, and the result is still the product."""
    from convarith.engine import core

    rng = np.random.default_rng(channels * filters + batch)
    x = rng.standard_normal((batch, 1, 1, channels)).astype(np.float32)
    kernel = rng.standard_normal((1, 1, channels, filters)).astype(np.float32)
    spec = ConvSpec(1)
    clear_caches()
    first = conv(x, kernel, spec)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a remembered call was checked or planned again")

    monkeypatch.setattr(core, "prepare", refuse)
    monkeypatch.setattr(core, "_direct_plan", refuse)
    x2 = rng.standard_normal(x.shape).astype(np.float32)  # new values, same layout
    got = conv(x2, kernel, spec)
    assert got.dtype == np.float32 and got.shape == (batch, 1, 1, filters)
    expected = x2.reshape(batch, channels).astype(np.float64) @ kernel.reshape(
        channels, filters).astype(np.float64)
    assert np.linalg.norm(got.reshape(batch, filters) - expected) <= 1e-5 * np.linalg.norm(
        expected)
    assert got is not first and not np.shares_memory(got, x2)


def test_a_bound_plan_lets_inf_and_nan_through_silently() -> None:
    """As every engine call: a non-finite input reaches the outputs that read it, with
    no floating-point warning (the bound plan runs under ``np.errstate`` too)."""
    import warnings

    x = np.ones((1, 1, 1, 3), np.float32)
    kernel = np.array([[[[1.0, 1.0], [1.0, 0.0], [1.0, 3e38]]]], np.float32)
    spec = ConvSpec(1)
    clear_caches()
    conv(x, kernel, spec)  # remembered
    x[0, 0, 0, 0] = np.inf
    x[0, 0, 0, 2] = 3e38
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = conv(x, kernel, spec)
    assert np.isposinf(got).all()  # inf + ..., and 3e38 * 3e38 overflows
    x[0, 0, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = conv(x, kernel, spec)
    assert np.isnan(got[0, 0, 0, 0])


@pytest.mark.parametrize("bad", [
    {"strides": True}, {"strides": (1, True)}, {"strides": 1.0}, {"strides": 0},
    {"strides": np.int64(0)}, {"padding": "smae"}, {"dilation_rate": [1, -1]},
])
def test_the_functional_helpers_remember_specs_but_not_refusals(bad: dict) -> None:
    """``conv2d`` remembers the spec its arguments build; an argument equal to a remembered
    one but of another type (True and 1, 1.0 and 1), or one it cannot hash, is still
    checked, and refused with the spec's own message every time."""
    import convarith

    x = np.ones((1, 5, 5, 2), np.float32)
    kernel = np.ones((3, 3, 2, 4), np.float32)
    good = {name: 1 if name != "padding" else "valid" for name in bad}
    clear_caches()
    with pytest.raises((TypeError, ValueError)) as first:
        convarith.conv2d(x, kernel, **bad)
    for _ in range(2):
        assert convarith.conv2d(x, kernel, **good).shape == (1, 3, 3, 4)
        with pytest.raises(type(first.value)) as again:
            convarith.conv2d(x, kernel, **bad)
        assert str(again.value) == str(first.value)


def test_a_remembered_functional_spec_gives_the_same_results() -> None:
    import convarith

    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 7, 7, 4)).astype(np.float32)
    kernel = rng.standard_normal((3, 3, 2, 6)).astype(np.float32)
    clear_caches()
    first = convarith.conv2d(x, kernel, strides=2, padding="same", dilation_rate=1)
    pooled = convarith.max_pool(x, 2, ceil_mode=True)
    for _ in range(2):
        np.testing.assert_array_equal(
            convarith.conv2d(x, kernel, strides=2, padding="same", dilation_rate=1), first)
        np.testing.assert_array_equal(convarith.max_pool(x, 2, ceil_mode=True), pooled)
    assert first.shape == (2, 4, 4, 6) and pooled.shape == (2, 4, 4, 4)
    with pytest.raises(TypeError, match="ceil_mode must be True or False"):
        convarith.max_pool(x, 2, ceil_mode=1)  # equal to True, refused all the same


@pytest.mark.parametrize("kernel_size", [1, 3])
def test_a_remembered_layer_with_a_bias_adds_it(kernel_size: int) -> None:
    rng = np.random.default_rng(kernel_size)
    x = rng.standard_normal((2, 5, 5, 6)).astype(np.float32)
    kernel = rng.standard_normal((kernel_size, kernel_size, 6, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    spec = ConvSpec(kernel_size, padding="same")
    clear_caches()
    without = conv(x, kernel, spec)
    first = conv(x, kernel, spec, bias)
    np.testing.assert_allclose(first, without + bias, rtol=1e-6, atol=1e-6)
    bias_before = bias.copy()
    for _ in range(2):
        again = conv(x, kernel, spec, bias)
        np.testing.assert_array_equal(again, first)
        assert again is not first and not np.shares_memory(again, x)
    np.testing.assert_array_equal(bias, bias_before)
