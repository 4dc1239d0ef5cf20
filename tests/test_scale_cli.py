"""`convarith apply`: .npy / Zarr in, Zarr out, resumable, refuses to clobber."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("dask.array")
zarr = pytest.importorskip("zarr")

from convarith import ConvSpec  # noqa: E402
from convarith.cli import main  # noqa: E402
from convarith.engine import conv as engine_conv  # noqa: E402
from convarith.scale import store  # noqa: E402
from convarith.scale.presets import kernel_preset  # noqa: E402


@pytest.fixture
def image(tmp_path: Path) -> tuple[Path, np.ndarray]:
    values = np.random.default_rng(5).standard_normal((70, 53)).astype(np.float32)
    path = tmp_path / "image.npy"
    np.save(path, values)
    return path, values


def run(*argv: object) -> int:
    return main(["apply", *map(str, argv), "--no-progress"])


def test_npy_to_zarr_equals_the_engine(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, values = image
    out = tmp_path / "out.zarr"
    assert run(path, out, "--preset", "blur", "-k", "5", "-d", "2", "-s", "2", "-p", "same",
               "--padding-mode", "reflect", "--chunks", "16x20") == 0
    result = zarr.open_array(str(out), mode="r")
    spec = ConvSpec(5, dilation=2, strides=2, padding="same", padding_mode="reflect")
    expected = engine_conv(values[None, ..., None], kernel_preset("blur", (5, 5)), spec)[0, ..., 0]
    assert result.shape == expected.shape == (35, 27)
    np.testing.assert_allclose(result[:], expected, rtol=1e-5, atol=1e-6)
    assert result.attrs["convarith"]["complete"] is True
    assert not (out / store.MARKER_FOLDER).exists()


def test_zarr_group_with_weights_and_bias(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    values = rng.standard_normal((2, 30, 25, 3)).astype(np.float32)
    group = zarr.open_group(str(tmp_path / "in.zarr"), mode="w")
    group.create_array("pixels", shape=values.shape, chunks=(1, 8, 8, 3), dtype="float32")[:] = values
    kernel = rng.standard_normal((3, 2, 3, 4)).astype(np.float32)
    bias = rng.standard_normal(4).astype(np.float32)
    np.save(tmp_path / "k.npy", kernel)
    np.save(tmp_path / "b.npy", bias)
    out = tmp_path / "out.zarr"
    assert run(tmp_path / "in.zarr", out, "--component", "pixels", "--weights", tmp_path / "k.npy",
               "--bias", tmp_path / "b.npy", "-p", "1,2x0,1", "-s", "2x1") == 0
    spec = ConvSpec((3, 2), padding=((1, 2), (0, 1)), strides=(2, 1))
    expected = engine_conv(values, kernel, spec, bias=bias)
    np.testing.assert_allclose(zarr.open_array(str(out))[:], expected, rtol=1e-5, atol=1e-5)


def test_transposed_with_weights(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, values = image
    kernel = np.random.default_rng(4).standard_normal((4, 3, 2, 1)).astype(np.float32)
    np.save(tmp_path / "k.npy", kernel)
    out = tmp_path / "up.zarr"
    assert run(path, out, "--weights", tmp_path / "k.npy", "--transposed", "-s", "2",
               "-p", "same", "--chunks", "24") == 0
    spec = ConvSpec((4, 3), strides=2, padding="same", transposed=True)
    expected = engine_conv(values[None, ..., None], kernel, spec)[0]
    assert expected.shape == (140, 106, 2)
    np.testing.assert_allclose(zarr.open_array(str(out))[:], expected, rtol=1e-5, atol=1e-5)


def test_pooling(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, values = image
    out = tmp_path / "pool.zarr"
    assert run(path, out, "--pool", "max", "-k", "3", "-s", "2", "-p", "1", "--ceil-mode",
               "--scheduler", "synchronous") == 0
    spec = ConvSpec(3, strides=2, padding=1, pool="max", ceil_mode=True)
    expected = engine_conv(values[None, ..., None], None, spec)[0, ..., 0]
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], expected)


def test_existing_output_is_refused_without_force(
    image: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, values = image
    out = tmp_path / "out.zarr"
    assert run(path, out, "--preset", "identity") == 0
    before = zarr.open_array(str(out))[:]
    assert run(path, out, "--preset", "box") == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], before)
    assert run(path, out, "--preset", "box", "-k", "1", "--force") == 0
    np.testing.assert_array_equal(zarr.open_array(str(out))[:], values)


def test_force_never_deletes_something_that_is_not_a_zarr_store(
    image: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = image
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    assert run(path, folder, "--preset", "blur", "--force") == 2
    assert "is not a Zarr store" in capsys.readouterr().err
    assert (folder / "notes.txt").read_text() == "keep me"


def test_an_interrupted_run_resumes_and_skips_finished_chunks(
    image: tuple[Path, np.ndarray], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, values = image
    out = tmp_path / "out.zarr"
    flags = ("--preset", "sharpen", "-p", "same", "--chunks", "16", "--scheduler", "synchronous")
    real_write = store.write_block
    written: list[tuple[int, ...]] = []

    def interrupted_after_five(block_values: np.ndarray, target: str, block: tuple[int, ...],
                               chunks: tuple[int, ...]) -> int:
        if len(written) == 5:
            raise KeyboardInterrupt
        written.append(block)
        return real_write(block_values, target, block, chunks)

    monkeypatch.setattr(store, "write_block", interrupted_after_five)
    assert run(path, out, *flags) == 130
    assert len(os.listdir(out / store.MARKER_FOLDER)) == 5
    assert zarr.open_array(str(out)).attrs["convarith"]["complete"] is False
    # a chunk that was being written when the run stopped holds garbage and no marker
    row, col = next(b for b in np.ndindex(5, 4) if b not in written)
    unfinished = zarr.open_array(str(out), mode="r+")
    unfinished[row * 16:(row + 1) * 16, col * 16:(col + 1) * 16] = np.nan

    assert run(path, out, *flags) == 2
    assert "--resume" in capsys.readouterr().err

    def counting(block_values: np.ndarray, target: str, block: tuple[int, ...],
                 chunks: tuple[int, ...]) -> int:
        assert block not in written, f"block {block} was finished and must be skipped"
        return real_write(block_values, target, block, chunks)

    monkeypatch.setattr(store, "write_block", counting)
    assert run(path, out, *flags, "--resume") == 0
    assert "15 of 20 blocks written, 5 already done" in capsys.readouterr().out
    spec = ConvSpec(3, padding="same")
    expected = engine_conv(values[None, ..., None], kernel_preset("sharpen", (3, 3)), spec)[0, ..., 0]
    np.testing.assert_allclose(zarr.open_array(str(out))[:], expected, rtol=1e-5, atol=1e-5)
    assert run(path, out, *flags, "--resume") == 0
    assert "already complete" in capsys.readouterr().out


def test_resume_refuses_other_settings(
    image: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = image
    out = tmp_path / "out.zarr"
    assert run(path, out, "--preset", "blur") == 0
    assert run(path, out, "--preset", "edge", "--resume") == 2
    assert "other settings (kernel differ)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--weights", "KERNEL"), "kernel has shape (3, 3, 2, 1)"),
        (("--preset", "blur", "--pool", "max"), "--pool takes no kernel"),
        ((), "give a kernel"),
        (("--preset", "blur", "-k", "9", "-d", "9"), "kernel spans 73"),
        (("--preset", "blur", "--output-padding", "1"), "applies to a transposed"),
    ],
)
def test_bad_input_leaves_no_output(
    image: tuple[Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...], message: str,
) -> None:
    path, _ = image
    np.save(tmp_path / "k.npy", np.ones((3, 3, 2, 1), np.float32))  # two input channels: wrong
    extra = tuple(str(tmp_path / "k.npy") if e == "KERNEL" else e for e in extra)
    out = tmp_path / "out.zarr"
    assert run(path, out, *extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_chunks_smaller_than_the_halo_warn(image: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    path, values = image
    with pytest.warns(UserWarning, match="smaller than the convolution's halo"):
        assert run(path, tmp_path / "o.zarr", "--preset", "box", "-k", "7", "--chunks", "4") == 0
    spec = ConvSpec(7)
    expected = engine_conv(values[None, ..., None], kernel_preset("box", (7, 7)), spec)[0, ..., 0]
    np.testing.assert_allclose(zarr.open_array(str(tmp_path / "o.zarr"))[:], expected, rtol=1e-5, atol=1e-6)


def test_presets_are_what_their_names_say() -> None:
    flat = np.ones((9, 9))
    for name, on_flat in (("identity", 1.0), ("box", 1.0), ("blur", 1.0), ("sharpen", 1.0), ("edge", 0.0)):
        kernel = kernel_preset(name, (3, 3))
        assert kernel.shape == (3, 3, 1, 1)
        assert np.isclose((kernel[..., 0, 0] * flat[:3, :3]).sum(), on_flat), name
    np.testing.assert_allclose(kernel_preset("blur", (3,))[:, 0, 0], [0.25, 0.5, 0.25])
    assert kernel_preset("edge", (3, 3), channels=4).shape == (3, 3, 1, 4)
    with pytest.raises(ValueError, match="preset must be one of"):
        kernel_preset("emboss", (3, 3))
