"""How close the planner's pick for a 1×1 convolution is to the fastest algorithm.

For a spread of 1×1 layers (input and output channels 16..2048, images 1²..56²,
batch 1, 2 and 16, stride 1 and 2) every applicable direct algorithm is forced and
timed through ``conv2d``, beside the planner's own pick: one thread's CPU time
(``--threads 1``, the default; convarith, NumPy's BLAS on one thread) or, with
``--threads 2``, wall-clock medians of interleaved rounds. Prints per layer the
pick, the fastest one the planner could pick (finite cost), and pick / fastest; then
how many picks are within 10%.

    python scripts/pointwise_choice.py [--threads 1] [--dtype float32] [--jit off]
        [--isa avx2] [--count 60] [--seed 0] [--max-flops 4e8] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from typing import Any


def _cpu_time(fn: Callable[[], Any], budget: float = 0.003, rounds: int = 3) -> float:
    """Seconds of CPU time per call: best of ``rounds`` rounds of about ``budget``."""
    fn()
    start = time.process_time()
    fn()
    once = time.process_time() - start
    calls = max(1, int(budget / max(once, 1e-5)))
    best = math.inf
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - start) / calls)
    return best


def _wall_medians(fns: dict[str, Callable[[], Any]], budget: float = 0.003,
                  rounds: int = 15) -> dict[str, float]:
    """Median wall seconds per call of each function, rounds interleaved."""
    calls = {}
    for name, fn in fns.items():
        fn()
        start = time.perf_counter()
        fn()
        calls[name] = max(1, int(budget / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls[name]):
                fn()
            times[name].append((time.perf_counter() - start) / calls[name])
    return {name: sorted(t)[len(t) // 2] for name, t in times.items()}


def layers(count: int, seed: int, max_flops: float) -> list[tuple[int, int, int, int, int]]:
    """``(batch, image, C, F, stride)``: the networks' 1×1 shapes, then random ones."""
    import numpy as np

    fixed = [(1, 4, 160, 960, 1), (1, 4, 960, 160, 1), (1, 4, 576, 160, 1),
             (1, 4, 192, 1152, 1), (1, 4, 1152, 320, 1), (1, 4, 1024, 2048, 1),
             (1, 7, 256, 1024, 1), (1, 7, 1024, 256, 1), (1, 7, 512, 1024, 1),
             (1, 1, 1152, 48, 1), (16, 1, 1152, 48, 1), (1, 1, 32, 8, 1),
             (16, 28, 256, 64, 1), (16, 28, 64, 256, 1), (16, 28, 256, 128, 1),
             (16, 28, 128, 256, 1), (16, 56, 16, 96, 1), (16, 14, 512, 256, 1),
             (16, 7, 1024, 256, 1), (16, 4, 160, 960, 1), (2, 14, 256, 1024, 1)]
    rng = np.random.default_rng(seed)
    channels = [16, 24, 32, 64, 96, 128, 160, 256, 320, 512, 576, 960, 1024, 2048]
    out = [s for s in fixed if 2 * s[0] * s[1] ** 2 * s[2] * s[3] <= max_flops]
    while len(out) < len(fixed) + count:
        batch = int(rng.choice([1, 2, 16]))
        image = int(rng.choice([1, 2, 4, 7, 14, 28, 56]))
        c, f = (int(rng.choice(channels)) for _ in range(2))
        stride = 2 if image >= 4 and rng.random() < 0.2 else 1
        if 2 * batch * (image // stride) ** 2 * c * f <= max_flops:
            out.append((batch, image, c, f, stride))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--jit", choices=("on", "off"), default="on")
    parser.add_argument("--isa", default=None)
    parser.add_argument("--count", type=int, default=60, help="random layers beside the fixed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-flops", type=float, default=4e8)
    parser.add_argument("--only-fixed", action="store_true")
    parser.add_argument("--shapes", default=None,
                        help="only these layers: batch,image,C,F,stride;... ")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "CONVARITH_NUM_THREADS"):
        os.environ[variable] = str(args.threads)
    if args.jit == "off":
        os.environ["CONVARITH_JIT"] = "0"
    if args.isa:
        os.environ["CONVARITH_VECTOR_ISA"] = args.isa
    import numpy as np

    from convarith import conv2d
    from convarith.engine import dispatch
    from convarith.engine.dispatch import ConvProblem

    dtype = np.dtype(args.dtype)
    rng = np.random.default_rng(args.seed)
    rows = []
    within = 0
    shapes = (layers(0 if args.only_fixed else args.count, args.seed, args.max_flops)
              if args.shapes is None else
              [tuple(int(v) for v in one.split(",")) for one in args.shapes.split(";")])
    for batch, image, c, f, stride in shapes:
        x = rng.standard_normal((batch, image, image, c)).astype(dtype)
        w = rng.standard_normal((1, 1, c, f)).astype(dtype)
        out = -(-image // stride)
        problem = ConvProblem(x.shape, w.shape, (stride, stride), (1, 1), 1, (out, out), dtype)
        pick = dispatch.cheapest(problem)
        assert pick is not None
        names = dispatch.applicable(problem)
        fns = {name: (lambda name=name, x=x, w=w, stride=stride:
                      conv2d(x, w, strides=stride, algorithm=name))
               for name in names}
        if args.threads == 1:
            times = {name: _cpu_time(fn) for name, fn in fns.items()}
        else:
            times = _wall_medians(fns)
        costs = {name: dispatch.get_algorithm(name).cost(problem) / problem.flops
                 for name in names}
        # the fastest the planner could pick (an infinite cost opts out of the choice)
        fastest = min((name for name in times if math.isfinite(costs[name])),
                      key=times.__getitem__)
        ratio = times[pick.name] / times[fastest]
        within += ratio <= 1.1
        rows.append(dict(shape=[batch, image, c, f, stride], pick=pick.name, fastest=fastest,
                         ratio=ratio, times=times, costs=costs))
        detail = " ".join(f"{n[:8]} {t * 1e3:.3f}({costs[n]:.2f})" for n, t in times.items())
        print(f"{ratio:5.2f} {batch:2d}x{image:2d}² {c:4d}->{f:<4d} s{stride} pick {pick.name:15s}"
              f" {detail}", flush=True)
    print(f"{within}/{len(rows)} picks within 10% of the fastest "
          f"({args.threads} thread(s), {dtype}, jit {args.jit}, isa {args.isa or 'native'}); "
          f"geomean pick/fastest "
          f"{math.exp(sum(math.log(r['ratio']) for r in rows) / len(rows)):.3f}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
