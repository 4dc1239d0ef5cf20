"""Jobs of compiled calls run as one table, on the helper threads without the GIL.

A chunk of :mod:`.register_tiles` work is a few calls of compiled kernels. Run
as Python closures on the helper threads, every chunk has to take the GIL: a
helper woken from its spin waits for the caller, which holds the GIL while it
runs its own chunk's Python, and on a virtual machine starts ~0.1 ms late. Here
the calls are recorded instead, as rows of int64 (the kernel's address, then
its arguments), and the jobs as ``(first row, rows)``; a compiled runner walks
a job's rows, and :meth:`._spin.SpinningPool.run_native` hands the jobs to the
spinning helpers through a slot in memory, so no thread needs the GIL until
all are done. The calls and their order within a job are the closures' own,
so the results are the same bit for bit.

Examples
--------
>>> table = Table(pointers=1, fields=1)
>>> record = table.recorder(ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64)(0))
>>> record(0, 5); record(0, 6)
>>> table.jobs([lambda: record(0, 7)])
[(2, 1)]
>>> table.rows.shape
(3, 3)
"""

from __future__ import annotations

import ctypes
import itertools
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from ..state import cached_once
from . import _llvm

__all__ = ["Table", "rows_runner", "rows_runner_ir", "kernel_runner"]


def rows_runner_ir(pointers: int, fields: int) -> str:
    """IR of ``drive(table, first, rows)``: for rows ``first … first + rows - 1`` of
    ``table`` (each ``1 + pointers + fields`` int64: a function's address, then its
    arguments), calls ``function(pointer…, field…)``.

    >>> "inttoptr" in rows_runner_ir(4, 18)
    True
    """
    width = 1 + pointers + fields
    types = ", ".join(["i8*"] * pointers + ["i64"] * fields)
    lines = [
        "define void @drive(i64* %table, i64 %first, i64 %rows) {",
        "entry:",
        "  %last = add i64 %first, %rows",
        "  %go = icmp slt i64 %first, %last",
        "  br i1 %go, label %loop, label %exit",
        "loop:",
        "  %i = phi i64 [%first, %entry], [%i1, %loop]",
        f"  %row = mul i64 %i, {width}",
    ]
    for k in range(width):
        lines += [f"  %q{k} = add i64 %row, {k}",
                  f"  %p{k} = getelementptr i64, i64* %table, i64 %q{k}",
                  f"  %v{k} = load i64, i64* %p{k}, align 8"]
    lines.append(f"  %fn = inttoptr i64 %v0 to void ({types})*")
    arguments = []
    for k in range(1, width):
        if k <= pointers:
            lines.append(f"  %a{k} = inttoptr i64 %v{k} to i8*")
            arguments.append(f"i8* %a{k}")
        else:
            arguments.append(f"i64 %v{k}")
    lines += [f"  call void %fn({', '.join(arguments)})",
              "  %i1 = add i64 %i, 1",
              "  %more = icmp slt i64 %i1, %last",
              "  br i1 %more, label %loop, label %exit",
              "exit:",
              "  ret void",
              "}"]
    return "\n".join(lines) + "\n"


class RowsRunner:
    """A compiled :func:`rows_runner_ir`: its ``address`` and ``drive(table, first, rows)``."""

    def __init__(self, address: int, engine: Any) -> None:
        self.address = address
        self.engine = engine  # keeps the machine code alive
        self.drive = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64)(address)


def rows_runner(pointers: int, fields: int) -> RowsRunner | None:
    """:func:`rows_runner_ir` compiled for this machine, or ``None`` (no llvmlite,
    ``CONVARITH_JIT=0``, not x86-64)."""
    return _rows_runner(int(pointers), int(fields))


@cached_once
def _rows_runner(pointers: int, fields: int) -> RowsRunner | None:
    llvm = _llvm._llvm()
    if llvm is None or not llvm.get_process_triple().startswith(("x86_64", "amd64")):
        return None
    try:
        address, engine = _llvm.compile_drive(llvm, _llvm._target("native"),
                                              rows_runner_ir(pointers, fields))
    except Exception:  # pragma: no cover - an llvmlite that cannot compile this
        return None
    return RowsRunner(address, engine)


