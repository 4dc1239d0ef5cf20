"""Lay a :class:`~convarith.viz.frames.Storyboard` out as shapes on a page.

A :class:`Scene` is a list of flat shapes (polygons, lines, text), each
visible for a span of frames ``[start, end)``, in drawing order. The raster
and SVG renderers draw the same scene, so a GIF frame and the SVG show the
same picture.

Two views:

``"oblique"``
    the classic look: the input plane seen at an angle, the output plane
    floating above it, lines joining the window's corners to the output cell;
``"flat"``
    top-down grids, input left (or below) and output right (or above).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..explain import Explanation
from ..spec import ResolvedConv
from .frames import Frame, Index, Storyboard

__all__ = ["Scene", "Shape", "Palette", "PALETTE", "build_scene", "max_position", "Volume", "VolumeScene",
           "build_volume_scene"]

Point = tuple[float, float]


@dataclass(frozen=True)
class Palette:
    """Colours (Okabe-Ito based: readable with the common colour-vision deficiencies)."""

    background: str = "#ffffff"
    input: str = "#56b4e9"       # sky blue
    input_read: str = "#0a6aa8"  # window over input cells
    padding: str = "#ffffff"
    padding_read: str = "#aab4bc"  # window over zeros
    copy: str = "#cfe8f7"        # reflect/replicate/circular padding
    inserted: str = "#ffffff"
    output: str = "#5cc7a8"      # bluish green
    output_done: str = "#3fae8e"
    output_target: str = "#00664d"
    cropped: str = "#eef2f3"
    dropped: str = "#f6d3bf"     # input no window reads (pale vermillion)
    dropped_stroke: str = "#d55e00"
    feed: str = "#cc79a7"        # reddish purple: outputs an input cell feeds (explorer hover)
    gap: str = "#e69f00"         # orange: dilation gaps
    stroke: str = "#1c3342"
    dashed: str = "#1f4a5c"
    line: str = "#222222"
    text: str = "#1c2a33"
    light_text: str = "#ffffff"
    muted: str = "#5a6b75"


PALETTE = Palette()


@dataclass(frozen=True)
class Shape:
    """A polygon, a line or a text, shown for frames ``start <= i < end``."""

    kind: str  # "polygon" | "line" | "text"
    points: tuple[Point, ...]
    fill: str | None = None
    stroke: str | None = None
    width: float = 1.0
    dash: tuple[float, float] | None = None
    text: str = ""
    size: float = 12.0
    anchor: str = "mm"  # Pillow anchors: "mm" centre, "lm" left-middle, "rm", "ms"
    bold: bool = False
    start: int = 0
    end: int = -1  # -1: until the last frame
    role: str = ""  # what the shape shows ("vol-input", "label"...): the explorer styles it by this


@dataclass
class Scene:
    """Shapes in drawing order, the page size and the number of frames."""

    width: float
    height: float
    frame_count: int
    shapes: list[Shape] = field(default_factory=list)
    title: str = ""

    def visible(self, frame: int) -> list[Shape]:
        """The shapes drawn in one frame, in order."""
        return [s for s in self.shapes if s.start <= frame < (s.end if s.end >= 0 else self.frame_count)]


@dataclass(frozen=True)
class _Plane:
    """A 2-D grid drawn with an affine map: corner (row, col) -> origin + col*u + row*v."""

    origin: Point
    u: Point
    v: Point
    rows: int
    cols: int

    def point(self, row: float, col: float) -> Point:
        return (
            self.origin[0] + col * self.u[0] + row * self.v[0],
            self.origin[1] + col * self.u[1] + row * self.v[1],
        )

    def quad(self, row: int, col: int, inset: float = 0.0) -> tuple[Point, ...]:
        a, b = row + inset, col + inset
        c, d = row + 1 - inset, col + 1 - inset
        return (self.point(a, b), self.point(a, d), self.point(c, d), self.point(c, b))

    def centre(self, row: float, col: float) -> Point:
        return self.point(row + 0.5, col + 0.5)

    def bounds(self) -> tuple[float, float, float, float]:
        corners = [self.point(r, c) for r in (0, self.rows) for c in (0, self.cols)]
        xs, ys = [p[0] for p in corners], [p[1] for p in corners]
        return min(xs), min(ys), max(xs), max(ys)

    def moved(self, dx: float, dy: float) -> _Plane:
        return _Plane((self.origin[0] + dx, self.origin[1] + dy), self.u, self.v, self.rows, self.cols)


def _split(position: Index, rank: int) -> tuple[int, int, int]:
    """(slice, row, col) of a position of any rank."""
    if rank == 1:
        return 0, 0, position[0]
    if rank == 2:
        return 0, position[0], position[1]
    return position[0], position[1], position[2]


def _plane_shape(size: Index, rank: int) -> tuple[int, int, int]:
    if rank == 1:
        return 1, 1, size[0]
    if rank == 2:
        return 1, size[0], size[1]
    return size[0], size[1], size[2]


def _planes(size: Index, rank: int, u: Point, v: Point, gap: float, vertical: bool = False) -> list[_Plane]:
    """One plane per depth slice, top-left at (0, 0): stacked, or side by side in rows of
    about sqrt(slices) (a 3-D grid of 7 slices is drawn 4 + 3, not as one long strip)."""
    slices, rows, cols = _plane_shape(size, rank)
    base = _Plane((0.0, 0.0), u, v, rows, cols)
    x0, y0, x1, y1 = base.bounds()
    base = base.moved(-x0, -y0)
    per_row = slices if slices <= 3 else math.ceil(math.sqrt(slices))
    row_gap = max(0.5 * gap, 26.0)  # room for the "depth i" label under each plane
    planes = []
    for i in range(slices):
        if vertical:
            planes.append(base.moved(0.0, i * (y1 - y0 + gap)))
        else:
            row, column = divmod(i, per_row)
            planes.append(base.moved(column * (x1 - x0 + gap), row * (y1 - y0 + row_gap)))
    return planes


def _bounds(planes: Sequence[_Plane]) -> tuple[float, float, float, float]:
    boxes = [p.bounds() for p in planes]
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _shift(planes: Sequence[_Plane], dx: float, dy: float) -> list[_Plane]:
    return [p.moved(dx, dy) for p in planes]


def _fmt_size(size: Sequence[int]) -> str:
    return "×".join(str(v) for v in size)


def _fmt_value(value: float) -> str:
    if abs(value - round(value)) < 1e-9:
        return str(int(round(value)))
    return f"{value:.1f}" if abs(value) < 100 else f"{value:.0f}"


def caption_lines(explanation: Explanation) -> list[str]:
    """The worked formula, one line per distinct axis, from :func:`convarith.explain`."""
    lines = []
    seen = set()
    many = len(explanation.axes) > 1
    for axis in explanation.axes:
        key = (axis.input, axis.kernel, axis.stride, axis.dilation, axis.padding)
        if key in seen:
            continue
        seen.add(key)
        uniform = all(
            (a.input, a.kernel, a.stride, a.dilation, a.padding) == key for a in explanation.axes
        )
        label = "" if not many or uniform else f"{axis.name}: "
        for step in axis.steps:
            if step.startswith("K_eff"):
                lines.append(label + step)
        if explanation.kind == "conv_transpose":
            lines.append(label + axis.steps[-1])
        else:
            lines.append(f"{label}{axis.steps[-2]} = {axis.output}")
    return lines


def build_scene(
    board: Storyboard,
    explanation: Explanation,
    view: str = "oblique",
    show_gaps: bool | None = None,
    palette: Palette = PALETTE,
    cell: float | None = None,
    caption: bool = True,
) -> Scene:
    """Lay out ``board`` in ``view`` (``"oblique"`` or ``"flat"``)."""
    if view not in ("oblique", "flat"):
        raise ValueError(f"view must be 'oblique' or 'flat', got {view!r}")
    resolved = board.resolved
    spec = resolved.spec
    rank = board.rank
    frames = board.frames
    n = len(frames)
    dilated = max(spec.dilation) > 1
    if show_gaps is None:
        show_gaps = dilated
    values = board.output_values is not None

    _, rows_in, cols_in = _plane_shape(board.grid_size, rank)
    _, rows_out, cols_out = _plane_shape(board.top_size, rank)
    biggest = max(rows_in, cols_in, rows_out, cols_out, 1)
    if cell is None:
        budget = 560.0 if rank == 1 else 330.0
        cell = max(14.0, min(44.0 if values else 38.0, budget / biggest))
    slice_gap = cell * 1.2

    if view == "oblique":
        u = (0.92 * cell, -0.40 * cell)
        v = (0.62 * cell, 0.58 * cell)
    else:
        u, v = (cell, 0.0), (0.0, cell)
    lower = _planes(board.grid_size, rank, u, v, slice_gap, vertical=False)
    upper = _planes(board.top_size, rank, u, v, slice_gap, vertical=False)

    margin = 24.0
    title_h = 30.0
    label_h = 22.0
    lx0, ly0, lx1, ly1 = _bounds(lower)
    ux0, uy0, ux1, uy1 = _bounds(upper)
    side_by_side = view == "flat" and rank == 2
    if side_by_side:
        gap = max(3 * cell, 70.0)
        height = max(ly1 - ly0, uy1 - uy0)
        lower = _shift(lower, margin - lx0, margin + title_h + label_h + (height - (ly1 - ly0)) / 2 - ly0)
        upper = _shift(
            upper, margin + (lx1 - lx0) + gap - ux0, margin + title_h + label_h + (height - (uy1 - uy0)) / 2 - uy0
        )
        content_w = (lx1 - lx0) + gap + (ux1 - ux0)
        content_h = height + label_h
    else:
        gap = max(1.7 * cell, 50.0) if view == "oblique" else max(1.6 * cell, 40.0)
        width = max(lx1 - lx0, ux1 - ux0)
        upper = _shift(upper, margin + (width - (ux1 - ux0)) / 2 - ux0, margin + title_h + label_h - uy0)
        top_bottom = margin + title_h + label_h + (uy1 - uy0)
        lower = _shift(lower, margin + (width - (lx1 - lx0)) / 2 - lx0, top_bottom + gap - ly0)
        content_w = width
        content_h = label_h + (uy1 - uy0) + gap + (ly1 - ly0) + label_h
    captions = caption_lines(explanation) if caption else []
    caption_h = 20.0 * len(captions) + (10.0 if captions else 0.0)
    depth_labels_h = 18.0 if rank == 3 else 0.0
    texts = [_title(board), *captions]
    scene_w = max(content_w + 2 * margin, 300.0, *(_text_width(t, 15.0) + 2 * margin for t in texts))
    scene_h = margin + title_h + content_h + depth_labels_h + caption_h + margin
    # centre the content horizontally when the text made the page wider
    extra = (scene_w - (content_w + 2 * margin)) / 2
    if extra > 0:
        lower, upper = _shift(lower, extra, 0), _shift(upper, extra, 0)
    scene = Scene(width=scene_w, height=scene_h, frame_count=n)
    add = scene.shapes.append
    p = palette

    def lower_quad(position: Index, inset: float = 0.0) -> tuple[Point, ...]:
        s, r, c = _split(position, rank)
        return lower[s].quad(r, c, inset)

    def upper_quad(position: Index, inset: float = 0.0) -> tuple[Point, ...]:
        s, r, c = _split(position, rank)
        return upper[s].quad(r, c, inset)

    def lower_centre(position: Index) -> Point:
        s, r, c = _split(position, rank)
        return lower[s].centre(r, c)

    def upper_centre(position: Index) -> Point:
        s, r, c = _split(position, rank)
        return upper[s].centre(r, c)

    stroke_w = 1.2 if cell >= 20 else 0.9
    dash = (cell * 0.16, cell * 0.12)
    value_size = max(8.0, cell * 0.36)
    small_size = max(6.5, cell * 0.24)

    # -- layer 0: the lower grid
    lower_fill = {"input": p.input, "padding": p.padding, "copy": p.copy, "inserted": p.inserted,
                  "beyond": p.padding, "dropped": p.dropped, "skipped": p.dropped}
    for grid_cell in board.grid_cells:
        kind = grid_cell.kind
        dashed = kind in ("padding", "inserted", "beyond", "copy")
        edge = p.dropped_stroke if kind in ("dropped", "skipped") else p.stroke
        add(Shape("polygon", lower_quad(grid_cell.position), fill=lower_fill[kind],
                  stroke=p.muted if kind == "beyond" else (p.dashed if dashed else edge),
                  width=stroke_w, dash=(dash[0] * 0.5, dash[1] * 1.5) if kind == "beyond" else (dash if dashed else None)))
    if board.input_values is not None:
        for grid_cell in board.grid_cells:
            if grid_cell.source is not None:
                add(Shape("text", (lower_centre(grid_cell.position),), text=_fmt_value(board.input_values[grid_cell.source]),
                          size=value_size, fill=p.text if grid_cell.kind in ("input", "dropped", "skipped") else p.muted))
            elif grid_cell.kind in ("padding", "inserted"):
                zero = "−∞" if spec.pool == "max" and grid_cell.kind == "padding" else "0"
                add(Shape("text", (lower_centre(grid_cell.position),), text=zero, size=value_size * 0.85, fill=p.muted))

    # -- layer 1: the window (per frame)
    for frame in frames:
        _window_shapes(frame, board, lower_quad, lower_centre, add, p, stroke_w, dash, show_gaps,
                       value_size, small_size, rank)

    # -- layer 2: connectors (under the output plane in the oblique view)
    style = "oblique" if view == "oblique" else ("beside" if side_by_side else "above")
    connectors = [_connector_shapes(frame, board, lower, upper, rank, p, style) for frame in frames]
    if view == "oblique":
        for shapes in connectors:
            scene.shapes.extend(shapes)

    # -- layer 3: the upper grid
    for top_cell in board.top_cells:
        cropped = top_cell.kind == "cropped"
        add(Shape("polygon", upper_quad(top_cell.position), fill=p.cropped if cropped else p.output,
                  stroke=p.dashed if cropped else p.stroke, width=stroke_w, dash=dash if cropped else None))
    # cells already written, behind the current target
    if board.mode == "direct":
        for frame in frames:
            for target in frame.targets:
                add(Shape("polygon", upper_quad(target), fill=p.output_done, stroke=p.stroke,
                          width=stroke_w, start=frame.step + 1))
    else:
        first_touch: dict[Index, int] = {}
        for frame in frames:
            for target in frame.targets:
                first_touch.setdefault(target, frame.step)
        kinds = {c.position: c.kind for c in board.top_cells}
        for target, step in first_touch.items():
            if kinds[target] != "cropped":
                add(Shape("polygon", upper_quad(target), fill=p.output_done, stroke=p.stroke,
                          width=stroke_w, start=step + 1))
    for frame in frames:
        for target in frame.targets:
            add(Shape("polygon", upper_quad(target), fill=p.output_target, stroke=p.stroke, width=stroke_w,
                      start=frame.step, end=frame.step + 1))
        if board.mode == "scatter":
            for target, tap in zip(frame.targets, frame.target_kernel):
                if board.kernel_values is None:
                    add(Shape("text", (upper_centre(target),), text="w" + "".join(map(str, tap)) if rank > 1 else f"w{tap[0]}",
                              size=small_size * 1.2, fill=p.light_text, start=frame.step, end=frame.step + 1))
    if view == "flat":
        for shapes in connectors:
            scene.shapes.extend(shapes)

    # -- output values
    if values and board.output_values is not None:
        if board.mode == "direct":
            for frame in frames:
                target = frame.targets[0]
                add(Shape("text", (upper_centre(target),), text=_fmt_value(frame.target_values[0]),
                          size=value_size, fill=p.light_text, bold=True, start=frame.step))
        else:
            changes: dict[Index, list[tuple[int, float]]] = {}
            for frame in frames:
                for target, value in zip(frame.targets, frame.target_values):
                    changes.setdefault(target, []).append((frame.step, value))
            kinds = {c.position: c.kind for c in board.top_cells}
            for target, history in changes.items():
                later = p.muted if kinds[target] == "cropped" else p.light_text
                for i, (step, value) in enumerate(history):
                    end = history[i + 1][0] if i + 1 < len(history) else n
                    text = _fmt_value(value)
                    add(Shape("text", (upper_centre(target),), text=text, size=value_size,
                              fill=p.light_text, bold=True, start=step, end=step + 1))
                    if end > step + 1:
                        add(Shape("text", (upper_centre(target),), text=text, size=value_size,
                                  fill=later, bold=kinds[target] != "cropped", start=step + 1,
                                  end=end if end < n else -1))

    # -- labels
    _labels(scene, board, explanation, lower, upper, rank, view, side_by_side, margin, title_h,
            captions, depth_labels_h, p, cell)
    return scene


def _window_shapes(frame: Frame, board: Storyboard, quad, centre, add, p: Palette, stroke_w: float,
                   dash: tuple[float, float], show_gaps: bool, value_size: float, small_size: float,
                   rank: int) -> None:
    start, end = frame.step, frame.step + 1
    pool = board.resolved.spec.pool
    for position, source in zip(frame.window, frame.sources):
        kind = board.cell_kind(position)
        real = kind in ("input", "copy") and source is not None
        add(Shape("polygon", quad(position), fill=p.input_read if real else p.padding_read,
                  stroke=p.stroke if kind == "input" else p.dashed, width=stroke_w,
                  dash=None if kind == "input" else dash, start=start, end=end))
        if board.input_values is not None:
            # max pooling pads with -inf (a padded cell is never the maximum), not with zeros
            zero = "−∞" if pool == "max" else "0"
            text = _fmt_value(board.input_values[source]) if source is not None else zero
            add(Shape("text", (centre(position),), text=text, size=value_size,
                      fill=p.light_text if real else p.text, start=start, end=end))
    if board.kernel_values is not None and frame.kernel and pool is None:  # a pool has no weights
        for position, tap, source in zip(frame.window, frame.kernel, frame.sources):
            real = board.cell_kind(position) in ("input", "copy") and source is not None
            corner = quad(position, 0.0)[2]
            mid = centre(position)
            xy = (mid[0] * 0.45 + corner[0] * 0.55, mid[1] * 0.45 + corner[1] * 0.55)
            add(Shape("text", (xy,), text="×" + _fmt_value(board.kernel_values[tap]), size=small_size,
                      fill="#ffe9a8" if real else p.text, start=start, end=end))
    if pool == "max" and board.input_values is not None:
        winner = max_position(frame, board)
        if winner is not None:
            add(Shape("polygon", quad(winner, 0.06), fill=None, stroke=p.gap, width=stroke_w * 2.6,
                      start=start, end=end))
    if show_gaps:
        for position in frame.gaps:
            add(Shape("polygon", quad(position, 0.12), fill=None, stroke=p.gap, width=stroke_w * 2.0,
                      start=start, end=end))


def max_position(frame: Frame, board: Storyboard) -> Index | None:
    """The window cell max pooling picks: the largest input value, the first one on ties
    (PyTorch's rule); padding and cells beyond the input never win.

    >>> from convarith import ConvSpec
    >>> from convarith.viz.frames import build_frames
    >>> import numpy as np
    >>> x = np.array([[1., 5.], [5., 2.]])
    >>> board = build_frames(ConvSpec(2, pool="max").resolve((2, 2)), input_values=x)
    >>> max_position(board.frames[0], board)
    (0, 1)
    """
    if board.input_values is None:
        return None
    best: tuple[float, Index] | None = None
    for position, source in zip(frame.window, frame.sources):
        if source is None:
            continue
        value = float(board.input_values[source])
        if best is None or value > best[0]:
            best = (value, position)
    return None if best is None else best[1]


def _connector_shapes(frame: Frame, board: Storyboard, lower: list[_Plane], upper: list[_Plane],
                      rank: int, p: Palette, style: str = "oblique") -> list[Shape]:
    """Lines joining the window's box to the target box.

    Oblique: all four corner pairs (the classic look). Flat: a two-line beam from
    the window's edge facing the output to the target's opposite edge.
    """
    start, end = frame.step, frame.step + 1
    first, last = frame.window_box
    t_first = tuple(min(t[a] for t in frame.targets) for a in range(rank))
    t_last = tuple(max(t[a] for t in frame.targets) for a in range(rank))
    s0, r0, c0 = _split(first, rank)
    _, r1, c1 = _split(last, rank)
    ts, tr0, tc0 = _split(t_first, rank)
    _, tr1, tc1 = _split(t_last, rank)
    low, up = lower[s0], upper[ts]
    shapes = []
    if style == "beside":
        pairs = [((r0, c1 + 1), (tr0, tc0)), ((r1 + 1, c1 + 1), (tr1 + 1, tc0))]
    elif style == "above":
        pairs = [((r0, c0), (tr1 + 1, tc0)), ((r0, c1 + 1), (tr1 + 1, tc1 + 1))]
    else:
        pairs = [((r0, c0), (tr0, tc0)), ((r0, c1 + 1), (tr0, tc1 + 1)),
                 ((r1 + 1, c1 + 1), (tr1 + 1, tc1 + 1)), ((r1 + 1, c0), (tr1 + 1, tc0))]
    for (ra, ca), (rb, cb) in pairs:
        shapes.append(Shape("line", (low.point(ra, ca), up.point(rb, cb)), stroke=p.line, width=0.9,
                            start=start, end=end))
    return shapes


def _labels(scene: Scene, board: Storyboard, explanation: Explanation, lower: list[_Plane],
            upper: list[_Plane], rank: int, view: str, side_by_side: bool, margin: float, title_h: float,
            captions: list[str], depth_labels_h: float, p: Palette, cell: float) -> None:
    add = scene.shapes.append
    resolved = board.resolved
    spec = resolved.spec
    add(Shape("text", ((scene.width / 2, margin + 8),), text=_title(board), size=15, fill=p.text, bold=True))

    lx0, ly0, lx1, ly1 = _bounds(lower)
    ux0, uy0, ux1, uy1 = _bounds(upper)
    if board.mode == "scatter":
        lower_label = f"input {_fmt_size(resolved.input_size)}"
        crop = resolved.crop
        upper_label = f"output {_fmt_size(resolved.output_size)} (full {_fmt_size(board.top_size)}, crop {_pairs(crop)})"
    else:
        lower_label = f"input {_fmt_size(resolved.input_size)}"
        if any(lo or hi for lo, hi in resolved.padding):
            lower_label += f", padding {_pairs(resolved.padding)}"
        if spec.transposed:
            lower_label = f"input {_fmt_size(resolved.input_size)}, zeros inserted, padded {_pairs(resolved.padding)}"
        if any(resolved.dropped):
            lower_label += f" — {_dropped_words(resolved.dropped)}"
        name = {"max_pool": "max pool", "avg_pool": "avg pool"}.get(spec.kind, "output")
        upper_label = f"{name} {_fmt_size(resolved.output_size)}" if name == "output" else f"output ({name}) {_fmt_size(resolved.output_size)}"
    add(Shape("text", (((lx0 + lx1) / 2, ly1 + 14 + depth_labels_h),), text=lower_label, size=13, fill=p.text))
    add(Shape("text", (((ux0 + ux1) / 2, uy0 - 12),), text=upper_label, size=13, fill=p.text))
    if rank == 3:
        for i, plane in enumerate(lower):
            x0, _, x1, y1 = plane.bounds()
            add(Shape("text", (((x0 + x1) / 2, y1 + 10),), text=f"depth {i}", size=11, fill=p.muted))
        for i, plane in enumerate(upper if len(upper) > 1 else []):
            x0, _, x1, y1 = plane.bounds()
            add(Shape("text", (((x0 + x1) / 2, y1 + 10),), text=f"depth {i}", size=11, fill=p.muted))
    step_y = ly1 + 14 + depth_labels_h + 22
    for i, line in enumerate(captions):
        add(Shape("text", ((scene.width / 2, step_y + 20 * i),), text=line, size=13, fill=p.text))
    # frame counter, bottom right
    for frame in board.frames:
        what = "output" if board.mode == "direct" else "input"
        add(Shape("text", ((scene.width - 8, scene.height - 8),),
                  text=f"{what} {','.join(map(str, frame.index))}  ({frame.step + 1}/{len(board.frames)})",
                  size=10, fill=p.muted, anchor="rs", start=frame.step, end=frame.step + 1))


def _dropped_words(dropped: Sequence[int]) -> str:
    """``(1, 1)`` → "last 1 row and 1 column never read (dropped)"."""
    names = {1: ["cell"], 2: ["row", "column"], 3: ["slice", "row", "column"]}[len(dropped)]
    parts = [f"{n} {name}{'s' if n > 1 else ''}" for n, name in zip(dropped, names) if n]
    return "last " + " and ".join(parts) + " never read (dropped)"


def _text_width(text: str, size: float) -> float:
    """A generous estimate of a text's width (DejaVu Sans is about 0.6 em a glyph)."""
    return 0.62 * size * len(text)


def _pairs(pairs: Sequence[tuple[int, int]]) -> str:
    if len(set(pairs)) == 1:
        lo, hi = pairs[0]
        return str(lo) if lo == hi else f"({lo}, {hi})"
    return " × ".join(f"({lo}, {hi})" for lo, hi in pairs)


def _title(board: Storyboard) -> str:
    spec = board.resolved.spec
    parts = [f"kernel {_fmt_size(spec.kernel_size)}"]
    if max(spec.strides) > 1:
        parts.append(f"stride {_fmt_size(spec.strides)}")
    if max(spec.dilation) > 1:
        parts.append(f"dilation {_fmt_size(spec.dilation)}")
    padding = spec.padding if isinstance(spec.padding, str) else f"{_pairs(spec.padding)}"
    parts.append(f"padding {padding}")
    if spec.padding_mode != "zeros":
        parts.append(spec.padding_mode)
    what = {"conv": "convolution", "conv_transpose": "transposed convolution",
            "max_pool": "max pooling", "avg_pool": "average pooling"}[spec.kind]
    if board.mode == "scatter":
        what += " (scatter)"
    return f"{what}: " + ", ".join(parts)


# --------------------------------------------------------------------------- 3-D: the oblique volume

#: How far one depth step recedes, in cells: right and up (a cabinet projection).
VOLUME_BACK = (0.45, -0.30)


@dataclass(frozen=True)
class Volume:
    """A 3-D grid drawn in an oblique (cabinet) projection.

    Voxel corner ``(d, r, c)`` is drawn at ``origin + c*across + r*down + d*back``:
    the front face (depth 0) is seen square on, deeper slices recede up and to
    the right, so the front, top and right faces of every box are visible.

    >>> v = Volume((10.0, 20.0), (8.0, 0.0), (0.0, 8.0), (3.6, -2.4), (2, 3, 4))
    >>> v.point(0, 0, 0), v.point(2, 3, 4)
    ((10.0, 20.0), (49.2, 39.2))
    >>> [len(face) for face in v.box_faces((0, 0, 0), (1, 2, 3))]
    [4, 4, 4]
    """

    origin: Point
    across: Point
    down: Point
    back: Point
    size: tuple[int, int, int]

    def point(self, d: float, r: float, c: float) -> Point:
        return (
            self.origin[0] + c * self.across[0] + r * self.down[0] + d * self.back[0],
            self.origin[1] + c * self.across[1] + r * self.down[1] + d * self.back[1],
        )

    def box_faces(self, first: Index, last: Index) -> tuple[tuple[Point, ...], ...]:
        """Front, top and right faces of the box over voxels ``first``..``last`` (inclusive)."""
        d0, r0, c0 = first
        d1, r1, c1 = (v + 1 for v in last)
        p = self.point
        return (
            (p(d0, r0, c0), p(d0, r0, c1), p(d0, r1, c1), p(d0, r1, c0)),
            (p(d0, r0, c0), p(d1, r0, c0), p(d1, r0, c1), p(d0, r0, c1)),
            (p(d0, r0, c1), p(d1, r0, c1), p(d1, r1, c1), p(d0, r1, c1)),
        )

    def box_lines(self, first: Index, last: Index) -> list[tuple[Point, Point]]:
        """The voxel grid drawn on the three visible faces of a box (its edges included)."""
        d0, r0, c0 = first
        d1, r1, c1 = (v + 1 for v in last)
        p = self.point
        lines = [(p(d0, r, c0), p(d0, r, c1)) for r in range(r0, r1 + 1)]            # front: rows
        lines += [(p(d0, r0, c), p(d0, r1, c)) for c in range(c0, c1 + 1)]           # front: columns
        lines += [(p(d0, r0, c), p(d1, r0, c)) for c in range(c0, c1 + 1)]           # top: along depth
        lines += [(p(d, r0, c0), p(d, r0, c1)) for d in range(d0 + 1, d1 + 1)]       # top: slices
        lines += [(p(d0, r, c1), p(d1, r, c1)) for r in range(r0 + 1, r1 + 1)]       # right: along depth
        lines += [(p(d, r0, c1), p(d, r1, c1)) for d in range(d0 + 1, d1 + 1)]       # right: slices
        return lines

    def bounds(self) -> tuple[float, float, float, float]:
        corners = [self.point(d, r, c) for d in (0, self.size[0]) for r in (0, self.size[1])
                   for c in (0, self.size[2])]
        xs, ys = [q[0] for q in corners], [q[1] for q in corners]
        return min(xs), min(ys), max(xs), max(ys)

    def moved(self, dx: float, dy: float) -> Volume:
        return Volume((self.origin[0] + dx, self.origin[1] + dy), self.across, self.down, self.back, self.size)

    def to_dict(self) -> dict[str, object]:
        return {"origin": list(self.origin), "across": list(self.across), "down": list(self.down),
                "back": list(self.back), "size": list(self.size)}


@dataclass
class VolumeScene:
    """The oblique 3-D picture: the still shapes (volumes, voxel grids, labels) and the two
    projections, with which a voxel of the padded input (``lower``) or of the output
    (``upper``) is placed; what moves (the window's voxels, the kernel box, the output
    voxel) is drawn per step from these."""

    scene: Scene
    lower: Volume
    upper: Volume
    cell: float
    stacked: bool


def _kind_spans(kinds: Sequence[str], wanted: tuple[str, ...]) -> tuple[int, int] | None:
    found = [i for i, kind in enumerate(kinds) if kind in wanted]
    return (found[0], found[-1]) if found else None


def build_volume_scene(resolved: ResolvedConv, room: float = 900.0, palette: Palette = PALETTE,
                       max_height: float = 460.0) -> VolumeScene:
    """Lay out a 3-D convolution as two volumes in an oblique projection, ``room`` pixels wide.

    The padded (for a transposed convolution: zero-inserted and padded) input
    is a box with the real input inside it, the output a box beside it (under
    it when the two do not fit side by side at a readable size). The voxel grid
    is drawn on the visible faces; the number of shapes grows with the sides of
    the volumes, not with their cells.

    >>> from convarith import ConvSpec
    >>> vs = build_volume_scene(ConvSpec((3, 3, 3), padding=1).resolve((4, 5, 6)), room=900)
    >>> vs.lower.size, vs.upper.size, vs.stacked
    ((6, 7, 8), (4, 5, 6), False)
    >>> sorted({s.role for s in vs.scene.shapes})
    ['axis-label', 'label', 'output-label', 'vol-grid', 'vol-grid-pad', 'vol-input', 'vol-output', 'vol-pad']
    >>> vs.scene.width <= 900
    True
    """
    if resolved.rank != 3:
        raise ValueError(f"the oblique volume draws a 3-D convolution; this one has {resolved.rank} axes")
    # as far as the windows reach (a ceil-mode pooling window overhangs the padded input)
    reach = [n + e for n, e in zip(resolved.padded_size, resolved.overhang)]
    lower_size: tuple[int, int, int] = (reach[0], reach[1], reach[2])
    upper_size: tuple[int, int, int] = (resolved.output_size[0], resolved.output_size[1], resolved.output_size[2])
    kinds = [[kind for kind, _ in resolved.grid_cells(axis, reach[axis])] for axis in range(3)]
    real = [_kind_spans(k, ("input", "dropped", "skipped", "inserted")) for k in kinds]
    dropped = [_kind_spans(k, ("dropped",)) for k in kinds]
    p = palette
    margin, gap, label_size, axis_size = 8.0, 56.0, 14.0, 12.0
    padded = lower_size != tuple(resolved.input_size) or resolved.spec.transposed
    lower_words = [f"input {_fmt_size(resolved.input_size)}"]
    if padded:
        grown = [word for word, yes in (("padded", any(lo or hi for lo, hi in resolved.padding)),
                                        ("the last window overhangs", any(resolved.overhang))) if yes]
        how = "zeros inserted, padded" if resolved.spec.transposed else ", ".join(grown)
        lower_words.append(f"→ {_fmt_size(lower_size)} ({how})")
    name = {"max_pool": "max pool", "avg_pool": "avg pool"}.get(resolved.spec.kind)
    upper_label = [f"output {_fmt_size(upper_size)}" + (f" ({name})" if name else "")]

    def texts(volume: Volume, label: Sequence[str], with_axes: bool) -> list[Shape]:
        x0, y0, x1, y1 = volume.bounds()
        role = "label" if with_axes else "output-label"
        left = x0 - 6 - _text_width("height", axis_size) if with_axes else x0  # over the "height" label too
        shapes = [Shape("text", ((left, y0 - 12 - 18 * (len(label) - 1 - i)),), text=line, size=label_size,
                        bold=True, anchor="lm", fill=p.text, role=role) for i, line in enumerate(label)]
        if with_axes:
            d, r, c = volume.size
            bottom = volume.point(0, r, c / 2)
            side = volume.point(0, r / 2, 0)
            far = volume.point(d / 2, r, c)
            shapes += [
                Shape("text", ((bottom[0], bottom[1] + 12),), text="width", size=axis_size, anchor="mm",
                      fill=p.muted, role="axis-label"),
                Shape("text", ((side[0] - 6, side[1]),), text="height", size=axis_size, anchor="rm",
                      fill=p.muted, role="axis-label"),
                Shape("text", ((far[0] + 8, far[1] + 4),), text="depth", size=axis_size, anchor="lm",
                      fill=p.muted, role="axis-label"),
            ]
        return shapes

    def text_box(shape: Shape) -> tuple[float, float, float, float]:
        (x, y), = shape.points
        w, h = _text_width(shape.text, shape.size), shape.size * 1.3
        left = x - w if shape.anchor[0] == "r" else x - w / 2 if shape.anchor[0] == "m" else x
        return left, y - h / 2, left + w, y + h / 2

    def block(size: tuple[int, int, int], cell: float, label: Sequence[str], with_axes: bool):
        volume = Volume((0.0, 0.0), (cell, 0.0), (0.0, cell), (VOLUME_BACK[0] * cell, VOLUME_BACK[1] * cell), size)
        words = texts(volume, label, with_axes)
        boxes = [volume.bounds(), *(text_box(t) for t in words)]
        return volume, (min(b[0] for b in boxes), min(b[1] for b in boxes),
                        max(b[2] for b in boxes), max(b[3] for b in boxes))

    def plan(cell: float, stacked: bool, split: bool):
        lower, lb = block(lower_size, cell, lower_label(split), True)
        upper, ub = block(upper_size, cell, upper_label, False)
        lower = lower.moved(margin - lb[0], margin - lb[1])
        if stacked:
            upper = upper.moved(margin - ub[0], margin + (lb[3] - lb[1]) + gap * 0.6 - ub[1])
            width = 2 * margin + max(lb[2] - lb[0], ub[2] - ub[0])
            height = 2 * margin + (lb[3] - lb[1]) + gap * 0.6 + (ub[3] - ub[1])
        else:
            upper = upper.moved(margin + (lb[2] - lb[0]) + gap - ub[0], margin - ub[1])
            width = 2 * margin + (lb[2] - lb[0]) + gap + (ub[2] - ub[0])
            height = 2 * margin + max(lb[3] - lb[1], ub[3] - ub[1])
        return lower, upper, width, height

    def lower_label(split: bool) -> list[str]:
        return lower_words if split else [" ".join(lower_words)]

    # the biggest cell (4 to 34 px, the volumes at most ``max_height`` tall) with which the
    # picture fits: side by side if the cell is then at least 9 px, else the output under the
    # input; the input's label goes on two lines before the cells shrink for it
    tallest = max(size[1] + abs(VOLUME_BACK[1]) * size[0] for size in (lower_size, upper_size))
    top = max(4.0, min(34.0, math.floor(max_height / tallest)))
    choice: tuple[bool, float, bool, bool] | None = None
    for stacked in (False, True):
        best: tuple[bool, float, bool, bool] | None = None
        for split in (False, True):
            cell = top
            while cell > 4.0 and plan(cell, stacked, split)[2] > room:
                cell -= 1.0
            fits = plan(cell, stacked, split)[2] <= room
            if best is None or (fits, cell) > best[:2]:
                best = (fits, cell, stacked, split)
        assert best is not None
        if stacked or (best[0] and best[1] >= 9.0):
            choice = best
            break
    assert choice is not None
    _, cell, stacked, split = choice
    lower, upper, width, height = plan(cell, stacked, split)
    scene = Scene(width=width, height=height, frame_count=1, title=" ".join(lower_words))
    add = scene.shapes.append
    show_grid = cell >= 5.0  # below that the voxel grid would be a grey smear: the faces alone

    # the padded input: a dashed box (the padding, the inserted zeros), the real input inside it
    full = ((0, 0, 0), tuple(n - 1 for n in lower_size))
    if padded:
        for face in lower.box_faces(*full):
            add(Shape("polygon", face, fill=p.padding, stroke=p.dashed, width=1.0, dash=(3.0, 2.0), role="vol-pad"))
        if show_grid:
            for a, b in lower.box_lines(*full):
                add(Shape("line", (a, b), stroke=p.dashed, width=0.5, dash=(2.0, 2.0), role="vol-grid-pad"))
    if all(span is not None for span in real):
        first = tuple(span[0] for span in real)  # type: ignore[index]
        last = tuple(span[1] for span in real)  # type: ignore[index]
        for face in lower.box_faces(first, last):
            add(Shape("polygon", face, fill=p.input, stroke=p.stroke, width=1.0, role="vol-input"))
        for axis, span in enumerate(dropped):
            if span is not None:
                lo, hi = list(first), list(last)
                lo[axis], hi[axis] = span
                # the faces the input box does not hide (a dropped depth slab is at the back)
                for index, face in enumerate(lower.box_faces(tuple(lo), tuple(hi))):
                    if (axis, index) in ((0, 0), (1, 1)):
                        continue
                    add(Shape("polygon", face, fill=p.dropped, stroke=p.dropped_stroke, width=1.0,
                              role="vol-dropped"))
        if show_grid:
            for a, b in lower.box_lines(first, last):
                add(Shape("line", (a, b), stroke=p.stroke, width=0.6, role="vol-grid"))
    out_full = ((0, 0, 0), tuple(n - 1 for n in upper_size))
    for face in upper.box_faces(*out_full):
        add(Shape("polygon", face, fill=p.output, stroke=p.stroke, width=1.0, role="vol-output"))
    if show_grid:
        for a, b in upper.box_lines(*out_full):
            add(Shape("line", (a, b), stroke=p.stroke, width=0.6, role="vol-grid"))
    scene.shapes.extend(texts(lower, lower_label(split), True))
    scene.shapes.extend(texts(upper, upper_label, False))
    return VolumeScene(scene=scene, lower=lower, upper=upper, cell=cell, stacked=stacked)
