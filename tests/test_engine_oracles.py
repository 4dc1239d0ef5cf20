"""Live conformance of the engine with PyTorch, JAX and Keras 3, on hypothesis-drawn configs.

Each framework test draws ``ORACLE_EXAMPLES`` (default 500) tiny configs in
that framework's own terms (its padding words, layouts and limits), runs the
framework in float64 as the oracle, runs the engine in float32 or float64 on
the same values, and compares the forward output and every gradient
(input, kernel, bias) with the relative error ``|a - b| / |b|``: at most 1e-5
for float32 and 1e-10 for float64. A drawn ``seed`` fixes the data; hypothesis
prints it (and the whole config) on failure. A summary (configs, worst
errors) is printed at the end of the module (``pytest -s`` shows it).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from _helpers import relative_error
from convarith import ConvSpec, conv, conv_vjp, kernel_from_torch, kernel_to_torch

pytestmark = pytest.mark.oracle

EXAMPLES = int(os.environ.get("ORACLE_EXAMPLES", "500"))
# XLA compiles every new shape (0.2-1.5 s for a convolution with its gradients on
# this machine), so JAX and Keras check gradients on every GRADIENT_EVERY-th config
# and the forward output on all; PyTorch checks everything on every config.
# JAX and Keras configs are drawn BATCH at a time, so two worker processes compile at once.
BATCH = 10
GRADIENT_EVERY = {
    "torch": 1,
    "jax": int(os.environ.get("ORACLE_GRADIENT_EVERY", "1")),
    "keras": int(os.environ.get("ORACLE_GRADIENT_EVERY", "1")),
}
TOLERANCE = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-10}


def share(kinds: list[str], batch: int = 1) -> Any:
    """Hypothesis settings giving each kind its share of EXAMPLES configs (``batch`` a draw)."""
    return settings(
        max_examples=max(1, -(-EXAMPLES // (len(kinds) * batch))),
        deadline=None,
        database=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


@dataclass
class Tally:
    """Configs checked and worst relative error per dtype, per framework."""

    configs: int = 0
    started: int = 0
    gradients: int = 0
    worst: dict[str, float] = field(default_factory=lambda: {"float32": 0.0, "float64": 0.0})
    kinds: dict[str, int] = field(default_factory=dict)
    crashes: list[str] = field(default_factory=list)
    seconds: float = 0.0


TALLIES: dict[str, Tally] = {}


@pytest.fixture(scope="module", autouse=True)
def report() -> Any:
    start = time.perf_counter()
    yield
    lines = [f"engine conformance ({time.perf_counter() - start:.1f} s):"]
    for name, tally in TALLIES.items():
        lines.append(
            f"  {name}: {tally.configs} configs ({tally.gradients} with gradients) in "
            f"{tally.seconds:.1f} s, worst rel. error "
            f"float32 {tally.worst['float32']:.2e}, float64 {tally.worst['float64']:.2e}, "
            f"kinds {dict(sorted(tally.kinds.items()))}, oracle crashes {len(tally.crashes)}"
        )
    print("\n" + "\n".join(lines))
    path = os.environ.get("CONVARITH_CONFORMANCE_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


@dataclass
class Case:
    """One drawn config: the engine's view (spec, layouts) and the oracle to compare with."""

    kind: str
    spec: ConvSpec
    x: np.ndarray  # in spec.data_format, float64 values exactly representable in dtype
    kernel: np.ndarray | None  # engine layout
    bias: np.ndarray | None
    dtype: np.dtype[Any]
    # oracle(x, kernel, bias, dy) -> (y, dx, dk, db), float64, engine layouts
    oracle: Callable[..., tuple[Any, Any, Any, Any]]
    engine: Callable[..., tuple[Any, Any, Any, Any]] | None = None
    seed: int | None = None  # the data's seed, shown when hypothesis prints a failing case


def with_seed(seed: int, case: Case) -> Case:
    case.seed = seed
    return case


@dataclass
class Pending:
    """A config whose engine side has run and whose oracle may still be computing."""

    name: str
    case: Case
    got: tuple[Any, ...]
    expected: Any  # a 4-tuple, or a callable that waits for one
    with_gradients: bool
    seconds: float


