"""The NumPy engine against the slow footprint reference, finite differences and golden vectors.

No framework is needed here: expected values come from ``tests/reference.py``
(a loop over output cells reading the spec's own footprint geometry), from
central finite differences, from hand derivations, or from golden vectors that
``scripts/gen_golden_engine.py`` computed with PyTorch. Randomized tests draw
a ``seed`` that hypothesis prints on failure.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import convarith
from _helpers import relative_error
from convarith import ConvSpec, conv, conv_vjp
from convarith.engine import api, dispatch
from convarith.engine.algorithms import offset_gemm
from convarith.engine.core import flip_swap
from reference import reference_conv

GOLDEN = Path(__file__).parent / "golden"
QUICK = settings(
    max_examples=150,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# --------------------------------------------------------------------------- random specs


@st.composite
def engine_cases(draw: Any) -> tuple[ConvSpec, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Any spec the engine runs, with tiny float64 data (shapes may be rejected: assume)."""
    rank = draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["conv", "conv", "transposed", "max", "avg"]))
    top = 5 if rank < 3 else 3
    kernel_size = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    sizes = tuple(draw(st.integers(1, top)) for _ in range(rank))
    data_format = draw(st.sampled_from(["channels_last", "channels_first"]))
    batch = draw(st.integers(1, 2))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    fields: dict[str, Any] = dict(kernel_size=kernel_size, strides=strides, dilation=dilation,
                                  data_format=data_format, rank=rank)
    explicit = st.tuples(st.integers(0, 2), st.integers(0, 2))
    kernel = bias = None
    if kind in ("max", "avg"):
        fields["pool"] = kind
        # at most half the window in padding (as frameworks require): no empty windows
        fields["padding"] = draw(st.one_of(
            st.sampled_from(["valid", "same", "same_lower"]),
            st.tuples(*[st.tuples(st.integers(0, k // 2), st.integers(0, k // 2))
                        for k in kernel_size])))
        fields["ceil_mode"] = draw(st.booleans())
        fields["count_include_pad"] = draw(st.booleans())
        channels = draw(st.integers(1, 3))
    elif kind == "transposed":
        groups = draw(st.integers(1, 2))
        channels = groups * draw(st.integers(1, 2))
        group_out = draw(st.integers(1, 2))
        fields.update(transposed=True, groups=groups)
        word = draw(st.sampled_from(["valid", "same", "explicit"]))
        if word == "explicit":
            fields["padding"] = tuple((draw(st.integers(-1, 2)), draw(st.integers(-1, 2)))
                                      for _ in range(rank))
        else:
            fields["padding"] = word
        if draw(st.booleans()):
            fields["output_padding"] = tuple(
                draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilation))
        kernel = rng.standard_normal((*kernel_size, group_out, channels))
        if draw(st.booleans()):
            bias = rng.standard_normal(group_out * groups)
    else:
        depthwise = draw(st.booleans())
        mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
        words = ["valid", "same", "same_lower", "full"] + (["causal"] if rank == 1 else [])
        fields["padding"] = draw(st.one_of(st.sampled_from(words),
                                           st.tuples(*[explicit] * rank)))
        fields["padding_mode"] = mode
        if depthwise:
            channels = draw(st.integers(1, 3))
            multiplier = draw(st.integers(1, 2))
            fields.update(groups="depthwise", depth_multiplier=multiplier)
            kernel = rng.standard_normal((*kernel_size, 1, channels * multiplier))
        else:
            groups = draw(st.integers(1, 3))
            channels = groups * draw(st.integers(1, 2))
            filters = groups * draw(st.integers(1, 2))
            fields["groups"] = groups
            kernel = rng.standard_normal((*kernel_size, channels // groups, filters))
        if draw(st.booleans()):
            bias = rng.standard_normal(kernel.shape[-1])
    try:
        spec = ConvSpec(**fields)
        shape = (batch, *sizes, channels) if data_format == "channels_last" else (
            batch, channels, *sizes)
        resolved = spec.resolve(shape)
    except ValueError:
        assume(False)
        raise
    if spec.pool is not None:  # frameworks forbid windows made only of padding
        assume(all(any(t.source is not None for t in resolved.footprint(o))
                   for o in resolved.positions()))
    return spec, rng.standard_normal(shape), kernel, bias


@QUICK
@given(case=engine_cases())
def test_forward_matches_the_footprint_reference(case: Any) -> None:
    spec, x, kernel, bias = case
    expected = reference_conv(x, kernel, spec, bias)
    actual = conv(x, kernel, spec, bias=bias)
    assert actual.shape == expected.shape
    assert actual.dtype == np.float64
    assert relative_error(actual, expected) <= 1e-12


def _loss_gradient_by_differences(function: Any, value: np.ndarray, weights: np.ndarray,
                                  step: float = 1e-6) -> np.ndarray:
    """d/dvalue of sum(function(value) * weights), central differences."""
    grad = np.zeros_like(value)
    flat, out = value.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        keep = flat[i]
        flat[i] = keep + step
        plus = float(np.sum(function(value) * weights))
        flat[i] = keep - step
        minus = float(np.sum(function(value) * weights))
        flat[i] = keep
        out[i] = (plus - minus) / (2 * step)
    return grad


@settings(max_examples=30, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(case=engine_cases())
def test_gradients_match_finite_differences(case: Any) -> None:
    spec, x, kernel, bias = case
    if spec.pool == "max":
        x = x + np.arange(x.size).reshape(x.shape) * 1e-2  # no ties, no kinks within a step
    y = conv(x, kernel, spec, bias=bias)
    weights = np.random.default_rng(x.size).standard_normal(y.shape)
    d_x, d_kernel, d_bias = conv_vjp(x, kernel, spec, weights, bias=bias)
    expected_x = _loss_gradient_by_differences(
        lambda v: conv(v, kernel, spec, bias=bias), x.copy(), weights)
    assert relative_error(d_x, expected_x) <= 1e-7
    if kernel is not None:
        expected_k = _loss_gradient_by_differences(
            lambda v: conv(x, v, spec, bias=bias), kernel.copy(), weights)
        assert relative_error(d_kernel, expected_k) <= 1e-7
    else:
        assert d_kernel is None
    if bias is not None:
        expected_b = _loss_gradient_by_differences(
            lambda v: conv(x, kernel, spec, bias=v), bias.copy(), weights)
        assert relative_error(d_bias, expected_b) <= 1e-7
    else:
        assert d_bias is None


# --------------------------------------------------------------------------- algorithms


@st.composite
def direct_problems(draw: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], tuple[int, ...], int]:
    rank = draw(st.integers(1, 3))
    kernel_size = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    depthwise = draw(st.booleans())
    group_in = 1 if depthwise else draw(st.integers(1, 3))
    filters = groups * draw(st.integers(1, 3))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    top = 9 if rank < 3 else 6
    sizes = tuple(draw(st.integers(e, max(e, top))) for e in eff)
    seed = draw(st.integers(0, 2**31 - 1))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(seed)
    xp = rng.standard_normal((draw(st.integers(1, 2)), *sizes, groups * group_in)).astype(dtype)
    kernel = rng.standard_normal((*kernel_size, group_in, filters)).astype(dtype)
    return xp, kernel, strides, dilation, groups


@QUICK
@given(problem=direct_problems())
def test_every_registered_algorithm_agrees_with_offset_gemm(problem: Any) -> None:
    """The contract: same values, shape and dtype, whichever algorithm applies."""
    xp, kernel, strides, dilation, groups = problem
    out_size = tuple(
        (n - ((k - 1) * d + 1)) // s + 1
        for n, k, s, d in zip(xp.shape[1:-1], kernel.shape[:-2], strides, dilation))
    expected = offset_gemm.direct(xp.astype(np.float64), kernel.astype(np.float64), strides,
                                  dilation, groups, out_size)
    dy = np.random.default_rng(0).standard_normal(expected.shape)
    expected_dk = offset_gemm.weight_grad(xp.astype(np.float64), dy, kernel.shape[:-2], strides,
                                          dilation, groups)
    problem_ = dispatch.ConvProblem(xp.shape, kernel.shape, strides, dilation, groups,
                                    out_size, xp.dtype)
    tolerance = 1e-5 if xp.dtype == np.float32 else 1e-10
    for name in dispatch.available_algorithms():
        algorithm = dispatch.get_algorithm(name)
        if algorithm.kind != "direct" or not algorithm.applies(problem_):
            continue
        y = algorithm.direct(xp, kernel, strides, dilation, groups, out_size)
        assert y.dtype == xp.dtype and y.shape == expected.shape, name
        assert relative_error(y, expected) <= tolerance, name
        bound = None if algorithm.bind is None else algorithm.bind(problem_)
        if bound is not None:  # the same contract, bound to the problem
            y = bound(xp, kernel)
            assert y.dtype == xp.dtype and y.shape == expected.shape, name
            assert relative_error(y, expected) <= tolerance, name
        if algorithm.weight_grad is not None:
            dk = algorithm.weight_grad(xp, dy.astype(xp.dtype), kernel.shape[:-2], strides,
                                       dilation, groups)
            assert dk.dtype == xp.dtype and dk.shape == kernel.shape, name
            assert relative_error(dk, expected_dk) <= tolerance, name


@st.composite
def transposed_problems(draw: Any) -> tuple[Any, ...]:
    rank = draw(st.integers(1, 3))
    kernel_size = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    groups = draw(st.sampled_from([1, 1, 2]))
    channels = groups * draw(st.integers(1, 3))
    group_out = draw(st.integers(1, 3))
    top = 6 if rank < 3 else 3
    sizes = tuple(draw(st.integers(1, top)) for _ in range(rank))
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    padding = []
    for n, s, e in zip(sizes, strides, eff):
        lo = draw(st.integers(-1, e - 1))
        hi = draw(st.integers(max(-1, e - ((n - 1) * s + 1 + lo)), e))
        padding.append((lo, hi))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    x = rng.standard_normal((draw(st.integers(1, 2)), *sizes, channels)).astype(dtype)
    kernel = rng.standard_normal((*kernel_size, group_out, channels)).astype(dtype)
    return x, kernel, strides, dilation, groups, tuple(padding)


@QUICK
@given(problem=transposed_problems())
def test_every_transposed_algorithm_agrees_with_zero_insertion(problem: Any) -> None:
    """The transposed contract: the stride-1 convolution of the zero-inserted grid."""
    from convarith.engine.core import transposed_conv
    from convarith.engine.padding import zero_insert

    x, kernel, strides, dilation, groups, padding = problem
    grid = zero_insert(x.astype(np.float64), strides, padding)
    rank = len(strides)
    out_size = tuple(n - (k - 1) * d for n, k, d in
                     zip(grid.shape[1:-1], kernel.shape[:rank], dilation))
    assume(all(o >= 1 for o in out_size))
    expected = offset_gemm.direct(grid, flip_swap(kernel.astype(np.float64), groups),
                                  (1,) * rank, dilation, groups, out_size)
    tolerance = 1e-5 if x.dtype == np.float32 else 1e-10
    default = transposed_conv(x, kernel, strides, dilation, groups, padding)
    assert default.dtype == x.dtype and relative_error(default, expected) <= tolerance
    problem_ = dispatch.ConvProblem(x.shape, kernel.shape, strides, dilation, groups, out_size,
                                    x.dtype)
    for name in dispatch.available_algorithms():
        algorithm = dispatch.get_algorithm(name)
        if algorithm.kind != "transposed" or not algorithm.applies(problem_):
            continue
        y = algorithm.direct(x, kernel, strides, dilation, groups, padding, out_size)
        assert y.dtype == x.dtype and y.shape == expected.shape, name
        assert relative_error(y, expected) <= tolerance, name


def test_a_transposed_algorithm_is_used_when_cheaper_or_named() -> None:
    from convarith.engine.core import transposed_conv

    calls = []
    sizes = []

    def spy(x: Any, kernel: Any, strides: Any, dilation: Any, groups: Any, padding: Any,
            out_size: Any) -> Any:
        calls.append(padding)
        sizes.append(out_size)
        return transposed_conv(x, kernel, strides, dilation, groups, padding,
                               algorithm="offset_gemm")

    x = np.random.default_rng(13).standard_normal((1, 4, 4, 2))
    kernel = np.random.default_rng(14).standard_normal((3, 3, 5, 2))
    spec = ConvSpec(3, strides=2, padding="same", transposed=True)
    expected = conv(x, kernel, spec, algorithm="offset_gemm")
    dispatch.register_algorithm("spy_transposed", spy, cost=lambda p: 0.0, kind="transposed")
    try:
        np.testing.assert_allclose(conv(x, kernel, spec), expected, rtol=1e-12)
        assert calls == [spec.resolve(x.shape).padding]
        assert sizes == [spec.resolve(x.shape).output_size]  # derived once, by the engine
        np.testing.assert_allclose(conv(x, kernel, spec, algorithm="spy_transposed"), expected,
                                   rtol=1e-12)
        assert len(calls) == 2
        with pytest.raises(ValueError, match="transposed algorithm, not direct"):
            conv(x, np.ones((3, 3, 2, 1)), ConvSpec(3), algorithm="spy_transposed")
    finally:
        dispatch.unregister_algorithm("spy_transposed")
    with pytest.raises(ValueError, match="kind must be"):
        dispatch.register_algorithm("bad", spy, kind="sideways")


def test_the_direct_contract_by_hand() -> None:
    # y[o] = sum_k xp[o*S + k*D] * kernel[k], per group
    xp = np.arange(8.0).reshape(1, 4, 2)  # channels (0,1), (2,3), (4,5), (6,7)
    kernel = np.array([[[1.0]], [[10.0]]])  # (K=2, Cg=1, F=2) with 2 groups: one filter each
    kernel = np.concatenate([kernel, 2 * kernel], axis=-1)
    y = offset_gemm.direct(xp, kernel, (1,), (2,), 2, (2,))
    # out 0, group 0: xp[0,0]*1 + xp[2,0]*10 = 0 + 40; group 1: (1*1 + 5*10)*2
    assert y[0].tolist() == [[40.0, 102.0], [62.0, 146.0]]


def test_registry_forces_and_rejects_algorithms() -> None:
    x = np.random.default_rng(1).standard_normal((1, 6, 6, 2))
    kernel = np.random.default_rng(2).standard_normal((3, 3, 2, 3))
    spec = ConvSpec(3, padding="same")
    calls = []

    def spy(*args: Any) -> np.ndarray:
        calls.append(args[-1])
        return offset_gemm.direct(*args)

    dispatch.register_algorithm("spy", spy, applies=lambda p: p.rank == 2,
                                cost=lambda p: float("inf"))
    try:
        assert "spy" in convarith.available_algorithms()
        default = conv(x, kernel, spec)
        assert not calls  # infinite cost: never chosen by itself
        forced = conv(x, kernel, spec, algorithm="spy")
        assert calls == [(6, 6)]
        np.testing.assert_allclose(forced, default, rtol=1e-12)
        with pytest.raises(ValueError, match="does not apply"):
            conv(np.ones((1, 5, 2)), np.ones((3, 2, 1)), ConvSpec(3, rank=1), algorithm="spy")
    finally:
        dispatch.unregister_algorithm("spy")
    with pytest.raises(ValueError, match="not registered.*offset_gemm"):
        conv(x, kernel, spec, algorithm="nope")


def test_remembered_choices_follow_the_registry_and_the_budget(monkeypatch: Any) -> None:
    """The dispatch remembers its choice per shape, and forgets it when an algorithm
    is registered or removed, or the workspace budget changes."""
    x = np.random.default_rng(4).standard_normal((1, 7, 7, 2))
    kernel = np.random.default_rng(5).standard_normal((3, 3, 2, 2))
    spec = ConvSpec(3, padding="same")
    problem = dispatch.ConvProblem((1, 9, 9, 2), (3, 3, 2, 2), (1, 1), (1, 1), 1, (7, 7),
                                   np.dtype(np.float64))
    before = dispatch.choose(problem).name
    assert dispatch.choose(problem).name == before  # asked twice, same answer
    calls = []

    def spy(*args: Any, **kwargs: Any) -> np.ndarray:
        calls.append(args[-1])
        return offset_gemm.direct(*args)

    dispatch.register_algorithm("cheap_spy", spy, cost=lambda p: -1.0)
    try:
        assert dispatch.choose(problem).name == "cheap_spy"
        conv(x, kernel, spec)
        assert calls == [(7, 7)]
        # a smaller budget is a different question (algorithms may stop applying)
        monkeypatch.setattr(dispatch, "WORKSPACE_BYTES", 1)
        assert dispatch.choose(problem).name == "cheap_spy"
        assert any(key[-1] == 1 for key in dispatch._CHOICES)
    finally:
        dispatch.unregister_algorithm("cheap_spy")
    monkeypatch.undo()
    assert dispatch.choose(problem).name == before


def test_flip_swap_is_an_involution_and_swaps_groups() -> None:
    kernel = np.random.default_rng(3).standard_normal((2, 3, 4, 6))  # Cg=4, G=2, Fg=3
    swapped = flip_swap(kernel, 2)
    assert swapped.shape == (2, 3, 3, 8)
    assert swapped[1, 2, 1, 4 + 3] == kernel[0, 0, 3, 3 + 1]
    np.testing.assert_array_equal(flip_swap(swapped, 2), kernel)


# --------------------------------------------------------------------------- memory


def _peak_bytes(function: Any) -> tuple[Any, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        base = tracemalloc.get_traced_memory()[0]
        result = function()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return result, peak


def test_memory_stays_bounded_where_im2col_would_need_gigabytes() -> None:
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 120, 120, 64), dtype=np.float32)
    kernel = rng.standard_normal((15, 15, 64, 8), dtype=np.float32) / 100
    spec = ConvSpec(15)
    out = spec.resolve(x.shape).output_size
    im2col = x.shape[0] * int(np.prod(out)) * 15 * 15 * 64 * 4
    assert im2col > 2**30
    y, peak = _peak_bytes(lambda: conv(x, kernel, spec, algorithm="offset_gemm"))
    budget = dispatch.WORKSPACE_BYTES
    assert peak <= y.nbytes + budget, (peak, y.nbytes)
    spot = reference_conv(x[:1, :15, :15], kernel, spec)[0, 0, 0]
    np.testing.assert_allclose(y[0, 0, 0], spot, rtol=1e-4)


def test_small_budget_chunks_forward_and_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 40, 40, 16))
    kernel = rng.standard_normal((5, 5, 16, 4))
    spec = ConvSpec(5, strides=2, padding="same")
    expected = conv(x, kernel, spec, algorithm="offset_gemm")
    dy = rng.standard_normal(expected.shape)
    expected_grads = conv_vjp(x, kernel, spec, dy, algorithm="offset_gemm")
    budget = 64 * 2**10
    monkeypatch.setattr(dispatch, "WORKSPACE_BYTES", budget)
    y, peak = _peak_bytes(lambda: conv(x, kernel, spec, algorithm="offset_gemm"))
    padded = 3 * 43 * 43 * 16 * 8  # the padded input is a copy
    assert peak <= padded + y.nbytes + budget + 2**14, peak
    np.testing.assert_allclose(y, expected, rtol=1e-12)
    grads, _ = _peak_bytes(lambda: conv_vjp(x, kernel, spec, dy, algorithm="offset_gemm"))
    for got, want in zip(grads[:2], expected_grads[:2]):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_row_blocks_cover_the_output_once() -> None:
    seen = np.zeros((3, 5, 4), dtype=int)
    for block in offset_gemm.row_blocks((3, 5, 4), 8, 8 * 7):
        seen[block] += 1
        shape = [b.stop - b.start for b in block]
        assert int(np.prod(shape)) * 8 <= 8 * 7 or shape[-2:] == [1, 4]
    assert (seen == 1).all()


