"""How much of a layer's forward pass runs outside the parallel chunks.

On a busy machine two-thread wall times say little; what limits the speed-up
from one to two threads can be measured on one: the CPU time the calling thread
spends outside :func:`~convarith.engine.algorithms._threads.run_chunks` work
(the serial part), and how the chunks would share two workers. Every chunk runs
in the calling thread, timed by ``time.thread_time``; the engine cuts the work
as it would for ``--workers`` threads (its ``worker_count`` is patched). Prints
per layer the algorithm, the thread's CPU time, the serial fraction, the chunk
count and the predicted two-worker speed-up ``T / (serial + makespan)`` (each
worker takes the next chunk when it is free, as ``run_chunks`` does; a job
under ``SMALL_WORK`` or of one chunk counts as serial; ``B`` after the serial
fraction marks such a job that may call BLAS, which would then run its own threads:
the prediction does not count them).

    python scripts/serial_fraction.py --shape 1,28,28,128,256 --shape 16,7,7,512,512,s2
    python scripts/serial_fraction.py --networks resnet50 --only "3x3" --batch 16
    python scripts/serial_fraction.py --networks vgg16,efficientnet_b0 --only pool
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "CONVARITH_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import heapq  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

_MODULES = ("winograd", "flat_rows", "register_tiles", "offset_gemm", "grouped_tiles",
            "grouped_gemm", "depthwise", "pointwise", "space_to_depth", "col2im")


class Recorder:
    """A serial stand-in for ``run_chunks`` that times each chunk."""

    def __init__(self) -> None:
        self.jobs: list[list[float]] = []  # per run_chunks call: each chunk's seconds
        self.inline_blas = False  # a job ran inline that may call BLAS

    def __call__(self, work: Callable[[int, int], Any], total: int, chunk: int, *,
                 threads: int | None = None, flops: float | None = None,
                 blas: bool = True, inline_below: float | None = None) -> list[Any]:
        from convarith.engine.algorithms._threads import SMALL_WORK

        inline_below = SMALL_WORK if inline_below is None else inline_below
        chunk = max(1, int(chunk))
        results, times = [], []
        for start in range(0, total, chunk):
            began = time.thread_time()
            results.append(work(start, min(total, start + chunk)))
            times.append(time.thread_time() - began)
        inline = len(times) <= 1 or (threads is None and flops is not None
                                     and flops < inline_below)
        # negative: ran inline, with BLAS on every thread where it calls BLAS
        self.jobs.append([-sum(times)] if inline else times)
        self.inline_blas = self.inline_blas or (inline and blas)
        return results


def makespan(times: list[float], workers: int) -> float:
    """Finish time of ``workers`` threads each taking the next chunk when free."""
    free = [0.0] * workers
    for t in times:
        start = heapq.heappop(free)
        heapq.heappush(free, start + t)
    return max(free)


def patch(workers: int, recorder: Recorder) -> None:
    import importlib

    from convarith.engine import dispatch
    from convarith.engine.algorithms import _threads

    def count() -> int:
        return workers

    _threads.worker_count = count
    _threads.run_chunks = recorder  # type: ignore[assignment]  # (pooling calls it so)
    dispatch.worker_count = count
    for name in _MODULES:
        try:
            module = importlib.import_module(f"convarith.engine.algorithms.{name}")
        except ImportError:
            continue
        if hasattr(module, "worker_count"):
            module.worker_count = count  # type: ignore[attr-defined]
        if hasattr(module, "run_chunks"):
            module.run_chunks = recorder  # type: ignore[attr-defined]

    def native_jobs(runner: Any, rows: Any, jobs: list[tuple[int, int]], *,
                    threads: int | None = None, flops: float | None = None,
                    inline_below: float = _threads.SMALL_WORK) -> None:
        # a table of compiled calls (_native_jobs): each job timed as a chunk
        table = np.ascontiguousarray(rows, np.int64)

        def work(begin: int, end: int) -> None:
            for first, count in jobs[begin:end]:
                runner.drive(table.ctypes.data, first, count)

        recorder(work, len(jobs), 1, threads=threads, flops=flops, blas=False,
                 inline_below=inline_below)

    _threads.run_native_jobs = native_jobs  # type: ignore[assignment]


def measure(fn: Callable[[], Any], recorder: Recorder, workers: int,
            rounds: int = 5) -> tuple[float, float, float, int]:
    """Best-of-``rounds`` ``(total, serial, predicted two-worker time, chunks)``."""
    fn()
    best: tuple[float, float, float, int] | None = None
    recorder.inline_blas = False
    for _ in range(rounds):
        recorder.jobs.clear()
        began = time.thread_time()
        fn()
        total = time.thread_time() - began
        parallel = sum(sum(t) for t in recorder.jobs if t and t[0] >= 0)
        serial = total - parallel
        wall = serial + sum(makespan(t, workers) for t in recorder.jobs if t and t[0] >= 0)
        chunks = sum(len(t) for t in recorder.jobs if t and t[0] >= 0)
        if best is None or total < best[0]:
            best = (total, serial, wall, chunks)
    assert best is not None
    return best


def _shape_case(text: str) -> tuple[str, Any, np.ndarray, np.ndarray]:
    """``N,H,W,C,F[,s2][,k5]`` -> (title, spec, x, kernel): a "same" k×k convolution."""
    from convarith import ConvSpec

    fields = text.split(",")
    n, h, w, c, f = (int(v) for v in fields[:5])
    stride, size = 1, 3
    for extra in fields[5:]:
        if extra.startswith("s"):
            stride = int(extra[1:])
        elif extra.startswith("k"):
            size = int(extra[1:])
    rng = np.random.default_rng(0)
    x = np.maximum(rng.standard_normal((n, h, w, c), np.float32), 0)
    kernel = (rng.standard_normal((size, size, c, f)) * math.sqrt(2 / (9 * c))).astype(
        np.float32)
    spec = ConvSpec(kernel_size=(size, size), strides=(stride, stride), padding="same")
    strided = f" s{stride}" if stride > 1 else ""
    title = f"{size}x{size}{strided} {c}->{f} {n}x{h}x{w}"
    return title, spec, x, kernel


def chosen(spec: Any, x: np.ndarray, kernel: np.ndarray) -> str:
    """The algorithm the dispatcher picks for this forward call."""
    from convarith.engine.dispatch import ConvProblem, choose

    resolved = spec.resolve(x.shape)
    problem = ConvProblem((x.shape[0], *resolved.padded_size, x.shape[-1]), kernel.shape,
                          spec.strides, spec.dilation, resolved.groups or 1,
                          resolved.output_size, x.dtype)
    return choose(problem).name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", action="append", default=[],
                        help="N,H,W,C,F[,s2][,k5]: a 'same' convolution (repeatable)")
    parser.add_argument("--networks", default=None)
    parser.add_argument("--only", default=None)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--image", type=int, default=112)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--algorithms", default=None,
                        help="comma-separated algorithms to force (default: the chosen one)")
    args = parser.parse_args()
    recorder = Recorder()
    patch(args.workers, recorder)
    from convarith.engine import conv

    cases = [_shape_case(text) for text in args.shape]
    if args.networks:
        from convarith import bench_networks as nets

        for name in args.networks.split(","):
            layers = nets.distinct(nets.NETWORKS[name](args.image))
            inputs = nets._inputs(layers, args.batch, seed=args.batch)
            for layer in layers:
                if layer.kind not in ("conv", "max_pool", "avg_pool") or (
                        args.only and args.only not in layer.title):
                    continue
                x, kernel = inputs[layer]
                cases.append((f"{layer.title} b{args.batch}", layer.spec(), x, kernel))
    workers = args.workers
    print(f"{'layer':34s} {'algorithm':16s} {'1 thread':>8s} {'serial':>6s} {'chunks':>6s} "
          f"{str(workers) + ' (pred.)':>11s} {'x' + str(workers):>5s}  chosen for 1 / {workers}")
    for title, spec, x, kernel in cases:
        patch(1, recorder)
        first = "pooling" if kernel is None else chosen(spec, x, kernel)
        patch(workers, recorder)
        second = "pooling" if kernel is None else chosen(spec, x, kernel)
        names = args.algorithms.split(",") if args.algorithms else [second]
        for name in names:
            def call(x: np.ndarray = x, kernel: np.ndarray = kernel, spec: Any = spec,
                     name: str = name) -> Any:
                return conv(x, kernel, spec, algorithm=None if kernel is None else name)

            patch(1, recorder)
            alone = measure(call, recorder, 1)[0]
            patch(workers, recorder)
            total, serial, wall, chunks = measure(call, recorder, workers)
            blas = "B" if recorder.inline_blas else " "
            print(f"{title:34s} {name:16s} {alone * 1e3:8.2f} {serial / total:6.1%}{blas}"
                  f"{chunks:6d} {wall * 1e3:11.2f} {total / wall:5.2f}  {first} / {second}",
                  flush=True)


if __name__ == "__main__":
    main()
