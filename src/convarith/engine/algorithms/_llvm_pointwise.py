"""Compiled kernels for 1×1 convolutions with few output channels, at stride 1.

A 1×1 layer at stride 1 is one product ``(cells, C) @ (C, F)`` of contiguous
rows. With ``F`` of 8 to 64 (MobileNetV2's and EfficientNet's projections to 16
or 24 channels on large images) the product reads far more than it computes, and
BLAS spends much of its time packing the input into panels (one core, Zen 4: 144 ->
24 on 16×28² 2.0 ms against 0.9 here; 64 -> 64 1.4 against 1.0). These kernels read
the input where it lies: a block of ``MR`` cells keeps its ``MR × F`` outputs in
vector registers, and per input channel loads the kernel's row once and adds each
cell's value, broadcast, times it. ``C`` is compiled in, so cell ``i`` of a block
reads at a constant offset from one pointer. ``F`` is made of whole vectors and at
most one half vector, at most four vectors with 32 vector registers and two with 16
(24 channels with AVX-512: 16 + 8 lanes, which Zen 4 runs at the cost of 1.5
vectors, not 2). While a block sums, it prefetches the next block's input, one cache
line per input channel: with 144 channels a block's cells are 9 lines apart and the
hardware prefetchers fall behind (1.74 ms without against 0.88 with).

``drive(x, w, y, cells)``: ``y[o, :] = x[o, :] @ w`` for ``o < cells``, with ``x``
``(cells, C)``, ``w`` ``(C, F)`` and ``y`` ``(cells, F)``, all contiguous.

Examples
--------
>>> import numpy as np
>>> kernels = compiled(np.float32, 4, 16)
>>> x, w = np.ones((20, 4), np.float32), np.ones((4, 16), np.float32)
>>> y = np.empty((20, 16), np.float32)
>>> if kernels is not None:
...     kernels.run(x, w, y)
... else:
...     y[:] = x @ w
>>> float(y[19, 15])
4.0
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..state import cached_once
from . import _llvm
from ._llvm import VectorTarget

__all__ = ["compiled", "module_ir", "pieces", "supported", "block_cells", "MAX_CELLS",
           "PointwiseKernels", "column_blocks"]

#: Most cells per register block.
MAX_CELLS = 12



def pieces(filters: int, width: int, vectors: int = 4) -> list[tuple[int, int]] | None:
    """``(first lane, lanes)`` of the vectors that make up ``filters`` output channels:
    whole vectors of ``width`` lanes and at most one of ``width / 2`` at the end
    (``None`` where ``filters`` is not made so, or takes more than ``vectors`` vectors).

    >>> pieces(24, 16), pieces(16, 16), pieces(12, 16), pieces(72, 16)
    ([(0, 16), (16, 8)], [(0, 16)], None, None)
    """
    half = width // 2
    if half == 0 or filters % half or filters > vectors * width:
        return None
    whole, rest = divmod(filters, width)
    return [(j * width, width) for j in range(whole)] + ([(whole * width, half)] if rest else [])


def column_blocks(filters: int, width: int, vectors: int) -> list[list[tuple[int, int]]] | None:
    """The blocks of output channels ``F`` is cut into, each a list of ``(first lane,
    lanes)``: blocks of ``vectors`` whole vectors, the last of what is left (whole
    vectors and at most one half vector); ``None`` where ``F`` is not made so.

    >>> column_blocks(96, 16, 4)
    [[(0, 16), (16, 16), (32, 16), (48, 16)], [(64, 16), (80, 16)]]
    >>> column_blocks(24, 16, 4), column_blocks(20, 16, 4)
    ([[(0, 16), (16, 8)]], None)
    """
    block = vectors * width
    full, rest = divmod(filters, block)
    tail = pieces(rest, width, vectors) if rest else []
    if tail is None:
        return None
    blocks = [[(b * block + j * width, width) for j in range(vectors)] for b in range(full)]
    if tail:
        blocks.append([(full * block + first, lanes) for first, lanes in tail])
    return blocks


def block_cells(vectors: int, target: VectorTarget | None = None) -> int:
    """``MR``: the block's ``MR × vectors`` accumulators, the kernel row's ``vectors``
    and a broadcast fit the vector registers, at most :data:`MAX_CELLS`.

    >>> block_cells(2, _llvm.target_named("avx512")), block_cells(1, _llvm.target_named("avx2"))
    (12, 12)
    """
    registers = (target or _llvm.vector_target()).registers
    return max(1, min(MAX_CELLS, (registers - 2 - vectors) // vectors))


def supported(dtype: Any, filters: int, wide: bool = False) -> bool:
    """Whether a kernel exists here for ``filters`` outputs of ``dtype`` (llvmlite, a
    vector target this CPU runs, and ``filters`` made of :func:`pieces`, or with
    ``wide`` of :func:`column_blocks`)."""
    if not _llvm.available(dtype):
        return False
    target = _llvm.vector_target()
    width = target.width(np.dtype(dtype))
    cut = column_blocks if wide else pieces
    return width > 1 and cut(filters, width, _llvm.max_vectors(target)) is not None


def _tile(name: str, cells: int, ty: str, channels: int, filters: int,
          parts: list[tuple[int, int]], prefetch: bool) -> str:
    """IR of one block of ``cells`` cells: ``y[i] = Σ_k x[i·C + k] · w[k]``."""
    p = f"{ty}*"
    line = 64 // (4 if ty == "float" else 8)  # elements per cache line

    def vec(lanes: int) -> str:
        return f"<{lanes} x {ty}>"

    def fma(lanes: int) -> str:
        return f"@llvm.fma.v{lanes}{'f32' if ty == 'float' else 'f64'}"

    acc = [(i, j) for i in range(cells) for j in range(len(parts))]
    widths = sorted({lanes for _, lanes in parts})

    def step(tag: str, k: str, before: str) -> list[str]:
        out = [f"  %{tag}wk = mul i64 {k}, {filters}"]
        for j, (first, lanes) in enumerate(parts):
            out += [f"  %{tag}wo{j} = add i64 %{tag}wk, {first}",
                    f"  %{tag}wp{j} = getelementptr {ty}, {p} %w, i64 %{tag}wo{j}",
                    f"  %{tag}wq{j} = bitcast {p} %{tag}wp{j} to {vec(lanes)}*",
                    f"  %{tag}wv{j} = load {vec(lanes)}, {vec(lanes)}* %{tag}wq{j}, align 4"]
        if prefetch:
            out += [f"  %{tag}fo = mul i64 {k}, {line}",
                    f"  %{tag}fa = add i64 %{tag}fo, {cells * channels}",
                    f"  %{tag}fp = getelementptr {ty}, {p} %x, i64 %{tag}fa",
                    f"  %{tag}fb = bitcast {p} %{tag}fp to i8*",
                    f"  call void @llvm.prefetch.p0(i8* %{tag}fb, i32 0, i32 3, i32 1)"]
        for i in range(cells):
            out += [f"  %{tag}xo{i} = add i64 {k}, {i * channels}",
                    f"  %{tag}xp{i} = getelementptr {ty}, {p} %x, i64 %{tag}xo{i}",
                    f"  %{tag}xl{i} = load {ty}, {p} %{tag}xp{i}"]
            for lanes in widths:
                out += [f"  %{tag}xe{i}_{lanes} = insertelement {vec(lanes)} undef, "
                        f"{ty} %{tag}xl{i}, i32 0",
                        f"  %{tag}xs{i}_{lanes} = shufflevector {vec(lanes)} "
                        f"%{tag}xe{i}_{lanes}, {vec(lanes)} undef, <{lanes} x i32> "
                        "zeroinitializer"]
            for j, (_, lanes) in enumerate(parts):
                out.append(f"  %{tag}d{i}_{j} = call {vec(lanes)} {fma(lanes)}("
                           f"{vec(lanes)} %{tag}xs{i}_{lanes}, {vec(lanes)} %{tag}wv{j}, "
                           f"{vec(lanes)} %{before}{i}_{j})")
        return out

    pairs = channels // 2
    lines = [f"define internal void @{name}({p} %x, {p} %w, {p} %y) {{", "entry:"]
    if pairs:
        lines += ["  br label %loop", "loop:",
                  "  %k = phi i64 [0, %entry], [%k2, %loop]"]
        for i, j in acc:
            lanes = parts[j][1]
            lines.append(f"  %b{i}_{j} = phi {vec(lanes)} [zeroinitializer, %entry], "
                         f"[%u1d{i}_{j}, %loop]")
        lines += step("u0", "%k", "b")
        lines.append("  %k1 = add i64 %k, 1")
        lines += step("u1", "%k1", "u0d")
        lines += ["  %k2 = add i64 %k, 2",
                  f"  %more = icmp slt i64 %k2, {2 * pairs}",
                  "  br i1 %more, label %loop, label %done",
                  "done:"]
        last = "u1d"
    else:
        last = "z"
        for i, j in acc:
            lanes = parts[j][1]
            lines.append(f"  %z{i}_{j} = fadd {vec(lanes)} zeroinitializer, zeroinitializer")
    if channels % 2:
        lines += step("r", str(channels - 1), last)
        last = "rd"
    for i, j in acc:
        first, lanes = parts[j]
        lines += [f"  %yp{i}_{j} = getelementptr {ty}, {p} %y, i64 {i * filters + first}",
                  f"  %yq{i}_{j} = bitcast {p} %yp{i}_{j} to {vec(lanes)}*",
                  f"  store {vec(lanes)} %{last}{i}_{j}, {vec(lanes)}* %yq{i}_{j}, align 4"]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def module_ir(dtype: Any, channels: int, filters: int, width: int, cells: int,
              prefetch: bool = True, vectors: int = 0) -> str:
    """The module's IR: ``drive(x, w, y, cells)`` over blocks of ``cells`` cells (then
    of 4 and of 1 for the rest), ``channels`` inputs and ``filters`` outputs, vectors of
    ``width`` lanes (:func:`pieces`); with ``vectors``, ``filters`` in the
    :func:`column_blocks` of that many vectors, each cell block's tiles one after the
    other (its inputs read again from the core's L1 cache).

    >>> ir = module_ir(np.float32, 8, 24, 16, 4)
    >>> "define void @drive(" in ir and "<8 x float>" in ir
    True
    >>> "call void @tile4_1(" in module_ir(np.float32, 8, 96, 16, 4, vectors=4)
    True
    """
    if vectors:
        return _blocks_ir(dtype, channels, filters, width, cells, prefetch, vectors)
    ty = _llvm._ir_type(dtype)
    parts = pieces(filters, width)
    if parts is None:
        raise ValueError(f"filters={filters} is not whole vectors of {width} lanes and "
                         "at most one half vector")
    p = f"{ty}*"
    suffix = "f32" if ty == "float" else "f64"
    decls = [f"declare <{lanes} x {ty}> @llvm.fma.v{lanes}{suffix}(<{lanes} x {ty}>, "
             f"<{lanes} x {ty}>, <{lanes} x {ty}>)" for lanes in sorted({n for _, n in parts})]
    decls.append("declare void @llvm.prefetch.p0(i8*, i32, i32, i32)")
    sizes = sorted({cells, min(cells, 4), 1}, reverse=True)  # a few tails, fast to compile
    tiles = [_tile(f"tile{r}", r, ty, channels, filters, parts, prefetch and r == cells)
             for r in sizes]
    drive = _drive(ty, channels, filters, sizes, lambda n, r: [
        f"  call void @tile{r}({p} %x{n}, {p} %w, {p} %y{n})"])
    return "\n\n".join(decls + tiles + [drive]) + "\n"


def _drive(ty: str, channels: int, filters: int, sizes: list[int],
           calls: Callable[[int, int], list[str]]) -> str:
    """The module's ``drive(x, w, y, cells)``: blocks of each of ``sizes`` cells (largest
    first) while that many are left, each block's instructions ``calls(n, r)`` (the
    ``n``-th size ``r``) with ``%x{n}`` and ``%y{n}`` at the block's first cell."""
    p = f"{ty}*"
    drive = [f"define void @drive({p} %x, {p} %w, {p} %y, i64 %cells) {{", "entry:",
             "  br label %s0"]
    for n, r in enumerate(sizes):
        come = "%entry" if n == 0 else f"%c{n - 1}"
        drive += [
            f"s{n}:",  # blocks of r cells while r are left
            f"  %o{n}i = phi i64 [{'0' if n == 0 else f'%o{n - 1}'}, {come}]",
            f"  br label %c{n}",
            f"c{n}:",
            f"  %o{n} = phi i64 [%o{n}i, %s{n}], [%o{n}n, %b{n}]",
            f"  %l{n} = sub i64 %cells, %o{n}",
            f"  %m{n} = icmp sge i64 %l{n}, {r}",
            f"  br i1 %m{n}, label %b{n}, label %{'s' + str(n + 1) if n + 1 < len(sizes) else 'exit'}",
            f"b{n}:",
            f"  %x{n}o = mul i64 %o{n}, {channels}",
            f"  %x{n} = getelementptr {ty}, {p} %x, i64 %x{n}o",
            f"  %y{n}o = mul i64 %o{n}, {filters}",
            f"  %y{n} = getelementptr {ty}, {p} %y, i64 %y{n}o",
            *calls(n, r),
            f"  %o{n}n = add i64 %o{n}, {r}",
            f"  br label %c{n}",
        ]
    drive += ["exit:", "  ret void", "}"]
    return "\n".join(drive)


