"""The backends on a GPU: the nine benchmark layers through ``backend='torch'`` / ``'jax'``.

Where PyTorch or JAX sees a CUDA device, times each layer of
``convarith.bench.CASES`` (forward, float32) three ways in one run:

- ``numpy``: convarith's own engine on the CPU;
- ``torch``/``jax``: ``convarith.conv(..., backend=...)`` on the GPU, which
  includes moving the arrays to the device and back (what a NumPy user gets);
- ``torch resident``: ``torch.nn.functional`` on tensors already on the
  device, synchronized (the GPU's own speed, for reference).

Prints medians (ms). Without a GPU it says so and times nothing (exit 0):
nothing in convarith depends on one.

    python benchmarks/gpu.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import convarith
from convarith.bench import CASES


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm-up: compilation, cuDNN's algorithm search, allocation
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def _gpus() -> dict[str, Any]:
    """The frameworks that see a GPU here: ``{"torch": torch, "jax": jax}`` (either may be absent)."""
    found: dict[str, Any] = {}
    try:
        import torch

        if torch.cuda.is_available():
            found["torch"] = torch
    except ImportError:
        pass
    try:
        import jax

        if jax.default_backend() == "gpu":
            found["jax"] = jax
    except ImportError:
        pass
    return found


def _torch_resident(torch: Any, x: np.ndarray, kernel: np.ndarray, spec: convarith.ConvSpec,
                    device: str) -> Callable[[], Any]:
    """``F.conv*`` on device-resident tensors, with the resolved padding applied as ``convarith port`` writes it."""
    functional = torch.nn.functional
    rank = spec.rank or 2
    resolved = spec.resolve(x.shape)
    groups = resolved.groups or 1
    a = torch.from_numpy(np.ascontiguousarray(np.moveaxis(x, -1, 1))).to(device)
    w = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1)))).to(device)
    if spec.transposed:
        conv_t = getattr(functional, f"conv_transpose{rank}d")

        def run() -> Any:
            full = conv_t(a, w, stride=spec.strides, dilation=spec.dilation, groups=groups)
            index = [slice(None), slice(None)] + [slice(lo, full.shape[2 + i] - hi)
                                                  for i, (lo, hi) in enumerate(resolved.crop)]
            return full[tuple(index)]
    else:
        conv = getattr(functional, f"conv{rank}d")
        flat = [v for pair in reversed(resolved.padding) for v in pair]

        def run() -> Any:
            return conv(functional.pad(a, flat), w, stride=spec.strides, dilation=spec.dilation, groups=groups)

    def synchronized() -> Any:
        with torch.no_grad():
            result = run()
        if device == "cuda":
            torch.cuda.synchronize()
        return result

    return synchronized


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dry-run-on-cpu", action="store_true",
                        help="run every column with PyTorch on the CPU, to check this script without a GPU")
    args = parser.parse_args(argv)
    device = "cpu" if args.dry_run_on_cpu else "cuda"
    gpus = _gpus()
    if args.dry_run_on_cpu:
        import torch

        gpus = {"torch": torch}
    if not gpus:
        print("no GPU here: torch.cuda.is_available() is False and JAX's default backend is not 'gpu' "
              "(or neither is installed); nothing timed")
        return 0
    names = ["numpy", *gpus, *(["torch resident"] if "torch" in gpus else [])]
    print(f"{'layer':<6} " + " ".join(f"{name + ' ms':>17}" for name in names))
    data = np.random.default_rng(0)
    for case in CASES:
        x = data.standard_normal(case.input_shape).astype(np.float32)
        kernel = data.standard_normal(case.kernel_shape).astype(np.float32)
        runners: dict[str, Callable[[], Any]] = {
            backend: functools.partial(convarith.conv, x, kernel, case.spec, backend=backend)
            for backend in ["numpy", *gpus]}
        if "torch" in gpus:
            runners["torch resident"] = _torch_resident(gpus["torch"], x, kernel, case.spec, device)
        reference = runners["numpy"]()
        cells = []
        for name in names:
            result = runners[name]()
            if name == "torch resident":
                result = np.moveaxis(result.cpu().numpy(), 1, -1)
            else:
                result = np.asarray(result)
            error = np.linalg.norm(result - reference) / np.linalg.norm(reference)
            if error > 1e-3:
                raise SystemExit(f"{case.name} via {name}: relative error {error:.1e}")
            cells.append(f"{_median_ms(runners[name], args.repeat):>17.3f}")
        print(f"{case.name:<6} " + " ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
