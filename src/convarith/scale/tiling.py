"""Convolutions over arrays larger than memory, tiled with Dask.

The plan, per spatial axis, works in the coordinates of the *padded* input
(the grid the window slides over, ``lo + I + hi`` cells):

1. Pad the whole array once, at the true image border, with the spec's
   padding mode (``da.pad``: constant, reflect, edge, wrap). Pooling pads
   with a value no window can pick (``-inf`` for max) or, for an average,
   with zeros plus a mask channel that counts the cells the average divides
   by. Then keep only the cells some window reads: ``(O - 1) S + K_eff``,
   which drops the rows no window reaches.
2. Cut the outputs into blocks that end where the input's chunks end
   (shifted by the padding, rounded up to a multiple of the stride) and cut
   the padded input at ``n S`` cells for a block of ``n`` outputs: output cell
   ``o`` starts its window at ``o S``, so every block starts on a stride phase
   of its own and no output cell is computed twice or lost.
3. Each block needs ``K_eff - S`` extra cells from its right neighbour (the
   halo), which Dask's overlap machinery supplies (``map_overlap`` with a
   per-side depth ``(0, K_eff - S)``). The engine then runs a ``"valid"``
   convolution with the original strides and dilation on the haloed block,
   giving exactly ``n`` outputs.

Dask's overlap takes a halo from the next block only, so a block smaller than
the halo is merged with the next one, with a :class:`ChunkingWarning`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..arithmetic import window_reach
from ..spec import ConvSpec, ResolvedConv

if TYPE_CHECKING:  # pragma: no cover
    import dask.array

__all__ = ["conv", "plan_tiles", "AxisPlan", "ChunkingWarning"]

# numpy.pad's names for the spec's padding modes (reflect: mirror without the edge cell)
_NUMPY_PAD_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


class ChunkingWarning(UserWarning):
    """The array's chunks were changed to fit the convolution's halo."""


@dataclass(frozen=True)
class AxisPlan:
    """How one spatial axis is cut into blocks.

    Attributes
    ----------
    axis
        Spatial axis number (0 for the first spatial axis).
    pad
        ``(lo, hi)`` cells added to the input before tiling; ``hi`` may extend
        past the spec's padding (a ceil-mode pooling window) or be cut by the
        trim to ``padded_length``.
    padded_length
        Cells of the padded input that some window reads: ``(O - 1) S + K_eff``.
    input_chunks
        Chunks of the padded, trimmed input (``n S`` cells each, the last one
        ends with the last window).
    output_chunks
        Output cells per block.
    halo
        Cells each block borrows from its right neighbour: ``max(0, K_eff - S)``.
    """

    axis: int
    pad: tuple[int, int]
    padded_length: int
    input_chunks: tuple[int, ...]
    output_chunks: tuple[int, ...]
    halo: int


def _check_dask() -> Any:
    try:
        import dask.array as da
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "convarith.scale needs Dask: pip install 'convarith[scale]' (dask[array], distributed, zarr)"
        ) from error
    return da


def plan_tiles(
    resolved: ResolvedConv,
    chunks: Sequence[Sequence[int]],
    *,
    output_block: Sequence[int] | None = None,
    warn: bool = True,
) -> tuple[AxisPlan, ...]:
    """Cut each spatial axis into stride-aligned blocks with a right halo.

    Parameters
    ----------
    resolved
        The spec resolved against the full input.
    chunks
        The input's chunk sizes per spatial axis (Dask's ``chunks`` without the
        batch and channel axes). A block ends where an input chunk ends (rounded
        up to the stride phase), so blocks follow the input's chunking; blocks
        too small to lend a halo are merged with the next.
    output_block
        Output cells per block along each spatial axis (the last block takes the
        rest), for regular blocks (e.g. to match a Zarr store's chunks) instead
        of blocks that follow the input's chunks.
    warn
        Emit a :class:`ChunkingWarning` when chunks smaller than the halo are merged.

    Examples
    --------
    >>> r = ConvSpec(3, strides=2, padding="same", rank=1).resolve((10,))
    >>> p = plan_tiles(r, [(4, 4, 2)])[0]
    >>> p.output_chunks, p.input_chunks, p.halo, p.padded_length
    ((2, 2, 1), (4, 4, 3), 1, 11)
    """
    spec = resolved.spec
    plans = []
    for axis in range(resolved.rank):
        stride = spec.strides[axis]
        span = resolved.effective_kernel[axis]
        lo, hi = resolved.padding[axis]
        outputs = resolved.output_size[axis]
        padded_length = window_reach(outputs, spec.kernel_size[axis], stride,
                                     spec.dilation[axis])
        # a ceil-mode pooling window may reach past the padded input
        hi_needed = resolved.window_padding[axis][1]
        halo = max(0, span - stride)
        # a block ends where an input chunk ends (shifted by the padding, rounded up to the
        # stride phase), so that reading the blocks splits as few input chunks as possible
        if output_block is not None:
            candidates = list(range(output_block[axis], outputs, output_block[axis]))
        else:
            ends = np.cumsum([int(c) for c in chunks[axis]])[:-1]
            candidates = sorted({-(-(lo + int(end)) // stride) for end in ends} - {0})
        bounds = [0]
        merged = False
        for bound in candidates:
            if bound >= outputs:
                break
            if (bound - bounds[-1]) * stride >= halo:
                bounds.append(bound)
            else:
                merged = True  # this block could not lend its right neighbour a full halo
        bounds.append(outputs)
        if merged and warn:
            smallest = (output_block[axis] * stride if output_block is not None
                        else min(int(c) for c in chunks[axis]))
            warnings.warn(
                f"chunks along spatial axis {axis} (smallest {smallest} cells) are smaller than "
                f"the convolution's halo ({halo} cells: effective kernel {span} - stride {stride}); "
                f"merging them into blocks of at least {math.ceil(halo / stride) * stride} cells. "
                f"Rechunk the input to at least {halo} cells along this axis to avoid this.",
                ChunkingWarning,
                stacklevel=4,
            )
        output_chunks = tuple(b - a for a, b in zip(bounds, bounds[1:]))
        input_chunks = tuple(n * stride for n in output_chunks[:-1]) + (
            window_reach(output_chunks[-1], spec.kernel_size[axis], stride,
                         spec.dilation[axis]),
        )
        plans.append(
            AxisPlan(axis, (lo, hi_needed), padded_length, input_chunks, output_chunks, halo)
        )
    return tuple(plans)


def _engine_conv() -> Callable[..., np.ndarray]:
    from ..engine import conv as engine_conv

    return engine_conv


def _run_block(
    block: np.ndarray,
    *,
    kernel: np.ndarray | None,
    bias: np.ndarray | None,
    block_spec: ConvSpec,
    out_shape: tuple[int, ...],
    mask_channels: int,
) -> np.ndarray:
    """Run the engine on one haloed block (padding 'valid'); divide by the mask if any.

    One thread per block: Dask runs blocks side by side (a thread or a process
    per core), so the engine must not also start a thread per core for each.
    """
    from ..engine import thread_limit

    with thread_limit(1):
        result = _engine_conv()(block, kernel, block_spec, bias=bias)
    if mask_channels:
        values, counts = result[..., :-mask_channels], result[..., -mask_channels:]
        with np.errstate(invalid="ignore", divide="ignore"):  # 0/0 where only padding: as in memory
            result = values / counts
    if result.shape != out_shape:
        raise RuntimeError(
            f"a block of shape {block.shape} gave {result.shape}, expected {out_shape}: "
            "the tiling plan and the engine disagree"
        )
    return result


def conv(
    x: dask.array.Array,
    kernel: Any,
    spec: ConvSpec,
    bias: Any = None,
    *,
    output_block: int | Sequence[int] | None = None,
) -> dask.array.Array:
    """A convolution, transposed convolution or pooling of a Dask array, block by block.

    The result equals the in-memory engine's (:func:`convarith.engine.conv`)
    on the whole array; each block runs the engine on its haloed piece.

    Parameters
    ----------
    x
        Dask array laid out as ``spec.data_format`` says: ``(*spatial, C)`` or
        ``(N, *spatial, C)`` for channels_last (``(C, *spatial)`` or
        ``(N, C, *spatial)`` for channels_first), with any chunking. The channel
        axis is rechunked to one chunk; spatial axes to stride-aligned blocks
        that end where the input's chunks end (see :func:`plan_tiles`).
    kernel
        Keras layout ``(*kernel_size, C // groups, filters)`` (a NumPy array,
        small enough to ship to every block); ``(*kernel_size, filters // groups,
        C)`` for a transposed spec; ``None`` for pooling.
    spec
        Any direct convolution or pooling :class:`~convarith.ConvSpec`: strides,
        dilation, every padding word or explicit asymmetric padding, every
        padding mode (applied at the true image border), groups, max and
        average pooling, and transposed convolutions (tiled as the direct
        stride-1 convolution of the zero-inserted input, so they cost ``S^rank``
        times the engine's own phase algorithm).
    bias
        Optional ``(filters,)`` bias.
    output_block
        Output cells per block along each spatial axis (one int for all), for
        regular output chunks; by default blocks follow the input's chunks.

    Returns
    -------
    dask.array.Array
        Lazily computed output, same layout and batch presence as ``x``.

    Raises
    ------
    ValueError, TypeError
        At graph-building time, for a spec that does not fit ``x`` or a kernel
        whose shape does not match the spec and ``x``'s channels.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from convarith import ConvSpec
    >>> x = da.ones((10, 12, 1), dtype="float32", chunks=(4, 5, 1))
    >>> spec = ConvSpec(3, strides=2, padding="same")
    >>> y = conv(x, np.ones((3, 3, 1, 1), "float32"), spec)
    >>> y.shape, y.chunks[:2]
    ((5, 6, 1), ((2, 2, 1), (3, 2, 1)))
    >>> float(y[2, 2, 0].compute())
    9.0
    """
    da = _check_dask()
    if not isinstance(spec, ConvSpec):
        raise TypeError(f"spec must be a ConvSpec, got {type(spec).__name__}")
    if not isinstance(x, da.Array):
        raise TypeError(
            f"x must be a dask.array.Array, got {type(x).__name__}; wrap a NumPy array or "
            "memmap with dask.array.from_array(x, chunks=...)"
        )
    rank = spec.rank
    assert rank is not None
    if x.ndim not in (rank + 1, rank + 2):
        raise ValueError(
            f"x has shape {x.shape} ({x.ndim} axes) but a rank-{rank} spec needs {rank + 1} axes "
            f"(spatial and channels) or {rank + 2} (batch, spatial, channels), laid out "
            f"{spec.data_format}"
        )
    if any(math.isnan(c) for c in x.shape):
        raise ValueError(f"x has unknown chunk sizes {x.shape}; call x.compute_chunk_sizes() first")

    blocks = None
    if output_block is not None:
        from ..spec import per_axis

        blocks = per_axis("output_block", output_block, rank)
    channels_first = spec.data_format == "channels_first"
    batched = x.ndim == rank + 2
    if not batched:
        x = x[None]
    if channels_first:
        x = da.moveaxis(x, 1, -1)
        spec = spec.replace(data_format="channels_last")
    if spec.transposed:
        result = _conv_transpose_channels_last(da, x, kernel, spec, bias, blocks)
    else:
        if not isinstance(spec.padding, str):
            # negative padding crops (before any copies, PyTorch's order): crop here,
            # the tiles then see plain padding
            pads = spec.resolve(tuple(int(v) for v in x.shape)).padding
            if any(min(pair) < 0 for pair in pads):
                x = x[(slice(None),) + tuple(
                    slice(max(-lo, 0), int(n) - max(-hi, 0))
                    for n, (lo, hi) in zip(x.shape[1:-1], pads)) + (slice(None),)]
                spec = spec.replace(padding=tuple((max(lo, 0), max(hi, 0)) for lo, hi in pads))
        result = _conv_channels_last(da, x, kernel, spec, bias, blocks)
    if channels_first:
        result = da.moveaxis(result, -1, 1)
    return result if batched else result[0]


def _conv_channels_last(
    da: Any, x: Any, kernel: Any, spec: ConvSpec, bias: Any, blocks: tuple[int, ...] | None
) -> Any:
    """The work of :func:`conv` on a batched channels-last array."""
    resolved = spec.resolve(tuple(int(v) for v in x.shape))
    channels = int(x.shape[-1])
    kernel_array, bias_array = _check_weights(resolved, kernel, bias, channels, x.dtype)
    plans = plan_tiles(resolved, x.chunks[1:-1], output_block=blocks)

    pool = spec.pool
    pad_width = [(0, 0)] + [plan.pad for plan in plans] + [(0, 0)]
    mask_channels = 0
    if pool is None:
        padded = da.pad(x, pad_width, mode=_NUMPY_PAD_MODES[spec.padding_mode])
    elif pool == "max":
        padded = da.pad(x, pad_width, mode="constant", constant_values=_lowest(x.dtype))
    else:
        padded = da.pad(x, pad_width, mode="constant", constant_values=0)
        mask = _average_mask(da, x, resolved, plans)
        if mask is not None:
            padded = da.concatenate([padded, mask.astype(padded.dtype)], axis=-1)
            mask_channels = 1
    trim = (slice(None),) + tuple(slice(0, plan.padded_length) for plan in plans) + (slice(None),)
    padded = padded[trim].rechunk(
        (x.chunks[0],) + tuple(plan.input_chunks for plan in plans) + (padded.shape[-1],)
    )

    block_spec = spec.replace(padding="valid", padding_mode="zeros")
    if pool is not None:
        block_spec = block_spec.replace(ceil_mode=False, count_include_pad=False)
    out_channels, dtype = _probe(resolved, block_spec, kernel_array, bias_array, padded.dtype,
                                 int(padded.shape[-1]), mask_channels)
    depth: dict[int, Any] = {0: 0, len(plans) + 1: 0}
    for plan in plans:
        depth[plan.axis + 1] = (0, plan.halo)
    output_chunks = (x.chunks[0],) + tuple(plan.output_chunks for plan in plans) + ((out_channels,),)

    def run(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        location = block_info[None]["chunk-location"]
        out_shape = tuple(output_chunks[axis][i] for axis, i in enumerate(location))
        return _run_block(block, kernel=kernel_array, bias=bias_array, block_spec=block_spec,
                          out_shape=out_shape, mask_channels=mask_channels)

    return da.map_overlap(
        run, padded, depth=depth, boundary="none", trim=False, allow_rechunk=False,
        chunks=output_chunks, dtype=dtype, meta=np.empty((0,) * padded.ndim, dtype=dtype),
    )


def _conv_transpose_channels_last(
    da: Any, x: Any, kernel: Any, spec: ConvSpec, bias: Any, blocks: tuple[int, ...] | None
) -> Any:
    """A transposed convolution as the direct stride-1 one over the zero-inserted input.

    The zeros are inserted block by block (lazily), the resolved padding of the
    zero-inserted grid is applied (negative values crop), and the kernel is
    flipped with in/out channels swapped per group; then the direct tiling runs.
    """
    from ..engine.core import flip_swap

    resolved = spec.resolve(tuple(int(v) for v in x.shape))
    channels = int(x.shape[-1])
    groups = resolved.groups or 1
    if kernel is None:
        raise ValueError("kernel is required for a transposed convolution spec (it is None)")
    kernel_array = np.asarray(kernel)
    kernel_size = tuple(spec.kernel_size)
    if (kernel_array.ndim != len(kernel_size) + 2 or kernel_array.shape[:-2] != kernel_size
            or kernel_array.shape[-1] != channels):
        raise ValueError(
            f"kernel has shape {kernel_array.shape} but a transposed spec needs "
            f"{(*kernel_size, 'filters // groups', channels)} (Keras layout: kernel_size "
            f"{kernel_size}, {channels} input channels last)"
        )
    strides = tuple(spec.strides)
    grid = _zero_insert(da, x, strides)
    crop = (slice(None),) + tuple(
        slice(max(0, -lo), int(n) - max(0, -hi)) for (lo, hi), n in zip(resolved.padding, grid.shape[1:-1])
    ) + (slice(None),)
    direct = ConvSpec(
        kernel_size=kernel_size, strides=1, dilation=spec.dilation,
        padding=tuple((max(0, lo), max(0, hi)) for lo, hi in resolved.padding),
        groups=groups, rank=spec.rank,
    )
    return _conv_channels_last(da, grid[crop], flip_swap(kernel_array, groups), direct, bias, blocks)


def _zero_insert(da: Any, x: Any, strides: tuple[int, ...]) -> Any:
    """Lazily put ``S - 1`` zeros between neighbouring cells of each spatial axis."""
    if all(s == 1 for s in strides):
        return x
    spatial_chunks = []
    for chunks, stride in zip(x.chunks[1:-1], strides):
        spatial_chunks.append(tuple(c * stride for c in chunks[:-1]) + ((chunks[-1] - 1) * stride + 1,))
    chunks = (x.chunks[0], *spatial_chunks, x.chunks[-1])

    def insert(block: np.ndarray, block_info: Any = None) -> np.ndarray:
        location = block_info[None]["chunk-location"]
        shape = tuple(chunks[axis][i] for axis, i in enumerate(location))
        grid = np.zeros(shape, dtype=block.dtype)
        every_stride = tuple(slice(None, None, s) for s in strides)
        grid[(slice(None),) + every_stride + (slice(None),)] = block
        return grid

    return x.map_blocks(insert, chunks=chunks, dtype=x.dtype)


def _lowest(dtype: Any) -> Any:
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.floating):
        return -np.inf
    if np.issubdtype(dtype, np.integer):
        return np.iinfo(dtype).min
    raise TypeError(f"x must hold real numbers for max pooling, got dtype {dtype}")


def _average_mask(da: Any, x: Any, resolved: ResolvedConv, plans: Sequence[AxisPlan]) -> Any:
    """A ones/zeros channel over the padded grid: 1 where the average counts a cell.

    ``None`` when every window counts every cell it covers (no mask needed).
    """
    spec = resolved.spec
    ones_pad: list[tuple[int, int]] = []
    zeros_pad: list[tuple[int, int]] = []
    needs_mask = False
    for plan, size, (lo, hi) in zip(plans, resolved.input_size, resolved.padding):
        length = plan.padded_length
        if spec.count_include_pad:  # counted: the padded input [0, lo + I + hi)
            ones_pad.append((lo, hi))
            zeros_pad.append((0, plan.pad[1] - hi))
            needs_mask |= lo + size + hi < length
        else:  # counted: the input itself [lo, lo + I)
            ones_pad.append((0, 0))
            zeros_pad.append((lo, plan.pad[1]))
            needs_mask |= lo > 0 or lo + size < length
    if not needs_mask:
        return None
    mask = da.ones(x.shape[:-1] + (1,), dtype=x.dtype, chunks=x.chunks[:-1] + ((1,),))
    mask = da.pad(mask, [(0, 0)] + ones_pad + [(0, 0)], mode="constant", constant_values=1)
    return da.pad(mask, [(0, 0)] + zeros_pad + [(0, 0)], mode="constant", constant_values=0)


def _check_weights(
    resolved: ResolvedConv, kernel: Any, bias: Any, channels: int, dtype: Any
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Check kernel and bias shapes against the spec and the input's channels."""
    spec = resolved.spec
    if spec.pool is not None:
        if kernel is not None or bias is not None:
            raise ValueError(
                f"a {spec.pool} pooling spec takes no kernel or bias; pass kernel=None, got "
                f"kernel of type {type(kernel).__name__}"
            )
        return None, None
    if kernel is None:
        raise ValueError("kernel is required for a convolution spec (it is None)")
    kernel_array = np.asarray(kernel)
    groups = resolved.groups or 1
    expected = (*spec.kernel_size, channels // groups)
    if kernel_array.ndim != len(expected) + 1 or kernel_array.shape[:-1] != expected:
        raise ValueError(
            f"kernel has shape {kernel_array.shape} but the spec and input need "
            f"{(*expected, 'filters')} (Keras layout: kernel_size {spec.kernel_size}, "
            f"{channels} input channels / groups {groups} = {channels // groups})"
        )
    filters = kernel_array.shape[-1]
    if filters % groups:
        raise ValueError(
            f"kernel has {filters} filters (last axis), which must be divisible by groups={groups}"
        )
    if spec.filters is not None and filters != spec.filters:
        raise ValueError(f"kernel has {filters} filters but the spec says filters={spec.filters}")
    bias_array = None
    if bias is not None:
        bias_array = np.asarray(bias)
        if bias_array.shape != (filters,):
            raise ValueError(
                f"bias has shape {bias_array.shape}, expected ({filters},): one per filter"
            )
    return kernel_array, bias_array


def _probe(
    resolved: ResolvedConv,
    block_spec: ConvSpec,
    kernel: np.ndarray | None,
    bias: np.ndarray | None,
    dtype: Any,
    channels: int,
    mask_channels: int,
) -> tuple[int, np.dtype[Any]]:
    """Run the engine once on the smallest block: output channels and dtype, errors early."""
    window = (1, *resolved.effective_kernel, channels)
    ones = np.ones(window, dtype=dtype)
    probe = _engine_conv()(ones, kernel, block_spec, bias=bias)
    out_channels = probe.shape[-1] - mask_channels
    return out_channels, np.dtype(probe.dtype)