class Table:
    """Calls recorded as int64 rows (function address, ``pointers`` addresses,
    ``fields`` integers) and grouped into jobs, for :func:`rows_runner`'s runner.

    Parameters
    ----------
    pointers, fields
        The recorded functions' signature: ``pointers`` addresses, then ``fields``
        64-bit integers.
    """

    def __init__(self, pointers: int, fields: int) -> None:
        self.pointers = pointers
        self.fields = fields
        self._rows: list[tuple[int, ...]] = []
        #: every recorded call's row (set by :meth:`jobs`)
        self.rows = np.empty((0, 1 + pointers + fields), np.int64)

    def recorder(self, function: Any) -> Callable[..., None]:
        """A stand-in for the ctypes ``function`` that records its calls as rows."""
        address = ctypes.c_void_p.from_buffer(function).value or 0
        rows = self._rows
        width = self.pointers + self.fields

        def record(*arguments: int) -> None:
            if len(arguments) != width:
                raise TypeError(f"a recorded call takes {width} arguments, got {len(arguments)}")
            rows.append((address, *arguments))

        return record

    def jobs(self, jobs: list[Callable[[], None]]) -> list[tuple[int, int]]:
        """Run each of ``jobs`` (closures calling recorders) once to record its calls:
        each job's ``(first row, rows)``; :attr:`rows` then holds every call's row."""
        spans = []
        for job in jobs:
            first = len(self._rows)
            job()
            spans.append((first, len(self._rows) - first))
        width = 1 + self.pointers + self.fields
        self.rows = np.fromiter(itertools.chain.from_iterable(self._rows), np.int64,
                                len(self._rows) * width).reshape(-1, width)
        return spans


#: A padded copy of the whole input is made for the table of calls (instead of each
#: chunk's padded rows) only up to this size, and up to :data:`PAD_ONCE_SHARE` of the
#: input, kernel and output bytes (peak extra memory stays within 1.5x those).
PAD_ONCE_BYTES = 2 << 20

#: See :data:`PAD_ONCE_BYTES`.
PAD_ONCE_SHARE = 0.5

#: The arguments of the register kernels' ``drive``: ``x, w, y, offsets``, then the
#: fields of ``Cells``, ``Sums`` and ``Batch``.
KERNEL_POINTERS = 4
KERNEL_FIELDS = len(_llvm.Cells._fields) + len(_llvm.Sums._fields) + len(_llvm.Batch._fields)


class KernelTable(Table):
    """A :class:`Table` of the register kernels' calls, with its compiled runner."""

    def __init__(self, runner: RowsRunner) -> None:
        super().__init__(KERNEL_POINTERS, KERNEL_FIELDS)
        self.runner = runner


def kernel_runner() -> RowsRunner | None:
    """The register kernels' table runner (:func:`rows_runner` of their calls) where tables
    of calls run on the spinning helpers here: a compiled runner and spinner, spinning
    not turned off (``CONVARITH_SPIN_US=0``); else ``None``.

    >>> runner = kernel_runner()
    >>> runner is None or runner.address > 0
    True
    """
    from . import _spin

    runner = rows_runner(KERNEL_POINTERS, KERNEL_FIELDS)
    if runner is None or _spin.spinner() is None or _spin.spin_microseconds() <= 0:
        return None
    return runner


def kernel_plan(x: np.ndarray, pads: list[tuple[int, int]], rows: int, io_bytes: int,
                threads: int | None = None, flops: float | None = None,
                inline_below: float | None = None
                ) -> tuple[np.ndarray, list[tuple[int, int]], KernelTable] | None:
    """Whether :mod:`.register_tiles` runs ``x`` (N, H, W, C) with ``pads`` (rows,
    columns; negative crops) as a table of calls (``io_bytes``: the input, kernel and
    output bytes): ``(input, pads, table)`` to build
    its jobs with (the input padded once into a copy of ``rows`` rows, its pads
    then zero), or ``None`` (the closures' path: a job that runs on one thread
    (``threads``, ``flops``, ``inline_below``, see :func:`._threads.native_workers`), no compiled
    runner or spinner, spinning turned off, or a padded copy too large).

    >>> x = np.ones((1, 4, 4, 8), np.float32)
    >>> plan = kernel_plan(x, [(1, 1), (1, 1)], 6, 3 * x.nbytes, threads=2)
    >>> (plan[0].shape, plan[1]) if plan else ((1, 6, 6, 8), [(0, 0), (0, 0)])
    ((1, 6, 6, 8), [(0, 0), (0, 0)])
    >>> kernel_plan(x, [(1, 1), (1, 1)], 6, x.nbytes, threads=1) is None
    True
    """
    from . import _threads

    below = _threads.SMALL_WORK if inline_below is None else inline_below
    if _threads.native_workers(threads, flops, below) <= 1:
        return None
    runner = kernel_runner()
    if runner is None:
        return None
    if all(a == b == 0 for a, b in pads):
        return x, pads, KernelTable(runner)
    (top, _), (left, right) = pads
    n, _, w, c = x.shape
    padded_w = w + left + right
    size = n * rows * padded_w * c * x.dtype.itemsize
    if rows <= 0 or padded_w <= 0 or size > min(PAD_ONCE_BYTES, PAD_ONCE_SHARE * io_bytes):
        return None
    from .register_tiles import _fill

    # kept between calls (fresh pages would cost more than the copy)
    padded = _threads.workspace("native_jobs_padded", (n, rows, padded_w, c), x.dtype)
    _fill(padded, x, -top, left)
    return padded, [(0, 0), (0, 0)], KernelTable(runner)


