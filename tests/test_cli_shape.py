"""`convarith shape` and `convarith solve` as a newcomer runs them, plus explain's notes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from convarith import ConvSpec
from convarith.cli import main
from convarith.explain import explain


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_no_arguments_prints_the_lessons_example(capsys) -> None:
    code, out, _ = run(capsys, "shape")
    assert code == 0
    assert "floor(27 / 3) + 1 = 10" in out  # (28 - 3 + 2) = 27, by hand
    assert out.rstrip().endswith("output: 10x10")
    assert "(S + 1)" in out  # the slide's misprint is named


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["28", "-k", "3", "-p", "1", "-s", "3"], "10x10"),
        (["28", "-k", "3", "-p", "1", "-s", "1"], "28x28"),
        (["5", "-k", "3", "-p", "same", "-s", "2"], "3x3"),
        (["28x32", "-p", "same", "-s", "2"], "14x16"),
        (["7", "-k", "3", "-d", "2"], "3x3"),
        (["16000", "--rank", "1", "-k", "3", "-d", "8", "-p", "causal"], "16000"),
        (["28", "-k", "4", "-s", "2", "-p", "1", "--transposed"], "56x56"),
        (["5", "-k", "2", "-s", "2", "--pool", "max", "--ceil-mode"], "3x3"),
        (["6", "-k", "3", "-p", "0,1x1,0"], "5x5"),
    ],
)
def test_shape_sizes(capsys, argv, expected) -> None:
    code, out, err = run(capsys, "shape", *argv)
    assert code == 0, err
    assert out.rstrip().endswith(f"output: {expected}")


def test_json_output(capsys) -> None:
    code, out, _ = run(capsys, "shape", "28", "-p", "same", "-s", "2", "--json")
    data = json.loads(out)
    assert code == 0 and data["output_size"] == [14, 14]
    assert data["axes"][0]["padding"] == [0, 1]
    assert any("PyTorch padding=1" in note for note in data["notes"])


@pytest.mark.parametrize(
    "argv, words",
    [
        (["shape", "0"], ["size", "positive"]),
        (["shape", "28", "-k", "0"], ["kernel", "positive"]),
        (["shape", "28", "-p", "bogus"], ["--padding", "'bogus'"]),
        (["shape", "3", "-k", "5"], ["kernel spans 5"]),
        (["shape", "28", "-k", "x"], ["--kernel", "'x'"]),
        (["shape", "28", "-p", "causal"], ["causal", "1-D"]),
        (["shape", "28", "--ceil-mode"], ["--ceil-mode", "--pool"]),
        (["solve", "28", "--to", "0"], ["positive"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, words) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("convarith ")
    for word in words:
        assert word in err, (word, err)


def test_solve_table(capsys) -> None:
    code, out, _ = run(capsys, "solve", "28", "--to", "14", "--max-kernel", "3")
    assert code == 0
    lines = [line.split() for line in out.splitlines()[4:] if line.strip()]
    assert ["3", "2", "1", "(0,", "1)"] == lines[-1][:5]


def test_solve_json_answers_resolve(capsys) -> None:
    code, out, _ = run(capsys, "solve", "28", "--to", "10", "--max-dilation", "2", "--json")
    found = json.loads(out)
    assert code == 0 and found
    for s in found:
        spec = ConvSpec(s["kernel"], strides=s["stride"], dilation=s["dilation"],
                        padding=[tuple(s["padding"])], rank=1)
        assert spec.resolve(28).output_size == (10,)


def test_entry_point_installed() -> None:
    result = subprocess.run([sys.executable, "-m", "convarith.cli", "shape", "5", "-p", "same", "-s", "2"],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 and "output: 3x3" in result.stdout


def test_explain_notes_name_the_framework_difference() -> None:
    e = explain(ConvSpec(3, strides=2, padding="same"), (28, 28))
    assert any("(1, 1) instead of (0, 1)" in n for n in e.notes)
    e = explain(ConvSpec(3, strides=2), (28, 28))
    assert any("dropped" in n for n in e.notes)
    e = explain(ConvSpec(3, strides=2, padding="same"), (27, 27))
    assert e.axes[0].padding == (1, 1) and not any("shifted" in n for n in e.notes)


def test_solve_without_solutions_exits_1_in_both_forms(capsys) -> None:
    # 5 cells cannot grow to 50 with kernels of at most 3 and no padding
    code, out, _ = run(capsys, "solve", "5", "--to", "50", "--max-kernel", "3", "--max-padding", "0")
    assert code == 1 and "no configuration" in out
    code, out, _ = run(capsys, "solve", "5", "--to", "50", "--max-kernel", "3", "--max-padding", "0",
                       "--json")
    assert code == 1 and json.loads(out) == []
