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
import re
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
    """Keras code that computes the feature map shown: one filter, no bias, no activation.

    Explicit padding becomes a ``ZeroPadding2D`` layer in front of the
    convolution (Keras convolutions take only 'valid' or 'same'). The code
    runs as is: ``model`` maps a (1, 28, 28, 1) batch to the feature map.
    """
    padding = spec.padding
    args = ["filters=1", f"kernel_size={spec.kernel_size[0]}"]
    layers = ["    keras.Input((28, 28, 1)),"]
    if isinstance(padding, str):
        args.append(f'padding="{padding}"')
    else:
        layers.append(f"    keras.layers.ZeroPadding2D(padding={_first_pad(spec)}),")
    if max(spec.strides) > 1:
        args.append(f"strides={spec.strides[0]}")
    if max(spec.dilation) > 1:
        args.append(f"dilation_rate={spec.dilation[0]}")
    args.append("use_bias=False")
    layers.append(f"    keras.layers.Conv2D({', '.join(args)}),")
    return "\n".join([
        "import keras", "",
        "model = keras.Sequential([", *layers, "])",
        "# the one filter is the vertical-edge kernel, as for the feature map below:",
        "# model.layers[-1].set_weights([edge_kernel.reshape(3, 3, 1, 1)])",
    ])


def _torch_code(resolved: ResolvedConv) -> str:
    """PyTorch code for the same feature map; uneven padding becomes a ``ZeroPad2d`` in front."""
    spec = resolved.spec
    pads = resolved.padding
    symmetric = all(lo == hi for lo, hi in pads) and len(set(pads)) == 1
    args = ["1", "1", f"kernel_size={spec.kernel_size[0]}"]
    if max(spec.strides) > 1:
        args.append(f"stride={spec.strides[0]}")
    if symmetric and pads[0][0]:
        args.append(f"padding={pads[0][0]}")
    if max(spec.dilation) > 1:
        args.append(f"dilation={spec.dilation[0]}")
    args.append("bias=False")
    layers = []
    if not symmetric:
        (top, bottom), (left, right) = pads
        layers.append(f"    torch.nn.ZeroPad2d(({left}, {right}, {top}, {bottom})),  "
                      "# uneven: PyTorch's own padding is symmetric")
    layers.append(f"    torch.nn.Conv2d({', '.join(args)}),")
    return "\n".join([
        "import torch", "",
        "model = torch.nn.Sequential(", *layers, ")",
        "# input (1, 1, 28, 28); the one filter is the vertical-edge kernel below",
    ])


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


def _tour_fps(frames: int) -> float:
    """About eight seconds a loop, never slower than one step a second."""
    return max(1.0, frames / 8.0)


def _scoped_svg(svg: str, key: str) -> str:
    """An animation's SVG made safe to inline beside others: its class and keyframe names
    get the figure's id in front (every SVG of convarith names them c0, s0_1, k0_1...)."""
    head, style, tail = re.split(r"</?style>", svg, maxsplit=2)
    style = re.sub(r"(^|[}\n])(\.[cs]\d|path\{)", rf"\1#{key} \2", style)
    style = style.replace("@keyframes k", f"@keyframes {key}k").replace("animation:k", f"animation:{key}k")
    return f"{head}<style>{style}</style>{tail}"