# --------------------------------------------------------------------------- dtypes, NaN


def test_float16_is_computed_in_float32_and_returned_as_float16() -> None:
    rng = np.random.default_rng(6)
    x = rng.standard_normal((1, 7, 7, 3)).astype(np.float16)
    kernel = rng.standard_normal((3, 3, 3, 2)).astype(np.float16)
    spec = ConvSpec(3, padding="same")
    y = conv(x, kernel, spec)
    assert y.dtype == np.float16
    want = conv(x.astype(np.float32), kernel.astype(np.float32), spec).astype(np.float16)
    np.testing.assert_array_equal(y, want)
    dx, dk, _ = conv_vjp(x, kernel, spec, np.ones_like(y))
    assert dx.dtype == dk.dtype == np.float16


def test_integers_run_in_float64_and_mixed_floats_promote() -> None:
    x = np.arange(12).reshape(1, 4, 3)
    kernel = np.ones((2, 3, 1), dtype=np.int32)
    y = conv(x, kernel, ConvSpec(2, rank=1))
    assert y.dtype == np.float64
    assert y[0, :, 0].tolist() == [15.0, 33.0, 51.0]  # (0+1+2)+(3+4+5), ...
    mixed = conv(x.astype(np.float32), kernel.astype(np.float64), ConvSpec(2, rank=1))
    assert mixed.dtype == np.float64


