"""``convarith.animate``: the animation of any convolution, and its stills.

Examples
--------
>>> from convarith import ConvSpec, animate
>>> movie = animate(ConvSpec(3, padding="same", strides=2), (5, 5))
>>> len(movie), movie.frames[4].index
(9, (1, 1))
>>> movie.to_svg()[:4]
'<svg'
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .._atomic import write_atomic
from ..explain import Explanation, explain
from ..limits import check_picture, current_limits
from ..spec import ConvSpec, ResolvedConv
from .frames import Frame, Storyboard, build_frames
from .render import RasterRenderer, png_bytes, scene_svg
from .scene import Scene, build_scene
from .stream import FPS_RANGE, FrameStream, sheet_size, write_apng, write_gif, write_sheet

__all__ = ["animate", "Animation", "Still", "FORMATS"]

#: File extensions :meth:`Animation.save` writes.
FORMATS = (".gif", ".apng", ".png", ".svg")
VIEWS = ("oblique", "flat", "direct", "scatter")


def default_view(rank: int) -> str:
    """The view a convolution of ``rank`` spatial axes is drawn in when none is asked for.

    1-D: ``"flat"`` (two rows of cells, easy to read); 2-D and 3-D: ``"oblique"``.

    >>> default_view(1), default_view(2)
    ('flat', 'oblique')
    """
    return "flat" if rank == 1 else "oblique"


def _default_fps(count: int) -> float:
    """One step a second for short animations; longer ones play faster (about 20 s a loop)."""
    return float(min(8.0, max(1.0, count / 20.0)))


@dataclass(frozen=True, eq=False)
class Animation:
    """An animation of a convolution: frames as data, and pictures of them.

    Build it with :func:`animate`. ``len(a)`` is the number of steps;
    ``a.frames`` the frame data; ``a.frame(i)`` a :class:`Still` of one step.
    GIF, APNG and sheets draw every ``every``-th step, one frame at a time.
    """

    storyboard: Storyboard
    explanation: Explanation
    view: str
    fps: float
    scale: float = 1.0
    scene: Scene = field(repr=False, default=None)  # type: ignore[assignment]
    every: int = 1

    def __len__(self) -> int:
        return len(self.storyboard.frames)

    @property
    def frames(self) -> tuple[Frame, ...]:
        return self.storyboard.frames

    @property
    def resolved(self) -> ResolvedConv:
        return self.storyboard.resolved

    @cached_property
    def _renderer(self) -> RasterRenderer:
        return RasterRenderer(self.scene, scale=self.scale)

    def image(self, step: int) -> Any:
        """Step ``step`` as a Pillow RGB image."""
        return self._renderer.frame(self._step(step))

    def images(self) -> list[Any]:
        """Every drawn frame as a Pillow RGB image, all held in memory (see :meth:`iter_images`)."""
        return list(self.iter_images())

    def iter_images(self) -> Any:
        """The drawn frames (every ``every``-th step) as Pillow RGB images, one at a time."""
        for canvas, _ in self._stream():
            yield canvas.copy()

    @property
    def steps(self) -> range:
        """The steps drawn in a GIF, APNG or sheet: every ``every``-th one."""
        return range(0, len(self), self.every)

    def _stream(self) -> FrameStream:
        return FrameStream(self._renderer, self.steps)

    def frame(self, step: int) -> Still:
        """One step, as a still picture (PNG / SVG, displays in Jupyter)."""
        return Still(self, self._step(step))

    def _step(self, step: int) -> int:
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
            raise TypeError(f"step must be an integer, got {step!r}")
        count = len(self)
        if not -count <= step < count:
            raise IndexError(f"step {step} is outside 0..{count - 1} ({count} frames)")
        return int(step) % count

    # ------------------------------------------------------------------ encodings

    def to_gif(self) -> bytes:
        buffer = io.BytesIO()
        write_gif(buffer, self._stream(), self.fps)
        return buffer.getvalue()

    def to_apng(self) -> bytes:
        buffer = io.BytesIO()
        write_apng(buffer, self._stream(), self.fps)
        return buffer.getvalue()

    def to_svg(self) -> str:
        """A self-contained animated SVG (CSS keyframes, no script)."""
        return scene_svg(self.scene, fps=self.fps, title=self.storyboard_title)

    def to_png(self, step: int | None = None, columns: int | None = None) -> bytes:
        """One step, or (``step=None``) a sheet of every step."""
        if step is not None:
            return png_bytes(self.image(step))
        buffer = io.BytesIO()
        self._write_sheet(buffer, columns)
        return buffer.getvalue()

    def _write_sheet(self, stream: Any, columns: int | None = None) -> None:
        count = len(self.steps)
        if columns is None:
            size = self.resolved.output_size if self.storyboard.mode == "direct" else self.resolved.input_size
            columns = size[-1] if size[-1] <= 8 and self.every == 1 else math.ceil(math.sqrt(count))
        frame_size = (max(1, round(self.scene.width * self.scale)), max(1, round(self.scene.height * self.scale)))
        check_picture(f"a sheet of {count} steps", *sheet_size(frame_size, count, columns),
                      "draw one step (--step N), every k-th step (--every K), or a smaller input")
        write_sheet(stream, self._stream(), columns)

    @property
    def storyboard_title(self) -> str:
        return self.explanation.summary

    def save(self, path: str | os.PathLike[str], force: bool = False, step: int | None = None) -> Path:
        """Write the animation; the format follows the extension.

        ``.gif`` and ``.apng``: animated; ``.svg``: animated SVG (a still
        with ``step``); ``.png``: one ``step``, or a sheet of every step.
        Refuses to overwrite unless ``force``; the file is written atomically.
        """
        target = Path(path)
        suffix = target.suffix.lower()
        if suffix not in FORMATS:
            raise ValueError(f"unknown picture format {target.suffix!r} for {str(target)!r}; use one of {FORMATS}")
        if suffix != ".png" and suffix != ".svg" and step is not None:
            raise ValueError(f"step applies to .png and .svg stills, not {suffix}")
        if suffix == ".svg" and step is None and self.every != 1:
            raise ValueError(f"an animated .svg shows every step; every={self.every} applies to .gif, "
                             ".apng and .png sheets (drop it, or give one step)")
        if step is not None:
            self._step(step)  # refuse a bad step before the file is opened
        data: bytes | str | Any
        if suffix == ".gif":
            data = lambda stream: write_gif(stream, self._stream(), self.fps)  # noqa: E731
        elif suffix == ".apng":
            data = lambda stream: write_apng(stream, self._stream(), self.fps)  # noqa: E731
        elif suffix == ".svg":
            data = self.to_svg() if step is None else self.frame(step).to_svg()
        elif step is not None:
            data = self.to_png(step)
        else:
            data = lambda stream: self._write_sheet(stream)  # noqa: E731
        return write_atomic(target, data, force=force)

    # ------------------------------------------------------------------ Jupyter

    def _repr_html_(self) -> str:
        encoded = base64.b64encode(self.to_gif()).decode("ascii")
        return f'<img src="data:image/gif;base64,{encoded}" alt="{self.storyboard_title}"/>'

    def _repr_svg_(self) -> str:
        return self.to_svg()

    def _repr_png_(self) -> bytes:
        return self.to_png(step=0)

    def __repr__(self) -> str:
        every = f", every={self.every}" if self.every != 1 else ""
        return (f"Animation({self.explanation.summary!r}, view={self.view!r}, "
                f"frames={len(self)}, fps={self.fps:g}{every})")


@dataclass(frozen=True)
class Still:
    """One step of an :class:`Animation`."""

    animation: Animation
    step: int

    @property
    def data(self) -> Frame:
        return self.animation.frames[self.step]

    def image(self) -> Any:
        return self.animation.image(self.step)

    def to_png(self) -> bytes:
        return self.animation.to_png(self.step)

    def to_svg(self) -> str:
        return scene_svg(self.animation.scene, frame=self.step, title=self.animation.storyboard_title)

    def save(self, path: str | os.PathLike[str], force: bool = False) -> Path:
        return self.animation.save(path, force=force, step=self.step)

    def _repr_png_(self) -> bytes:
        return self.to_png()

    def _repr_svg_(self) -> str:
        return self.to_svg()


def animate(
    spec: ConvSpec | ResolvedConv,
    input_shape: int | Sequence[int] | None = None,
    view: str | None = None,
    values: bool = False,
    *,
    transposed_as: str = "direct",
    show_gaps: bool | None = None,
    fps: float | None = None,
    scale: float = 1.0,
    input_values: Any = None,
    kernel_values: Any = None,
    every: int = 1,
) -> Animation:
    """Animate a convolution from its resolved geometry, in the classic look.

    Parameters
    ----------
    spec
        A :class:`ConvSpec` (then give ``input_shape``) or a resolved one.
    input_shape
        Spatial input size (as :meth:`ConvSpec.resolve` takes it).
    view
        ``"oblique"`` (input plane at an angle, output above it) or
        ``"flat"`` (top-down). The default (``None``) is the flat view for a
        1-D convolution (a slanted strip is hard to read) and the oblique
        view otherwise. ``"direct"`` and ``"scatter"`` are shortcuts for the
        default view with ``transposed_as`` set.
    values
        Write numbers in the cells: a small integer image and kernel, and the
        outputs computed by the engine.
    transposed_as
        A transposed convolution as ``"direct"`` (stride-1 window over the
        zero-inserted, padded input; one frame per output cell) or
        ``"scatter"`` (each input cell adds a kernel-sized patch to the
        output; one frame per input cell).
    show_gaps
        Outline the cells a dilated kernel skips (default: when dilated).
    fps
        Frames per second, in [0.01, 50] (default: 1, faster for long animations).
    scale
        Size factor of the raster pictures, in [0.1, 8]; the drawing (at 2x
        supersampling) must fit ``max_picture_pixels`` (:mod:`convarith.limits`).
    input_values, kernel_values
        Arrays to show instead of the sample numbers (imply ``values``).
    every
        GIF, APNG and sheets draw every ``every``-th step (default 1: all).
        The number of steps is capped by ``max_animation_frames`` (4096, a
        64x64 input; :mod:`convarith.limits`).

    Examples
    --------
    >>> from convarith import ConvSpec
    >>> a = animate(ConvSpec(3, dilation=2), (7, 7), view="flat")
    >>> len(a), a.frames[0].gaps[:2]
    (9, ((0, 1), (0, 3)))
    """
    if isinstance(spec, ResolvedConv):
        if input_shape is not None:
            raise ValueError("give input_shape with a ConvSpec, not with an already resolved spec")
        resolved = spec
    elif isinstance(spec, ConvSpec):
        if input_shape is None:
            raise TypeError("animate() needs input_shape with a ConvSpec, e.g. animate(spec, (5, 5))")
        resolved = spec.resolve(input_shape)
    else:
        raise TypeError(f"spec must be a ConvSpec or a ResolvedConv, got {type(spec).__name__}")
    if view is not None and view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS} or None (the default view), got {view!r}")
    if view in ("direct", "scatter"):
        transposed_as, view = view, None
    if view is None:
        view = default_view(len(resolved.input_size))
    if transposed_as not in ("direct", "scatter"):
        raise ValueError(f"transposed_as must be 'direct' or 'scatter', got {transposed_as!r}")
    if transposed_as == "scatter" and not resolved.spec.transposed:
        raise ValueError("the scatter view shows a transposed convolution; this spec is not transposed")
    low, high = FPS_RANGE
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float)) or not low <= fps <= high):
        raise ValueError(f"fps must be a number in [{low:g}, {high:g}] (frames per second), got {fps!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.1 <= scale <= 8:
        raise ValueError(f"scale must be a number in [0.1, 8], got {scale!r}")
    if isinstance(every, bool) or not isinstance(every, (int, np.integer)) or every < 1:
        raise ValueError(f"every must be a positive integer (draw every k-th step), got {every!r}")
    cells = math.prod(resolved.output_size if transposed_as == "direct" else resolved.input_size)
    cap = current_limits().max_animation_frames
    if cells > cap:
        raise ValueError(
            f"the animation would have {cells:,} steps (one per "
            f"{'output' if transposed_as == 'direct' else 'input'} cell), over the limit "
            f"max_animation_frames={cap:,}; animate a smaller input (the geometry is the same on a "
            "small one), or raise the limit with convarith.limits.limits(max_animation_frames=...)"
        )
    board = build_frames(resolved, mode=transposed_as, values=values,
                         input_values=input_values, kernel_values=kernel_values)
    explanation = explain(resolved.spec, resolved.input_size)
    scene = build_scene(board, explanation, view=view, show_gaps=show_gaps)
    supersampled = (2 * max(1, round(scene.width * scale)), 2 * max(1, round(scene.height * scale)))
    check_picture("the animation's drawing (2x supersampled)", *supersampled, f"use a smaller scale than {scale:g}")
    return Animation(board, explanation, view, float(fps) if fps is not None else _default_fps(len(board.frames)),
                     float(scale), scene, int(every))


def preview_input(spec: ConvSpec) -> tuple[int, ...]:
    """A small input that shows ``spec`` well: a few output cells, the padding visible.

    >>> preview_input(ConvSpec(3, strides=2, padding="same"))
    (5, 5)
    """
    rank = spec.rank or 2
    if spec.transposed:
        return (3,) * rank
    sizes = []
    for axis in range(rank):
        stride = spec.strides[axis]
        sizes.append(max(5, spec.effective_kernel[axis] + max(stride, 2)))
    return tuple(min(size, 12) for size in sizes)


def preview(spec: ConvSpec | ResolvedConv) -> Still:
    """One step of ``spec``'s animation, for Jupyter (small input when none or too big).

    >>> preview(ConvSpec(3, dilation=2)).animation.resolved.input_size
    (7, 7)
    """
    resolved = spec if isinstance(spec, ResolvedConv) else None
    if resolved is None or math.prod(resolved.output_size) > 144 or max(resolved.padded_size) > 40:
        base = spec.spec if isinstance(spec, ResolvedConv) else spec
        resolved = base.resolve(preview_input(base))
    movie = animate(resolved)
    return movie.frame(len(movie) // 2)