def start_case(name: str, case: Case) -> Pending:
    """Run the engine and start the oracle (which may run in another process)."""
    tally = TALLIES.setdefault(name, Tally())
    start = time.perf_counter()
    dtype = case.dtype
    x = case.x.astype(dtype)
    kernel = None if case.kernel is None else case.kernel.astype(dtype)
    bias = None if case.bias is None else case.bias.astype(dtype)
    if case.engine is not None:
        y = case.engine(x, kernel, bias, None)[0]
    else:
        y = conv(x, kernel, case.spec, bias=bias)
    assert y.dtype == dtype
    with_gradients = tally.started % GRADIENT_EVERY[name] == 0
    tally.started += 1
    rng = np.random.default_rng(y.size)
    dy = rng.standard_normal(y.shape) if with_gradients else None
    expected = case.oracle(
        x.astype(np.float64),
        None if kernel is None else kernel.astype(np.float64),
        None if bias is None else bias.astype(np.float64),
        dy,
    )
    got: tuple[Any, ...] = (y, None, None, None)
    if dy is not None and case.engine is not None:
        got = (y, *case.engine(x, kernel, bias, dy.astype(dtype))[1:])
    elif dy is not None:
        got = (y, *conv_vjp(x, kernel, case.spec, dy.astype(dtype), bias=bias))
    return Pending(name, case, got, expected, with_gradients, time.perf_counter() - start)


def finish_case(pending: Pending) -> None:
    """Wait for the oracle and compare."""
    start = time.perf_counter()
    tally = TALLIES[pending.name]
    expected = pending.expected() if callable(pending.expected) else pending.expected
    dtype = pending.case.dtype
    tolerance = TOLERANCE[np.dtype(dtype)]
    for what, a, b in zip(("output", "d_input", "d_kernel", "d_bias"), pending.got, expected):
        if b is None:
            continue
        assert a is not None, f"{what}: engine gave None"
        error = relative_error(a, b)
        key = np.dtype(dtype).name
        tally.worst[key] = max(tally.worst[key], error)
        assert error <= tolerance, (
            f"{what}: relative error {error:.3e} > {tolerance} ({pending.case.spec})")
    tally.configs += 1
    tally.gradients += pending.with_gradients
    tally.kinds[pending.case.kind] = tally.kinds.get(pending.case.kind, 0) + 1
    tally.seconds += pending.seconds + time.perf_counter() - start


def run_case(name: str, case: Case) -> None:
    finish_case(start_case(name, case))


# --------------------------------------------------------------------------- drawing helpers


def per_axis(draw: Any, rank: int, low: int, high: int) -> tuple[int, ...]:
    return tuple(draw(st.integers(low, high)) for _ in range(rank))


