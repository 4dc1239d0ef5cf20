"""Winograd F(m×m, 3×3) for 2-D 3×3 convolutions with stride 1 (any dilation).

A 3×3 convolution producing an ``m×m`` tile of output from an ``a×a`` tile of
input (``a = m + 2``) costs ``9 m²`` multiplies per channel pair done directly,
but only ``a²`` in the Winograd domain::

    Y = Aᵀ [ (G k Gᵀ) ⊙ (Bᵀ d B) ] A

Summed over input channels, the ``⊙`` becomes ``a²`` independent matrix
products ``(tiles × C) @ (C × F)``, which BLAS runs at full speed. F(4×4, 3×3)
does 36 products where the direct method does 144 (4× fewer FLOPs); F(2×2, 3×3)
does 16 where it does 36 (2.25×).

Dilation ``D`` costs nothing extra: the output cells ``(p + D·i, q + D·j)`` of
one phase ``(p, q)`` form an undilated 3×3 convolution of the input cells
``(p + D·i, q + D·j)``, so tiles are cut on that sub-grid.

Accuracy. The transforms use the interpolation points 0, ±1, ±2, ∞ and the
output transform's ±8 coefficients amplify the float32 rounding of the
transformed input and kernel. Measured relative error ``‖y − y₆₄‖/‖y₆₄‖`` on
random normal data, against 1.5e-7–3.5e-7 for plain float32 GEMMs:

=========  ==============  ==============
channels   F(2×2, 3×3)     F(4×4, 3×3)
=========  ==============  ==============
64         2.6e-7          1.7e-6
256        4.9e-7          3.2e-6
1024       5.7e-7          6.2e-6
=========  ==============  ==============

F(4×4, 3×3)'s error grows with the channel count, so float32 layers with
more than :data:`F4_MAX_CHANNELS` input channels use F(2×2, 3×3): both stay
inside the 1e-5 conformance bound with margin. Doing the transforms in
float64 does not help (measured: the rounding of the transformed tiles to
float32 for the GEMM dominates); the kernel transform is done in float64
anyway. float64 layers always use F(4×4, 3×3) (error ~1e-15).

Compiled transforms use numba when it is installed (:mod:`._winograd_numba`).
Calls with many tiles cut them into chunks of about a core's L2 cache, and one
thread per core transforms a chunk, runs its ``a²`` products (the register-tiled
kernels, or single-threaded BLAS) and transforms back (see :mod:`._threads`).
Calls with few tiles (small images and batches, :func:`use_shared_tiles`)
transform the tiles once, shared, and the threads split the output channels:
each transforms its block of the kernel, multiplies and transforms back while
that block is in its cache, so the whole transformed kernel (4× the kernel) is
never made and the input transform is never repeated. Without numba the same
transforms run as NumPy tensor contractions on chunks of whole images (slower,
same numbers).

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> xp = rng.standard_normal((1, 10, 10, 4))
>>> k = rng.standard_normal((3, 3, 4, 5))
>>> y = direct(xp, k, (1, 1), (1, 1), 1, (8, 8))
>>> ref = sum(np.einsum("nhwc,cf->nhwf", xp[:, i:i + 8, j:j + 8], k[i, j])
...           for i in range(3) for j in range(3))
>>> bool(np.allclose(y, ref))
True
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from .. import gradient_costs
from ..dispatch import ConvProblem, Requirements, register_algorithm
from ..padding import pad
from ..state import cached_once
from . import _llvm, prepacked, register_tiles
from ._threads import (
    SMALL_WORK,
    SMALL_WORK_NO_BLAS,
    aligned_empty,
    parallel_penalty,
    run_chunks,
    run_native_table,
    worker_count,
    workspace,
)

__all__ = ["WinogradTransform", "transform", "direct", "weight_grad", "applies", "cost",
           "F4_MAX_CHANNELS", "CHUNK_BYTES", "GRAD_MIN_TILES_PER_CHANNEL"]

#: Transformed tiles (input and product) per chunk, in bytes: about a core's L2
#: (measured on 2 MiB-L2 cores: L1 3.3 ms with 2 MiB against 3.5 with 1 MiB; L3 3.6 vs 4.0).
CHUNK_BYTES = 2 << 20

#: Transformed input and gradient tiles per step of the weight gradient, in bytes
#: (its products are (C × tiles) @ (tiles × F): longer sums than the forward's).
GRAD_CHUNK_BYTES = 4 << 20

#: Above this many float32 input channels, F(2×2, 3×3) replaces F(4×4, 3×3) (accuracy).
F4_MAX_CHANNELS = 256


@dataclass(frozen=True)
class WinogradTransform:
    """The matrices of F(m, r): ``BT`` (a×a), ``G`` (a×r), ``AT`` (m×a)."""

    m: int
    BT: np.ndarray
    G: np.ndarray
    AT: np.ndarray

    @property
    def tile(self) -> int:
        """Input tile size ``a = m + r - 1``."""
        return int(self.BT.shape[0])


@functools.cache
def transform(m: int) -> WinogradTransform:
    """F(m, 3) for ``m`` in (2, 4) (Lavin & Gray, 2016).

    >>> transform(4).tile
    6
    """
    if m == 2:
        bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
        g = [[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]
        at = [[1, 1, 1, 0], [0, 1, -1, -1]]
    elif m == 4:
        bt = [
            [4, 0, -5, 0, 1, 0],
            [0, -4, -4, 1, 1, 0],
            [0, 4, -4, -1, 1, 0],
            [0, -2, -1, 2, 1, 0],
            [0, 2, -1, -2, 1, 0],
            [0, 4, 0, -5, 0, 1],
        ]
        g = [
            [1 / 4, 0, 0],
            [-1 / 6, -1 / 6, -1 / 6],
            [-1 / 6, 1 / 6, -1 / 6],
            [1 / 24, 1 / 12, 1 / 6],
            [1 / 24, -1 / 12, 1 / 6],
            [0, 0, 1],
        ]
        at = [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]
    else:
        raise ValueError(f"m must be 2 or 4 (F(2x2,3x3) or F(4x4,3x3)), got {m!r}")
    return WinogradTransform(m, np.array(bt, float), np.array(g, float), np.array(at, float))


# --------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class _Tiling:
    """How the output of one image is cut into tiles: per axis, dilation phases × tiles."""

    m: int
    dilation: tuple[int, int]
    tiles: tuple[int, int]  # tiles per phase along each axis

    @property
    def per_image(self) -> int:
        return self.dilation[0] * self.dilation[1] * self.tiles[0] * self.tiles[1]


def _tiling(m: int, dilation: tuple[int, int], out_size: tuple[int, int]) -> _Tiling:
    tiles = tuple(math.ceil(math.ceil(o / d) / m) for o, d in zip(out_size, dilation))
    return _Tiling(m, (dilation[0], dilation[1]), (tiles[0], tiles[1]))


# --------------------------------------------------------------------------- numba kernels


@cached_once
def _numba_kernels() -> tuple[Callable[..., None], ...] | None:
    """The compiled input and output transforms, or ``None`` without numba."""
    try:
        from . import _winograd_numba as loops
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None
    if not loops.AVAILABLE:  # pragma: no cover - exercised by the numba-less test
        return None
    return (loops.input_transform, loops.output_transform, loops.kernel_transform,
            loops.input_transform_f4, loops.output_transform_f4, loops.gradient_transform_f4,
            loops.kernel_transform_rows, loops.kernel_transform_rows)


# --------------------------------------------------------------------------- NumPy transforms


def _phase_tiles(xp: np.ndarray, tiling: _Tiling, a: int) -> np.ndarray:
    """Input tiles ``(N, d0, d1, th, tw, a, a, C)``, zero beyond the input."""
    n, hp, wp, c = xp.shape
    (d0, d1), (th, tw), m = tiling.dilation, tiling.tiles, tiling.m
    need = (d0 * (th * m + 2), d1 * (tw * m + 2))
    grown = np.zeros((n, max(need[0], hp), max(need[1], wp), c), xp.dtype)
    grown[:, :hp, :wp] = xp
    tiles = np.empty((n, d0, d1, th, tw, a, a, c), xp.dtype)
    for p0 in range(d0):
        for p1 in range(d1):
            phase = grown[:, p0::d0, p1::d1]
            s = phase.strides
            view = np.lib.stride_tricks.as_strided(
                phase,
                shape=(n, th, tw, a, a, c),
                strides=(s[0], s[1] * m, s[2] * m, s[1], s[2], s[3]),
                writeable=False,
            )
            tiles[:, p0, p1] = view
    return tiles


def _numpy_input_transform(xp: np.ndarray, bt: np.ndarray, tiling: _Tiling) -> np.ndarray:
    a = bt.shape[0]
    tiles = _phase_tiles(xp, tiling, a)  # (N, d0, d1, th, tw, a, a, C)
    bt = bt.astype(xp.dtype)
    v = np.einsum("ui,...ijc,wj->uw...c", bt, tiles, bt, optimize=True)
    return np.ascontiguousarray(v).reshape(a * a, -1, xp.shape[-1])


def _numpy_output_transform(
    prod: np.ndarray, at: np.ndarray, tiling: _Tiling, y: np.ndarray
) -> None:
    m, a = at.shape
    (d0, d1), (th, tw) = tiling.dilation, tiling.tiles
    n, ho, wo, f = y.shape
    prod = prod.reshape(a, a, n, d0, d1, th, tw, f)
    at = at.astype(y.dtype)
    out = np.einsum("ui,ij...f,wj->...uwf", at, prod, at, optimize=True)
    # out: (N, d0, d1, th, tw, m, m, F) -> per phase (N, th*m, tw*m, F)
    for p0 in range(d0):
        for p1 in range(d1):
            block = out[:, p0, p1].transpose(0, 1, 3, 2, 4, 5).reshape(n, th * m, tw * m, f)
            target = y[:, p0::d0, p1::d1]
            target[...] = block[:, : target.shape[1], : target.shape[2]]


def _combine(terms: list[np.ndarray], coefficients: np.ndarray, out: np.ndarray) -> None:
    """``out = Σ coefficients[j] · terms[j]`` in place, skipping zeros (``±1`` cost one pass)."""
    first = True
    for coefficient, term in zip(coefficients.tolist(), terms):
        if coefficient == 0:
            continue
        if first:
            if coefficient == 1:
                np.copyto(out, term)
            else:
                np.multiply(term, out.dtype.type(coefficient), out=out)
            first = False
        elif coefficient == 1:
            np.add(out, term, out=out)
        elif coefficient == -1:
            np.subtract(out, term, out=out)
        else:
            out += out.dtype.type(coefficient) * term
    if first:
        out[...] = 0


def _numpy_tiles_direct(xp: np.ndarray, u: np.ndarray, wt: WinogradTransform,
                        out_size: tuple[int, int], y: np.ndarray, chunk_bytes: int) -> None:
    """Winograd without compiled loops and without dilation: each transform is a few
    whole-array passes (one per non-zero matrix entry) over strided views of the
    channels-last input, one axis at a time, for a block of tile rows of every image;
    then one batched product ``(a², tiles, C) @ (a², C, F)``. The blocks keep the
    transformed tiles within ``chunk_bytes``."""
    m, a = wt.m, wt.tile
    n, hp, wp, c = xp.shape
    f = u.shape[-1]
    th, tw = -(-out_size[0] // m), -(-out_size[1] // m)
    need = (th * m + a - m, tw * m + a - m)
    if hp < need[0] or wp < need[1]:  # the last tiles read past the input: zeros there
        grown = np.zeros((n, max(hp, need[0]), max(wp, need[1]), c), xp.dtype)
        grown[:, :hp, :wp] = xp
        xp = grown
    bt, at = wt.BT.astype(xp.dtype), wt.AT.astype(xp.dtype)
    per_row = a * a * n * tw * (c + f) * xp.dtype.itemsize
    rows = max(1, min(th, chunk_bytes // max(1, per_row)))
    width = need[1]
    # this thread's kept buffers: made once, not at every call
    along_h = workspace("winograd.along_h", (a, n, rows, width, c), xp.dtype)
    v = workspace("winograd.v", (a, a, n, rows, tw, c), xp.dtype)
    by_row = workspace("winograd.by_row", (m, a, n, rows, tw, f), xp.dtype)
    cell = workspace("winograd.cell", (n, rows, tw, f), xp.dtype)
    products = workspace("winograd.prod", (a * a, n * rows * tw, f), xp.dtype)
    for t0 in range(0, th, rows):
        count = min(th, t0 + rows) - t0
        # input: Bᵀ along the height (a views of every m-th row), then along the width
        lines = [xp[:, t0 * m + j: t0 * m + j + (count - 1) * m + 1: m, :width]
                 for j in range(a)]
        for i in range(a):
            _combine(lines, bt[i], along_h[i, :, :count])
        for i in range(a):
            columns = [along_h[i, :, :count, j: j + (tw - 1) * m + 1: m] for j in range(a)]
            for k in range(a):
                _combine(columns, bt[k], v[i, k, :, :count])
        tiles = n * count * tw
        block = v[:, :, :, :count].reshape(a * a, tiles, c)
        product = np.matmul(block, u, out=products[:, :tiles]).reshape(a, a, n, count, tw, f)
        # output: Aᵀ along the tile's rows, then its columns, written to every m-th cell
        for p in range(m):
            for k in range(a):
                _combine([product[i, k] for i in range(a)], at[p], by_row[p, k, :, :count])
        for p in range(m):
            h0 = t0 * m + p
            rows_out = len(range(h0, min(out_size[0], (t0 + count) * m), m))
            for q in range(m):
                cols_out = len(range(q, out_size[1], m))
                if rows_out == 0 or cols_out == 0:
                    continue
                target = cell[:, :count]
                _combine([by_row[p, k, :, :count] for k in range(a)], at[q], target)
                y[:, h0: h0 + (rows_out - 1) * m + 1: m, q: q + (cols_out - 1) * m + 1: m] = \
                    target[:, :rows_out, :cols_out]


# --------------------------------------------------------------------------- the algorithm


#: The NumPy kernel transform works on this many pieces of the input channels.
KERNEL_TRANSFORM_PIECES = 8


def kernel_transform(
    kernel: np.ndarray, wt: WinogradTransform, use_numba: bool | None = None
) -> np.ndarray:
    """``G k Gᵀ`` per channel pair, computed in float64: ``(a², C, F)``.

    >>> u = kernel_transform(np.ones((3, 3, 1, 1)), transform(2))
    >>> u.shape, float(u[0, 0, 0])
    ((16, 1, 1), 1.0)
    """
    a = wt.tile
    kernels = _numba_kernels() if use_numba is not False else None
    if kernels is not None:
        u = aligned_empty((a * a, *kernel.shape[2:]), kernel.dtype)  # whole cache lines
        _compiled_kernel_transform(kernels, np.ascontiguousarray(kernel), wt, 0, u, None)
        return u
    # two matrix products (BLAS) rather than one three-operand einsum (slow loops),
    # an eighth of the input channels at a time: the float64 steps ((9 + 6a + a²)·8
    # bytes per channel pair, tensordot's copies included) stay under the result's size
    u = np.empty((a, a, *kernel.shape[2:]), kernel.dtype)
    channels = kernel.shape[2]
    step = max(1, -(-channels // KERNEL_TRANSFORM_PIECES))
    for c0 in range(0, channels, step):
        piece = kernel[:, :, c0:c0 + step].astype(np.float64)
        rows = np.tensordot(wt.G, piece, axes=(1, 0))  # (a, 3, C, F)
        both = np.tensordot(wt.G, rows, axes=(1, 1))  # (a_w, a_u, C, F)
        u[:, :, c0:c0 + step] = np.swapaxes(both, 0, 1)
    return u.reshape(a * a, *kernel.shape[2:])


#: The transformed kernel of one block of output channels may take this fraction of
#: the call's input, kernel and output bytes, less the output, the copies already made
#: and one thread's chunk buffers: the peak extra memory of a call stays within 1.5×
#: those bytes.
KERNEL_BLOCK_SHARE = 1.4

#: Blocks of output channels are halves, quarters, … of the layer's (only as small
#: as the memory bound needs), down to this many channels (a vector or two). Blocks
#: of other sizes use the products poorly, and small ones cost time (one thread,
#: busy machine, 256 → 512 channels on 28², batch 1: 15.6 ms whole, 11.7 in halves,
#: 13.9 in quarters, 14.7 in eighths, but 19.2 in blocks of 176 and 18.2 of 32;
#: 512 → 512 on 7²: 7.6, 8.5, 11.4, 8.6; 128 → 128 on 28²: 1.04 whole, 1.41 in halves).
MIN_CHANNEL_BLOCK = 16


def _channel_block(channels: int, bytes_per_channel: int, io_bytes: int,
                   allocated_bytes: int) -> int:
    """Output channels per block: the largest of ``channels`` halved (while it
    stays a whole number of :data:`MIN_CHANNEL_BLOCK` or more) whose transformed
    kernel (``bytes_per_channel`` each) fits ``KERNEL_BLOCK_SHARE · io_bytes −
    allocated_bytes`` (the smallest such half where none fits).

    >>> _channel_block(512, 36 * 256 * 4, 800_000 + 4_718_592 + 1_605_632, 1_605_632)
    128
    >>> _channel_block(64, 36 * 64 * 4, 10**8, 0)
    64
    """
    budget = KERNEL_BLOCK_SHARE * io_bytes - allocated_bytes
    block = channels
    while (block * bytes_per_channel > budget and block % 2 == 0
           and block // 2 >= MIN_CHANNEL_BLOCK):
        block //= 2
    return block


#: Channel pairs from which the compiled kernel transform is shared among the worker
#: threads (below, one thread does it in less time than handing it over costs).
PARALLEL_KERNEL_PAIRS = 1 << 11


def _compiled_kernel_transform(kernels: tuple[Callable[..., None], ...], kernel: np.ndarray,
                               wt: WinogradTransform, first_channel: int, u: np.ndarray,
                               threads: int | None) -> None:
    """``u`` (a², C, F) = the transformed ``kernel`` (C-contiguous) from output channel
    ``first_channel`` on, its input channels shared among the worker threads."""
    run = kernels[6] if wt.m == 4 else kernels[7]
    c, f = u.shape[1:]
    workers = threads if threads is not None else worker_count()
    if workers <= 1 or c * f < PARALLEL_KERNEL_PAIRS or c < 2 * workers:
        run(kernel, wt.G, first_channel, 0, c, u)
        return

    def work(c0: int, c1: int) -> None:
        run(kernel, wt.G, first_channel, c0, c1, u)

    run_chunks(work, c, -(-c // workers), threads=workers, blas=False)


def _compiled_tiles(kernels: tuple[Callable[..., None], ...], x: np.ndarray,
                    kernel: np.ndarray, first_channel: int, y_phases: np.ndarray,
                    wt: WinogradTransform, tiling: _Tiling, origin: tuple[int, int],
                    workspace_bytes: int, workers: int, threads: int | None) -> None:
    """The compiled Winograd pass of every tile for the ``S0·S1·FO`` output channels
    of the C-contiguous ``kernel`` from ``first_channel`` on into ``y_phases``
    ``(N, HO, S0, WO, S1, FO)`` (a view)."""
    m, a = wt.m, wt.tile
    c = kernel.shape[2]
    f = y_phases.shape[2] * y_phases.shape[4] * y_phases.shape[5]
    dtype = x.dtype
    d0, d1 = tiling.dilation
    th, tw = tiling.tiles
    top, left = origin
    def transformed() -> tuple[np.ndarray, int]:
        u = aligned_empty((a * a, c, f), dtype)
        _compiled_kernel_transform(kernels, kernel, wt, first_channel, u, threads)
        u.flags.writeable = False
        return u, u.nbytes

    u = remembered_transform(kernel, ("winograd", m, first_channel, f, dtype.str), transformed)
    if u is None:
        u, _ = transformed()
    # the register-tiled kernels beat BLAS on these small products from 256
    # channels (one core, 2 MiB chunks, aligned operands: 256 channels 102 ->
    # 146 GFLOP/s; 128: 150 against 155; 64: 184 against 179), and need no BLAS
    # limit on the threads (which costs ~150 µs of a call's time)
    packed = register_tiles.pack_products(u)
    bt = np.ascontiguousarray(wt.BT.astype(dtype))
    at = np.ascontiguousarray(wt.AT.astype(dtype))
    y_plain = y_phases[:, :, 0, :, 0] if y_phases.shape[2] == y_phases.shape[4] == 1 else None

    def work(first: int, last: int) -> None:
        v = workspace("winograd.v", (a * a, last - first, c), dtype)
        prod = workspace("winograd.prod", (a * a, last - first, f), dtype)
        if m == 4:
            kernels[3](x, bt, m, d0, d1, th, tw, first, v, top, left, 0, last - first)
        else:
            kernels[0](x, bt, m, d0, d1, th, tw, first, v, 0, last - first)
        if packed is not None:
            register_tiles.packed_matmul(v, packed, prod)
        else:
            np.matmul(v, u, out=prod)
        if m == 4:
            kernels[4](prod, at, m, d0, d1, th, tw, first, y_phases)
        else:
            kernels[1](prod, at, m, d0, d1, th, tw, first, y_plain)

    total = y_phases.shape[0] * tiling.per_image
    tiles = max(1, workspace_bytes // (a * a * (c + f) * dtype.itemsize))
    # as many chunks as that needs, rounded up to a multiple of the workers, all
    # the same size: a short last chunk would leave a thread idle at the end
    chunks = -(-total // tiles)
    chunks = -(-chunks // workers) * workers
    tiles = max(1, -(-total // chunks))
    # the direct convolution's FLOPs (the work's time is that of the direct method's at
    # about a third of them): 64 -> 64 on 28² (0.7 ms) is shared, not run inline
    flops = 2.0 * total * m * m * 9 * c * f
    run_chunks(work, total, tiles, threads=threads, flops=flops, blas=packed is None,
               inline_below=SMALL_WORK if packed is None else SMALL_WORK_NO_BLAS)


def remembered_transform(kernel: np.ndarray, packing: Any,
                         transformed: Callable[[], tuple[Any, int]]) -> Any:
    """The transformed kernel ``transformed()`` makes, made once and reused for a
    prepacked kernel (:func:`.prepacked.prepack`, any size); ``None`` for others (made
    at each call). It is kept whole (1.8× the kernel's bytes with F(2×2), 4× with
    F(4×4)), within :data:`.prepacked.KEEP_BYTES`: the call that makes it holds it all
    at once, later calls make none of it. At batch 1 the transform is most of a
    weight-heavy layer's time (one core, busy machine, 3×3 on one 14² image: 512 -> 512
    3.9 of 11.3 ms with F(2×2), 1024 -> 512 12.0 of 25.2); small kernels gain too (3×3
    64 -> 64 on one 28² image, 147 KiB: see :func:`transform_kept`)."""
    return prepacked.remembered(kernel, packing, transformed)


def transform_kept(problem: ConvProblem) -> bool:
    """Whether the compiled path makes ``problem``'s transformed kernel once
    (:func:`remembered_transform`): a prepacked kernel whose transform (at most 4× its
    bytes) fits :data:`.prepacked.KEEP_BYTES` (:func:`.prepacked.remembered`'s bound).

    >>> shapes = ((1, 9, 9, 64), (3, 3, 64, 64), (1, 1), (1, 1), 1, (7, 7), np.dtype("float32"))
    >>> transform_kept(ConvProblem(*shapes, prepacked=True)), transform_kept(ConvProblem(*shapes))
    (True, False)
    """
    kernel_bytes = math.prod(problem.kernel_shape) * np.dtype(problem.dtype).itemsize
    return problem.prepacked and 8 * kernel_bytes <= prepacked.KEEP_BYTES


#: Transformed input tiles of a whole call (every image) up to this many bytes can be
#: made once and shared by the workers, which then split the output channels among them
#: (:func:`_shared_tiles`); larger calls are cut into chunks of tiles
#: (:func:`_compiled_tiles`).
SHARED_TILES_BYTES = 4 << 20

#: Calls with at most this many tiles share their transformed tiles (when they fit
#: :data:`SHARED_TILES_BYTES`); calls with more only where the whole transformed
#: kernel is over the memory bound (chunks of tiles would then repeat the input
#: transform for every block of output channels). Measured (one core, busy machine,
#: ms, chunks of tiles in brackets): 64 -> 64 on 1×28² (49 tiles) 0.37 (0.74), on 2×28²
#: 0.57 (0.65), on 4×28² 1.19 (1.12); 128 -> 128 on 4×14² (64 tiles) 1.40 (1.62).
SHARED_MAX_TILES = 128

#: Transformed kernel and products of one block of output channels in
#: :func:`_shared_tiles`, in bytes: about half a core's L2.
CHANNEL_BLOCK_BYTES = 1 << 20

#: Calls of shared tiles (:func:`_shared_tiles`) of fewer FLOPs (of the direct
#: definition) run on one thread. Measured on two quiet cores (2026-12-06, one thread's
#: time / two threads'): 3×3 64 -> 64 on 1×28² 0.48, 128 -> 128 on 1×14² 0.63, on 1×28²
#: 0.82, 64 -> 64 on 2×28² 0.83, 128 -> 128 on 2×14² 0.94 (all below 2.5e8 FLOPs);
#: 128 -> 256 on 1×28² (4.6e8) 0.91, 256 -> 256 on 1×28² (9.2e8) 1.68.
SHARED_SERIAL_FLOPS = 3e8

#: :func:`cost` of a call that runs on one thread (below :data:`SHARED_SERIAL_FLOPS`)
#: with a transformed kernel of at most :data:`SERIAL_TRANSFORM_BYTES`: its one core's cost
#: times ``1 + SERIAL_SHARE × (workers - 1)``, against the others' costs of their work
#: halved on two threads, which at these sizes is not halved (a larger transformed
#: kernel, read from memory, counts a whole core: register_tiles' two threads each read
#: half of theirs). Measured (AMD EPYC Zen 4, two cores, busy machine, prepacked
#: kernels, ms; register_tiles on one thread, on two of the quiet machine in brackets):
#: 3×3 64 -> 64 on 1×28² 0.56 (0.42), 128 -> 128 on 1×14² 0.56 (0.39), 256 -> 256 on
#: 1×7² 0.57 (0.36), where Winograd on one thread took 0.29, 0.32 and 0.34 (transforms
#: of 0.6, 2.3 and 4 MiB); 512 -> 512 on 1×4² (16 MiB) 0.79 against 0.76, faster on two
#: threads by register_tiles.
SERIAL_SHARE = 0.3

#: See :data:`SERIAL_SHARE`: the largest transformed kernel (bytes) of a one-thread call
#: that counts a share of the second core, not a whole one (float32 only: float64 calls
#: of these layers chosen this way stalled ~8 ms a call in some processes, busy machine).
SERIAL_TRANSFORM_BYTES = 8 << 20


def use_shared_tiles(tiles: int, tile: int, channels: int, itemsize: int,
                     kernel_blocked: bool) -> bool:
    """Whether a call's ``tiles`` transformed input tiles (``tile² · channels`` values
    each) are made once and shared (:func:`_shared_tiles`): when they fit
    :data:`SHARED_TILES_BYTES`, and they are at most :data:`SHARED_MAX_TILES` or the
    chunks of tiles would have to cut the transformed kernel (``kernel_blocked``).

    >>> use_shared_tiles(49, 6, 64, 4, False), use_shared_tiles(196, 6, 64, 4, False)
    (True, False)
    >>> use_shared_tiles(196, 6, 64, 4, True), use_shared_tiles(16 * 196, 6, 64, 4, True)
    (True, False)
    """
    if tile * tile * tiles * channels * itemsize > SHARED_TILES_BYTES:
        return False
    return tiles <= SHARED_MAX_TILES or kernel_blocked


def shared_channel_block(channels: int, filters: int, tiles: int, tile: int, itemsize: int,
                         workers: int, width: int, most: int = 1) -> int:
    """Output channels per block of :func:`_shared_tiles`: the block's transformed kernel
    and products (``tile² · (channels + tiles)`` values per output channel) within
    :data:`CHANNEL_BLOCK_BYTES`, at least ``workers`` blocks where the channels allow,
    and a whole number of register blocks (``most`` vectors of ``width`` lanes), or of
    vectors where whole register blocks would leave a worker without one.

    >>> shared_channel_block(64, 64, 49, 6, 4, 2, 16, 4)
    32
    >>> shared_channel_block(64, 64, 49, 6, 4, 1, 16, 4)
    64
    >>> shared_channel_block(256, 256, 49, 6, 4, 2, 16, 4)
    64
    """
    fit = CHANNEL_BLOCK_BYTES // (tile * tile * (channels + tiles) * itemsize)
    block = filters
    for quantum in (width * most, width):
        block = max(quantum, fit // quantum * quantum)
        block = min(block, -(-filters // (workers * quantum)) * quantum, filters)
        # as many blocks as a whole number of rounds of the workers, if that is
        # no larger (a last round with a worker idle costs a block's time)
        blocks = -(-filters // block)
        count = -(-blocks // workers) * workers
        block = min(block, -(-filters // (count * quantum)) * quantum)
        if -(-filters // block) >= min(workers, -(-filters // width)):
            break
    return block


def _shared_tiles(kernels: tuple[Callable[..., None], ...], x: np.ndarray,
                  kernel: np.ndarray, y: np.ndarray, wt: WinogradTransform,
                  tiling: _Tiling, origin: tuple[int, int], workers: int,
                  threads: int | None) -> None:
    """Winograd for calls with few tiles (small images, small batches): the tiles are
    transformed once (shared among the workers, into one buffer of the calling thread),
    then each worker takes blocks of output channels and, for each, transforms that
    block of the kernel, runs the ``a²`` products and transforms them back into ``y``
    (``(N, HO, 1, WO, 1, F)`` for F(4×4), ``(N, HO, WO, F)`` for F(2×2); a view). The
    whole transformed kernel is never made: a block's stays in the worker's cache."""
    m, a = wt.m, wt.tile
    c, f = kernel.shape[2], kernel.shape[3]
    dtype = x.dtype
    d0, d1 = tiling.dilation
    th, tw = tiling.tiles
    top, left = origin
    total = x.shape[0] * tiling.per_image
    # the target read once (each read looks at the environment)
    target = _llvm.vector_target()
    width = target.width(dtype) if target.runs_here and dtype in _FLOATS else 0
    runner = _native_runner(m, dtype, width, workers, kernel)
    if runner is None and 2.0 * total * m * m * 9 * c * f < SHARED_SERIAL_FLOPS:
        workers, threads = 1, 1  # two threads ran such calls slower than one
    block = shared_channel_block(c, f, total, a, dtype.itemsize, workers, max(width, 1),
                                 _llvm.max_vectors(target) if width else 1)
    if runner is not None:
        # each job takes every block in turn: blocks as wide as the cache allows (one
        # worker's; blocks for two made 3×3 64 on one 28² image 1.09× slower)
        wide = shared_channel_block(c, f, total, a, dtype.itemsize, 1, width,
                                    _llvm.max_vectors(target))
        kept = remembered_transform(kernel, ("winograd blocks", m, wide, dtype.str),
                                    functools.partial(_transformed_blocks, kernels[6], kernel,
                                                      wt, wide))
        if kept is not None and wide % width == 0:
            _native_shared_tiles(runner, x, kept, wide, y, wt, tiling, origin, workers,
                                 width)
            return
    packs = width > 0 and f % width == 0 and block % width == 0
    # the products' kernels per block width, looked up once here (a lookup reads the
    # environment, ~35 µs; each block then only points them at its own kernel)
    templates: dict[int, register_tiles.PackedProducts] = {}
    for f0 in range(0, f, block) if packs else ():
        size = min(f, f0 + block) - f0
        if size not in templates:
            template = register_tiles.pack_products(
                workspace("winograd.u_block", (a * a, c, size), dtype))
            if template is None:
                templates.clear()
                break
            templates[size] = template
    packs = bool(templates)
    v = workspace("winograd.shared_v", (a * a, total, c), dtype)
    bt = np.ascontiguousarray(wt.BT.astype(dtype))
    at = np.ascontiguousarray(wt.AT.astype(dtype))
    run_kernel = kernels[6] if m == 4 else kernels[7]
    flops = 2.0 * total * m * m * 9 * c * f

    kept = remembered_transform(kernel, ("winograd blocks", m, block, dtype.str),
                                functools.partial(_transformed_blocks, run_kernel, kernel, wt,
                                                  block))
    inline_below = SMALL_WORK_NO_BLAS if packs else SMALL_WORK

    def transform_tiles(first: int, last: int) -> None:
        if m == 4:
            kernels[3](x, bt, m, d0, d1, th, tw, first, v, top, left, first, last - first)
        else:
            kernels[0](x, bt, m, d0, d1, th, tw, first, v, first, last - first)

    def channels(f0: int, f1: int) -> None:
        if kept is not None:
            u = kept[f0 // block]
        else:
            u = workspace("winograd.u_block", (a * a, c, f1 - f0), dtype)
            run_kernel(kernel, wt.G, f0, 0, c, u)
        prod = workspace("winograd.prod", (a * a, total, f1 - f0), dtype)
        if packs:
            template = templates[f1 - f0]
            register_tiles.packed_matmul(
                v, register_tiles.PackedProducts(u, template.runs, template.offsets), prod)
        else:
            np.matmul(v, u, out=prod)
        if m == 4:
            kernels[4](prod, at, m, d0, d1, th, tw, 0, y[..., f0:f1])
        else:
            kernels[1](prod, at, m, d0, d1, th, tw, 0, y[..., f0:f1])

    run_chunks(transform_tiles, total, -(-total // max(1, workers)), threads=threads,
               flops=flops, blas=False, inline_below=SMALL_WORK_NO_BLAS)
    run_chunks(channels, f, block, threads=threads, flops=flops, blas=not packs,
               inline_below=inline_below)


def _native_runner(m: int, dtype: np.dtype, width: int, workers: int, kernel: np.ndarray
                   ) -> Any:
    """The table runner :func:`_native_shared_tiles` would use, or ``None`` (one worker,
    F(2×2), no compiled kernels or table-callable transforms, output channels not a
    whole number of vectors, a kernel that is not prepacked or too large to keep: its
    transform is then made in the threads' own blocks)."""
    if workers < 2 or m != 4:
        return None
    owner = prepacked.frozen_owner(kernel)
    if owner is None or 4 * (len(owner) + kernel.nbytes) > prepacked.KEEP_BYTES:
        return None
    return _tables_runner(np.dtype(dtype), width, kernel.shape[-1])


def _tables_runner(dtype: np.dtype, width: int, filters: int) -> Any:
    """The helpers' table runner where :func:`_native_shared_tiles` can run ``filters``
    output channels of ``dtype`` here (whole vectors of ``width``, the runner and the
    table-callable transforms built), else ``None``."""
    if not width or filters % width:
        return None
    from . import _native_jobs

    runner = _native_jobs.kernel_runner()
    if runner is None or _table_transforms(dtype) is None:
        return None
    return runner


def _native_tables_here(problem: ConvProblem) -> bool:
    """Whether :func:`_native_shared_tiles` can run ``problem`` here
    (:func:`_tables_runner`)."""
    dtype = np.dtype(problem.dtype)
    return _tables_runner(dtype, _llvm.vector_width(dtype), problem.out_channels) is not None


@cached_once
def _table_transforms(dtype: np.dtype) -> tuple[int, int, Any] | None:
    """The table-callable F(4×4) transforms for ``dtype`` (compiled once), or ``None``."""
    try:
        from . import _winograd_numba as loops
    except ImportError:  # pragma: no cover - exercised by the numba-less test
        return None
    try:
        return loops._table_transforms(dtype)
    except Exception:  # pragma: no cover - a numba that cannot make C callbacks
        return None


def _transformed_blocks(run_kernel: Callable[..., None], kernel: np.ndarray,
                        wt: WinogradTransform, block: int
                        ) -> tuple[tuple[np.ndarray, ...], int]:
    """The kernel's transform by blocks of ``block`` output channels (each
    ``(a², C, block)``, read-only), and their bytes: what :func:`_shared_tiles` keeps."""
    a, c, f = wt.tile, kernel.shape[2], kernel.shape[3]
    parts = []
    for f0 in range(0, f, block):
        part = aligned_empty((a * a, c, min(f, f0 + block) - f0), kernel.dtype)
        run_kernel(kernel, wt.G, f0, 0, c, part)
        part.flags.writeable = False
        parts.append(part)
    return tuple(parts), sum(part.nbytes for part in parts)


class _NativeTable(NamedTuple):
    """:func:`_native_shared_tiles`' calls for one shape, with the arrays they point at
    (kept alive here): the calls' rows, which rows read ``x`` (pointer 1) and which write
    ``y`` (pointer 3), and the jobs ``(first row, rows)``."""

    rows: np.ndarray
    x_rows: np.ndarray
    y_rows: np.ndarray
    jobs: np.ndarray
    keep: tuple[Any, ...]


#: Tables of :func:`_native_shared_tiles` kept (the oldest dropped past this).
NATIVE_TABLES_KEPT = 64

_NATIVE_TABLES: dict[tuple[Any, ...], _NativeTable] = {}


def _native_table(x: np.ndarray, kept: tuple[np.ndarray, ...], block: int, y: np.ndarray,
                  wt: WinogradTransform, tiling: _Tiling, origin: tuple[int, int],
                  workers: int, width: int) -> _NativeTable:
    """The calls of :func:`_native_shared_tiles` for these shapes, ``x`` and ``y``'s
    addresses left to fill in; made once per shape, kernel, workspaces and workers."""
    from ._native_jobs import KERNEL_FIELDS, KERNEL_POINTERS

    dtype = x.dtype
    itemsize = dtype.itemsize
    n, hx, wx, c = x.shape
    f = y.shape[-1]
    a2 = wt.tile * wt.tile
    total = n * tiling.per_image
    cuts = [total * i // workers for i in range(workers + 1)]
    most = max(b - a for a, b in zip(cuts, cuts[1:]))
    v = workspace("winograd.shared_v", (a2, total, c), dtype)
    # each job's products of one block of output channels (a job's blocks in turn)
    prod = workspace("winograd.native_prod", (workers, a2 * most * block), dtype)
    key = (x.shape, dtype.str, y.shape, id(kept), block, tiling, origin, workers, width,
           v.ctypes.data, prod.ctypes.data)
    table = _NATIVE_TABLES.get(key)
    if table is not None and table.keep[0] is kept:
        return table
    transforms = _table_transforms(dtype)
    assert transforms is not None
    input_at, output_at, _ = transforms
    bt = np.ascontiguousarray(wt.BT.astype(dtype))
    at = np.ascontiguousarray(wt.AT.astype(dtype))
    offsets = np.arange(c, dtype=np.int64)  # step i of a sum reads column i of v
    d0, d1 = tiling.dilation
    th, tw = tiling.tiles
    top, left = origin
    rows: list[list[int]] = []
    x_rows, y_rows, jobs = [], [], []
    for job, (t0, t1) in enumerate(zip(cuts, cuts[1:])):
        if t1 <= t0:
            continue
        start, cells = len(rows), t1 - t0
        x_rows.append(len(rows))
        rows.append([input_at, 0, bt.ctypes.data, v.ctypes.data, 0,
                     n, hx, wx, c, th, tw, d0, d1, top, left, t0, cells, total])
        out_at = prod.ctypes.data + job * prod.shape[1] * itemsize
        for index, f0 in enumerate(range(0, f, block)):
            size = min(f, f0 + block) - f0
            u = kept[index]
            for vectors, column, count in register_tiles._plan_blocks(size, width):
                kernels = _llvm.compiled(dtype, vectors)
                assert kernels is not None
                drive = ctypes.c_void_p.from_buffer(kernels.drive).value or 0
                # the a² products of register_tiles.packed_matmul, on this job's tiles
                rows.append([drive, v.ctypes.data + t0 * c * itemsize,
                             u.ctypes.data + column * itemsize, out_at + column * itemsize,
                             offsets.ctypes.data,
                             *_llvm.Cells(rows=1, row_cells=cells, image_rows=1, x_row=0,
                                          x_cell=c, x_image=0, y_row=0, y_cell=size,
                                          y_image=0),
                             *_llvm.Sums(blocks=count, steps=c, step_stride=size,
                                         block_stride=vectors * width, accumulate=0),
                             *_llvm.Batch(problems=a2, x_stride=total * c, w_stride=c * size,
                                          y_stride=cells * size)])
            y_rows.append(len(rows))
            rows.append([output_at, out_at, at.ctypes.data, 0, 0, n, y.shape[1], y.shape[3],
                         f, th, tw, d0, d1, f0, f0 + size, cells, t0])
        jobs.append((start, len(rows) - start))
    array = np.zeros((len(rows), 1 + KERNEL_POINTERS + KERNEL_FIELDS), np.int64)
    for i, row in enumerate(rows):
        array[i, :len(row)] = row
    table = _NativeTable(array, np.array(x_rows), np.array(y_rows), np.array(jobs, np.int64),
                         (kept, bt, at, offsets, v, prod))
    if len(_NATIVE_TABLES) >= NATIVE_TABLES_KEPT:
        # (another thread may be changing the dict meanwhile: then it has made room)
        with contextlib.suppress(RuntimeError, KeyError, StopIteration):
            _NATIVE_TABLES.pop(next(iter(_NATIVE_TABLES)))
    _NATIVE_TABLES[key] = table
    return table


def _native_shared_tiles(runner: Any, x: np.ndarray, kept: tuple[np.ndarray, ...],
                         block: int, y: np.ndarray, wt: WinogradTransform, tiling: _Tiling,
                         origin: tuple[int, int], workers: int, width: int) -> None:
    """:func:`_shared_tiles` as one table of compiled calls (:mod:`._native_jobs`) that
    the helper threads run without the GIL: one job per worker and range of tiles, each
    the tiles' input transform, then for each block of output channels its products
    (into a buffer of the job's own) and output transform, so no job waits for another.
    Each cell's sums are the threads' closures' own, so the values are the same bit for
    bit (tested). A Python chunk handed to a helper started 30-60 µs late on a 2-core
    virtual machine, and two threads ran 3×3 64 -> 64 on one 28² image in 1.9× one
    thread's time (:data:`SHARED_SERIAL_FLOPS`); this way 0.71-0.81× (three processes),
    128 -> 128 on one 14² image 0.63×, 128 -> 256 on one 28² 0.74× (two threads against
    the chunks' path, interleaved in one process, 2026-12-07)."""
    table = _native_table(x, kept, block, y, wt, tiling, origin, workers, width)
    rows = table.rows.copy()  # (another thread may run the same layer)
    rows[table.x_rows, 1] = x.ctypes.data
    rows[table.y_rows, 3] = y.ctypes.data
    run_native_table(runner, rows.ctypes.data, len(rows), table.jobs.ctypes.data,
                     len(table.jobs), workers)


def direct(
    xp: np.ndarray,
    kernel: np.ndarray,
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    out_size: tuple[int, ...],
    *,
    m: int | None = None,
    use_numba: bool | None = None,
    workspace_bytes: int | None = None,
    threads: int | None = None,
    padding: tuple[tuple[int, int], ...] | None = None,
    phases: tuple[int, int] = (1, 1),
    shared_tiles: bool = True,
) -> np.ndarray:
    """Winograd F(m×m, 3×3): the algorithm contract of :mod:`~convarith.engine.dispatch`.

    Parameters
    ----------
    xp, kernel, strides, dilation, groups, out_size
        As in the dispatch contract; needs rank 2, a 3×3 kernel, stride 1 and
        ``groups == 1``.
    m
        Output tile size: 4 (F(4×4, 3×3)) or 2; default 4, or 2 for float32
        with more than :data:`F4_MAX_CHANNELS` input channels.
    use_numba
        Compiled transforms (``None``: when numba is installed).
    workspace_bytes
        Bytes of transformed tiles per chunk (default :data:`CHUNK_BYTES`):
        each thread transforms a chunk of tiles, multiplies and transforms
        back while it is in cache (at least one tile; the NumPy path uses
        chunks of whole images).
    threads
        Worker threads (default: one per core).
    padding
        Zero padding ``(before, after)`` per axis still to apply to ``xp``; the
        compiled F(4×4, 3×3) transform reads it as zeros without a padded copy
        (other paths pad first).
    phases
        ``(S0, S1)``: the kernel's ``F = S0·S1·FO`` outputs are ``S0×S1``
        interleaved phases of ``FO`` channels, and the result is
        ``(N, HO·S0, WO·S1, FO)`` with output channel ``(p0·S1 + p1)·FO + c``
        of cell ``(h, w)`` at ``[h·S0 + p0, w·S1 + p1, c]`` (depth-to-space,
        written by the compiled F(4×4) output transform as it goes).
    shared_tiles
        With compiled transforms and no phases: transform the tiles of a call
        once and split the output channels among the threads where the
        transformed tiles fit :data:`SHARED_TILES_BYTES` (few tiles: small
        images and batches); ``False``: always cut the tiles into chunks.

    Examples
    --------
    >>> x = np.ones((1, 4, 4, 1), np.float32)
    >>> direct(x, np.ones((3, 3, 1, 1), np.float32), (1, 1), (1, 1), 1, (2, 2))[0, ..., 0]
    array([[9., 9.],
           [9., 9.]], dtype=float32)
    """
    kernels = _numba_kernels() if use_numba is not False else None
    if use_numba and kernels is None:
        raise ImportError("use_numba=True needs numba: pip install numba")
    if m is None:
        wide = xp.dtype == np.float32 and xp.shape[-1] > F4_MAX_CHANNELS
        # without numba F(2×2) is faster too: its transforms are additions only
        m = 2 if wide or kernels is None else 4
    top = left = 0
    padded_shape = tuple(xp.shape)
    if padding is not None:
        pairs = [(int(lo), int(hi)) for lo, hi in padding]
        if kernels is not None and m == 4 and len(pairs) == 2 and min(map(min, pairs)) >= 0:
            # the compiled F(4×4) input transform reads the zero padding itself
            (top, bottom), (left, right) = pairs
            padded_shape = (xp.shape[0], xp.shape[1] + top + bottom,
                            xp.shape[2] + left + right, xp.shape[3])
        else:
            xp = pad(xp, pairs)
            padded_shape = tuple(xp.shape)
    problem = ConvProblem(padded_shape, tuple(kernel.shape), tuple(strides), tuple(dilation),
                          int(groups), tuple(out_size), xp.dtype)
    if not applies(problem):
        raise ValueError(
            f"winograd needs a 2-D 3x3 kernel, stride 1 and groups=1, got kernel "
            f"{kernel.shape}, strides {strides}, groups {groups}"
        )
    wt = transform(m)
    a = wt.tile
    d0, d1 = int(dilation[0]), int(dilation[1])
    out_h, out_w = int(out_size[0]), int(out_size[1])
    tiling = _tiling(m, (d0, d1), (out_h, out_w))
    n, _, _, c = xp.shape
    f = kernel.shape[-1]
    dtype = xp.dtype
    s0, s1 = int(phases[0]), int(phases[1])
    if f % (s0 * s1):
        raise ValueError(f"phases={phases} needs the kernel's {f} outputs to split evenly")
    if (s0, s1) != (1, 1) and (kernels is None or m != 4):
        z = direct(xp, kernel, strides, dilation, groups, out_size, m=m, use_numba=use_numba,
                   workspace_bytes=workspace_bytes, threads=threads)
        fo = f // (s0 * s1)
        shuffled = z.reshape(n, out_h, out_w, s0, s1, fo).transpose(0, 1, 3, 2, 4, 5)
        return np.ascontiguousarray(shuffled).reshape(n, out_h * s0, out_w * s1, fo)
    y = np.empty((n, out_h * s0, out_w * s1, f // (s0 * s1)), dtype)
    tile_bytes = a * a * (c + f) * dtype.itemsize
    if workspace_bytes is None:
        workspace_bytes = CHUNK_BYTES
    if kernels is not None:
        x_contiguous = np.ascontiguousarray(xp)
        kernel_contiguous = np.ascontiguousarray(kernel)
        fo = f // (s0 * s1)
        copies = (x_contiguous.nbytes if x_contiguous is not xp else 0) + (
            kernel_contiguous.nbytes if kernel_contiguous is not kernel else 0) + (
            xp.nbytes if padded_shape == tuple(xp.shape) and padding is not None else 0)
        workers = threads if threads is not None else worker_count()
        # the threads' chunk buffers are not counted: they are kept between calls
        # (counting a helper's made blocks of 16 channels on small layers, each
        # repeating the input transform: 64 -> 128 on 56², two threads, 2.1 -> 6.9 ms)
        scratch = 0
        block = _channel_block(fo, a * a * c * s0 * s1 * dtype.itemsize,
                               xp.nbytes + kernel.nbytes + y.nbytes,
                               y.nbytes + copies + scratch)
        if (s0, s1) == (1, 1) and shared_tiles and use_shared_tiles(
                n * tiling.per_image, a, c, dtype.itemsize, block < fo):
            target = y.reshape(n, out_h, 1, out_w, 1, f) if m == 4 else y
            _shared_tiles(kernels, x_contiguous, kernel_contiguous, target, wt, tiling,
                          (top, left), workers, threads)
            return y
        y_phases = y.reshape(n, out_h, s0, out_w, s1, fo)
        for f0 in range(0, fo, block):
            f1 = min(fo, f0 + block)
            first, kernel_block = f0, kernel_contiguous
            if s0 * s1 > 1 and f1 - f0 < fo:  # the block's channels of every phase
                columns = (np.arange(s0 * s1)[:, None] * fo + np.arange(f0, f1)).ravel()
                first, kernel_block = 0, kernel[..., columns]
            _compiled_tiles(kernels, x_contiguous, kernel_block, first,
                            y_phases[..., f0:f1], wt, tiling, (top, left), workspace_bytes,
                            workers, threads)
        return y
    # without numba: the kernel transform's float64 steps count too (about the size of
    # its result, see kernel_transform), and the passes' temporaries (a quarter of the
    # call's bytes)
    io_bytes = xp.nbytes + kernel.nbytes + y.nbytes
    chunk_bytes = workspace_bytes
    if (d0, d1) != (1, 1):  # the einsum transforms make their arrays at each call
        chunk_bytes = max(1 << 16, min(workspace_bytes, io_bytes // 4))
    per_channel = a * a * c * dtype.itemsize + -(-c // KERNEL_TRANSFORM_PIECES) * (
        9 + 6 * a + a * a) * 8
    block = _channel_block(f, per_channel, io_bytes, y.nbytes + io_bytes // 4 + (
        xp.nbytes if padding is not None else 0))
    for f0 in range(0, f, block):
        f1 = min(f, f0 + block)
        u = kernel_transform(kernel[..., f0:f1], wt, use_numba=False)
        y_block = y[..., f0:f1]
        if (d0, d1) == (1, 1):
            _numpy_tiles_direct(xp, u, wt, (out_h, out_w), y_block, chunk_bytes)
            continue
        tile_bytes = a * a * (c + f1 - f0) * dtype.itemsize
        chunk = max(1, min(n, chunk_bytes // max(tile_bytes * tiling.per_image, 1)))
        for start in range(0, n, chunk):
            stop = min(n, start + chunk)
            v = _numpy_input_transform(xp[start:stop], wt.BT, tiling)
            _numpy_output_transform(np.matmul(v, u), wt.AT, tiling, y_block[start:stop])
    return y


#: The Winograd weight gradient needs this many tiles per channel (of the
#: larger of C and F): its 36 products ``(C × tiles) @ (tiles × F)`` write a
#: ``36·C·F`` result, which only pays with enough tiles to sum over. Measured
#: (one thread, against :func:`.flat_rows.weight_grad`): 1568 tiles, C = F = 64:
#: 9.4 vs 20 ms; 98 tiles, 256: 16 vs 13 ms; 16 tiles, 512: 68 vs 6.8 ms.
GRAD_MIN_TILES_PER_CHANNEL = 4


def weight_grad(
    xp: np.ndarray,
    dy: np.ndarray,
    kernel_size: tuple[int, ...],
    strides: tuple[int, ...],
    dilation: tuple[int, ...],
    groups: int,
    *,
    padding: tuple[tuple[int, int], ...] | None = None,
    threads: int | None = None,
    chunk_tiles: int | None = None,
) -> np.ndarray:
    """Kernel gradient by F(4×4, 3×3) run backwards (the adjoint of :func:`direct`).

    The forward tile is ``Y_t = Aᵀ[(G k Gᵀ) ⊙ V_t]A`` with ``V_t = Bᵀ d_t B``,
    so the gradient of ``Σ_t ⟨Y_t, dY_t⟩`` with respect to ``k`` is::

        dk = Gᵀ [ Σ_t V_t ⊙ (A dY_t Aᵀ) ] G

    Summed over tiles, the bracket is ``a² = 36`` products
    ``(C × tiles) @ (tiles × F)``: 4× fewer FLOPs than per-tap products.
    The input transform (and its in-place zero padding) is the forward's.
    Without numba, or with fewer than :data:`GRAD_MIN_TILES_PER_CHANNEL` tiles
    per channel, this is :func:`.flat_rows.weight_grad`.

    >>> rng = np.random.default_rng(0)
    >>> x, dy = rng.standard_normal((1, 10, 10, 2)), rng.standard_normal((1, 8, 8, 3))
    >>> dk = weight_grad(x, dy, (3, 3), (1, 1), (1, 1), 1)
    >>> ref = np.einsum("nhwc,nhwf->cf", x[:, 1:9, 2:10], dy)
    >>> bool(np.allclose(dk[1, 2], ref))
    True
    """
    from . import flat_rows

    kernels = _numba_kernels()
    pairs = [(int(lo), int(hi)) for lo, hi in padding] if padding is not None else [(0, 0)] * 2
    n, c, f = xp.shape[0], xp.shape[-1], dy.shape[-1]
    d0, d1 = (int(d) for d in dilation)
    tiling = _tiling(4, (d0, d1), (dy.shape[1], dy.shape[2]))
    total = n * tiling.per_image
    if (kernels is None or tuple(kernel_size) != (3, 3) or tuple(strides) != (1, 1)
            or groups != 1 or min(map(min, pairs)) < 0
            or total < GRAD_MIN_TILES_PER_CHANNEL * max(c, f)):
        return flat_rows.weight_grad(xp, dy, kernel_size, strides, dilation, groups,
                                     threads=threads, padding=padding)
    (top, _), (left, _) = pairs
    dtype = xp.dtype
    wt = transform(4)
    bt = np.ascontiguousarray(wt.BT.astype(dtype))
    at = np.ascontiguousarray(wt.AT.astype(dtype))
    x_contiguous = np.ascontiguousarray(xp)
    dy_contiguous = np.ascontiguousarray(dy, dtype)
    step = chunk_tiles or max(32, GRAD_CHUNK_BYTES // (36 * (c + f) * dtype.itemsize))
    workers = threads if threads is not None else worker_count()
    # per output channel: each worker's sum and product, their float64 total and
    # the float64 result; blocks of output channels keep them within the bound
    per_channel = 36 * c * (2 * workers * dtype.itemsize + 8) + 9 * c * 8
    copies = sum(a.nbytes for a, b in ((x_contiguous, xp), (dy_contiguous, dy)) if a is not b)
    block = _channel_block(f, per_channel, xp.nbytes + dy.nbytes + 9 * c * f * dtype.itemsize,
                           9 * c * f * dtype.itemsize + copies)
    dk = np.empty((3, 3, c, f), dtype)
    for f0 in range(0, f, block):
        f1 = min(f, f0 + block)
        dk[..., f0:f1] = _gradient_block(kernels, x_contiguous, dy_contiguous[..., f0:f1],
                                         (bt, at), tiling, (top, left), step, threads)
    return dk


def _gradient_block(kernels: tuple[Callable[..., None], ...], x: np.ndarray, dy: np.ndarray,
                    bt_at: tuple[np.ndarray, np.ndarray], tiling: _Tiling,
                    origin: tuple[int, int], step: int, threads: int | None) -> np.ndarray:
    """:func:`weight_grad` for the output channels of ``dy`` (a view), in float64."""
    bt, at = bt_at
    c, f, dtype = x.shape[-1], dy.shape[-1], x.dtype
    d0, d1 = tiling.dilation
    th, tw = tiling.tiles
    top, left = origin
    total = x.shape[0] * tiling.per_image

    def work(first: int, last: int) -> np.ndarray:
        # one worker's share of the tiles, in cache-sized steps, summed in place
        summed = np.zeros((36, c, f), dtype)
        product = np.empty((36, c, f), dtype)
        for start in range(first, last, step):
            stop = min(last, start + step)
            v = workspace("winograd.grad_v", (36, stop - start, c), dtype)
            w = workspace("winograd.grad_w", (36, stop - start, f), dtype)
            kernels[3](x, bt, 4, d0, d1, th, tw, start, v, top, left, 0, stop - start)
            kernels[5](dy, at, d0, d1, th, tw, start, w)
            np.matmul(v.transpose(0, 2, 1), w, out=product)
            summed += product
        return summed

    workers = threads if threads is not None else worker_count()
    flops = 2.0 * total * 36 * c * f
    partials = run_chunks(work, total, -(-total // max(1, workers)), threads=threads, flops=flops)
    summed = partials[0].astype(np.float64)
    for partial in partials[1:]:
        summed += partial
    del partials
    # dk[i, j] = Σ_{x, w} G[x, i] M[x·6 + w] G[w, j], in float64
    g = transform(4).G
    return np.einsum("xi,xwcf,wj->ijcf", g, summed.reshape(6, 6, c, f), g, optimize=True)


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))

#: When Winograd applies: 2-D, 3×3 kernel, stride 1, one group, float32 or float64.
applies = Requirements((
    ("a 2-D convolution", lambda p: p.rank == 2),
    ("a 3x3 kernel", lambda p: tuple(p.kernel_size) == (3, 3)),
    ("stride 1", lambda p: all(s == 1 for s in p.strides)),
    ("groups=1", lambda p: p.groups == 1),
    ("float32 or float64", lambda p: np.dtype(p.dtype) in _FLOATS),
))


def _worth_it(problem: ConvProblem) -> bool:
    # Measured against flat_rows (CPU time, one thread, 4×28×28, C = F):
    # float32 winograd/flat_rows = 1.33 (C=8), 1.11 (16), 0.78 (32), 0.74 (64),
    # 0.76 (128), 0.79 (256); float64 1.16 (8), 0.79 (16), 0.60 (32), 0.77 (64).
    # With few channels the transforms cost more than the products they save.
    least = 16 if np.dtype(problem.dtype) == np.float64 else 32
    return problem.in_channels >= least and problem.out_channels >= least


def cost(problem: ConvProblem) -> float:
    """Estimated cost in the units of :mod:`.flat_rows`'s (which is ``0.7 × flops``).

    With the compiled transforms and products (numba and the register-tiled
    kernels), one core: :data:`PER_PRODUCT_FLOP` per FLOP of the ``a²`` products
    (``2 a² · tiles · C · F``), :data:`PER_KERNEL_VALUE` per value of the
    transformed kernel (``a² · C · F``, made at every call), :data:`PER_TILE_VALUE`
    per value of the transformed input and products (``a² · tiles · (C + F)``) and
    :data:`PER_CALL` for the call. Fitted on 35 layers (64 to 512 channels, 7² to
    56², batch 1, 2 and 16; one core, CPU time, busy machine, against
    register_tiles' and flat_rows' costs on the same layers): within 0.66–1.2×
    of the time; 32 channels, left out of the fit, are on the same side of
    register_tiles as measured.
    Several workers: :data:`PARALLEL_EXTRA` fitted the same way on
    serial_fraction's two-worker prediction, :data:`PER_WORKER_HANDOVER` for the
    shared tiles' second hand-over; shared
    tiles split the output channels into blocks, chunks of tiles the tiles
    (:func:`~._threads.parallel_penalty` of either), and chunks of tiles repeat
    the input transform and hand-over for each block of output channels the memory
    bound makes (:data:`SERIAL_PER_BLOCK` each). Below
    :data:`~._threads.SMALL_WORK_NO_BLAS` a call runs inline (one core's cost).
    Without the register-tiled kernels (``CONVARITH_JIT=0``, products by BLAS):
    about 0.3 × plain FLOPs for the tiles (0.55 with F(2×2, 3×3) on wide float32
    layers) plus 1500 units per channel pair (44 layers, one core, CPU time, busy
    machine: the choice against flat_rows within 10 % of the faster on all, the
    worst 2×7² with 64 channels at 1.07), and each block of output channels leaves
    :data:`SERIAL_PER_BLOCK` units to the calling thread alone.
    Without numba F(2×2, 3×3) runs as whole-array NumPy passes: ``0.42 × FLOPs +
    3200 × C·F``, fitted on one core (CPU time, float32, batch 1, busy machine;
    flat_rows in brackets): 64 channels on 112² 9.2 ms (11.6), 128 on 56² 8.0
    (10.9), 256 on 28² 10.8 (10.6), 512 on 14² 30 (12.7), on 7² 19 (5.2). With
    dilation and without numba, the einsum transforms: 2.5 times the compiled cost.
    Infinite where too few channels make Winograd a loss.
    """
    if not _worth_it(problem):
        return math.inf
    workers = worker_count()
    c, f = problem.in_channels, problem.out_channels
    pairs = c * f
    wide = np.dtype(problem.dtype) == np.float32 and c > F4_MAX_CHANNELS
    per_flop = 0.55 if wide else 0.3
    if _numba_kernels() is None:
        alone = parallel_penalty(1, workers)  # one thread but for BLAS
        if all(d == 1 for d in problem.dilation):
            return (problem.flops * 0.42 + 3200.0 * pairs) * alone
        return 2.5 * (problem.flops * per_flop + 3000.0 * pairs) * alone
    m = 2 if wide else 4
    a = m + 2
    tiles = problem.batch * _tiling(m, (problem.dilation[0], problem.dilation[1]),
                                    (problem.out_size[0], problem.out_size[1])).per_image
    # below SMALL_WORK_NO_BLAS the tiles run inline, like every algorithm's small jobs
    shared = problem.flops >= SMALL_WORK_NO_BLAS and workers > 1
    itemsize = np.dtype(problem.dtype).itemsize
    blocks = _block_count(problem, m)
    sharing = use_shared_tiles(tiles, a, c, itemsize, blocks > 1)
    if not _llvm.available(problem.dtype):
        # the products by BLAS (``CONVARITH_JIT=0``): 1500 units per pair since the
        # kernel transform's rows (3000 before: 1×14², 64 and 128 channels, ran on
        # flat_rows at 1.15–1.2× Winograd's time)
        penalty = parallel_penalty(min(tiles, workers), workers, blas=False) if shared else 1.0
        serial = SERIAL_PER_BLOCK * (workers - 1) * blocks * shared
        return (problem.flops * per_flop + 1500.0 * pairs) * penalty + serial
    per_product_flop = PER_PRODUCT_FLOP
    if _llvm.max_vectors() * _llvm.vector_width(problem.dtype) * itemsize < 256:
        per_product_flop *= NARROW_BLOCK_SCALE  # registers of 256 bits (AVX2)
    kernel_values = PER_KERNEL_VALUE * a * a * pairs
    if transform_kept(problem):  # made once; read at each call, from memory when large
        kernel_values = (KEPT_VALUE_READ * a * a * pairs
                         if a * a * pairs * itemsize > KEPT_CACHED_BYTES else 0)
    alone = (per_product_flop * 2 * a * a * tiles * pairs + kernel_values
             + PER_TILE_VALUE * a * a * tiles * (c + f) + PER_CALL)
    if not shared:
        return alone
    # on the helpers' tables (_native_shared_tiles) a small call runs on every worker
    native = sharing and m == 4 and transform_kept(problem) and _native_tables_here(problem)
    if sharing and problem.flops < SHARED_SERIAL_FLOPS and not native:  # on one thread
        share = SERIAL_SHARE if (a * a * pairs * itemsize <= SERIAL_TRANSFORM_BYTES
                                 and np.dtype(problem.dtype) == np.float32) else 1.0
        return alone * (1 + share * (workers - 1))
    if sharing:
        width = _llvm.vector_width(problem.dtype)
        block = shared_channel_block(c, f, tiles, a, itemsize, workers, width,
                                     _llvm.max_vectors())
        penalty = parallel_penalty(-(-f // block), workers, blas=False)
        repeats = 0
    else:
        penalty = parallel_penalty(min(tiles, workers), workers, blas=False)
        repeats = blocks - 1
    return (alone * (1 + PARALLEL_EXTRA * (workers - 1)) * penalty
            + (PER_WORKER_HANDOVER + SERIAL_PER_BLOCK * repeats) * (workers - 1))


#: :func:`cost` per FLOP of the compiled path's products (register-tiled kernels).
PER_PRODUCT_FLOP = 0.8

#: :func:`cost` per product FLOP where a register block holds less than 256 bytes of
#: output channels (AVX2: 2 vectors of 8 float32; AVX-512: 4 of 16): the products of
#: few tiles measured 1.2–1.55× their AVX-512 time on 128 to 512 channels
#: (register_tiles' direct kernels about 1.0–1.1×; one core, CPU time, busy machine).
NARROW_BLOCK_SCALE = 1.3

#: :func:`cost` per value of the transformed kernel (made in float64 at each call).
PER_KERNEL_VALUE = 17.0

#: :func:`cost` per value of a kept transformed kernel (:func:`transform_kept`) larger
#: than :data:`KEPT_CACHED_BYTES`, read from memory at each call. Measured on one core
#: (CPU time, busy machine, float32, prepacked kernels; Winograd against register_tiles):
#: 3×3 1024 -> 1024 on one 2² image (a 64 MiB transform) 3.9 against 1.46 ms, 2048 ->
#: 512 on 2×4² 35 against 13.6; 512 -> 512 on one 4² and 7² image (16 MiB) 0.81 against
#: 1.13 and 1.73 against 2.37; 256 -> 256 on one 7² image (9 MiB) 0.35 against 0.64.
KEPT_VALUE_READ = 9.0

#: A kept transformed kernel of at most this many bytes is read from the shared cache
#: (32 MiB here) by a model's layer run again and again; no cost per value.
KEPT_CACHED_BYTES = 16 << 20

#: :func:`cost` per value of the transformed input tiles and of the products.
PER_TILE_VALUE = 3.4

#: :func:`cost` of a call's own steps (checks, buffers, the products' set-up).
PER_CALL = 4.7e6

#: With several workers, the work's core time grows by this share per extra worker
#: (chunks side by side share the caches and the memory bus).
PARALLEL_EXTRA = 0.05

#: Units of :func:`cost` each extra worker adds: the shared tiles' second hand-over
#: (the one-pass algorithms hand over once; ~15 µs of both workers). The fit to
#: serial_fraction's two-worker prediction gave 6.3e6, which also holds the calling
#: thread's own steps, left out of the other algorithms' costs.
PER_WORKER_HANDOVER = 3e6

#: Units of :func:`cost` each block of output channels leaves to the calling thread
#: alone (handing the kernel transform and the tiles to the workers, the blocks'
#: buffers): about 0.1 ms here.
SERIAL_PER_BLOCK = 6e6


def _block_count(problem: ConvProblem, m: int) -> int:
    """Blocks of output channels of the compiled path (:func:`_channel_block`)."""
    itemsize = np.dtype(problem.dtype).itemsize
    c, f, a = problem.in_channels, problem.out_channels, m + 2
    y_bytes = problem.batch * math.prod(problem.out_size) * f * itemsize
    io_bytes = math.prod(problem.input_shape) * itemsize + 9 * c * f * itemsize + y_bytes
    return -(-f // _channel_block(f, a * a * c * itemsize, io_bytes, y_bytes))


@functools.cache
def _transform_gain() -> float:
    """How much the three transforms of F(2×2) or F(4×4) can grow a value, at most: the
    product over ``Bᵀ``, ``G``, ``Aᵀ`` of the largest row or column sum of absolute
    values, squared (two axes)."""
    def spread(matrix: np.ndarray) -> float:
        absolute = np.abs(matrix)
        return float(max(absolute.sum(axis=0).max(), absolute.sum(axis=1).max()))

    return max((spread(t.BT) * spread(t.G) * spread(t.AT)) ** 2
               for t in (transform(2), transform(4)))


def value_gain(problem: ConvProblem) -> float:
    """Bound on any intermediate value over ``max|x| · max|kernel|`` (forward and
    weight gradient): the transforms' growth times the longest sum (the input channels,
    or the output cells summed by the weight gradient).

    >>> p = ConvProblem((1, 10, 10, 32), (3, 3, 32, 32), (1, 1), (1, 1), 1, (8, 8), np.dtype("float32"))
    >>> f"{value_gain(p):.3g}"
    '1.64e+07'
    """
    sums = max(problem.in_channels, problem.batch * math.prod(problem.out_size))
    return _transform_gain() * sums


def _register() -> None:
    register_algorithm("winograd", direct, applies=applies, cost=cost, weight_grad=weight_grad,
                       pads_zeros=True, value_gain=value_gain,
                       weight_grad_cost=gradient_costs.winograd)

    def direct_f2(*args: Any, **kwargs: Any) -> np.ndarray:
        return direct(*args, m=2, **kwargs)

    register_algorithm("winograd_f2", direct_f2, applies=applies, cost=lambda p: math.inf,
                       pads_zeros=True, value_gain=value_gain)


_register()
