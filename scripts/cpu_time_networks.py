"""The networks suite timed by CPU time on one thread: convarith against PyTorch.

On a shared machine wall-clock medians mostly measure the queue for the cores;
the CPU time of one thread (convarith, NumPy's BLAS and PyTorch all on one
thread) does not. One direction per run (``--direction forward``, the default, or
``backward``: ``conv_vjp``'s input and weight gradients against PyTorch's
backward alone, its forward run once beforehand), each distinct layer timed
once per run (best of three rounds of a few milliseconds each); prints
PyTorch's time / convarith's per layer and the geomean over every network's
distinct layers, as ``python -m convarith.bench --suite networks`` counts them.

    python scripts/cpu_time_networks.py --jit off [--isa avx2] [--networks resnet50]
        [--image 112] [--batch 1] [--only g32] [--direction backward] [--json out.json]
"""

from __future__ import annotations

import os

for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                  "CONVARITH_NUM_THREADS"):
    os.environ[_variable] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402


def cpu_time(fn: Callable[[], Any], budget: float = 0.004, rounds: int = 3) -> float:
    """Seconds of CPU time per call: best of ``rounds`` rounds of about ``budget`` each."""
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jit", choices=("on", "off", "numpy"), default="on")
    parser.add_argument("--isa", default=None)
    parser.add_argument("--networks", default=None)
    parser.add_argument("--image", type=int, default=112)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--only", default=None, help="only layers whose title holds this")
    parser.add_argument("--direction", choices=("forward", "backward"), default="forward")
    parser.add_argument("--split", action="store_true",
                        help="backward: also the input and the weight gradient alone, each "
                             "against PyTorch's (ratios dx, dw)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    os.cpu_count = lambda: 1  # the benchmark's PyTorch runners take their threads from it
    from convarith import bench_networks as nets

    nets.set_mode(args.jit, args.isa)
    import torch

    from convarith.bench import torch_runner
    from convarith.engine import conv, conv_vjp

    backward = args.direction == "backward"
    torch.set_num_threads(1)
    print(nets.mode_description(), flush=True)
    timed: dict[Any, tuple[float, float, str]] = {}
    rows = []
    for name in (args.networks.split(",") if args.networks else list(nets.NETWORKS)):
        layers = nets.distinct(nets.NETWORKS[name](args.image))
        inputs = nets._inputs(layers, args.batch, seed=args.batch)
        for layer in layers:
            if args.only and args.only not in layer.title:
                continue
            if layer not in timed:
                x, kernel = inputs[layer]
                spec = layer.spec()
                if kernel is not None:
                    picked = torch_runner(nets._case(layer, args.batch), x, kernel, backward)
                    theirs = picked[0] if picked is not None else None
                else:
                    theirs = nets._torch_pool(layer, x, backward)
                assert theirs is not None
                if backward:
                    d_out = nets._output_gradient(layer, args.batch)
                    ours = cpu_time(lambda x=x, kernel=kernel, spec=spec, d_out=d_out:
                                    conv_vjp(x, kernel, spec, d_out))
                else:
                    ours = cpu_time(lambda x=x, kernel=kernel, spec=spec: conv(x, kernel, spec))
                paths = nets._paths(layer, args.batch, backward)
                # backward: the input and weight gradients' paths (conv_vjp runs no forward)
                path = "+".join(paths[1:] if backward and len(paths) == 3 else paths)
                split = ""
                if args.split and backward and kernel is not None:
                    case = nets._case(layer, args.batch)
                    only_dw = cpu_time(lambda x=x, kernel=kernel, spec=spec, d_out=d_out:
                                       conv_vjp(x, kernel, spec, d_out, need_input_grad=False))
                    torch_dx, torch_dw = (
                        cpu_time(torch_runner(case, x, kernel, True, which)[0])  # type: ignore[index]
                        for which in ("input", "kernel"))
                    # convarith's input gradient: the whole call less the weight gradient
                    split = (f" dx {torch_dx / max(ours - only_dw, 1e-7):5.2f} "
                             f"({(ours - only_dw) * 1e3:.3f}/{torch_dx * 1e3:.3f})"
                             f" dw {torch_dw / only_dw:5.2f} "
                             f"({only_dw * 1e3:.3f}/{torch_dw * 1e3:.3f})")
                timed[layer] = (ours, cpu_time(theirs), path + split)
            ours, theirs_s, path = timed[layer]
            rows.append(dict(network=name, layer=layer.title, convarith_s=ours,
                             torch_s=theirs_s, ratio=theirs_s / ours, path=path))
            print(f"{theirs_s / ours:5.2f} {name:16s} {layer.title:42s} "
                  f"{ours * 1e3:8.3f} {theirs_s * 1e3:8.3f} ms  {path}", flush=True)
    if not rows:
        return
    geomean = math.exp(math.fsum(math.log(r["ratio"]) for r in rows) / len(rows))
    print(f"{len(rows)} layers: geomean PyTorch/convarith {geomean:.3f}, "
          f"min {min(r['ratio'] for r in rows):.2f}, "
          f"below 0.7: {sum(r['ratio'] < 0.7 for r in rows)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(dict(mode=nets.mode_description(), direction=args.direction,
                           batch=args.batch, image=args.image, rows=rows, geomean=geomean),
                      handle,
                      indent=1)


if __name__ == "__main__":
    main()
