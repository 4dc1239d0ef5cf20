"""Batched matrix transposes, compiled: blocks of ``T × T`` elements turned in the
vector registers.

NumPy copies a transposed view one element at a time, its reads a whole row
apart: a 3×3 kernel of 512 → 512 channels (9 matrices of 512 × 512) took 2.8 ms
to flip and swap (:func:`.core.flip_swap`), 7× the time of a plain copy of it
(one core of the 2-core EPYC). Here each block of ``T`` rows of ``T`` elements
is read as ``T`` vectors, transposed by ``log2 T`` rounds of interleaving
shuffles (row ``j`` with row ``j + T/2``: the low halves' lanes alternately
into row ``2j``, the high halves' into row ``2j + 1``; after the last round row
``i`` holds column ``i``) and written as ``T`` vectors; the rows and columns
past the last whole block one element at a time.

One module (a dtype, a block size ``T``, a vector target) exports ``drive``::

    drive(src, dst, n1, s1, d1, n2, s2, d2, rows, cols, src_row, dst_row)

which, for ``a < n1``, ``b < n2``, ``r < rows``, ``c < cols``, sets::

    dst[a·d1 + b·d2 + c·dst_row + r] = src[a·s1 + b·s2 + r·src_row + c]

(strides in elements, any sign: a negative ``s1`` walks the matrices backwards).

Examples
--------
>>> import numpy as np
>>> ir = module_ir(np.float32, 8)
>>> "define void @drive(" in ir and "shufflevector" in ir
True
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..state import cached_once, environment
from . import _llvm

__all__ = ["module_ir", "Transposer", "transposer", "block_size", "transpose_into", "PANEL"]

#: Rows and columns of a panel: its blocks are turned before the next panel's, so that
#: the panel's rows of ``src`` and of ``dst`` (4 × 64 lines at most) stay in the
#: first-level cache.
PANEL = 64


def _shuffled(ty: str, size: int, tag: str, rows: list[str]) -> tuple[list[str], list[str]]:
    """IR that transposes the ``size`` vectors named ``rows`` (a block's rows): the
    lines and the names of the block's columns."""
    vector = f"<{size} x {ty}>"
    half = size // 2
    low = ", ".join(f"i32 {x}" for i in range(half) for x in (i, size + i))
    high = ", ".join(f"i32 {x}" for i in range(half, size) for x in (i, size + i))
    lines: list[str] = []
    round_ = 0
    while 1 << round_ < size:
        turned = []
        for j in range(half):
            a, b = rows[j], rows[j + half]
            lo, hi = f"%{tag}r{round_}_{2 * j}", f"%{tag}r{round_}_{2 * j + 1}"
            lines += [f"  {lo} = shufflevector {vector} {a}, {vector} {b}, <{size} x i32> <{low}>",
                      f"  {hi} = shufflevector {vector} {a}, {vector} {b}, <{size} x i32> <{high}>"]
            turned += [lo, hi]
        rows = turned
        round_ += 1
    return lines, rows


def module_ir(dtype: Any, size: int) -> str:
    """The module's IR for ``dtype`` (float32 or float64) and blocks of ``size × size``
    (a power of two, at least 2)."""
    if size < 2 or size & (size - 1):
        raise ValueError(f"size must be a power of two of at least 2, got {size}")
    ty = _llvm._ir_type(dtype)
    p = f"{ty}*"
    vector = f"<{size} x {ty}>"
    align = _llvm._size(ty)
    loads = []
    for i in range(size):
        loads += [f"  %o{i} = mul i64 %srow, {i}",
                  f"  %sp{i} = getelementptr {ty}, {p} %s, i64 %o{i}",
                  f"  %sq{i} = bitcast {p} %sp{i} to {vector}*",
                  f"  %v{i} = load {vector}, {vector}* %sq{i}, align {align}"]
    turned, columns = _shuffled(ty, size, "t", [f"%v{i}" for i in range(size)])
    stores = []
    for j, column in enumerate(columns):
        stores += [f"  %w{j} = mul i64 %drow, {j}",
                   f"  %dp{j} = getelementptr {ty}, {p} %d, i64 %w{j}",
                   f"  %dq{j} = bitcast {p} %dp{j} to {vector}*",
                   f"  store {vector} {column}, {vector}* %dq{j}, align {align}"]
    lines = [
        # one block: s at its first row's first element, d at its first column's
        f"define internal void @tile({p} %s, {p} %d, i64 %srow, i64 %drow) alwaysinline {{",
        "entry:",
        *loads, *turned, *stores,
        "  ret void",
        "}",
        "",
        # rows [r_lo, r_hi) and columns [c_lo, c_hi), one element at a time
        f"define internal void @rect({p} %src, {p} %dst, i64 %r_lo, i64 %r_hi, i64 %c_lo, "
        "i64 %c_hi, i64 %srow, i64 %drow) {",
        "entry:",
        "  br label %rhead",
        "rhead:",
        "  %r = phi i64 [%r_lo, %entry], [%r1, %rnext]",
        "  %rin = icmp slt i64 %r, %r_hi",
        "  br i1 %rin, label %rbody, label %done",
        "rbody:",
        "  %sr = mul i64 %r, %srow",
        "  br label %chead",
        "chead:",
        "  %c = phi i64 [%c_lo, %rbody], [%c1, %cbody]",
        "  %cin = icmp slt i64 %c, %c_hi",
        "  br i1 %cin, label %cbody, label %rnext",
        "cbody:",
        "  %so = add i64 %sr, %c",
        "  %sp = getelementptr " f"{ty}, {p} %src, i64 %so",
        f"  %x = load {ty}, {p} %sp, align {align}",
        "  %dc = mul i64 %c, %drow",
        "  %do = add i64 %dc, %r",
        f"  %dp = getelementptr {ty}, {p} %dst, i64 %do",
        f"  store {ty} %x, {p} %dp, align {align}",
        "  %c1 = add i64 %c, 1",
        "  br label %chead",
        "rnext:",
        "  %r1 = add i64 %r, 1",
        "  br label %rhead",
        "done:",
        "  ret void",
        "}",
        "",
        # one matrix: the whole blocks, by panels of PANEL × PANEL elements (a panel's
        # rows of src and of dst stay in the first-level cache while its blocks are
        # turned), then the columns and rows past the last whole block
        f"define internal void @matrix({p} %src, {p} %dst, i64 %rows, i64 %cols, i64 %srow, "
        "i64 %drow) {",
        "entry:",
        f"  %rt = and i64 %rows, {-size}",
        f"  %ct = and i64 %cols, {-size}",
        "  br label %phead",
        "phead:",  # panels of rows
        "  %pr = phi i64 [0, %entry], [%pr1, %pnext]",
        "  %prin = icmp slt i64 %pr, %rt",
        "  br i1 %prin, label %pbody, label %edges",
        "pbody:",
        f"  %pr1 = add i64 %pr, {PANEL}",
        "  %prf = icmp slt i64 %pr1, %rt",
        "  %prend = select i1 %prf, i64 %pr1, i64 %rt",
        "  br label %qhead",
        "qhead:",  # panels of columns
        "  %pc = phi i64 [0, %pbody], [%pc1, %qnext]",
        "  %pcin = icmp slt i64 %pc, %ct",
        "  br i1 %pcin, label %qbody, label %pnext",
        "qbody:",
        f"  %pc1 = add i64 %pc, {PANEL}",
        "  %pcf = icmp slt i64 %pc1, %ct",
        "  %pcend = select i1 %pcf, i64 %pc1, i64 %ct",
        "  br label %rhead",
        "rhead:",
        "  %r = phi i64 [%pr, %qbody], [%r1, %rnext]",
        "  %rin = icmp slt i64 %r, %prend",
        "  br i1 %rin, label %rbody, label %qnext",
        "rbody:",
        "  %sr = mul i64 %r, %srow",
        f"  %sb = getelementptr {ty}, {p} %src, i64 %sr",
        f"  %db = getelementptr {ty}, {p} %dst, i64 %r",
        "  br label %chead",
        "chead:",
        "  %c = phi i64 [%pc, %rbody], [%c1, %cbody]",
        "  %cin = icmp slt i64 %c, %pcend",
        "  br i1 %cin, label %cbody, label %rnext",
        "cbody:",
        f"  %s = getelementptr {ty}, {p} %sb, i64 %c",
        "  %dc = mul i64 %c, %drow",
        f"  %d = getelementptr {ty}, {p} %db, i64 %dc",
        f"  call void @tile({p} %s, {p} %d, i64 %srow, i64 %drow)",
        f"  %c1 = add i64 %c, {size}",
        "  br label %chead",
        "rnext:",
        f"  %r1 = add i64 %r, {size}",
        "  br label %rhead",
        "qnext:",
        "  br label %qhead",
        "pnext:",
        "  br label %phead",
        "edges:",
        f"  call void @rect({p} %src, {p} %dst, i64 0, i64 %rt, i64 %ct, i64 %cols, "
        "i64 %srow, i64 %drow)",
        f"  call void @rect({p} %src, {p} %dst, i64 %rt, i64 %rows, i64 0, i64 %cols, "
        "i64 %srow, i64 %drow)",
        "  ret void",
        "}",
        "",
        f"define void @drive({p} %src, {p} %dst, i64 %n1, i64 %s1, i64 %d1, i64 %n2, "
        "i64 %s2, i64 %d2, i64 %rows, i64 %cols, i64 %srow, i64 %drow) {",
        "entry:",
        "  br label %ahead",
        "ahead:",
        "  %a = phi i64 [0, %entry], [%a1, %anext]",
        "  %ain = icmp slt i64 %a, %n1",
        "  br i1 %ain, label %abody, label %done",
        "abody:",
        "  %sa = mul i64 %a, %s1",
        "  %da = mul i64 %a, %d1",
        "  br label %bhead",
        "bhead:",
        "  %b = phi i64 [0, %abody], [%b1, %bbody]",
        "  %bin = icmp slt i64 %b, %n2",
        "  br i1 %bin, label %bbody, label %anext",
        "bbody:",
        "  %sb = mul i64 %b, %s2",
        "  %db = mul i64 %b, %d2",
        "  %so = add i64 %sa, %sb",
        "  %do = add i64 %da, %db",
        f"  %sp = getelementptr {ty}, {p} %src, i64 %so",
        f"  %dp = getelementptr {ty}, {p} %dst, i64 %do",
        f"  call void @matrix({p} %sp, {p} %dp, i64 %rows, i64 %cols, i64 %srow, i64 %drow)",
        "  %b1 = add i64 %b, 1",
        "  br label %bhead",
        "anext:",
        "  %a1 = add i64 %a, 1",
        "  br label %ahead",
        "done:",
        "  ret void",
        "}",
        "",
    ]
    return "\n".join(lines)


@dataclass(frozen=True)
class Transposer:
    """A compiled module: its block size and ``drive`` (a ctypes function)."""

    size: int
    drive: Any
    engine: Any  # keeps the machine code alive


def block_size(dtype: Any, rows: int, cols: int) -> int:
    """The block size for matrices of ``rows × cols`` of ``dtype`` on the target in use:
    one vector's lanes where both sides hold a whole vector, else half a vector's (at
    least 4), else 0 (too narrow for blocks: NumPy's copy is as quick).

    >>> block_size(np.float32, 512, 512) in (0, 4, 8, 16)
    True
    """
    lanes = _llvm.vector_width(dtype)
    if lanes == 0:
        return 0
    side = min(rows, cols)
    if side >= lanes:
        return lanes
    if lanes // 2 >= 4 and side >= lanes // 2:
        return lanes // 2
    return 0


def transposer(dtype: Any, size: int) -> Transposer | None:
    """The compiled module for ``dtype`` and blocks of ``size`` on the vector target in use
    (``None``: no compiled kernels here, ``CONVARITH_JIT=0``, not float32/float64)."""
    return _transposer_for(np.dtype(dtype), size, environment(_llvm.ISA_VARIABLE))


@functools.cache  # (no lock: what it returns is made once, under _transposer's)
def _transposer_for(dtype: np.dtype[Any], size: int, isa_setting: str) -> Transposer | None:
    del isa_setting  # (a key only: vector_target reads it)
    if _llvm._llvm() is None:
        return None
    return _transposer(dtype, size, _llvm.vector_target())


@cached_once
def _transposer(dtype: np.dtype[Any], size: int, target: _llvm.VectorTarget
                ) -> Transposer | None:
    llvm = _llvm._llvm()
    if llvm is None or not target.runs_here or dtype.char not in "fd":
        return None
    address, engine = _llvm.compile_drive(llvm, target, module_ir(dtype, size))
    pointer = ctypes.c_void_p
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, *([ctypes.c_int64] * 10))
    return Transposer(size, signature(address), engine)


