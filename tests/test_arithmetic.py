"""The integer arithmetic: hand-derived values and properties checked by brute force."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from convarith import arithmetic as ar

sizes = st.integers(1, 64)
kernels = st.integers(1, 7)
strides = st.integers(1, 4)
dilations = st.integers(1, 4)
pads = st.integers(0, 6)


def window_starts(size: int, kernel: int, stride: int, dilation: int, lo: int, hi: int) -> list[int]:
    """Brute force: every window start in padded coordinates that fits."""
    span = ar.effective_kernel(kernel, dilation)
    return [start for start in range(0, size + lo + hi) if start % stride == 0 and start + span <= size + lo + hi]


# --- the lesson's examples (slides 9, 11, 12), derived by hand --------------


def test_lesson_5x5_same_stride_2_gives_3() -> None:
    lo, hi = ar.same_padding(5, 3, stride=2)
    assert (lo, hi) == (1, 1)  # (ceil(5/2)-1)*2 + 3 - 5 = 2, split evenly
    assert ar.conv_output_size(5, 3, stride=2, padding=(lo, hi)) == 3


def test_lesson_28_pixels_padding_1() -> None:
    assert ar.conv_output_size(28, 3, stride=1, padding=(1, 1)) == 28  # (28-3+2)/1+1
    assert ar.conv_output_size(28, 3, stride=3, padding=(1, 1)) == 10  # floor(27/3)+1


def test_lesson_dilated_3x3_sees_5x5() -> None:
    assert ar.effective_kernel(3, 2) == 5


def test_slide_10_misprint_is_not_the_formula() -> None:
    # (I - K + 2P) / (S + 1) with the slide-11 numbers gives 13.5, not 28
    assert (28 - 3 + 2) / (1 + 1) != ar.conv_output_size(28, 3, 1, 1, (1, 1))


def test_keras_even_input_stride_2_pads_0_1() -> None:
    assert ar.same_padding(28, 3, stride=2) == (0, 1)
    assert ar.same_padding(28, 3, stride=2, lower=True) == (1, 0)


# --- properties -----------------------------------------------------------------


@given(sizes, kernels, strides, dilations, pads, pads)
def test_output_size_counts_the_windows(size, kernel, stride, dilation, lo, hi) -> None:
    starts = window_starts(size, kernel, stride, dilation, lo, hi)
    assert ar.conv_output_size(size, kernel, stride, dilation, (lo, hi)) == len(starts)


@given(sizes, kernels, strides, dilations, st.booleans())
def test_same_gives_ceil(size, kernel, stride, dilation, lower) -> None:
    lo, hi = ar.same_padding(size, kernel, stride, dilation, lower)
    assert abs(lo - hi) <= 1
    assert (hi >= lo) != lower or lo == hi
    assert ar.conv_output_size(size, kernel, stride, dilation, (lo, hi)) == math.ceil(size / stride)


@given(sizes, kernels, strides, dilations, pads, pads)
def test_dropped_rows_are_the_unread_trailing_input_rows(size, kernel, stride, dilation, lo, hi) -> None:
    starts = window_starts(size, kernel, stride, dilation, lo, hi)
    if not starts:
        return
    span = ar.effective_kernel(kernel, dilation)
    last_read = max(starts) + span - 1 - lo  # last input index any window touches
    expected = min(size, max(0, size - 1 - last_read))
    assert ar.dropped_rows(size, kernel, stride, dilation, (lo, hi)) == expected


@given(sizes, kernels, strides, dilations, pads, pads, st.booleans())
def test_pool_output_ceil_mode_rule(size, kernel, stride, dilation, lo, hi, ceil_mode) -> None:
    out = ar.pool_output_size(size, kernel, stride, dilation, (lo, hi), ceil_mode)
    span = ar.effective_kernel(kernel, dilation)
    if size + lo + hi < span:
        # only ceil mode keeps a window larger than the padded input (PyTorch): one at most
        expected = int(ceil_mode and size + lo + hi + stride - 1 >= span and 0 < size + lo)
        assert out == expected
        return
    floor_out = len(window_starts(size, kernel, stride, dilation, lo, hi))
    if not ceil_mode:
        assert out == floor_out
    else:
        # ceil adds one partial window when the windows do not tile exactly,
        # unless it would start in the right padding
        extra_start = floor_out * stride
        tiles = (size + lo + hi - span) % stride == 0
        assert out == floor_out + (not tiles and extra_start < size + lo)


@given(sizes, kernels, strides, dilations, st.integers(0, 3), st.integers(0, 3), st.integers(0, 3))
def test_transposed_is_the_adjoint_size(size, kernel, stride, dilation, lo, hi, op) -> None:
    """A direct conv over the transposed output, with the same crop as padding, gives back `size`."""
    op = op % stride if stride > 1 else 0
    out = ar.transposed_output_size(size, kernel, stride, dilation, (lo, hi), op)
    if out < 1:
        return
    assert ar.conv_output_size(out, kernel, stride, dilation, (lo, hi)) == size
    pad_lo, pad_hi = ar.transposed_input_padding(kernel, dilation, (lo, hi), op)
    zero_inserted = (size - 1) * stride + 1
    assert ar.conv_output_size(zero_inserted, kernel, 1, dilation, (pad_lo, pad_hi)) == out if min(pad_lo, pad_hi) >= 0 else True


@given(sizes, kernels, strides, dilations)
def test_transposed_same_and_valid_match_keras_lengths(size, kernel, stride, dilation) -> None:
    span = ar.effective_kernel(kernel, dilation)
    for word, pads in (("same", ar.transposed_same_padding(kernel, stride, dilation)),
                       ("valid", ar.transposed_valid_padding(kernel, stride, dilation))):
        out = (size - 1) * stride + 1 + sum(pads) - span + 1
        assert out == ar.keras_transposed_output_size(size, kernel, stride, dilation, word)
    assert ar.keras_transposed_output_size(size, kernel, stride, dilation, "same") == size * stride


@settings(max_examples=60)
@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 5), st.integers(1, 3), st.integers(1, 3))
def test_solver_answers_resolve_to_the_target(size, target, max_kernel, max_stride, max_dilation) -> None:
    found = ar.solve(size, target, max_kernel, max_stride, max_dilation)
    for s in found:
        assert ar.conv_output_size(size, s.kernel, s.stride, s.dilation, s.padding) == target
        assert min(s.padding) >= 0
    # completeness: every (k, s, d) with a non-negative padding reaching the target appears
    listed = {(s.kernel, s.stride, s.dilation) for s in found}
    for k in range(1, max_kernel + 1):
        for st_ in range(1, max_stride + 1):
            for d in range(1, (max_dilation if k > 1 else 1) + 1):
                reachable = any(
                    ar.conv_output_size(size, k, st_, d, (p // 2, p - p // 2)) == target
                    for p in range(0, 2 * ar.effective_kernel(max_kernel, max_dilation) + 1)
                )
                assert ((k, st_, d) in listed) == reachable, (k, st_, d)


@given(sizes, st.integers(1, 64), kernels, strides, dilations)
def test_padding_for_output_is_minimal(size, target, kernel, stride, dilation) -> None:
    pads = ar.padding_for_output(size, target, kernel, stride, dilation)
    if pads is None:
        assert all(
            ar.conv_output_size(size, kernel, stride, dilation, (0, p)) != target for p in range(0, 200)
        )
        return
    total = sum(pads)
    assert ar.conv_output_size(size, kernel, stride, dilation, pads) == target
    if total > 0:
        assert ar.conv_output_size(size, kernel, stride, dilation, (0, total - 1)) != target
