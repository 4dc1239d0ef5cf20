"""`convarith apply` never destroys or alters its input, and refuses what it cannot convolve.

Every spelling of "the output is the input" (same path, trailing slash, ``..``,
``.``, a symbolic link either way, a hard link, nested either way) is refused
with exit status 2 before anything is written, with and without ``--force``;
the input's bytes are checked unchanged. Dtypes that cannot be convolved are
refused before the output store exists; the accepted ones agree with the
engine run on ``float32`` copies.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

from convarith import ConvSpec  # noqa: E402
from convarith.cli import main  # noqa: E402
from convarith.engine import conv as engine_conv  # noqa: E402
from convarith.scale.presets import kernel_preset  # noqa: E402
from convarith.scale.store import check_convolvable, check_separate  # noqa: E402


def run(*argv: object) -> int:
    return main(["apply", *map(str, argv), "--no-progress"])


def digest(path: Path) -> str:
    """Hash of every file under ``path`` (names and bytes), or of the file itself."""
    sha = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        sha.update(str(file.relative_to(path.parent)).encode())
        sha.update(file.read_bytes())
    return sha.hexdigest()


def make_zarr_input(folder: Path, shape: tuple[int, ...] = (24, 20)) -> Path:
    path = folder / "in.zarr"
    array = zarr.open_array(str(path), mode="w", shape=shape, chunks=(8,) * len(shape), dtype="float32")
    array[:] = np.random.default_rng(len(shape)).standard_normal(shape).astype(np.float32)
    return path


def make_npy_input(folder: Path, shape: tuple[int, ...] = (24, 20)) -> Path:
    path = folder / "in.npy"
    np.save(path, np.random.default_rng(sum(shape)).standard_normal(shape).astype(np.float32))
    return path


# Each case: (name, build(folder) -> (input argument, output argument)); run from inside ``folder``.
Case = Callable[[Path], tuple[str, str]]


def _same(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    return "in.zarr", "in.zarr"


def _trailing_slash(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    return "in.zarr", "in.zarr/"


def _dot_dot(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    (folder / "sub").mkdir()
    return "in.zarr", "sub/../in.zarr"


def _dot_dot_missing_folder(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    return "./in.zarr", "nowhere/../in.zarr"


def _absolute_and_relative(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    return str(folder / "in.zarr"), "./in.zarr"


def _output_symlink_to_input(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    os.symlink(folder / "in.zarr", folder / "out.zarr")
    return "in.zarr", "out.zarr"


def _input_symlink_to_output(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    os.symlink("in.zarr", folder / "link.zarr")
    return "link.zarr", "in.zarr"


def _symlinked_parent(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    os.symlink(folder, folder / "alias")
    return "in.zarr", "alias/in.zarr"


def _output_inside_input(folder: Path) -> tuple[str, str]:
    make_zarr_input(folder)
    return "in.zarr", "in.zarr/result.zarr"


def _input_inside_output_store(folder: Path) -> tuple[str, str]:
    # an old output store that someone put the input into
    make_zarr_input(folder)
    old = zarr.open_array(str(folder / "out.zarr"), mode="w", shape=(2, 2), chunks=(2, 2), dtype="f4")
    old[:] = 0
    os.rename(folder / "in.zarr", folder / "out.zarr" / "in.zarr")
    return "out.zarr/in.zarr", "out.zarr"


def _npy_inside_output_store(folder: Path) -> tuple[str, str]:
    zarr.open_array(str(folder / "out.zarr"), mode="w", shape=(2, 2), chunks=(2, 2), dtype="f4")
    np.save(folder / "out.zarr" / "in.npy", np.ones((24, 20), np.float32))
    return "out.zarr/in.npy", "out.zarr/"


def _npy_same_path(folder: Path) -> tuple[str, str]:
    make_npy_input(folder)
    return "in.npy", "./in.npy"


def _hard_link_file(folder: Path) -> tuple[str, str]:
    make_npy_input(folder)
    os.link(folder / "in.npy", folder / "twin.npy")
    return "in.npy", "twin.npy"


def _hard_link_inside_output(folder: Path) -> tuple[str, str]:
    make_npy_input(folder)
    zarr.open_array(str(folder / "out.zarr"), mode="w", shape=(2, 2), chunks=(2, 2), dtype="f4")
    os.link(folder / "in.npy", folder / "out.zarr" / "kept.npy")
    return "in.npy", "out.zarr"


CASES: dict[str, Case] = {
    "same": _same, "trailing-slash": _trailing_slash, "dot-dot": _dot_dot,
    "dot-dot-missing-folder": _dot_dot_missing_folder, "absolute-vs-relative": _absolute_and_relative,
    "output-symlink-to-input": _output_symlink_to_input, "input-symlink-to-output": _input_symlink_to_output,
    "symlinked-parent": _symlinked_parent, "output-inside-input": _output_inside_input,
    "input-inside-output": _input_inside_output_store, "npy-inside-output": _npy_inside_output_store,
    "npy-same-path": _npy_same_path, "hard-link": _hard_link_file,
    "hard-link-inside-output": _hard_link_inside_output,
}


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_output_that_is_the_input_is_refused_and_the_input_survives(
    name: str, force: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    source, target = CASES[name](tmp_path)
    real_source = Path(os.path.realpath(source))
    before = digest(real_source)
    listing = sorted(str(p) for p in tmp_path.rglob("*"))
    status = run(source, target, "--preset", "blur", *(["--force"] if force else []))
    message = capsys.readouterr().err
    assert status == 2, message
    assert "input" in message and "Traceback" not in message
    assert digest(real_source) == before
    assert sorted(str(p) for p in tmp_path.rglob("*")) == listing  # nothing created or removed


def test_the_check_runs_before_the_input_is_even_opened(tmp_path: Path) -> None:
    # a path that is no array at all is still refused for what matters most
    with pytest.raises(ValueError, match="is the input"):
        check_separate(tmp_path / "a", tmp_path / "b" / ".." / "a")


def test_separate_paths_pass(tmp_path: Path) -> None:
    make_zarr_input(tmp_path)
    (tmp_path / "in.zarr.old").mkdir()
    check_separate(tmp_path / "in.zarr", tmp_path / "in.zarr.old")  # a shared prefix is not nesting
    check_separate(tmp_path / "in.zarr", tmp_path / "in.zarr2")
    check_separate(tmp_path / "in.zarr", tmp_path / "in")


def test_force_still_replaces_an_old_output_beside_the_input(tmp_path: Path) -> None:
    source = make_zarr_input(tmp_path)
    before = digest(source)
    assert run(source, tmp_path / "out.zarr", "--preset", "blur") == 0
    assert run(source, tmp_path / "out.zarr", "--preset", "box", "--force") == 0
    assert digest(source) == before
    values = zarr.open_array(str(source), mode="r")[:]
    expected = engine_conv(values[None, ..., None], kernel_preset("box", (3, 3)), ConvSpec(3))[0, ..., 0]
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:], expected,
                               rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- dtypes

REFUSED: dict[str, Callable[[tuple[int, ...]], np.ndarray]] = {
    "complex64": lambda s: (np.ones(s) + 1j).astype(np.complex64),
    "complex128": lambda s: np.ones(s) * (2 - 3j),
    "unicode": lambda s: np.full(s, "7"),
    "bytes": lambda s: np.full(s, b"7"),
    "datetime": lambda s: np.zeros(s, "datetime64[s]"),
    "timedelta": lambda s: np.zeros(s, "timedelta64[ms]"),
    "record": lambda s: np.zeros(s, [("a", "f4"), ("b", "i2")]),
    "object": lambda s: np.full(s, 1.5, dtype=object),
}


@pytest.mark.parametrize("shape", [(9, 7), (2, 9, 7, 3)], ids=["2d", "batched"])
@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_input_dtype_that_cannot_be_convolved_is_refused_before_the_output_exists(
    kind: str, shape: tuple[int, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    values = REFUSED[kind](shape)
    source = tmp_path / "in.npy"
    np.save(source, values, allow_pickle=kind == "object")
    status = run(source, tmp_path / "out.zarr", "--preset", "blur", "--dtype", "float64")
    message = capsys.readouterr().err
    assert status == 2 and "Traceback" not in message
    assert "in.npy" in message
    assert not (tmp_path / "out.zarr").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.npy"]  # no temporary store left either


@pytest.mark.parametrize("kind", ["complex64", "unicode", "datetime"])
def test_zarr_input_of_a_refused_dtype(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    values = REFUSED[kind]((8, 8))
    try:
        array = zarr.open_array(str(tmp_path / "in.zarr"), mode="w", shape=values.shape, chunks=(4, 4),
                                dtype=values.dtype)
        array[:] = values
    except Exception as error:  # this zarr version cannot store the dtype at all
        pytest.skip(f"zarr cannot store {values.dtype}: {error}")
    assert run(tmp_path / "in.zarr", tmp_path / "out.zarr", "--preset", "blur") == 2
    assert "dtype" in capsys.readouterr().err
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("which", ["--weights", "--bias"])
def test_complex_weights_or_bias_are_refused(which: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = make_npy_input(tmp_path)
    kernel = np.ones((3, 3, 1, 1), np.float32)
    bias = np.ones(1, np.float32)
    if which == "--weights":
        kernel = kernel * (1 + 1j)
    else:
        bias = bias * 1j
    np.save(tmp_path / "k.npy", kernel)
    np.save(tmp_path / "b.npy", bias)
    assert run(source, tmp_path / "out.zarr", "--weights", tmp_path / "k.npy", "--bias", tmp_path / "b.npy") == 2
    message = capsys.readouterr().err
    assert which in message and "complex" in message
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int16", "uint16", "int32", "int64", "float32",
                                   "float64"])
def test_accepted_dtypes_agree_with_the_engine(dtype: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(len(dtype))
    values = (rng.integers(0, 2, (13, 11)) if dtype == "bool" else rng.integers(0, 100, (13, 11))).astype(dtype)
    np.save(tmp_path / "in.npy", values)
    assert run(tmp_path / "in.npy", tmp_path / "out.zarr", "--preset", "sharpen", "-p", "same") == 0
    result = zarr.open_array(str(tmp_path / "out.zarr"), mode="r")[:]
    compute = np.float64 if dtype == "float64" else np.float32
    expected = engine_conv(values.astype(compute)[None, ..., None], kernel_preset("sharpen", (3, 3), 1, compute),
                           ConvSpec(3, padding="same"))[0, ..., 0]
    assert result.dtype == compute
    np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-4)


def test_check_convolvable_names_the_rule() -> None:
    for kind, make in REFUSED.items():
        with pytest.raises(ValueError, match="has dtype") as error:
            check_convolvable(make((1,)).dtype, "thing")
        assert "thing" in str(error.value), kind
    for dtype in ("bool", "int8", "uint64", "float16", "float32", "float64"):
        assert check_convolvable(dtype, "x") == np.dtype(dtype)


@pytest.mark.parametrize("force", [True, False], ids=["force", "no-force"])
def test_output_that_is_a_link_to_another_store_is_refused(force: bool, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    source = make_npy_input(tmp_path)
    elsewhere = tmp_path / "kept.zarr"
    zarr.open_array(str(elsewhere), mode="w", shape=(2, 2), chunks=(2, 2), dtype="f4")[:] = 7
    os.symlink(elsewhere, tmp_path / "out.zarr")
    before = digest(elsewhere)
    assert run(source, tmp_path / "out.zarr", "--preset", "blur", *(["--force"] if force else [])) == 2
    assert "symbolic link" in capsys.readouterr().err
    assert digest(elsewhere) == before and (tmp_path / "out.zarr").is_symlink()