def transpose_into(dst: np.ndarray, src: np.ndarray, src_start: int, outer: tuple[int, int, int],
                   inner: tuple[int, int, int], rows: int, cols: int, src_row: int,
                   dst_row: int, whole_vectors: bool = False) -> bool:
    """:func:`module_ir`'s ``drive`` from element ``src_start`` of ``src`` into ``dst``
    (both C-contiguous of one dtype; ``outer`` and ``inner``: ``(n1, s1, d1)`` and
    ``(n2, s2, d2)``). ``False`` where no compiled module runs here or the matrices are
    too narrow for blocks (with ``whole_vectors``, for blocks of a whole vector's lanes;
    nothing written): the caller copies another way.

    >>> src = np.arange(12, dtype=np.float32).reshape(3, 4)
    >>> dst = np.empty((4, 3), np.float32)
    >>> done = transpose_into(dst, src, 0, (1, 0, 0), (1, 0, 0), 3, 4, 4, 3)
    >>> not done or bool((dst == src.T).all())
    True
    """
    size = block_size(src.dtype, rows, cols)
    if size == 0 or (whole_vectors and size < _llvm.vector_width(src.dtype)):
        return False
    module = transposer(src.dtype, size)
    if module is None:
        return False
    itemsize = src.itemsize
    module.drive(src.ctypes.data + src_start * itemsize, dst.ctypes.data, *outer, *inner, rows,
                 cols, src_row, dst_row)
    return True
