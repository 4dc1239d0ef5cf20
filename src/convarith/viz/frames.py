"""Frames of a convolution animation, as plain data (no drawing).

:func:`build_frames` turns a resolved spec into a :class:`Storyboard`: the
two grids drawn (the grid the window slides over, and the output), what each
cell is (input, zero padding, a padding copy, an inserted zero...), and one
:class:`Frame` per step with the cells the window reads, the kernel tap at
each, the dilation gaps and the output cell(s) written. Every number comes
from the resolved spec's geometry (:meth:`ResolvedConv.footprint`,
:meth:`ResolvedConv.grid_cells`, :meth:`ResolvedConv.feeds`); the renderers
only draw it.

Two ways of showing a transposed convolution:

``"direct"``
    one frame per output cell: a stride-1 window over the zero-inserted,
    padded input (Dumoulin & Visin's pictures);
``"scatter"``
    one frame per input cell: the cell scatters a kernel-sized patch into the
    full output; cells outside the cropped output are marked ``"cropped"``.

Examples
--------
>>> from convarith import ConvSpec
>>> board = build_frames(ConvSpec(3, strides=2, padding="same").resolve((5, 5)))
>>> len(board.frames), board.grid_size, board.top_size
(9, (7, 7), (3, 3))
>>> board.frames[0].window[:3]
((0, 0), (0, 1), (0, 2))
>>> board.cell_kind((0, 0)), board.cell_kind((1, 1))
('padding', 'input')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from typing import Any

import numpy as np

from ..arithmetic import GRID_CELL_KINDS, transposed_output_size
from ..spec import ResolvedConv

__all__ = ["Frame", "Storyboard", "GridCell", "build_frames", "sample_values", "CELL_KINDS"]

Index = tuple[int, ...]

#: What a cell of a drawn grid is: the lower grid's cells are classified once, by
#: :meth:`ResolvedConv.grid_cells` (:data:`~convarith.arithmetic.GRID_CELL_KINDS`:
#: input, dropped, skipped, padding, copy, inserted, beyond); an output cell is
#: ``"input"``, and in the scatter view a full-output cell cropped away by the
#: padding is ``"cropped"``.
CELL_KINDS = (*GRID_CELL_KINDS, "cropped")


@dataclass(frozen=True)
class GridCell:
    """One cell of a drawn grid: its position, what it is, whose value it holds."""

    position: Index
    kind: str
    source: Index | None


@dataclass(frozen=True)
class Frame:
    """One step of the animation.

    Attributes
    ----------
    step
        Frame number, from 0.
    index
        The output cell computed (direct) or the input cell scattered (scatter).
    window
        Lower-grid positions highlighted: the footprint (direct) or the one
        input cell (scatter).
    kernel
        Kernel tap at each ``window`` cell (direct); empty for scatter.
    sources
        Input cell whose value each ``window`` cell reads, ``None`` for a zero.
    gaps
        Lower-grid positions inside the window's bounding box that it skips
        (dilation gaps).
    targets
        Top-grid positions written: the output cell, or the scattered patch.
    target_kernel
        Scatter: the kernel tap that lands on each target.
    target_values
        With values: the value of each target after this step (the finished
        output cell, or the running sums of the scatter).
    """

    step: int
    index: Index
    window: tuple[Index, ...]
    kernel: tuple[Index, ...]
    sources: tuple[Index | None, ...]
    gaps: tuple[Index, ...]
    targets: tuple[Index, ...]
    target_kernel: tuple[Index, ...] = ()
    target_values: tuple[float, ...] = ()

    @property
    def window_box(self) -> tuple[Index, Index]:
        """(first, last) corner of the window's bounding box, inclusive."""
        return _box(self.window)