def test_nan_and_inf_propagate_to_exactly_the_cells_that_read_them() -> None:
    x = np.zeros((1, 5, 5, 1))
    x[0, 2, 2, 0] = np.nan
    x[0, 0, 3, 0] = np.inf
    spec = ConvSpec(3, padding="same")
    y = conv(x, np.ones((3, 3, 1, 1)), spec)
    ref = reference_conv(x, np.ones((3, 3, 1, 1)), spec)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ref))
    np.testing.assert_array_equal(np.isinf(y), np.isinf(ref))
    assert np.isnan(y[0, 1:4, 1:4, 0]).all() and np.isinf(y[0, 0, 4, 0])
    pooled = conv(x, None, ConvSpec(2, strides=2, pool="max"))
    assert np.isnan(pooled[0, 1, 1, 0]) and np.isinf(pooled[0, 0, 1, 0])


def test_max_pool_gradient_goes_to_the_first_maximum() -> None:
    x = np.array([[1.0, 3.0, 3.0, 0.0, 3.0]]).reshape(1, 5, 1)
    spec = ConvSpec(3, strides=1, pool="max", rank=1)
    d_x, d_kernel, d_bias = conv_vjp(x, None, spec, np.ones((1, 3, 1)))
    # windows [1,3,3] [3,3,0] [3,0,3]: first maxima at cells 1, 1, 2
    assert d_x[0, :, 0].tolist() == [0.0, 2.0, 1.0, 0.0, 0.0]
    assert d_kernel is None and d_bias is None


