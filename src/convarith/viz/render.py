"""Draw a :class:`~convarith.viz.scene.Scene`: raster frames (Pillow) and SVG.

Raster frames are drawn at twice the size and scaled down, for smooth
edges; GIF frames share one palette so colours do not flicker. The animated
SVG is self-contained and needs no script: each frame's shapes form a group
shown in turn by CSS keyframes (a browser without CSS animation shows the
first frame).
"""

from __future__ import annotations

import html
import io
import math
from collections.abc import Iterator, Sequence
from typing import Any

from .scene import Scene, Shape

__all__ = ["RasterRenderer", "scene_svg", "gif_bytes", "apng_bytes", "png_bytes", "strip_image"]

_FONT_FILES = {False: ("DejaVuSans.ttf", "LiberationSans-Regular.ttf"),
               True: ("DejaVuSans-Bold.ttf", "LiberationSans-Bold.ttf")}
# Glyphs Pillow's built-in font lacks, and what to write instead.
_ASCII = str.maketrans({"×": "x", "·": "*", "−": "-", "→": "->", "—": "-", "⌊": "", "⌋": ""})


def _pillow() -> Any:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "drawing pictures needs Pillow: pip install 'convarith[viz]' (or pip install pillow)"
        ) from error
    return Image, ImageDraw, ImageFont


def _pillow_colour() -> Any:
    from PIL import ImageColor

    return ImageColor


