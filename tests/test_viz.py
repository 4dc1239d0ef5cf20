"""Geometry of the animation frames, checked against the definitions of the operations.

Expected windows and padding cells are derived here from first principles
(output cell o reads input positions o·S + k·D of the padded input; a
transposed convolution is a stride-1 window over the zero-inserted input),
not copied from the frames' own code.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from convarith import ConvSpec
from convarith.viz.frames import build_frames, compute_output, footprint_output, sample_values

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow],
                    print_blob=True)


@st.composite
def direct_configs(draw):
    rank = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    words = ["valid", "same", "same_lower", "full", "explicit"] + (["causal"] if rank == 1 else [])
    word = draw(st.sampled_from(words))
    padding = (
        tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank))
        if word == "explicit" else word
    )
    size = tuple(draw(st.integers(1, 7)) for _ in range(rank))
    pool = draw(st.sampled_from([None, None, "max", "avg"]))
    if pool == "avg":
        dilation = (1,) * rank
    try:
        spec = ConvSpec(kernel, strides=strides, dilation=dilation, padding=padding, pool=pool, rank=rank)
        resolved = spec.resolve(size)
    except ValueError:
        assume(False)
    return resolved


def _floor_output(size, kernel, stride, dilation, lo, hi):
    effective = kernel + (kernel - 1) * (dilation - 1)
    return (size + lo + hi - effective) // stride + 1


@SETTINGS
@given(direct_configs())
def test_direct_frames_follow_the_definition(resolved):
    spec = resolved.spec
    board = build_frames(resolved)
    rank = resolved.rank
    outputs = [
        _floor_output(resolved.input_size[a], spec.kernel_size[a], spec.strides[a], spec.dilation[a],
                      *resolved.padding[a])
        for a in range(rank)
    ]
    # one frame per output cell, in row-major order
    assert len(board.frames) == math.prod(outputs)
    assert [f.index for f in board.frames] == list(product(*[range(n) for n in outputs]))
    for frame in board.frames:
        o = frame.index
        expected = [
            tuple(o[a] * spec.strides[a] + k[a] * spec.dilation[a] for a in range(rank))
            for k in product(*[range(n) for n in spec.kernel_size])
        ]
        assert list(frame.window) == expected, f"window of output {o}"
        assert frame.targets == (o,)
        # the window's bounding box starts at o·S and spans K_eff
        first, last = frame.window_box
        assert first == tuple(o[a] * spec.strides[a] for a in range(rank))
        span = tuple(last[a] - first[a] + 1 for a in range(rank))
        assert span == tuple(k + (k - 1) * (d - 1) for k, d in zip(spec.kernel_size, spec.dilation))
        assert len(frame.gaps) == math.prod(span) - math.prod(spec.kernel_size)
        assert not set(frame.gaps) & set(frame.window)
        # each cell read: the input cell position - lo, or a zero outside the input
        for position, source in zip(frame.window, frame.sources):
            index = tuple(p - lo for p, (lo, _) in zip(position, resolved.padding))
            inside = all(0 <= i < n for i, n in zip(index, resolved.input_size))
            assert source == (index if inside else None)


@SETTINGS
@given(direct_configs())
def test_padding_cells_are_drawn_where_the_resolved_padding_says(resolved):
    board = build_frames(resolved)
    grid = {cell.position: cell for cell in board.grid_cells}
    padded = tuple(n + lo + hi for n, (lo, hi) in zip(resolved.input_size, resolved.padding))
    for position in product(*[range(n) for n in padded]):
        cell = grid[position]
        index = tuple(p - lo for p, (lo, _) in zip(position, resolved.padding))
        inside = all(0 <= i < n for i, n in zip(index, resolved.input_size))
        dropped = inside and any(
            i >= n - d for i, n, d in zip(index, resolved.input_size, resolved.dropped))
        if not inside or dropped:
            assert cell.kind == ("dropped" if inside else "padding"), position
        else:
            assert cell.kind in ("input", "skipped"), position
        assert cell.source == (index if inside else None)
    # "dropped" and "skipped" mark exactly the input cells no window reads
    read = {position for frame in board.frames for position in frame.window}
    unread = {c.position for c in board.grid_cells if c.kind in ("dropped", "skipped")}
    inputs = unread | {c.position for c in board.grid_cells if c.kind == "input"}
    assert unread == inputs - read
    # nothing else is drawn except what a ceil-mode window reaches
    assert set(grid) == set(product(*[range(n) for n in board.grid_size]))
    assert board.grid_size == padded
    count = sum(cell.kind == "padding" for cell in board.grid_cells)
    assert count == math.prod(padded) - math.prod(resolved.input_size)


@pytest.mark.parametrize(
    ("padding", "size", "lo_hi"),
    [("same", 6, (0, 1)), ("same_lower", 6, (1, 0)), ("same", 5, (1, 1))],
)
def test_the_odd_padding_pixel_is_drawn_on_the_conventions_side(padding, size, lo_hi):
    # stride 2, kernel 3: total padding is max(0, (ceil(I/2) - 1)·2 + 3 - I); Keras/JAX 'SAME'
    # put the odd pixel at the end, 'SAME_LOWER' at the start.
    board = build_frames(ConvSpec(3, strides=2, padding=padding, rank=1).resolve(size))
    kinds = [c.kind for c in board.grid_cells]
    lo, hi = lo_hi
    assert kinds[:lo] == ["padding"] * lo and kinds[lo:lo + size] == ["input"] * size
    assert kinds[lo + size:] == ["padding"] * hi


def test_strides_visibly_skip_positions():
    board = build_frames(ConvSpec(3, strides=2).resolve((7, 7)))
    starts = [f.window_box[0] for f in board.frames]
    assert starts == [(0, 0), (0, 2), (0, 4), (2, 0), (2, 2), (2, 4), (4, 0), (4, 2), (4, 4)]


def test_dropped_rows_are_input_cells_no_window_reads():
    board = build_frames(ConvSpec(3, strides=2).resolve((6, 6)))  # (6 - 3) is odd: last row dropped
    read = {p for f in board.frames for p in f.window}
    unread = {c.position for c in board.grid_cells} - read
    assert {p for p in unread if p[0] == 5} == {(5, c) for c in range(6)}
    assert all(board.cell_kind(p) == "dropped" for p in unread)  # drawn as dropped, not as input
    assert board.cell_kind((4, 4)) == "input"


def test_lesson_dilation_has_a_5x5_field_of_view():
    board = build_frames(ConvSpec(3, dilation=2).resolve((7, 7)))
    first, last = board.frames[0].window_box
    assert (last[0] - first[0] + 1, last[1] - first[1] + 1) == (5, 5)
    assert len(board.frames[0].window) == 9
    assert sorted(board.frames[0].gaps)[:3] == [(0, 1), (0, 3), (1, 0)]


def test_ceil_mode_pooling_draws_cells_beyond_the_padded_input():
    resolved = ConvSpec(2, strides=2, pool="max", ceil_mode=True).resolve((5, 5))
    board = build_frames(resolved)
    assert len(board.frames) == 9  # ceil((5 - 2) / 2) + 1 = 3 per axis
    assert board.grid_size == (6, 6)
    assert board.cell_kind((5, 0)) == "beyond" and board.cell_kind((4, 4)) == "input"
    last = board.frames[-1]
    assert set(last.window) == {(4, 4), (4, 5), (5, 4), (5, 5)}
    assert [s for s in last.sources if s is not None] == [(4, 4)]


@pytest.mark.parametrize(("mode", "copies"), [
    ("reflect", {(0, 0): (1, 1), (0, 2): (1, 1), (5, 5): (2, 2)}),
    ("replicate", {(0, 0): (0, 0), (0, 3): (0, 2), (5, 5): (3, 3)}),
    ("circular", {(0, 0): (3, 3), (0, 1): (3, 0), (5, 5): (0, 0)}),
])
def test_padding_modes_draw_copies_of_the_right_cells(mode, copies):
    board = build_frames(ConvSpec(3, padding=1, padding_mode=mode).resolve((4, 4)))
    cells = {c.position: c for c in board.grid_cells}
    for position, source in copies.items():
        assert cells[position].kind == "copy"
        assert cells[position].source == source


@st.composite
def transposed_configs(draw):
    rank = draw(st.sampled_from([1, 2]))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    strides = tuple(draw(st.integers(1, 3)) for _ in range(rank))
    dilation = tuple(draw(st.integers(1, 2)) for _ in range(rank))
    padding = tuple(draw(st.integers(0, 2)) for _ in range(rank))
    size = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    try:
        resolved = ConvSpec(kernel, strides=strides, dilation=dilation, padding=padding,
                            transposed=True, rank=rank).resolve(size)
    except ValueError:
        assume(False)
    return resolved, padding


@SETTINGS
@given(transposed_configs())
def test_transposed_direct_view_is_a_stride1_window_over_the_zero_inserted_input(config):
    resolved, padding = config
    spec = resolved.spec
    rank = resolved.rank
    # PyTorch: O = (I - 1)·S - 2P + D·(K - 1) + 1
    outputs = [
        (resolved.input_size[a] - 1) * spec.strides[a] - 2 * padding[a]
        + spec.dilation[a] * (spec.kernel_size[a] - 1) + 1
        for a in range(rank)
    ]
    board = build_frames(resolved)
    assert len(board.frames) == math.prod(outputs)
    for frame in board.frames:
        expected = [
            tuple(frame.index[a] + k[a] * spec.dilation[a] for a in range(rank))
            for k in product(*[range(n) for n in spec.kernel_size])
        ]
        assert list(frame.window) == expected
    for cell in board.grid_cells:
        grid = tuple(p - lo for p, (lo, _) in zip(cell.position, resolved.padding))
        real = all(g % s == 0 and 0 <= g // s < n
                   for g, s, n in zip(grid, spec.strides, resolved.input_size))
        assert (cell.kind == "input") == real, cell
        if real:
            assert cell.source == tuple(g // s for g, s in zip(grid, spec.strides))


@SETTINGS
@given(transposed_configs())
def test_scatter_view_each_input_cell_adds_a_kernel_patch(config):
    resolved, _ = config
    spec = resolved.spec
    rank = resolved.rank
    board = build_frames(resolved, mode="scatter", values=True)
    assert len(board.frames) == math.prod(resolved.input_size)
    for frame in board.frames:
        i = frame.index
        # full-output position i·S + k·D, shifted by the crop into output coordinates
        expected = {
            tuple(i[a] * spec.strides[a] + k[a] * spec.dilation[a] - resolved.crop[a][0] for a in range(rank))
            for k in product(*[range(n) for n in spec.kernel_size])
        }
        inside = {
            tuple(t - off for t, off in zip(target, board.top_offset)) for target in frame.targets
        }
        assert inside == expected
        in_output = {o for o in expected if all(0 <= v < n for v, n in zip(o, resolved.output_size))}
        assert in_output == {o for o, _ in resolved.feeds(i)}
    # the running sums end at the engine's output
    final = {}
    for frame in board.frames:
        final.update(zip(frame.targets, frame.target_values))
    for out_index, value in board.output_values.items():
        assert final.get(board.top_position(out_index), 0.0) == pytest.approx(value)


def test_three_d_frames_walk_depth_slices():
    resolved = ConvSpec((2, 2, 2), strides=(1, 2, 2)).resolve((3, 4, 4))
    board = build_frames(resolved)
    assert len(board.frames) == 2 * 2 * 2
    assert board.frames[1].window_box == ((0, 0, 2), (1, 1, 3))
    assert board.frames[4].window_box == ((1, 0, 0), (2, 1, 1))


def test_values_come_from_the_engine_and_match_the_footprint_loop():
    from convarith.viz.frames import _engine_output

    for spec, size in [
        (ConvSpec(3, padding="same", strides=2), (5, 5)),
        (ConvSpec(3, strides=2, padding=1, transposed=True), (3, 3)),
        (ConvSpec(3, dilation=2), (7, 7)),
        (ConvSpec(2, strides=2, pool="avg", padding=1, count_include_pad=True), (5, 5)),
    ]:
        resolved = spec.resolve(size)
        x, w = sample_values(resolved)
        engine = _engine_output(resolved, x, w)
        assert engine is not None
        np.testing.assert_allclose(engine, footprint_output(resolved, x, w))


def test_lesson_example_values_by_hand():
    # 5x5 'same' stride 2: output (0, 0) reads input rows/cols 0..1 with kernel taps 1..2
    resolved = ConvSpec(3, padding="same", strides=2).resolve((5, 5))
    x = np.arange(25.0).reshape(5, 5)
    w = np.arange(9.0).reshape(3, 3)
    y = compute_output(resolved, x, w)
    assert y[0, 0] == 0 * 4 + 1 * 5 + 5 * 7 + 6 * 8
    board = build_frames(resolved, input_values=x, kernel_values=w)
    assert board.frames[0].target_values == (y[0, 0],)


@pytest.mark.oracle
@pytest.mark.parametrize("case", range(4))
def test_footprint_values_match_pytorch(case):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x = np.random.default_rng(case).normal(size=(6, 7))
    w = np.random.default_rng(case + 10).normal(size=(3, 2))
    tx = torch.from_numpy(x)[None, None]
    tw = torch.from_numpy(w)[None, None]
    if case == 0:
        spec, expected = ConvSpec((3, 2), strides=2, padding=1), F.conv2d(tx, tw, stride=2, padding=1)
    elif case == 1:
        spec, expected = ConvSpec((3, 2), dilation=2, padding=(2, 1)), F.conv2d(tx, tw, dilation=2, padding=(2, 1))
    elif case == 2:
        spec = ConvSpec((3, 2), strides=2, padding=1, transposed=True)
        expected = F.conv_transpose2d(tx, tw, stride=2, padding=1)
    else:
        spec = ConvSpec(3, strides=2, pool="max", ceil_mode=True)
        expected = F.max_pool2d(tx, 3, stride=2, ceil_mode=True)
        w = None
    resolved = spec.resolve(x.shape)
    got = footprint_output(resolved, x, w if w is not None else np.zeros((3, 3)))
    np.testing.assert_allclose(got, expected[0, 0].numpy(), rtol=1e-10, atol=1e-12)


def test_bad_arguments_are_named():
    resolved = ConvSpec(3).resolve(5)
    with pytest.raises(ValueError, match="mode"):
        build_frames(resolved, mode="sideways")
    with pytest.raises(ValueError, match="not transposed"):
        build_frames(resolved, mode="scatter")
    with pytest.raises(ValueError, match="input_values"):
        build_frames(resolved, input_values=np.zeros((4, 4)))
    with pytest.raises(ValueError, match="kernel_values"):
        build_frames(resolved, kernel_values=np.zeros((2, 2)))
