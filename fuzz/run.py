"""Fuzz every entry point a user can reach; anything but a documented error is a bug.

Each target draws hostile inputs with hypothesis and calls one entry point.
The documented outcomes are: a result, a ``ValueError``/``TypeError`` (or
``IndexError`` for out-of-range cell indices) with a non-empty message, a CLI
exit status of 0, 1 or 2, or an HTTP status below 500. Anything else —
another exception, an empty message, a 5xx — fails the run with the input that
caused it.

Run ``python fuzz/run.py --budget 20000`` (inputs per target; CI uses a small
budget) and ``--targets spec,cli`` to pick targets. Prints a table of inputs
per target.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

DOCUMENTED = (ValueError, TypeError)

# --------------------------------------------------------------------------- values

small_ints = st.integers(-3, 12)
nasty_scalars = st.one_of(
    small_ints,
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["valid", "same", "SAME", "same_lower", "causal", "full", "zeros",
                     "reflect", "circular", "replicate", "channels_first", "max", "avg",
                     "depthwise", "1,2", "3x3"]),
    st.just(np.int64(3)),
    st.just(np.float32(2.0)),
)
nasty = st.recursive(
    nasty_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner)),
    max_leaves=8,
)
plausible_tuple = st.one_of(
    small_ints, st.tuples(small_ints), st.tuples(small_ints, small_ints),
    st.tuples(small_ints, small_ints, small_ints),
)


def spec_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    fields = {
        "kernel_size": st.one_of(plausible_tuple, nasty),
        "strides": st.one_of(plausible_tuple, nasty),
        "dilation": st.one_of(plausible_tuple, nasty),
        "padding": st.one_of(plausible_tuple, nasty,
                             st.tuples(st.tuples(small_ints, small_ints),
                                       st.tuples(small_ints, small_ints))),
        "padding_mode": nasty_scalars,
        "groups": st.one_of(small_ints, nasty_scalars),
        "transposed": st.one_of(st.booleans(), nasty_scalars),
        "output_padding": st.one_of(st.none(), plausible_tuple, nasty),
        "pool": st.one_of(st.none(), st.sampled_from(["max", "avg"]), nasty_scalars),
        "ceil_mode": st.one_of(st.booleans(), nasty_scalars),
        "data_format": st.one_of(st.sampled_from(["channels_last", "channels_first"]), nasty_scalars),
        "rank": st.one_of(st.none(), small_ints, nasty_scalars),
    }
    return st.fixed_dictionaries({"kernel_size": fields.pop("kernel_size")},
                                 optional=fields)


def plausible_spec_kwargs() -> st.SearchStrategy[dict[str, Any]]:
    """Mostly-valid specs, so the deeper code (resolve, engine) gets reached."""
    return st.fixed_dictionaries(
        {"kernel_size": st.integers(1, 4), "rank": st.integers(1, 3)},
        optional={
            "strides": st.integers(1, 3),
            "dilation": st.integers(1, 3),
            "padding": st.one_of(st.sampled_from(["valid", "same", "same_lower", "full", "causal"]),
                                 st.integers(0, 3)),
            "padding_mode": st.sampled_from(["zeros", "reflect", "replicate", "circular"]),
            "groups": st.integers(1, 3),
            "transposed": st.booleans(),
            "pool": st.sampled_from([None, "max", "avg"]),
            "ceil_mode": st.booleans(),
            "data_format": st.sampled_from(["channels_last", "channels_first"]),
        },
    )


# --------------------------------------------------------------------------- targets


class Finding(AssertionError):
    """An undocumented outcome."""


def expect_documented(call: Callable[[], Any], what: str) -> None:
    try:
        call()
    except DOCUMENTED as error:
        if not str(error).strip():
            raise Finding(f"{what}: {type(error).__name__} with an empty message") from error
    except IndexError as error:
        if not str(error).strip():
            raise Finding(f"{what}: IndexError with an empty message") from error
    except Exception as error:  # noqa: BLE001 - anything else is the finding
        raise Finding(f"{what}: undocumented {type(error).__name__}: {error}") from error


@dataclass
class Target:
    name: str
    build: Callable[[int], Callable[[], None]]  # budget -> hypothesis test
    available: Callable[[], bool] = lambda: True


def _settings(budget: int) -> settings:
    return settings(max_examples=budget, deadline=None, database=None, derandomize=False,
                    phases=(Phase.generate, Phase.shrink),
                    suppress_health_check=list(HealthCheck))


COUNTS: dict[str, int] = {}


def _count(name: str) -> None:
    COUNTS[name] = COUNTS.get(name, 0) + 1


def target_spec(budget: int) -> Callable[[], None]:
    from convarith import ConvSpec

    @_settings(budget)
    @given(spec_kwargs(), st.one_of(plausible_tuple, nasty))
    def test(kwargs: dict[str, Any], shape: Any) -> None:
        _count("spec")

        def call() -> None:
            spec = ConvSpec(**kwargs)
            spec.resolve(shape)

        expect_documented(call, f"ConvSpec(**{kwargs!r}).resolve({shape!r})")

    return test


def target_explain(budget: int) -> Callable[[], None]:
    from convarith import ConvSpec, explain

    @_settings(budget)
    @given(plausible_spec_kwargs(), st.lists(st.integers(-2, 40), min_size=1, max_size=5),
           st.lists(st.integers(-2, 9), min_size=1, max_size=3))
    def test(kwargs: dict[str, Any], shape: list[int], out_index: list[int]) -> None:
        _count("explain")

        def call() -> None:
            spec = ConvSpec(**kwargs)
            e = explain(spec, shape)
            assert e.text and json.dumps(e.to_dict())
            r = spec.resolve(shape)
            r.footprint(tuple(out_index))
            r.feeds(tuple(out_index))

        expect_documented(call, f"explain(ConvSpec(**{kwargs!r}), {shape!r}) / footprint {out_index}")

    return test


def target_solver(budget: int) -> Callable[[], None]:
    from convarith import arithmetic as ar

    @_settings(budget)
    @given(st.one_of(st.integers(-5, 200), nasty_scalars), st.one_of(st.integers(-5, 200), nasty_scalars),
           st.one_of(st.integers(-2, 9), st.integers(10**6, 10**12)), st.integers(-2, 6),
           st.integers(-2, 4))
    def test(size: Any, target: Any, max_kernel: int, max_stride: int, max_dilation: int) -> None:
        _count("solver")

        def call() -> None:
            ar.solve(size, target, max_kernel, max_stride, max_dilation)

        start = time.process_time()  # CPU time: wall time is noise on a shared machine
        expect_documented(call, f"solve({size!r}, {target!r}, {max_kernel}, {max_stride}, {max_dilation})")
        if time.process_time() - start > 10:
            raise Finding(f"solve({size!r}, {target!r}, {max_kernel}, ...) took over 10 s of CPU")

    return test


CLI_WORDS = ["shape", "solve", "port", "summary", "-k", "-s", "-d", "-p", "--rank", "--json",
             "--transposed", "--output-padding", "--pool", "max", "avg", "--ceil-mode",
             "--convention", "keras", "torch", "jax", "onnx", "--to", "--max-kernel", "same",
             "valid", "causal", "full", "28", "5", "0", "-1", "3x3", "1,2", "1,2x0,1", "x",
             "--padding-mode", "reflect", "--groups", "2", "--from", "--input",
             "Conv2D(32, 3, strides=2, padding='same')", "nn.Conv2d(3, 8, 3)", "__import__('os')",
             "/nonexistent.keras", "9999999999", "--count-include-pad"]


def target_cli(budget: int) -> Callable[[], None]:
    from convarith.cli import main

    @_settings(budget)
    @given(st.lists(st.one_of(st.sampled_from(CLI_WORDS), st.text(max_size=6)), max_size=8),
           st.sampled_from(["shape", "solve", "port", "summary"]))
    def test(argv: list[str], command: str) -> None:
        _count("cli")
        argv = [command, *argv]
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse usage errors
                code = exit_.code if isinstance(exit_.code, int) else 2
            except Exception as error:  # noqa: BLE001
                raise Finding(f"convarith {argv}: {type(error).__name__}: {error}") from error
        if code not in (0, 1, 2):
            raise Finding(f"convarith {argv}: exit status {code}")
        if "Traceback" in err.getvalue():
            raise Finding(f"convarith {argv}: printed a traceback")

    return test


def target_engine(budget: int) -> Callable[[], None]:
    import convarith
    from convarith import ConvSpec

    dtypes = st.sampled_from(["float32", "float64", "float16", "int32", "bool", "complex64", "U1", "O"])

    @_settings(budget)
    @given(plausible_spec_kwargs(), st.lists(st.integers(0, 7), min_size=1, max_size=6),
           st.lists(st.integers(0, 5), min_size=1, max_size=6), dtypes, st.booleans(),
           st.booleans(), st.integers(1, 4), st.sampled_from([0.0, np.nan, np.inf]))
    def test(kwargs: dict[str, Any], x_shape: list[int], k_shape: list[int], dtype: str,
             use_grad: bool, consistent: bool, channels: int, special: float) -> None:
        _count("engine")
        if consistent:  # shapes that fit the spec, so the fast paths run
            rank = kwargs["rank"]
            groups = kwargs.get("groups", 1)
            channels *= groups
            x_shape = [2, *x_shape[:rank], *[5] * (rank - len(x_shape[:rank])), channels]
            if kwargs.get("data_format") == "channels_first":
                x_shape = [x_shape[0], x_shape[-1], *x_shape[1:-1]]
            if kwargs.get("transposed"):
                k_shape = [*[kwargs["kernel_size"]] * rank, 2 * groups // groups, channels]
            else:
                k_shape = [*[kwargs["kernel_size"]] * rank, channels // groups, 2 * groups]
            dtype = dtype if dtype in ("float32", "float64", "float16") else "float32"
        x = np.ones(x_shape, dtype=dtype) if dtype != "U1" else np.full(x_shape, "a")
        if x.size and x.dtype.kind == "f":
            x.flat[0] = special
        kernel = np.ones(k_shape, dtype="float32")
        if kwargs.get("pool") and consistent:
            kernel = None

        def call() -> None:
            spec = ConvSpec(**kwargs)
            y = convarith.conv(x, kernel, spec)
            if use_grad:
                convarith.conv_vjp(x, kernel, spec, np.ones_like(y))

        expect_documented(call, f"conv(x{tuple(x_shape)}:{dtype}, k{tuple(k_shape)}, "
                                f"ConvSpec(**{kwargs!r}), consistent={consistent})")

    return test


def target_frontdoors(budget: int) -> Callable[[], None]:
    from convarith import ConvSpec

    layers = {
        "keras": ["Conv1D", "Conv2D", "Conv3D", "Conv2DTranspose", "DepthwiseConv2D",
                  "SeparableConv2D", "MaxPooling2D", "AveragePooling1D", "Dense", ""],
        "torch": ["Conv1d", "Conv2d", "Conv3d", "ConvTranspose2d", "MaxPool2d", "AvgPool1d", "Linear"],
        "jax": ["conv_general_dilated", "conv_transpose", "max_pool", "avg_pool", "conv"],
        "onnx": ["Conv", "ConvTranspose", "MaxPool", "AveragePool", "Gemm"],
    }
    names = ["filters", "kernel_size", "strides", "padding", "dilation_rate", "groups",
             "data_format", "output_padding", "pool_size", "depth_multiplier", "in_channels",
             "out_channels", "stride", "dilation", "padding_mode", "ceil_mode", "count_include_pad",
             "window_strides", "lhs_dilation", "rhs_dilation", "feature_group_count", "kernel_shape",
             "auto_pad", "pads", "dilations", "group", "output_shape", "bogus"]

    @_settings(budget)
    @given(st.sampled_from(sorted(layers)), st.data())
    def test(convention: str, data: st.DataObject) -> None:
        _count("frontdoors")
        layer = data.draw(st.one_of(st.sampled_from(layers[convention]), st.text(max_size=5)))
        kwargs = data.draw(st.dictionaries(st.sampled_from(names), st.one_of(plausible_tuple, nasty),
                                           max_size=6))
        door = getattr(ConvSpec, f"from_{convention}")

        def call() -> None:
            spec = door(layer, **kwargs)
            spec.resolve(data.draw(st.one_of(plausible_tuple, nasty)))

        expect_documented(call, f"ConvSpec.from_{convention}({layer!r}, **{kwargs!r})")

    return test


PORT_CALLS = [
    "Conv2D(32, 3, strides=2, padding='same')", "Conv1D(8, 5, padding='causal', dilation_rate=2)",
    "Conv2d(3, 8, 3, stride=2, padding=1)", "ConvTranspose2d(4, 2, 4, stride=2, padding=1)",
    "MaxPool2d(2)", "AvgPool2d(3, stride=2, padding=1, ceil_mode=True)",
    "Conv2DTranspose(8, 3, strides=2, padding='same')", "MaxPooling2D(2)",
    "Conv(kernel_shape=[3, 3], pads=[0, 0, 1, 1], strides=[2, 2])",
    "conv_general_dilated(window_strides=(2, 2), padding='SAME', kernel_size=(3, 3))",
]


def target_port(budget: int) -> Callable[[], None]:
    from convarith.port import port_text

    pieces = st.one_of(st.sampled_from(PORT_CALLS), st.text(max_size=40),
                       st.sampled_from(["__import__('os').system('true')", "Conv2D(*a)", "Conv2D(**k)",
                                        "Conv2D(1)(2)", "a.b.c.Conv2D(3, 3)", "Conv2D(3, 3); x",
                                        "lambda: 0", "Conv2D(3, kernel_size=[3, 'a'])",
                                        "Conv2D(" * 50, "Conv2D(3, 10**100)", "Conv2D(-1, 3)"]))

    @_settings(budget)
    @given(pieces, st.sampled_from(["keras", "torch", "jax", "onnx", "tf", ""]),
           st.sampled_from(["keras", "torch", "jax", "onnx", "caffe"]),
           st.one_of(plausible_tuple, nasty), st.one_of(st.none(), st.integers(-1, 9)))
    def test(text: str, source: str, to: str, shape: Any, channels: Any) -> None:
        _count("port")
        expect_documented(lambda: str(port_text(text, source, to, shape, channels)),
                          f"port_text({text!r}, {source!r}, {to!r}, {shape!r}, {channels!r})")

    return test


WEB_ROUTES = ["/api/resolve", "/api/explain", "/api/geometry", "/api/footprint", "/api/solve",
              "/api/stack", "/api/port", "/api/image"]


def target_web(budget: int) -> Callable[[], None]:
    from starlette.testclient import TestClient

    from convarith.web.app import create_app

    client = TestClient(create_app(), raise_server_exceptions=False)
    keys = ["input", "kernel", "strides", "dilation", "padding", "padding_mode", "groups",
            "transposed", "output_padding", "pool", "ceil_mode", "convention", "rank", "cell",
            "out", "in", "layers", "to", "size", "target", "image", "preset", "custom", "max_kernel"]
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.integers(-(2**63), 2**63),
                  st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=10),
                  st.sampled_from(["same", "valid", "keras", "torch", "max", "reflect"])),
        lambda inner: st.one_of(st.lists(inner, max_size=4),
                                st.dictionaries(st.sampled_from(keys), inner, max_size=4)),
        max_leaves=12,
    )

    @_settings(budget)
    @given(st.sampled_from(WEB_ROUTES),
           st.one_of(st.dictionaries(st.sampled_from(keys), json_values, max_size=8), json_values),
           st.sampled_from(["json", "raw", "get"]), st.binary(max_size=64))
    def test(route: str, body: Any, how: str, raw: bytes) -> None:
        _count("web")
        if how == "json":
            response = client.post(route, json=body)
        elif how == "raw":
            response = client.post(route, content=raw, headers={"content-type": "application/json"})
        else:
            response = client.get(route + "?" + raw.hex())
        if response.status_code >= 500:
            raise Finding(f"{how} {route} {body!r}/{raw!r}: HTTP {response.status_code} {response.text[:200]}")
        if response.status_code >= 400 and "json" in response.headers.get("content-type", ""):
            if not response.json().get("error"):
                raise Finding(f"{route}: {response.status_code} without an error message")

    return test


def _has(module: str) -> Callable[[], bool]:
    def check() -> bool:
        import importlib.util

        try:
            return importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            return False

    return check


TARGETS = [
    Target("spec", target_spec),
    Target("explain", target_explain),
    Target("solver", target_solver),
    Target("cli", target_cli),
    Target("engine", target_engine),
    Target("frontdoors", target_frontdoors, _has("convarith.frontdoors")),
    Target("port", target_port, _has("convarith.port")),
    Target("web", target_web, lambda: _has("starlette")() and _has("convarith.web.app")()),
]


def run(budget: int, names: list[str] | None = None, stream: Any = sys.stdout) -> dict[str, int]:
    """Run the targets; raises :class:`Finding` on the first undocumented outcome."""
    COUNTS.clear()
    timings: dict[str, float] = {}
    for target in TARGETS:
        if names and target.name not in names:
            continue
        if not target.available():
            print(f"{target.name:12s} skipped (not installed)", file=stream)
            continue
        start = time.perf_counter()
        target.build(budget)()
        timings[target.name] = time.perf_counter() - start
        print(f"{target.name:12s} {COUNTS.get(target.name, 0):8d} inputs  "
              f"{timings[target.name]:7.1f} s", file=stream)
    total = sum(COUNTS.values())
    print(f"{'total':12s} {total:8d} inputs  {sum(timings.values()):7.1f} s", file=stream)
    return dict(COUNTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=2000, help="inputs per target")
    parser.add_argument("--targets", help="comma-separated target names")
    args = parser.parse_args(argv)
    names = args.targets.split(",") if args.targets else None
    try:
        run(args.budget, names)
    except Finding as finding:
        print(f"FINDING: {finding}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

# keep imports used by later targets (readers, web) in one place
_ = (math, tempfile, zipfile)
