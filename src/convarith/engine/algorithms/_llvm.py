"""Register-tiled direct-convolution kernels, written as LLVM IR and compiled here.

A convolution's output, channels-last, is a matrix ``(cells, F)``; each row
is a sum over the kernel's taps and input channels of an input value times a
row of the kernel. The kernel below keeps an ``MR × (NV·VW)`` block of that
matrix (``MR`` output cells of one row, ``NV`` vectors of ``VW`` channels) in
vector registers for the whole sum: per tap and input channel it loads ``NV``
kernel vectors, broadcasts ``MR`` input values and does ``MR·NV`` fused
multiply-adds. No im2col matrix is made, the input is read where it lies
(any stride and dilation: the taps are a table of offsets), and with
``MR·NV`` around 24 the multiply-adds, not the loads, set the pace (one core:
210 GFLOP/s of its 239 peak with the operands in cache).

NumPy cannot express that, and BLAS only sees it after an im2col copy; numba
compiles to LLVM but does not keep such a block in registers. So this module
writes the loops as LLVM IR with explicit vector types and compiles them with
llvmlite (which numba installs) for the machine it runs on: ``VW`` = 16
floats (8 doubles) with AVX-512, 8 (4) with AVX2. The functions are plain C
functions called through ctypes, which releases the GIL.

Each compiled module (one per dtype, ``NV`` and streaming or not) exports ``drive``::

    drive(x, w, y, xoff, R, XR, YR, OW, XP, YP, NCB, K, LDW, WB, ACC, RI, XI, YI,
          NB, XB, WBB, YB)

for ``NB`` problems (``x``, ``w`` and ``y`` advanced by ``XB``, ``WBB`` and
``YB`` elements from one to the next: Winograd's batched products), each of
``R`` output rows, each of ``OW`` cells, and ``NCB`` column blocks of
``NV·VW`` channels: with rows counted in images of ``RI`` rows (row
``r = g·RI + i``), cell ``(r, o)`` of block ``b`` is::

    y[g·YI + i·YR + o·YP + b·NV·VW + j] (+)= Σ_{k < K}
        x[g·XI + i·XR + o·XP + xoff[k]] · w[b·WB + k·LDW + j]

adding to what ``y`` holds when ``ACC`` is not 0 (for sums split into
steps of input channels). ``xoff`` lists where each tap and input channel
reads, so the sum is one loop (two steps per turn) whatever the stride and
dilation. A block of ``MR`` cells may span rows and images; the last few
cells get a smaller block. A module built with ``streaming`` stores the
results with non-temporal stores (aligned, whole cache lines).

Examples
--------
>>> import numpy as np
>>> kernels = compiled(np.float32, 1) if available() else None
>>> kernels is None or kernels.width in (4, 8, 16)
True
"""

from __future__ import annotations

import ctypes
import os
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..state import cached_once

__all__ = ["available", "compiled", "vector_width", "block_rows", "Kernels"]

#: Steps of the sum per loop turn in a register block.
UNROLL = 2

# llvmlite's compiler is not thread-safe; compile one module at a time.
_LOCK = threading.Lock()


@cached_once
def _llvm() -> Any:
    """llvmlite's binding, initialised for this machine, or ``None``."""
    if os.environ.get("CONVARITH_JIT", "").strip() == "0":
        return None
    try:
        import llvmlite.binding as llvm
    except ImportError:
        return None
    try:
        llvm.initialize_native_target()
        llvm.initialize_native_asmprinter()
    except Exception:  # pragma: no cover - a broken llvmlite install
        return None
    return llvm


@cached_once
def _host() -> tuple[str, str, frozenset[str]] | None:
    llvm = _llvm()
    if llvm is None:
        return None
    try:
        features = llvm.get_host_cpu_features()
    except Exception:  # pragma: no cover - platforms without feature detection
        return None
    enabled = frozenset(name for name, on in features.items() if on)
    return llvm.get_host_cpu_name(), features.flatten(), enabled


def vector_width(dtype: Any) -> int:
    """Lanes of one vector register for ``dtype`` on this machine (0: no kernel here)."""
    host = _host()
    if host is None:
        return 0
    itemsize = np.dtype(dtype).itemsize
    if "avx512f" in host[2]:
        return 64 // itemsize
    if "avx2" in host[2] and "fma" in host[2]:
        return 32 // itemsize
    return 0


