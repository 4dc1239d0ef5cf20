"""The serial part of one engine call: thread CPU time outside the chunk work.

The paths plan their chunks for ``--workers`` workers; every chunk of :func:`run_chunks` runs in the calling thread; this
script wraps ``run_chunks`` in every loaded algorithm module, times (thread CPU time)
the work inside the chunks and the whole call, and records each call's chunk count
and its largest chunk's share. A path whose serial part is large, or whose chunks are
fewer than the workers (or unequal), cannot use a second core.

    python scripts/pointwise_serial_part.py --shape 1,4096,64 --kernel 2,64,128 --padding causal
        [--dilation 4] [--stride 1] [--algorithm flat_rows] [--repeat 20] [--backward]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", required=True, help="input N,*spatial,C")
    parser.add_argument("--kernel", required=True, help="kernel *K,C,F")
    parser.add_argument("--padding", default="valid")
    parser.add_argument("--stride", type=int, default=1)
    parser.add_argument("--dilation", type=int, default=1)
    parser.add_argument("--algorithm", default=None)
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--backward", action="store_true",
                        help="time conv_vjp (input and kernel gradients) instead of conv")
    parser.add_argument("--workers", type=int, default=2,
                        help="the worker count the paths plan their chunks for")
    args = parser.parse_args()
    os.environ["CONVARITH_NUM_THREADS"] = str(args.workers)
    from convarith import ConvSpec
    from convarith.engine import conv, conv_vjp
    from convarith.engine.algorithms import _threads

    shape = tuple(int(v) for v in args.shape.split(","))
    kshape = tuple(int(v) for v in args.kernel.split(","))
    rank = len(shape) - 2
    x = np.random.default_rng(0).standard_normal(shape, np.float32)
    kernel = np.random.default_rng(1).standard_normal(kshape, np.float32)
    spec = ConvSpec(kshape[:rank], strides=args.stride, dilation=args.dilation,
                    padding=args.padding, rank=rank)
    inside = [0.0]
    chunks: list[tuple[int, float, float]] = []  # per call: chunks, largest share, seconds
    original = _threads.run_chunks

    def counted(work: Any, total: int, chunk: int, **kwargs: Any) -> Any:
        sizes = [min(total, s + chunk) - s for s in range(0, total, max(1, int(chunk)))]
        start = time.thread_time()
        try:
            # planned for --workers, run inline: all the chunks' time is this thread's
            return original(work, total, chunk, **{**kwargs, "threads": 1})
        finally:
            spent = time.thread_time() - start
            inside[0] += spent
            chunks.append((len(sizes), max(sizes) / max(1, total), spent))

    run: Callable[[], Any]
    if args.backward:
        d_out = np.random.default_rng(2).standard_normal(conv(x, kernel, spec).shape, np.float32)
        def run() -> Any:
            return conv_vjp(x, kernel, spec, d_out)[:2]
    else:
        def run() -> Any:
            return conv(x, kernel, spec, algorithm=args.algorithm)
    run()
    for module in list(sys.modules.values()):
        if getattr(module, "run_chunks", None) is original and module is not _threads:
            module.run_chunks = counted  # type: ignore[attr-defined]
    best_total = best_inside = float("inf")
    best_calls: list[tuple[int, float, float]] = []
    for _ in range(args.repeat):
        inside[0] = 0.0
        chunks.clear()
        start = time.thread_time()
        run()
        total = time.thread_time() - start
        if total < best_total:
            best_total, best_inside, best_calls = total, inside[0], list(chunks)
    what = "backward" if args.backward else args.algorithm or "chosen"
    # each call's chunks (about equal) shared by the workers: the most loaded one's part
    makespan = sum(spent * min(1.0, max(share, -(-count // args.workers) / count))
                   for count, share, spent in best_calls)
    speedup = best_total / (best_total - best_inside + makespan)
    print(f"{what}: {best_total * 1e3:.3f} ms thread CPU, inside chunks "
          f"{best_inside * 1e3:.3f} ms, serial fraction {1 - best_inside / best_total:.2f}, "
          f"predicted {args.workers}-worker speed-up {speedup:.2f}, "
          f"run_chunks calls (chunks, largest share): {[c[:2] for c in best_calls]}")


if __name__ == "__main__":
    main()
