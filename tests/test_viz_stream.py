"""Animations are drawn and encoded one frame at a time, and every size and rate is bounded.

The redrawn canvas of :class:`~convarith.viz.stream.FrameStream` is compared
pixel for pixel with :class:`~convarith.viz.render.RasterRenderer` drawing
each whole frame, over generated configurations (kernel, stride, dilation,
padding, transposition, pooling, view, values, sampling); the APNG (lossless)
decodes to exactly those frames, the GIF to them up to its 32-colour palette.
Streaming is checked structurally: each frame's bytes reach the file before
the next frame is drawn.
"""

from __future__ import annotations

import io
import math
import os
import random

import numpy as np
import pytest

PIL = pytest.importorskip("PIL")
from PIL import Image, ImageSequence  # noqa: E402

from convarith import ConvSpec, animate  # noqa: E402
from convarith.cli import main  # noqa: E402
from convarith.limits import limits  # noqa: E402
from convarith.viz.render import RasterRenderer  # noqa: E402
from convarith.viz.stream import FrameStream, frame_duration_ms, write_apng, write_gif  # noqa: E402

CI = os.environ.get("CI") == "true"
SEED = int(os.environ.get("CONVARITH_SEED", "20261206"))


def random_case(rng: random.Random) -> tuple[ConvSpec, tuple[int, ...], dict[str, object], int]:
    rank = rng.choice([1, 2, 2, 2])
    kernel = rng.randint(1, 4)
    kind = rng.choice(["conv", "conv", "transposed", "scatter", "pool"])
    kwargs: dict[str, object] = {"strides": rng.randint(1, 3), "dilation": 1}
    if kind == "pool":
        kwargs["pool"] = rng.choice(["max", "avg"])
        kwargs["strides"] = rng.randint(1, kernel)
    else:
        kwargs["dilation"] = rng.randint(1, 2)
    if kind in ("transposed", "scatter"):
        kwargs["transposed"] = True
        kwargs["padding"] = rng.choice(["valid", "same", 0])
        kwargs["dilation"] = 1
    else:
        kwargs["padding"] = rng.choice(["valid", "same", 1]) if kind != "pool" else "valid"
        if kwargs["padding"] == "same" and kind == "conv" and kwargs["strides"] > 1 and kwargs["dilation"] > 1:
            kwargs["dilation"] = 1
    spec = ConvSpec(kernel, rank=rank, **kwargs)  # type: ignore[arg-type]
    span = (kernel - 1) * int(kwargs["dilation"]) + 1  # type: ignore[call-overload]
    size = tuple(rng.randint(max(span, 2), span + 4) for _ in range(rank))
    if kwargs.get("transposed"):
        size = tuple(rng.randint(2, 3) for _ in range(rank))
    options: dict[str, object] = {"view": rng.choice(["oblique", "flat"]), "values": rng.random() < 0.3}
    if kind == "scatter":
        options["view"] = "scatter"
    return spec, size, options, rng.choice([1, 1, 2, 3])


CASES = 6 if CI else 24


@pytest.mark.parametrize("number", range(CASES))
def test_streamed_frames_equal_whole_frames(number: int) -> None:
    rng = random.Random(SEED * 1000 + number)
    spec, size, options, every = random_case(rng)
    label = f"seed {SEED}, case {number}: {spec!r} on {size}, {options}, every={every}"
    try:
        movie = animate(spec, size, every=every, **options)  # type: ignore[arg-type]
    except ValueError as error:  # a configuration the spec refuses (e.g. kernel over the input)
        pytest.skip(f"{label}: {error}")
    renderer = RasterRenderer(movie.scene, scale=movie.scale)
    steps = list(movie.steps)
    previous = None
    for step, (canvas, boxes) in zip(steps, FrameStream(renderer, steps)):
        expected = np.asarray(renderer.frame(step))
        got = np.asarray(canvas)
        assert np.array_equal(got, expected), f"{label}: step {step} differs"
        if previous is not None:  # outside the boxes nothing changed
            outside = np.ones(got.shape[:2], dtype=bool)
            for left, top, right, bottom in boxes:
                outside[top:bottom, left:right] = False
            assert np.array_equal(got[outside], previous[outside]), f"{label}: step {step} outside boxes"
        previous = got.copy()


def test_apng_decodes_to_the_exact_frames_and_gif_to_close_ones() -> None:
    movie = animate(ConvSpec(3, strides=2, padding="same"), (6, 5), values=True)
    renderer = RasterRenderer(movie.scene)
    expected = [np.asarray(renderer.frame(i)).astype(int) for i in range(len(movie))]
    apng = Image.open(io.BytesIO(movie.to_apng()))
    assert apng.n_frames == len(movie) and apng.info["loop"] == 0
    for i, frame in enumerate(ImageSequence.Iterator(apng)):
        assert np.array_equal(np.asarray(frame.convert("RGB")).astype(int), expected[i]), i
    gif = Image.open(io.BytesIO(movie.to_gif()))
    assert gif.n_frames == len(movie) and gif.info["loop"] == 0
    for i, frame in enumerate(ImageSequence.Iterator(gif)):
        difference = np.abs(np.asarray(frame.convert("RGB")).astype(int) - expected[i])
        assert difference.mean() < 3, i  # 32 shared colours: antialiased edges move a little
        assert frame.info["duration"] == frame_duration_ms(movie.fps) // 10 * 10  # GIF: 10 ms units