def _blocks_ir(dtype: Any, channels: int, filters: int, width: int, cells: int,
               prefetch: bool, vectors: int) -> str:
    """:func:`module_ir` with ``filters`` in :func:`column_blocks`: one tile per block
    shape and cell count, called with ``w`` and ``y`` advanced to the block's first
    channel (rows keep ``filters`` values)."""
    ty = _llvm._ir_type(dtype)
    blocks = column_blocks(filters, width, vectors)
    if blocks is None:
        raise ValueError(f"filters={filters} is not whole vectors of {width} lanes and "
                         "at most one half vector")
    p = f"{ty}*"
    suffix = "f32" if ty == "float" else "f64"
    shapes: list[list[tuple[int, int]]] = []
    for block in blocks:
        shape = [(first - block[0][0], lanes) for first, lanes in block]
        if shape not in shapes:
            shapes.append(shape)
    lanes_used = sorted({n for shape in shapes for _, n in shape})
    decls = [f"declare <{n} x {ty}> @llvm.fma.v{n}{suffix}(<{n} x {ty}>, <{n} x {ty}>, "
             f"<{n} x {ty}>)" for n in lanes_used]
    decls.append("declare void @llvm.prefetch.p0(i8*, i32, i32, i32)")
    sizes = sorted({cells, min(cells, 4), 1}, reverse=True)
    tiles = [_tile(f"tile{r}_{k}", r, ty, channels, filters, shape,
                   prefetch and r == cells and k == 0)
             for r in sizes for k, shape in enumerate(shapes)]

    def calls(n: int, r: int) -> list[str]:
        lines = []
        for b, block in enumerate(blocks):
            first = block[0][0]
            kind = shapes.index([(f - first, lanes) for f, lanes in block])
            lines += [f"  %w{n}_{b} = getelementptr {ty}, {p} %w, i64 {first}",
                      f"  %y{n}_{b} = getelementptr {ty}, {p} %y{n}, i64 {first}",
                      f"  call void @tile{r}_{kind}({p} %x{n}, {p} %w{n}_{b}, {p} %y{n}_{b})"]
        return lines

    drive = _drive(ty, channels, filters, sizes, calls)
    return "\n\n".join(decls + tiles + [drive]) + "\n"


