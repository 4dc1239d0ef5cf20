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


P, X, Z, B = "padding", "input", "inserted", "beyond"


@pytest.mark.parametrize(("spec", "size", "extent", "expected"), [
    # k=3 s=2 valid on 6: windows [0, 3), [2, 5); (6 - 3) mod 2 = 1 cell past the last one
    (ConvSpec(3, strides=2, rank=1), 6, None, [X] * 5 + ["dropped"]),
    # k=3 s=2 valid on 5: (5 - 3) mod 2 = 0, every cell read
    (ConvSpec(3, strides=2, rank=1), 5, None, [X] * 5),
    # k=2 s=3 on 7: windows [0, 2), [3, 5); cell 2 stepped over, 5 and 6 past the last window
    (ConvSpec(2, strides=3, rank=1), 7, None, [X, X, "skipped", X, X, "dropped", "dropped"]),
    # Keras transposed k=3 s=2 'valid' on 3: x0 0 x1 0 x2 padded by K-1 = 2 on each side
    (ConvSpec(3, strides=2, transposed=True, rank=1), 3, None, [P, P, X, Z, X, Z, X, P, P]),
    # PyTorch ConvTranspose1d(k=3, s=2, padding=1): grid padding K-1-1 = 1 on each side
    (ConvSpec(3, strides=2, padding=1, transposed=True, rank=1), 3, None, [P, X, Z, X, Z, X, P]),
    # causal k=3 d=2: D(K-1) = 4 zeros on the left only
    (ConvSpec(3, dilation=2, padding="causal", rank=1), 4, None, [P] * 4 + [X] * 4),
    # ceil-mode max pool k=2 s=2 on 5: 3 windows, the last [4, 6) reads one cell past the input
    (ConvSpec(2, strides=2, pool="max", ceil_mode=True, rank=1), 5, 6, [X] * 5 + [B]),
    # ceil-mode k=1 s=2 on 12: a 7th window would start past the input, so PyTorch keeps 6
    # (as floor mode): windows 0, 2, ..., 10, and cell 11 lies past the last one
    (ConvSpec(1, strides=2, pool="max", ceil_mode=True, rank=1), 12, None,
     [X, "skipped"] * 5 + [X, "dropped"]),
    # replicate padding 2 on 3: the two cells on each side copy the edge
    (ConvSpec(3, padding=2, padding_mode="replicate", rank=1), 3, None,
     ["copy", "copy", X, X, X, "copy", "copy"]),
])
def test_grid_cells_hand_derived(spec: ConvSpec, size: int, extent: int | None,
                                 expected: list[str]) -> None:
    """The one classification of grid cells (``ResolvedConv.grid_cells`` → ``arithmetic.grid_cell``)."""
    cells = spec.resolve((size,)).grid_cells(0, extent)
    assert [kind for kind, _ in cells] == expected
    assert {kind for kind, _ in cells} <= set(ar.GRID_CELL_KINDS)