def padded_rows_ir() -> str:
    """IR of a ``drive`` with the register kernels' signature (:data:`KERNEL_POINTERS`
    pointers, :data:`KERNEL_FIELDS` integers) that copies rows of images zero-padded
    into a slab, for a row of a :class:`KernelTable` ahead of the calls that read it
    (each job pads its own rows on the thread that runs it). Pointers: ``slab``,
    ``x``; fields (bytes but the counts): ``images``, ``rows`` (slab rows per image),
    ``first`` (the input row of the slab's first row, may be negative), ``height``
    (input rows), ``x_row``, ``x_image``, ``slab_row``, ``slab_image``, ``left``,
    ``copy`` (bytes of an input row), ``right``; rows outside the input are zeros.

    >>> "llvm.memcpy" in padded_rows_ir()
    True
    """
    names = ["images", "rows", "first", "height", "x_row", "x_image", "slab_row",
             "slab_image", "left", "copy", "right"]
    fields = [f"i64 %{name}" for name in names] + [
        f"i64 %unused{k}" for k in range(KERNEL_FIELDS - len(names))]
    return "\n".join([
        "declare void @llvm.memcpy.p0i8.p0i8.i64(i8*, i8*, i64, i1)",
        "declare void @llvm.memset.p0i8.i64(i8*, i8, i64, i1)",
        f"define void @drive(i8* %slab, i8* %x, i8* %unused_w, i8* %unused_o, {', '.join(fields)}) {{",
        "entry:",
        "  %any = icmp sgt i64 %images, 0",
        "  br i1 %any, label %image, label %exit",
        "image:",
        "  %i = phi i64 [0, %entry], [%i1, %image_end]",
        "  %si = mul i64 %i, %slab_image",
        "  %xi = mul i64 %i, %x_image",
        "  %slab_i = getelementptr i8, i8* %slab, i64 %si",
        "  %x_i = getelementptr i8, i8* %x, i64 %xi",
        "  %rows_any = icmp sgt i64 %rows, 0",
        "  br i1 %rows_any, label %row, label %image_end",
        "row:",
        "  %r = phi i64 [0, %image], [%r1, %row_end]",
        "  %sr = mul i64 %r, %slab_row",
        "  %dst = getelementptr i8, i8* %slab_i, i64 %sr",
        "  %source_row = add i64 %first, %r",
        "  %above = icmp slt i64 %source_row, 0",
        "  %below = icmp sge i64 %source_row, %height",
        "  %outside = or i1 %above, %below",
        "  br i1 %outside, label %zeros, label %copy_row",
        "zeros:",
        "  call void @llvm.memset.p0i8.i64(i8* %dst, i8 0, i64 %slab_row, i1 false)",
        "  br label %row_end",
        "copy_row:",
        "  call void @llvm.memset.p0i8.i64(i8* %dst, i8 0, i64 %left, i1 false)",
        "  %dst_in = getelementptr i8, i8* %dst, i64 %left",
        "  %xr = mul i64 %source_row, %x_row",
        "  %src = getelementptr i8, i8* %x_i, i64 %xr",
        "  call void @llvm.memcpy.p0i8.p0i8.i64(i8* %dst_in, i8* %src, i64 %copy, i1 false)",
        "  %dst_right = getelementptr i8, i8* %dst_in, i64 %copy",
        "  call void @llvm.memset.p0i8.i64(i8* %dst_right, i8 0, i64 %right, i1 false)",
        "  br label %row_end",
        "row_end:",
        "  %r1 = add i64 %r, 1",
        "  %more_rows = icmp slt i64 %r1, %rows",
        "  br i1 %more_rows, label %row, label %image_end",
        "image_end:",
        "  %i1 = add i64 %i, 1",
        "  %more = icmp slt i64 %i1, %images",
        "  br i1 %more, label %image, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]) + "\n"


class CompiledFunction(NamedTuple):
    """A compiled function's ``address`` and the execution ``engine`` that owns its code."""

    address: int
    engine: Any


def padded_rows_filler() -> CompiledFunction | None:
    """:func:`padded_rows_ir` compiled for this machine, or ``None`` (no llvmlite,
    ``CONVARITH_JIT=0``, not x86-64)."""
    return _padded_rows_filler()


@cached_once
def _padded_rows_filler() -> CompiledFunction | None:
    llvm = _llvm._llvm()
    if llvm is None or not llvm.get_process_triple().startswith(("x86_64", "amd64")):
        return None
    try:
        address, engine = _llvm.compile_drive(llvm, _llvm._target("native"), padded_rows_ir())
    except Exception:  # pragma: no cover - an llvmlite that cannot compile this
        return None
    return CompiledFunction(int(address), engine)


def padded_channels_ir() -> str:
    """IR of a ``drive`` like :func:`padded_rows_ir` that copies only a range of every
    cell's channels, zero-padded, into a slab of its own (cells of that range only),
    so that threads that each run a share of a layer's channels (grouped layers'
    groups) each pad their own share of the rows, with no thread waiting for
    another's copy nor writing next to it. Pointers: ``slab``, ``x``; fields (bytes
    but the counts): ``images``, ``rows`` (slab rows per image), ``first`` (the input
    row of the slab's first row, may be negative), ``height`` (input rows),
    ``x_row``, ``x_image``, ``slab_row``, ``slab_image``, ``left``, ``width``,
    ``right`` (cells of padding and of input in a row), ``x_cell`` and ``slab_cell``
    (bytes from one cell to the next), ``channel`` (bytes into an input cell where
    the range starts) and ``copy`` (bytes of the range). A cell's range is copied 64 bytes at a time (a
    ``memcpy`` call per cell took about as long as the kernels' calls of a batch-1
    layer's share), the rest byte by byte.

    >>> "llvm.memcpy" in padded_channels_ir() and "@drive(" in padded_channels_ir()
    True
    """
    names = ["images", "rows", "first", "height", "x_row", "x_image", "slab_row",
             "slab_image", "left", "width", "right", "x_cell", "slab_cell", "channel", "copy"]
    fields = [f"i64 %{name}" for name in names] + [
        f"i64 %unused{k}" for k in range(KERNEL_FIELDS - len(names))]
    return "\n".join([
        "declare void @llvm.memcpy.p0i8.p0i8.i64(i8*, i8*, i64, i1)",
        "declare void @llvm.memset.p0i8.i64(i8*, i8, i64, i1)",
        f"define void @drive(i8* %slab, i8* %x, i8* %unused_w, i8* %unused_o, {', '.join(fields)}) {{",
        "entry:",
        "  %padded = add i64 %left, %width",
        "  %cells = add i64 %padded, %right",
        "  %x_c = getelementptr i8, i8* %x, i64 %channel",
        "  %chunks = lshr i64 %copy, 6",  # 64-byte vectors, then the rest
        "  %tail_at = shl i64 %chunks, 6",
        "  %tail = sub i64 %copy, %tail_at",
        "  %any = icmp sgt i64 %images, 0",
        "  br i1 %any, label %image, label %exit",
        "image:",
        "  %i = phi i64 [0, %entry], [%i1, %image_end]",
        "  %si = mul i64 %i, %slab_image",
        "  %xi = mul i64 %i, %x_image",
        "  %slab_i = getelementptr i8, i8* %slab, i64 %si",
        "  %x_i = getelementptr i8, i8* %x_c, i64 %xi",
        "  %rows_any = icmp sgt i64 %rows, 0",
        "  br i1 %rows_any, label %row, label %image_end",
        "row:",
        "  %r = phi i64 [0, %image], [%r1, %row_end]",
        "  %sr = mul i64 %r, %slab_row",
        "  %dst = getelementptr i8, i8* %slab_i, i64 %sr",
        "  %source_row = add i64 %first, %r",
        "  %above = icmp slt i64 %source_row, 0",
        "  %below = icmp sge i64 %source_row, %height",
        "  %outside = or i1 %above, %below",
        "  %xr = mul i64 %source_row, %x_row",
        "  %src = getelementptr i8, i8* %x_i, i64 %xr",
        "  %cells_any = icmp sgt i64 %cells, 0",
        "  br i1 %cells_any, label %cell_loop, label %row_end",
        "cell_loop:",
        "  %k = phi i64 [0, %row], [%k1, %cell_end]",
        "  %dk = mul i64 %k, %slab_cell",
        "  %dst_k = getelementptr i8, i8* %dst, i64 %dk",
        "  %before = icmp slt i64 %k, %left",
        "  %after = icmp sge i64 %k, %padded",
        "  %edge = or i1 %before, %after",
        "  %zero = or i1 %edge, %outside",
        "  br i1 %zero, label %zeros, label %copy_cell",
        "zeros:",
        "  %zero_any = icmp sgt i64 %chunks, 0",
        "  br i1 %zero_any, label %zero_loop, label %zero_tail",
        "zero_loop:",
        "  %z = phi i64 [0, %zeros], [%z1, %zero_loop]",
        "  %z_at = shl i64 %z, 6",
        "  %z_p = getelementptr i8, i8* %dst_k, i64 %z_at",
        "  %z_v = bitcast i8* %z_p to <16 x i32>*",
        "  store <16 x i32> zeroinitializer, <16 x i32>* %z_v, align 1",
        "  %z1 = add i64 %z, 1",
        "  %more_z = icmp slt i64 %z1, %chunks",
        "  br i1 %more_z, label %zero_loop, label %zero_tail",
        "zero_tail:",
        "  %zt = getelementptr i8, i8* %dst_k, i64 %tail_at",
        "  call void @llvm.memset.p0i8.i64(i8* %zt, i8 0, i64 %tail, i1 false)",
        "  br label %cell_end",
        "copy_cell:",
        "  %in_cell = sub i64 %k, %left",
        "  %sk = mul i64 %in_cell, %x_cell",
        "  %src_k = getelementptr i8, i8* %src, i64 %sk",
        "  %copy_any = icmp sgt i64 %chunks, 0",
        "  br i1 %copy_any, label %copy_loop, label %copy_tail",
        "copy_loop:",
        "  %j = phi i64 [0, %copy_cell], [%j1, %copy_loop]",
        "  %j_at = shl i64 %j, 6",
        "  %j_s = getelementptr i8, i8* %src_k, i64 %j_at",
        "  %j_d = getelementptr i8, i8* %dst_k, i64 %j_at",
        "  %j_sv = bitcast i8* %j_s to <16 x i32>*",
        "  %j_dv = bitcast i8* %j_d to <16 x i32>*",
        "  %j_v = load <16 x i32>, <16 x i32>* %j_sv, align 1",
        "  store <16 x i32> %j_v, <16 x i32>* %j_dv, align 1",
        "  %j1 = add i64 %j, 1",
        "  %more_j = icmp slt i64 %j1, %chunks",
        "  br i1 %more_j, label %copy_loop, label %copy_tail",
        "copy_tail:",
        "  %ct_s = getelementptr i8, i8* %src_k, i64 %tail_at",
        "  %ct_d = getelementptr i8, i8* %dst_k, i64 %tail_at",
        "  call void @llvm.memcpy.p0i8.p0i8.i64(i8* %ct_d, i8* %ct_s, i64 %tail, i1 false)",
        "  br label %cell_end",
        "cell_end:",
        "  %k1 = add i64 %k, 1",
        "  %more_cells = icmp slt i64 %k1, %cells",
        "  br i1 %more_cells, label %cell_loop, label %row_end",
        "row_end:",
        "  %r1 = add i64 %r, 1",
        "  %more_rows = icmp slt i64 %r1, %rows",
        "  br i1 %more_rows, label %row, label %image_end",
        "image_end:",
        "  %i1 = add i64 %i, 1",
        "  %more = icmp slt i64 %i1, %images",
        "  br i1 %more, label %image, label %exit",
        "exit:",
        "  ret void",
        "}",
    ]) + "\n"


def padded_channels_filler() -> CompiledFunction | None:
    """:func:`padded_channels_ir` compiled for this machine, or ``None`` (no llvmlite,
    ``CONVARITH_JIT=0``, not x86-64)."""
    return _padded_channels_filler()


@cached_once
def _padded_channels_filler() -> CompiledFunction | None:
    llvm = _llvm._llvm()
    if llvm is None or not llvm.get_process_triple().startswith(("x86_64", "amd64")):
        return None
    try:
        address, engine = _llvm.compile_drive(llvm, _llvm._target("native"),
                                              padded_channels_ir())
    except Exception:  # pragma: no cover - an llvmlite that cannot compile this
        return None
    return CompiledFunction(int(address), engine)