def data(seed: int, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """Random values rounded to ``dtype`` (so both sides see the same numbers)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape).astype(dtype).astype(np.float64)


def to_first(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, -1, 1)


def to_last(array: np.ndarray) -> np.ndarray:
    return np.moveaxis(array, 1, -1)


# --------------------------------------------------------------------------- PyTorch


def torch_oracle(kind: str, rank: int, channels_first: bool, call: Callable[..., Any],
                 transposed: bool = False) -> Callable[..., tuple[Any, Any, Any, Any]]:
    torch = pytest.importorskip("torch")

    def oracle(x: np.ndarray, kernel: Any, bias: Any, dy: np.ndarray | None) -> tuple[Any, ...]:
        xt = torch.tensor(x if channels_first else to_first(x), requires_grad=True)
        wt = None if kernel is None else torch.tensor(
            kernel_to_torch(kernel, transposed=transposed), requires_grad=True)
        bt = None if bias is None else torch.tensor(bias, requires_grad=True)
        yt = call(xt, wt, bt)
        if dy is None:
            y = yt.detach().numpy()
            return (y if channels_first else to_last(y)), None, None, None
        dyt = torch.tensor(dy if channels_first else to_first(dy))
        yt.backward(dyt)
        y = yt.detach().numpy()
        dx = xt.grad.numpy()
        if not channels_first:
            y, dx = to_last(y), to_last(dx)
        dk = None if wt is None else kernel_from_torch(wt.grad.numpy(), transposed=transposed)
        db = None if bt is None else bt.grad.numpy()
        return y, dx, dk, db

    return oracle


@st.composite
def torch_cases(draw: Any, kind: str) -> Case:
    torch = pytest.importorskip("torch")
    functional = torch.nn.functional
    rank = draw(st.integers(1, 3))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    channels_first = draw(st.booleans())
    data_format = "channels_first" if channels_first else "channels_last"
    batch = draw(st.integers(1, 2))
    top = 6 if rank < 3 else 4
    kernel_size = per_axis(draw, rank, 1, 3)
    strides = per_axis(draw, rank, 1, 3)
    seed = draw(st.integers(0, 2**31 - 1))
    names = {1: "1d", 2: "2d", 3: "3d"}[rank]

    if kind in ("max_pool", "avg_pool"):
        dilation = per_axis(draw, rank, 1, 2) if kind == "max_pool" else (1,) * rank
        eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
        pads = tuple(draw(st.integers(0, k // 2)) for k in kernel_size)  # PyTorch's limit
        # PyTorch's avg_pool3d wants the window inside the unpadded input
        smallest = [e if (kind, rank) == ("avg_pool", 3) else e - 2 * p
                    for e, p in zip(eff, pads)]
        sizes = tuple(max(draw(st.integers(1, top)), m) for m in smallest)
        ceil_mode = draw(st.booleans())
        include = draw(st.booleans()) if kind == "avg_pool" else False
        channels = draw(st.integers(1, 3))
        spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=pads,
                        pool=kind.split("_")[0], ceil_mode=ceil_mode, count_include_pad=include,
                        data_format=data_format)
        if kind == "max_pool":
            pool = getattr(functional, f"max_pool{names}")

            def call(xt: Any, wt: Any, bt: Any) -> Any:
                return pool(xt, kernel_size, strides, pads, dilation, ceil_mode=ceil_mode)
        else:
            pool = getattr(functional, f"avg_pool{names}")

            def call(xt: Any, wt: Any, bt: Any) -> Any:
                return pool(xt, kernel_size, strides, pads, ceil_mode=ceil_mode,
                            count_include_pad=include)
        shape = (batch, channels, *sizes) if channels_first else (batch, *sizes, channels)
        # a window made only of padding gives -inf in both, but PyTorch then sends its
        # max-pool gradient to an index past the row (a quirk not worth copying)
        resolved = spec.resolve(shape)
        assume(all(any(t.source is not None for t in resolved.footprint(o))
                   for o in resolved.positions()))
        return with_seed(seed, Case(kind, spec, data(seed, shape, dtype), None, None, dtype,
                    torch_oracle(kind, rank, channels_first, call)))

    dilation = per_axis(draw, rank, 1, 2)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    groups = draw(st.integers(1, 3))
    group_in, group_out = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    channels, filters = groups * group_in, groups * group_out
    use_bias = draw(st.booleans())
    bias = data(seed + 1, (filters,), dtype) if use_bias else None

    if kind == "conv_transpose":
        crops = tuple(draw(st.integers(0, 2)) for _ in range(rank))
        output_padding = tuple(
            draw(st.integers(0, max(s, d) - 1)) for s, d in zip(strides, dilation))
        sizes = []
        for axis in range(rank):
            size = draw(st.integers(1, top))
            # PyTorch's output size must be positive: (I-1)S - 2P + K_eff + op >= 1
            while (size - 1) * strides[axis] - 2 * crops[axis] + eff[axis] + output_padding[axis] < 1:
                size += 1
            sizes.append(size)
        spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=crops,
                        transposed=True, output_padding=output_padding, groups=groups,
                        data_format=data_format)
        kernel = data(seed + 2, (*kernel_size, group_out, channels), dtype)
        transpose = getattr(functional, f"conv_transpose{names}")

        def call(xt: Any, wt: Any, bt: Any) -> Any:
            return transpose(xt, wt, bt, strides, crops, output_padding, groups, dilation)

        shape = (batch, channels, *sizes) if channels_first else (batch, *sizes, channels)
        return with_seed(seed, Case(kind, spec, data(seed, shape, dtype), kernel, bias, dtype,
                    torch_oracle(kind, rank, channels_first, call, transposed=True)))

    mode = draw(st.sampled_from(["zeros", "reflect", "replicate", "circular"]))
    same = mode == "zeros" and all(s == 1 for s in strides) and draw(st.booleans())
    if same:
        pads: Any = "same"
        sizes_list = [draw(st.integers(1, top)) for _ in range(rank)]
    else:
        pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(rank))
        sizes_list = []
        for axis, (lo, hi) in enumerate(pads):
            size = max(draw(st.integers(1, top)), eff[axis] - lo - hi, 1)
            if mode == "reflect":
                size = max(size, lo + 1, hi + 1)
            if mode == "circular":
                size = max(size, lo, hi)
            sizes_list.append(size)
    sizes = tuple(sizes_list)
    spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=pads,
                    padding_mode=mode, groups=groups, data_format=data_format)
    kernel = data(seed + 2, (*kernel_size, group_in, filters), dtype)
    convolve = getattr(functional, f"conv{names}")
    torch_mode = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
                  "circular": "circular"}[mode]

    def call(xt: Any, wt: Any, bt: Any) -> Any:
        if pads == "same":
            return convolve(xt, wt, bt, 1, "same", dilation, groups)
        flat = [p for lo, hi in reversed(pads) for p in (lo, hi)]
        return convolve(functional.pad(xt, flat, mode=torch_mode), wt, bt, strides, 0,
                        dilation, groups)

    shape = (batch, channels, *sizes) if channels_first else (batch, *sizes, channels)
    label = "conv" if mode == "zeros" else f"conv_{mode}"
    return with_seed(seed, Case(label, spec, data(seed, shape, dtype), kernel, bias, dtype,
                torch_oracle(kind, rank, channels_first, call)))


TORCH_KINDS = ["conv", "conv_transpose", "max_pool", "avg_pool"]


@pytest.mark.parametrize("kind", TORCH_KINDS)
@share(TORCH_KINDS)
@given(drawn=st.data())
def test_torch_conformance(kind: str, drawn: Any) -> None:
    run_case("torch", drawn.draw(torch_cases(kind), label="case"))


# --------------------------------------------------------------------------- JAX and Keras
#
# XLA compiles every config and has aborted the whole process on some gradient
# programs (a failed CHECK in its algebraic simplifier), so the JAX and Keras
# oracles run in one spawned worker process. A crash there is reported with
# its config and counted, not fatal; the worker also compiles at -O0.


def _worker_setup() -> None:
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["JAX_PLATFORMS"] = "cpu"
    os.environ.setdefault(
        "XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true")


def _xla_function(framework: str, op: str, params: dict[str, Any]) -> Callable[..., Any]:
    """The oracle computation named by data (closures do not cross processes)."""
    import jax

    channel_axis = params.pop("channel_axis", -1)

    def with_bias(y: Any, b: Any) -> Any:
        if b is None:
            return y
        shape = [1] * y.ndim
        shape[channel_axis] = -1
        return y + b.reshape(shape)

    if framework == "jax":
        lax = jax.lax
        if op == "conv":
            return lambda x, k, b=None: with_bias(lax.conv_general_dilated(x, k, **params), b)
        return lambda x, k, b=None: with_bias(lax.conv_transpose(x, k, **params), b)
    import keras

    ops = keras.ops
    if op in ("max_pool", "average_pool"):
        return lambda x: getattr(ops, op)(x, **params)
    if op == "conv":
        return lambda x, k: ops.conv(x, k, **params)
    if op == "conv_transpose":
        return lambda x, k: ops.conv_transpose(x, k, **params)
    kernel_shape = params.pop("kernel_shape")
    if op == "depthwise_conv":
        return lambda x, k: ops.depthwise_conv(x, k.reshape(kernel_shape), **params)
    pointwise_shape = params.pop("pointwise_shape")
    split = int(np.prod(kernel_shape))
    return lambda x, k: ops.separable_conv(
        x, k[:split].reshape(kernel_shape), k[split:].reshape(pointwise_shape), **params)


def xla_oracle_in_worker(framework: str, op: str, params: dict[str, Any],
                         args: list[np.ndarray], dy: np.ndarray | None) -> list[np.ndarray]:
    """Run in the worker: output (and the gradients of every argument if ``dy``)."""
    _worker_setup()
    import jax

    function = _xla_function(framework, op, dict(params))
    with jax.enable_x64(True):
        if dy is None:
            return [np.asarray(jax.jit(function)(*args), dtype=np.float64)]

        def forward_and_back(dy: Any, *args: Any) -> Any:
            y, pullback = jax.vjp(function, *args)
            return y, pullback(dy)

        # one compiled program per config (eager mode would compile every small op)
        y, grads = jax.jit(forward_and_back)(dy, *args)
        return [np.asarray(y, dtype=np.float64)] + [np.asarray(g, np.float64) for g in grads]


WORKER: dict[str, Any] = {}


class OracleCrashed(Exception):
    """The framework's process died on this config (its bug, not a verdict)."""


def _worker() -> Any:
    if "pool" not in WORKER:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        WORKER["pool"] = ProcessPoolExecutor(
            max_workers=2, mp_context=multiprocessing.get_context("spawn"),
            initializer=_worker_setup)
    return WORKER["pool"]


@pytest.fixture(scope="module", autouse=True)
def stop_worker() -> Any:
    yield
    if "pool" in WORKER:
        WORKER.pop("pool").shutdown(cancel_futures=True)


def xla_oracle(framework: str, op: str, params: dict[str, Any], has_kernel: bool = True
               ) -> Callable[..., Callable[[], tuple[Any, Any, Any, Any]]]:
    """Submit to the worker; the result is a callable that waits for the answer."""
    from concurrent.futures.process import BrokenProcessPool

    def oracle(x: np.ndarray, kernel: Any, bias: Any, dy: np.ndarray | None) -> Any:
        args = [x] + ([kernel] if has_kernel else []) + ([bias] if bias is not None else [])
        future = _worker().submit(xla_oracle_in_worker, framework, op, params, args, dy)

        def wait() -> tuple[Any, ...]:
            try:
                out = future.result(timeout=300)
            except BrokenProcessPool:
                if "pool" in WORKER:
                    WORKER.pop("pool").shutdown(cancel_futures=True)
                raise OracleCrashed(f"{framework} {op} {params}") from None
            if dy is None:
                return out[0], None, None, None
            y, grads = out[0], out[1:]
            return (y, grads[0], grads[1] if has_kernel else None,
                    grads[-1] if bias is not None else None)

        return wait

    return oracle


def dimension_numbers(rank: int, channels_first: bool) -> tuple[str, str, str]:
    spatial = "DHW"[3 - rank:]
    image = f"NC{spatial}" if channels_first else f"N{spatial}C"
    return image, f"{spatial}IO", image


@st.composite
def jax_cases(draw: Any, kind: str) -> Case:
    rank = draw(st.integers(1, 3))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    channels_first = draw(st.booleans())
    data_format = "channels_first" if channels_first else "channels_last"
    batch = draw(st.integers(1, 2))
    top = 6 if rank < 3 else 4
    kernel_size = per_axis(draw, rank, 1, 3)
    strides = per_axis(draw, rank, 1, 3)
    dilation = per_axis(draw, rank, 1, 2)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    seed = draw(st.integers(0, 2**31 - 1))
    numbers = dimension_numbers(rank, channels_first)
    use_bias = draw(st.booleans())
    channel_axis = 1 if channels_first else -1

    if kind == "conv_transpose":
        channels, filters = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        word = draw(st.sampled_from(["valid", "same"]))
        sizes = per_axis(draw, rank, 1, top)
        spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=word,
                        transposed=True, data_format=data_format)
        kernel = data(seed + 2, (*kernel_size, filters, channels), dtype)
        bias = data(seed + 1, (filters,), dtype) if use_bias else None
        params = dict(strides=strides, padding=word.upper(), rhs_dilation=dilation,
                      dimension_numbers=numbers, transpose_kernel=True,
                      channel_axis=channel_axis)
        shape = (batch, channels, *sizes) if channels_first else (batch, *sizes, channels)
        return with_seed(seed, Case(kind, spec, data(seed, shape, dtype), kernel, bias, dtype,
                    xla_oracle("jax", "conv_transpose", params)))

    groups = draw(st.integers(1, 3))
    group_in, group_out = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    channels, filters = groups * group_in, groups * group_out
    word = draw(st.sampled_from(["VALID", "SAME", "SAME_LOWER", "explicit"]))
    if word == "explicit":
        padding: Any = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2)))
                             for _ in range(rank))
        spec_padding: Any = padding
        sizes = tuple(max(draw(st.integers(1, top)), e - lo - hi, 1)
                      for e, (lo, hi) in zip(eff, padding))
    else:
        padding = word
        spec_padding = word.lower()
        sizes = tuple(max(draw(st.integers(1, top)), e if word == "VALID" else 1) for e in eff)
    spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=spec_padding,
                    groups=groups, data_format=data_format)
    kernel = data(seed + 2, (*kernel_size, group_in, filters), dtype)
    bias = data(seed + 1, (filters,), dtype) if use_bias else None
    params = dict(window_strides=strides, padding=padding, rhs_dilation=dilation,
                  dimension_numbers=numbers, feature_group_count=groups,
                  channel_axis=channel_axis)
    shape = (batch, channels, *sizes) if channels_first else (batch, *sizes, channels)
    return with_seed(seed, Case("conv" if word != "SAME_LOWER" else "conv_same_lower", spec,
                data(seed, shape, dtype), kernel, bias, dtype, xla_oracle("jax", "conv", params)))