def test_average_divisors_follow_pytorch_by_hand() -> None:
    # input 5, kernel 2, stride 2, padding 1, ceil mode: windows over padded cells
    # [-1,0] [1,2] [3,4] -> plus ceil window [5,6]? It would start in the right
    # padding (5 >= 5 + 1 = 6? no: starts at padded index 6 = input 5), so it is dropped.
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0]).reshape(1, 5, 1)
    spec = ConvSpec(2, strides=2, padding=1, pool="avg", ceil_mode=True, rank=1,
                    count_include_pad=True)
    assert conv(x, None, spec)[0, :, 0].tolist() == [0.5, 2.5, 4.5]
    spec_excl = spec.replace(count_include_pad=False)
    assert conv(x, None, spec_excl)[0, :, 0].tolist() == [1.0, 2.5, 4.5]
    # a ceil-mode window hanging past the padding counts only the cells it covers
    spec = ConvSpec(3, strides=2, pool="avg", ceil_mode=True, rank=1, count_include_pad=True)
    assert conv(np.ones((1, 4, 1)), None, spec)[0, :, 0].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------- errors


def test_channel_mismatch_names_both_counts_and_hints_at_the_layout() -> None:
    x_nhwc = np.zeros((1, 8, 8, 3))
    kernel = np.zeros((3, 3, 3, 4))
    with pytest.raises(ValueError, match=r"in-channels \(3\).*channels_first.*looks channels_last"):
        conv(x_nhwc, kernel, ConvSpec(3, data_format="channels_first"))
    x_nchw = np.zeros((1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"looks channels_first.*data_format='channels_first'"):
        conv(x_nchw, kernel, ConvSpec(3))
    with pytest.raises(ValueError, match=r"groups=2"):
        conv(np.zeros((1, 8, 8, 6)), kernel, ConvSpec(3))
    with pytest.raises(ValueError, match=r"depth_multiplier=2 over 3 channels must have 6"):
        conv(np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 1, 3)),
             ConvSpec(3, groups="depthwise", depth_multiplier=2))
    with pytest.raises(ValueError, match=r"depthwise kernel for conv\(\) has the grouped layout"):
        conv(np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 3, 2)), ConvSpec(3, groups="depthwise"))
    with pytest.raises(ValueError, match=r"transposed kernel.*takes 4 input channels"):
        conv(np.zeros((1, 5, 5, 3)), np.zeros((3, 3, 2, 4)), ConvSpec(3, transposed=True))


