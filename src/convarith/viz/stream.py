"""Frames drawn one after another, redrawing only what changed, and encoders that stream them.

An animation of ``n`` steps used to be drawn as ``n`` full pictures held in a
list before encoding: memory and time grew with ``n`` times the picture size.
Here one canvas is kept; for each frame only the rectangles covering the
shapes that appear or disappear are redrawn (from the static background, with
every shape visible in the frame that touches them, in drawing order), and the
encoders write each frame's changed rectangle as soon as it is drawn. Memory
is one canvas whatever the number of frames; time grows with the changed area.

The result is pixel-for-pixel the picture :class:`~convarith.viz.render.RasterRenderer`
draws for each frame (rectangles are aligned to the supersampling factor, so
the box-filter reduction of a rectangle equals that of the whole picture).

Examples
--------
>>> import io
>>> from convarith import ConvSpec, animate
>>> from convarith.viz.render import RasterRenderer
>>> movie = animate(ConvSpec(3, strides=2), (5, 5))
>>> stream = io.BytesIO()
>>> write_gif(stream, FrameStream(RasterRenderer(movie.scene)), fps=2)
>>> stream.getvalue()[:6]
b'GIF89a'
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterator, Sequence
from typing import IO, Any

import numpy as np

from .render import RasterRenderer

__all__ = ["FrameStream", "write_gif", "write_apng", "write_sheet", "frame_duration_ms", "union", "sheet_size"]

Box = tuple[int, int, int, int]  # left, top, right, bottom in picture pixels

#: Frames per second the encoders accept: GIF delays are whole hundredths of a
#: second below 655.36 s, and browsers play delays under 20 ms slower.
FPS_RANGE = (0.01, 50.0)


def frame_duration_ms(fps: float) -> int:
    """Milliseconds a frame shows at ``fps`` frames per second (at least 20).

    >>> frame_duration_ms(4), frame_duration_ms(50)
    (250, 20)
    """
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not FPS_RANGE[0] <= fps <= FPS_RANGE[1]:
        raise ValueError(f"fps must be a number in [{FPS_RANGE[0]:g}, {FPS_RANGE[1]:g}], got {fps!r}")
    return max(20, round(1000 / fps))


class FrameStream:
    """The frames of a scene, one canvas redrawn where it changes.

    Iterating yields ``(canvas, boxes)`` per frame: the whole current picture
    (one Pillow RGB image, reused: copy it to keep it) and the rectangles
    outside which it equals the previous frame yielded (the whole picture for
    the first frame; none when nothing changed).

    Parameters
    ----------
    renderer
        Draws the scene (its static background, shapes and supersampling).
    steps
        The frame indices to draw, in order (default: every frame).
    """

    #: Side of the tiles that mark what changed, in picture pixels.
    TILE = 16

    def __init__(self, renderer: RasterRenderer, steps: Sequence[int] | None = None) -> None:
        self.renderer = renderer
        scene = renderer.scene
        count = scene.frame_count
        self.steps = range(count) if steps is None else steps
        self.size = renderer.size
        ss = renderer.supersample
        self._tile = self.TILE * ss
        full = (self.size[0] * ss, self.size[1] * ss)
        self._grid = (-(-full[0] // self._tile), -(-full[1] // self._tile))  # columns, rows
        shapes = scene.shapes[renderer._static_count:]
        start = np.array([s.start for s in shapes], dtype=np.int64)
        end = np.array([s.end if s.end >= 0 else count for s in shapes], dtype=np.int64)
        boxes = np.array([self._shape_box(s) for s in shapes], dtype=np.int64).reshape(-1, 4)
        tiles = np.empty_like(boxes)  # first and last tile column and row of each box
        tiles[:, :2] = np.maximum(boxes[:, :2] // self._tile, 0)
        tiles[:, 2] = np.minimum(np.maximum(boxes[:, 2] - 1, 0) // self._tile, self._grid[0] - 1)
        tiles[:, 3] = np.minimum(np.maximum(boxes[:, 3] - 1, 0) // self._tile, self._grid[1] - 1)
        # A shape shown in every frame joins the background when nothing drawn
        # before it and not joined could cover the same tiles: drawing it early
        # then changes no pixel, and it is never redrawn.
        background = renderer._base.copy()
        draw = renderer.ImageDraw.Draw(background)
        covered = np.zeros((self._grid[1], self._grid[0]), dtype=bool)
        kept = np.ones(len(shapes), dtype=bool)
        for index, shape in enumerate(shapes):
            c0, r0, c1, r1 = tiles[index]
            area = covered[r0:r1 + 1, c0:c1 + 1]
            if start[index] <= 0 and end[index] >= count and not area.any():
                renderer._draw(draw, shape)
                kept[index] = False
            else:
                area[...] = True
        self._background = background
        self._shapes = [shape for shape, keep in zip(shapes, kept) if keep]
        self._plans = [renderer.plan(shape) for shape in self._shapes]  # drawing operations, made once
        self._start, self._end = start[kept], end[kept]
        self._boxes, self._tile_boxes = boxes[kept], tiles[kept]
        self._line_tiles: dict[int, np.ndarray] = {}
        self._work: Any = None  # scratch picture, full size, made when iterating
        self._work_draw: Any = None

    def __len__(self) -> int:
        return len(self.steps)

    def _shape_box(self, shape: Any) -> Box:
        """The supersampled pixels a shape may touch (generous: stroke, joints, glyphs)."""
        factor = self.renderer.factor
        margin = 2 * self.renderer.supersample + 2
        if shape.kind == "text":
            font, unicode = self.renderer._font(shape.size, shape.bold)
            text = shape.text if unicode else shape.text.translate(_ascii_table())
            x, y = shape.points[0][0] * factor, shape.points[0][1] * factor
            draw = self.renderer.ImageDraw.Draw(self.renderer._base)
            left, top, right, bottom = draw.textbbox((x, y), text, font=font, anchor=shape.anchor)
            pad = margin + 2
        else:
            xs = [p[0] * factor for p in shape.points]
            ys = [p[1] * factor for p in shape.points]
            left, top, right, bottom = min(xs), min(ys), max(xs), max(ys)
            pad = margin + math.ceil(shape.width * factor)
        return (math.floor(left) - pad, math.floor(top) - pad, math.ceil(right) + pad, math.ceil(bottom) + pad)

    def _visible(self, step: int) -> np.ndarray:
        return (self._start <= step) & (step < self._end)

    def _tiles_along(self, index: int) -> np.ndarray:
        """Flat indices of the tiles along a line (a long line's box would be mostly empty)."""
        if index not in self._line_tiles:
            tile, (columns, rows) = self._tile, self._grid
            shape = self._shapes[index]
            pad = math.ceil(shape.width * self.renderer.factor) + 2 * self.renderer.supersample + 2
            points = np.array(shape.points, dtype=np.float64) * self.renderer.factor
            samples = []
            for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
                count = max(2, math.ceil(math.hypot(x1 - x0, y1 - y0) / (tile / 2)) + 1)
                t = np.linspace(0.0, 1.0, count)[:, None]
                samples.append(np.array([x0, y0]) + np.array([x1 - x0, y1 - y0]) * t)
            along = np.concatenate(samples)
            corners = np.concatenate([along + (dx, dy) for dx in (-pad, pad) for dy in (-pad, pad)])
            cells = (corners // tile).astype(np.int64)
            cells[:, 0] = np.clip(cells[:, 0], 0, columns - 1)
            cells[:, 1] = np.clip(cells[:, 1], 0, rows - 1)
            self._line_tiles[index] = cells[:, 1] * columns + cells[:, 0]  # repeats are harmless
        return self._line_tiles[index]

    def _dirty(self, changed: np.ndarray) -> list[Box]:
        """Rectangles (supersampled pixels, tile-aligned) covering the changed shapes.

        The changed shapes mark tiles; each row of tiles gives runs of marked
        tiles, and runs of the same span in consecutive rows are joined.
        """
        tile, (columns, rows) = self._tile, self._grid
        indices = np.flatnonzero(changed)
        if not len(indices):
            return []
        grid = np.zeros((rows, columns), dtype=bool)
        for index in indices.tolist():
            if self._shapes[index].kind == "line":
                grid.flat[self._tiles_along(index)] = True
            else:
                c0, r0, c1, r1 = self._tile_boxes[index].tolist()
                grid[r0:r1 + 1, c0:c1 + 1] = True
        width, height = self.size[0] * self.renderer.supersample, self.size[1] * self.renderer.supersample
        padded = np.zeros((rows + 1, columns + 2), dtype=np.int8)  # a blank row closes every run
        padded[:-1, 1:-1] = grid
        edges = np.diff(padded, axis=1)
        start_rows, start_columns = np.nonzero(edges == 1)  # row-major: runs in order
        _, stop_columns = np.nonzero(edges == -1)
        runs_by_row: dict[int, list[tuple[int, int]]] = {}
        for row, first, last in zip(start_rows.tolist(), start_columns.tolist(), stop_columns.tolist()):
            runs_by_row.setdefault(row, []).append((first, last))
        open_runs: dict[tuple[int, int], list[int]] = {}
        boxes: list[Box] = []
        for row in range(min(runs_by_row), max(runs_by_row) + 2):
            still: dict[tuple[int, int], list[int]] = {}
            for run in runs_by_row.get(row, ()):
                span = open_runs.pop(run, None)
                still[run] = [span[0], row + 1] if span else [row, row + 1]
            for (c0, c1), (r0, r1) in open_runs.items():
                boxes.append((c0 * tile, r0 * tile, min(c1 * tile, width), min(r1 * tile, height)))
            open_runs = still
        return boxes

    def _redraw(self, canvas: Any, box: Box, candidates: np.ndarray) -> None:
        renderer = self.renderer
        left, top, right, bottom = box
        # Shapes are drawn at their own coordinates on a full-size scratch picture
        # (clipping then matches a whole-frame drawing exactly); only ``box`` of it
        # is read back, after the background was restored there.
        self._work.paste(self._background.crop(box), box[:2])
        boxes = self._boxes[candidates]
        touching = (boxes[:, 0] < right) & (boxes[:, 2] > left) & (boxes[:, 1] < bottom) & (boxes[:, 3] > top)
        run, plans, draw = renderer.run, self._plans, self._work_draw
        for index in candidates[touching].tolist():
            run(draw, plans[index])
        ss = renderer.supersample
        region = self._work.crop(box)
        if ss > 1:
            region = region.reduce(ss)
        canvas.paste(region, (left // ss, top // ss))

    def __iter__(self) -> Iterator[tuple[Any, list[Box]]]:
        whole: Box = (0, 0, *self.size)
        previous: np.ndarray | None = None
        canvas: Any = None
        ss = self.renderer.supersample
        self._work = self._background.copy()
        self._work_draw = self.renderer.ImageDraw.Draw(self._work)
        for step in self.steps:
            visible = self._visible(step)
            if previous is None:
                canvas = self.renderer.frame(step)
                previous = visible
                yield canvas, [whole]
                continue
            boxes = self._dirty(visible != previous)
            previous = visible
            if boxes:
                around = union(boxes)
                candidates = np.flatnonzero(
                    visible & (self._boxes[:, 0] < around[2]) & (self._boxes[:, 2] > around[0])
                    & (self._boxes[:, 1] < around[3]) & (self._boxes[:, 3] > around[1]))
                for box in boxes:
                    self._redraw(canvas, box, candidates)
            yield canvas, [(b[0] // ss, b[1] // ss, b[2] // ss, b[3] // ss) for b in boxes]


def union(boxes: Sequence[Box]) -> Box:
    """The smallest rectangle holding ``boxes`` (a 1x1 one when there are none).

    >>> union([(0, 5, 2, 6), (1, 1, 3, 2)])
    (0, 1, 3, 6)
    """
    if not boxes:
        return (0, 0, 1, 1)
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def _ascii_table() -> dict[int, str]:
    from .render import _ASCII

    return _ASCII


# --------------------------------------------------------------------------- GIF


def _palette(frames: FrameStream) -> Any:
    """One shared 32-colour palette, from the first, middle and last frames."""
    renderer = frames.renderer
    steps = frames.steps
    picks = [renderer.frame(steps[i]) for i in sorted({0, len(steps) // 2, len(steps) - 1})]
    width, height = picks[0].size
    sample = renderer.Image.new("RGB", (width, height * len(picks)))
    for i, image in enumerate(picks):
        sample.paste(image, (0, height * i))
    return sample.quantize(colors=32, method=renderer.Image.Quantize.FASTOCTREE)


_TRANSPARENT = 255  # a palette index the 32 quantized colours never use


def _write_gif_frame(stream: IO[bytes], image: Any, offset: tuple[int, int], duration: int, colours: bytes) -> None:
    """One frame: control block (delay, transparency, "leave in place"), position, LZW data."""
    from PIL import GifImagePlugin

    image.putpalette(colours)
    for chunk in GifImagePlugin.getdata(image, offset=offset, duration=duration, disposal=1,
                                        transparency=_TRANSPARENT):
        stream.write(chunk)


def write_gif(stream: IO[bytes], frames: FrameStream, fps: float) -> None:
    """Write an endlessly looping GIF, frame by frame (each frame: its changed rectangle only).

    All frames share one global palette; a frame after the first is drawn
    over the previous one (disposal "leave in place").
    """
    duration = frame_duration_ms(fps)
    if not len(frames):
        raise ValueError("an animation needs at least one frame")
    palette = _palette(frames)
    colours = bytes(palette.getpalette("RGB") or b"")[: 3 * 256].ljust(3 * 256, b"\0")
    Image = frames.renderer.Image
    width, height = frames.size
    stream.write(b"GIF89a" + struct.pack("<HHBBB", width, height, 0xF7, 0, 0) + colours)
    stream.write(b"!\xff\x0bNETSCAPE2.0\x03\x01" + struct.pack("<H", 0) + b"\0")  # loop forever
    dither = Image.Dither.NONE
    shown: np.ndarray | None = None  # palette indices the decoder shows after each frame
    for canvas, boxes in frames:
        if shown is None:
            first = canvas.quantize(palette=palette, dither=dither)
            shown = np.array(first)
            _write_gif_frame(stream, first, (0, 0), duration, colours)
            continue
        # Only pixels whose colour index changes are written; the others are
        # transparent (the previous frame shows through, and runs compress well).
        changes = []
        for left, top, right, bottom in boxes:
            indices = np.asarray(canvas.crop((left, top, right, bottom)).quantize(palette=palette, dither=dither))
            before = shown[top:bottom, left:right]
            differs = indices != before
            if differs.any():
                before[differs] = indices[differs]
                rows, columns = np.nonzero(differs)
                r0, r1, c0, c1 = int(rows.min()), int(rows.max()) + 1, int(columns.min()), int(columns.max()) + 1
                changes.append((left + c0, top + r0, left + c1, top + r1,
                                indices[r0:r1, c0:c1], differs[r0:r1, c0:c1]))
        if not changes:
            patch = np.full((1, 1), _TRANSPARENT, np.uint8)
            _write_gif_frame(stream, Image.fromarray(patch, "P"), (0, 0), duration, colours)
            continue
        box = union([change[:4] for change in changes])
        patch = np.full((box[3] - box[1], box[2] - box[0]), _TRANSPARENT, np.uint8)
        for left, top, right, bottom, indices, differs in changes:
            target = patch[top - box[1]:bottom - box[1], left - box[0]:right - box[0]]
            target[differs] = indices[differs]
        _write_gif_frame(stream, Image.fromarray(patch, "P"), box[:2], duration, colours)
    stream.write(b";")


# --------------------------------------------------------------------------- APNG


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_rows(image: Any) -> bytes:
    """Compressed scanlines of an RGB image, each with filter byte 0 (none)."""
    pixels = np.asarray(image, dtype=np.uint8)
    rows = np.zeros((pixels.shape[0], 1 + pixels.shape[1] * 3), np.uint8)
    rows[:, 1:] = pixels.reshape(pixels.shape[0], -1)
    return zlib.compress(rows.tobytes(), 6)


def write_apng(stream: IO[bytes], frames: FrameStream, fps: float) -> None:
    """Write an endlessly looping animated PNG, frame by frame (changed rectangles only)."""
    duration = frame_duration_ms(fps)
    if not len(frames):
        raise ValueError("an animation needs at least one frame")
    width, height = frames.size
    stream.write(b"\x89PNG\r\n\x1a\n")
    stream.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
    stream.write(_chunk(b"acTL", struct.pack(">II", len(frames), 0)))
    sequence = 0
    for number, (canvas, boxes) in enumerate(frames):
        box = union(boxes)
        left, top, right, bottom = box
        control = struct.pack(">IIIIIHHBB", sequence, right - left, bottom - top, left, top,
                              duration, 1000, 0, 0)  # dispose: none; blend: source
        stream.write(_chunk(b"fcTL", control))
        sequence += 1
        data = _png_rows(canvas.crop(box))
        if number == 0:
            stream.write(_chunk(b"IDAT", data))
        else:
            stream.write(_chunk(b"fdAT", struct.pack(">I", sequence) + data))
            sequence += 1
    stream.write(_chunk(b"IEND", b""))


# --------------------------------------------------------------------------- sheet


def write_sheet(stream: IO[bytes], frames: FrameStream, columns: int, gap: int = 6) -> None:
    """Every frame on one PNG sheet, ``columns`` to a row (frames pasted as they are drawn)."""
    Image = frames.renderer.Image
    width, height = frames.size
    count = len(frames)
    columns = max(1, min(columns, count))
    sheet = Image.new("RGB", sheet_size((width, height), count, columns, gap), "#d8dee2")
    for i, (canvas, _) in enumerate(frames):
        sheet.paste(canvas, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    sheet.save(stream, format="PNG", optimize=True)


def sheet_size(size: tuple[int, int], count: int, columns: int, gap: int = 6) -> tuple[int, int]:
    """Width and height of the sheet :func:`write_sheet` would draw.

    >>> sheet_size((10, 20), count=5, columns=2, gap=1)
    (21, 62)
    """
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    return (columns * size[0] + (columns - 1) * gap, rows * size[1] + (rows - 1) * gap)