@pytest.mark.parametrize("writer", [write_gif, write_apng], ids=["gif", "apng"])
def test_each_frame_is_written_before_the_next_is_drawn(writer) -> None:  # type: ignore[no-untyped-def]
    movie = animate(ConvSpec(3), (7, 7))
    written_when_drawn: list[int] = []
    stream = io.BytesIO()

    class Watched(FrameStream):
        def __iter__(self):  # type: ignore[no-untyped-def]
            for item in super().__iter__():
                written_when_drawn.append(stream.tell())
                yield item

    writer(stream, Watched(RasterRenderer(movie.scene)), 2.0)
    assert len(written_when_drawn) == len(movie) == 25
    assert all(b > a for a, b in zip(written_when_drawn, written_when_drawn[1:]))


@pytest.mark.parametrize("fps", [0.001, 0.0, -1.0, 50.5, float("nan"), float("inf"), True, "2"])
def test_fps_outside_its_range_is_refused(fps: object) -> None:
    with pytest.raises(ValueError, match="fps must be a number in"):
        animate(ConvSpec(3), (4, 4), fps=fps)  # type: ignore[arg-type]


@pytest.mark.parametrize("fps, milliseconds", [(0.01, 100_000), (50, 20), (3, 330)])  # GIF: 10 ms units
def test_fps_at_its_bounds_encodes(fps: float, milliseconds: int) -> None:
    gif = Image.open(io.BytesIO(animate(ConvSpec(3), (4, 4), fps=fps).to_gif()))
    assert gif.info["duration"] == milliseconds


def test_frame_limit_is_refused_up_front_and_can_be_raised() -> None:
    with limits(max_animation_frames=15):
        with pytest.raises(ValueError, match=r"16 steps .* max_animation_frames=15.*smaller input"):
            animate(ConvSpec(3), (6, 6))
        assert len(animate(ConvSpec(3), (5, 5))) == 9
    with limits(max_animation_frames=16):
        assert len(animate(ConvSpec(3), (6, 6))) == 16
    with pytest.raises(ValueError, match="max_animation_frames=4,096"):
        animate(ConvSpec(1), (65, 64))


def test_picture_size_is_refused_before_drawing() -> None:
    with pytest.raises(ValueError, match=r"max_picture_pixels.*smaller scale"):
        animate(ConvSpec(3), (28, 28), scale=8)
    movie = animate(ConvSpec(3), (28, 28))
    with pytest.raises(ValueError, match=r"sheet of 676 steps.*--every"):
        movie.to_png()
    with limits(max_picture_pixels=1000):
        with pytest.raises(ValueError, match="max_picture_pixels=1,000"):
            animate(ConvSpec(3), (5, 5))


@pytest.mark.parametrize("every", [1, 2, 3, 5, 100])
def test_every_draws_every_kth_step(every: int, tmp_path) -> None:  # type: ignore[no-untyped-def]
    movie = animate(ConvSpec(3, strides=2, padding="same"), (6, 6), every=every)
    path = movie.save(tmp_path / "a.gif")
    assert Image.open(path).n_frames == math.ceil(len(movie) / every) == len(movie.steps)
    if every == 1:
        assert movie.save(tmp_path / "a.svg").read_text().startswith("<svg")
    else:
        with pytest.raises(ValueError, match="every"):
            movie.save(tmp_path / "a.svg")


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_every_must_be_a_positive_integer(every: object) -> None:
    with pytest.raises(ValueError, match="every must be a positive integer"):
        animate(ConvSpec(3), (4, 4), every=every)  # type: ignore[arg-type]


@pytest.mark.parametrize("argv, words", [
    (["--fps", "0.001"], "fps"),
    (["--fps", "1e9"], "fps"),
    (["--scale", "9"], "scale"),
    (["--groups", "2"], "--groups 2"),
    (["--every", "0"], "every"),
])
def test_cli_refuses_with_one_line(argv: list[str], words: str, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    status = main(["animate", "6", "-k", "3", "-o", str(tmp_path / "x.gif"), *argv])
    message = capsys.readouterr().err
    assert status == 2 and words in message and len(message.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_every(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["animate", "6", "-k", "3", "--every", "4", "-o", str(tmp_path / "x.gif")]) == 0
    assert "4 of 16 steps" in capsys.readouterr().err
    assert Image.open(tmp_path / "x.gif").n_frames == 4