def test_shape_rank_and_dtype_errors_are_clear() -> None:
    spec = ConvSpec(3)
    with pytest.raises(ValueError, match=r"x must have 4 axes .*got shape \(8, 8\)"):
        conv(np.zeros((8, 8)), np.zeros((3, 3, 1, 1)), spec)
    with pytest.raises(ValueError, match=r"kernel must have 4 axes"):
        conv(np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1)), spec)
    with pytest.raises(ValueError, match=r"does not match spec.kernel_size=\(3, 3\)"):
        conv(np.zeros((1, 8, 8, 1)), np.zeros((5, 5, 1, 1)), spec)
    with pytest.raises(TypeError, match=r"x must hold real numbers.*<U1"):
        conv(np.array([["a"]]), np.zeros((3, 3, 1, 1)), spec)
    with pytest.raises(TypeError, match=r"kernel must hold real numbers.*complex"):
        conv(np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1, 1), complex), spec)
    with pytest.raises(ValueError, match=r"bias must have shape \(2,\)"):
        conv(np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1, 2)), spec, bias=np.zeros(3))
    with pytest.raises(ValueError, match=r"takes no kernel"):
        conv(np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1, 1)), ConvSpec(3, pool="max"))
    with pytest.raises(ValueError, match=r"d_out must have the output's shape \(1, 6, 6, 1\)"):
        conv_vjp(np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1, 1)), spec, np.zeros((1, 8, 8, 1)))
    with pytest.raises(TypeError, match=r"spec must be a convarith.ConvSpec"):
        conv(np.zeros((1, 8, 8, 1)), np.zeros((3, 3, 1, 1)), {"kernel_size": 3})