def test_grid_cells_unread_inputs_have_no_torch_gradient() -> None:
    """Exactly the input cells classified "dropped" or "skipped" get no gradient in PyTorch."""
    torch = pytest.importorskip("torch")
    for case in _configs(CASES // 2, SEED + 5):
        i, k, s, d = case["size"], case["kernel"], case["stride"], case["dilation"]
        p = case["pad"]
        if i + 2 * p < ar.effective_kernel(k, d):
            continue
        x = torch.ones(1, 1, i, requires_grad=True)
        torch.nn.functional.conv1d(x, torch.ones(1, 1, k), stride=s, padding=p, dilation=d).sum().backward()
        assert x.grad is not None
        unread = [int(g) == 0 for g in x.grad[0, 0]]
        resolved = ConvSpec(k, strides=s, dilation=d, padding=p, rank=1).resolve((i,))
        cells = resolved.grid_cells(0)
        assert [cells[p + j][0] in ("dropped", "skipped") for j in range(i)] == unread, \
            f"seed {SEED + 5}: {case}"
        assert sum(kind == "dropped" for kind, _ in cells) == resolved.dropped[0], f"seed {SEED + 5}: {case}"
        assert all(cells[j] == ("padding", None) for j in (*range(p), *range(p + i, i + 2 * p)))


def test_grid_cells_unread_by_ceil_mode_pooling_have_no_torch_gradient() -> None:
    """Ceil-mode average pooling: the cells classified "dropped" or "skipped" are exactly those
    PyTorch's gradient does not reach, and ``ResolvedConv.dropped`` counts the "dropped"."""
    torch = pytest.importorskip("torch")
    for case in _configs(CASES // 2, SEED + 8):
        i, k, s = case["size"], case["kernel"], case["stride"]
        p = min(case["pad"], k // 2)
        if i + 2 * p < k:
            continue
        x = torch.ones(1, 1, i, requires_grad=True)
        torch.nn.functional.avg_pool1d(x, k, s, p, ceil_mode=True).sum().backward()
        assert x.grad is not None
        resolved = ConvSpec(k, strides=s, padding=p, pool="avg", ceil_mode=True,
                            rank=1).resolve((i,))
        cells = resolved.grid_cells(0, resolved.padded_size[0] + resolved.overhang[0])
        unread = [float(g) == 0 for g in x.grad[0, 0]]
        assert [cells[p + j][0] in ("dropped", "skipped") for j in range(i)] == unread, \
            f"seed {SEED + 8}: {case}"
        assert sum(kind == "dropped" for kind, _ in cells) == resolved.dropped[0], \
            f"seed {SEED + 8}: {case}"


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_grid_cells_copies_are_torch_padding(mode: str) -> None:
    """The cell each padding copy holds is the one ``torch.nn.functional.pad`` copies."""
    torch = pytest.importorskip("torch")
    rng = random.Random(SEED + 6)
    for _ in range(CASES // 4):
        size = rng.randint(2, 9)
        lo, hi = rng.randint(0, size - 1), rng.randint(0, size - 1)
        padded = torch.nn.functional.pad(torch.arange(size, dtype=torch.float32)[None, None],
                                         (lo, hi), mode=mode)
        cells = ar.grid_cells(size, 1, size + lo + hi, padding=(lo, hi), padding_mode=mode)
        assert [source for _, source in cells] == [int(v) for v in padded[0, 0]], \
            f"seed {SEED + 6}: {mode} {size} {(lo, hi)}"
        assert [kind for kind, _ in cells] == ["copy"] * lo + ["input"] * size + ["copy"] * hi


def test_grid_cells_transposed_grid_is_torch_zero_insertion() -> None:
    """A transposed convolution's grid: PyTorch's stride-S transposed convolution with a one-tap
    kernel of 1 (the zero-inserted input), then its grid padding (negative: a crop)."""
    torch = pytest.importorskip("torch")
    for case in _configs(CASES // 2, SEED + 7):
        i, k, s, d, p, op = (case[n] for n in ("size", "kernel", "stride", "dilation", "pad",
                                               "output_padding"))
        pads = ar.transposed_input_padding(k, d, (p, p), op)
        out = ar.transposed_grid_output_size(i, k, s, d, pads)
        if out < 1:
            continue
        inserted = torch.nn.functional.conv_transpose1d(
            torch.arange(1.0, i + 1)[None, None], torch.ones(1, 1, 1), stride=s)
        grid = torch.nn.functional.pad(inserted, pads)[0, 0]
        cells = ar.grid_cells(i, out, k, s, d, pads, transposed=True)
        assert [source for _, source in cells] == [int(v) - 1 if v else None for v in grid], \
            f"seed {SEED + 7}: {case}"
        inside = range(max(0, pads[0]), len(cells) - max(0, pads[1]))
        assert all((kind == "padding") == (j not in inside) for j, (kind, _) in enumerate(cells)), \
            f"seed {SEED + 7}: {case}"


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


# --------------------------------------------------------------------------- one copy only
# A copy of a formula outside arithmetic.py is found in the code's tokens (comments,
# docstrings and string texts left out), written out as "a ( b - 1 ) * c ...".
_KERNEL = r"(?:k|kh|kw|kd|kernel|kernel_size|ksize|taps|kernel_rows|kernel_cols)"
_DILATION = r"(?:d|d0|d1|d2|dh|dw|dilation|dilation_rows|dilation_cols|dilation_rate|rate)"
_INDEX = r"(?: \[ [^]\n]* \])?"
#: the dilated kernel's extent less one, D·(K - 1) (arithmetic.effective_kernel)
_EXTENT = (rf"\( {_KERNEL}{_INDEX} - 1 \) \* {_DILATION}{_INDEX}(?= |$)"
           rf"|(?<= ){_DILATION}{_INDEX} \* \( {_KERNEL}{_INDEX} - 1 \)")
#: (I - 1)·S (arithmetic.zero_inserted_size) with D·(K - 1) or K_eff in the same statement:
#: the transposed output size (arithmetic.transposed_grid_output_size)
_PRODUCT = rf"\( \w+{_INDEX} - 1 \) \* \w+{_INDEX}|\w+{_INDEX} \* \( \w+{_INDEX} - 1 \)"
_TRANSPOSED = (rf"(?:{_PRODUCT}|zero_inserted_size \()[^\n]*(?:{_EXTENT}|effective_kernel \()"
               rf"|(?:{_EXTENT}|effective_kernel \()[^\n]*(?:{_PRODUCT}|zero_inserted_size \()")


def _code_statements(path: Path) -> str:
    """``path``'s code tokens joined by spaces, one logical statement per line."""
    import io
    import tokenize

    skipped = {tokenize.COMMENT, tokenize.STRING, tokenize.NL, tokenize.INDENT,
               tokenize.DEDENT, getattr(tokenize, "FSTRING_MIDDLE", tokenize.STRING)}
    words = []
    source = path.read_text(encoding="utf-8")
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NEWLINE:
            words.append("\n")
        elif token.type not in skipped:
            words.append(token.string)
    return " ".join(words).replace(" \n ", "\n")


def _formula_copies(pattern: str) -> dict[str, list[str]]:
    import re

    package = Path(ar.__file__).resolve().parent
    found: dict[str, list[str]] = {}
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if name == "arithmetic.py":
            continue
        hits = [match.group(0) for match in re.finditer(pattern, _code_statements(path))]
        if hits:
            found[name] = hits
    return found


def _code_statements_of(text: str) -> str:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "snippet.py"
        path.write_text(text + "\n", encoding="utf-8")
        return _code_statements(path)


def test_formula_patterns_find_the_copies_they_describe() -> None:
    import re

    extent = ["reach = (k - 1) * d + 1", "crop = d * (k - 1) - lo",
              "span = (kernel_size[0] - 1) * dilation[0]"]
    transposed = ["out = (n - 1) * s + 1 + lo + hi - (k - 1) * d",
                  "out = (size - 1) * stride - 2 * p + dilation * (kernel - 1) + op + 1",
                  "out = zero_inserted_size(n, s) + lo + hi - effective_kernel(k, d) + 1"]
    unrelated = ["width = cols * w + (cols - 1) * gap", "stop = (o - 1) * s + 1",
                 "grow = r + (k_eff - 1) * jump"]
    tokens = {text: _code_statements_of(text) for text in extent + transposed + unrelated}
    for text in extent + transposed:
        assert re.search(_EXTENT if text in extent else _TRANSPOSED, tokens[text]), text
    assert not re.search(_TRANSPOSED, tokens[extent[0]])  # one product alone is no output size
    for text in unrelated:
        assert not re.search(_EXTENT, tokens[text]) and not re.search(_TRANSPOSED, tokens[text])


def test_transposed_output_size_is_written_only_in_arithmetic() -> None:
    copies = _formula_copies(_TRANSPOSED)
    assert not copies, (f"the transposed output size written out again: {copies}; call "
                        f"arithmetic.transposed_grid_output_size (or transposed_output_size)")


def test_dilated_extent_is_written_only_in_arithmetic() -> None:
    copies = _formula_copies(_EXTENT)
    assert not copies, (f"D·(K - 1) written out again: {copies}; call "
                        f"arithmetic.effective_kernel (or window_reach, transposed_input_padding, "
                        f"transposed_crop)")



def _private_algorithm_imports(source: str) -> list[str]:
    """The modules or names under ``engine.algorithms._*`` that ``source`` imports."""
    import ast

    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            names = [f"{node.module or ''}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if ("engine" in parts and "algorithms" in parts
                    and any(part.startswith("_")
                            for part in parts[parts.index("algorithms") + 1:])):
                found.append(name)
    return found


def test_no_module_outside_the_engine_imports_its_private_algorithm_modules() -> None:
    """``engine.algorithms._llvm`` and its kind are read through public engine modules
    (``engine.compiled`` for the vector ISA), as docs/architecture.md says."""
    assert _private_algorithm_imports("from .engine.algorithms import _llvm") == [
        "engine.algorithms._llvm"]
    assert _private_algorithm_imports("from ..engine.algorithms._threads import x") == [
        "engine.algorithms._threads.x"]
    assert not _private_algorithm_imports("from .engine.compiled import VECTOR_ISA_NAMES")
    package = Path(ar.__file__).resolve().parent
    found = {}
    for path in sorted(package.rglob("*.py")):
        name = path.relative_to(package).as_posix()
        if not name.startswith("engine/"):
            hits = _private_algorithm_imports(path.read_text(encoding="utf-8"))
            if hits:
                found[name] = hits
    assert not found, f"private engine modules imported from outside the engine: {found}"