def _movie_figure(movie: Any, key: str, caption: str, alt: str, command: str, explorer: str,
                  half: bool = False) -> str:
    """An inline animation with its player (play/pause, step, speed) and where to try it."""
    # on a narrow screen the picture scrolls sideways rather than shrinking its labels below 3/4
    smallest = 0.75 * movie.scene.width
    svg = movie.to_svg().replace(
        "<svg ", f'<svg role="img" aria-label="{html.escape(alt)}" style="min-width:{smallest:.0f}px" ', 1)
    svg = re.sub(r"^<\?xml[^>]*>\s*", "", svg)
    return f"""<figure class="movie{' half' if half else ''}" id="{key}" data-frames="{len(movie)}"
      data-fps="{movie.fps:g}" tabindex="0" aria-label="animation: Space plays or pauses, arrows step">
    <div class="stage">{_scoped_svg(svg, key)}</div>
    <div class="player"><button type="button" data-act="play">pause</button>
      <button type="button" data-act="prev" aria-label="previous step">◀</button>
      <button type="button" data-act="next" aria-label="next step">▶</button>
      <label>speed <select data-act="speed"><option value="0.5">0.5×</option><option value="1" selected>1×</option>
        <option value="2">2×</option><option value="4">4×</option></select></label>
      <span class="where" aria-live="off">step 1 / {len(movie)}</span></div>
    <figcaption>{html.escape(caption)}</figcaption>
    <p class="try">Try it: <code>{html.escape(command)}</code> · or open
      <a href="{html.escape(explorer)}">this view in the explorer</a> (run <code>convarith serve</code> first)</p>
  </figure>"""


def _try_it(spec: ConvSpec, size: tuple[int, ...], view: str, out: str) -> tuple[str, str]:
    """The ``convarith animate`` command and the explorer link that show the same thing."""
    rank = len(size)
    flat = "x".join(map(str, size))
    padding = spec.padding if isinstance(spec.padding, str) else str(_first_pad(spec))
    parts = [f"convarith animate {flat}"]
    if rank == 1:
        parts.append("--rank 1")
    parts.append(f"-k {spec.kernel_size[0]}")
    if max(spec.strides) > 1:
        parts.append(f"-s {spec.strides[0]}")
    if max(spec.dilation) > 1:
        parts.append(f"-d {spec.dilation[0]}")
    parts.append(f"-p {padding}")
    if spec.transposed:
        parts.append("--transposed")
    if view != "oblique":
        parts.append(f"--view {view}")
    parts.append(f"-o {out}")
    axes = lambda value: "x".join([str(value)] * rank)  # noqa: E731
    query = (f"in={flat}&k={axes(spec.kernel_size[0])}&s={axes(spec.strides[0])}"
             f"&d={axes(spec.dilation[0])}")
    if isinstance(spec.padding, str):
        query += f"&p={spec.padding}"
    else:
        pad = _first_pad(spec)
        query += "&p=explicit&pads=" + "x".join([f"{pad},{pad}"] * rank)
    if spec.transposed:
        query += "&t=1"
    return " ".join(parts), f"{EXPLORER}?{query}"


#: Where ``convarith serve`` puts the explorer by default.
EXPLORER = "http://127.0.0.1:8000/"


def _section(tweak: Tweak, image: np.ndarray, image_uri: str) -> str:
    from .viz import animate

    spec = tweak.spec
    shown = tweak.animation_spec or spec
    frames = shown.resolve(tweak.animation_size).output_size
    movie = animate(shown, tweak.animation_size, view=tweak.view, values=tweak.values,
                    fps=_tour_fps(int(np.prod(frames))))
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
                     f"{html.escape(summary)}</summary><pre tabindex='0'><code>{html.escape(code)}</code></pre></details>")
    text = tweak.text or _formula_text(tweak)
    command, link = _try_it(shown, tweak.animation_size, tweak.view, f"{tweak.slug}.gif")
    figure = _movie_figure(movie, f"m-{tweak.slug}", caption, explanation.summary, command, link)
    scale = float(np.abs(feature).max()) or 1.0
    in_h, in_w = image.shape
    out_h, out_w = feature.shape
    return f"""
<section id="{tweak.slug}">
  <h2>{html.escape(tweak.title)} <span class="slide">{tweak.slides}</span></h2>
  <p>{text}</p>
  <div class="row">
    {figure}
    <div class="side">
      <h3>The arithmetic</h3>
      <pre class="math">{html.escape(explanation.text)}</pre>
      <h3>Keras <small>(the feature map below: one filter, the edge kernel)</small></h3>
      <pre tabindex="0"><code>{html.escape(_keras_code(spec))}</code></pre>
      <h3>PyTorch <small>(same picture)</small></h3>
      <pre tabindex="0"><code>{html.escape(_torch_code(resolved))}</code></pre>
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
      <figcaption>feature map <b>{out_h}×{out_w}</b></figcaption>
      {_colour_bar(scale)}</figure>
    <pre class="math small">{html.escape(on_picture.axes[0].steps[-1])}</pre>
  </div>
</section>"""