def test_unbatched_input_keeps_its_rank() -> None:
    x = np.random.default_rng(7).standard_normal((3, 6, 6))  # channels_first, no batch
    kernel = np.random.default_rng(8).standard_normal((3, 3, 3, 2))
    spec = ConvSpec(3, data_format="channels_first")
    assert conv(x, kernel, spec).shape == (2, 4, 4)
    np.testing.assert_allclose(conv(x, kernel, spec), conv(x[None], kernel, spec)[0])


# --------------------------------------------------------------------------- helpers


def test_keras_named_helpers_build_the_same_specs() -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 7, 6, 4))
    kernel = rng.standard_normal((3, 2, 2, 6))
    got = convarith.conv2d(x, kernel, strides=(2, 1), padding="same", dilation_rate=(1, 2),
                           groups=2)
    spec = ConvSpec((3, 2), strides=(2, 1), padding="same", dilation=(1, 2), groups=2)
    np.testing.assert_allclose(got, reference_conv(x, kernel, spec), rtol=1e-12)
    x1 = rng.standard_normal((1, 6, 2))
    k1 = rng.standard_normal((3, 2, 1))
    causal = convarith.conv1d(x1, k1, padding="causal", dilation_rate=2)
    manual = convarith.conv1d(np.pad(x1, ((0, 0), (4, 0), (0, 0))), k1, dilation_rate=2)
    np.testing.assert_allclose(causal, manual, rtol=1e-12)
    x3 = rng.standard_normal((1, 4, 4, 4, 2))
    k3 = rng.standard_normal((2, 2, 2, 2, 3))
    spec3 = ConvSpec(2, strides=2, rank=3)
    np.testing.assert_allclose(convarith.conv3d(x3, k3, strides=2),
                               reference_conv(x3, k3, spec3), rtol=1e-12)


