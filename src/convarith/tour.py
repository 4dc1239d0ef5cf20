"""The lesson "Tweaking your convolutions" as one self-contained page.

:func:`build_tour` renders, for each tweak of the lesson (zero padding,
strides, the 5×5 example, the output-size formula, dilation), its animation,
the worked arithmetic (:func:`convarith.explain`), the equivalent Keras and
PyTorch code, and the engine run on a picture drawn at run time, showing the
feature map at the size the arithmetic says. Everything is inline (data
URIs), so the page works offline and can be mailed as one file.

Examples
--------
>>> page = build_tour(progress=False)
>>> page.startswith("<!DOCTYPE html>") and "floor((28 + 2·1 - 3) / 3) + 1" in page
True
"""

from __future__ import annotations

import base64
import html
import io
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._atomic import check_writable, write_atomic
from .explain import explain
from .spec import ConvSpec, ResolvedConv

__all__ = ["build_tour", "write_tour", "TWEAKS", "Tweak", "lesson_picture"]

PICTURE_SIZE = 28
PIXEL = 6  # screen pixels per feature-map cell: sizes stay comparable between maps


@dataclass(frozen=True)
class Tweak:
    """One section of the page."""

    slug: str
    title: str
    slides: str
    text: str
    spec: ConvSpec
    animation_size: tuple[int, ...]
    view: str = "oblique"
    values: bool = False
    animation_spec: ConvSpec | None = None  # what to animate, when not ``spec`` itself
    note: str = ""  # under the animation


def _tweaks() -> tuple[Tweak, ...]:
    return (
        Tweak(
            "convolution", "A convolution shrinks the image", "slide 2",
            "A 3×3 kernel turns each 3×3 window of the input into one output pixel, so the "
            "output (green) is smaller than the input (blue): a 5×5 input gives 3×3.",
            ConvSpec(3, padding="valid"), (5, 5),
        ),
        Tweak(
            "padding", "Zero padding: 'valid' vs 'same'", "slides 3-5",
            "Adding zeros around the input (dashed cells) lets the window centre on every input "
            "pixel, so the output keeps the input's size. Keras calls no padding "
            "<code>padding=\"valid\"</code> (the default) and enough padding to keep the size "
            "<code>padding=\"same\"</code>.",
            ConvSpec(3, padding="same"), (5, 5),
        ),
        Tweak(
            "strides", "Strides: the window jumps", "slides 6-8",
            "With <code>strides=2</code> the kernel moves two pixels at a time, skipping every "
            "other position, so the output is about half the size.",
            ConvSpec(3, strides=2), (7, 7),
        ),
        Tweak(
            "example", "The example: 5×5, 'same' padding and stride 2 → 3×3", "slide 9",
            "Padding and strides together: the 5×5 input padded with one zero on each side, "
            "visited every second pixel, gives a 3×3 output. The numbers are a real run of the "
            "engine: each output cell is the sum of the window's cells times the kernel's "
            "weights (small ×w).",
            ConvSpec(3, padding="same", strides=2), (5, 5), values=True,
        ),
        Tweak(
            "formula-stride1", "The output size: 28 pixels, padding 1, stride 1 → 28", "slides 10-11",
            "", ConvSpec(3, padding=1, strides=1), (28,), view="flat",
            animation_spec=ConvSpec(3, padding=1, strides=1, rank=1),
            note="one row of the 28×28 image: the formula works axis by axis",
        ),
        Tweak(
            "formula-stride3", "The output size: 28 pixels, padding 1, stride 3 → 10", "slide 11",
            "", ConvSpec(3, padding=1, strides=3), (28,), view="flat",
            animation_spec=ConvSpec(3, padding=1, strides=3, rank=1),
            note="one row of the 28×28 image: the formula works axis by axis",
        ),
        Tweak(
            "dilation", "Dilated convolution: 9 weights, a 5×5 field of view", "slides 12-13",
            "With <code>dilation_rate=2</code> the kernel's 9 taps are spread one pixel apart "
            "(the orange outlines are the pixels it skips): it still has 9 parameters but sees a "
            "5×5 field, K_eff = K + (K − 1)(D − 1) = 5.",
            ConvSpec(3, dilation=2), (7, 7),
        ),
    )


