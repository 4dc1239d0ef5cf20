"""Each derived geometry has one function: check each against the frameworks.

Random configurations (seeded; the seed is in every failure message) are
pushed through PyTorch, JAX and Keras, and the single-source functions of
:mod:`convarith.arithmetic` (and :func:`convarith.frontdoors.framework_args`)
must give what the frameworks give.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convarith import ConvSpec
from convarith import arithmetic as ar
from convarith.frontdoors import framework_args, from_convention

CASES = 40 if os.environ.get("CI") == "true" else 300
SEED = int(os.environ.get("CONVARITH_SEED", "20261206"))


def _configs(count: int, seed: int) -> list[dict[str, int]]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        kernel, stride, dilation = rng.randint(1, 5), rng.randint(1, 4), rng.randint(1, 3)
        out.append(dict(size=rng.randint(1, 12), kernel=kernel, stride=stride, dilation=dilation,
                        pad=rng.randint(0, 3), output_padding=rng.randint(0, max(stride, dilation) - 1)))
    return out


def test_transposed_grid_output_size_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    for case in _configs(CASES, SEED):
        i, k, s, d, p, op = (case[n] for n in ("size", "kernel", "stride", "dilation", "pad",
                                               "output_padding"))
        pads = ar.transposed_input_padding(k, d, (p, p), op)
        expected_size = ar.transposed_grid_output_size(i, k, s, d, pads)
        try:
            y = torch.nn.functional.conv_transpose1d(
                torch.zeros(1, 1, i), torch.zeros(1, 1, k), stride=s, padding=p,
                output_padding=op, dilation=d)
        except RuntimeError:
            assert expected_size < 1, f"seed {SEED}: {case}: torch rejects, we give {expected_size}"
            continue
        assert y.shape[-1] == expected_size, f"seed {SEED}: {case}"
        assert ar.transposed_output_size(i, k, s, d, (p, p), op) == expected_size
        assert ar.transposed_crop(k, d, pads) == (p, p - op), f"seed {SEED}: {case}"


def test_transposed_grid_output_size_matches_jax_lhs_dilation() -> None:
    jax = pytest.importorskip("jax")
    rng = random.Random(SEED + 1)
    for case in _configs(CASES // 2, SEED + 1):
        i, k, s, d = case["size"], case["kernel"], case["stride"], case["dilation"]
        pads = (rng.randint(-2, 4), rng.randint(-2, 4))  # negative: crops
        expected_size = ar.transposed_grid_output_size(i, k, s, d, pads)
        if expected_size < 1:
            continue
        shape = jax.eval_shape(
            lambda x, w, s=s, d=d, pads=pads: jax.lax.conv_general_dilated(
                x, w, (1,), [pads], lhs_dilation=(s,), rhs_dilation=(d,)),
            jax.ShapeDtypeStruct((1, 1, i), np.float32), jax.ShapeDtypeStruct((1, 1, k), np.float32))
        assert shape.shape[-1] == expected_size, f"seed {SEED + 1}: {case}, pads {pads}"


def test_input_gradient_padding_gives_jax_vjp() -> None:
    jax = pytest.importorskip("jax")
    lax = jax.lax
    rng = np.random.default_rng(SEED)
    for case in _configs(CASES // 4, SEED + 2):
        i, k, s, d, p = case["size"], case["kernel"], case["stride"], case["dilation"], case["pad"]
        padded = i + 2 * p
        out = ar.conv_output_size(i, k, s, d, (p, p))
        if out < 1:
            continue
        x = rng.standard_normal((1, 1, padded)).astype(np.float32)
        w = rng.standard_normal((1, 1, k)).astype(np.float32)
        dy = rng.standard_normal((1, 1, out)).astype(np.float32)
        _, vjp = jax.vjp(lambda a, w=w, s=s, d=d: lax.conv_general_dilated(
            a, w, (s,), [(0, 0)], rhs_dilation=(d,)), x)
        (expected,) = vjp(dy)
        grid_pads = ar.input_gradient_padding(padded, out, k, s, d)
        assert ar.transposed_grid_output_size(out, k, s, d, grid_pads) == padded
        dx = lax.conv_general_dilated(dy, w[..., ::-1], (1,), [grid_pads], lhs_dilation=(s,),
                                      rhs_dilation=(d,))
        np.testing.assert_allclose(np.asarray(dx), np.asarray(expected), rtol=1e-4, atol=1e-4,
                                   err_msg=f"seed {SEED + 2}: {case}")


def test_ceil_overhang_is_where_the_last_window_ends() -> None:
    torch = pytest.importorskip("torch")
    for case in _configs(CASES, SEED + 3):
        i, k, s, d = case["size"], case["kernel"], case["stride"], case["dilation"]
        p = min(case["pad"], k // 2)
        if i + 2 * p < ar.effective_kernel(k, d):
            continue
        y = torch.nn.functional.max_pool1d(torch.zeros(1, 1, i), k, s, p, d, ceil_mode=True)
        out = y.shape[-1]
        spec = ConvSpec(k, strides=s, dilation=d, padding=p, pool="max", ceil_mode=True, rank=1)
        resolved = spec.resolve((i,))
        assert resolved.output_size == (out,), f"seed {SEED + 3}: {case}"
        # the geometry's own last tap (ResolvedConv.axis_taps) says where the windows end
        last = resolved.axis_taps(0, out - 1)[-1].position[0] + 1
        assert ar.window_reach(out, k, s, d) == last
        assert resolved.overhang == (max(0, last - (i + 2 * p)),), f"seed {SEED + 3}: {case}"
        assert resolved.window_padding == ((p, p + resolved.overhang[0]),)


def _torch_module_size(layer: str, args: dict, size: int, rank: int) -> int | None:
    torch = pytest.importorskip("torch")
    try:
        module = getattr(torch.nn, layer)(**args)
        channels = args.get("in_channels", 1)
        return int(module(torch.zeros(1, channels, *(size,) * rank)).shape[-1])
    except (RuntimeError, ValueError):
        return None


@pytest.mark.parametrize("transposed", [False, True])
def test_framework_args_build_the_torch_module(transposed: bool) -> None:
    """A field left out is PyTorch's default: the module built from the args agrees."""
    pytest.importorskip("torch")
    rng = random.Random(SEED + 4)
    for case in _configs(CASES // 2, SEED + 4):
        fields = {"kernel_size": (case["kernel"],), "transposed": transposed, "rank": 1}
        if rng.random() < 0.5:
            fields["strides"] = (case["stride"],)
        if rng.random() < 0.5:
            fields["padding"] = ((case["pad"], case["pad"]),)
        if rng.random() < 0.5:
            fields["dilation"] = (case["dilation"],)
        layer, args = framework_args("torch", fields)
        expected = _torch_module_size(layer, args, case["size"], 1)
        try:
            ours = from_convention("torch", fields).resolve((case["size"],)).output_size[0]
        except ValueError:
            ours = None
        assert ours == expected, f"seed {SEED + 4}: {fields}, size {case['size']}: {layer}({args})"


def test_framework_args_build_the_keras_layer() -> None:
    keras = pytest.importorskip("keras")
    rng = random.Random(SEED + 5)
    for case in _configs(CASES // 4, SEED + 5):
        transposed = rng.random() < 0.5
        fields = {"kernel_size": (case["kernel"],), "strides": (case["stride"],),
                  "transposed": transposed, "rank": 1}
        if rng.random() < 0.5:
            fields["padding"] = rng.choice(["valid", "same"])
        layer, args = framework_args("keras", fields)
        size = case["size"] + 8
        try:
            ours = from_convention("keras", fields).resolve((size,)).output_size[0]
        except ValueError:
            continue
        shape = getattr(keras.layers, layer)(**args).compute_output_shape((1, size, 1))
        assert shape[1] == ours, f"seed {SEED + 5}: {fields}, size {size}: {layer}({args})"


def test_cli_transposed_torch_default_padding() -> None:
    """The issue's example: no --padding means PyTorch's padding=0 (11, as ConvTranspose1d)."""
    torch = pytest.importorskip("torch")
    expected = torch.nn.ConvTranspose1d(1, 1, 2, stride=3)(torch.zeros(1, 1, 4)).shape[-1]
    src = Path(__file__).resolve().parents[1] / "src"
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from convarith.cli import main; sys.exit(main())",
         "shape", "4", "-k", "2", "-s", "3", "--transposed", "--rank", "1", "--convention", "torch"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(src)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"output: {expected}"


def test_readme_names_every_registered_algorithm() -> None:
    import re

    from convarith.engine import available_algorithms

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = text[text.index("The algorithms are chosen per shape"):]
    section = section[:section.index("\n\n", section.index("\n- "))]
    named = set(re.findall(r"`([a-z_0-9]+)`", section))
    missing = sorted(set(available_algorithms()) - named)
    assert not missing, f"README's algorithm list does not name {missing}"
