"""CPU time of thin-input layers (stems) on one thread with and without the remembered
plan of :func:`convarith.engine.algorithms.thin_call.planned`, interleaved in one process.

Each layer runs through ``register_tiles.direct`` in 6 alternating rounds, once with the
plan and once with it turned off (``thin_call.run`` behind ``register_tiles.direct``'s
checks, as before it); prints the fastest round of each and their ratio (above 1: the plan
is faster). Run it on one thread::

    CONVARITH_NUM_THREADS=1 python scripts/thin_plan_overhead.py
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from convarith.engine.algorithms import register_tiles, thin_call

#: (input channels, outputs, kernel, stride, image, images, dtype)
LAYERS = [(3, 32, 3, 2, 112, 1, np.float32), (3, 16, 3, 1, 56, 1, np.float32),
          (1, 32, 5, 1, 64, 1, np.float32), (4, 64, 7, 2, 112, 1, np.float32),
          (3, 32, 3, 2, 112, 2, np.float32), (3, 48, 5, 2, 64, 2, np.float32),
          (3, 32, 3, 2, 112, 1, np.float64), (2, 16, 3, 1, 32, 1, np.float64),
          (3, 64, 3, 1, 28, 1, np.float32)]


def cpu_ms(fn: Callable[[], Any], calls: int) -> float:
    """Milliseconds of CPU time per call of ``calls`` calls."""
    start = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - start) / calls * 1e3


def main() -> None:
    planned = thin_call.planned
    ratios = []
    try:
        for c, f, k, s, image, images, dtype in LAYERS:
            rng = np.random.default_rng(0)
            x = rng.standard_normal((images, image, image, c)).astype(dtype)
            kernel = rng.standard_normal((k, k, c, f)).astype(dtype)
            p = k // 2
            o = (image + 2 * p - k) // s + 1

            def layer(x: np.ndarray = x, kernel: np.ndarray = kernel, s: int = s, p: int = p,
                      o: int = o) -> np.ndarray:
                return register_tiles.direct(x, kernel, (s, s), (1, 1), 1, (o, o),
                                             padding=((p, p), (p, p)))

            calls = max(5, int(3e8 / (2 * images * o * o * k * k * c * f)))
            times: dict[str, list[float]] = {"without": [], "with": []}
            for round_ in range(6):
                for which in ("without", "with") if round_ % 2 else ("with", "without"):
                    thin_call.planned = planned if which == "with" else (
                        lambda *args: None)
                    layer()
                    times[which].append(cpu_ms(layer, calls))
            without, with_plan = min(times["without"]), min(times["with"])
            ratios.append(without / with_plan)
            print(f"{images}x{image}²x{c}->{f} {k}x{k} s{s} {np.dtype(dtype).name}: without "
                  f"{without:.4f} with {with_plan:.4f} ms  {without / with_plan:.3f}", flush=True)
    finally:
        thin_call.planned = planned
    print(f"geomean without/with {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f}")


if __name__ == "__main__":
    main()