def test_depthwise_and_separable_helpers_use_keras_channel_order() -> None:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((1, 5, 5, 3))
    depthwise = rng.standard_normal((3, 3, 3, 2))
    y = convarith.depthwise_conv2d(x, depthwise, padding="same")
    for c in range(3):
        for m in range(2):
            single = conv(x[..., c:c + 1], depthwise[:, :, c:c + 1, m:m + 1],
                          ConvSpec(3, padding="same"))
            np.testing.assert_allclose(y[..., c * 2 + m], single[..., 0], rtol=1e-12)
    pointwise = rng.standard_normal((1, 1, 6, 4))
    separable = convarith.separable_conv2d(x, depthwise, pointwise, padding="same")
    np.testing.assert_allclose(separable, np.einsum("nhwc,cf->nhwf", y, pointwise[0, 0]),
                               rtol=1e-12)


def test_pool_helpers_default_strides_to_the_pool_size() -> None:
    x = np.arange(16.0).reshape(1, 4, 4, 1)
    assert convarith.max_pool(x, 2)[0, :, :, 0].tolist() == [[5.0, 7.0], [13.0, 15.0]]
    assert convarith.avg_pool(x, 2)[0, :, :, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert api.avg_pool(x, (2, 2), strides=1).shape == (1, 3, 3, 1)


def test_conv_transpose_helper_inverts_strided_shapes() -> None:
    x = np.ones((1, 3, 3, 2))
    kernel = np.ones((3, 3, 5, 2))  # (k, k, out, in)
    assert convarith.conv_transpose(x, kernel, strides=2, padding="same").shape == (1, 6, 6, 5)
    assert convarith.conv_transpose(x, kernel, strides=2).shape == (1, 7, 7, 5)
    y = convarith.conv_transpose(x, kernel, strides=2, padding=1, output_padding=1)
    assert y.shape == (1, 6, 6, 5)


def test_kernel_layout_round_trip() -> None:
    w = np.random.default_rng(11).standard_normal((8, 3, 5, 4))
    k = convarith.kernel_from_torch(w)
    assert k.shape == (5, 4, 3, 8) and k[2, 1, 0, 7] == w[7, 0, 2, 1]
    np.testing.assert_array_equal(convarith.kernel_to_torch(k), w)
    wt = np.random.default_rng(12).standard_normal((3, 2, 4))  # (in, out/g, k)
    kt = convarith.kernel_from_torch(wt, transposed=True)
    assert kt.shape == (4, 2, 3)
    np.testing.assert_array_equal(convarith.kernel_to_torch(kt, transposed=True), wt)


# --------------------------------------------------------------------------- golden vectors


GOLDEN_FILES = sorted(GOLDEN.glob("engine_*.npz"))


def test_golden_vectors_exist_and_are_small() -> None:
    assert GOLDEN_FILES, "run scripts/gen_golden_engine.py"
    assert sum(p.stat().st_size for p in GOLDEN_FILES) < 2**20


@pytest.mark.parametrize("path", GOLDEN_FILES, ids=[p.stem for p in GOLDEN_FILES])
def test_golden_vectors_from_pytorch(path: Path) -> None:
    with np.load(path) as archive:
        cases = json.loads(str(archive["cases"]))
        for index, fields in enumerate(cases):
            if "padding" in fields and isinstance(fields["padding"], list):
                fields["padding"] = tuple(
                    tuple(p) if isinstance(p, list) else p for p in fields["padding"])
            spec = ConvSpec(**fields)
            x = archive[f"{index}_x"]
            kernel = archive[f"{index}_kernel"] if f"{index}_kernel" in archive else None
            bias = archive[f"{index}_bias"] if f"{index}_bias" in archive else None
            y = conv(x, kernel, spec, bias=bias)
            assert relative_error(y, archive[f"{index}_y"]) <= 1e-10, (index, fields)
            grads = conv_vjp(x, kernel, spec, archive[f"{index}_dy"], bias=bias)
            for name, got in zip(("dx", "dkernel", "dbias"), grads):
                key = f"{index}_{name}"
                if key in archive:
                    assert relative_error(got, archive[key]) <= 1e-10, (index, name, fields)
