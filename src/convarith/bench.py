"""Side-by-side speed of convarith, PyTorch and JAX on the same layers.

Run ``python -m convarith.bench`` (``--help`` for options). Every case runs
through convarith, PyTorch (the better of NCHW and channels-last memory
formats, all cores) and JAX (jit, ``block_until_ready``) in one process,
round-robin after warm-up, so that load from elsewhere on the machine hits
all three alike; the table quotes medians. Each turn starts with one untimed
settling call (the previous framework's idle threads are the switch's cost,
not the next runner's), then ``--block`` timed calls. It also measures this machine's
float32 matrix-multiply rate (``np.matmul`` of large square matrices) in the
same rounds, the peak extra memory of convarith (tracemalloc) and the
relative error of every result against a float64 computation.

PyTorch and JAX are optional: their columns stay empty when missing.

The output names the BLAS kernel NumPy runs (threadpoolctl) and the load
average: where ``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` is set and picks
a slower kernel than the CPU supports, run
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m convarith.bench``;
on a shared machine raise ``--repeat`` and compare ratios, not times.

Examples
--------
>>> [case.name for case in CASES][:3]
['L1', 'L2', 'L3']
>>> CASES[0].flops
1849688064
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .arithmetic import conv_output_size
from .spec import ConvSpec

__all__ = ["BenchCase", "CASES", "CaseResult", "run", "main"]


@dataclass(frozen=True)
class BenchCase:
    """One benchmark layer: channels-last input shape, kernel shape, spec.

    ``kernel_shape`` is convarith's layout: ``(*K, C // groups, F)``, or
    ``(*K, F // groups, C)`` for a transposed convolution.
    """

    name: str
    title: str
    input_shape: tuple[int, ...]
    kernel_shape: tuple[int, ...]
    spec: ConvSpec
    backward: bool = False

    @property
    def groups(self) -> int:
        return self.spec.resolve(self.input_shape).groups or 1

    @property
    def output_shape(self) -> tuple[int, ...]:
        resolved = self.spec.resolve(self.input_shape)
        filters = self.kernel_shape[-1]
        if self.spec.transposed:
            filters = self.kernel_shape[-2] * (resolved.groups or 1)
        return (self.input_shape[0], *resolved.output_size, filters)

    @property
    def flops(self) -> int:
        """Direct-convolution FLOPs: ``2 · N · out_cells · K · C/g · F``.

        For a transposed convolution: the same count over its *input* cells
        (each input cell meets every tap once).
        """
        rank = self.spec.rank or 2
        taps = math.prod(self.kernel_shape[:rank])
        grid = self.input_shape if self.spec.transposed else self.output_shape
        cells = math.prod(grid[:-1])
        return 2 * cells * taps * self.kernel_shape[-2] * self.kernel_shape[-1]

    @property
    def io_bytes(self) -> int:
        """Bytes of the float32 input and output."""
        return 4 * (math.prod(self.input_shape) + math.prod(self.output_shape))


def _cases() -> tuple[BenchCase, ...]:
    same3 = ConvSpec(3, padding="same")
    return (
        BenchCase("L1", "3x3 s1 same, 64->64, 8x56x56", (8, 56, 56, 64), (3, 3, 64, 64),
                  same3, backward=True),
        BenchCase("L2", "3x3 s2 same, 64->128, 8x56x56", (8, 56, 56, 64), (3, 3, 64, 128),
                  ConvSpec(3, strides=2, padding="same")),
        BenchCase("L3", "3x3 dilation 2 same, 64->64", (8, 56, 56, 64), (3, 3, 64, 64),
                  ConvSpec(3, dilation=2, padding="same"), backward=True),
        BenchCase("L4", "3x3 same, 1->32, 64x28x28", (64, 28, 28, 1), (3, 3, 1, 32), same3),
        BenchCase("L5", "depthwise 3x3 same, 128ch", (8, 56, 56, 128), (3, 3, 1, 128),
                  ConvSpec(3, padding="same", groups=128)),
        BenchCase("L6", "1x1, 256->256, 32x14x14", (32, 14, 14, 256), (1, 1, 256, 256),
                  ConvSpec(1)),
        BenchCase("L7", "7x7 s2 same, 3->64, 8x112x112", (8, 112, 112, 3), (7, 7, 3, 64),
                  ConvSpec(7, strides=2, padding="same")),
        BenchCase("L8", "Conv1D k3 d8 causal, 64->64, 8x16000", (8, 16000, 64), (3, 64, 64),
                  ConvSpec(3, dilation=8, padding="causal", rank=1)),
        BenchCase("L9", "transposed 4x4 s2 same, 64->32", (8, 28, 28, 64), (4, 4, 32, 64),
                  ConvSpec(4, strides=2, padding="same", transposed=True)),
    )


CASES = _cases()


#: Pause before each runner's turn, so the previous runner's threads go idle
#: (longer pauses let the machine idle: every runner's first calls then run
#: from cold caches, measured up to 2× slower for three calls).
SETTLE_SECONDS = 0.02

# --------------------------------------------------------------------------- runners


def torch_runner(case: BenchCase, x: np.ndarray, kernel: np.ndarray,
                  backward: bool, gradients: str = "both"
                  ) -> tuple[Callable[[], Any], str] | None:
    """The fastest PyTorch equivalent (NCHW or channels-last), or None without torch.

    Backward: the gradients of the input and the kernel (``gradients="both"``),
    or only one of them (``"input"``, ``"kernel"``: PyTorch then computes only
    that one)."""
    if gradients not in ("both", "input", "kernel"):
        raise ValueError(f"gradients must be 'both', 'input' or 'kernel', got {gradients!r}")
    try:
        import torch
        import torch.nn.functional as tf
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    spec = case.spec
    rank = spec.rank or 2
    resolved = spec.resolve(x.shape)
    groups = resolved.groups or 1
    xt = torch.from_numpy(np.moveaxis(x, -1, 1).copy())
    # torch weight: direct (F, C/g, *K); transposed (C, F/g, *K)
    wt = torch.from_numpy(np.ascontiguousarray(np.moveaxis(kernel, (-1, -2), (0, 1))))
    fn: Callable[..., Any]
    if spec.transposed:
        crops = [lo for lo, _ in resolved.crop]
        extra = tuple(hi - lo for lo, hi in resolved.crop)
        fn = {1: tf.conv_transpose1d, 2: tf.conv_transpose2d, 3: tf.conv_transpose3d}[rank]
        kwargs: dict[str, Any] = dict(stride=spec.strides, padding=crops, groups=groups,
                                      dilation=spec.dilation,
                                      output_padding=tuple(max(0, -e) for e in extra))
        call: Callable[..., Any] = lambda a, w: fn(a, w, **kwargs)  # noqa: E731
    else:
        fn = {1: tf.conv1d, 2: tf.conv2d, 3: tf.conv3d}[rank]
        pads = resolved.padding
        out = resolved.output_size
        # the layer a PyTorch user would write: symmetric padding when it gives the
        # same output size (same FLOPs; "same" with stride 2 is then shifted by a
        # cell), otherwise an explicit F.pad first
        symmetric = tuple(-(-(lo + hi) // 2) for lo, hi in pads)
        sym_out = tuple(
            conv_output_size(n, k, s, d, (p, p))
            for n, p, k, d, s in zip(resolved.input_size, symmetric, spec.kernel_size,
                                     spec.dilation, spec.strides)
        )
        if sym_out == tuple(out) and all(lo == hi or spec.strides != (1,) * rank
                                         for lo, hi in pads):
            kwargs = dict(stride=spec.strides, padding=symmetric, dilation=spec.dilation,
                          groups=groups)
            call = lambda a, w: fn(a, w, **kwargs)  # noqa: E731
        else:
            flat_pads = [v for lo_hi in reversed(pads) for v in lo_hi]
            kwargs = dict(stride=spec.strides, dilation=spec.dilation, groups=groups)
            call = lambda a, w: fn(tf.pad(a, flat_pads), w, **kwargs)  # noqa: E731
    formats = [("NCHW", torch.contiguous_format)]
    if rank == 2:
        formats.append(("channels_last", torch.channels_last))
    candidates: list[tuple[Callable[[], Any], str]] = []
    for label, memory_format in formats:
        a = xt.contiguous(memory_format=memory_format)
        w = wt.contiguous(memory_format=memory_format)
        if backward:
            # the backward pass alone, as conv_vjp times it: the forward runs once,
            # here, and its graph is kept (PyTorch's convolution_backward per call)
            a.requires_grad_(True)
            w.requires_grad_(True)
            y = call(a, w)
            g = torch.randn_like(y)

            wrt = {"both": (a, w), "input": (a,), "kernel": (w,)}[gradients]

            def run_backward(y: Any = y, wrt: Any = wrt, g: Any = g) -> Any:
                return torch.autograd.grad(y, wrt, g, retain_graph=True)

            candidates.append((run_backward, label))
        else:
            def run_forward(a: Any = a, w: Any = w) -> Any:
                with torch.no_grad():
                    return call(a, w)

            candidates.append((run_forward, label))
    timed = [(_median_time(fn_, 3), fn_, label) for fn_, label in candidates]
    best = min(timed, key=lambda item: item[0])
    return best[1], best[2]


def _jax_runner(case: BenchCase, x: np.ndarray, kernel: np.ndarray,
                backward: bool) -> Callable[[], Any] | None:
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    spec = case.spec
    rank = spec.rank or 2
    resolved = spec.resolve(x.shape)
    groups = resolved.groups or 1
    spatial = "DHW"[3 - rank:]
    numbers = (f"N{spatial}C", f"{spatial}IO", f"N{spatial}C")
    if spec.transposed:
        from .engine.core import flip_swap

        w = flip_swap(kernel, groups)
        kwargs: dict[str, Any] = dict(window_strides=(1,) * rank, padding=resolved.padding,
                                      lhs_dilation=spec.strides, rhs_dilation=spec.dilation,
                                      dimension_numbers=numbers, feature_group_count=groups)
    else:
        w = kernel
        kwargs = dict(window_strides=spec.strides, padding=resolved.padding,
                      rhs_dilation=spec.dilation, dimension_numbers=numbers,
                      feature_group_count=groups)

    def forward(a: Any, k: Any) -> Any:
        return jax.lax.conv_general_dilated(a, k, **kwargs)

    xa, wa = jnp.asarray(x), jnp.asarray(w)
    if backward:
        dy = jnp.asarray(np.random.default_rng(1).standard_normal(
            forward(xa, wa).shape).astype(x.dtype))

        @jax.jit
        def grads(a: Any, k: Any, g: Any) -> Any:
            _, vjp = jax.vjp(forward, a, k)
            return vjp(g)

        return lambda: jax.block_until_ready(grads(xa, wa, dy))
    jitted = jax.jit(forward)
    return lambda: jax.block_until_ready(jitted(xa, wa))


def _convarith_runner(case: BenchCase, x: np.ndarray, kernel: np.ndarray,
                      backward: bool, d_out: np.ndarray | None) -> Callable[[], Any]:
    from .engine import conv, conv_vjp

    if backward:
        assert d_out is not None
        return lambda: conv_vjp(x, kernel, case.spec, d_out)
    return lambda: conv(x, kernel, case.spec)


def _matmul_runner(size: int = 2048) -> Callable[[], Any]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size)).astype(np.float32)
    b = rng.standard_normal((size, size)).astype(np.float32)
    out = np.empty_like(a)
    return lambda: np.matmul(a, b, out=out)


def _median_time(fn: Callable[[], Any], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --------------------------------------------------------------------------- accuracy


def forward_paths(case: BenchCase, backward: bool, prepacked: bool = False) -> list[str]:
    """Names of the algorithms the dispatcher picks for this case (``prepacked``: a forward
    pass whose kernel is :func:`convarith.engine.prepack`'s, as the networks suite runs
    it: the dispatcher counts a kept packing or transform as free)."""
    from .engine.core import transposed_algorithm
    from .engine.dispatch import ConvProblem, choose, choose_weight_grad

    spec = case.spec
    resolved = spec.resolve(case.input_shape)
    groups = resolved.groups or 1
    n = case.input_shape[0]
    if spec.transposed:
        names = [transposed_algorithm(case.input_shape, case.kernel_shape, spec.strides,
                                      spec.dilation, groups, resolved.padding)]
        if backward:
            # conv_vjp of a transposed convolution: the input gradient is the direct
            # convolution of the output gradient (its crop undone) with the same kernel,
            # the kernel's the weight gradient of that against the input
            grid = tuple(o + lo + hi for o, (lo, hi) in zip(resolved.output_size,
                                                            resolved.crop))
            problem = ConvProblem((n, *grid, case.output_shape[-1]), case.kernel_shape,
                                  spec.strides, spec.dilation, groups, resolved.input_size,
                                  np.dtype(np.float32))
            names += [choose(problem).name, choose_weight_grad(problem).name]
        return names
    problem = ConvProblem((n, *resolved.padded_size, case.input_shape[-1]), case.kernel_shape,
                          spec.strides, spec.dilation, groups,
                          resolved.output_size, np.dtype(np.float32),
                          prepacked=prepacked and not backward)
    names = [choose(problem).name]
    if backward:
        names.append(choose_weight_grad(problem).name)
        # the input gradient: the transposed convolution of d_out onto the padded grid,
        # cropped to the input with zero padding (as conv_vjp runs it)
        padding = resolved.input_gradient_padding
        if spec.padding_mode == "zeros" and all(lo >= 0 and hi >= 0
                                                for lo, hi in resolved.padding):
            padding = tuple((a - lo, b - hi) for (a, b), (lo, hi) in
                            zip(resolved.input_gradient_padding, resolved.padding))
        names.insert(1, transposed_algorithm(
            case.output_shape, case.kernel_shape, spec.strides, spec.dilation, groups,
            padding))
    return names


def relative_error(result: Any, reference: Any) -> float:
    results = result if isinstance(result, tuple) else (result,)
    references = reference if isinstance(reference, tuple) else (reference,)
    worst = 0.0
    for a, b in zip(results, references):
        if a is None or b is None:
            continue
        b64 = np.asarray(b, np.float64)
        worst = max(worst, float(np.linalg.norm(np.asarray(a, np.float64) - b64)
                                 / max(np.linalg.norm(b64), 1e-300)))
    return worst


def _float64_reference(case: BenchCase, x: np.ndarray, kernel: np.ndarray, backward: bool,
                       d_out: np.ndarray | None) -> Any:
    """The same call in float64 (convarith's default per-offset GEMM path)."""
    from .engine import conv, conv_vjp

    x64, k64 = x.astype(np.float64), kernel.astype(np.float64)
    if backward:
        assert d_out is not None
        return conv_vjp(x64, k64, case.spec, d_out.astype(np.float64), algorithm="offset_gemm")
    return conv(x64, k64, case.spec, algorithm="offset_gemm")


def _peak_memory(fn: Callable[[], Any]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = fn()
        peak = tracemalloc.get_traced_memory()[1]
        del result
    finally:
        tracemalloc.stop()
    return peak - base


# --------------------------------------------------------------------------- running


@dataclass
class CaseResult:
    """Medians (seconds) and derived figures of one case, forward or backward."""

    case: str
    title: str
    direction: str
    flops: int
    paths: list[str]
    convarith_s: float
    torch_s: float | None = None
    torch_format: str | None = None
    jax_s: float | None = None
    matmul_gflops: float = 0.0
    peak_bytes: int = 0
    io_bytes: int = 0
    rel_error: float = 0.0
    samples: dict[str, list[float]] = field(default_factory=dict)

    @property
    def gflops(self) -> float:
        return self.flops / self.convarith_s / 1e9

    @property
    def ratio(self) -> float | None:
        """``torch_time / convarith_time`` (above 1: convarith is faster)."""
        return None if self.torch_s is None else self.torch_s / self.convarith_s

    @property
    def matmul_share(self) -> float:
        return self.gflops / self.matmul_gflops if self.matmul_gflops else 0.0

    @property
    def memory_ratio(self) -> float:
        return self.peak_bytes / self.io_bytes


def alternate(runners: dict[str, Callable[[], Any]], repeat: int, block: int,
               settle: float = 0.0) -> dict[str, list[float]]:
    """Time the runners in turn: ``repeat`` rounds, each a block of calls per runner.

    Switching frameworks has a cost that belongs to neither: the runner before
    may leave its thread pool spinning for a while (OpenMP and XLA pools spin
    after a call; OpenBLAS's do too unless told otherwise, see
    :func:`_quiet_blas_environment`), which slows a multi-threaded runner that
    starts meanwhile, and a runner whose threads went to sleep must wake them.
    So each block starts after a pause of ``settle`` seconds with one untimed
    call; the next ``block`` calls are recorded. The order rotates each round
    so that no runner always follows the same one.

    >>> calls = []
    >>> samples = alternate({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
    ...                      repeat=2, block=1)
    >>> "".join(calls), [len(v) for v in samples.values()]
    ('aabbbbaa', [2, 2])
    """
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for round_ in range(repeat):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            fn = runners[name]
            time.sleep(settle)
            fn()
            for _ in range(block):
                start = time.perf_counter()
                fn()
                samples[name].append(time.perf_counter() - start)
    return samples


def warm_up_calls(backward: bool) -> int:
    """Untimed calls of each runner before a layer is timed: 2, and for a backward pass at
    least as many as convarith's first calls spend measuring how to run its two gradients
    (:mod:`convarith.engine.gradient_modes`: the first call, then two trials of each
    way), so that no timed call is a trial of a slower way.

    >>> warm_up_calls(False), warm_up_calls(True) >= 7
    (2, True)
    """
    if not backward:
        return 2
    from .engine import gradient_modes

    return max(2, 1 + gradient_modes.TRIALS * len(gradient_modes.CANDIDATES))


def run(cases: Sequence[BenchCase], repeat: int = 7, include_backward: bool = True,
        log: Callable[[str], None] | None = None, block: int = 2,
        settle: float = SETTLE_SECONDS) -> list[CaseResult]:
    """Benchmark ``cases``; returns one :class:`CaseResult` per direction.

    Each case runs ``repeat`` rounds; in each, every runner gets a pause of
    ``settle`` seconds, a settling call and then ``block`` timed calls (see
    :func:`alternate`).
    """
    results = []
    matmul = _matmul_runner()
    matmul_flops = 2 * 2048**3
    for case in cases:
        directions = [False] + ([True] if case.backward and include_backward else [])
        for backward in directions:
            label = f"{case.name} {'backward' if backward else 'forward'}"
            if log:
                log(f"running {label} ...")
            rng = np.random.default_rng(0)
            x = rng.standard_normal(case.input_shape).astype(np.float32)
            kernel = (rng.standard_normal(case.kernel_shape)
                      / math.sqrt(math.prod(case.kernel_shape[:-1]))).astype(np.float32)
            d_out = (rng.standard_normal(case.output_shape).astype(np.float32)
                     if backward else None)
            ours = _convarith_runner(case, x, kernel, backward, d_out)
            reference = _float64_reference(case, x, kernel, backward, d_out)
            error = relative_error(ours(), reference)
            del reference
            peak = _peak_memory(ours)
            runners: dict[str, Callable[[], Any]] = {"convarith": ours, "matmul": matmul}
            torch_pick = torch_runner(case, x, kernel, backward)
            if torch_pick is not None:
                runners["torch"] = torch_pick[0]
            jax_fn = _jax_runner(case, x, kernel, backward)
            if jax_fn is not None:
                runners["jax"] = jax_fn
            for fn in runners.values():  # warm-up (compilation, caches)
                for _ in range(warm_up_calls(backward)):
                    fn()
            samples = alternate(runners, repeat, block, settle)
            median = {name: statistics.median(times) for name, times in samples.items()}
            flops = case.flops * (2 if backward else 1)
            results.append(CaseResult(
                case=case.name, title=case.title,
                direction="backward" if backward else "forward", flops=flops,
                paths=forward_paths(case, backward), convarith_s=median["convarith"],
                torch_s=median.get("torch"),
                torch_format=torch_pick[1] if torch_pick is not None else None,
                jax_s=median.get("jax"), matmul_gflops=matmul_flops / median["matmul"] / 1e9,
                peak_bytes=peak, io_bytes=case.io_bytes * (2 if backward else 1),
                rel_error=error, samples=samples,
            ))
    return results


def summary(results: Sequence[CaseResult]) -> dict[str, Any]:
    """The figures the targets are stated in."""
    forward = [r for r in results if r.direction == "forward" and r.ratio is not None]
    backward = [r for r in results if r.direction == "backward" and r.ratio is not None]
    per_path: dict[str, float] = {}
    for r in results:
        for path in set(r.paths):
            per_path[path] = max(per_path.get(path, 0.0), r.rel_error)

    def geomean(values: Sequence[float]) -> float | None:
        return math.exp(statistics.fmean(math.log(v) for v in values)) if values else None

    return {
        "forward_geomean_ratio": geomean([r.ratio for r in forward if r.ratio]),
        "forward_min_ratio": min((r.ratio for r in forward if r.ratio), default=None),
        "backward_ratios": {r.case: r.ratio for r in backward},
        "matmul_share": {r.case: r.matmul_share for r in results
                         if r.direction == "forward" and r.case in ("L1", "L3", "L6")},
        "max_memory_ratio": max((r.memory_ratio for r in results), default=None),
        "worst_error_per_path": per_path,
    }


def _format_rows(results: Sequence[CaseResult]) -> tuple[list[str], list[list[str]]]:
    header = ["case", "dir", "path", "convarith ms", "torch ms", "jax ms", "GFLOP/s",
              "x torch", "% matmul", "peak MB (x io)", "rel err"]
    rows = []
    for r in results:
        rows.append([
            r.case, r.direction[:3], "+".join(dict.fromkeys(r.paths)),
            f"{r.convarith_s * 1e3:.2f}",
            "" if r.torch_s is None else f"{r.torch_s * 1e3:.2f} ({r.torch_format})",
            "" if r.jax_s is None else f"{r.jax_s * 1e3:.2f}",
            f"{r.gflops:.0f}", "" if r.ratio is None else f"{r.ratio:.2f}",
            f"{100 * r.matmul_share:.0f}%",
            f"{r.peak_bytes / 2**20:.1f} ({r.memory_ratio:.2f})",
            f"{r.rel_error:.1e}",
        ])
    return header, rows


def _blas_description() -> str:
    """Which BLAS kernel NumPy runs (OPENBLAS_CORETYPE and the like can change it)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS: unknown (threadpoolctl not installed)"
    described = [
        f"{info.get('internal_api')} {info.get('version')} {info.get('architecture')} "
        f"x{info.get('num_threads')}"
        for info in threadpool_info() if info.get("user_api") == "blas"
    ]
    load = ""
    if hasattr(os, "getloadavg"):
        load = f"; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus"
    timeout = os.environ.get("OPENBLAS_THREAD_TIMEOUT")
    idle = f", OPENBLAS_THREAD_TIMEOUT={timeout}" if timeout else ""
    return "BLAS: " + ", ".join(dict.fromkeys(described)) + idle + load


def render(results: Sequence[CaseResult], plain: bool = False) -> str:
    """The table (and summary) as text; rich when installed unless ``plain``."""
    header, rows = _format_rows(results)
    info = summary(results)
    lines = []
    matmul = statistics.median(r.matmul_gflops for r in results) if results else 0.0
    lines.append(f"float32 matmul (2048², np.matmul): {matmul:.0f} GFLOP/s median over cases; "
                 f"{_blas_description()}; compiled kernels: {_vector_isa()}")

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.2f}"

    lines.append(f"forward geomean torch/convarith: {fmt(info['forward_geomean_ratio'])}, "
                 f"min {fmt(info['forward_min_ratio'])}")
    lines.append("backward torch/convarith: " + ", ".join(
        f"{k} {fmt(v)}" for k, v in info["backward_ratios"].items()))
    lines.append("share of matmul rate: " + ", ".join(
        f"{k} {100 * v:.0f}%" for k, v in info["matmul_share"].items()))
    lines.append(f"max peak memory / (input+output bytes): {fmt(info['max_memory_ratio'])}")
    lines.append("worst relative error per path: " + ", ".join(
        f"{k} {v:.1e}" for k, v in sorted(info["worst_error_per_path"].items())))
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if plain:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        table = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
                 "-+-".join("-" * w for w in widths)]
        table += [" | ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
        return "\n".join(table + [""] + lines)
    table_ = Table(title="convarith vs PyTorch vs JAX (float32, medians)")
    for h in header:
        table_.add_column(h, justify="left" if h in ("case", "dir", "path") else "right")
    for row in rows:
        table_.add_row(*row)
    console = Console(width=200, record=True)
    with console.capture() as capture:
        console.print(table_)
    return capture.get() + "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m convarith.bench [--cases L1,L2] [--repeat N] ...``."""
    parser = argparse.ArgumentParser(prog="python -m convarith.bench", description=__doc__
                                     .split("\n\n")[0])
    parser.add_argument("--cases", default=",".join(c.name for c in CASES),
                        help="comma-separated case names (default: all)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed rounds per case (default 7, --quick 3)")
    parser.add_argument("--block", type=int, default=2,
                        help="timed calls per runner in each round, after one settling call "
                             "(default 2)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--quick", action="store_true",
                        help="few rounds, forward only (unless --directions says otherwise)")
    parser.add_argument("--directions", choices=("forward", "backward", "both"), default=None,
                        help="networks suite: which passes to time (default both; --quick "
                             "forward); backward is conv_vjp against PyTorch's backward "
                             "alone, both gradients")
    parser.add_argument("--plain", action="store_true", help="plain text table (no rich)")
    parser.add_argument("--suite", choices=("layers", "networks"), default="layers",
                        help="layers: the nine benchmark layers (default); networks: every "
                             "distinct layer of seven real networks (convarith.bench_networks)")
    parser.add_argument("--networks", default=None,
                        help="networks suite: comma-separated names (default: all)")
    parser.add_argument("--batches", default=None,
                        help="networks suite: comma-separated batch sizes (default 1,16; "
                             "--quick 1)")
    parser.add_argument("--image", type=int, default=None,
                        help="networks suite: image side (default 224, --quick 112)")
    parser.add_argument("--markdown", metavar="FILE",
                        help="networks suite: also write the per-layer table as Markdown")
    parser.add_argument("--one-process", action="store_true",
                        help="networks suite: time every runtime in this one process, in "
                             "turn (default: each runtime in a process of its own)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="networks suite: each runtime times each network this many "
                             "times, each in a fresh process, the runtimes taking turns; a "
                             "layer's time is the least of its rounds' medians (default 1; "
                             "not with --one-process)")
    parser.add_argument("--threads", type=int, default=None,
                        help="networks suite: threads of every runtime (default: every core; "
                             "not with --one-process)")
    parser.add_argument("--jit", choices=("on", "off", "numpy"), default=None,
                        help="compiled kernels: on (default: as the environment says), off "
                             "(CONVARITH_JIT=0: no llvmlite kernels, numba kept), numpy "
                             "(neither: a machine without llvmlite)")
    parser.add_argument("--isa", choices=("native", "avx2", "avx512", "neon"), default=None,
                        help="instruction set of the llvmlite kernels (CONVARITH_VECTOR_ISA)")
    parser.add_argument("--weights", choices=("prepacked", "in-place"), default=None,
                        help="networks suite: convarith's forward kernels as a model's fixed "
                             "weights, packed once (prepacked, the default: "
                             "convarith.engine.prepack, as onnxruntime's session packs its "
                             "own) or writeable arrays read at every call (in-place)")
    args = parser.parse_args(argv)
    if args.weights is not None:
        from .bench_networks import WEIGHTS_VARIABLE

        os.environ[WEIGHTS_VARIABLE] = args.weights
    if args.jit is not None or args.isa is not None:
        from .bench_networks import set_mode

        set_mode(args.jit or ("off" if os.environ.get("CONVARITH_JIT") == "0" else "on"),
                 args.isa)
    if args.suite == "networks":
        return _main_networks(parser, args)
    known = {c.name: c for c in CASES}
    names = [n.strip() for n in args.cases.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"--cases: unknown case(s) {unknown}; choose from {sorted(known)}")
    repeat = args.repeat if args.repeat is not None else (3 if args.quick else 7)
    if repeat < 1:
        parser.error(f"--repeat must be at least 1, got {repeat}")
    if args.block < 1:
        parser.error(f"--block must be at least 1, got {args.block}")
    directions = args.directions or ("forward" if args.quick else "both")
    if directions == "backward":
        parser.error("--directions backward: the layers suite times each case forward, then "
                     "backward; use --directions both (or --suite networks)")
    results = run([known[n] for n in names], repeat=repeat,
                  include_backward=directions == "both",
                  log=lambda msg: print(msg, file=sys.stderr, flush=True), block=args.block)
    print(render(results, plain=args.plain))
    if args.json:
        payload = {"results": [dict(asdict(r), gflops=r.gflops, ratio=r.ratio,
                                    matmul_share=r.matmul_share) for r in results],
                   "summary": summary(results), "cpu_count": os.cpu_count()}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


def _main_networks(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    """``--suite networks``: every distinct layer of the networks, per network totals."""
    import datetime
    import platform

    from . import bench_networks as nets

    try:
        nets.weights_mode()
    except ValueError as error:
        parser.error(str(error))
    names = [n.strip() for n in (args.networks or ",".join(nets.NETWORKS)).split(",")
             if n.strip()]
    unknown = [n for n in names if n not in nets.NETWORKS]
    if unknown:
        parser.error(f"--networks: unknown network(s) {unknown}; choose from "
                     f"{sorted(nets.NETWORKS)}")
    try:
        batches = [int(b) for b in (args.batches or ("1" if args.quick else "1,16")).split(",")]
    except ValueError:
        parser.error(f"--batches must be comma-separated whole numbers, got {args.batches!r}")
    if min(batches) < 1:
        parser.error(f"--batches must be at least 1, got {args.batches!r}")
    image = args.image if args.image is not None else (112 if args.quick else 224)
    if image < 32:
        parser.error(f"--image must be at least 32 (five halvings), got {image}")
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    if repeat < 1:
        parser.error(f"--repeat must be at least 1, got {repeat}")
    if args.block < 1:
        parser.error(f"--block must be at least 1, got {args.block}")
    if args.threads is not None and (args.threads < 1 or args.one_process):
        parser.error(f"--threads must be at least 1 and needs a process per runtime (no "
                     f"--one-process), got {args.threads}")
    if args.rounds < 1 or (args.rounds > 1 and args.one_process):
        parser.error(f"--rounds must be at least 1, and more than 1 needs a process per "
                     f"runtime (no --one-process), got {args.rounds}")
    directions = args.directions or ("forward" if args.quick else "both")
    results = nets.run_networks(names, batches, image=image,
                                forward=directions != "backward",
                                backward=directions != "forward",
                                repeat=repeat, block=args.block,
                                one_process=args.one_process, threads=args.threads,
                                rounds=args.rounds, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    stamp = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, "
             f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
             f"image {image}, {nets.mode_description()}; {_blas_description()}; "
             + ("all runtimes in one process" if args.one_process else
                f"a process per runtime, threads: {args.threads or 'every core'}"
                + (f"; best of {args.rounds} rounds" if args.rounds > 1 else "")))
    print(stamp)
    print(nets.render_networks(results))
    if args.markdown:
        with open(args.markdown, "w") as handle:
            handle.write(f"{stamp}\n\n{nets.markdown_layers(results)}\n")
    if args.json:
        payload = {"suite": "networks", "machine": stamp, "mode": nets.mode_description(),
                   "networks": [dict(network=n.network, batch=n.batch, direction=n.direction,
                                     convarith_s=n.total("convarith_s"),
                                     torch_s=n.total("torch_s"),
                                     onnxruntime_s=n.total("onnxruntime_s"), ratio=n.ratio,
                                     layers=[dict(asdict(r), ratio=r.ratio) for r in n.layers])
                                for n in results],
                   "summary": nets.summary_networks(results)}
        with open(args.json, "w") as handle:
            json.dump(payload, handle, indent=2)
    return 0


def _vector_isa() -> str:
    from .engine.compiled import compiled_kernels_description

    description = compiled_kernels_description()
    if description is None:
        return "none (no compiled kernels: CONVARITH_JIT=0, no llvmlite or no AVX2)"
    return description


def _quiet_blas_environment() -> dict[str, str] | None:
    """The environment to re-run the script in, or ``None`` if it is already right.

    OpenBLAS keeps its idle threads spinning for about 2²⁸ cycles (a tenth of
    a second) after each call, which halves the speed of whatever runs next
    (measured: PyTorch's 7×7 stem 5.2 ms after a matmul, 1.3 ms alone). It
    reads ``OPENBLAS_THREAD_TIMEOUT`` once, when it loads, so the script sets
    it and starts again before NumPy is imported: 2²² cycles (about a
    millisecond, well inside the settling pause; shorter times make threads
    sleep between the calls of one runner: a 1×1 layer took 3.9 ms instead of
    2.5 with 2⁴).
    """
    if "OPENBLAS_THREAD_TIMEOUT" in os.environ:
        return None
    return {**os.environ, "OPENBLAS_THREAD_TIMEOUT": "22"}


if __name__ == "__main__":
    environment = _quiet_blas_environment()
    if environment is not None:
        os.execve(sys.executable, [sys.executable, "-m", "convarith.bench", *sys.argv[1:]],
                  environment)
    raise SystemExit(main())
