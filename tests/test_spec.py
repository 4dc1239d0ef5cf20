"""ConvSpec validation, resolution and footprint geometry."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from convarith import ConvSpec


@st.composite
def direct_specs(draw, rank=None):
    rank = rank or draw(st.integers(1, 3))
    kernel = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    words = ["valid", "same", "same_lower", "full"] + (["causal"] if rank == 1 else [])
    padding = draw(st.one_of(
        st.sampled_from(words),
        st.tuples(*[st.tuples(st.integers(0, 3), st.integers(0, 3)) for _ in range(rank)]),
    ))
    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    pool = draw(st.sampled_from([None, None, "max", "avg"]))
    if pool:
        mode = "zeros"
    spec = ConvSpec(kernel, strides, dilation, padding, padding_mode=mode, pool=pool,
                    ceil_mode=bool(pool) and draw(st.booleans()))
    size = tuple(draw(st.integers(1, 12)) for _ in range(rank))
    return spec, size


def resolve_or_none(spec, size):
    try:
        return spec.resolve(size)
    except ValueError:
        return None


# --- the lesson -------------------------------------------------------------------


def test_lesson_examples_resolve() -> None:
    assert ConvSpec(3, strides=2, padding="same").resolve((5, 5)).output_size == (3, 3)
    assert ConvSpec(3, strides=1, padding=1).resolve(28).output_size == (28, 28)
    assert ConvSpec(3, strides=3, padding=1).resolve(28).output_size == (10, 10)
    assert ConvSpec(3, dilation=2).effective_kernel == (5, 5)


def test_scalars_broadcast_and_rank_inferred() -> None:
    spec = ConvSpec((3, 5, 7), strides=2)
    assert spec.rank == 3 and spec.strides == (2, 2, 2) and spec.dilation == (1, 1, 1)
    assert ConvSpec(3).rank == 2
    assert ConvSpec(3, rank=1).kernel_size == (3,)
    assert ConvSpec(3, padding=2).padding == ((2, 2), (2, 2))
    assert ConvSpec(3, padding=(1, 2)).padding == ((1, 1), (2, 2))
    assert ConvSpec(3, padding=((0, 1), (2, 3))).padding == ((0, 1), (2, 3))


def test_input_shape_with_channels_and_batch() -> None:
    r = ConvSpec(3, padding="same", filters=8).resolve((4, 28, 28, 3))
    assert r.output_shape == (4, 28, 28, 8) and r.in_channels == 3 and r.batch == 4
    r = ConvSpec(3, data_format="channels_first", filters=8).resolve((4, 3, 28, 28))
    assert r.output_shape == (4, 8, 26, 26)
    r = ConvSpec(3, groups="depthwise", depth_multiplier=2).resolve((10, 10, 5))
    assert r.groups == 5 and r.output_shape == (8, 8, 10)


def test_keras_vs_torch_split_on_even_input() -> None:
    keras_like = ConvSpec(3, strides=2, padding="same").resolve((28, 28))
    torch_like = ConvSpec(3, strides=2, padding=1).resolve((28, 28))
    assert keras_like.output_size == torch_like.output_size == (14, 14)
    assert keras_like.padding == ((0, 1), (0, 1)) and torch_like.padding == ((1, 1), (1, 1))
    # so the first window is one pixel apart
    first_k = {t.source for t in keras_like.footprint((0, 0)) if t.source}
    first_t = {t.source for t in torch_like.footprint((0, 0)) if t.source}
    assert (0, 0) in first_k and (2, 2) in first_k and (2, 2) not in first_t


def test_transposed_resolution() -> None:
    r = ConvSpec(4, strides=2, padding=1, transposed=True).resolve((28, 28))
    assert r.output_size == (56, 56)  # (28-1)*2 - 2 + 3 + 1 by hand
    assert r.crop == ((1, 1), (1, 1))
    r = ConvSpec(3, strides=2, padding="same", transposed=True).resolve(7)
    assert r.output_size == (14, 14)
    r = ConvSpec(3, strides=2, padding=1, output_padding=1, transposed=True).resolve(7)
    assert r.output_size == (14, 14)  # (7-1)*2 - 2 + 3 + 1


# --- geometry properties -----------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(direct_specs())
def test_footprint_lies_in_padded_input_and_matches_formula(case) -> None:
    spec, size = case
    r = resolve_or_none(spec, size)
    if r is None:
        return
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(size, r.padding))
    for out in list(r.positions())[:40]:
        taps = r.footprint(out)
        assert len(taps) == math.prod(spec.kernel_size)
        for tap in taps:
            for axis, (p, k) in enumerate(zip(tap.position, tap.kernel)):
                expected = out[axis] * spec.strides[axis] + k * spec.dilation[axis]
                assert p == expected
                if not spec.ceil_mode:
                    assert 0 <= p < padded[axis]
            inside = all(0 <= p - lo < n for p, (lo, _), n in zip(tap.position, r.padding, size))
            assert tap.in_padding == (not inside)
            if inside:
                assert tap.source == tuple(p - lo for p, (lo, _) in zip(tap.position, r.padding))
            elif spec.padding_mode == "zeros":
                assert tap.source is None
            elif tap.source is not None:
                assert all(0 <= s < n for s, n in zip(tap.source, size))


@settings(max_examples=80, deadline=None)
@given(direct_specs(rank=2))
def test_feeds_is_the_inverse_of_footprint(case) -> None:
    spec, size = case
    r = resolve_or_none(spec, size)
    if r is None or math.prod(r.output_size) > 60:
        return
    forward = set()
    for out in r.positions():
        for tap in r.footprint(out):
            if tap.source is not None:
                forward.add((tap.source, out, tap.kernel))
    backward = set()
    for i in range(size[0]):
        for j in range(size[1]):
            for out, k in r.feeds((i, j)):
                backward.add(((i, j), out, k))
    assert forward == backward


def test_reflect_replicate_circular_sources() -> None:
    for mode, expected in (("reflect", [2, 1]), ("replicate", [0, 0]), ("circular", [3, 4])):
        r = ConvSpec(3, padding=((2, 0),), padding_mode=mode, rank=1).resolve(5)
        first = [t.source[0] if t.source else None for t in r.footprint((0,))][:2]
        assert first == expected, mode


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 8), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3),
       st.integers(0, 3), st.integers(0, 3))
def test_transposed_geometry_is_the_scatter(size, kernel, stride, dilation, lo, hi) -> None:
    """Every (input cell, tap) lands at out = i*S + k*D - crop_lo, once (PyTorch's definition)."""
    spec = ConvSpec(kernel, strides=stride, dilation=dilation, padding=((lo, hi),), transposed=True)
    r = resolve_or_none(spec, (size,))
    if r is None:
        return
    gathered = set()
    for (o,) in r.positions():
        for tap in r.footprint((o,)):
            if tap.source is not None:
                gathered.add((tap.source[0], tap.kernel[0], o))
    scattered = {
        (i, k, i * stride + k * dilation - lo)
        for i in range(size) for k in range(kernel)
        if 0 <= i * stride + k * dilation - lo < r.output_size[0]
    }
    assert gathered == scattered


# --- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        (dict(kernel_size=0), ValueError, ["kernel_size", "0", "positive"]),
        (dict(kernel_size=-3), ValueError, ["kernel_size", "-3"]),
        (dict(kernel_size=2.5), TypeError, ["kernel_size", "2.5", "integer"]),
        (dict(kernel_size=True), TypeError, ["kernel_size", "True"]),
        (dict(kernel_size="3"), TypeError, ["kernel_size", "'3'"]),
        (dict(kernel_size=(3, 3), strides=(1, 1, 1)), ValueError, ["strides", "2"]),
        (dict(kernel_size=3, padding="sme"), ValueError, ["padding", "'sme'", "valid"]),
        (dict(kernel_size=3, padding="causal"), ValueError, ["causal", "1-D"]),
        (dict(kernel_size=3, padding=((-1, 2), (0, 0)), padding_mode="reflect"), ValueError,
         ["padding[0]=(-1, 2)", "crops one side", "zeros"]),
        (dict(kernel_size=3, padding=((1, 2, 3), (0, 0))), ValueError, ["padding[0]", "pair"]),
        (dict(kernel_size=3, padding_mode="mirror"), ValueError, ["padding_mode", "'mirror'"]),
        (dict(kernel_size=3, groups=0), ValueError, ["groups", "0"]),
        (dict(kernel_size=3, filters=10, groups=3), ValueError, ["filters=10", "groups=3"]),
        (dict(kernel_size=3, output_padding=1), ValueError, ["output_padding", "transposed"]),
        (dict(kernel_size=3, transposed=True, strides=2, output_padding=2), ValueError,
         ["output_padding[0]=2", "stride"]),
        (dict(kernel_size=3, rank=4), ValueError, ["rank", "4"]),
        (dict(kernel_size=3, pool="min"), ValueError, ["pool", "'min'"]),
        (dict(kernel_size=3, data_format="NHWC"), ValueError, ["data_format", "'NHWC'"]),
        (dict(kernel_size=3, transposed=True, padding_mode="reflect"), ValueError, ["padding_mode"]),
        (dict(kernel_size=3, transposed=1), TypeError, ["transposed", "1"]),
    ],
)
def test_bad_specs_name_argument_value_and_rule(kwargs, error, words) -> None:
    with pytest.raises(error) as info:
        ConvSpec(**kwargs)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


