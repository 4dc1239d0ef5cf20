"""``convarith apply``: run a convolution over an image larger than memory, into Zarr.

The input (a ``.npy`` file, memory-mapped, or a Zarr array) is read lazily in
chunks, convolved block by block with Dask (see :mod:`convarith.scale`), and
each output block is written to its own Zarr chunk with a completion marker,
so an interrupted run can be finished with ``--resume``.

Input layout: ``(*spatial)``, ``(*spatial, C)`` or ``(N, *spatial, C)`` for a
rank-2 spec by default (``--rank`` for 1-D or 3-D data). An input without a
channel axis gives an output without one when there is one output channel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any

import numpy as np

from ._spec_args import add_spec_arguments, parse_size, spec_from_args

PRESET_NAMES = ("identity", "box", "blur", "sharpen", "edge")


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="convolve an image larger than memory (.npy or Zarr) into a Zarr store, with Dask",
        description="Convolve (or pool) a .npy (memory-mapped) or Zarr image block by block with "
        "Dask and write the result to a Zarr store, chunk by chunk. An interrupted run keeps its "
        "finished chunks; finish it with --resume.",
        epilog="examples: convarith apply big.npy out.zarr --preset blur -k 5 -p same | "
        "convarith apply in.zarr out.zarr --weights k.npy -s 2 -d 2 -p same --scheduler processes | "
        "convarith apply in.npy pooled.zarr --pool max -k 2 -s 2 --scheduler tcp://host:8786",
    )
    parser.add_argument("input", help="input array: a .npy file (memory-mapped) or a Zarr store")
    parser.add_argument("output", help="output Zarr store (a directory; refused if it exists)")
    add_spec_arguments(parser)
    for action in parser._actions:
        if action.dest == "size":
            action.help = argparse.SUPPRESS  # the size comes from INPUT
        elif action.dest == "rank":
            action.help = "spatial axes of INPUT (default: from --weights or -k 3x3x3, else 2)"
    parser.set_defaults(kernel=None)
    kernels = parser.add_mutually_exclusive_group()
    kernels.add_argument(
        "--weights", metavar="FILE.npy",
        help="kernel in Keras layout (k..., in/groups, out), (k..., out/groups, in) with "
        "--transposed; its shape sets the kernel size",
    )
    kernels.add_argument(
        "--preset", choices=PRESET_NAMES,
        help="a named kernel of the -k size applied to each channel on its own (depthwise)",
    )
    parser.add_argument("--bias", metavar="FILE.npy", help="bias, one value per output channel")
    parser.add_argument("--component", help="array inside a Zarr group input")
    parser.add_argument(
        "--chunks", help="block size per spatial axis, e.g. 2048 or 1024x4096 "
        "(default: a Zarr input's chunks, 1024 for .npy)",
    )
    parser.add_argument(
        "--dtype", choices=("float32", "float64"),
        help="compute in this dtype (default: the input's if floating, else float32)",
    )
    parser.add_argument(
        "--scheduler", default="threads",
        help="threads (default), processes, synchronous, local[:N] (a dask.distributed "
        "LocalCluster of N workers), or a dask.distributed scheduler ADDRESS (tcp://host:8786)",
    )
    parser.add_argument("--workers", type=int, help="threads or processes to use (local schedulers)")
    parser.add_argument("-f", "--force", action="store_true", help="overwrite an existing output store")
    parser.add_argument(
        "--resume", action="store_true",
        help="finish an interrupted run: keep its finished chunks, compute the rest",
    )
    parser.add_argument("-q", "--quiet", "--no-progress", dest="no_progress", action="store_true",
                        help="no progress bar")
    parser.set_defaults(func=run)


def _rank(args: argparse.Namespace, weights: np.ndarray | None) -> int:
    if args.rank:
        return int(args.rank)
    if weights is not None:
        return weights.ndim - 2
    if args.kernel and "x" in args.kernel.lower():
        return len(parse_size(args.kernel, "--kernel"))
    return 2


def _load_npy(path: str, name: str) -> np.ndarray:
    if not os.path.isfile(path):
        raise ValueError(f"{name} file {path!r} does not exist")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        raise ValueError(f"{name} file {path!r} is not a readable .npy array: {error}") from error


def run(args: argparse.Namespace) -> int:
    from ..scale import conv as scale_conv
    from ..scale.presets import kernel_preset
    from ..scale.store import (
        check_convolvable,
        check_separate,
        fingerprint,
        finish_output,
        open_input,
        pending_blocks,
        prepare_output,
        write_block_task,
    )

    if args.size is not None:
        raise ValueError(
            f"apply reads the input size from INPUT; drop the extra argument {args.size!r}"
        )
    check_separate(args.input, args.output)  # before anything is read, deleted or written
    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be positive, got {args.workers}")
    _check_scheduler(args.scheduler)  # before the output store is created
    weights = _load_npy(args.weights, "--weights") if args.weights else None
    if weights is not None and weights.ndim not in (3, 4, 5):
        raise ValueError(
            f"--weights {args.weights!r} has shape {weights.shape}; a kernel has 3 to 5 axes "
            "(kernel size..., in/groups, out)"
        )
    if weights is not None:
        check_convolvable(weights.dtype, f"--weights {args.weights!r}")
    if args.pool and (weights is not None or args.preset):
        raise ValueError("--pool takes no kernel: drop --weights/--preset")
    if not args.pool and weights is None and not args.preset:
        raise ValueError("give a kernel: --weights FILE.npy or --preset NAME (or --pool max|avg)")

    rank = _rank(args, weights)
    chunks = parse_size(args.chunks, "--chunks", rank) if args.chunks else None
    if chunks is not None and (len(chunks) != rank or min(chunks) < 1):
        raise ValueError(f"--chunks must be one positive size or {rank} joined by 'x', got {args.chunks!r}")
    x = open_input(args.input, component=args.component)
    check_convolvable(x.dtype, f"input {args.input!r}")
    input_shape = tuple(int(v) for v in x.shape)
    has_channels, batched = x.ndim > rank, x.ndim == rank + 2
    if x.ndim == rank:
        x = x[..., None]
    if x.ndim == rank + 1:
        x = x[None]
    if x.ndim != rank + 2:
        raise ValueError(
            f"input {args.input!r} has shape {input_shape}: a rank-"
            f"{rank} spec takes {rank} axes (spatial), {rank + 1} (spatial, channels) or "
            f"{rank + 2} (batch, spatial, channels); set --rank"
        )
    spatial = tuple(int(v) for v in x.shape[1:-1])
    channels = int(x.shape[-1])
    x = x.rechunk({0: 1, **({i + 1: c for i, c in enumerate(chunks)} if chunks else
                            {i + 1: 1024 for i in range(rank)} if args.input.endswith(".npy") else {})})
    dtype = np.dtype(args.dtype) if args.dtype else (
        x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype("float32"))
    x = x.astype(dtype)

    args.size = "x".join(str(v) for v in spatial)
    args.rank = rank
    if args.kernel is None:
        args.kernel = "x".join(str(v) for v in weights.shape[:-2]) if weights is not None else "3"
    spec, _ = spec_from_args(args)
    kernel: np.ndarray | None = None
    if args.preset:
        if args.groups != 1:
            raise ValueError("--preset is applied to each channel on its own; drop --groups")
        kernel = kernel_preset(args.preset, spec.kernel_size, channels, str(dtype))
        spec = spec.replace(groups=channels)
    elif weights is not None:
        kernel = weights.astype(dtype)
    bias = None
    if args.bias:
        bias_values = _load_npy(args.bias, "--bias")
        check_convolvable(bias_values.dtype, f"--bias {args.bias!r}")
        bias = bias_values.astype(dtype)

    y = scale_conv(x, kernel, spec, bias)
    # regular blocks, one per Zarr chunk, so that no two tasks write the same chunk
    regular = tuple(max(c) for c in y.chunks[1:-1])
    y = scale_conv(x, kernel, spec, bias, output_block=regular)
    if not has_channels and y.shape[-1] == 1:
        y = y[..., 0]
    if not batched:
        y = y[0]
    out_chunks = tuple(int(c[0]) for c in y.chunks)
    if any(any(n != c[0] for n in c[:-1]) or c[-1] > c[0] for c in y.chunks):
        raise RuntimeError(f"output blocks {y.chunks} do not match regular Zarr chunks {out_chunks}")
    settings = {
        "input": os.path.abspath(args.input),
        "component": args.component,
        "input_shape": list(input_shape),
        "spec": repr(spec),
        "kernel": fingerprint(kernel) if kernel is not None else None,
        "bias": fingerprint(bias) if bias is not None else None,
        "dtype": str(y.dtype),
    }
    output = os.path.abspath(args.output)
    complete = prepare_output(output, tuple(y.shape), out_chunks, y.dtype, settings,
                              force=args.force, resume=args.resume)
    if complete:
        print(f"{args.output}: already complete ({'x'.join(map(str, y.shape))} {y.dtype})")
        return 0
    blocks = pending_blocks(output, y.numblocks)
    total = int(np.prod(y.numblocks))
    written = y.map_blocks(
        write_block_task, output, out_chunks, dtype=np.int8,  # type: ignore[arg-type]
        chunks=tuple((1,) * n for n in y.numblocks), meta=np.empty((0,) * y.ndim, np.int8),
    )
    keys = [(written.name, *b) for b in blocks]
    graph = written.__dask_graph__().cull(set(keys))  # only the blocks still to write
    start = time.perf_counter()
    _compute(graph, keys, args.scheduler, args.workers, progress=not args.no_progress)
    elapsed = time.perf_counter() - start
    finish_output(output)
    megapixels = float(np.prod(spatial)) * x.shape[0] / 1e6
    skipped = f", {total - len(blocks)} already done" if len(blocks) < total else ""
    print(
        f"{args.output}: {'x'.join(map(str, y.shape))} {y.dtype}, {len(blocks)} of {total} blocks "
        f"written{skipped} in {elapsed:.1f} s ({megapixels / max(elapsed, 1e-9):.3g} MPix/s of input)"
    )
    return 0


def _compute(graph: Any, keys: list[Any], scheduler: str, workers: int | None,
             progress: bool) -> None:
    """Compute ``keys`` of ``graph`` with a local scheduler or dask.distributed, with a progress bar."""
    import contextlib

    import dask

    if not keys:
        return
    if scheduler in ("threads", "processes", "synchronous"):
        get = dask.base.get_scheduler(scheduler=scheduler)
        options: dict[str, Any] = {}
        if workers and scheduler != "synchronous":
            options["num_workers"] = workers
        bar: Any = contextlib.nullcontext()
        if progress:
            from dask.diagnostics import ProgressBar

            bar = ProgressBar(out=sys.stderr)
        with bar:
            get(graph, keys, **options)
        return
    try:
        from distributed import Client, LocalCluster
        from distributed import progress as show_progress
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ValueError(
            f"--scheduler {scheduler!r} needs dask.distributed: pip install 'convarith[scale]'"
        ) from error
    _check_scheduler(scheduler)
    cluster = None
    if scheduler == "local" or scheduler.startswith("local:"):
        count = scheduler.partition(":")[2] or str(workers or os.cpu_count() or 1)
        cluster = LocalCluster(n_workers=int(count), threads_per_worker=1, dashboard_address=":0")
        address: Any = cluster
    else:
        address = scheduler
    try:
        with Client(address) as client:
            futures = client.get(graph, keys, sync=False)
            if progress:
                show_progress(futures)
                print(file=sys.stderr)
            client.gather(futures)
    finally:
        if cluster is not None:
            cluster.close()


def _check_scheduler(scheduler: str) -> None:
    """Reject a --scheduler that names nothing, before any output is written."""
    if scheduler in ("threads", "processes", "synchronous", "local"):
        return
    if scheduler.startswith("local:"):
        count = scheduler.partition(":")[2]
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--scheduler local:N needs a positive N, got {scheduler!r}")
        return
    if "://" not in scheduler and ":" not in scheduler:
        raise ValueError(
            f"--scheduler must be threads, processes, synchronous, local[:N] or a dask.distributed "
            f"address like tcp://host:8786, got {scheduler!r}"
        )