TWEAKS = _tweaks()


# --------------------------------------------------------------------------- the picture


def lesson_picture(size: int = PICTURE_SIZE) -> np.ndarray:
    """A ``size``×``size`` grey image of a handwritten-looking "3", in [0, 1], drawn now.

    >>> image = lesson_picture()
    >>> image.shape, float(image.max()) == 1.0, 0.05 < float(image.mean()) < 0.5
    ((28, 28), True, True)
    """
    from PIL import Image, ImageDraw, ImageFilter

    big = size * 8
    canvas = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(canvas)
    width = round(big * 0.11)
    # the two bowls of a "3", as arcs, and a short middle bar
    box_top = (big * 0.26, big * 0.12, big * 0.74, big * 0.50)
    box_bottom = (big * 0.24, big * 0.46, big * 0.78, big * 0.88)
    draw.arc(box_top, start=190, end=90, fill=255, width=width)
    draw.arc(box_bottom, start=270, end=160, fill=255, width=width)
    draw.line([(big * 0.42, big * 0.48), (big * 0.56, big * 0.48)], fill=255, width=width)
    canvas = canvas.filter(ImageFilter.GaussianBlur(big * 0.012))
    small = canvas.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(small, dtype=np.float64)
    return np.clip(array / array.max(), 0.0, 1.0)


EDGE_KERNEL = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])  # Sobel, vertical edges


def _feature_map(spec: ConvSpec, image: np.ndarray) -> np.ndarray:
    """The engine's output of ``spec`` on one grey image with the edge kernel."""
    from .engine import conv

    kernel = EDGE_KERNEL[..., None, None]
    result = conv(image[None, ..., None], kernel, spec)
    return np.asarray(result)[0, ..., 0]


def _png_uri(data: bytes, kind: str = "png") -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode("ascii")


