"""Register-tiled kernels for inputs of few channels: one output row at a time, the
input step from one cell to the next compiled in.

With few input channels (an RGB or grey first layer: 1–4), a cell's sum has
few steps (``taps × C``: 9 for a 3×3 kernel on one channel), so what
:mod:`._llvm`'s kernels do once per block of cells — place each of ``MR``
cells (wrapping across rows and images), pass ``MR`` input and ``MR`` output
pointers, set up the sum — costs about as much as the sum itself (measured on
the 3×3, 1 -> 32 layer on 64 × 28²: ~35 ns of ~75 per block of 8 cells).
These kernels keep the work and cut that cost:

- the block's cells lie in one output row, so cell ``i`` reads from the
  block's first input cell plus ``i · x_cell`` elements, where ``x_cell``
  (stride × channels) is compiled in: the offset is an immediate in the load
  instruction and the block takes one input and one output pointer;
- with the pointers gone, more cells fit in a block (``MR`` up to 14): fewer
  blocks per row and a longer reuse of each kernel vector.

``drive`` has :mod:`._llvm`'s signature and meaning exactly (a :class:`Kernels`
whose ``drive`` the register-tiled jobs call unchanged), for calls whose
``cells.x_cell`` equals the compiled step; rows are walked one by one (the image
and row of each found once per row).

Examples
--------
>>> import numpy as np
>>> ir = row_module_ir(np.float32, vectors=2, rows=4, width=16, x_cell=3)
>>> "define void @drive(" in ir and "@tile4" in ir
True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..state import cached_once
from . import _llvm
from ._llvm import Cells, Kernels, Sums, VectorTarget

__all__ = ["row_module_ir", "compiled_rows", "row_block_cells", "MAX_CELLS"]

#: Most cells per block (each block size below it is a tail function of its own).
MAX_CELLS = 14


def row_block_cells(vectors: int, target: VectorTarget | None = None) -> int:
    """``MR`` for ``vectors`` vectors of output channels: the block's ``MR · vectors``
    accumulators, the ``vectors`` kernel vectors and one broadcast fit the vector
    registers.

    >>> row_block_cells(2, _llvm.target_named("avx512")), row_block_cells(4, _llvm.target_named("avx512"))
    (14, 6)
    >>> row_block_cells(2, _llvm.target_named("avx2"))
    6
    """
    registers = (target or _llvm.vector_target()).registers
    return max(1, min(MAX_CELLS, (registers - 2 - vectors) // vectors))


def _tile(name: str, mr: int, nv: int, ty: str, vw: int, x_cell: int, streaming: bool) -> str:
    """IR of one block: ``mr`` cells of a row × ``nv`` vectors, summed over the steps.

    Cell ``i`` reads ``x[offsets[k] + i · x_cell]`` and writes ``y[i · y_cell + j·vw …]``.
    Two steps per loop turn, then the odd one.
    """
    v = f"<{vw} x {ty}>"
    p = f"{ty}*"
    acc = [(i, j) for i in range(mr) for j in range(nv)]
    fma = f"@llvm.fma.v{vw}{'f32' if ty == 'float' else 'f64'}"

    def step(tag: str, k: str, wc: str, before: str) -> list[str]:
        out = [f"  %{tag}kp = getelementptr i64, i64* %offsets, i64 {k}",
               f"  %{tag}xc = load i64, i64* %{tag}kp",
               f"  %{tag}xb = getelementptr {ty}, {p} %x, i64 %{tag}xc"]
        for j in range(nv):
            if j:
                out.append(f"  %{tag}wo{j} = add i64 {wc}, {j * vw}")
            out += [f"  %{tag}wp{j} = getelementptr {ty}, {p} %w, i64 "
                    f"{f'%{tag}wo{j}' if j else wc}",
                    f"  %{tag}wq{j} = bitcast {p} %{tag}wp{j} to {v}*",
                    f"  %{tag}wv{j} = load {v}, {v}* %{tag}wq{j}, align 4"]
        for i in range(mr):
            out += [
                f"  %{tag}xp{i} = getelementptr {ty}, {p} %{tag}xb, i64 {i * x_cell}",
                f"  %{tag}xl{i} = load {ty}, {p} %{tag}xp{i}",
                f"  %{tag}xe{i} = insertelement {v} undef, {ty} %{tag}xl{i}, i32 0",
                f"  %{tag}xs{i} = shufflevector {v} %{tag}xe{i}, {v} undef, "
                f"<{vw} x i32> zeroinitializer",
            ]
            for j in range(nv):
                out.append(f"  %{tag}d{i}_{j} = call {v} {fma}({v} %{tag}xs{i}, "
                           f"{v} %{tag}wv{j}, {v} %{before}{i}_{j})")
        return out

    def place(prefix: str) -> list[str]:
        """Pointers ``%{prefix}i_j`` to cell ``i``'s vector ``j`` of the output."""
        out = []
        for i, j in acc:
            out += [f"  %{prefix}o{i}_{j} = mul i64 %y_cell, {i}",
                    f"  %{prefix}f{i}_{j} = add i64 %{prefix}o{i}_{j}, {j * vw}",
                    f"  %{prefix}p{i}_{j} = getelementptr {ty}, {p} %y, i64 %{prefix}f{i}_{j}",
                    f"  %{prefix}q{i}_{j} = bitcast {p} %{prefix}p{i}_{j} to {v}*"]
        return out

    lines = [
        f"define internal void @{name}({p} %x, {p} %w, {p} %y, i64 %y_cell, i64* %offsets, "
        "i64 %steps, i64 %step_stride, i64 %accumulate) {",
        "entry:",
        "  %adding = icmp ne i64 %accumulate, 0",
        "  br i1 %adding, label %load, label %pre",
        "load:",
        *place("l"),
        *[f"  %l{i}_{j} = load {v}, {v}* %lq{i}_{j}, align 4" for i, j in acc],
        "  br label %pre",
        "pre:",
        *[f"  %s{i}_{j} = phi {v} [zeroinitializer, %entry], [%l{i}_{j}, %load]"
          for i, j in acc],
        "  %KU = sub i64 %steps, 1",
        "  %some = icmp sgt i64 %KU, 0",
        "  br i1 %some, label %ch, label %after",
        "ch:",
        "  %k = phi i64 [0, %pre], [%k1, %ch]",
        "  %wc = phi i64 [0, %pre], [%wc2, %ch]",
        *[f"  %b{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%u1d{i}_{j}, %ch]" for i, j in acc],
    ]
    lines += step("u0", "%k", "%wc", "b")
    lines += ["  %k_0 = add i64 %k, 1", "  %wc1 = add i64 %wc, %step_stride"]
    lines += step("u1", "%k_0", "%wc1", "u0d")
    lines += [
        "  %wc2 = add i64 %wc1, %step_stride",
        "  %k1 = add i64 %k, 2",
        "  %km = icmp slt i64 %k1, %KU",
        "  br i1 %km, label %ch, label %after",
        "after:",
        "  %ka = phi i64 [0, %pre], [%k1, %ch]",
        "  %wa = phi i64 [0, %pre], [%wc2, %ch]",
        *[f"  %a{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%u1d{i}_{j}, %ch]" for i, j in acc],
        "  %left = icmp slt i64 %ka, %steps",
        "  br i1 %left, label %odd, label %done",
        "odd:",
    ]
    lines += step("r", "%ka", "%wa", "a")
    lines += [
        "  br label %done",
        "done:",
        *[f"  %e{i}_{j} = phi {v} [%a{i}_{j}, %after], [%rd{i}_{j}, %odd]" for i, j in acc],
        *place("y"),
    ]
    for i, j in acc:
        lines.append(f"  store {v} %e{i}_{j}, {v}* %yq{i}_{j}, align "
                     + (f"{vw * (4 if ty == 'float' else 8)}, !nontemporal !0" if streaming
                        else "4"))
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def _driver(mr: int, nv: int, ty: str, vw: int, x_cell: int) -> str:
    """IR of ``drive1``: per output row (image and row found once), per column block,
    blocks of ``mr`` cells of the row, then one smaller block for the row's rest."""
    p = f"{ty}*"
    rest = "i64* %offsets, i64 %steps, i64 %step_stride, i64 %accumulate"

    def call(cells: int, label: str) -> list[str]:
        return [f"  %{label}xo = mul i64 %o, {x_cell}",
                f"  %{label}x = getelementptr {ty}, {p} %xr, i64 %{label}xo",
                f"  %{label}yo = mul i64 %o, %y_cell",
                f"  %{label}y = getelementptr {ty}, {p} %yb, i64 %{label}yo",
                f"  call void @tile{cells}({p} %{label}x, {p} %wb, {p} %{label}y, i64 %y_cell, "
                f"{rest})"]

    lines = [
        f"define internal void @drive1({p} %x, {p} %w, {p} %y, i64* %offsets, "
        f"{_llvm._parameters(Cells, Sums)}) {{",
        "entry:",
        "  %rok = icmp sgt i64 %rows, 0",
        "  %cok = icmp sgt i64 %row_cells, 0",
        "  %bok = icmp sgt i64 %blocks, 0",
        "  %go0 = and i1 %rok, %cok",
        "  %go = and i1 %go0, %bok",
        f"  %full = sub i64 %row_cells, {mr - 1}",
        "  br i1 %go, label %row, label %exit",
        "row:",
        "  %r = phi i64 [0, %entry], [%r1, %row_end]",
        "  %g = udiv i64 %r, %image_rows",
        "  %i = urem i64 %r, %image_rows",
        "  %xg = mul i64 %g, %x_image",
        "  %xi = mul i64 %i, %x_row",
        "  %xgi = add i64 %xg, %xi",
        f"  %xr = getelementptr {ty}, {p} %x, i64 %xgi",
        "  %yg = mul i64 %g, %y_image",
        "  %yi = mul i64 %i, %y_row",
        "  %ygi = add i64 %yg, %yi",
        f"  %yr = getelementptr {ty}, {p} %y, i64 %ygi",
        "  br label %blk",
        "blk:",
        "  %b = phi i64 [0, %row], [%b1, %blk_end]",
        f"  %bo = mul i64 %b, {nv * vw}",
        f"  %yb = getelementptr {ty}, {p} %yr, i64 %bo",
        "  %bw = mul i64 %b, %block_stride",
        f"  %wb = getelementptr {ty}, {p} %w, i64 %bw",
        "  br label %cell",
        "cell:",
        "  %o = phi i64 [0, %blk], [%o1, %body]",
        "  %more = icmp slt i64 %o, %full",
        "  br i1 %more, label %body, label %tail",
        "body:",
        *call(mr, "m"),
        f"  %o1 = add i64 %o, {mr}",
        "  br label %cell",
        "tail:",
        "  %left = sub i64 %row_cells, %o",
        "  switch i64 %left, label %blk_end [",
        *[f"    i64 {r}, label %tail{r}" for r in range(1, mr)],
        "  ]",
    ]
    for r in range(1, mr):
        lines += [f"tail{r}:", *call(r, f"t{r}_"), "  br label %blk_end"]
    lines += [
        "blk_end:",
        "  %b1 = add i64 %b, 1",
        "  %bm = icmp slt i64 %b1, %blocks",
        "  br i1 %bm, label %blk, label %row_end",
        "row_end:",
        "  %r1 = add i64 %r, 1",
        "  %rm = icmp slt i64 %r1, %rows",
        "  br i1 %rm, label %row, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines)


def row_module_ir(dtype: Any, vectors: int, rows: int, width: int, x_cell: int,
                  streaming: bool = False) -> str:
    """The module's IR: blocks of 1 … ``rows`` cells of ``vectors`` vectors of ``width``
    lanes, input cells ``x_cell`` elements apart (``drive`` as in :mod:`._llvm`)."""
    ty = _llvm._ir_type(dtype)
    v = f"<{width} x {ty}>"
    parts = [f"declare {v} @llvm.fma.v{width}{'f32' if ty == 'float' else 'f64'}"
             f"({v}, {v}, {v})"]
    parts += [_tile(f"tile{r}", r, vectors, ty, width, x_cell, streaming)
              for r in range(1, rows + 1)]
    parts.append(_driver(rows, vectors, ty, width, x_cell))
    parts.append(_llvm._batches(ty))
    parts.append("!0 = !{i32 1}")
    return "\n\n".join(parts) + "\n"


def compiled_rows(dtype: Any, vectors: int, x_cell: int, streaming: bool = False
                  ) -> Kernels | None:
    """The module for ``dtype``, ``vectors`` vectors per block and input cells ``x_cell``
    elements apart, on the target in use (``None``: no compiled kernels here)."""
    return _compiled_rows(np.dtype(dtype), vectors, x_cell, streaming, _llvm.vector_target())


@cached_once
def _compiled_rows(dtype: np.dtype[Any], vectors: int, x_cell: int, streaming: bool,
                   target: VectorTarget) -> Kernels | None:
    llvm = _llvm._llvm()
    width = target.width(dtype)
    if llvm is None or not target.runs_here or width == 0 or dtype.char not in "fd":
        return None
    rows = row_block_cells(vectors, target)
    return _llvm.drive_kernels(llvm, target, row_module_ir(dtype, vectors, rows, width,
                                                           x_cell, streaming),
                               vectors, rows, width)