def _colour_bar(scale: float) -> str:
    """What the signed feature map's colours mean: blue negative, white 0, orange positive."""
    bar = _png_uri(_map_png(np.linspace(-scale, scale, 40)[None, :], signed=True))
    return (f'<div class="bar"><img src="{bar}" width="240" height="6" alt="colour scale from '
            f'{-scale:.3g} (blue) through 0 (white) to {scale:.3g} (orange)">'
            f'<span>{-scale:.3g}</span><span>0</span><span>+{scale:.3g}</span></div>')


def _first_pad(spec: ConvSpec) -> int:
    """The low-side padding of the first axis of an explicitly padded spec."""
    padding = spec.padding
    assert isinstance(padding, tuple)
    return int(padding[0][0])


def _spec_words(spec: ConvSpec) -> str:
    parts = [f"kernel {spec.kernel_size[0]}"]
    parts.append(f"padding {spec.padding if isinstance(spec.padding, str) else _first_pad(spec)}")
    if max(spec.strides) > 1:
        parts.append(f"stride {spec.strides[0]}")
    if max(spec.dilation) > 1:
        parts.append(f"dilation {spec.dilation[0]}")
    return ", ".join(parts)


def _formula_text(tweak: Tweak) -> str:
    stride = tweak.spec.strides[0]
    size = tweak.animation_size[0]
    k = tweak.spec.kernel_size[0]
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
  <div class="table-wrap" tabindex="0" role="region" aria-label="the formula on the lesson's examples"><table>
    <tr><th>I</th><th>K</th><th>P</th><th>S</th><th>right: floor((I − K + 2P) / S) + 1</th>
        <th>misprint: (I − K + 2P) / (S + 1)</th></tr>
    {rows}
  </table></div>
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
pre.formula { font-size: 1.4em; text-align: center; background: #e8f6f1; white-space: pre-wrap; }
.maps { display: flex; gap: 1.4em; align-items: center; flex-wrap: wrap; }
.maps figure { margin: 0; }
.maps img { image-rendering: pixelated; border: 1px solid #c9d3d9; }
.arrow { text-align: center; font-size: 1.6em; color: #5a6b75; }
.arrow small { font-size: .5em; }
.notes { font-size: .85em; color: #5a6b75; }
.wrong, s { color: #b34700; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { border: 1px solid #c9d3d9; padding: .25em .7em; text-align: center; }
details { margin-top: .5em; font-size: .9em; }
footer { color: #5a6b75; font-size: .85em; text-align: center; margin: 2em; }
a { color: #0a6aa8; }
.movie { overflow-x: auto; max-width: 100%; }
.movie svg { display: block; max-width: 100%; height: auto; }
.movie .player, .movie figcaption, .movie .try { position: sticky; left: 0; }
.movie figcaption, .movie .try { width: 0; min-width: 100%; }  /* the text wraps to the picture's width */
.movie:focus-visible { outline: 2px solid #56b4e9; outline-offset: 4px; }
.player { display: flex; gap: .4em; align-items: center; flex-wrap: wrap; margin: .3em 0; font-size: .9em; }
.player button, .player select, .quiz input, .quiz button { font: inherit; padding: .25em .7em; border-radius: 6px;
  border: 1px solid #9fb0ba; background: white; color: #1c2a33; min-height: 2.2em; }
.player .where { color: #5a6b75; }
.try { font-size: .85em; color: #5a6b75; margin: .3em 0; }
.bar { display: grid; grid-template-columns: repeat(3, 1fr); width: 240px; font-size: .75em; color: #5a6b75; }
.bar img { grid-column: 1 / 4; border: 1px solid #c9d3d9; }
.bar span:nth-child(3) { text-align: center; } .bar span:nth-child(4) { text-align: right; }
.table-wrap { overflow-x: auto; }
.quiz ol { padding-left: 1.4em; }
.quiz li { margin: .6em 0; }
.quiz input { width: 5em; }
.quiz .feedback { margin-left: .6em; }
.quiz .right { color: #00664d; font-weight: bold; }
.quiz .wrong-answer { color: #b34700; }
/* phones: one column, nothing wider than the screen, animations keep readable labels */
@media (max-width: 700px) {
  body { font-size: 15px; }
  header { padding: 1em 1em .8em; }
  header h1 { font-size: 1.5em; }
  main { padding: .5em .5em 2em; }
  section { padding: .8em .8em 1em; border-radius: 8px; }
  .side { min-width: 0; flex-basis: 100%; }
  .row { gap: 1em; }
  .movie, .movie.half { flex-basis: 100%; }
  .maps img { max-width: 100%; height: auto; }
  pre { font-size: .78em; }
}
@media (prefers-color-scheme: dark) {
  body { background: #121822; color: #e6ebf2; }
  section { background: #1b2230; box-shadow: none; }
  h2 { color: #bfe3f7; } h3 { color: #8fcbef; }
  pre { background: #232c3c; color: #e6ebf2; } pre.math { background: #2e2a1c; } pre.formula { background: #12302a; }
  figcaption, .slide, .try, .notes, .player .where, footer, h3 small, .bar { color: #a7b2c0; }
  a { color: #8fcbef; }
  .player button, .player select, .quiz input, .quiz button { background: #232c3c; color: #e6ebf2; }
  .quiz .right { color: #5cc7a8; }
}
"""

#: The players: play/pause, step, speed; paused from the start under prefers-reduced-motion.
#: Each animation's CSS keyframes are driven through the Web Animations API.
_PLAYER_JS = """
(() => {
  const still = matchMedia("(prefers-reduced-motion: reduce)").matches;
  for (const fig of document.querySelectorAll("figure.movie[data-frames]")) {
    const n = Number(fig.dataset.frames), fps = Number(fig.dataset.fps), period = 1000 * n / fps;
    const svg = fig.querySelector("svg"), where = fig.querySelector(".where");
    const play = fig.querySelector("[data-act=play]");
    const anims = () => svg.getAnimations({ subtree: true });
    let playing = !still, frame = 0;
    const current = () => {
      const a = anims()[0];
      return a && a.currentTime !== null ? Math.floor((a.currentTime % period) / period * n) : frame;
    };
    const label = () => { where.textContent = `step ${(playing ? current() : frame) + 1} / ${n}`; };
    const show = (f) => {
      frame = ((f % n) + n) % n;
      for (const a of anims()) { a.pause(); a.currentTime = (frame + 0.5) * period / n; }
      playing = false; play.textContent = "play"; label();
    };
    const start = () => {
      const at = (frame + 0.01) * period / n;
      for (const a of anims()) { a.currentTime = at; a.play(); }
      playing = true; play.textContent = "pause";
      const tick = () => { if (!playing) return; label(); requestAnimationFrame(tick); };
      tick();
    };
    const toggle = () => (playing ? show(current()) : start());
    play.addEventListener("click", toggle);
    fig.querySelector("[data-act=prev]").addEventListener("click", () => show((playing ? current() : frame) - 1));
    fig.querySelector("[data-act=next]").addEventListener("click", () => show((playing ? current() : frame) + 1));
    fig.querySelector("[data-act=speed]").addEventListener("change", (event) => {
      for (const a of anims()) a.playbackRate = Number(event.target.value);
    });
    fig.addEventListener("keydown", (event) => {
      if (event.target !== fig) return;
      if (event.key === " ") { event.preventDefault(); toggle(); }
      if (event.key === "ArrowRight") { event.preventDefault(); show((playing ? current() : frame) + 1); }
      if (event.key === "ArrowLeft") { event.preventDefault(); show((playing ? current() : frame) - 1); }
    });
    if (still) show(0); else label();
  }
  for (const item of document.querySelectorAll(".quiz li[data-answer]")) {
    const box = item.querySelector("input"), out = item.querySelector(".feedback");
    const check = () => {
      const text = box.value.trim();
      if (!text) { out.textContent = ""; return; }
      const right = text === item.dataset.answer;
      out.className = "feedback " + (right ? "right" : "wrong-answer");
      out.textContent = right ? "right: " + item.dataset.why : "not quite; try again (" + item.dataset.hint + ")";
    };
    box.addEventListener("input", check);
    item.querySelector("button").addEventListener("click", () => {
      out.className = "feedback"; out.textContent = item.dataset.answer + ": " + item.dataset.why;
    });
  }
})();
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
        for number, (caption, spec, size, view) in enumerate(figures):
            transposed_as = view if view in ("direct", "scatter") else "direct"
            count = int(np.prod(spec.resolve(size).output_size if view != "scatter" else size))
            movie = animate(spec, size, transposed_as=transposed_as, fps=_tour_fps(count))
            key = f"m-extra-{len(parts)}-{number}"
            command, link = _try_it(spec, size, view, f"{key[2:]}.gif")
            parts.append(_movie_figure(movie, key, caption, caption, command, link, half=True))
        parts.append("</div>")
    parts.append("</section>")
    return "".join(parts)


#: Exercises: (input, kernel, padding, stride, dilation), answered from convarith's arithmetic.
_EXERCISES = ((7, 3, 0, 1, 1), (7, 3, 1, 2, 1), (28, 5, 2, 2, 1), (10, 3, 0, 3, 1), (9, 3, 1, 1, 2),
              (32, 3, 1, 2, 1))


def _exercises() -> str:
    """Questions on the output size, checked in the page as the answer is typed (offline)."""
    items = []
    for size, k, pad, stride, dilation in _EXERCISES:
        spec = ConvSpec(k, padding=pad, strides=stride, dilation=dilation, rank=1)
        resolved = spec.resolve((size,))
        steps = explain(spec, (size,)).axes[0].steps
        why = steps[-1] if steps else ""
        question = (f"Input {size}, kernel {k}, padding {pad} on each side, stride {stride}"
                    + (f", dilation {dilation}" if dilation > 1 else "") + ": output size?")
        hint = "O = floor((I + 2P − K_eff) / S) + 1" + (", K_eff = K + (K − 1)(D − 1)" if dilation > 1 else "")
        if resolved.dropped[0]:
            why += f" ({resolved.dropped[0]} input cell{'s' if resolved.dropped[0] > 1 else ''} dropped)"
        items.append(
            f'<li data-answer="{resolved.output_size[0]}" data-why="{html.escape(why)}" '
            f'data-hint="{html.escape(hint)}"><label>{html.escape(question)} '
            f'<input type="text" inputmode="numeric" autocomplete="off"></label>'
            f'<button type="button">show</button><span class="feedback" aria-live="polite"></span></li>')
    return ('<section id="exercises"><div class="quiz"><h2>Check yourself</h2>'
            "<p>Type the output size; the page checks it at once (nothing leaves your browser). "
            "Each answer comes with its worked formula.</p><ol>" + "".join(items) + "</ol></div></section>")


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
        sections.append(_exercises())
        advance("rendered: beyond the lesson")
        advance("page assembled")
    nav = " ".join(
        f'<a href="#{t.slug}">{html.escape(t.slug.replace("-", " "))}</a>' for t in TWEAKS
    ) + ' <a href="#beyond">beyond the lesson</a> <a href="#exercises">check yourself</a>'
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
run on a picture. Blue: input; dashed: zero padding; pale red: input no window reads (dropped);
green: output; the dark window is what the kernel reads for the dark green output cell. Every
animation has a player (Space plays or pauses, arrows step) and the <code>convarith animate</code>
command that draws it; <code>convarith serve</code> opens the same views in the interactive
explorer.</p>
<nav>{nav}</nav></header>
<main>
{''.join(sections)}
</main>
<footer>Made by convarith {__version__} in {elapsed:.1f} s; works offline (every picture is inside
this file). Pictures in the style of Dumoulin &amp; Visin, "A guide to convolution arithmetic for
deep learning" (2016).</footer>
<script>{_PLAYER_JS}</script>
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