def run_xla_cases(name: str, cases: list[Case]) -> None:
    """Start every config (two worker processes compile in parallel), then compare."""
    pending = []
    for case in cases:
        try:
            pending.append(start_case(name, case))
        except OracleCrashed as crash:
            _crashed(name, crash)
    for item in pending:
        try:
            finish_case(item)
        except OracleCrashed as crash:
            _crashed(name, crash)


def _crashed(name: str, crash: OracleCrashed) -> None:
    tally = TALLIES.setdefault(name, Tally())
    tally.crashes.append(str(crash))
    print(f"\n{name} oracle process crashed (config skipped): {crash}")


JAX_KINDS = ["conv", "conv_transpose"]


@pytest.mark.parametrize("kind", JAX_KINDS)
@share(JAX_KINDS, BATCH)
@given(drawn=st.data())
def test_jax_conformance(kind: str, drawn: Any) -> None:
    pytest.importorskip("jax")
    run_xla_cases("jax", drawn.draw(st.lists(jax_cases(kind), min_size=BATCH, max_size=BATCH),
                                    label="cases"))


@st.composite
def keras_cases(draw: Any, kind: str) -> Case:
    from convarith.engine import api

    rank = 2 if kind == "separable" else draw(st.integers(1, 3 if kind != "depthwise" else 2))
    dtype = np.dtype(draw(st.sampled_from([np.float32, np.float64])))
    channels_first = draw(st.booleans())
    data_format = "channels_first" if channels_first else "channels_last"
    batch = draw(st.integers(1, 2))
    top = 6 if rank < 3 else 4
    kernel_size = per_axis(draw, rank, 1, 3)
    strides = per_axis(draw, rank, 1, 3)
    pooling = kind.endswith("pool")
    dilation = (1,) * rank if pooling else per_axis(draw, rank, 1, 2)
    eff = [(k - 1) * d + 1 for k, d in zip(kernel_size, dilation)]
    padding = draw(st.sampled_from(["valid", "same"]))
    seed = draw(st.integers(0, 2**31 - 1))
    sizes = tuple(max(draw(st.integers(1, top)), e if padding == "valid" else 1) for e in eff)
    if kind == "conv_transpose":
        sizes = per_axis(draw, rank, 1, top)
    channels = draw(st.integers(1, 3))

    def shaped(c: int) -> tuple[int, ...]:
        return (batch, c, *sizes) if channels_first else (batch, *sizes, c)

    if pooling:
        spec = ConvSpec(kernel_size, strides=strides, padding=padding, pool=kind.split("_")[0],
                        data_format=data_format)
        op = "max_pool" if kind == "max_pool" else "average_pool"
        params = dict(pool_size=kernel_size, strides=strides, padding=padding,
                      data_format=data_format)
        return with_seed(seed, Case(kind, spec, data(seed, shaped(channels), dtype), None, None, dtype,
                    xla_oracle("keras", op, params, has_kernel=False)))

    common = dict(strides=strides, padding=padding, data_format=data_format,
                  dilation_rate=dilation)
    if kind == "conv":
        groups = draw(st.integers(1, 3))
        group_in, filters = draw(st.integers(1, 2)), groups * draw(st.integers(1, 2))
        channels = groups * group_in
        spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=padding,
                        groups=groups, data_format=data_format)
        kernel = data(seed + 2, (*kernel_size, group_in, filters), dtype)
        return with_seed(seed, Case(kind, spec, data(seed, shaped(channels), dtype), kernel, None, dtype,
                    xla_oracle("keras", "conv", common)))

    if kind == "conv_transpose":
        filters = draw(st.integers(1, 3))
        explicit = draw(st.booleans())
        output_padding = tuple(draw(st.integers(0, s - 1)) for s in strides) if explicit else None
        spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=padding,
                        transposed=True, output_padding=output_padding,
                        data_format=data_format)
        try:  # Keras returns an empty array where the output would have no cells
            spec.resolve(shaped(channels))
        except ValueError:
            assume(False)
        kernel = data(seed + 2, (*kernel_size, filters, channels), dtype)
        return with_seed(seed, Case(kind, spec, data(seed, shaped(channels), dtype), kernel, None, dtype,
                    xla_oracle("keras", "conv_transpose",
                               dict(common, output_padding=output_padding))))

    multiplier = draw(st.integers(1, 2))
    depthwise_kernel = data(seed + 2, (*kernel_size, channels, multiplier), dtype)
    spec = ConvSpec(kernel_size, strides=strides, dilation=dilation, padding=padding,
                    groups="depthwise", depth_multiplier=multiplier, data_format=data_format)
    if kind == "depthwise":
        grouped = depthwise_kernel.reshape(*kernel_size, 1, channels * multiplier)
        return with_seed(seed, Case(kind, spec, data(seed, shaped(channels), dtype), grouped, None, dtype,
                    xla_oracle("keras", "depthwise_conv",
                               dict(common, kernel_shape=depthwise_kernel.shape))))

    filters = draw(st.integers(1, 3))
    pointwise = data(seed + 3, (1, 1, channels * multiplier, filters), dtype)
    both = np.concatenate([depthwise_kernel.ravel(), pointwise.ravel()])
    split = depthwise_kernel.size

    def engine(x: Any, k: Any, b: Any, dy: Any) -> tuple[Any, ...]:
        """The separable chain through the engine: helper forward, vjp per stage."""
        dk_, pk_ = k[:split].reshape(depthwise_kernel.shape), k[split:].reshape(pointwise.shape)
        grouped_ = dk_.reshape(*kernel_size, 1, channels * multiplier)
        y = api.separable_conv2d(x, dk_, pk_, strides, padding, dilation, data_format)
        if dy is None:
            return (y, None, None, None)
        middle = conv(x, grouped_, spec)
        d_middle, d_point, _ = conv_vjp(middle, pk_, ConvSpec(1, data_format=data_format), dy)
        d_x, d_depth, _ = conv_vjp(x, grouped_, spec, d_middle)
        return (y, d_x, np.concatenate([d_depth.ravel(), d_point.ravel()]), None)

    params = dict(common, kernel_shape=depthwise_kernel.shape, pointwise_shape=pointwise.shape)
    return with_seed(seed, Case(kind, spec, data(seed, shaped(channels), dtype), both, None, dtype,
                xla_oracle("keras", "separable_conv", params), engine=engine))


KERAS_KINDS = ["conv", "conv_transpose", "depthwise", "separable", "max_pool", "avg_pool"]


@pytest.mark.parametrize("kind", KERAS_KINDS)
@share(KERAS_KINDS, BATCH)
@given(drawn=st.data())
def test_keras_conformance(kind: str, drawn: Any) -> None:
    pytest.importorskip("jax")
    pytest.importorskip("keras", exc_type=ImportError)
    run_xla_cases("keras", drawn.draw(
        st.lists(keras_cases(kind), min_size=BATCH, max_size=BATCH), label="cases"))