def _map_png(array: np.ndarray, signed: bool) -> bytes:
    """A grey (or blue-white-orange for signed values) picture, PIXEL screen pixels a cell."""
    from PIL import Image

    if signed:
        scale = float(np.abs(array).max()) or 1.0
        t = np.clip(array / scale, -1.0, 1.0)[..., None]
        negative = np.array([0.0, 114.0, 178.0])   # Okabe-Ito blue
        positive = np.array([230.0, 159.0, 0.0])   # Okabe-Ito orange
        white = np.array([255.0, 255.0, 255.0])
        rgb = np.where(t < 0, white + (negative - white) * -t, white + (positive - white) * t)
    else:
        rgb = np.repeat((255.0 * (1.0 - array))[..., None], 3, axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    image = image.resize((array.shape[1] * PIXEL, array.shape[0] * PIXEL), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------- code


def _keras_code(spec: ConvSpec) -> str:
    lines = ["import keras", ""]
    padding = spec.padding
    args = ["filters=10", f"kernel_size={spec.kernel_size[0]}"]  # type: ignore[index]
    if isinstance(padding, str):
        args.append(f'padding="{padding}"')
    else:
        lines.append(f"pad = keras.layers.ZeroPadding2D(padding={_first_pad(spec)})")
        args.append('padding="valid"')
    if max(spec.strides) > 1:  # type: ignore[arg-type]
        args.append(f"strides={spec.strides[0]}")  # type: ignore[index]
    if max(spec.dilation) > 1:  # type: ignore[arg-type]
        args.append(f"dilation_rate={spec.dilation[0]}")  # type: ignore[index]
    args.append('activation="relu"')
    lines.append("conv = keras.layers.Conv2D(\n    " + ",\n    ".join(args) + ",\n)")
    return "\n".join(lines)


def _torch_code(resolved: ResolvedConv) -> str:
    spec = resolved.spec
    pads = resolved.padding
    lines = ["import torch", ""]
    symmetric = all(lo == hi for lo, hi in pads) and len(set(pads)) == 1
    args = ["in_channels=1", "out_channels=10", f"kernel_size={spec.kernel_size[0]}"]  # type: ignore[index]
    if max(spec.strides) > 1:  # type: ignore[arg-type]
        args.append(f"stride={spec.strides[0]}")  # type: ignore[index]
    if symmetric:
        if pads[0][0]:
            args.append(f"padding={pads[0][0]}")
    else:
        (top, bottom), (left, right) = pads
        lines[1:1] = ["import torch.nn.functional as F"]
        lines.append(f"# PyTorch padding is symmetric; pad ({top}, {bottom}) x ({left}, {right}) first")
        lines.append(f"pad = lambda x: F.pad(x, ({left}, {right}, {top}, {bottom}))")
    if max(spec.dilation) > 1:  # type: ignore[arg-type]
        args.append(f"dilation={spec.dilation[0]}")  # type: ignore[index]
    lines.append("conv = torch.nn.Conv2d(\n    " + ",\n    ".join(args) + ",\n)")
    return "\n".join(lines)


def _ported(spec: ConvSpec, size: tuple[int, ...]) -> tuple[str, str] | None:
    """The full PyTorch port (weights included) from :mod:`convarith.port`, when present."""
    try:
        from .port import port
    except ImportError:
        return None
    keras_spec = ConvSpec.from_keras(
        "Conv2D", filters=10, kernel_size=spec.kernel_size,
        strides=spec.strides, padding=spec.padding if isinstance(spec.padding, str) else "valid",
        dilation_rate=spec.dilation,
    ) if isinstance(spec.padding, str) else spec.replace(filters=10)
    try:
        result = port(keras_spec, to="torch", input_shape=(*size, 1))
    except (ValueError, TypeError):
        return None
    return result.summary, result.code


# --------------------------------------------------------------------------- progress


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A progress bar (rich when installed, plain lines otherwise) on stderr."""
    if not enabled:
        yield lambda label: None
        return
    try:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        done = [0]

        def plain(label: str) -> None:
            done[0] += 1
            print(f"[{done[0]}/{total}] {label}", file=sys.stderr, flush=True)

        yield plain
        return
    with Progress(TextColumn("{task.description:<44}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), transient=False) as bar:
        task = bar.add_task("building the tour", total=total)

        def advance(label: str) -> None:
            bar.update(task, advance=1, description=label)

        yield advance


# --------------------------------------------------------------------------- the page


def _section(tweak: Tweak, image: np.ndarray, image_uri: str) -> str:
    from .viz import animate

    spec = tweak.spec
    shown = tweak.animation_spec or spec
    movie = animate(shown, tweak.animation_size, view=tweak.view, values=tweak.values)
    picture = _png_uri(movie.to_svg().encode("utf-8"), "svg+xml")
    caption = f"{len(movie)} steps, one per output cell" + (f"; {tweak.note}" if tweak.note else "")
    explanation = explain(spec, image.shape if tweak.animation_spec is not None else tweak.animation_size)
    on_picture = explain(spec, image.shape)
    feature = _feature_map(spec, image)
    resolved = spec.resolve(image.shape)
    port = _ported(spec, image.shape)
    port_html = ""
    if port is not None:
        summary, code = port
        port_html = (f"<details><summary>Full PyTorch port, weights included (convarith.port): "
                     f"{html.escape(summary)}</summary><pre><code>{html.escape(code)}</code></pre></details>")
    text = tweak.text or _formula_text(tweak)
    in_h, in_w = image.shape
    out_h, out_w = feature.shape
    return f"""
<section id="{tweak.slug}">
  <h2>{html.escape(tweak.title)} <span class="slide">{tweak.slides}</span></h2>
  <p>{text}</p>
  <div class="row">
    <figure class="movie"><img src="{picture}" alt="{html.escape(explanation.summary)}">
      <figcaption>{html.escape(caption)}</figcaption></figure>
    <div class="side">
      <h3>The arithmetic</h3>
      <pre class="math">{html.escape(explanation.text)}</pre>
      <h3>Keras <small>(for the 28×28 picture below)</small></h3>
      <pre><code>{html.escape(_keras_code(spec))}</code></pre>
      <h3>PyTorch <small>(same picture)</small></h3>
      <pre><code>{html.escape(_torch_code(resolved))}</code></pre>
      {port_html}
    </div>
  </div>
  <h3>On a picture: the engine's output</h3>
  <div class="maps">
    <figure><img src="{image_uri}" width="{in_w * PIXEL}" height="{in_h * PIXEL}" alt="input picture">
      <figcaption>input {in_h}×{in_w}</figcaption></figure>
    <div class="arrow">→<br><small>{html.escape(_spec_words(spec))}<br>vertical-edge kernel</small></div>
    <figure><img src="{_png_uri(_map_png(feature, signed=True))}" width="{out_w * PIXEL}"
      height="{out_h * PIXEL}" alt="feature map">
      <figcaption>feature map <b>{out_h}×{out_w}</b></figcaption></figure>
    <pre class="math small">{html.escape(on_picture.axes[0].steps[-1])}</pre>
  </div>
</section>"""


def _first_pad(spec: ConvSpec) -> int:
    """The low-side padding of the first axis of an explicitly padded spec."""
    padding = spec.padding
    assert isinstance(padding, tuple)
    return int(padding[0][0])


def _spec_words(spec: ConvSpec) -> str:
    parts = [f"kernel {spec.kernel_size[0]}"]  # type: ignore[index]
    parts.append(f"padding {spec.padding if isinstance(spec.padding, str) else _first_pad(spec)}")
    if max(spec.strides) > 1:  # type: ignore[arg-type]
        parts.append(f"stride {spec.strides[0]}")  # type: ignore[index]
    if max(spec.dilation) > 1:  # type: ignore[arg-type]
        parts.append(f"dilation {spec.dilation[0]}")  # type: ignore[index]
    return ", ".join(parts)


def _formula_text(tweak: Tweak) -> str:
    stride = tweak.spec.strides[0]  # type: ignore[index]
    size = tweak.animation_size[0]
    k = tweak.spec.kernel_size[0]  # type: ignore[index]
    p = _first_pad(tweak.spec)
    out = (tweak.animation_spec or tweak.spec).resolve(tweak.animation_size).output_size[0]
    wrong = (size - k + 2 * p) / (stride + 1)
    return (
        f"The lesson's example: I = {size} pixels, a {k}×{k} kernel, padding P = {p}, stride S = {stride}. "
        f"The right formula gives <b>{out}</b>. The slide's misprint, (I − K + 2P) / (S + 1) = "
        f"({size} − {k} + {2 * p}) / {stride + 1} = <s>{wrong:g}</s>, is not even a whole number."
    )


_FORMULA = """
<section id="formula">
  <h2>The output-size formula <span class="slide">slide 10</span></h2>
  <p>The slide prints <code class="wrong">(I − K + 2P) / (S + 1)</code>. That is a misprint: the
  division is by S, the +1 comes after it, and the division rounds down (a window that does not
  fit is dropped):</p>
  <pre class="formula">O = floor((I − K + 2P) / S) + 1</pre>
  <p>with I the input size, K the kernel size, P the zero padding on each side and S the stride.
  For a dilated kernel use its span K_eff = K + (K − 1)(D − 1) for K. The slide's own example
  (28 pixels, 3×3 kernel, padding 1) follows it: stride 1 gives (28 − 3 + 2) / 1 + 1 = 28, stride 3
  gives floor(27 / 3) + 1 = 10.</p>
  <table>
    <tr><th>I</th><th>K</th><th>P</th><th>S</th><th>right: floor((I − K + 2P) / S) + 1</th>
        <th>misprint: (I − K + 2P) / (S + 1)</th></tr>
    {rows}
  </table>
</section>"""


def _formula_rows() -> str:
    rows = []
    for size, k, p, s in ((28, 3, 1, 1), (28, 3, 1, 3), (5, 3, 1, 2), (28, 3, 1, 2)):
        out = ConvSpec(k, padding=p, strides=s).resolve((size, size)).output_size[0]
        wrong = (size - k + 2 * p) / (s + 1)
        rows.append(f"<tr><td>{size}</td><td>{k}</td><td>{p}</td><td>{s}</td><td><b>{out}</b></td>"
                    f"<td class='wrong'>{wrong:g}</td></tr>")
    return "\n    ".join(rows)


_STYLE = """
body { font: 16px/1.5 "DejaVu Sans", system-ui, sans-serif; color: #1c2a33; margin: 0; background: #f6f8f9; }
header { background: #0a3d5c; color: white; padding: 1.6em 2em 1.2em; }
header h1 { margin: 0 0 .3em; font-size: 1.9em; }
header p { margin: .2em 0; max-width: 60em; }
nav a { color: #bfe3f7; margin-right: 1em; }
main { max-width: 1180px; margin: 0 auto; padding: 1em 2em 3em; }
section { background: white; border-radius: 10px; padding: 1em 1.6em 1.4em; margin: 1.4em 0;
          box-shadow: 0 1px 3px rgba(0,0,0,.12); }
h2 { margin: .3em 0 .4em; color: #0a3d5c; }
h3 { margin: .8em 0 .3em; font-size: 1.02em; color: #0a6aa8; }
.slide { font-size: .6em; color: #5a6b75; font-weight: normal; margin-left: .6em; }
.row { display: flex; gap: 1.6em; align-items: flex-start; flex-wrap: wrap; }
.movie { margin: 0; flex: 0 1 auto; }
.movie img { max-width: 520px; width: 100%; height: auto; }
.movie.half img { max-width: 520px; }
.side { flex: 1 1 380px; min-width: 320px; }
figcaption { color: #5a6b75; font-size: .85em; text-align: center; }
pre { background: #f1f4f6; padding: .6em .8em; border-radius: 6px; overflow-x: auto; font-size: .85em; margin: .2em 0; }
pre.math { background: #fff8e6; white-space: pre-wrap; }
h3 small { font-weight: normal; color: #5a6b75; }
pre.small { align-self: center; }
pre.formula { font-size: 1.4em; text-align: center; background: #e8f6f1; }
.maps { display: flex; gap: 1.4em; align-items: center; flex-wrap: wrap; }
.maps figure { margin: 0; }
.maps img { image-rendering: pixelated; border: 1px solid #c9d3d9; }
.arrow { text-align: center; font-size: 1.6em; color: #5a6b75; }
.arrow small { font-size: .5em; }
.notes { font-size: .85em; color: #5a6b75; }
.wrong, s { color: #d55e00; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { border: 1px solid #c9d3d9; padding: .25em .7em; text-align: center; }
details { margin-top: .5em; font-size: .9em; }
footer { color: #5a6b75; font-size: .85em; text-align: center; margin: 2em; }
"""


_EXTRAS = [
    (
        "The odd padding pixel: Keras 'same' vs PyTorch padding=1",
        "On an even input with stride 2, Keras 'same' needs one zero in total per axis and puts "
        "it at the end, (0, 1); PyTorch's padding=1 pads both sides, (1, 1). Both give 3×3, but "
        "the windows sit one pixel apart: weights ported without care give shifted outputs.",
        [("Keras padding='same': (0, 1)", ConvSpec(3, strides=2, padding="same"), (6, 6), "oblique"),
         ("PyTorch padding=1: (1, 1)", ConvSpec(3, strides=2, padding=1), (6, 6), "oblique")],
    ),
    (
        "Transposed convolution, two ways",
        "A transposed convolution (Conv2DTranspose, ConvTranspose2d) with stride 2 upsamples 3×3 "
        "to 5×5. Left: the same thing as a stride-1 convolution over the input with zeros inserted "
        "between its cells (and padded). Right: each input cell adds a kernel-sized patch, "
        "weighted by its value, to the output; padding=1 crops one cell from each side.",
        [("as a direct convolution", ConvSpec(3, strides=2, padding=1, transposed=True), (3, 3), "direct"),
         ("as each input cell scattering a patch", ConvSpec(3, strides=2, padding=1, transposed=True),
          (3, 3), "scatter")],
    ),
]


def _extra_sections() -> str:
    from .viz import animate

    parts = ['<section id="beyond"><h2>Beyond the lesson</h2>']
    for title, text, figures in _EXTRAS:
        parts.append(f'<h3>{html.escape(title)}</h3><p>{html.escape(text)}</p><div class="row">')
        for caption, spec, size, view in figures:
            transposed_as = view if view in ("direct", "scatter") else "direct"
            movie = animate(spec, size, transposed_as=transposed_as)
            uri = _png_uri(movie.to_svg().encode("utf-8"), "svg+xml")
            parts.append(f'<figure class="movie half"><img src="{uri}" alt="{html.escape(caption)}">'
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


def build_tour(progress: bool = True, picture: np.ndarray | None = None) -> str:
    """The lesson page as one HTML string (every image inline).

    Parameters
    ----------
    progress
        Show a progress bar on stderr while rendering.
    picture
        A grey 2-D image in [0, 1] to run the engine on (default: a "3" drawn
        by :func:`lesson_picture`).
    """
    from . import __version__

    started = time.perf_counter()
    image = lesson_picture() if picture is None else _check_picture(picture)
    image_uri = _png_uri(_map_png(image, signed=False))
    sections = []
    with _progress(len(TWEAKS) + 2, progress) as advance:
        for tweak in TWEAKS:
            if tweak.slug == "formula-stride1":
                sections.append(_FORMULA.replace("{rows}", _formula_rows()))
            sections.append(_section(tweak, image, image_uri))
            advance(f"rendered: {tweak.title[:40]}")
        sections.append(_extra_sections())
        advance("rendered: beyond the lesson")
        advance("page assembled")
    nav = " ".join(
        f'<a href="#{t.slug}">{html.escape(t.slug.replace("-", " "))}</a>' for t in TWEAKS
    ) + ' <a href="#beyond">beyond the lesson</a>'
    elapsed = time.perf_counter() - started
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Tweaking your convolutions: a convarith tour</title>
<style>{_STYLE}</style></head>
<body>
<header><h1>Tweaking your convolutions</h1>
<p>Zero padding, strides and dilation: what each does to a convolution, drawn step by step from
convarith's geometry, with the arithmetic worked out, the Keras and PyTorch code, and the engine
run on a picture. Blue: input; dashed: zero padding; green: output; the shaded window is what the
kernel reads for the dark green output cell.</p>
<nav>{nav}</nav></header>
<main>
{''.join(sections)}
</main>
<footer>Made by convarith {__version__} in {elapsed:.1f} s; works offline (every picture is inside
this file). Pictures in the style of Dumoulin &amp; Visin, "A guide to convolution arithmetic for
deep learning" (2016).</footer>
</body></html>
"""


def _check_picture(picture: Any) -> np.ndarray:
    array = np.asarray(picture, dtype=np.float64)
    if array.ndim != 2 or min(array.shape) < 8:
        raise ValueError(f"picture must be a 2-D grey image of at least 8×8, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("picture must hold finite numbers")
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def write_tour(
    out: str | os.PathLike[str] = "convarith-tour",
    force: bool = False,
    progress: bool = True,
    open_browser: bool = False,
) -> Path:
    """Write the page to ``out/index.html`` (or to ``out`` if it ends in ``.html``).

    Refuses to overwrite without ``force``; the file appears whole or not at all.

    >>> import tempfile
    >>> path = write_tour(tempfile.mkdtemp(), progress=False)
    >>> path.name, path.stat().st_size > 10_000
    ('index.html', True)
    """
    target = Path(out)
    if target.suffix.lower() not in (".html", ".htm"):
        target = target / "index.html"
    for folder in (target.parent, *target.parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise ValueError(f"out {str(out)!r}: {str(folder)!r} is a file, not a folder")
            break
    if target.exists() and not force:
        raise FileExistsError(f"{str(target)!r} exists; pass --force to overwrite it")
    page = build_tour(progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    check_writable(target, force)
    write_atomic(target, page, force=force)
    if open_browser:
        import webbrowser

        webbrowser.open(target.resolve().as_uri())
    return target
