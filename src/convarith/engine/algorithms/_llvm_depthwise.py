"""Depthwise row kernels: a sliding window of input vectors along an output row.

A depthwise output cell ``o`` of a row sums ``K`` taps of each kernel row; with
stride ``s`` and dilation ``d`` along the row, cell ``o`` reads input column
``o·s + b·d`` with tap ``b``. ``MR`` neighbouring cells read only the columns
``{m·s + b·d : m < MR, b < K}``: ``MR + K - 1`` of them at stride 1 for ``MR·K``
products, so each input vector is loaded once per kernel row and multiplied
by every tap that reads it. The kernel below keeps ``MR`` accumulators and the
``K`` weight vectors of a kernel row in vector registers, loads the window's
columns in order and does the multiply-adds lane by lane (one lane per
channel, channels-last); the kernel rows are a loop. The stride and dilation
along the row and ``MR`` are compiled in (one module each), so strided cells
load only the columns they read and no lane is wasted.

One module exports ``drive``::

    drive(x, w, y, images, x_image, y_image, rows, tiles, last_start, blocks,
          kernel_rows, x_row, x_tap_row, x_cell, y_row, y_cell, w_tap)

For image ``g < images`` (``x`` and ``y`` advanced by ``g·x_image`` and ``g·y_image``),
output row ``r < rows``, tile ``t < tiles`` (first cell ``o0 = min(t·MR, last_start)``:
the last tile of a row may overlap the one before, recomputing the same values) and
channel block ``c < blocks`` (``VW`` channels each; the inner loop, so a tile's
columns are read whole, in order, while they are in the first-level cache), cell
``o0 + m`` (``m < MR``) is::

    y[r·y_row + (o0 + m)·y_cell + c·VW + j] = Σ_{a < kernel_rows, b < K}
        x[r·x_row + a·x_tap_row + (o0·s + m·s + b·d)·x_cell + c·VW + j]
        · w[(a·K + b)·w_tap + c·VW + j]

(element offsets; every vector is read and written whole, so ``x``, ``w`` and
``y`` hold a multiple of ``VW`` channels per cell).

Examples
--------
>>> import numpy as np
>>> "define void @drive(" in row_module_ir(np.float32, 8, kernel=5, stride=1, dilation=1,
...                                        cells=4)
True
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...arithmetic import window_reach
from ..state import cached_once
from . import _llvm

__all__ = ["row_module_ir", "row_window", "row_cells", "RowKernel", "row_kernel", "row_assembly",
           "DRIVE_FIELDS", "CALL_VALUES", "calls_module_ir", "call_runner", "CallRunner"]

#: The integer arguments of ``drive``, after the three pointers ``x, w, y``.
DRIVE_FIELDS = ("images", "x_image", "y_image", "rows", "tiles", "last_start", "blocks", "kernel_rows", "x_row", "x_tap_row",
                "x_cell", "y_row", "y_cell", "w_tap")

#: Most cells per tile: more shorten the window's overhang (``K - 1`` extra columns
#: per tile) but need more accumulators.
MAX_CELLS = 16


def row_window(kernel: int, stride: int, dilation: int, cells: int) -> list[list[tuple[int, int]]]:
    """For each input column a tile reads, in order, the ``(cell, tap)`` pairs that use it.

    >>> [pairs for pairs in row_window(3, 2, 1, 2)]
    [[(0, 0)], [(0, 1)], [(1, 0), (0, 2)], [(1, 1)], [(1, 2)]]
    """
    columns: dict[int, list[tuple[int, int]]] = {}
    for m in range(cells):
        for b in range(kernel):
            columns.setdefault(m * stride + b * dilation, []).append((m, b))
    return [sorted(columns[i], key=lambda pair: pair[1]) for i in sorted(columns)]


def row_cells(kernel: int, row_length: int, target: _llvm.VectorTarget | None = None) -> int:
    """``MR``: cells per tile for a row of ``row_length`` cells and ``kernel`` taps.

    ``MR`` accumulators, ``kernel`` weights and two loaded columns must fit the
    vector registers (32 with AVX-512 and NEON, 16 with AVX2); a row is cut into
    tiles of equal size (56 cells: 4 tiles of 14), a row shorter than that is one tile.

    >>> row_cells(5, 56, _llvm.target_named("avx512")), row_cells(7, 7, _llvm.target_named("avx2"))
    (14, 7)
    """
    registers = (target or _llvm.vector_target()).registers
    most = max(1, min(MAX_CELLS, registers - kernel - 2))
    tiles = -(-row_length // most)
    return max(1, -(-row_length // tiles))


def row_module_ir(dtype: Any, width: int, *, kernel: int, stride: int, dilation: int,
                  cells: int, streaming: bool = False,
                  columns_read: tuple[int, int] | None = None, lanes: int = 0) -> str:
    """The IR of one module (see the module docstring); ``streaming``: results are stored
    past the caches (non-temporal stores: ``y`` and its cells aligned to whole vectors);
    ``columns_read``: only a tile's columns ``[first, end)`` (counted from its first
    cell's first tap) exist, the others are zero padding: their products are left out
    and nothing reads them (a tile at the edge of a row reads the input in place);
    ``lanes``: only the first ``lanes`` channels of each vector are read and written
    (masked loads and stores: the last, partial vector of a row of channels; 0: all).

    >>> ir = row_module_ir(np.float32, 16, kernel=3, stride=1, dilation=1, cells=2,
    ...                    columns_read=(1, 4))
    >>> ir.count("call <16 x float> @llvm.fma"), ir.count("* %xq")  # products, input loads
    (5, 3)
    """
    ty = _llvm._ir_type(dtype)
    v = f"<{width} x {ty}>"
    p = f"{ty}*"
    fma = f"@llvm.fma.v{width}{_llvm._suffix(ty)}"
    suffix = f"v{width}{_llvm._suffix(ty)}"
    masked = 0 < lanes < width
    mask = "<" + ", ".join(["i1 true"] * lanes + ["i1 false"] * (width - lanes)) + ">"
    load_intrinsic = f"@llvm.masked.load.{suffix}.p0{suffix}"
    store_intrinsic = f"@llvm.masked.store.{suffix}.p0{suffix}"

    def load(name: str, address: str) -> str:
        if masked:
            return (f"  {name} = call {v} {load_intrinsic}({v}* {address}, i32 4, "
                    f"<{width} x i1> {mask}, {v} zeroinitializer)")
        return f"  {name} = load {v}, {v}* {address}, align 4"

    window = row_window(kernel, stride, dilation, cells)
    columns = sorted({m * stride + b * dilation for m in range(cells) for b in range(kernel)})
    if columns_read is not None:
        first, end = columns_read
        kept = [index for index, column in enumerate(columns) if first <= column < end]
        window = [window[index] for index in kept]
        columns = [columns[index] for index in kept]
    tile = [
        f"define internal void @tile({p} %x, {p} %w, {p} %y, i64 %kernel_rows, "
        "i64 %x_tap_row, i64 %x_cell, i64 %y_cell, i64 %w_tap) {",
        "entry:",
        "  br label %row",
        "row:",
        "  %a = phi i64 [0, %entry], [%a1, %row]",
    ]
    body = [
        "  %xa = mul i64 %a, %x_tap_row",
        f"  %wk = mul i64 %a, {kernel}",
        "  %wa = mul i64 %wk, %w_tap",
    ]
    for b in range(kernel):
        body += [
            f"  %wt{b} = mul i64 {b}, %w_tap",
            f"  %wo{b} = add i64 %wa, %wt{b}",
            f"  %wp{b} = getelementptr {ty}, {p} %w, i64 %wo{b}",
            f"  %wq{b} = bitcast {p} %wp{b} to {v}*",
            load(f"%wv{b}", f"%wq{b}"),
        ]
    current = {m: f"%s{m}" for m in range(cells)}
    for index, (column, pairs) in enumerate(zip(columns, window)):
        body += [
            f"  %xt{index} = mul i64 {column}, %x_cell",
            f"  %xo{index} = add i64 %xa, %xt{index}",
            f"  %xp{index} = getelementptr {ty}, {p} %x, i64 %xo{index}",
            f"  %xq{index} = bitcast {p} %xp{index} to {v}*",
            load(f"%xv{index}", f"%xq{index}"),
        ]
        for m, b in pairs:
            name = f"%n{m}_{index}"
            body.append(f"  {name} = call {v} {fma}({v} %xv{index}, {v} %wv{b}, "
                        f"{v} {current[m]})")
            current[m] = name
    # each accumulator enters a kernel row as its value after the row before
    tile += [f"  %s{m} = phi {v} [zeroinitializer, %entry], [{current[m]}, %row]"
             for m in range(cells)]
    tile += body
    tile += [
        "  %a1 = add i64 %a, 1",
        "  %more = icmp slt i64 %a1, %kernel_rows",
        "  br i1 %more, label %row, label %out",
        "out:",
    ]
    for m in range(cells):
        tile += [
            f"  %yt{m} = mul i64 {m}, %y_cell",
            f"  %yp{m} = getelementptr {ty}, {p} %y, i64 %yt{m}",
            f"  %yq{m} = bitcast {p} %yp{m} to {v}*",
            (f"  call void {store_intrinsic}({v} {current[m]}, {v}* %yq{m}, i32 4, "
             f"<{width} x i1> {mask})") if masked else
            (f"  store {v} {current[m]}, {v}* %yq{m}, align {width * _llvm._size(ty)}, "
             "!nontemporal !0") if streaming else
            f"  store {v} {current[m]}, {v}* %yq{m}, align 4",
        ]
    tile += ["  ret void", "}"]
    text = "\n".join(tile)
    arguments = ", ".join(f"i64 %{name}" for name in DRIVE_FIELDS)
    drive = [
        f"define void @drive({p} %x0, {p} %w, {p} %y0, {arguments}) {{",
        "entry:",
        "  %go0 = icmp sgt i64 %rows, 0",
        "  %go1 = icmp sgt i64 %blocks, 0",
        "  %go2 = icmp sgt i64 %tiles, 0",
        "  %go3 = and i1 %go0, %go1",
        "  %go4 = and i1 %go3, %go2",
        "  %go5 = icmp sgt i64 %images, 0",
        "  %go = and i1 %go4, %go5",
        "  br i1 %go, label %g_loop, label %exit",
        "g_loop:",
        "  %g = phi i64 [0, %entry], [%g1, %g_end]",
        "  %gx = mul i64 %g, %x_image",
        f"  %x = getelementptr {ty}, {p} %x0, i64 %gx",
        "  %gy = mul i64 %g, %y_image",
        f"  %y = getelementptr {ty}, {p} %y0, i64 %gy",
        "  br label %r_loop",
        "r_loop:",
        "  %r = phi i64 [0, %g_loop], [%r1, %r_end]",
        "  %xr = mul i64 %r, %x_row",
        "  %yr = mul i64 %r, %y_row",
        "  br label %t_loop",
        "t_loop:",
        "  %t = phi i64 [0, %r_loop], [%t1, %t_end]",
        f"  %tc = mul i64 %t, {cells}",
        "  %late = icmp sgt i64 %tc, %last_start",
        "  %o0 = select i1 %late, i64 %last_start, i64 %tc",
        f"  %ox = mul i64 %o0, {stride}",
        "  %oxc = mul i64 %ox, %x_cell",
        "  %xo = add i64 %xr, %oxc",
        "  %oyc = mul i64 %o0, %y_cell",
        "  %yo = add i64 %yr, %oyc",
        "  br label %c_loop",
        "c_loop:",
        "  %c = phi i64 [0, %t_loop], [%c1, %c_loop]",
        f"  %cv = mul i64 %c, {width}",
        f"  %wc = getelementptr {ty}, {p} %w, i64 %cv",
        "  %xoc = add i64 %xo, %cv",
        f"  %xt = getelementptr {ty}, {p} %x, i64 %xoc",
        "  %yoc = add i64 %yo, %cv",
        f"  %yt = getelementptr {ty}, {p} %y, i64 %yoc",
        f"  call void @tile({p} %xt, {p} %wc, {p} %yt, i64 %kernel_rows, i64 %x_tap_row, "
        "i64 %x_cell, i64 %y_cell, i64 %w_tap)",
        "  %c1 = add i64 %c, 1",
        "  %cm = icmp slt i64 %c1, %blocks",
        "  br i1 %cm, label %c_loop, label %t_end",
        "t_end:",
        "  %t1 = add i64 %t, 1",
        "  %tm = icmp slt i64 %t1, %tiles",
        "  br i1 %tm, label %t_loop, label %r_end",
        "r_end:",
        "  %r1 = add i64 %r, 1",
        "  %rm = icmp slt i64 %r1, %rows",
        "  br i1 %rm, label %r_loop, label %g_end",
        "g_end:",
        "  %g1 = add i64 %g, 1",
        "  %gm = icmp slt i64 %g1, %images",
        "  br i1 %gm, label %g_loop, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]
    parts = [f"declare {v} {fma}({v}, {v}, {v})", text, "\n".join(drive)]
    if masked:
        parts[:0] = [f"declare {v} {load_intrinsic}({v}*, i32, <{width} x i1>, {v})",
                     f"declare void {store_intrinsic}({v}, {v}*, i32, <{width} x i1>)"]
    return "\n\n".join(parts + (["!0 = !{i32 1}"] if streaming else [])) + "\n"


@dataclass(frozen=True)
class RowKernel:
    """One compiled module: ``drive`` (and its address) and the tile it was made for."""

    cells: int
    width: int
    stride: int
    drive: Any
    engine: Any  # keeps the machine code alive
    address: int = 0


#: int64 values per call in the table :func:`call_runner` walks: the address of a
#: module's ``drive``, the byte offsets of its ``x``, ``w`` and ``y``, its integer fields.
CALL_VALUES = 4 + len(DRIVE_FIELDS)


def calls_module_ir() -> str:
    """The IR of ``drive(x, w, y, table, count)``: for each of the ``count`` rows of
    :data:`CALL_VALUES` int64 values in ``table``, calls the ``drive`` whose address the
    row starts with at ``x``, ``w`` and ``y`` advanced by the row's byte offsets, with its
    fields (one call from Python for a job's calls, each of which costs ~2 µs there).

    >>> "inttoptr" in calls_module_ir()
    True
    """
    fields = len(DRIVE_FIELDS)
    signature = "void (i8*, i8*, i8*" + ", i64" * fields + ")*"
    lines = [
        "define void @drive(i8* %x, i8* %w, i8* %y, i64* %table, i64 %count) {",
        "entry:",
        "  %go = icmp sgt i64 %count, 0",
        "  br i1 %go, label %loop, label %exit",
        "loop:",
        "  %i = phi i64 [0, %entry], [%i1, %loop]",
        f"  %row = mul i64 %i, {CALL_VALUES}",
    ]
    for k in range(CALL_VALUES):
        lines += [f"  %q{k} = add i64 %row, {k}",
                  f"  %p{k} = getelementptr i64, i64* %table, i64 %q{k}",
                  f"  %v{k} = load i64, i64* %p{k}"]
    lines += [f"  %fn = inttoptr i64 %v0 to {signature}",
              "  %xa = getelementptr i8, i8* %x, i64 %v1",
              "  %wa = getelementptr i8, i8* %w, i64 %v2",
              "  %ya = getelementptr i8, i8* %y, i64 %v3"]
    arguments = ", ".join(f"i64 %v{4 + k}" for k in range(fields))
    lines += [f"  call void %fn(i8* %xa, i8* %wa, i8* %ya, {arguments})",
              "  %i1 = add i64 %i, 1",
              "  %more = icmp slt i64 %i1, %count",
              "  br i1 %more, label %loop, label %exit",
              "exit:",
              "  ret void",
              "}"]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class CallRunner:
    """The compiled module of :func:`calls_module_ir`: ``drive(x, w, y, table, count)``
    (addresses), and ``call``: the same through numba, with the arrays themselves
    (``None`` without numba; :func:`array_caller`)."""

    drive: Any
    engine: Any  # keeps the machine code alive
    call: Any = None


def array_caller(address: int) -> Any:
    """The runner's ``drive`` at ``address`` through numba (``None`` without numba):
    ``call(x, w, y, table, count)`` with arrays passes their addresses.

    A ctypes call costs about 1 µs and each ``a.ctypes.data`` 1 µs more (4 µs a
    call of :func:`.depthwise.tiles` on one image of 4²×1152, 3×3, whose kernels
    take 4 µs); numba reads the addresses as it takes the arrays. Compiled at the
    first call for each layout of the arrays.
    """
    try:
        import numba
    except ImportError:
        return None
    integer = ctypes.c_int64  # (numba passes the addresses as integers)
    drive = ctypes.CFUNCTYPE(None, integer, integer, integer, integer, integer)(address)

    @numba.njit(nogil=True, cache=False)
    def call(x: Any, w: Any, y: Any, table: Any, count: int) -> None:
        drive(x.ctypes.data, w.ctypes.data, y.ctypes.data, table.ctypes.data, count)

    return call


def call_runner(target: _llvm.VectorTarget | None = None) -> CallRunner | None:
    """:func:`calls_module_ir` compiled for ``target`` (default: the one in use);
    ``None`` without the compiled kernels."""
    return _call_runner(target or _llvm.vector_target())


@cached_once
def _call_runner(target: _llvm.VectorTarget) -> CallRunner | None:
    llvm = _llvm._llvm()
    if llvm is None or not target.runs_here:
        return None
    address, engine = _llvm.compile_drive(llvm, target, calls_module_ir())
    pointer = ctypes.c_void_p
    drive = ctypes.CFUNCTYPE(None, pointer, pointer, pointer, pointer, ctypes.c_int64)(address)
    return CallRunner(drive, engine, array_caller(address))


def row_kernel(dtype: Any, *, kernel: int, stride: int, dilation: int, cells: int,
               target: _llvm.VectorTarget | None = None, streaming: bool = False,
               columns_read: tuple[int, int] | None = None, lanes: int = 0
               ) -> RowKernel | None:
    """The compiled module on ``target`` (default: the one in use; ``None``: no compiled
    kernels here); ``streaming``, ``columns_read`` and ``lanes`` as in
    :func:`row_module_ir`."""
    return _row_kernel(np.dtype(dtype), kernel, stride, dilation, cells,
                       target or _llvm.vector_target(), streaming, columns_read, lanes)


@cached_once
def _row_kernel(dtype: np.dtype[Any], kernel: int, stride: int, dilation: int, cells: int,
                target: _llvm.VectorTarget, streaming: bool = False,
                columns_read: tuple[int, int] | None = None, lanes: int = 0
                ) -> RowKernel | None:
    llvm = _llvm._llvm()
    width = target.width(dtype)
    if llvm is None or not target.runs_here or width == 0 or dtype.char not in "fd":
        return None
    ir = row_module_ir(dtype, width, kernel=kernel, stride=stride, dilation=dilation,
                       cells=cells, streaming=streaming, columns_read=columns_read,
                       lanes=lanes)
    address, engine = _llvm.compile_drive(llvm, target, ir)
    pointer = ctypes.c_void_p
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, pointer,
                                 *([ctypes.c_int64] * len(DRIVE_FIELDS)))
    return RowKernel(cells, width, stride, signature(address), engine, address)


def row_assembly(target: _llvm.VectorTarget, dtype: Any, *, kernel: int, stride: int,
                 dilation: int, cells: int, streaming: bool = False,
                 columns_read: tuple[int, int] | None = None) -> str:
    """The machine code of a module for ``target``, as assembly text (checks that the IR
    compiles for an instruction set this machine need not run; ``RuntimeError`` without
    llvmlite)."""
    return _llvm.ir_assembly(row_module_ir(dtype, target.width(dtype), kernel=kernel,
                                           stride=stride, dilation=dilation, cells=cells,
                                           streaming=streaming, columns_read=columns_read),
                             target)


#: The integer arguments of a weight-gradient module's ``drive``, after its three
#: pointers ``x, dy, sums`` (see :func:`grad_module_ir`).
GRAD_FIELDS = ("first", "last", "out_rows", "in_rows", "stride", "dilation", "pad",
               "kernel_rows", "blocks", "channels", "sums_tap", "prefetch")


def grad_tiles(kernel: int, stride: int, dilation: int, pad: int, in_width: int,
               out_width: int, cells: int) -> list[tuple[int, int, bool]]:
    """An output row cut into tiles of at most ``cells`` cells, as ``(first cell, cells,
    inside)``; ``inside``: every tap of every cell reads a column of the input (not
    the zero padding). Tiles are as equal as possible (56 cells by 16: 14, 14, 14, 14).

    >>> grad_tiles(3, 1, 1, 1, 8, 8, 3)
    [(0, 3, False), (3, 3, True), (6, 2, False)]
    """
    count = -(-out_width // max(1, cells))
    size, extra = divmod(out_width, count)
    tiles, first = [], 0
    for index in range(count):
        length = size + (index < extra)
        last_column = window_reach(first + length, kernel, stride, dilation) - 1 - pad
        tiles.append((first, length, first * stride - pad >= 0 and last_column < in_width))
        first += length
    return tiles


def grad_cells(kernel: int, target: _llvm.VectorTarget | None = None) -> tuple[int, int]:
    """``(MR, sets)``: most cells per tile and accumulator sets for a kernel row of
    ``kernel`` taps. A tap's sum is one chain of dependent multiply-adds; two sets
    (even and odd cells) keep ``2·kernel`` chains in flight where the registers allow,
    and the ``MR`` output-gradient vectors of a tile, the accumulators and two input
    columns must fit the vector registers.

    >>> grad_cells(3, _llvm.target_named("avx512")), grad_cells(3, _llvm.target_named("avx2"))
    ((16, 2), (8, 2))
    """
    registers = (target or _llvm.vector_target()).registers
    sets = 2 if 2 * kernel <= registers // 2 else 1
    return max(1, min(MAX_CELLS, registers - sets * kernel - 2)), sets


def grad_module_ir(dtype: Any, width: int, *, kernel: int, stride: int, dilation: int,
                   pad: int, in_width: int, out_width: int, cells: int, sets: int = 1,
                   lanes: int = 0) -> str:
    """The IR of a depthwise weight-gradient module (multiplier 1, channels-last)::

        drive(x, dy, sums, first, last, out_rows, in_rows, stride, dilation, pad,
              kernel_rows, blocks, channels, sums_tap, prefetch)

    adds to the float64 ``sums`` (``(kernel_rows, kernel, sums_tap)``) the products of
    output rows ``first .. last - 1`` (counted over the images: ``dy`` is
    ``(images, out_rows, out_width, channels)``, ``x`` ``(images, in_rows, in_width,
    channels)``, both contiguous)::

        sums[a, b, c] += Σ_{row, o} x[n, oh·stride + a·dilation - pad,
                                      o·s + b·d - p, c] · dy[n, oh, o, c]

    over the taps that read inside ``x`` (the rest is zero padding). Along a row the
    stride ``s``, dilation ``d``, padding ``p``, the widths and the tiles of ``cells``
    cells are compiled in; the rows are the argument ones. For each output row, kernel
    row and block of ``width`` channels (``blocks`` of them, then, with ``lanes``, one
    block of that many channels by masked loads), the ``kernel`` sums of the row
    stay in registers (``sets`` of them, alternate cells: independent chains) while
    each tile's output-gradient vectors are loaded once and each input column once,
    multiplied by every cell that reads it; a row's sums, in ``x``'s dtype (at most
    ``out_width`` terms), are then added to ``sums`` in float64. With ``prefetch`` not 0,
    each output row first asks the caches for the input rows the next one reads first
    and for its output gradients (the blocks of channels read a row in strided passes,
    which the hardware fetches poorly from memory).

    >>> ir = grad_module_ir(np.float32, 16, kernel=3, stride=1, dilation=1, pad=1,
    ...                     in_width=4, out_width=4, cells=4)
    >>> ir.count("call <16 x float> @llvm.fma")  # 4 cells x 3 taps, less 2 on the padding
    10
    """
    ty = _llvm._ir_type(dtype)
    v = f"<{width} x {ty}>"
    p = f"{ty}*"
    vd = f"<{width} x double>"
    fma = f"@llvm.fma.v{width}{_llvm._suffix(ty)}"
    suffix = f"v{width}{_llvm._suffix(ty)}"
    load_intrinsic = f"@llvm.masked.load.{suffix}.p0{suffix}"
    counter = iter(range(1 << 30))

    def fresh(stem: str) -> str:
        return f"%{stem}{next(counter)}"

    def body(name: str, masked: bool) -> list[str]:
        mask = "<" + ", ".join(["i1 true"] * lanes + ["i1 false"] * (width - lanes)) + ">"

        def load(lines: list[str], base: str, offset: str) -> str:
            address, vector, value = fresh("p"), fresh("q"), fresh("v")
            lines += [f"  {address} = getelementptr {ty}, {p} {base}, i64 {offset}",
                      f"  {vector} = bitcast {p} {address} to {v}*"]
            if masked:
                lines.append(f"  {value} = call {v} {load_intrinsic}({v}* {vector}, i32 4, "
                             f"<{width} x i1> {mask}, {v} zeroinitializer)")
            else:
                lines.append(f"  {value} = load {v}, {v}* {vector}, align 4")
            return value

        lines = [f"define internal void @{name}({p} %x, {p} %dy, double* %sums, i64 %cell, "
                 "i64 %sums_tap) {", "entry:"]
        sums = {(b, k): "zeroinitializer" for b in range(kernel) for k in range(sets)}

        def tile(lines: list[str], first: str, length: int, static_first: int | None) -> None:
            # first: the tile's first cell (a constant or a register)
            x_column, y_cell = fresh("xc"), fresh("yc")
            lines += [f"  {x_column} = mul i64 {first}, {stride}",
                      f"  {y_cell} = mul i64 {first}, %cell"]
            grads = []
            for m in range(length):
                offset = fresh("o")
                lines.append(f"  {offset} = mul i64 {m}, %cell")
                at = fresh("o")
                lines.append(f"  {at} = add i64 {offset}, {y_cell}")
                grads.append(load(lines, "%dy", at))
            for column, pairs in zip(
                    sorted({m * stride + b * dilation for m in range(length)
                            for b in range(kernel)}),
                    row_window(kernel, stride, dilation, length)):
                if static_first is not None:
                    absolute = static_first * stride + column - pad
                    if not 0 <= absolute < in_width:
                        continue
                index, at = fresh("i"), fresh("o")
                lines += [f"  {index} = add i64 {x_column}, {column - pad}",
                          f"  {at} = mul i64 {index}, %cell"]
                value = load(lines, "%x", at)
                for m, b in pairs:
                    name = fresh("s")
                    k = m % sets
                    lines.append(f"  {name} = call {v} {fma}({v} {value}, {v} {grads[m]}, "
                                 f"{v} {sums[b, k]})")
                    sums[b, k] = name

        tiles = grad_tiles(kernel, stride, dilation, pad, in_width, out_width, cells)
        block = "entry"
        index = 0
        while index < len(tiles):
            first, length, inside = tiles[index]
            run = index
            while (run + 1 < len(tiles) and inside and tiles[run + 1][2]
                   and tiles[run + 1][1] == length):
                run += 1
            if run == index:
                tile(lines, str(first), length, first)
                index += 1
                continue
            count = run - index + 1
            loop = fresh("loop")[1:]
            before = {key: value for key, value in sums.items()}
            lines.append(f"  br label %{loop}")
            lines.append(f"{loop}:")
            turn = f"%{loop}_t"
            next_turn = f"%{loop}_t1"
            phis = {key: f"%{loop}_s{key[0]}_{key[1]}" for key in sums}
            after: dict[tuple[int, int], str] = {}
            phi_lines_at = len(lines)
            lines.append(f"  {turn} = phi i64 [0, %{block}], [{next_turn}, %{loop}]")
            sums.update(phis)
            start = fresh("f")
            lines += [f"  {start} = mul i64 {turn}, {length}",
                      f"  {start}b = add i64 {start}, {first}"]
            tile(lines, f"{start}b", length, None)
            after = dict(sums)
            lines[phi_lines_at + 1:phi_lines_at + 1] = [
                f"  {phis[key]} = phi {v} [{before[key]}, %{block}], [{after[key]}, %{loop}]"
                for key in phis]
            lines += [f"  {next_turn} = add i64 {turn}, 1",
                      f"  %{loop}_more = icmp slt i64 {next_turn}, {count}",
                      f"  br i1 %{loop}_more, label %{loop}, label %{loop}_end",
                      f"{loop}_end:"]
            block = f"{loop}_end"
            index = run + 1
        for b in range(kernel):
            total = sums[b, 0]
            for k in range(1, sets):
                added = fresh("t")
                lines.append(f"  {added} = fadd {v} {total}, {sums[b, k]}")
                total = added
            if total == "zeroinitializer":
                continue
            if ty != "double":
                wide = fresh("w")
                lines.append(f"  {wide} = fpext {v} {total} to {vd}")
                total = wide
            offset, address, vector, old, new = (fresh("o"), fresh("p"), fresh("q"),
                                                 fresh("v"), fresh("n"))
            lines += [f"  {offset} = mul i64 {b}, %sums_tap",
                      f"  {address} = getelementptr double, double* %sums, i64 {offset}",
                      f"  {vector} = bitcast double* {address} to {vd}*",
                      f"  {old} = load {vd}, {vd}* {vector}, align 8",
                      f"  {new} = fadd {vd} {old}, {total}",
                      f"  store {vd} {new}, {vd}* {vector}, align 8"]
        lines += ["  ret void", "}"]
        return lines

    arguments = ", ".join(f"i64 %{name}" for name in GRAD_FIELDS)
    common = "i64 %a_lo, i64 %a_hi, i64 %h0, i64 %dilation, i64 %x_row, i64 %sums_row, " \
        "i64 %channels, i64 %sums_tap"
    rows_args = f"{p} %xc, {p} %dyc, double* %sc, {common}"
    tail_args = f"{p} %xt, {p} %dyt, double* %st, {common}"
    drive = [
        f"define void @drive({p} %x, {p} %dy, double* %sums, {arguments}) {{",
        "entry:",
        "  %go = icmp slt i64 %first, %last",
        "  br i1 %go, label %r_loop, label %exit",
        "r_loop:",
        "  %r = phi i64 [%first, %entry], [%r1, %r_end]",
        "  %n = sdiv i64 %r, %out_rows",
        "  %oh = srem i64 %r, %out_rows",
        "  %h0s = mul i64 %oh, %stride",
        "  %h0 = sub i64 %h0s, %pad",
        "  %above = sub i64 0, %h0",
        "  %clipped = icmp sgt i64 %above, 0",
        "  %dm1 = sub i64 %dilation, 1",
        "  %up = add i64 %above, %dm1",
        "  %lo_c = sdiv i64 %up, %dilation",
        "  %a_lo = select i1 %clipped, i64 %lo_c, i64 0",
        "  %top0 = sub i64 %in_rows, 1",
        "  %top = sub i64 %top0, %h0",
        "  %inside = icmp sge i64 %top, 0",
        "  %hi_q = sdiv i64 %top, %dilation",
        "  %hi_c = add i64 %hi_q, 1",
        "  %hi_s = select i1 %inside, i64 %hi_c, i64 0",
        "  %hi_k = icmp slt i64 %hi_s, %kernel_rows",
        "  %a_hi = select i1 %hi_k, i64 %hi_s, i64 %kernel_rows",
        f"  %x_row = mul i64 %channels, {in_width}",
        "  %x_image = mul i64 %x_row, %in_rows",
        "  %xn = mul i64 %n, %x_image",
        f"  %xi = getelementptr {ty}, {p} %x, i64 %xn",
        f"  %y_row = mul i64 %channels, {out_width}",
        "  %yr = mul i64 %r, %y_row",
        f"  %dyr = getelementptr {ty}, {p} %dy, i64 %yr",
        f"  %sums_row = mul i64 %sums_tap, {kernel}",
        "  %kernel_rows_m1 = sub i64 %kernel_rows, 1",
        # the input rows the next output row reads first (below this row's) and its
        # output gradients are fetched into the caches while this row runs: the blocks of
        # channels read a row in strided passes, which the hardware fetches poorly
        "  %kd = mul i64 %dilation, %kernel_rows_m1",
        "  %pf_h = add i64 %h0, %kd",
        "  %pf_h1 = add i64 %pf_h, 1",
        "  %pf_room = sub i64 %in_rows, %pf_h1",
        "  %pf_few = icmp slt i64 %pf_room, %stride",
        "  %pf_rows0 = select i1 %pf_few, i64 %pf_room, i64 %stride",
        "  %pf_none = icmp slt i64 %pf_rows0, 0",
        "  %pf_rows = select i1 %pf_none, i64 0, i64 %pf_rows0",
        "  %pf_x_elems = mul i64 %pf_rows, %x_row",
        f"  %pf_x_lines = udiv i64 %pf_x_elems, {64 // _llvm._size(ty)}",
        "  %pf_xo = mul i64 %pf_h1, %x_row",
        f"  %pf_xp = getelementptr {ty}, {p} %xi, i64 %pf_xo",
        f"  %pf_x = bitcast {p} %pf_xp to i8*",
        f"  %pf_yp = getelementptr {ty}, {p} %dyr, i64 %y_row",
        f"  %pf_y = bitcast {p} %pf_yp to i8*",
        "  %pf_r1 = add i64 %r, 1",
        "  %pf_more = icmp slt i64 %pf_r1, %last",
        f"  %pf_y_lines0 = udiv i64 %y_row, {64 // _llvm._size(ty)}",
        "  %pf_y_lines = select i1 %pf_more, i64 %pf_y_lines0, i64 0",
        "  %pf_lines = add i64 %pf_x_lines, %pf_y_lines",
        "  %pf_some = icmp sgt i64 %pf_lines, 0",
        "  %pf_asked = icmp ne i64 %prefetch, 0",
        "  %pf_any = and i1 %pf_some, %pf_asked",
        "  br i1 %pf_any, label %pf_loop, label %pf_end",
        "pf_loop:",
        "  %pf_i = phi i64 [0, %r_loop], [%pf_i1, %pf_loop]",
        "  %pf_in_x = icmp slt i64 %pf_i, %pf_x_lines",
        "  %pf_yi = sub i64 %pf_i, %pf_x_lines",
        "  %pf_base = select i1 %pf_in_x, i8* %pf_x, i8* %pf_y",
        "  %pf_line = select i1 %pf_in_x, i64 %pf_i, i64 %pf_yi",
        "  %pf_byte = mul i64 %pf_line, 64",
        "  %pf_at = getelementptr i8, i8* %pf_base, i64 %pf_byte",
        "  call void @llvm.prefetch.p0i8(i8* %pf_at, i32 0, i32 2, i32 1)",
        "  %pf_i1 = add i64 %pf_i, 1",
        "  %pf_go = icmp slt i64 %pf_i1, %pf_lines",
        "  br i1 %pf_go, label %pf_loop, label %pf_end",
        "pf_end:",
        "  %any = icmp slt i64 %a_lo, %a_hi",
        "  br i1 %any, label %c_start, label %r_end",
        "c_start:",
        "  %some = icmp sgt i64 %blocks, 0",
        "  br i1 %some, label %c_loop, label %c_end",
        "c_loop:",
        "  %c = phi i64 [0, %c_start], [%c1, %c_loop]",
        f"  %cv = mul i64 %c, {width}",
        f"  %xc = getelementptr {ty}, {p} %xi, i64 %cv",
        f"  %dyc = getelementptr {ty}, {p} %dyr, i64 %cv",
        "  %sc = getelementptr double, double* %sums, i64 %cv",
        f"  call void @rows_row({rows_args})",
        "  %c1 = add i64 %c, 1",
        "  %cm = icmp slt i64 %c1, %blocks",
        "  br i1 %cm, label %c_loop, label %c_end",
        "c_end:",
    ]
    if 0 < lanes < width:
        drive += [
            f"  %tv = mul i64 %blocks, {width}",
            f"  %xt = getelementptr {ty}, {p} %xi, i64 %tv",
            f"  %dyt = getelementptr {ty}, {p} %dyr, i64 %tv",
            "  %st = getelementptr double, double* %sums, i64 %tv",
            f"  call void @rows_tail({tail_args})",
        ]
    drive += [
        "  br label %r_end",
        "r_end:",
        "  %r1 = add i64 %r, 1",
        "  %rm = icmp slt i64 %r1, %last",
        "  br i1 %rm, label %r_loop, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]

    def rows(name: str) -> str:
        # the kernel rows a_lo .. a_hi - 1 of one block of channels, one output row
        return "\n".join([
            f"define internal void @rows_{name}({p} %x, {p} %dy, double* %sums, i64 %a_lo, "
            "i64 %a_hi, i64 %h0, i64 %dilation, i64 %x_row, i64 %sums_row, i64 %channels, "
            "i64 %sums_tap) {",
            "entry:",
            "  br label %a_loop",
            "a_loop:",
            "  %a = phi i64 [%a_lo, %entry], [%a1, %a_loop]",
            "  %ad = mul i64 %a, %dilation",
            "  %h = add i64 %h0, %ad",
            "  %xh = mul i64 %h, %x_row",
            f"  %xa = getelementptr {ty}, {p} %x, i64 %xh",
            "  %sa_o = mul i64 %a, %sums_row",
            "  %sa = getelementptr double, double* %sums, i64 %sa_o",
            f"  call void @{name}({p} %xa, {p} %dy, double* %sa, i64 %channels, i64 %sums_tap)",
            "  %a1 = add i64 %a, 1",
            "  %am = icmp slt i64 %a1, %a_hi",
            "  br i1 %am, label %a_loop, label %exit",
            "exit:",
            "  ret void",
            "}"])

    parts = ["declare void @llvm.prefetch.p0i8(i8*, i32, i32, i32)",
             f"declare {v} {fma}({v}, {v}, {v})", "\n".join(body("row", False)), rows("row")]
    if 0 < lanes < width:
        parts += [f"declare {v} {load_intrinsic}({v}*, i32, <{width} x i1>, {v})",
                  "\n".join(body("tail", True)), rows("tail")]
    return "\n\n".join(parts + ["\n".join(drive)]) + "\n"


@dataclass(frozen=True)
class GradKernel:
    """One compiled weight-gradient module: ``drive`` (see :func:`grad_module_ir`)."""

    width: int
    drive: Any
    engine: Any  # keeps the machine code alive


def grad_kernel(dtype: Any, *, kernel: int, stride: int, dilation: int, pad: int,
                in_width: int, out_width: int, lanes: int = 0,
                target: _llvm.VectorTarget | None = None) -> GradKernel | None:
    """The compiled :func:`grad_module_ir` module on ``target`` (default: the one in use;
    ``None``: no compiled kernels here), its tiles and sets by :func:`grad_cells`."""
    return _grad_kernel(np.dtype(dtype), kernel, stride, dilation, pad, in_width, out_width,
                        lanes, target or _llvm.vector_target())


@cached_once
def _grad_kernel(dtype: np.dtype[Any], kernel: int, stride: int, dilation: int, pad: int,
                 in_width: int, out_width: int, lanes: int, target: _llvm.VectorTarget
                 ) -> GradKernel | None:
    llvm = _llvm._llvm()
    width = target.width(dtype)
    if llvm is None or not target.runs_here or width == 0 or dtype.char not in "fd":
        return None
    cells, sets = grad_cells(kernel, target)
    ir = grad_module_ir(dtype, width, kernel=kernel, stride=stride, dilation=dilation,
                        pad=pad, in_width=in_width, out_width=out_width, cells=cells,
                        sets=sets, lanes=lanes)
    address, engine = _llvm.compile_drive(llvm, target, ir)
    pointer = ctypes.c_void_p
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, pointer,
                                 *([ctypes.c_int64] * len(GRAD_FIELDS)))
    return GradKernel(width, signature(address), engine)
