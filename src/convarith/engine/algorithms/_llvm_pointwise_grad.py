"""Compiled kernel for the kernel gradient of a 1×1 convolution at stride 1.

The kernel gradient of a 1×1 layer is ``dW = xᵀ @ dy``: ``(C × cells) @ (cells × F)``,
a small result summed over many cells (50 176 at batch 16 on 56²). BLAS packs both
operands into panels for it, and for the narrow shapes of real networks (32 -> 16,
16 -> 96, 144 -> 24) that packing is as long as the product: it ran at 45 GFLOP/s
of one Zen 4 core there. This kernel reads ``x`` and ``dy`` where they lie, in chunks
of cells that stay in the core's cache: a block of ``MR`` input channels keeps its
``MR × NV`` vectors of the result in registers and, per cell, loads ``dy``'s row
(``NV`` vectors of output channels) once and adds each channel's value of ``x``,
broadcast, times it. ``C`` and ``F`` are compiled in; ``F`` is cut into blocks of
at most four vectors (two with 16 vector registers), the last of whole vectors and
at most one half vector.

``drive(x, dy, out, cells, c_first, c_last, chunk)``: ``out[c, :] += Σ_o x[o, c] ·
dy[o, :]`` for ``c_first ≤ c < c_last`` and ``o < cells``, ``x`` ``(cells, C)``,
``dy`` ``(cells, F)``, ``out`` ``(C, F)``, all contiguous, ``chunk`` cells at a time.

Examples
--------
>>> import numpy as np
>>> kernels = compiled(np.float64, 3, 8)
>>> x, dy = np.arange(15.0).reshape(5, 3), np.ones((5, 8))
>>> out = np.zeros((3, 8))
>>> if kernels is not None:
...     kernels.run(x, dy, out)
... else:
...     out += x.T @ dy
>>> out[:, 0]
array([30., 35., 40.])
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..state import cached_once
from . import _llvm
from ._llvm import VectorTarget
from ._llvm_pointwise import column_blocks
from ._threads import call_native

__all__ = ["compiled", "module_ir", "supported", "block_channels", "column_blocks",
           "GradKernels", "CHUNK_BYTES", "MIN_CHUNK", "chunk_cells"]

#: Bytes of ``x`` and ``dy`` per chunk of cells: the chunk is read once per block of
#: channels of the result, from the core's L2 cache.
CHUNK_BYTES = 192 << 10

#: Fewest cells per chunk: each chunk reads and writes the whole result once (one core,
#: 2048 -> 512 on 16×4², ms against BLAS's 5.7: chunks of 19 cells 7.5, 64 7.0, 256 5.9).
MIN_CHUNK = 64


def block_channels(vectors: int, target: VectorTarget | None = None) -> int:
    """``MR``: input channels a register block holds for ``vectors`` vectors of output
    channels, so that its ``MR × vectors`` accumulators, the ``vectors`` of ``dy`` and
    a broadcast fit the vector registers (at most 7 for three vectors: more spill).

    >>> block_channels(4, _llvm.target_named("avx512")), block_channels(1, _llvm.target_named("avx2"))
    (6, 13)
    """
    registers = (target or _llvm.vector_target()).registers
    return max(1, min(7 if vectors == 3 else 16, (registers - 2 - vectors) // vectors, 16))


def supported(dtype: Any, filters: int) -> bool:
    """Whether a kernel exists here for ``filters`` output channels of ``dtype``."""
    if not _llvm.available(dtype):
        return False
    target = _llvm.vector_target()
    width = target.width(np.dtype(dtype))
    return width > 1 and column_blocks(filters, width, _llvm.max_vectors(target)) is not None


def _tile(name: str, rows: int, ty: str, channels: int, filters: int,
          parts: list[tuple[int, int]]) -> str:
    """IR of one register block: ``out[i, part] += Σ_k x[k·C + i] · dy[k·F + part]`` for
    ``i < rows``, ``k < n`` (``x``, ``dy``, ``out`` already at the block's corner); the
    sum over the chunk's cells starts from zero and is added to ``out`` at the end
    (float32 sums of 50 000 cells in one chain lost a digit)."""
    p = f"{ty}*"

    def vec(lanes: int) -> str:
        return f"<{lanes} x {ty}>"

    fma = {lanes: f"@llvm.fma.v{lanes}{'f32' if ty == 'float' else 'f64'}"
           for _, lanes in parts}
    acc = [(i, j) for i in range(rows) for j in range(len(parts))]
    base = parts[0][0]
    lines = [f"define internal void @{name}({p} noalias %x, {p} noalias %dy, "
             f"{p} noalias %out, i64 %n) {{", "entry:"]
    for i, j in acc:
        first, lanes = parts[j]
        lines += [f"  %op{i}_{j} = getelementptr {ty}, {p} %out, i64 {i * filters + first - base}",
                  f"  %oq{i}_{j} = bitcast {p} %op{i}_{j} to {vec(lanes)}*"]
    lines += ["  %any = icmp sgt i64 %n, 0", "  br i1 %any, label %loop, label %done",
              "loop:", "  %k = phi i64 [0, %entry], [%k1, %loop]"]
    for i, j in acc:
        lanes = parts[j][1]
        lines.append(f"  %a{i}_{j} = phi {vec(lanes)} [zeroinitializer, %entry], "
                     f"[%s{i}_{j}, %loop]")
    lines += [f"  %xk = mul i64 %k, {channels}", f"  %dk = mul i64 %k, {filters}"]
    for j, (first, lanes) in enumerate(parts):
        lines += [f"  %do{j} = add i64 %dk, {first - base}",
                  f"  %dp{j} = getelementptr {ty}, {p} %dy, i64 %do{j}",
                  f"  %dq{j} = bitcast {p} %dp{j} to {vec(lanes)}*",
                  f"  %dv{j} = load {vec(lanes)}, {vec(lanes)}* %dq{j}, align 4"]
    for i in range(rows):
        lines += [f"  %xo{i} = add i64 %xk, {i}",
                  f"  %xp{i} = getelementptr {ty}, {p} %x, i64 %xo{i}",
                  f"  %xl{i} = load {ty}, {p} %xp{i}"]
        for lanes in sorted({n for _, n in parts}):
            lines += [f"  %xe{i}_{lanes} = insertelement {vec(lanes)} undef, {ty} %xl{i}, i32 0",
                      f"  %xs{i}_{lanes} = shufflevector {vec(lanes)} %xe{i}_{lanes}, "
                      f"{vec(lanes)} undef, <{lanes} x i32> zeroinitializer"]
        for j, (_, lanes) in enumerate(parts):
            lines.append(f"  %s{i}_{j} = call {vec(lanes)} {fma[lanes]}({vec(lanes)} "
                         f"%xs{i}_{lanes}, {vec(lanes)} %dv{j}, {vec(lanes)} %a{i}_{j})")
    lines += ["  %k1 = add i64 %k, 1", "  %more = icmp slt i64 %k1, %n",
              "  br i1 %more, label %loop, label %done", "done:"]
    for i, j in acc:
        lanes = parts[j][1]
        lines.append(f"  %f{i}_{j} = phi {vec(lanes)} [zeroinitializer, %entry], "
                     f"[%s{i}_{j}, %loop]")
    for i, j in acc:
        lanes = parts[j][1]
        lines += [f"  %o{i}_{j} = load {vec(lanes)}, {vec(lanes)}* %oq{i}_{j}, align 4",
                  f"  %t{i}_{j} = fadd {vec(lanes)} %o{i}_{j}, %f{i}_{j}",
                  f"  store {vec(lanes)} %t{i}_{j}, {vec(lanes)}* %oq{i}_{j}, align 4"]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def _block_loop(tag: str, kinds: dict[int, str], rows: int, ty: str, filters: int, first: int,
                after: str) -> list[str]:
    """IR of one column block's walk over the channels ``c_first .. c_last`` of the chunk
    (``%xc``, ``%dc`` at the chunk's cells, ``%nk`` of them): blocks of ``rows``
    channels, then one of the rest (``kinds[r]`` the tile of ``r`` channels)."""
    p = f"{ty}*"
    return [
        "  store i64 %clo, i64* %c",
        f"  br label %{tag}h",
        f"{tag}h:",
        f"  %{tag}c = load i64, i64* %c",
        f"  %{tag}left = sub i64 %chi, %{tag}c",
        f"  %{tag}full = icmp sge i64 %{tag}left, {rows}",
        f"  br i1 %{tag}full, label %{tag}b, label %{tag}r",
        f"{tag}b:",
        f"  %{tag}xp = getelementptr {ty}, {p} %xc, i64 %{tag}c",
        f"  %{tag}dp = getelementptr {ty}, {p} %dc, i64 {first}",
        f"  %{tag}om = mul i64 %{tag}c, {filters}",
        f"  %{tag}oo = add i64 %{tag}om, {first}",
        f"  %{tag}op = getelementptr {ty}, {p} %out, i64 %{tag}oo",
        f"  call void @{kinds[rows]}({p} %{tag}xp, {p} %{tag}dp, {p} %{tag}op, i64 %nk)",
        f"  %{tag}c2 = add i64 %{tag}c, {rows}",
        f"  store i64 %{tag}c2, i64* %c",
        f"  br label %{tag}h",
        f"{tag}r:",
        f"  %{tag}rxp = getelementptr {ty}, {p} %xc, i64 %{tag}c",
        f"  %{tag}rdp = getelementptr {ty}, {p} %dc, i64 {first}",
        f"  %{tag}rom = mul i64 %{tag}c, {filters}",
        f"  %{tag}roo = add i64 %{tag}rom, {first}",
        f"  %{tag}rop = getelementptr {ty}, {p} %out, i64 %{tag}roo",
        f"  switch i64 %{tag}left, label %{after} ["
        + " ".join(f"i64 {r}, label %{tag}t{r}" for r in range(1, rows)) + "]",
        *[line for r in range(1, rows) for line in (
            f"{tag}t{r}:",
            f"  call void @{kinds[r]}({p} %{tag}rxp, {p} %{tag}rdp, {p} %{tag}rop, i64 %nk)",
            f"  br label %{after}")],
    ]


def module_ir(dtype: Any, channels: int, filters: int, width: int, vectors: int,
              registers: int = 32) -> str:
    """The module's IR: ``drive`` over chunks of cells, the column blocks of
    :func:`column_blocks` and blocks of :func:`block_channels` channels.

    >>> ir = module_ir(np.float32, 8, 24, 16, 4)
    >>> "define void @drive(" in ir and "<8 x float>" in ir
    True
    """
    ty = _llvm._ir_type(dtype)
    blocks = column_blocks(filters, width, vectors)
    if blocks is None:
        raise ValueError(f"filters={filters} is not whole vectors of {width} lanes and "
                         "at most one half vector")
    p = f"{ty}*"
    suffix = "f32" if ty == "float" else "f64"
    lanes_used = sorted({n for block in blocks for _, n in block})
    decls = [f"declare <{n} x {ty}> @llvm.fma.v{n}{suffix}(<{n} x {ty}>, <{n} x {ty}>, "
             f"<{n} x {ty}>)" for n in lanes_used]
    shapes = []  # distinct block shapes: (parts relative to the block's first lane)
    for block in blocks:
        shape = [(first - block[0][0], lanes) for first, lanes in block]
        if shape not in shapes:
            shapes.append(shape)
    tiles, names = [], []
    for s, shape in enumerate(shapes):
        rows = block_channels(len(shape), _target_of(registers))
        kinds = {r: f"t{s}_{r}" for r in range(1, rows + 1)}
        tiles += [_tile(kinds[r], r, ty, channels, filters, shape) for r in kinds]
        names.append((kinds, rows))
    body = [f"define void @drive({p} noalias %x, {p} noalias %dy, {p} noalias %out, "
            "i64 %cells, i64 %clo, i64 %chi, i64 %chunk) {",
            "entry:", "  %k = alloca i64", "  %c = alloca i64", "  store i64 0, i64* %k",
            "  br label %chunks", "chunks:",
            "  %k0 = load i64, i64* %k",
            "  %rest = sub i64 %cells, %k0",
            "  %some = icmp sgt i64 %rest, 0",
            "  br i1 %some, label %chunk0, label %exit",
            "chunk0:",
            "  %short = icmp slt i64 %rest, %chunk",
            "  %nk = select i1 %short, i64 %rest, i64 %chunk",
            f"  %xo = mul i64 %k0, {channels}",
            f"  %xc = getelementptr {ty}, {p} %x, i64 %xo",
            f"  %do = mul i64 %k0, {filters}",
            f"  %dc = getelementptr {ty}, {p} %dy, i64 %do",
            "  br label %blk0"]
    for b, block in enumerate(blocks):
        shape = [(first - block[0][0], lanes) for first, lanes in block]
        kinds, rows = names[shapes.index(shape)]
        after = f"blk{b + 1}" if b + 1 < len(blocks) else "next"
        body += [f"blk{b}:"] + _block_loop(f"b{b}_", kinds, rows, ty, filters, block[0][0],
                                            after)
    body += ["next:", "  %k1 = add i64 %k0, %nk", "  store i64 %k1, i64* %k",
             "  br label %chunks", "exit:", "  ret void", "}"]
    return "\n\n".join(decls + tiles + ["\n".join(body)]) + "\n"


def _target_of(registers: int) -> VectorTarget:
    return VectorTarget("ir", "", "", "", 0, registers, False)


def chunk_cells(channels: int, filters: int, itemsize: int) -> int:
    """Cells per chunk: about :data:`CHUNK_BYTES` of ``x`` and ``dy``, at least
    :data:`MIN_CHUNK`.

    >>> chunk_cells(32, 16, 4), chunk_cells(2048, 512, 4)
    (1024, 64)
    """
    return max(MIN_CHUNK, CHUNK_BYTES // ((channels + filters) * itemsize))


@dataclass(frozen=True)
class GradKernels:
    """One compiled module: ``drive`` for ``channels`` inputs and ``filters`` outputs."""

    channels: int
    filters: int
    chunk: int  #: cells per chunk
    drive: Any
    engine: Any  # keeps the machine code alive
    address: int = 0  # drive's

    def run(self, x: np.ndarray, dy: np.ndarray, out: np.ndarray, first: int = 0,
            last: int | None = None, c_first: int = 0, c_last: int | None = None) -> None:
        """``out[c_first:c_last] += x[first:last, c_first:c_last].T @ dy[first:last]``
        (C-contiguous 2-D arrays of one dtype; the rows default to all of them)."""
        stop = x.shape[0] if last is None else last
        item = x.itemsize
        call_native(self.drive, self.address, x.ctypes.data + first * self.channels * item,
                    dy.ctypes.data + first * self.filters * item, out.ctypes.data,
                    stop - first, c_first, self.channels if c_last is None else c_last,
                    self.chunk)


def compiled(dtype: Any, channels: int, filters: int) -> GradKernels | None:
    """The module for ``dtype``, ``channels`` inputs and ``filters`` outputs on the
    target in use (``None``: no compiled kernels here, or ``filters`` not supported)."""
    return _compiled(np.dtype(dtype), channels, filters, _llvm.vector_target())


@cached_once
def _compiled(dtype: np.dtype[Any], channels: int, filters: int, target: VectorTarget
              ) -> GradKernels | None:
    llvm = _llvm._llvm()
    width = target.width(dtype)
    if (llvm is None or not target.runs_here or width < 2 or dtype.char not in "fd"
            or channels < 1):
        return None
    vectors = _llvm.max_vectors(target)
    if column_blocks(filters, width, vectors) is None:
        return None
    ir = module_ir(dtype, channels, filters, width, vectors, target.registers)
    address, engine = _llvm.compile_drive(llvm, target, ir)
    pointer, count = ctypes.c_void_p, ctypes.c_int64
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, pointer, count, count, count, count)
    return GradKernels(channels, filters, chunk_cells(channels, filters, dtype.itemsize),
                       signature(address), engine, int(address))