def available(dtype: Any = np.float32) -> bool:
    """Whether this machine compiles the kernels (llvmlite installed, AVX2+FMA or AVX-512,
    ``CONVARITH_JIT`` not ``0``)."""
    return np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64)) and vector_width(
        dtype) > 0


def _registers() -> int:
    host = _host()
    return 32 if host is not None and "avx512f" in host[2] else 16


def max_vectors() -> int:
    """Vectors of output channels per register block: 4 with AVX-512's 32 registers, else 2."""
    return 4 if _registers() == 32 else 2


def block_rows(vectors: int) -> int:
    """``MR``: output cells per register block for ``vectors`` vectors of channels.

    The block's ``MR·NV`` accumulators, ``NV`` kernel vectors and a broadcast
    must fit in the vector registers (32 with AVX-512, 16 with AVX2), and the
    ``MR`` input pointers in the general registers. Measured with AVX-512 on
    a block whose operands are in L1, two steps per loop turn (GFLOP/s of one
    core, peak 239): ``NV × MR`` = 4×6: 210, 4×5: 201, 3×9: 126 (spills),
    3×8: 201, 3×7: 208, 2×8: 189, 2×10: 191, 1×8: 141, 1×14: 129.
    """
    free = _registers() - 2 - vectors
    return max(1, min(7 if vectors == 3 else 8, free // vectors))


@dataclass(frozen=True)
class Kernels:
    """One compiled module: ``drive`` (see the module docstring) and its shape."""

    vectors: int
    rows: int
    width: int
    drive: Any
    engine: Any  # keeps the machine code alive


def _tile(name: str, mr: int, nv: int, ty: str, vw: int, streaming: bool = False) -> str:
    """IR of one register block: ``mr`` cells × ``nv`` vectors, summed over taps × channels.

    Each cell has its own input and output pointer, so a block may span rows.
    The sum runs :data:`UNROLL` steps per loop turn, then one at a time.
    """
    v = f"<{vw} x {ty}>"
    p = f"{ty}*"
    xs = ", ".join(f"{p} %x{i}" for i in range(mr))
    ys = ", ".join(f"{p} %y{i}" for i in range(mr))
    acc = [(i, j) for i in range(mr) for j in range(nv)]

    def step(tag: str, k: str, wc: str, before: str) -> list[str]:
        """One step of the sum: accumulators ``%{before}i_j`` -> ``%{tag}d i_j``."""
        out = [f"  %{tag}kp = getelementptr i64, i64* %xoff, i64 {k}",
               f"  %{tag}xc = load i64, i64* %{tag}kp"]
        for j in range(nv):
            out += [
                f"  %{tag}wo{j} = add i64 {wc}, {j * vw}",
                f"  %{tag}wp{j} = getelementptr {ty}, {p} %w, i64 %{tag}wo{j}",
                f"  %{tag}wq{j} = bitcast {p} %{tag}wp{j} to {v}*",
                f"  %{tag}wv{j} = load {v}, {v}* %{tag}wq{j}, align 4",
            ]
        for i in range(mr):
            out += [
                f"  %{tag}xp{i} = getelementptr {ty}, {p} %x{i}, i64 %{tag}xc",
                f"  %{tag}xl{i} = load {ty}, {p} %{tag}xp{i}",
                f"  %{tag}xe{i} = insertelement {v} undef, {ty} %{tag}xl{i}, i32 0",
                f"  %{tag}xb{i} = shufflevector {v} %{tag}xe{i}, {v} undef, "
                f"<{vw} x i32> zeroinitializer",
            ]
            for j in range(nv):
                out.append(f"  %{tag}d{i}_{j} = call {v} @llvm.fma.v{vw}{_suffix(ty)}"
                           f"({v} %{tag}xb{i}, {v} %{tag}wv{j}, {v} %{before}{i}_{j})")
        return out

    lines = [
        f"define internal void @{name}({xs}, {p} %w, {ys}, i64* %xoff, i64 %K, i64 %LDW, "
        "i64 %ACC) {",
        "entry:",
        "  %acc = icmp ne i64 %ACC, 0",
        "  br i1 %acc, label %load, label %pre",
        "load:",
    ]
    for i, j in acc:
        lines += [
            f"  %lp{i}_{j} = getelementptr {ty}, {p} %y{i}, i64 {j * vw}",
            f"  %lq{i}_{j} = bitcast {p} %lp{i}_{j} to {v}*",
            f"  %l{i}_{j} = load {v}, {v}* %lq{i}_{j}, align 4",
        ]
    lines += ["  br label %pre", "pre:"]
    for i, j in acc:
        lines.append(f"  %s{i}_{j} = phi {v} [zeroinitializer, %entry], [%l{i}_{j}, %load]")
    lines += [
        f"  %KU = sub i64 %K, {UNROLL - 1}",
        "  %some = icmp sgt i64 %KU, 0",
        "  br i1 %some, label %ch, label %after",
        "ch:",
        "  %k = phi i64 [0, %pre], [%k1, %ch]",
        "  %wc = phi i64 [0, %pre], [%wc1, %ch]",
    ]
    last = f"u{UNROLL - 1}d"
    for i, j in acc:
        lines.append(f"  %b{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%{last}{i}_{j}, %ch]")
    before, k, wc = "b", "%k", "%wc"
    for u in range(UNROLL):
        lines += step(f"u{u}", k, wc, before)
        before = f"u{u}d"
        lines += [f"  %k_{u} = add i64 %k, {u + 1}", f"  %wc_{u} = add i64 {wc}, %LDW"]
        k, wc = f"%k_{u}", f"%wc_{u}"
    lines += [
        f"  %k1 = add i64 %k, {UNROLL}",
        f"  %wc1 = add i64 {wc}, 0",
        "  %km = icmp slt i64 %k1, %KU",
        "  br i1 %km, label %ch, label %after",
        "after:",
        "  %ka = phi i64 [0, %pre], [%k1, %ch]",
        "  %wa = phi i64 [0, %pre], [%wc1, %ch]",
    ]
    for i, j in acc:
        lines.append(f"  %a{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%{last}{i}_{j}, %ch]")
    lines += [
        "  %left = icmp slt i64 %ka, %K",
        "  br i1 %left, label %rem, label %done",
        "rem:",
        "  %kr = phi i64 [%ka, %after], [%kr1, %rem]",
        "  %wr = phi i64 [%wa, %after], [%wr1, %rem]",
    ]
    for i, j in acc:
        lines.append(f"  %c{i}_{j} = phi {v} [%a{i}_{j}, %after], [%rd{i}_{j}, %rem]")
    lines += step("r", "%kr", "%wr", "c")
    lines += [
        "  %kr1 = add i64 %kr, 1",
        "  %wr1 = add i64 %wr, %LDW",
        "  %krm = icmp slt i64 %kr1, %K",
        "  br i1 %krm, label %rem, label %done",
        "done:",
    ]
    for i, j in acc:
        lines.append(f"  %e{i}_{j} = phi {v} [%a{i}_{j}, %after], [%rd{i}_{j}, %rem]")
    for i, j in acc:
        lines += [
            f"  %yp{i}_{j} = getelementptr {ty}, {p} %y{i}, i64 {j * vw}",
            f"  %yq{i}_{j} = bitcast {p} %yp{i}_{j} to {v}*",
            (f"  store {v} %e{i}_{j}, {v}* %yq{i}_{j}, align {vw * _size(ty)}, !nontemporal !0"
             if streaming else f"  store {v} %e{i}_{j}, {v}* %yq{i}_{j}, align 4"),
        ]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def _suffix(ty: str) -> str:
    return "f32" if ty == "float" else "f64"


def _size(ty: str) -> int:
    return 4 if ty == "float" else 8


def _cells(tag: str, count: int, ty: str) -> tuple[list[str], str, str]:
    """IR placing ``count`` cells from image ``%g``, row ``%r``, column ``%o`` (columns
    wrap at ``%OW``, rows at ``%RI``): the lines, the call's pointer arguments
    (inputs, outputs), and the cell after."""
    p = f"{ty}*"
    lines = []
    image, row, col = "%g", "%r", "%o"
    for i in range(count + 1):
        if i:
            lines += [
                f"  %{tag}n{i} = add i64 {col}, 1",
                f"  %{tag}w{i} = icmp eq i64 %{tag}n{i}, %OW",
                f"  %{tag}o{i} = select i1 %{tag}w{i}, i64 0, i64 %{tag}n{i}",
                f"  %{tag}z{i} = zext i1 %{tag}w{i} to i64",
                f"  %{tag}s{i} = add i64 {row}, %{tag}z{i}",
                f"  %{tag}v{i} = icmp eq i64 %{tag}s{i}, %RI",
                f"  %{tag}r{i} = select i1 %{tag}v{i}, i64 0, i64 %{tag}s{i}",
                f"  %{tag}u{i} = zext i1 %{tag}v{i} to i64",
                f"  %{tag}g{i} = add i64 {image}, %{tag}u{i}",
            ]
            image, row, col = f"%{tag}g{i}", f"%{tag}r{i}", f"%{tag}o{i}"
        if i == count:
            break
        lines += [
            f"  %{tag}xi{i} = mul i64 {image}, %XI",
            f"  %{tag}xa{i} = mul i64 {row}, %XR",
            f"  %{tag}xb{i} = mul i64 {col}, %XP",
            f"  %{tag}xd{i} = add i64 %{tag}xi{i}, %{tag}xa{i}",
            f"  %{tag}xc{i} = add i64 %{tag}xd{i}, %{tag}xb{i}",
            f"  %{tag}x{i} = getelementptr {ty}, {p} %x, i64 %{tag}xc{i}",
            f"  %{tag}yi{i} = mul i64 {image}, %YI",
            f"  %{tag}ya{i} = mul i64 {row}, %YR",
            f"  %{tag}yb{i} = mul i64 {col}, %YP",
            f"  %{tag}ye{i} = add i64 %{tag}yi{i}, %{tag}ya{i}",
            f"  %{tag}yc{i} = add i64 %{tag}ye{i}, %{tag}yb{i}",
            f"  %{tag}yd{i} = add i64 %{tag}yc{i}, %bo",
            f"  %{tag}y{i} = getelementptr {ty}, {p} %y, i64 %{tag}yd{i}",
        ]
    xs = ", ".join(f"{p} %{tag}x{i}" for i in range(count))
    ys = ", ".join(f"{p} %{tag}y{i}" for i in range(count))
    return lines, f"{xs}, {p} %wb, {ys}", f"{image} {row} {col}"


def _driver(mr: int, nv: int, ty: str, vw: int) -> str:
    """IR of ``drive``: column blocks × blocks of ``mr`` cells (spanning rows), then the tail."""
    p = f"{ty}*"
    rest = "i64* %xoff, i64 %K, i64 %LDW, i64 %ACC"
    body, args, after = _cells("m", mr, ty)
    next_image, next_row, next_col = after.split()
    lines = [
        f"define internal void @drive1({p} %x, {p} %w, {p} %y, i64* %xoff, i64 %R, i64 %XR, i64 %YR, "
        "i64 %OW, i64 %XP, i64 %YP, i64 %NCB, i64 %K, i64 %LDW, i64 %WB, i64 %ACC, i64 %RI, "
        "i64 %XI, i64 %YI) {",
        "entry:",
        "  %total = mul i64 %R, %OW",
        f"  %full = sub i64 %total, {mr - 1}",
        "  %rok = icmp sgt i64 %total, 0",
        "  %bok = icmp sgt i64 %NCB, 0",
        "  %go = and i1 %rok, %bok",
        "  br i1 %go, label %blk, label %exit",
        "blk:",
        "  %b = phi i64 [0, %entry], [%b1, %blk_end]",
        f"  %bo = mul i64 %b, {nv * vw}",
        "  %bw = mul i64 %b, %WB",
        f"  %wb = getelementptr {ty}, {p} %w, i64 %bw",
        "  br label %cell",
        "cell:",
        "  %q = phi i64 [0, %blk], [%q1, %cell_body]",
        f"  %g = phi i64 [0, %blk], [{next_image}, %cell_body]",
        f"  %r = phi i64 [0, %blk], [{next_row}, %cell_body]",
        f"  %o = phi i64 [0, %blk], [{next_col}, %cell_body]",
        "  %qm = icmp slt i64 %q, %full",
        "  br i1 %qm, label %cell_body, label %tail",
        "cell_body:",
        *body,
        f"  call void @tile{mr}({args}, {rest})",
        f"  %q1 = add i64 %q, {mr}",
        "  br label %cell",
        "tail:",
        "  %left = sub i64 %total, %q",
        "  switch i64 %left, label %blk_end [",
        *[f"    i64 {r}, label %tail{r}" for r in range(1, mr)],
        "  ]",
    ]
    for r in range(1, mr):
        body, args, _ = _cells(f"t{r}_", r, ty)
        lines += [f"tail{r}:", *body, f"  call void @tile{r}({args}, {rest})",
                  "  br label %blk_end"]
    lines += [
        "blk_end:",
        "  %b1 = add i64 %b, 1",
        "  %bm = icmp slt i64 %b1, %NCB",
        "  br i1 %bm, label %blk, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines)


def module_ir(dtype: Any, vectors: int, rows: int, width: int, streaming: bool = False
              ) -> str:
    """The whole module's IR (for reading; :func:`compiled` builds it)."""
    ty = "float" if np.dtype(dtype) == np.float32 else "double"
    v = f"<{width} x {ty}>"
    parts = [f"declare {v} @llvm.fma.v{width}{_suffix(ty)}({v}, {v}, {v})"]
    parts += [_tile(f"tile{r}", r, vectors, ty, width, streaming) for r in range(1, rows + 1)]
    parts.append(_driver(rows, vectors, ty, width))
    parts.append(_batches(ty))
    parts.append("!0 = !{i32 1}")
    return "\n\n".join(parts) + "\n"


def _batches(ty: str) -> str:
    """IR of ``drive``: ``drive1`` (one problem) over ``NB`` problems ``XB, WBB, YB`` apart."""
    p = f"{ty}*"
    one = ("i64* %xoff, i64 %R, i64 %XR, i64 %YR, i64 %OW, i64 %XP, i64 %YP, i64 %NCB, "
           "i64 %K, i64 %LDW, i64 %WB, i64 %ACC, i64 %RI, i64 %XI, i64 %YI")
    return "\n".join([
        f"define void @drive({p} %x, {p} %w, {p} %y, {one}, i64 %NB, i64 %XB, i64 %WBB, "
        "i64 %YB) {",
        "entry:",
        "  %go = icmp sgt i64 %NB, 0",
        "  br i1 %go, label %loop, label %exit",
        "loop:",
        "  %i = phi i64 [0, %entry], [%i1, %loop]",
        "  %xi = mul i64 %i, %XB",
        f"  %xq = getelementptr {ty}, {p} %x, i64 %xi",
        "  %wi = mul i64 %i, %WBB",
        f"  %wq = getelementptr {ty}, {p} %w, i64 %wi",
        "  %yi = mul i64 %i, %YB",
        f"  %yq = getelementptr {ty}, {p} %y, i64 %yi",
        f"  call void @drive1({p} %xq, {p} %wq, {p} %yq, {one})",
        "  %i1 = add i64 %i, 1",
        "  %more = icmp slt i64 %i1, %NB",
        "  br i1 %more, label %loop, label %exit",
        "exit:",
        "  ret void",
        "}",
    ])


@cached_once
def compiled(dtype: Any, vectors: int, streaming: bool = False) -> Kernels | None:
    """The module for ``dtype`` and ``vectors`` vectors per block (``None``: not here);
    ``streaming``: results are stored past the caches (aligned output only)."""
    dtype = np.dtype(dtype)
    if not available(dtype):
        return None
    llvm = _llvm()
    host = _host()
    assert host is not None
    width = vector_width(dtype)
    rows = block_rows(vectors)
    with _LOCK:
        module = llvm.parse_assembly(module_ir(dtype, vectors, rows, width, streaming))
        module.verify()
        target = llvm.Target.from_default_triple()
        machine = target.create_target_machine(cpu=host[0], features=host[1], opt=3)
        engine = llvm.create_mcjit_compiler(module, machine)
        engine.finalize_object()
        address = engine.get_function_address("drive")
    pointer = ctypes.c_void_p
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, pointer, pointer,
                                 *([ctypes.c_int64] * 18))
    return Kernels(vectors, rows, width, signature(address), engine)
