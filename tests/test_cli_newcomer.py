"""A newcomer's pass over the ``convarith`` command line: what a person sees.

Each test pins one problem found by using the commands as a first-time user
would (wording, one-line errors with exit status 2, outputs that make sense).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from convarith import ConvSpec
from convarith.cli import build_parser, main
from convarith.port import port


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("spec", "source_name"),
    [
        (ConvSpec(kernel_size=3, strides=2, padding="same"), "Keras"),
        (ConvSpec.from_torch("Conv2d", in_channels=3, out_channels=8, kernel_size=3), "PyTorch"),
    ],
)
@pytest.mark.parametrize("to", ["keras", "torch"])
def test_port_header_names_the_source_framework_once(spec: ConvSpec, source_name: str, to: str) -> None:
    first_line = port(spec, to=to, input_shape=(3, 28, 28) if spec.convention else (28, 28)).code.splitlines()[0]
    assert f" port of {source_name} conv on input " in first_line
    assert f"{source_name} {source_name}" not in first_line


def test_port_input_one_number_is_a_square_like_shape(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "port", "--from", "keras", "Conv2D(32, 3)", "--to", "torch", "--input", "28")
    assert code == 0, err
    # valid 3x3 on 28x28: 28 - 3 + 1 = 26 per axis
    assert "on input 28x28 -> output 26x26" in out.splitlines()[0]
    code, out, err = run(capsys, "port", "--from", "keras", "Conv1D(8, 5)", "--to", "torch", "--input", "28")
    assert code == 0, err
    assert "on input 28 -> output 24" in out.splitlines()[0]


@pytest.mark.parametrize(
    ("input_text", "channels", "message"),
    [
        ("28x28", "0", "must be a positive integer, got 0"),  # was silently replaced by 3
        ("28x28x3", "4", "is 4 but input_shape (28, 28, 3) has 3 channels"),  # was silently ignored
    ],
)
def test_port_channels_that_cannot_be_used_are_an_error(
    capsys: pytest.CaptureFixture[str], input_text: str, channels: str, message: str
) -> None:
    code, out, err = run(capsys, "port", "--from", "keras", "Conv2D(32, 3)", "--to", "torch",
                         "--input", input_text, "--channels", channels)
    assert code == 2 and out == ""
    assert err.startswith("convarith port: error: --channels") or err.startswith("convarith port: error: in_channels")
    assert message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("28x32", "--to", "14"), "size is one axis"),  # the 32 was silently dropped
        (("28", "--to", "14x16"), "--to is one axis"),  # the 16 was silently dropped
        (("28", "--to", "14", "--max-padding", "-1"), "--max-padding must be 0 or more, got -1"),
    ],
)
def test_solve_rejects_what_it_cannot_honour(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], message: str
) -> None:
    code, out, err = run(capsys, "solve", *argv)
    assert code == 2 and out == ""
    assert err.startswith("convarith solve: error: ") and message in err and err.count("\n") == 1


def test_solve_one_configuration_is_singular_and_rows_have_no_trailing_blanks(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # only kernel 1, stride 1 is searched: 28 -> 28 needs no padding
    code, out, _ = run(capsys, "solve", "28", "--to", "28", "--max-kernel", "1", "--max-stride", "1")
    assert code == 0
    assert out.startswith("1 configuration turns 28 into 28:")
    assert all(line == line.rstrip() for line in out.splitlines())


def test_summary_input_one_number_is_a_square(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    layers = tmp_path / "net.yaml"
    layers.write_text("input: [64, 64, 3]\nlayers:\n  - \"Conv2D(8, 3, strides=2, padding='same')\"\n")
    code, out, err = run(capsys, "summary", str(layers), "--input", "32", "--json")
    assert code == 0, err
    summary = json.loads(out)
    assert summary["input_size"] == [32, 32]
    # Keras 'same' with stride 2: ceil(32 / 2) = 16 per axis
    assert summary["layers"][-1]["output_shape"] == [None, 16, 16, 8]


def test_serve_on_a_taken_port_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("uvicorn")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # was: uvicorn's "ERROR: [Errno 98] ..." after the banner, and exit status 3
        code, out, err = run(capsys, "serve", "--port", str(port))
    assert code == 2 and out == ""
    assert err.startswith(f"convarith serve: error: cannot listen on 127.0.0.1:{port}: address already in use")
    assert err.count("\n") == 1


def test_serve_on_an_address_of_another_machine_is_one_line_and_status_2(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("uvicorn")
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never an address of this machine, and no DNS is asked
    code, out, err = run(capsys, "serve", "--host", "192.0.2.1", "--port", "8123")
    assert code == 2 and out == ""
    assert err.startswith("convarith serve: error: cannot listen on 192.0.2.1:8123: ")
    assert "check --host" in err and err.count("\n") == 1


@pytest.mark.parametrize("scheduler", ["bogus", "local:0"])
def test_apply_bad_scheduler_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, scheduler: str
) -> None:
    pytest.importorskip("dask")
    pytest.importorskip("zarr")
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((12, 12), dtype=np.float32))
    output = tmp_path / "out.zarr"
    code, out, err = run(capsys, "apply", str(image), str(output), "--preset", "blur",
                         "--scheduler", scheduler, "--no-progress")
    assert code == 2 and out == ""
    assert err.startswith("convarith apply: error: --scheduler") and err.count("\n") == 1
    # was: an empty store left behind, so the corrected command then said "already exists"
    assert not output.exists()


def test_warnings_are_one_line_without_source_file(tmp_path: Path) -> None:
    pytest.importorskip("dask")
    pytest.importorskip("zarr")
    image = tmp_path / "image.npy"
    np.save(image, np.zeros((12, 12), dtype=np.float32))
    # a separate process: pytest records warnings itself, so its stderr would not show them
    command = [sys.executable, "-c", "import sys; from convarith.cli import main; sys.exit(main())",
               "apply", str(image), str(tmp_path / "out.zarr"), "--preset", "box", "-k", "7",
               "--chunks", "4", "--no-progress"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    # 4-cell chunks are smaller than the 6-cell halo of a 7x7 kernel, on both axes
    assert len(lines) == 2, done.stderr
    assert all(line.startswith("convarith apply: warning: chunks along spatial axis") for line in lines)
    assert ".py:" not in done.stderr  # was "/.../apply.py:172: ChunkingWarning: ..." and the source line


@pytest.mark.parametrize(
    "argv",
    [
        ["tour", "-f", "-q", "--output", "page"],
        ["animate", "5", "-f", "--out", "page"],
        ["train", "-f", "-q", "-o", "page"],
        ["summary", "net.yaml", "-f", "--png", "page"],
        ["apply", "in.npy", "page", "-f", "-q"],
    ],
)
def test_writing_commands_share_their_short_flags(argv: list[str]) -> None:
    # -f/--force and -q/--quiet everywhere they apply; -o, --out and --output all name the output
    args = build_parser().parse_args(argv)
    assert args.force is True
    assert "page" in (getattr(args, "out", None), getattr(args, "output", None), getattr(args, "png", None))
    if "-q" in argv:
        assert getattr(args, "quiet", None) is True or getattr(args, "no_progress", None) is True
