"""Throughput of tiled convolutions over an image larger than a worker's share of memory.

Generates a single-channel float32 image on disk (a memory-mapped ``.npy``,
never whole in RAM), then for a 3x3 convolution and a 7x7 convolution with
dilation 2 (both ``padding="same"``) and for 1 and 2 workers of a local
``dask.distributed.LocalCluster`` (one process and one thread each, BLAS
limited to one thread) times :func:`convarith.scale.conv` over the whole
image, reduced to a sum so no output is stored. It reports wall time,
megapixels per second and each worker's peak resident memory
(``ru_maxrss``, since the worker process started), and checks sampled output
regions (one at the top-left border, one inside) against the in-memory engine.

Usage::

    python benchmarks/scale.py                 # 20,000 x 20,000 (1.6 GB on disk)
    python benchmarks/scale.py --size 4000     # a quick run
    python benchmarks/scale.py --dir /work/tmp --keep

The image is removed afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from convarith import ConvSpec
from convarith.engine import conv as engine_conv

KERNELS = {
    "3x3": ConvSpec(3, padding="same"),
    "7x7 dilation 2": ConvSpec(7, dilation=2, padding="same"),
}


def generate_image(path: Path, size: int, seed: int = 0, rows_per_step: int = 1024) -> None:
    """Write a ``size x size`` float32 .npy a band of rows at a time."""
    rng = np.random.default_rng(seed)
    image = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(size, size))
    for start in range(0, size, rows_per_step):
        stop = min(size, start + rows_per_step)
        image[start:stop] = rng.random((stop - start, size), dtype=np.float32)
    image.flush()
    del image


def peak_rss_bytes() -> int:
    """Peak resident memory of this process (Linux ``VmHWM``; else ``ru_maxrss``).

    A spawned worker inherits its parent's high-water mark across fork and
    exec, so :func:`reset_peak_rss` is called before timing.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def reset_peak_rss() -> int:
    """Reset the high-water mark to the current RSS (Linux >= 4.0); returns the new peak."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return peak_rss_bytes()


def warm_up() -> None:
    """Import and run the engine once, so its first-call costs are not timed."""
    probe = np.ones((1, 16, 16, 1), np.float32)
    for spec in KERNELS.values():
        engine_conv(probe, np.ones((*spec.kernel_size, 1, 1), np.float32), spec)  # type: ignore[misc]


def region_reference(image: np.ndarray, kernel: np.ndarray, spec: ConvSpec,
                     out_start: tuple[int, ...], out_stop: tuple[int, ...]) -> np.ndarray:
    """The in-memory engine on just the input that output cells [start, stop) read (zero padding)."""
    resolved = spec.resolve(image.shape + (1,))
    slices, pads = [], []
    for axis, (o0, o1) in enumerate(zip(out_start, out_stop)):
        stride = spec.strides[axis]  # type: ignore[index]
        lo = resolved.padding[axis][0]
        first = o0 * stride - lo
        last = (o1 - 1) * stride + resolved.effective_kernel[axis] - lo  # exclusive
        size = image.shape[axis]
        slices.append(slice(max(first, 0), min(last, size)))
        pads.append((max(0, -first), max(0, last - size)))
    crop = np.ascontiguousarray(image[tuple(slices)])[None, ..., None]
    local = spec.replace(padding=tuple(pads))
    return engine_conv(crop, kernel, local)[0, ..., 0]


def run_one(path: Path, spec: ConvSpec, kernel: np.ndarray, workers: int, chunk: int,
            blas_threads: int, memory_limit: str) -> dict[str, Any]:
    from distributed import Client, LocalCluster

    from convarith.scale import conv
    from convarith.scale.store import open_input

    threads = str(blas_threads)
    env = {name: threads for name in
           ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")}
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=":0", env=env) as cluster, \
            Client(cluster) as client:
        client.run(warm_up)
        x = open_input(path, chunks=(chunk, chunk))[None, ..., None]
        y = conv(x, kernel, spec)
        baseline = client.run(reset_peak_rss)
        start = time.perf_counter()
        total = float(client.compute(y.sum()).result())
        elapsed = time.perf_counter() - start
        peaks = client.run(peak_rss_bytes)
    pixels = int(np.prod(x.shape[1:-1]))
    return {
        "workers": workers,
        "wall_s": round(elapsed, 2),
        "mpix_per_s": round(pixels / 1e6 / elapsed, 1),
        "peak_rss_mb_per_worker": [round(v / 2**20) for v in peaks.values()],
        "rss_before_mb_per_worker": [round(v / 2**20) for v in baseline.values()],
        "blocks": int(np.prod(y.numblocks)),
        "output_sum": total,
    }


def check_regions(path: Path, spec: ConvSpec, kernel: np.ndarray, chunk: int,
                  region: int, seed: int) -> float:
    """Largest relative error of sampled Dask output regions against the in-memory engine."""
    from convarith.scale import conv
    from convarith.scale.store import open_input

    image = np.load(path, mmap_mode="r")
    x = open_input(path, chunks=(chunk, chunk))[..., None]
    y = conv(x, kernel, spec)
    size = image.shape[0]
    rng = np.random.default_rng(seed)
    m = min(region, size)
    inside = int(rng.integers(0, max(1, size - m)))
    worst = 0.0
    for start in ((0, 0), (inside, max(0, size - m - inside))):
        stop = (start[0] + m, start[1] + m)
        lazy = y[start[0]:stop[0], start[1]:stop[1], 0].compute(scheduler="threads")
        expected = region_reference(image, kernel, spec, start, stop)
        worst = max(worst, float(np.linalg.norm(lazy - expected) / np.linalg.norm(expected)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="image side (default 20000)")
    parser.add_argument("--chunk", type=int, default=2048, help="block side (default 2048)")
    parser.add_argument("--workers", default="1,2", help="worker counts to time (default 1,2)")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads per worker")
    parser.add_argument("--memory-limit", default="6GiB", help="per-worker memory limit")
    parser.add_argument("--dir", help="where to write the image (default: a temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the generated image")
    parser.add_argument("--region", type=int, default=768, help="side of the checked regions")
    parser.add_argument("--json", action="store_true", help="print results as JSON lines too")
    args = parser.parse_args()

    folder = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="convarith-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"image-{args.size}.npy"
    need = args.size * args.size * 4
    free = shutil.disk_usage(folder).free
    if free < 2 * need:
        raise SystemExit(f"{folder}: {free / 2**30:.1f} GiB free, need {2 * need / 2**30:.1f} GiB")
    try:
        start = time.perf_counter()
        generate_image(path, args.size)
        print(f"image: {args.size} x {args.size} float32, {need / 2**30:.2f} GiB at {path}, "
              f"written in {time.perf_counter() - start:.1f} s")
        rng = np.random.default_rng(1)
        print(f"{'kernel':<16}{'workers':>8}{'wall s':>9}{'MPix/s':>9}  peak RSS per worker (MiB)"
              "  [at start]")
        for name, spec in KERNELS.items():
            kernel = rng.standard_normal((*spec.kernel_size, 1, 1)).astype(np.float32)  # type: ignore[misc]
            for workers in (int(w) for w in args.workers.split(",")):
                result = run_one(path, spec, kernel, workers, args.chunk, args.blas_threads,
                                 args.memory_limit)
                print(f"{name:<16}{workers:>8}{result['wall_s']:>9.1f}{result['mpix_per_s']:>9.1f}  "
                      f"{result['peak_rss_mb_per_worker']}  {result['rss_before_mb_per_worker']}")
                if args.json:
                    print(json.dumps({"kernel": name, "size": args.size, "chunk": args.chunk, **result}))
            error = check_regions(path, spec, kernel, args.chunk, args.region, seed=2)
            print(f"{name:<16} sampled regions vs in-memory engine: relative error {error:.1e} "
                  f"({'ok' if error <= 1e-5 else 'MISMATCH'})")
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)
            if not args.dir:
                shutil.rmtree(folder, ignore_errors=True)
        print(f"client peak RSS: {peak_rss_bytes() / 2**20:.0f} MiB "
              f"({'kept' if args.keep else 'removed'} {path})")


if __name__ == "__main__":
    os.environ.setdefault("KERAS_BACKEND", "jax")
    main()