@pytest.mark.parametrize(
    "spec, shape, words",
    [
        (ConvSpec(5), (3, 3), ["kernel spans 5", "padded input has only 3"]),
        (ConvSpec(3, dilation=3), (6, 6), ["kernel spans 7", "dilation 3"]),
        (ConvSpec(3), (0, 5), ["input_shape[0]", "positive"]),
        (ConvSpec(3), (5, 5, 5, 5, 5), ["rank-2", "5"]),
        (ConvSpec(3, groups=2), (5, 5, 3), ["3 channels", "groups=2"]),
        (ConvSpec(3, padding=3, padding_mode="reflect"), (3, 3), ["reflect", "size 3"]),
        (ConvSpec(3, padding=((5, 5), (5, 5)), transposed=True), (1, 1), ["crop"]),
        (ConvSpec(3), "28x28", ["input_shape"]),
    ],
)
def test_bad_resolutions(spec, shape, words) -> None:
    with pytest.raises((ValueError, TypeError)) as info:
        spec.resolve(shape)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_negative_padding_crops() -> None:
    """JAX's explicit pairs may be negative: the input is cropped first (hand-derived)."""
    r = ConvSpec(3, padding=((-1, 0),), rank=1).resolve(7)
    assert r.output_size == (4,)  # floor((7 - 1 + 0 - 3) / 1) + 1
    assert [t.source for t in r.footprint((0,))] == [(1,), (2,), (3,)]
    assert r.dropped == (0,)
    r = ConvSpec(3, padding=((0, -2),), rank=1).resolve(7)
    assert r.output_size == (3,) and r.dropped == (2,)  # the two cropped rows are never read


def test_specs_are_frozen_and_hashable() -> None:
    spec = ConvSpec(3)
    with pytest.raises(AttributeError):
        spec.strides = (2, 2)  # type: ignore[misc]
    assert hash(spec) == hash(ConvSpec((3, 3)))
    assert spec.replace(strides=2).strides == (2, 2)


def test_resolve_remembers_shapes_but_still_checks_every_input():
    """Resolving the same spec and shape twice gives the same frozen answer; bad shapes
    (a bool, a zero, a float) are still refused every time, never served from memory."""
    spec = ConvSpec(3, strides=2, padding="same")
    first = spec.resolve((2, 9, 9, 4))
    assert spec.resolve((2, 9, 9, 4)) is first
    assert first.output_size == (5, 5)  # ceil(9 / 2), hand-derived
    assert ConvSpec(3, strides=2, padding="same").resolve((2, 9, 9, 4)) == first
    assert spec.resolve((2, 10, 9, 4)).output_size == (5, 5)
    for bad in [(2, True, 9, 4), (2, 0, 9, 4), (2, 9.0, 9, 4)]:
        for _ in range(2):
            with pytest.raises((TypeError, ValueError), match="input_shape"):
                spec.resolve(bad)