@dataclass(frozen=True)
class PointwiseKernels:
    """One compiled module: ``drive`` for ``channels`` inputs and ``filters`` outputs."""

    channels: int
    filters: int
    cells: int  #: cells per register block
    drive: Any
    engine: Any  # keeps the machine code alive

    def run(self, x: np.ndarray, w: np.ndarray, y: np.ndarray, first: int = 0,
            last: int | None = None) -> None:
        """``y[first:last] = x[first:last] @ w`` (C-contiguous 2-D arrays of one dtype;
        the rows default to all of them)."""
        stop = x.shape[0] if last is None else last
        item = x.itemsize
        self.drive(x.ctypes.data + first * self.channels * item, w.ctypes.data,
                   y.ctypes.data + first * self.filters * item, stop - first)


def compiled(dtype: Any, channels: int, filters: int, wide: bool = False
             ) -> PointwiseKernels | None:
    """The module for ``dtype``, ``channels`` inputs and ``filters`` outputs on the
    target in use (``None``: no compiled kernels here, or ``filters`` not supported);
    ``wide``: ``filters`` in :func:`column_blocks` (any count of whole vectors and a half)."""
    return _compiled(np.dtype(dtype), channels, filters, _llvm.vector_target(), wide)


@cached_once
def _compiled(dtype: np.dtype[Any], channels: int, filters: int, target: VectorTarget,
              wide: bool = False) -> PointwiseKernels | None:
    llvm = _llvm._llvm()
    width = target.width(dtype)
    if llvm is None or not target.runs_here or width < 2 or dtype.char not in "fd":
        return None
    most = _llvm.max_vectors(target)
    blocks = column_blocks(filters, width, most) if wide else None
    parts = pieces(filters, width, most) if not wide else (blocks[0] if blocks else None)
    if parts is None or channels < 1:
        return None
    cells = block_cells(max(len(b) for b in blocks) if blocks else len(parts), target)
    ir = module_ir(dtype, channels, filters, width, cells, vectors=most if wide else 0)
    address, engine = _llvm.compile_drive(llvm, target, ir)
    pointer = ctypes.c_void_p
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, pointer, ctypes.c_int64)
    return PointwiseKernels(channels, filters, cells, signature(address), engine)