class RasterRenderer:
    """Draws the frames of one scene with Pillow (fonts and the static layer cached)."""

    def __init__(self, scene: Scene, scale: float = 1.0, supersample: int = 2) -> None:
        self.Image, self.ImageDraw, self.ImageFont = _pillow()
        self.ImageColor = _pillow_colour()
        self.scene = scene
        self.scale = scale
        self.factor = scale * supersample
        self.supersample = supersample
        self.size = (max(1, round(scene.width * scale)), max(1, round(scene.height * scale)))
        self._fonts: dict[tuple[int, bool], tuple[Any, bool]] = {}
        self._inks: dict[str, int] = {}
        # shapes before the first animated one are drawn once
        static = 0
        for shape in scene.shapes:
            if shape.start != 0 or shape.end != -1:
                break
            static += 1
        self._static_count = static
        self._base = self._new()
        draw = self.ImageDraw.Draw(self._base)
        for shape in scene.shapes[:static]:
            self._draw(draw, shape)

    def _new(self) -> Any:
        big = (self.size[0] * self.supersample, self.size[1] * self.supersample)
        return self.Image.new("RGB", big, "#ffffff")

    def _font(self, size: float, bold: bool) -> tuple[Any, bool]:
        key = (max(6, round(size * self.factor)), bold)
        if key not in self._fonts:
            font, unicode = None, True
            for name in _FONT_FILES[bold]:
                try:
                    font = self.ImageFont.truetype(name, key[0])
                    break
                except OSError:
                    continue
            if font is None:
                font, unicode = self.ImageFont.load_default(size=key[0]), False
            self._fonts[key] = (font, unicode)
        return self._fonts[key]

    def _xy(self, point: tuple[float, float]) -> tuple[float, float]:
        return (point[0] * self.factor, point[1] * self.factor)

    def _ink(self, colour: str) -> int:
        """Pillow's ink for ``colour`` on an RGB picture (the same for every RGB picture)."""
        if colour not in self._inks:
            rgb = self.ImageColor.getcolor(colour, "RGB")
            self._inks[colour] = self.ImageDraw.Draw(self.Image.new("RGB", (1, 1))).draw.draw_ink(rgb)
        return self._inks[colour]

    def plan(self, shape: Shape) -> list[tuple[str, tuple[Any, ...]]]:
        """The drawing operations of ``shape``, computed once (see :meth:`run`).

        ``("polygon", (points, ink))`` fills, ``("lines", (points, ink, width))``
        strokes without joints (what ``ImageDraw.line`` does for width 4 or
        less), ``("call", (method, args, kwargs))`` anything else through
        ``ImageDraw``: the pixels are those of the ``ImageDraw`` calls.
        """
        f = self.factor
        ops: list[tuple[str, tuple[Any, ...]]] = []
        if shape.kind == "polygon":
            points = [self._xy(p) for p in shape.points]
            if shape.fill:
                ops.append(("polygon", (points, self._ink(shape.fill))))
            if shape.stroke:
                width = max(1, round(shape.width * f))
                closed = [*points, points[0]]
                if shape.dash:
                    for segment in _dashes(closed, shape.dash[0] * f, shape.dash[1] * f):
                        ops.append(("lines", (segment, self._ink(shape.stroke), width)))
                elif width <= 4:  # ImageDraw.line rounds joints only for wider lines
                    ops.append(("lines", (closed, self._ink(shape.stroke), width)))
                else:
                    ops.append(("call", ("line", (closed,), {"fill": shape.stroke, "width": width,
                                                             "joint": "curve"})))
        elif shape.kind == "line" and shape.stroke is None:
            ops.append(("call", ("line", ([self._xy(p) for p in shape.points],),
                                 {"fill": None, "width": max(1, round(shape.width * f))})))
        elif shape.kind == "line":
            stroke: str = shape.stroke  # type: ignore[assignment]  # not None: the branch above
            ops.append(("lines", ([self._xy(p) for p in shape.points], self._ink(stroke),
                                  max(1, round(shape.width * f)))))
        elif shape.kind == "text":
            font, unicode = self._font(shape.size, shape.bold)
            text = shape.text if unicode else shape.text.translate(_ASCII)
            ops.append(("call", ("text", (self._xy(shape.points[0]), text),
                                 {"font": font, "fill": shape.fill, "anchor": shape.anchor})))
        return ops

    @staticmethod
    def run(draw: Any, plan: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        """Carry out a :meth:`plan` on ``draw`` (an ``ImageDraw`` of an RGB picture)."""
        core = draw.draw
        for op, args in plan:
            if op == "lines":
                core.draw_lines(*args)
            elif op == "polygon":
                core.draw_polygon(args[0], args[1], 1)
            else:
                name, positional, keywords = args
                getattr(draw, name)(*positional, **keywords)

    def _draw(self, draw: Any, shape: Shape) -> None:
        self.run(draw, self.plan(shape))

    def frame(self, index: int) -> Any:
        """Frame ``index`` as an RGB Pillow image."""
        if not 0 <= index < self.scene.frame_count:
            raise IndexError(f"frame {index} is outside 0..{self.scene.frame_count - 1}")
        image = self._base.copy()
        draw = self.ImageDraw.Draw(image)
        end = self.scene.frame_count
        for shape in self.scene.shapes[self._static_count:]:
            if shape.start <= index < (shape.end if shape.end >= 0 else end):
                self._draw(draw, shape)
        if self.supersample > 1:
            image = image.reduce(self.supersample)  # box filter: fast, and smooth enough at 2x
        return image

    def frames(self) -> Iterator[Any]:
        for index in range(self.scene.frame_count):
            yield self.frame(index)


def _dashes(points: Sequence[tuple[float, float]], on: float, off: float) -> list[list[tuple[float, float]]]:
    """The segments of a dashed polyline (Pillow has no dash pattern)."""
    segments = []
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        dx, dy = (x1 - x0) / length, (y1 - y0) / length
        # centre the pattern on the edge so corners look alike
        count = max(1, round((length + off) / (on + off)))
        period = (length + off) / count
        dash = period - off
        t = 0.0
        for _ in range(count):
            a, b = t, min(t + dash, length)
            segments.append([(x0 + dx * a, y0 + dy * a), (x0 + dx * b, y0 + dy * b)])
            t += period
    return segments


def _duration_ms(fps: float) -> int:
    return max(20, round(1000 / fps))


def gif_bytes(images: Sequence[Any], fps: float) -> bytes:
    """An endlessly looping GIF; all frames quantized to one shared palette."""
    Image, _, _ = _pillow()
    picks = [images[0], images[len(images) // 2], images[-1]]
    width, height = images[0].size
    sample = Image.new("RGB", (width, height * len(picks)))
    for i, image in enumerate(picks):
        sample.paste(image, (0, height * i))
    palette = sample.quantize(colors=32, method=Image.Quantize.FASTOCTREE)
    quantized = [image.quantize(palette=palette, dither=Image.Dither.NONE) for image in images]
    buffer = io.BytesIO()
    quantized[0].save(buffer, format="GIF", save_all=True, append_images=quantized[1:], loop=0,
                      duration=_duration_ms(fps), optimize=True)
    return buffer.getvalue()


def apng_bytes(images: Sequence[Any], fps: float) -> bytes:
    """An endlessly looping animated PNG."""
    buffer = io.BytesIO()
    images[0].save(buffer, format="PNG", save_all=True, append_images=list(images[1:]), loop=0,
                   duration=_duration_ms(fps), default_image=False)
    return buffer.getvalue()


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def strip_image(images: Sequence[Any], columns: int, gap: int = 6) -> Any:
    """All frames on one sheet, ``columns`` to a row."""
    Image, _, _ = _pillow()
    width, height = images[0].size
    columns = max(1, min(columns, len(images)))
    rows = math.ceil(len(images) / columns)
    sheet = Image.new("RGB", (columns * width + (columns - 1) * gap, rows * height + (rows - 1) * gap), "#d8dee2")
    for i, image in enumerate(images):
        sheet.paste(image, ((i % columns) * (width + gap), (i // columns) * (height + gap)))
    return sheet


# --------------------------------------------------------------------------- SVG

_SVG_ANCHOR = {"m": ("middle", "central"), "l": ("start", "central"), "r": ("end", "central")}


def _num(value: float) -> str:
    text = f"{value:.1f}"
    return text[:-2] if text.endswith(".0") else text


class _SvgStyles:
    """Shared presentation attributes as CSS classes (keeps big SVGs small)."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def name(self, rule: str) -> str:
        if rule not in self.names:
            self.names[rule] = f"c{len(self.names)}"
        return self.names[rule]

    def css(self) -> str:
        return "".join(f".{name}{{{rule}}}" for rule, name in self.names.items())


def _svg_shape(shape: Shape, styles: _SvgStyles) -> str:
    if shape.kind in ("polygon", "line"):
        rule = f"fill:{shape.fill or 'none'};"
        if shape.stroke:
            rule += f"stroke:{shape.stroke};stroke-width:{shape.width:.2f}px;"
            if shape.dash:
                rule += f"stroke-dasharray:{shape.dash[0]:.1f} {shape.dash[1]:.1f};"
        points = "L".join(f"{_num(x)} {_num(y)}" for x, y in shape.points)
        close = "Z" if shape.kind == "polygon" else ""
        return f'<path class="{styles.name(rule)}" d="M{points}{close}"/>'
    x, y = shape.points[0]
    horizontal = _SVG_ANCHOR[shape.anchor[0]][0]
    baseline = "central" if shape.anchor[1] == "m" else "auto"
    rule = f"fill:{shape.fill};font-size:{shape.size:.1f}px;text-anchor:{horizontal};dominant-baseline:{baseline};"
    if shape.bold:
        rule += "font-weight:bold;"
    return f'<text class="{styles.name(rule)}" x="{_num(x)}" y="{_num(y)}">{html.escape(shape.text)}</text>'


def scene_svg(scene: Scene, fps: float = 1.0, frame: int | None = None, title: str = "") -> str:
    """The scene as SVG: animated with CSS keyframes, or one ``frame`` as a still."""
    n = scene.frame_count
    head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{scene.width:.0f}" height="{scene.height:.0f}" '
            f'viewBox="0 0 {scene.width:.1f} {scene.height:.1f}" font-family="DejaVu Sans, Verdana, Arial, sans-serif">')
    parts = [head]
    if title:
        parts.append(f"<title>{html.escape(title)}</title>")
    parts.append('<rect width="100%" height="100%" fill="#ffffff"/>')
    if frame is not None:
        if not 0 <= frame < n:
            raise IndexError(f"frame {frame} is outside 0..{n - 1}")
        styles = _SvgStyles()
        shapes = [_svg_shape(s, styles) for s in scene.visible(frame)]
        parts.append(f"<style>{styles.css()}path{{stroke-linejoin:round}}</style>")
        parts.extend(shapes)
        parts.append("</svg>")
        return "\n".join(parts)

    duration = n / fps
    styles = _SvgStyles()
    spans: list[tuple[int, int]] = []
    body: list[str] = []
    current: tuple[int, int] | None = None
    for shape in scene.shapes:
        span = (shape.start, shape.end if shape.end >= 0 else n)
        if span != current:
            if current is not None and current != (0, n):
                body.append("</g>")
            if span != (0, n):
                body.append(f'<g class="s{span[0]}_{span[1]}">')
                if span not in spans:
                    spans.append(span)
            current = span
        body.append(_svg_shape(shape, styles))
    if current is not None and current != (0, n):
        body.append("</g>")
    rules = []
    for a, b in spans:
        keys: dict[float, int] = {0.0: 1 if a == 0 else 0}
        if a > 0:
            keys[100 * a / n] = 1
        if b < n:
            keys[100 * b / n] = 0
        keys[100.0] = 1 if b == n else 0
        frames = " ".join(f"{k:.4g}%{{opacity:{v}}}" for k, v in sorted(keys.items()))
        rules.append(
            f".s{a}_{b}{{opacity:{1 if a == 0 else 0};animation:k{a}_{b} {duration:.3f}s step-end infinite}}"
            f"@keyframes k{a}_{b}{{{frames}}}"
        )
    parts.append("<style>" + styles.css() + "path{stroke-linejoin:round}\n" + "\n".join(rules) + "</style>")
    parts.extend(body)
    parts.append("</svg>")
    return "\n".join(parts)