@dataclass(frozen=True)
class Storyboard:
    """Everything a renderer needs: both grids, their cells, the frames.

    ``grid_*`` is the lower grid (what the window slides over: the padded
    input, or for scatter the input itself); ``top_*`` the upper grid (the
    output, or for scatter the full output before cropping).
    """

    resolved: ResolvedConv
    mode: str
    grid_size: Index
    grid_cells: tuple[GridCell, ...]
    top_size: Index
    top_cells: tuple[GridCell, ...]
    top_offset: Index
    frames: tuple[Frame, ...]
    input_values: Mapping[Index, float] | None = None
    kernel_values: Mapping[Index, float] | None = None
    output_values: Mapping[Index, float] | None = None
    _kinds: dict[Index, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._kinds.update({cell.position: cell.kind for cell in self.grid_cells})

    @property
    def rank(self) -> int:
        return self.resolved.rank

    def cell_kind(self, position: Sequence[int]) -> str:
        """Kind of a lower-grid cell (see :data:`CELL_KINDS`)."""
        return self._kinds[tuple(position)]

    def top_position(self, output_index: Sequence[int]) -> Index:
        """Top-grid position of an output cell."""
        return tuple(i + o for i, o in zip(output_index, self.top_offset))


def _box(cells: Sequence[Index]) -> tuple[Index, Index]:
    first = tuple(min(c[a] for c in cells) for a in range(len(cells[0])))
    last = tuple(max(c[a] for c in cells) for a in range(len(cells[0])))
    return first, last


def _combine_kinds(kinds: Sequence[str]) -> str:
    for kind in ("beyond", "cropped", "padding", "inserted", "copy", "dropped", "skipped"):
        if kind in kinds:
            return kind
    return "input"


def _grid(per_axis: Sequence[Sequence[tuple[str, int | None]]]) -> tuple[GridCell, ...]:
    cells = []
    for combo in product(*[list(enumerate(axis)) for axis in per_axis]):
        position = tuple(p for p, _ in combo)
        kinds = [k for _, (k, _) in combo]
        sources = [s for _, (_, s) in combo]
        source = None if any(s is None for s in sources) else tuple(int(s) for s in sources)  # type: ignore[arg-type]
        cells.append(GridCell(position, _combine_kinds(kinds), source))
    return tuple(cells)


def build_frames(
    resolved: ResolvedConv,
    mode: str = "direct",
    values: bool = False,
    input_values: np.ndarray | None = None,
    kernel_values: np.ndarray | None = None,
) -> Storyboard:
    """The frames of ``resolved``'s animation.

    Parameters
    ----------
    resolved
        A resolved spec (``spec.resolve(input_shape)``).
    mode
        ``"direct"`` (one frame per output cell) or, for a transposed
        convolution, ``"scatter"`` (one frame per input cell).
    values
        Attach cell values: a small integer image and kernel (or the arrays
        given), and the outputs computed by the engine.
    input_values, kernel_values
        Spatial arrays to use instead of the sample ones (implies ``values``).

    >>> from convarith import ConvSpec
    >>> board = build_frames(ConvSpec(2, transposed=True).resolve(2), mode="scatter")
    >>> [f.targets for f in board.frames][:2]
    [((0, 0), (0, 1), (1, 0), (1, 1)), ((0, 1), (0, 2), (1, 1), (1, 2))]
    """
    if mode not in ("direct", "scatter"):
        raise ValueError(f"mode must be 'direct' or 'scatter', got {mode!r}")
    if mode == "scatter" and not resolved.spec.transposed:
        raise ValueError(
            "mode='scatter' shows a transposed convolution as each input cell scattering a patch; "
            "this spec is not transposed (use mode='direct')"
        )
    values = values or input_values is not None or kernel_values is not None
    x = w = y = None
    if values:
        x, w = sample_values(resolved, input_values, kernel_values)
        y = compute_output(resolved, x, w)
    if mode == "scatter":
        return _scatter_board(resolved, x, w, y)
    return _direct_board(resolved, x, w, y)


def _direct_board(
    resolved: ResolvedConv, x: np.ndarray | None, w: np.ndarray | None, y: np.ndarray | None
) -> Storyboard:
    rank = resolved.rank
    # The grid is the padded input, and for ceil-mode pooling whatever the last
    # window reaches beyond it.
    extent = tuple(n + e for n, e in zip(resolved.padded_size, resolved.overhang))
    grid_cells = _grid([resolved.grid_cells(a, extent[a]) for a in range(rank)])
    top_cells = tuple(GridCell(p, "input", p) for p in product(*[range(n) for n in resolved.output_size]))
    frames = []
    for step, out_index in enumerate(resolved.positions()):
        taps = resolved.footprint(out_index)
        window = tuple(t.position for t in taps)
        first, last = _box(window)
        tapped = set(window)
        gaps = tuple(
            p for p in product(*[range(a, b + 1) for a, b in zip(first, last)]) if p not in tapped
        )
        frames.append(
            Frame(
                step=step,
                index=out_index,
                window=window,
                kernel=tuple(t.kernel for t in taps),
                sources=tuple(t.source for t in taps),
                gaps=gaps,
                targets=(out_index,),
                target_values=(float(y[out_index]),) if y is not None else (),
            )
        )
    return Storyboard(
        resolved=resolved,
        mode="direct",
        grid_size=extent,
        grid_cells=grid_cells,
        top_size=resolved.output_size,
        top_cells=top_cells,
        top_offset=(0,) * rank,
        frames=tuple(frames),
        **_value_maps(x, w, y),
    )


def _scatter_board(
    resolved: ResolvedConv, x: np.ndarray | None, w: np.ndarray | None, y: np.ndarray | None
) -> Storyboard:
    spec = resolved.spec
    rank = resolved.rank
    kernel, strides, dilation = spec.kernel_size, spec.strides, spec.dilation
    assert isinstance(kernel, tuple) and isinstance(strides, tuple) and isinstance(dilation, tuple)
    # Full-output position q of output index o is o + crop_lo; the full output
    # spans 0 .. (I-1)S + K_eff - 1, the output crop_lo .. crop_lo + O - 1.
    full = [transposed_output_size(resolved.input_size[a], kernel[a], strides[a], dilation[a])
            for a in range(rank)]
    crop_lo = [resolved.crop[a][0] for a in range(rank)]
    start = [min(0, crop_lo[a]) for a in range(rank)]
    stop = [max(full[a], crop_lo[a] + resolved.output_size[a]) for a in range(rank)]
    top_size = tuple(b - a for a, b in zip(start, stop))
    offset = tuple(crop_lo[a] - start[a] for a in range(rank))  # top position of output index 0
    top_cells = []
    for position in product(*[range(n) for n in top_size]):
        out = tuple(p - o for p, o in zip(position, offset))
        inside = all(0 <= i < n for i, n in zip(out, resolved.output_size))
        top_cells.append(GridCell(position, "input" if inside else "cropped", out if inside else None))
    grid_cells = tuple(
        GridCell(p, "input", p) for p in product(*[range(n) for n in resolved.input_size])
    )
    running: dict[Index, float] = {}
    frames = []
    for step, in_index in enumerate(product(*[range(n) for n in resolved.input_size])):
        targets = []
        taps = []
        patch_values = []
        for k in product(*[range(n) for n in kernel]):
            q = tuple(in_index[a] * strides[a] + k[a] * dilation[a] for a in range(rank))
            position = tuple(q[a] - start[a] for a in range(rank))
            targets.append(position)
            taps.append(k)
            if x is not None and w is not None:
                running[position] = running.get(position, 0.0) + float(x[in_index] * w[k])
                patch_values.append(running[position])
        frames.append(
            Frame(
                step=step,
                index=in_index,
                window=(in_index,),
                kernel=(),
                sources=(in_index,),
                gaps=(),
                targets=tuple(targets),
                target_kernel=tuple(taps),
                target_values=tuple(patch_values),
            )
        )
    return Storyboard(
        resolved=resolved,
        mode="scatter",
        grid_size=resolved.input_size,
        grid_cells=grid_cells,
        top_size=top_size,
        top_cells=tuple(top_cells),
        top_offset=offset,
        frames=tuple(frames),
        **_value_maps(x, w, y),
    )


def _value_maps(x: np.ndarray | None, w: np.ndarray | None, y: np.ndarray | None) -> dict[str, Any]:
    def as_map(array: np.ndarray | None) -> dict[Index, float] | None:
        if array is None:
            return None
        return {tuple(int(i) for i in index): float(v) for index, v in np.ndenumerate(array)}

    return {"input_values": as_map(x), "kernel_values": as_map(w), "output_values": as_map(y)}


def sample_values(
    resolved: ResolvedConv,
    input_values: np.ndarray | None = None,
    kernel_values: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A small integer image (0-3) and kernel (0-2), fixed, or the arrays given, checked.

    >>> from convarith import ConvSpec
    >>> x, w = sample_values(ConvSpec(3).resolve(5))
    >>> x.shape, w.shape, int(x.max()) <= 3, int(w.max()) <= 2
    ((5, 5), (3, 3), True, True)
    """
    kernel = tuple(resolved.spec.kernel_size)
    generator = np.random.default_rng(2016)
    if input_values is None:
        x = generator.integers(0, 4, size=resolved.input_size).astype(np.float64)
    else:
        x = np.asarray(input_values, dtype=np.float64)
        if x.shape != resolved.input_size:
            raise ValueError(
                f"input_values must have the spatial input shape {resolved.input_size}, got {x.shape}"
            )
    if kernel_values is None:
        w = generator.integers(0, 3, size=kernel).astype(np.float64)
    else:
        w = np.asarray(kernel_values, dtype=np.float64)
        if w.shape != kernel:
            raise ValueError(f"kernel_values must have the kernel shape {kernel}, got {w.shape}")
    return x, w


def compute_output(resolved: ResolvedConv, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Output values for one channel: the engine when it is available, else a footprint loop.

    >>> from convarith import ConvSpec
    >>> r = ConvSpec(2).resolve(3)
    >>> compute_output(r, np.arange(9.0).reshape(3, 3), np.ones((2, 2)))
    array([[ 8., 12.],
           [20., 24.]])
    """
    engine = _engine_output(resolved, x, w)
    if engine is not None:
        return engine
    return footprint_output(resolved, x, w)


def footprint_output(resolved: ResolvedConv, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The slow, obviously-right loop over output cells and their footprints."""
    spec = resolved.spec
    y = np.zeros(resolved.output_size)
    for out_index in resolved.positions():
        taps = resolved.footprint(out_index)
        read = [x[t.source] for t in taps if t.source is not None]
        if spec.pool == "max":
            y[out_index] = max(read)
        elif spec.pool == "avg":
            if spec.count_include_pad:
                count = sum(1 for t in taps if t.source is not None or _inside_padded(resolved, t.position))
            else:
                count = len(read)
            y[out_index] = sum(read) / count
        else:
            y[out_index] = sum(x[t.source] * w[t.kernel] for t in taps if t.source is not None)
    return y


def _inside_padded(resolved: ResolvedConv, position: Index) -> bool:
    return all(p < n for p, n in zip(position, resolved.padded_size))


def _engine_output(resolved: ResolvedConv, x: np.ndarray, w: np.ndarray) -> np.ndarray | None:
    """Run the engine on one channel, or ``None`` if it is not there (or not for this spec)."""
    spec = resolved.spec
    if spec.groups not in (1, "depthwise"):
        return None
    try:
        import convarith

        conv = getattr(convarith, "conv", None)
    except ImportError:  # pragma: no cover
        return None
    if conv is None:
        return None
    changes: dict[str, Any] = dict(filters=None, in_channels=None, depth_multiplier=None,
                                   data_format="channels_last")
    if spec.pool is None:
        changes["groups"] = 1
    one = spec.replace(**changes)
    try:
        # channels_last: x (N, *spatial, C), kernel (*k, C_in, C_out)
        kernel = None if spec.pool is not None else w[..., None, None]
        result = conv(x[None, ..., None], kernel, one)
    except (TypeError, ValueError, NotImplementedError):
        return None
    result = np.asarray(result, dtype=np.float64)
    if result.shape != (1, *resolved.output_size, 1):
        return None
    return result[0, ..., 0]
