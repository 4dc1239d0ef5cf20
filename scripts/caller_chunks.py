"""The serial part of convolution calls: CPU time the calling thread spends outside
``run_chunks`` against inside it, and how the calls are cut into chunks.

On a shared machine the speed-up from one worker to two cannot be timed; what limits
it can be measured: the caller's own work before and after the chunks (planning,
packing, allocating: it runs on one thread whatever the worker count) and the chunk
count (fewer chunks than workers, or chunks run inline below ``SMALL_WORK``, leave a
worker idle). Forward and, with ``--backward``, ``conv_vjp``; each layer is
``batch,in,out,kernel,stride,image`` (2-D, "same"-style padding ``kernel // 2``)::

    CONVARITH_NUM_THREADS=1 python scripts/caller_chunks.py 1,3,32,3,2,112 16,3,64,7,2,112
    CONVARITH_NUM_THREADS=2 python scripts/caller_chunks.py --backward 1,3,32,3,2,224

Prints per layer: the caller's CPU per call, the part inside ``run_chunks`` (with one
worker that is all the chunks' work), the serial fraction ``1 - inside / caller`` and
the ``(ranges, chunk)`` of each ``run_chunks`` call, and how many of the ranges the
calling thread ran itself (with two workers, the rest ran on the helper thread).
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import pkgutil  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("layers", nargs="+", help="batch,in,out,kernel,stride,image")
    parser.add_argument("--backward", action="store_true", help="time conv_vjp too")
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()

    from convarith import ConvSpec
    from convarith.engine import conv, conv_vjp
    from convarith.engine.algorithms import __path__ as algorithm_path
    from convarith.engine.algorithms import _threads

    inside = [0.0]
    cuts: list[tuple[int, int]] = []
    ranges_by_caller = [0, 0]  # ranges run by the calling thread, all ranges
    real = _threads.run_chunks
    caller_thread = threading.get_ident()

    def timed(work: Callable[[int, int], Any], total: int, chunk: int, **options: Any) -> Any:
        def counted(begin: int, end: int) -> Any:
            ranges_by_caller[0] += threading.get_ident() == caller_thread
            ranges_by_caller[1] += 1
            return work(begin, end)

        start = time.thread_time()
        try:
            return real(counted, total, chunk, **options)
        finally:
            inside[0] += time.thread_time() - start
            cuts.append((-(-total // max(1, chunk)), chunk))

    for found in pkgutil.iter_modules(algorithm_path):
        module = importlib.import_module(f"convarith.engine.algorithms.{found.name}")
        if getattr(module, "run_chunks", None) is real:
            module.run_chunks = timed  # type: ignore[attr-defined]

    print(f"workers: {_threads.worker_count()}")
    rng = np.random.default_rng(0)
    for text in args.layers:
        batch, channels, filters, kernel, stride, image = (int(v) for v in text.split(","))
        x = rng.standard_normal((batch, image, image, channels)).astype(np.float32)
        w = rng.standard_normal((kernel, kernel, channels, filters)).astype(np.float32)
        spec = ConvSpec(kernel, strides=stride, padding=kernel // 2, rank=2)
        d_out = np.ones_like(conv(x, w, spec))
        calls: list[tuple[str, Callable[[], Any]]] = [
            ("forward", lambda x=x, w=w, spec=spec: conv(x, w, spec))]
        if args.backward:
            calls.append(("backward", lambda x=x, w=w, spec=spec, d=d_out:
                          conv_vjp(x, w, spec, d)))
        for direction, fn in calls:
            fn()
            fn()
            inside[0] = 0.0
            cuts.clear()
            ranges_by_caller[:] = [0, 0]
            start = time.thread_time()
            for _ in range(args.calls):
                fn()
            caller = (time.thread_time() - start) / args.calls
            within = inside[0] / args.calls
            print(f"{text:18s} {direction:8s} caller {caller * 1e3:8.3f} ms, in run_chunks "
                  f"{within * 1e3:8.3f} ms, serial fraction {1 - within / caller:4.2f}, "
                  f"chunks {sorted(set(cuts))}, run by the caller "
                  f"{ranges_by_caller[0]}/{ranges_by_caller[1]}", flush=True)


if __name__ == "__main__":
    main()
