"""Grouped convolutions: convarith against PyTorch, forward and backward, per layer.

Every distinct grouped layer of ResNeXt-50 (32×4d), as :mod:`convarith.bench_networks`
generates it, plus 3×3 layers with 2, 4, 8 and 64 groups, at batch 1 and 16:
float32, channels-last input for convarith, the faster of NCHW and channels-last
for PyTorch; backward is the input and kernel gradients of both. Prints one row per
layer and direction with the ratio PyTorch time / convarith time and the
algorithms convarith chose.

Run with one thread (``--threads 1`` sets ``torch.set_num_threads`` and
``CONVARITH_NUM_THREADS``) or more::

    python scripts/grouped_speed.py --threads 1 --batch 1 16

convarith's forward kernels are a model's fixed weights (``engine.prepack``: packed once),
as the networks benchmark passes them; ``--weights in-place`` passes writeable arrays
read (or packed) at every call instead.

``--algorithms`` instead times every algorithm that applies to each layer's forward
pass (called directly, on the padded input) and prints the planner's pick, its time
over the fastest one's, and each algorithm's time and cost::

    python scripts/grouped_speed.py --threads 1 --batch 1 16 --cpu-time --algorithms
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def layers(batches: list[int]) -> list[tuple[str, int, Any]]:
    """``(name, batch, NetLayer)`` of every grouped layer to time."""
    from convarith.bench_networks import NETWORKS, NetLayer, distinct

    found = [layer for layer in distinct(NETWORKS["resnext50"](224))
             if layer.kind == "conv" and 1 < layer.groups < layer.in_channels]
    extra = [NetLayer("conv", (56, 56), 128, 128, 3, 1, 1, groups=g) for g in (2, 4, 8)]
    extra.append(NetLayer("conv", (28, 28), 256, 256, 3, 1, 1, groups=64))
    out = []
    for batch in batches:
        for layer in [*found, *extra]:
            name = (f"{layer.size[0]}² {layer.in_channels}->{layer.out_channels} "
                    f"k{layer.kernel} s{layer.stride} g{layer.groups}"
                    f"({layer.in_channels // layer.groups}x{layer.out_channels // layer.groups})")
            out.append((name, batch, layer))
    return out


#: The clock the timings read: wall time, or with ``--cpu-time`` this process's CPU
#: time (with one thread, what a shared, overloaded machine's wall clock hides).
CLOCK = [time.perf_counter]


def median_time(fn: Callable[[], Any], seconds: float = 0.6, most: int = 30) -> float:
    clock = CLOCK[0]
    fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < most and (len(times) < 3 or time.perf_counter() - start < seconds):
        t0 = clock()
        fn()
        times.append(clock() - t0)
    return statistics.median(times)


def torch_runner(layer: Any, x: np.ndarray, kernel: np.ndarray, backward: bool
                 ) -> Callable[[], Any]:
    import torch
    import torch.nn.functional as tf

    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
    kwargs = dict(stride=layer.stride, padding=layer.padding, groups=layer.groups)
    best: tuple[float, Callable[[], Any]] | None = None
    for memory_format in (torch.contiguous_format, torch.channels_last):
        a = xt.contiguous(memory_format=memory_format)
        w = wt.contiguous(memory_format=memory_format)
        if backward:
            a.requires_grad_(True)
            w.requires_grad_(True)
            g = torch.randn_like(tf.conv2d(a, w, **kwargs))

            def run(a: Any = a, w: Any = w, g: Any = g) -> Any:
                return torch.autograd.grad(tf.conv2d(a, w, **kwargs), (a, w), g)
        else:
            def run(a: Any = a, w: Any = w) -> Any:
                with torch.no_grad():
                    return tf.conv2d(a, w, **kwargs)
        t = median_time(run, 0.2, 5)
        if best is None or t < best[0]:
            best = (t, run)
    assert best is not None
    return best[1]


def compare_algorithms(name: str, batch: int, layer: Any, rng: np.random.Generator
                       ) -> dict[str, Any]:
    """Every applicable algorithm's forward time on ``layer`` against the planner's pick."""
    from convarith.engine.dispatch import ConvProblem, applicable, choose, get_algorithm

    s, p = layer.stride, layer.padding
    x = rng.standard_normal(layer.input_shape(batch)).astype(np.float32)
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    kernel = (rng.standard_normal(layer.kernel_shape()) * 0.1).astype(np.float32)
    out = tuple((xp.shape[1 + a] - layer.kernel) // s + 1 for a in range(2))
    problem = ConvProblem(xp.shape, kernel.shape, (s, s), (1, 1), layer.groups, out,
                          np.dtype(np.float32))
    pick = choose(problem).name
    times: dict[str, tuple[float, float]] = {}
    for algorithm_name in applicable(problem):
        algorithm = get_algorithm(algorithm_name)

        def run(algorithm: Any = algorithm) -> Any:
            return algorithm.direct(xp, kernel, (s, s), (1, 1), layer.groups, out)

        times[algorithm_name] = (median_time(run, 0.3, 10), algorithm.cost(problem))
    best = min(times, key=lambda a: times[a][0])
    over = times[pick][0] / times[best][0]
    listed = " ".join(f"{a} {t * 1e3:.2f} ms (cost {c / 1e6:.1f})"
                      for a, (t, c) in sorted(times.items(), key=lambda r: r[1][0]))
    print(f"{name:36s} b{batch:<3d} pick {pick:22s} {over:5.2f}x the best ({best}) | {listed}",
          flush=True)
    return dict(layer=name, batch=batch, pick=pick, best=best, pick_over_best=over,
                times_ms={a: t * 1e3 for a, (t, _) in times.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--only", default="", help="run layers whose name contains this")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--json", help="write the rows to this file")
    parser.add_argument("--weights", choices=("prepacked", "in-place"), default="prepacked",
                        help="forward kernels prepacked (engine.prepack, the default) or "
                             "writeable")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by this process's CPU time (use with --threads 1)")
    parser.add_argument("--algorithms", action="store_true",
                        help="time every applicable algorithm (forward) against the pick")
    args = parser.parse_args(argv)
    if args.cpu_time:
        CLOCK[0] = time.process_time
    os.environ["CONVARITH_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    from convarith import ConvSpec
    from convarith.bench import BenchCase, forward_paths
    from convarith.engine import conv, conv_vjp, prepack

    rng = np.random.default_rng(0)
    rows = []
    for name, batch, layer in layers(args.batch):
        if args.only and args.only not in name:
            continue
        if args.algorithms:
            rows.append(compare_algorithms(name, batch, layer, rng))
            continue
        spec = ConvSpec(layer.kernel, strides=layer.stride, padding=layer.padding,
                        groups=layer.groups)
        x = np.maximum(rng.standard_normal(layer.input_shape(batch)), 0).astype(np.float32)
        kernel = (rng.standard_normal(layer.kernel_shape()) * 0.1).astype(np.float32)
        for backward in (False,) if args.forward_only else (False, True):
            if backward:
                dy = rng.standard_normal(layer.output_shape(batch)).astype(np.float32)

                def ours(x: Any = x, kernel: Any = kernel, spec: Any = spec,
                         dy: Any = dy) -> Any:
                    return conv_vjp(x, kernel, spec, dy)
            else:
                weights = prepack(kernel) if args.weights == "prepacked" else kernel

                def ours(x: Any = x, kernel: Any = weights, spec: Any = spec) -> Any:
                    return conv(x, kernel, spec)
            theirs = torch_runner(layer, x, kernel, backward)
            t_ours, t_theirs = median_time(ours), median_time(theirs)
            t_ours = min(t_ours, median_time(ours))
            case = BenchCase(name, name, x.shape, kernel.shape, spec, backward=backward)
            paths = "+".join(forward_paths(case, backward))
            row = dict(layer=name, batch=batch, direction="backward" if backward else "forward",
                       convarith_ms=t_ours * 1e3, torch_ms=t_theirs * 1e3,
                       ratio=t_theirs / t_ours, paths=paths)
            rows.append(row)
            print(f"{name:36s} b{batch:<3d} {row['direction']:8s} ours {t_ours * 1e3:8.2f} ms "
                  f"torch {t_theirs * 1e3:8.2f} ms  ratio {row['ratio']:5.2f}  {paths}",
                  flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
