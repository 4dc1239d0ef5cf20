"""Fuzz the model-file readers: mutated ``.keras``, ``.json``, ``.yaml`` and ``.onnx`` files.

Each trial takes a valid model file, damages it (flipped bytes, a truncation,
inserted junk, a JSON value swapped for a hostile one, a zip member rewritten
or stored with a huge declared size) and runs ``convarith summary`` on it. The
documented outcomes are exit status 0 (the damage was harmless) or 2 with one
line on stderr, within ``--seconds`` per file. Anything else -- a traceback,
status 1, several lines, a slow file -- is a finding, printed with the seed
that reproduces it.

Run ``python fuzz/model_files.py --budget 2000 --seed 1``; CI runs a small
budget through ``tests/test_fuzz_model_files.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import random
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from typing import Any

os.environ.setdefault("KERAS_BACKEND", "jax")

HOSTILE_VALUES: list[Any] = [None, -1, 0, 2**63, 1e308, "x" * 50, [], {}, [[[]]], True, "same", [0, 0],
                             {"class_name": "Dense"}, "Infinity", -2**31]


def _functional_config() -> dict[str, Any]:
    def tensor(name: str) -> dict[str, Any]:
        return {"class_name": "__keras_tensor__", "config": {"keras_history": [name, 0, 0]}}

    def layer(cls: str, name: str, config: dict[str, Any], inbound: list[str]) -> dict[str, Any]:
        nodes = [{"args": [[tensor(i) for i in inbound]] if len(inbound) > 1 else [tensor(inbound[0])],
                  "kwargs": {}}] if inbound else []
        return {"class_name": cls, "name": name, "config": {"name": name, **config}, "inbound_nodes": nodes}

    return {"class_name": "Functional", "config": {"name": "fuzz", "layers": [
        layer("InputLayer", "in", {"batch_shape": [None, 16, 16, 3]}, []),
        layer("Conv2D", "c1", {"filters": 8, "kernel_size": 3, "padding": "same", "strides": 2}, ["in"]),
        layer("Conv2D", "c2", {"filters": 8, "kernel_size": 1}, ["c1"]),
        layer("Add", "add", {}, ["c1", "c2"]),
        layer("MaxPooling2D", "pool", {"pool_size": 2}, ["add"]),
        layer("Flatten", "flat", {}, ["pool"]),
        layer("Dense", "out", {"units": 10}, ["flat"]),
    ]}}


def _layer_list() -> dict[str, Any]:
    return {"name": "fuzz", "input": [16, 16, 3], "layers": [
        "Conv2D(8, 3, strides=2, padding='same')", {"type": "MaxPooling2D", "pool_size": 2},
        {"type": "Conv2D", "filters": 4, "kernel_size": 1, "name": "c"}, {"type": "Add", "inputs": ["c", "c"]}]}


def _onnx_bytes() -> bytes | None:
    try:
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    import numpy as np

    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["y"], ["r"]),
             helper.make_node("MaxPool", ["r"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "shape"], ["z"])]
    graph = helper.make_graph(nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight, shape])
    return helper.make_model(graph).SerializeToString()


def _keras_bytes(config: Any, method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as archive:
        archive.writestr("config.json", config if isinstance(config, (str, bytes)) else json.dumps(config))
        archive.writestr("metadata.json", "{}")
    return buffer.getvalue()


def _mutate_json(value: Any, rng: random.Random) -> Any:
    """A copy of ``value`` with one randomly chosen leaf or member replaced by a hostile value."""
    if isinstance(value, dict) and value:
        key = rng.choice(list(value))
        copy = dict(value)
        if rng.random() < 0.15:
            del copy[key]
        else:
            copy[key] = _mutate_json(value[key], rng) if rng.random() < 0.7 else rng.choice(HOSTILE_VALUES)
        return copy
    if isinstance(value, list) and value:
        index = rng.randrange(len(value))
        copy = list(value)
        copy[index] = _mutate_json(value[index], rng) if rng.random() < 0.7 else rng.choice(HOSTILE_VALUES)
        return copy
    return rng.choice(HOSTILE_VALUES)


def _mutate_bytes(data: bytes, rng: random.Random) -> bytes:
    blob = bytearray(data)
    action = rng.randrange(4)
    if action == 0 and blob:
        for _ in range(rng.randint(1, 8)):
            blob[rng.randrange(len(blob))] ^= 1 << rng.randrange(8)
    elif action == 1 and blob:
        del blob[rng.randrange(len(blob)):]
    elif action == 2:
        at = rng.randrange(len(blob) + 1)
        blob[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif blob:
        start = rng.randrange(len(blob))
        blob[start:start + 4] = rng.choice([b"\xff\xff\xff\xff", b"\0\0\0\0", b"\x7f\xff\xff\xff"])
    return bytes(blob)


def make_case(rng: random.Random) -> tuple[str, bytes]:
    """One damaged model file: (suffix, content)."""
    kind = rng.choice(["keras-json", "keras-bytes", "keras-zip", "json", "yaml", "onnx"])
    if kind == "keras-json":
        return ".keras", _keras_bytes(_mutate_json(_functional_config(), rng))
    if kind == "keras-bytes":
        return ".keras", _mutate_bytes(_keras_bytes(_functional_config()), rng)
    if kind == "keras-zip":
        choice = rng.randrange(3)
        if choice == 0:
            return ".keras", _keras_bytes(b" " * rng.choice([10, 1 << 20, 3 << 20]) + b"{}")
        if choice == 1:
            return ".keras", _keras_bytes("[" * rng.choice([100, 5000, 200_000]))
        return ".keras", _keras_bytes(json.dumps(_functional_config()),
                                      rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]))
    if kind == "json":
        text = json.dumps(_mutate_json(_layer_list(), rng)).encode()
        return ".json", _mutate_bytes(text, rng) if rng.random() < 0.3 else text
    if kind == "yaml":
        text = json.dumps(_mutate_json(_layer_list(), rng))  # JSON is YAML
        if rng.random() < 0.3:
            text = "a: &a [1, 2]\nb: [*a, *a]\n" + text.replace('"name": "fuzz"', '"name": "x"')
        return ".yaml", text.encode()
    blob = _onnx_bytes()
    if blob is None:
        return ".json", json.dumps(_layer_list()).encode()
    return ".onnx", _mutate_bytes(blob, rng)


class Finding(AssertionError):
    """An undocumented outcome."""


def check_file(path: str, seconds: float) -> int:
    """Run ``convarith summary`` on ``path``; returns the exit status or raises :class:`Finding`."""
    from convarith.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["summary", path, "--plain"])
    except BaseException as error:  # noqa: BLE001 - anything escaping the CLI is a finding
        raise Finding(f"{type(error).__name__}: {error}") from error
    elapsed = time.perf_counter() - start
    if code not in (0, 2):
        raise Finding(f"exit status {code}: {err.getvalue()[-500:]}")
    if code == 2 and len(err.getvalue().strip().splitlines()) != 1:
        raise Finding(f"{len(err.getvalue().strip().splitlines())} lines on stderr: {err.getvalue()[-500:]}")
    if elapsed > seconds:
        raise Finding(f"took {elapsed:.1f} s (limit {seconds} s)")
    return code


def run(budget: int, seed: int = 0, seconds: float = 10.0, stream: Any = sys.stdout,
        on_case: Callable[[str, int], None] | None = None) -> dict[str, int]:
    """Run ``budget`` damaged files from ``seed``; returns counts of exit statuses per suffix."""
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as folder:
        for trial in range(budget):
            rng = random.Random(seed * 1_000_003 + trial)
            suffix, content = make_case(rng)
            path = os.path.join(folder, f"case{suffix}")
            with open(path, "wb") as handle:
                handle.write(content)
            try:
                code = check_file(path, seconds)
            except Finding as finding:
                raise Finding(f"seed {seed} trial {trial} ({suffix}, reproduce with "
                              f"make_case(random.Random({seed * 1_000_003 + trial}))): {finding}") from None
            key = f"{suffix} exit {code}"
            counts[key] = counts.get(key, 0) + 1
            if on_case is not None:
                on_case(suffix, code)
    for key in sorted(counts):
        print(f"{key:16s} {counts[key]:6d}", file=stream)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=500, help="damaged files to try")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0, help="time allowed per file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        run(args.budget, args.seed, args.seconds)
    except Finding as finding:
        print(f"FINDING: {finding}", file=sys.stderr)
        return 1
    print(f"{args.budget} files in {time.perf_counter() - start:.1f} s, no finding")
    return 0


if __name__ == "__main__":
    sys.exit(main())
