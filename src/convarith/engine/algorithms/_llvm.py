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
llvmlite (which numba installs) for a :class:`VectorTarget`: the machine it
runs on by default (``VW`` = 16 floats, 8 doubles with AVX-512; 8 and 4 with
AVX2), or the one named by ``CONVARITH_VECTOR_ISA`` (``avx2`` runs the AVX2
code on an AVX-512 machine; ``neon`` is AArch64, compiled but only run on
such a machine). The functions are plain C functions called through ctypes,
which releases the GIL.

Each compiled module (one per target, dtype, ``NV`` and streaming or not)
exports ``drive``, called through :meth:`Kernels.run`::

    run(x, w, y, offsets, cells: Cells, sums: Sums, batch: Batch)

(addresses, then the fields of three named tuples, in the order the IR's
signature takes them: that signature is generated from the tuples' fields).
For ``batch.problems`` problems (``x``, ``w`` and ``y`` advanced by ``batch``'s
strides from one to the next: Winograd's batched products), each of
``cells.rows`` output rows of ``cells.row_cells`` cells, and ``sums.blocks``
column blocks of ``NV·VW`` channels: with rows counted in images of
``cells.image_rows`` rows (row ``r = g·image_rows + i``), cell ``(r, o)`` of
block ``b`` is::

    y[g·y_image + i·y_row + o·y_cell + b·NV·VW + j] (+)= Σ_{k < steps}
        x[g·x_image + i·x_row + o·x_cell + offsets[k]] · w[b·block_stride + k·step_stride + j]

adding to what ``y`` holds when ``sums.accumulate`` is not 0 (for sums split
into steps of input channels). ``offsets`` lists where each tap and input
channel reads, so the sum is one loop (two steps per turn) whatever the
stride and dilation. A block of ``MR`` cells may span rows and images; the
last few cells get a smaller block. A module built with ``streaming`` stores
the results with non-temporal stores (aligned, whole cache lines).

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
from typing import Any, NamedTuple

import numpy as np

from ..state import cached_once, environment

__all__ = ["available", "compiled", "vector_width", "block_rows", "max_vectors", "Kernels",
           "Cells", "Sums", "Batch", "ONE_PROBLEM", "VectorTarget", "vector_target",
           "target_named", "narrower_than_host", "module_ir", "assembly", "ir_assembly", "ISA_VARIABLE", "ISA_NAMES",
           "grouped_module_ir", "grouped_block_rows", "grouped_assembly", "compiled_grouped",
           "interleaved_block_rows"]

#: Steps of the sum per loop turn in a register block.
UNROLL = 2

#: The environment variable that picks the instruction set the kernels are made for.
ISA_VARIABLE = "CONVARITH_VECTOR_ISA"

#: Its values: ``native`` (the default: what this CPU has), ``avx2``, ``avx512``, ``neon``.
ISA_NAMES = ("native", "avx2", "avx512", "neon")

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


@dataclass(frozen=True)
class VectorTarget:
    """An instruction set the kernels are compiled for.

    ``triple`` empty means this machine's; ``runs_here``: the code can be run on
    this machine (else it can only be compiled, e.g. to check the IR).

    >>> target_named("neon").vector_bytes, target_named("neon").registers
    (16, 32)
    """

    name: str
    triple: str
    cpu: str
    features: str
    vector_bytes: int
    registers: int
    runs_here: bool

    def width(self, dtype: Any) -> int:
        """Lanes of one vector register for ``dtype``."""
        return self.vector_bytes // np.dtype(dtype).itemsize


def _host_has(*features: str) -> bool:
    host = _host()
    return host is not None and all(name in host[2] for name in features)


def target_named(name: str) -> VectorTarget:
    """The :class:`VectorTarget` called ``name`` (one of :data:`ISA_NAMES`).

    ``native`` is what this CPU offers: AVX-512, else AVX2 with FMA, else NEON
    on AArch64 (``vector_bytes`` 0 where none of them: no kernels).

    >>> target_named("avx2").cpu, target_named("avx2").vector_bytes
    ('haswell', 32)
    """
    if name == "avx2":
        return VectorTarget("avx2", "", "haswell", "", 32, 16, _host_has("avx2", "fma"))
    if name == "avx512":
        return VectorTarget("avx512", "", "skylake-avx512", "", 64, 32, _host_has("avx512f"))
    if name == "neon":
        llvm = _llvm()
        here = llvm is not None and llvm.get_process_triple().startswith(("aarch64", "arm64"))
        return VectorTarget("neon", "aarch64-unknown-linux-gnu", "generic", "+neon", 16, 32,
                            here and _host_has("neon"))
    if name != "native":
        raise ValueError(f"{ISA_VARIABLE}={name!r} is not an instruction set the kernels are "
                         f"made for: use one of {', '.join(ISA_NAMES)}")
    host = _host()
    if host is None:
        return VectorTarget("native", "", "", "", 0, 16, False)
    cpu, features, enabled = host
    if "avx512f" in enabled:
        return VectorTarget("native", "", cpu, features, 64, 32, True)
    if "avx2" in enabled and "fma" in enabled:
        return VectorTarget("native", "", cpu, features, 32, 16, True)
    if "neon" in enabled:
        return VectorTarget("native", "", cpu, features, 16, 32, True)
    return VectorTarget("native", "", cpu, features, 0, 16, False)


def vector_target() -> VectorTarget:
    """The target in use: ``CONVARITH_VECTOR_ISA`` (default ``native``), read at each call."""
    name = environment(ISA_VARIABLE).strip().lower() or "native"
    return _target(name)


@cached_once
def _target(name: str) -> VectorTarget:
    return target_named(name)


def narrower_than_host() -> bool:
    """Whether the target in use has narrower vectors than this CPU (``avx2`` chosen on an
    AVX-512 machine), whose BLAS then still runs the wider ones.

    >>> isinstance(narrower_than_host(), bool)
    True
    """
    return vector_target().vector_bytes < _target("native").vector_bytes


def vector_width(dtype: Any) -> int:
    """Lanes of one vector register for ``dtype`` on the target in use (0: no kernel here)."""
    target = vector_target()
    return target.width(dtype) if target.runs_here else 0


def available(dtype: Any = np.float32) -> bool:
    """Whether the kernels run here (llvmlite installed, the target's instructions present,
    ``CONVARITH_JIT`` not ``0``)."""
    return np.dtype(dtype) in (np.dtype(np.float32), np.dtype(np.float64)) and vector_width(
        dtype) > 0


def max_vectors(target: VectorTarget | None = None) -> int:
    """Vectors of output channels per register block: 4 with 32 registers, else 2."""
    registers = (target or vector_target()).registers
    return 4 if registers == 32 else 2


def block_rows(vectors: int, target: VectorTarget | None = None) -> int:
    """``MR``: output cells per register block for ``vectors`` vectors of channels.

    The block's ``MR·NV`` accumulators, ``NV`` kernel vectors and a broadcast
    must fit in the vector registers (32 with AVX-512 and NEON, 16 with AVX2), and
    the ``MR`` input pointers in the general registers. Measured with AVX-512 on
    a block whose operands are in L1, two steps per loop turn (GFLOP/s of one
    core, peak 239): ``NV × MR`` = 4×6: 210, 4×5: 201, 3×9: 126 (spills),
    3×8: 201, 3×7: 208, 2×8: 189, 2×10: 191, 1×8: 141, 1×14: 129.
    """
    free = (target or vector_target()).registers - 2 - vectors
    return max(1, min(7 if vectors == 3 else 8, free // vectors))


class Cells(NamedTuple):
    """Where one call's output cells lie and read (counts, and strides in elements)."""

    rows: int  #: output rows
    row_cells: int  #: cells per row
    image_rows: int  #: rows per image (a block of cells wraps into the next image)
    x_row: int  #: input elements from one output row to the next
    x_cell: int  #: ... from one cell of a row to the next
    x_image: int  #: ... from one image to the next
    y_row: int  #: output elements from one row to the next
    y_cell: int  #: ... from one cell to the next
    y_image: int  #: ... from one image to the next


class Sums(NamedTuple):
    """The sum each cell takes: its steps, and the kernel panel's layout (elements)."""

    blocks: int  #: column blocks of ``NV·VW`` output channels
    steps: int  #: steps of the sum (taps × input channels); ``offsets`` has as many
    step_stride: int  #: panel elements from one step to the next
    block_stride: int  #: panel elements from one column block to the next
    accumulate: int  #: 1: add to what the output holds, 0: overwrite it


class Batch(NamedTuple):
    """Several independent problems, their operands a fixed number of elements apart."""

    problems: int  #: how many
    x_stride: int
    w_stride: int
    y_stride: int


#: One problem (the usual call).
ONE_PROBLEM = Batch(1, 0, 0, 0)


@dataclass(frozen=True)
class Kernels:
    """One compiled module: ``drive`` (see the module docstring) and its shape."""

    vectors: int
    rows: int
    width: int
    drive: Any
    engine: Any  # keeps the machine code alive

    def run(self, x: int, w: int, y: int, offsets: int, cells: Cells, sums: Sums,
            batch: Batch = ONE_PROBLEM) -> None:
        """Run ``drive`` on the operands at addresses ``x, w, y`` and ``offsets`` (int64)."""
        self.drive(x, w, y, offsets, *cells, *sums, *batch)


def _parameters(*tuples: Any) -> str:
    """IR parameters ``i64 %name, ...`` in the order of the named tuples' fields."""
    return ", ".join(f"i64 %{name}" for kind in tuples for name in kind._fields)


def _tile(name: str, mr: int, nv: int, ty: str, vw: int, streaming: bool = False,
          depthwise: bool = False, interleave: int = 0, spread: int = 0,
          group: int = 0) -> str:
    """IR of one register block: ``mr`` cells × ``nv`` vectors, summed over taps × channels.

    Each cell has its own input and output pointer, so a block may span rows.
    The sum runs :data:`UNROLL` steps per loop turn, then one at a time.
    ``depthwise``: each step multiplies a *vector* of input channels (read at the
    step's offset plus the lane) by the kernel's vector, lane by lane, instead of
    one input value broadcast. ``interleave`` (at least 2, with ``depthwise``): each
    step reads ``interleave`` input values ``vw / interleave`` apart, each broadcast
    over its own ``vw / interleave`` lanes (a broadcasting load each, put together
    by lane blocks), for several groups per vector (see
    :func:`interleaved_module_ir`). ``spread`` (2 or 4, with ``depthwise``): each output's
    sum is split over ``spread`` lanes (lane ``spread·o + h`` sums its products with its
    group's input channels ``spread·c + h``), vector ``j`` holding outputs
    ``[j·vw/spread, (j+1)·vw/spread)`` of the block, in groups of ``group`` channels;
    each step broadcasts ``spread`` adjacent input channels of a group (one load, shared
    by that group's vectors), and the lanes of each output are added when the block is
    stored (see :func:`spread_module_ir`).
    """
    v = f"<{vw} x {ty}>"
    p = f"{ty}*"
    per = vw // spread if spread else vw  # outputs per vector
    xs = ", ".join(f"{p} %x{i}" for i in range(mr))
    ys = ", ".join(f"{p} %y{i}" for i in range(mr))
    acc = [(i, j) for i in range(mr) for j in range(nv)]

    def step(tag: str, k: str, wc: str, before: str) -> list[str]:
        """One step of the sum: accumulators ``%{before}i_j`` -> ``%{tag}d i_j``."""
        out = [f"  %{tag}kp = getelementptr i64, i64* %offsets, i64 {k}",
               f"  %{tag}xc = load i64, i64* %{tag}kp"]
        for j in range(nv):
            if j:
                out.append(f"  %{tag}wo{j} = add i64 {wc}, {j * vw}")
            out += [
                f"  %{tag}wp{j} = getelementptr {ty}, {p} %w, i64 "
                f"{f'%{tag}wo{j}' if j else wc}",
                f"  %{tag}wq{j} = bitcast {p} %{tag}wp{j} to {v}*",
                f"  %{tag}wv{j} = load {v}, {v}* %{tag}wq{j}, align 4",
            ]
        if spread:
            sv = f"<{spread} x {ty}>"
            lanes = ", ".join(f"i32 {lane % spread}" for lane in range(vw))
            for i in range(mr):
                for j in range(nv):
                    first = j * per // group * group  # the vector's group's first channel
                    if j and (j - 1) * per // group * group == first:
                        out.append(f"  %{tag}xv{i}_{j} = bitcast {v} %{tag}xv{i}_{j - 1} "
                                   f"to {v}")
                    else:
                        if first:
                            out.append(f"  %{tag}xo{i}_{j} = add i64 %{tag}xc, {first}")
                        out += [
                            f"  %{tag}xp{i}_{j} = getelementptr {ty}, {p} %x{i}, i64 "
                            f"{f'%{tag}xo{i}_{j}' if first else f'%{tag}xc'}",
                            f"  %{tag}xq{i}_{j} = bitcast {p} %{tag}xp{i}_{j} to {sv}*",
                            f"  %{tag}xl{i}_{j} = load {sv}, {sv}* %{tag}xq{i}_{j}, align 4",
                            f"  %{tag}xv{i}_{j} = shufflevector {sv} %{tag}xl{i}_{j}, {sv} "
                            f"undef, <{vw} x i32> <{lanes}>",
                        ]
                    out.append(f"  %{tag}d{i}_{j} = call {v} @llvm.fma.v{vw}{_suffix(ty)}"
                               f"({v} %{tag}xv{i}_{j}, {v} %{tag}wv{j}, {v} %{before}{i}_{j})")
            return out
        if depthwise:
            for i in range(mr):
                for j in range(nv):
                    if j:
                        out.append(f"  %{tag}xo{i}_{j} = add i64 %{tag}xc, {j * vw}")
                    out.append(f"  %{tag}xp{i}_{j} = getelementptr {ty}, {p} %x{i}, i64 "
                               f"{f'%{tag}xo{i}_{j}' if j else f'%{tag}xc'}")
                    if interleave:
                        span = vw // interleave
                        last = ""
                        for m in range(interleave):
                            out += [
                                f"  %{tag}xm{i}_{j}_{m} = getelementptr {ty}, {p} "
                                f"%{tag}xp{i}_{j}, i64 {m * span}",
                                f"  %{tag}xl{i}_{j}_{m} = load {ty}, {p} %{tag}xm{i}_{j}_{m}",
                                f"  %{tag}xe{i}_{j}_{m} = insertelement {v} undef, {ty} "
                                f"%{tag}xl{i}_{j}_{m}, i32 0",
                                f"  %{tag}x{'v' if interleave == 1 else 's'}{i}_{j}"
                                f"{'' if interleave == 1 else f'_{m}'} = shufflevector {v} "
                                f"%{tag}xe{i}_{j}_{m}, "
                                f"{v} undef, <{vw} x i32> zeroinitializer",
                            ]
                            if m:  # lanes [m·span, (m+1)·span) from this splat
                                mask = ", ".join(
                                    f"i32 {lane + vw if lane // span == m else lane}"
                                    for lane in range(vw))
                                name = (f"%{tag}xv{i}_{j}" if m == interleave - 1
                                        else f"%{tag}xc{i}_{j}_{m}")
                                out.append(f"  {name} = shufflevector {v} {last}, "
                                           f"{v} %{tag}xs{i}_{j}_{m}, <{vw} x i32> <{mask}>")
                                last = name
                            else:
                                last = f"%{tag}xs{i}_{j}_{m}"
                    else:
                        out += [
                            f"  %{tag}xq{i}_{j} = bitcast {p} %{tag}xp{i}_{j} to {v}*",
                            f"  %{tag}xv{i}_{j} = load {v}, {v}* %{tag}xq{i}_{j}, align 4",
                        ]
                    out += [
                        f"  %{tag}d{i}_{j} = call {v} @llvm.fma.v{vw}{_suffix(ty)}"
                        f"({v} %{tag}xv{i}_{j}, {v} %{tag}wv{j}, {v} %{before}{i}_{j})",
                    ]
            return out
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
        f"define internal void @{name}({xs}, {p} %w, {ys}, i64* %offsets, i64 %steps, "
        "i64 %step_stride, i64 %accumulate) {",
        "entry:",
        "  %adding = icmp ne i64 %accumulate, 0",
        "  br i1 %adding, label %load, label %pre",
        "load:",
    ]
    hv = f"<{per} x {ty}>"
    for i, j in acc:
        if spread:  # each output's first lane starts from it, the others from 0
            lanes = ", ".join(f"i32 {lane // spread if lane % spread == 0 else per}"
                              for lane in range(vw))
            lines += [
                f"  %lp{i}_{j} = getelementptr {ty}, {p} %y{i}, i64 {j * per}" if j else "",
                f"  %lq{i}_{j} = bitcast {p} {f'%lp{i}_{j}' if j else f'%y{i}'} to {hv}*",
                f"  %lh{i}_{j} = load {hv}, {hv}* %lq{i}_{j}, align 4",
                f"  %l{i}_{j} = shufflevector {hv} %lh{i}_{j}, {hv} zeroinitializer, "
                f"<{vw} x i32> <{lanes}>",
            ]
            continue
        lines += [
            f"  %lp{i}_{j} = getelementptr {ty}, {p} %y{i}, i64 {j * vw}" if j else "",
            f"  %lq{i}_{j} = bitcast {p} {f'%lp{i}_{j}' if j else f'%y{i}'} to {v}*",
            f"  %l{i}_{j} = load {v}, {v}* %lq{i}_{j}, align 4",
        ]
    lines += ["  br label %pre", "pre:"]
    for i, j in acc:
        lines.append(f"  %s{i}_{j} = phi {v} [zeroinitializer, %entry], [%l{i}_{j}, %load]")
    lines += [
        f"  %KU = sub i64 %steps, {UNROLL - 1}",
        "  %some = icmp sgt i64 %KU, 0",
        "  br i1 %some, label %ch, label %after",
        "ch:",
        "  %k = phi i64 [0, %pre], [%k1, %ch]",
        f"  %wc = phi i64 [0, %pre], [%wc_{UNROLL - 1}, %ch]",
    ]
    last = f"u{UNROLL - 1}d"
    for i, j in acc:
        lines.append(f"  %b{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%{last}{i}_{j}, %ch]")
    before, k, wc = "b", "%k", "%wc"
    for u in range(UNROLL):
        lines += step(f"u{u}", k, wc, before)
        before = f"u{u}d"
        if u + 1 < UNROLL:
            lines.append(f"  %k_{u} = add i64 %k, {u + 1}")
            k = f"%k_{u}"
        lines.append(f"  %wc_{u} = add i64 {wc}, %step_stride")
        wc = f"%wc_{u}"
    lines += [
        f"  %k1 = add i64 %k, {UNROLL}",
        "  %km = icmp slt i64 %k1, %KU",
        "  br i1 %km, label %ch, label %after",
        "after:",
        "  %ka = phi i64 [0, %pre], [%k1, %ch]",
        f"  %wa = phi i64 [0, %pre], [{wc}, %ch]",
    ]
    for i, j in acc:
        lines.append(f"  %a{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%{last}{i}_{j}, %ch]")
    lines += [
        "  %left = icmp slt i64 %ka, %steps",
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
        "  %wr1 = add i64 %wr, %step_stride",
        "  %krm = icmp slt i64 %kr1, %steps",
        "  br i1 %krm, label %rem, label %done",
        "done:",
    ]
    for i, j in acc:
        lines.append(f"  %e{i}_{j} = phi {v} [%a{i}_{j}, %after], [%rd{i}_{j}, %rem]")
    if spread:
        # pairs of vectors' lanes added pair by pair into one vector, log2(spread) times:
        # then each vector holds vw outputs in order
        evens = ", ".join(f"i32 {2 * lane}" for lane in range(vw))
        odds = ", ".join(f"i32 {2 * lane + 1}" for lane in range(vw))
        for i in range(mr):
            level = [f"%e{i}_{j}" for j in range(nv)]
            depth = 0
            while 1 << depth < spread:
                folded = []
                for t in range(0, len(level), 2):
                    second = level[t + 1] if t + 1 < len(level) else "zeroinitializer"
                    name = f"%f{i}_{depth}_{t}"
                    lines += [
                        f"  {name}e = shufflevector {v} {level[t]}, {v} {second}, "
                        f"<{vw} x i32> <{evens}>",
                        f"  {name}o = shufflevector {v} {level[t]}, {v} {second}, "
                        f"<{vw} x i32> <{odds}>",
                        f"  {name} = fadd {v} {name}e, {name}o",
                    ]
                    folded.append(name)
                level, depth = folded, depth + 1
            for t, name in enumerate(level):
                count = min(vw, nv * per - t * vw)
                cv = f"<{count} x {ty}>"
                if count < vw:
                    keep = ", ".join(f"i32 {lane}" for lane in range(count))
                    lines.append(f"  {name}k = shufflevector {v} {name}, {v} undef, "
                                 f"<{count} x i32> <{keep}>")
                    name += "k"
                lines += [
                    f"  %yp{i}_{t} = getelementptr {ty}, {p} %y{i}, i64 {t * vw}" if t else "",
                    f"  %yq{i}_{t} = bitcast {p} {f'%yp{i}_{t}' if t else f'%y{i}'} to {cv}*",
                    f"  store {cv} {name}, {cv}* %yq{i}_{t}, align 4",
                ]
        lines += ["  ret void", "}"]
        return "\n".join(line for line in lines if line)
    for i, j in acc:
        lines += [
            f"  %yp{i}_{j} = getelementptr {ty}, {p} %y{i}, i64 {j * vw}" if j else "",
            f"  %yq{i}_{j} = bitcast {p} {f'%yp{i}_{j}' if j else f'%y{i}'} to {v}*",
            (f"  store {v} %e{i}_{j}, {v}* %yq{i}_{j}, align {vw * _size(ty)}, !nontemporal !0"
             if streaming else f"  store {v} %e{i}_{j}, {v}* %yq{i}_{j}, align 4"),
        ]
    lines += ["  ret void", "}"]
    return "\n".join(line for line in lines if line)


def _suffix(ty: str) -> str:
    return "f32" if ty == "float" else "f64"


def _size(ty: str) -> int:
    return 4 if ty == "float" else 8


def _cells(tag: str, count: int, ty: str, x_base: str = "%x") -> tuple[list[str], str, str]:
    """IR placing ``count`` cells from image ``%g``, row ``%r``, column ``%o`` (columns
    wrap at ``%row_cells``, rows at ``%image_rows``): the lines, the call's pointer
    arguments (inputs, outputs), and the cell after."""
    p = f"{ty}*"
    lines = []
    image, row, col = "%g", "%r", "%o"
    for i in range(count + 1):
        if i:
            lines += [
                f"  %{tag}n{i} = add i64 {col}, 1",
                f"  %{tag}w{i} = icmp eq i64 %{tag}n{i}, %row_cells",
                f"  %{tag}o{i} = select i1 %{tag}w{i}, i64 0, i64 %{tag}n{i}",
                f"  %{tag}z{i} = zext i1 %{tag}w{i} to i64",
                f"  %{tag}s{i} = add i64 {row}, %{tag}z{i}",
                f"  %{tag}v{i} = icmp eq i64 %{tag}s{i}, %image_rows",
                f"  %{tag}r{i} = select i1 %{tag}v{i}, i64 0, i64 %{tag}s{i}",
                f"  %{tag}u{i} = zext i1 %{tag}v{i} to i64",
                f"  %{tag}g{i} = add i64 {image}, %{tag}u{i}",
            ]
            image, row, col = f"%{tag}g{i}", f"%{tag}r{i}", f"%{tag}o{i}"
        if i == count:
            break
        lines += [
            f"  %{tag}xi{i} = mul i64 {image}, %x_image",
            f"  %{tag}xa{i} = mul i64 {row}, %x_row",
            f"  %{tag}xb{i} = mul i64 {col}, %x_cell",
            f"  %{tag}xd{i} = add i64 %{tag}xi{i}, %{tag}xa{i}",
            f"  %{tag}xc{i} = add i64 %{tag}xd{i}, %{tag}xb{i}",
            f"  %{tag}x{i} = getelementptr {ty}, {p} {x_base}, i64 %{tag}xc{i}",
            f"  %{tag}yi{i} = mul i64 {image}, %y_image",
            f"  %{tag}ya{i} = mul i64 {row}, %y_row",
            f"  %{tag}yb{i} = mul i64 {col}, %y_cell",
            f"  %{tag}ye{i} = add i64 %{tag}yi{i}, %{tag}ya{i}",
            f"  %{tag}yc{i} = add i64 %{tag}ye{i}, %{tag}yb{i}",
            f"  %{tag}yd{i} = add i64 %{tag}yc{i}, %bo",
            f"  %{tag}y{i} = getelementptr {ty}, {p} %y, i64 %{tag}yd{i}",
        ]
    xs = ", ".join(f"{p} %{tag}x{i}" for i in range(count))
    ys = ", ".join(f"{p} %{tag}y{i}" for i in range(count))
    return lines, f"{xs}, {p} %wb, {ys}", f"{image} {row} {col}"


def _driver(mr: int, nv: int, ty: str, vw: int, depthwise: bool = False,
            block_channels: int = 0) -> str:
    """IR of ``drive1``: column blocks × blocks of ``mr`` cells (spanning rows), then the
    tail, for one problem (``depthwise``: a column block reads its own input channels);
    a column block is ``block_channels`` output channels (default ``nv · vw``)."""
    p = f"{ty}*"
    rest = "i64* %offsets, i64 %steps, i64 %step_stride, i64 %accumulate"
    x_base = "%xb" if depthwise else "%x"
    body, args, after = _cells("m", mr, ty, x_base)
    next_image, next_row, next_col = after.split()
    lines = [
        f"define internal void @drive1({p} %x, {p} %w, {p} %y, i64* %offsets, "
        f"{_parameters(Cells, Sums)}) {{",
        "entry:",
        "  %total = mul i64 %rows, %row_cells",
        f"  %full = sub i64 %total, {mr - 1}",
        "  %rok = icmp sgt i64 %total, 0",
        "  %bok = icmp sgt i64 %blocks, 0",
        "  %go = and i1 %rok, %bok",
        "  br i1 %go, label %blk, label %exit",
        "blk:",
        "  %b = phi i64 [0, %entry], [%b1, %blk_end]",
        f"  %bo = mul i64 %b, {block_channels or nv * vw}",
        "  %bw = mul i64 %b, %block_stride",
        f"  %wb = getelementptr {ty}, {p} %w, i64 %bw",
        *([f"  %xb = getelementptr {ty}, {p} %x, i64 %bo"] if depthwise else []),
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
        body, args, _ = _cells(f"t{r}_", r, ty, x_base)
        lines += [f"tail{r}:", *body, f"  call void @tile{r}({args}, {rest})",
                  "  br label %blk_end"]
    lines += [
        "blk_end:",
        "  %b1 = add i64 %b, 1",
        "  %bm = icmp slt i64 %b1, %blocks",
        "  br i1 %bm, label %blk, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]
    return "\n".join(lines)


def _ir_type(dtype: Any) -> str:
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "float"
    if dtype == np.float64:
        return "double"
    raise ValueError(f"the compiled kernels take float32 or float64, got dtype {dtype}")


def module_ir(dtype: Any, vectors: int, rows: int, width: int, streaming: bool = False,
              depthwise: bool = False) -> str:
    """The whole module's IR (for reading; :func:`compiled` builds it); ``depthwise``:
    lane-by-lane products, each column block reading its own channels (``x`` is
    advanced like ``y``).

    >>> ir = module_ir(np.float32, 1, 2, 8)
    >>> "define void @drive(" in ir and "@llvm.fma.v8f32" in ir
    True
    """
    ty = _ir_type(dtype)
    v = f"<{width} x {ty}>"
    parts = [f"declare {v} @llvm.fma.v{width}{_suffix(ty)}({v}, {v}, {v})"]
    parts += [_tile(f"tile{r}", r, vectors, ty, width, streaming, depthwise)
              for r in range(1, rows + 1)]
    parts.append(_driver(rows, vectors, ty, width, depthwise))
    parts.append(_batches(ty))
    parts.append("!0 = !{i32 1}")
    return "\n\n".join(parts) + "\n"


def _batches(ty: str) -> str:
    """IR of ``drive``: ``drive1`` (one problem) over ``problems`` problems."""
    p = f"{ty}*"
    one = _parameters(Cells, Sums)
    return "\n".join([
        f"define void @drive({p} %x, {p} %w, {p} %y, i64* %offsets, "
        f"{_parameters(Cells, Sums, Batch)}) {{",
        "entry:",
        "  %go = icmp sgt i64 %problems, 0",
        "  br i1 %go, label %loop, label %exit",
        "loop:",
        "  %i = phi i64 [0, %entry], [%i1, %loop]",
        "  %xi = mul i64 %i, %x_stride",
        f"  %xq = getelementptr {ty}, {p} %x, i64 %xi",
        "  %wi = mul i64 %i, %w_stride",
        f"  %wq = getelementptr {ty}, {p} %w, i64 %wi",
        "  %yi = mul i64 %i, %y_stride",
        f"  %yq = getelementptr {ty}, {p} %y, i64 %yi",
        f"  call void @drive1({p} %xq, {p} %wq, {p} %yq, i64* %offsets, {one})",
        "  %i1 = add i64 %i, 1",
        "  %more = icmp slt i64 %i1, %problems",
        "  br i1 %more, label %loop, label %exit",
        "exit:",
        "  ret void",
        "}",
    ])


def _machine(llvm: Any, target: VectorTarget) -> Any:
    """llvmlite's target machine for ``target`` (all targets initialised for a foreign one)."""
    if target.triple:
        llvm.initialize_all_targets()
        llvm.initialize_all_asmprinters()
        found = llvm.Target.from_triple(target.triple)
    else:
        found = llvm.Target.from_default_triple()
    return found.create_target_machine(cpu=target.cpu, features=target.features, opt=3)


def compile_drive(llvm: Any, target: VectorTarget, ir: str) -> tuple[int, Any]:
    """Compile the module ``ir`` for ``target`` (under the compile lock): the address
    of its ``drive`` function and the execution engine that owns the code (keep it)."""
    with _LOCK:
        module = llvm.parse_assembly(ir)
        module.verify()
        engine = llvm.create_mcjit_compiler(module, _machine(llvm, target))
        engine.finalize_object()
        return engine.get_function_address("drive"), engine


def drive_kernels(llvm: Any, target: VectorTarget, ir: str, vectors: int, rows: int,
                  width: int) -> Kernels:
    """:class:`Kernels` of a compiled module whose ``drive`` takes four pointers and the
    fields of :class:`Cells`, :class:`Sums` and :class:`Batch`."""
    address, engine = compile_drive(llvm, target, ir)
    pointer = ctypes.c_void_p
    counts = len(Cells._fields) + len(Sums._fields) + len(Batch._fields)
    signature = ctypes.CFUNCTYPE(None, pointer, pointer, pointer, pointer,
                                 *([ctypes.c_int64] * counts))
    return Kernels(vectors, rows, width, signature(address), engine)


def assembly(target: VectorTarget, dtype: Any, vectors: int, streaming: bool = False) -> str:
    """The machine code of a module for ``target``, as assembly text: checks that the IR
    compiles for an instruction set this machine need not run (raises ``RuntimeError``
    if llvmlite or its backend for ``target`` is missing)."""
    return ir_assembly(module_ir(dtype, vectors, block_rows(vectors, target),
                                 target.width(dtype), streaming), target)


def ir_assembly(ir: str, target: VectorTarget) -> str:
    """The machine code of the LLVM module ``ir`` for ``target``, as assembly text: parsed,
    verified and emitted for an instruction set this machine need not run (under the
    compile lock; ``RuntimeError`` without llvmlite or with ``CONVARITH_JIT=0``).

    >>> if _llvm() is not None:
    ...     text = ir_assembly("define void @drive() {\\nentry:\\n  ret void\\n}\\n",
    ...                        target_named("avx2"))
    ...     assert "drive" in text
    """
    llvm = _llvm()
    if llvm is None:
        raise RuntimeError("llvmlite is not installed (or CONVARITH_JIT=0)")
    with _LOCK:
        machine = _machine(llvm, target)
        module = llvm.parse_assembly(ir)
        if target.triple:
            module.triple = target.triple
        module.verify()
        return str(machine.emit_assembly(module))


def compiled(dtype: Any, vectors: int, streaming: bool = False, depthwise: bool = False
             ) -> Kernels | None:
    """The module for ``dtype`` and ``vectors`` vectors per block on the target in use
    (``None``: not here); ``streaming``: results are stored past the caches (aligned
    output only); ``depthwise``: see :func:`module_ir`."""
    return _compiled(np.dtype(dtype), vectors, streaming, vector_target(), depthwise)


@cached_once
def _compiled(dtype: np.dtype[Any], vectors: int, streaming: bool, target: VectorTarget,
              depthwise: bool = False) -> Kernels | None:
    llvm = _llvm()
    width = target.width(dtype)
    if llvm is None or not target.runs_here or width == 0 or dtype.char not in "fd":
        return None
    rows = block_rows(vectors, target)
    return drive_kernels(llvm, target, module_ir(dtype, vectors, rows, width, streaming,
                                                 depthwise), vectors, rows, width)


def _grouped_tile(name: str, mr: int, nv: int, ty: str, vw: int, group: int) -> str:
    """IR of one register block for groups of ``group`` input and ``group`` output
    channels, ``group`` dividing the lanes ``vw``: ``mr`` cells × ``nv`` vectors of
    output channels, summed over the taps (one step each).

    A vector of outputs holds ``vw / group`` whole groups, whose input channels are
    the same ``vw`` channels of the cell: per tap and cell one vector load, then for
    each input channel ``c`` of a group a shuffle that gives every lane its own
    group's channel ``c`` (lane ``l`` reads lane ``(l // group)·group + c``), times
    the kernel's vector for ``c``. The panel holds per tap ``group`` vectors
    (``nv·vw`` wide), ``step_stride`` elements apart from one tap to the next. No lane
    multiplies another group's value, so nothing is computed for nothing (merging
    groups into block-diagonal kernels costs ``vw / group`` times the products, and
    zeros times a non-finite value of another group).
    """
    v = f"<{vw} x {ty}>"
    p = f"{ty}*"
    fma = f"@llvm.fma.v{vw}{_suffix(ty)}"
    xs = ", ".join(f"{p} %x{i}" for i in range(mr))
    ys = ", ".join(f"{p} %y{i}" for i in range(mr))
    acc = [(i, j) for i in range(mr) for j in range(nv)]
    masks = [f"<{vw} x i32> <" + ", ".join(f"i32 {(lane // group) * group + c}"
                                            for lane in range(vw)) + ">"
             for c in range(group)]
    lines = [
        f"define internal void @{name}({xs}, {p} %w, {ys}, i64* %offsets, i64 %steps, "
        "i64 %step_stride, i64 %accumulate) {",
        "entry:",
        "  %adding = icmp ne i64 %accumulate, 0",
        "  br i1 %adding, label %load, label %pre",
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
        "  %some = icmp sgt i64 %steps, 0",
        "  br i1 %some, label %tap, label %done",
        "tap:",
        "  %k = phi i64 [0, %pre], [%k1, %tap]",
        "  %wc = phi i64 [0, %pre], [%wc1, %tap]",
    ]
    last = f"c{group - 1}_"
    for i, j in acc:
        lines.append(f"  %b{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%{last}{i}_{j}, %tap]")
    lines += ["  %kp = getelementptr i64, i64* %offsets, i64 %k",
              "  %xc = load i64, i64* %kp"]
    for i, j in acc:
        lines += [
            f"  %xo{i}_{j} = add i64 %xc, {j * vw}",
            f"  %xp{i}_{j} = getelementptr {ty}, {p} %x{i}, i64 %xo{i}_{j}",
            f"  %xq{i}_{j} = bitcast {p} %xp{i}_{j} to {v}*",
            f"  %xv{i}_{j} = load {v}, {v}* %xq{i}_{j}, align 4",
        ]
    before = "b"
    for c in range(group):
        for j in range(nv):
            lines += [
                f"  %wo{c}_{j} = add i64 %wc, {(c * nv + j) * vw}",
                f"  %wp{c}_{j} = getelementptr {ty}, {p} %w, i64 %wo{c}_{j}",
                f"  %wq{c}_{j} = bitcast {p} %wp{c}_{j} to {v}*",
                f"  %wv{c}_{j} = load {v}, {v}* %wq{c}_{j}, align 4",
            ]
        for i, j in acc:
            lines += [
                f"  %g{c}_{i}_{j} = shufflevector {v} %xv{i}_{j}, {v} undef, {masks[c]}",
                f"  %c{c}_{i}_{j} = call {v} {fma}({v} %g{c}_{i}_{j}, {v} %wv{c}_{j}, "
                f"{v} %{before}{i}_{j})",
            ]
        before = f"c{c}_"
    lines += [
        "  %k1 = add i64 %k, 1",
        "  %wc1 = add i64 %wc, %step_stride",
        "  %more = icmp slt i64 %k1, %steps",
        "  br i1 %more, label %tap, label %done",
        "done:",
    ]
    for i, j in acc:
        lines.append(f"  %e{i}_{j} = phi {v} [%s{i}_{j}, %pre], [%{last}{i}_{j}, %tap]")
    for i, j in acc:
        lines += [
            f"  %yp{i}_{j} = getelementptr {ty}, {p} %y{i}, i64 {j * vw}",
            f"  %yq{i}_{j} = bitcast {p} %yp{i}_{j} to {v}*",
            f"  store {v} %e{i}_{j}, {v}* %yq{i}_{j}, align 4",
        ]
    lines += ["  ret void", "}"]
    return "\n".join(lines)


def grouped_module_ir(dtype: Any, vectors: int, rows: int, width: int, group: int) -> str:
    """IR of a module of :func:`_grouped_tile` blocks for groups of ``group`` input and
    output channels (``drive`` as in :func:`module_ir`; each column block reads its
    own ``vectors·width`` input channels, as the depthwise kernels do; one step of
    the sum per tap).

    >>> ir = grouped_module_ir(np.float32, 1, 2, 16, 4)
    >>> "define void @drive(" in ir and "shufflevector" in ir
    True
    """
    ty = _ir_type(dtype)
    v = f"<{width} x {ty}>"
    parts = [f"declare {v} @llvm.fma.v{width}{_suffix(ty)}({v}, {v}, {v})"]
    parts += [_grouped_tile(f"tile{r}", r, vectors, ty, width, group)
              for r in range(1, rows + 1)]
    parts.append(_driver(rows, vectors, ty, width, depthwise=True))
    parts.append(_batches(ty))
    parts.append("!0 = !{i32 1}")
    return "\n\n".join(parts) + "\n"


def interleaved_module_ir(dtype: Any, vectors: int, rows: int, width: int,
                          interleave: int) -> str:
    """IR of a module for ``interleave`` groups of ``width / interleave`` input and output
    channels per vector (lanes ``[a·span, (a+1)·span)`` are group ``a``'s outputs,
    ``span = width / interleave``): each step (a tap and a group channel ``c``)
    broadcasts each group's input channel ``c`` over its own lanes, so no lane
    multiplies a zero of a block-diagonal kernel. ``drive`` as in :func:`module_ir`
    with ``depthwise`` (each vector reads its own groups' channels).

    >>> ir = interleaved_module_ir(np.float32, 1, 2, 16, 2)
    >>> "define void @drive(" in ir and "i32 7, i32 24" in ir
    True
    """
    ty = _ir_type(dtype)
    v = f"<{width} x {ty}>"
    parts = [f"declare {v} @llvm.fma.v{width}{_suffix(ty)}({v}, {v}, {v})"]
    parts += [_tile(f"tile{r}", r, vectors, ty, width, depthwise=True, interleave=interleave)
              for r in range(1, rows + 1)]
    parts.append(_driver(rows, vectors, ty, width, depthwise=True))
    parts.append(_batches(ty))
    parts.append("!0 = !{i32 1}")
    return "\n\n".join(parts) + "\n"


def spread_module_ir(dtype: Any, vectors: int, rows: int, width: int, spread: int,
                     group: int) -> str:
    """IR of a module for groups of ``group`` input and output channels (a multiple of
    ``spread``, whole groups per block of ``vectors`` vectors), each output's sum split
    over ``spread`` lanes: lane ``spread·o + h`` sums output ``o``'s products with its
    group's input channels ``spread·c + h`` (the kernel packed so), each step
    broadcasting ``spread`` adjacent input channels with one load, shared by the
    group's vectors; the lanes of each output are added when stored. Every product is
    wanted; with groups of 8 and 16 lanes a step costs one load per two multiply-adds
    (``spread`` 4), where :func:`interleaved_module_ir` costs two loads and an insert
    per multiply-add. ``drive`` as in :func:`module_ir` with ``depthwise``, a column
    block being ``vectors · width / spread`` channels.

    >>> ir = spread_module_ir(np.float32, 2, 2, 16, 4, 8)
    >>> "define void @drive(" in ir and "<4 x float>" in ir
    True
    """
    ty = _ir_type(dtype)
    v = f"<{width} x {ty}>"
    parts = [f"declare {v} @llvm.fma.v{width}{_suffix(ty)}({v}, {v}, {v})"]
    parts += [_tile(f"tile{r}", r, vectors, ty, width, depthwise=True, spread=spread,
                    group=group) for r in range(1, rows + 1)]
    parts.append(_driver(rows, vectors, ty, width, depthwise=True,
                         block_channels=vectors * width // spread))
    parts.append(_batches(ty))
    parts.append("!0 = !{i32 1}")
    return "\n\n".join(parts) + "\n"


#: Cells per register block of the spread kernels (:func:`spread_module_ir`) by vectors.
SPREAD_ROWS = {1: 8, 2: 8, 3: 6, 4: 4}


def compiled_spread(dtype: Any, vectors: int, spread: int, group: int) -> Kernels | None:
    """The :func:`spread_module_ir` module for ``dtype`` on the target in use (``None``:
    not here)."""
    return _compiled_spread(np.dtype(dtype), vectors, spread, group, vector_target())


@cached_once
def _compiled_spread(dtype: np.dtype[Any], vectors: int, spread: int, group: int,
                     target: VectorTarget) -> Kernels | None:
    llvm = _llvm()
    width = target.width(dtype)
    if (llvm is None or not target.runs_here or dtype.char not in "fd" or spread < 2
            or width % spread or group % spread or group % (width // spread)
            or (vectors * width // spread) % group):
        return None
    rows = min(SPREAD_ROWS.get(vectors, 1), block_rows(vectors, target))
    return drive_kernels(llvm, target, spread_module_ir(dtype, vectors, rows, width, spread,
                                                        group), vectors, rows, width)


def compiled_interleaved(dtype: Any, vectors: int, interleave: int) -> Kernels | None:
    """The :func:`interleaved_module_ir` module for ``dtype`` on the target in use
    (``None``: not here, or ``interleave`` does not divide a vector's lanes)."""
    return _compiled_interleaved(np.dtype(dtype), vectors, interleave, vector_target())


@cached_once
def _compiled_interleaved(dtype: np.dtype[Any], vectors: int, interleave: int,
                          target: VectorTarget) -> Kernels | None:
    llvm = _llvm()
    width = target.width(dtype)
    if (llvm is None or not target.runs_here or width == 0 or dtype.char not in "fd"
            or interleave < 1 or width % interleave):
        return None
    rows = interleaved_block_rows(vectors, interleave, target)
    return drive_kernels(llvm, target, interleaved_module_ir(dtype, vectors, rows, width,
                                                             interleave),
                         vectors, rows, width)


def interleaved_block_rows(vectors: int, interleave: int,
                           target: VectorTarget | None = None) -> int:
    """``MR`` for the interleaved kernels: :func:`block_rows`, less two cells where a
    step puts ``interleave`` (at least 2) broadcasts together per cell and vector.

    Those broadcasts and their merge need registers of their own: with AVX-512's 32,
    4 vectors and 6 cells (24 sums) spilled sums to the stack at every step (the
    loop's 72 multiply-adds came with 39 stack accesses more than the 4-cell
    block's). Measured on one core (CPU time, busy machine, float32, 3×3, 32 groups
    of 8, 6 against 4 cells): 28²×256 0.66 against 0.52 ms at batch 1, 10.4
    against 9.7 at 16; 14²×256 at 16 images 2.7 against 2.3.

    >>> interleaved_block_rows(4, 1, target_named("avx512")), interleaved_block_rows(
    ...     4, 2, target_named("avx512"))
    (6, 4)
    """
    rows = block_rows(vectors, target)
    return rows if interleave < 2 else max(1, rows - 2)


def grouped_block_rows(vectors: int, group: int, target: VectorTarget | None = None) -> int:
    """``MR`` for :func:`_grouped_tile`: the ``MR·NV`` accumulators and the ``MR·NV`` input
    vectors a tap loads (all held while each input channel's shuffles read them),
    ``NV`` kernel vectors, a shuffled vector and a few spare fit the registers.

    Counting one input vector per cell, not ``MR·NV``, gave 6 cells × 4 vectors with
    AVX-512, whose sums went to the stack and back at every tap (128 stack accesses
    per 96 multiply-adds). Measured on one core (CPU time, busy machine, float32,
    3×3, 32 groups of 4, 6 against 3 cells): 56²×128 at batch 1 0.80 against
    0.52 ms, 17.5 against 11.0 at 16; 28²×128 at 16 images 4.8 against 3.3.

    >>> grouped_block_rows(4, 4, target_named("avx512")), grouped_block_rows(
    ...     2, 4, target_named("avx2"))
    (3, 2)
    """
    registers = (target or vector_target()).registers
    return max(1, min(6, (registers - 4 - vectors) // (2 * vectors)))


def grouped_assembly(target: VectorTarget, dtype: Any, vectors: int, group: int) -> str:
    """:func:`assembly` for the grouped kernels (checks the IR compiles for ``target``)."""
    rows = grouped_block_rows(vectors, group, target)
    return ir_assembly(grouped_module_ir(dtype, vectors, rows, target.width(dtype), group),
                       target)


def compiled_grouped(dtype: Any, vectors: int, group: int) -> Kernels | None:
    """The grouped module (:func:`grouped_module_ir`) for ``dtype``, ``vectors`` and
    groups of ``group`` channels on the target in use (``None``: not here, or
    ``group`` does not divide a vector's lanes)."""
    return _compiled_grouped(np.dtype(dtype), vectors, group, vector_target())


@cached_once
def _compiled_grouped(dtype: np.dtype[Any], vectors: int, group: int, target: VectorTarget
                      ) -> Kernels | None:
    llvm = _llvm()
    width = target.width(dtype)
    if (llvm is None or not target.runs_here or width == 0 or dtype.char not in "fd"
            or group < 1 or width % group):
        return None
    rows = grouped_block_rows(vectors, group, target)
    return drive_kernels(llvm, target, grouped_module_ir(dtype, vectors, rows, width, group),
                         vectors, rows, width)
