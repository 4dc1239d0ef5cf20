"""Pictures: what the pixels show, the file formats, atomic saving and the animate command."""

from __future__ import annotations

import io
import math
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from convarith import ConvSpec, animate  # noqa: E402
from convarith._atomic import atomic_path, write_atomic  # noqa: E402
from convarith.cli import main  # noqa: E402
from convarith.viz.scene import PALETTE  # noqa: E402


def _rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _near_line(point, lines, distance=3.0):
    px, py = point
    for (x0, y0), (x1, y1) in lines:
        dx, dy = x1 - x0, y1 - y0
        t = max(0.0, min(1.0, ((px - x0) * dx + (py - y0) * dy) / ((dx * dx + dy * dy) or 1.0)))
        if math.hypot(px - x0 - t * dx, py - y0 - t * dy) < distance:
            return True
    return False


@pytest.mark.parametrize("view", ["flat", "oblique"])
@pytest.mark.parametrize(("spec", "size"), [
    (ConvSpec(3, padding="same", strides=2), (5, 5)),
    (ConvSpec(3, dilation=2), (7, 7)),
    (ConvSpec(3, strides=2, padding=1, transposed=True), (3, 3)),
    (ConvSpec((2, 3), strides=(1, 2), padding=((0, 1), (2, 0))), (4, 5)),
])
def test_pixels_show_the_window_padding_and_input(spec, size, view):
    movie = animate(spec, size, view=view)
    board = movie.storyboard
    scene = movie.scene
    cells = scene.shapes[:len(board.grid_cells)]
    for step in (0, len(movie) // 2, len(movie) - 1):
        image = movie.image(step)
        frame = movie.frames[step]
        lines = [s.points for s in scene.visible(step) if s.kind == "line"]
        window = dict(zip(frame.window, frame.sources))
        for cell, shape in zip(board.grid_cells, cells):
            centre = (sum(p[0] for p in shape.points) / 4, sum(p[1] for p in shape.points) / 4)
            if _near_line(centre, lines):
                continue
            if cell.position in window:
                expected = PALETTE.input_read if window[cell.position] is not None else PALETTE.padding_read
            else:
                expected = PALETTE.input if cell.kind == "input" else PALETTE.padding
            got = image.getpixel((round(centre[0]), round(centre[1])))
            assert max(abs(a - b) for a, b in zip(got, _rgb(expected))) <= 6, (step, cell, got, expected)


def test_output_cells_show_progress():
    movie = animate(ConvSpec(3, padding="same", strides=2), (5, 5), view="flat")
    upper = [s for s in movie.scene.shapes if s.kind == "polygon" and s.fill == PALETTE.output]
    assert len(upper) == 9
    image = movie.image(4)  # output (1, 1): cells 0..3 done, 4 current, 5..8 waiting
    for index, shape in enumerate(upper):
        centre = (round(sum(p[0] for p in shape.points) / 4), round(sum(p[1] for p in shape.points) / 4))
        expected = PALETTE.output_done if index < 4 else PALETTE.output_target if index == 4 else PALETTE.output
        got = image.getpixel(centre)
        if _near_line(centre, [s.points for s in movie.scene.visible(4) if s.kind == "line"]):
            continue
        assert max(abs(a - b) for a, b in zip(got, _rgb(expected))) <= 6, index


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True)
@given(
    rank=st.sampled_from([1, 2, 3]), kernel=st.integers(1, 3), stride=st.integers(1, 2),
    dilation=st.integers(1, 2), padding=st.sampled_from(["valid", "same", "full", 1]),
    size=st.integers(2, 5), view=st.sampled_from(["oblique", "flat"]), values=st.booleans(),
)
def test_any_configuration_renders(rank, kernel, stride, dilation, padding, size, view, values):
    try:
        spec = ConvSpec(kernel, strides=stride, dilation=dilation, padding=padding, rank=rank)
        resolved = spec.resolve(size)
    except ValueError:
        assume(False)
    movie = animate(resolved, view=view, values=values)
    assert len(movie) == math.prod(resolved.output_size)
    image = movie.image(len(movie) - 1)
    assert image.size[0] > 100 and image.size[1] > 100
    ET.fromstring(movie.frame(0).to_svg())


def test_save_formats(tmp_path):
    movie = animate(ConvSpec(3, padding="same", strides=2), (5, 5))
    gif = movie.save(tmp_path / "a.gif")
    with Image.open(gif) as image:
        assert image.n_frames == 9 and image.info["loop"] == 0
        assert image.info["duration"] == 1000
    apng = movie.save(tmp_path / "a.apng")
    with Image.open(apng) as image:
        assert image.format == "PNG" and image.n_frames == 9
    strip = movie.save(tmp_path / "strip.png")
    one = movie.save(tmp_path / "one.png", step=3)
    with Image.open(strip) as sheet, Image.open(one) as still:
        width, height = still.size
        assert sheet.size == (3 * width + 2 * 6, 3 * height + 2 * 6)  # 3×3 steps, like the output
    svg = movie.save(tmp_path / "a.svg").read_text()
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    assert "<script" not in svg and "@keyframes" in svg and "animate" not in svg.replace("animation", "")
    # one group of window cells per step
    assert sum(f'class="s{i}_{i + 1}"' in svg for i in range(9)) == 9
    still = movie.save(tmp_path / "b.svg", step=2).read_text()
    assert "@keyframes" not in still
    with pytest.raises(ValueError, match="format"):
        movie.save(tmp_path / "a.bmp")


def test_jupyter_hooks():
    movie = animate(ConvSpec(3), (4, 4))
    assert movie._repr_html_().startswith('<img src="data:image/gif;base64,')
    assert movie._repr_svg_().startswith("<svg")
    assert movie._repr_png_().startswith(b"\x89PNG")
    assert movie.frame(1)._repr_png_().startswith(b"\x89PNG")
    assert movie.frame(-1).step == 3
    with pytest.raises(IndexError, match="outside"):
        movie.frame(4)


def test_no_overwrite_without_force(tmp_path):
    movie = animate(ConvSpec(3), (4, 4))
    target = tmp_path / "a.gif"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="force"):
        movie.save(target)
    assert target.read_bytes() == b"keep me"
    movie.save(target, force=True)
    assert target.read_bytes().startswith(b"GIF89a")


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failed_write_leaves_no_file(tmp_path, error):
    target = tmp_path / "out.bin"

    def half_then_fail(stream):
        stream.write(b"half")
        raise error

    with pytest.raises(type(error)):
        write_atomic(target, half_then_fail)
    assert os.listdir(tmp_path) == []
    target.write_bytes(b"old")
    with pytest.raises(type(error)):
        write_atomic(target, half_then_fail, force=True)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_interrupted_animation_save_leaves_nothing(tmp_path, monkeypatch):
    import convarith.viz.animation as animation

    def interrupted(stream, *args, **kwargs):
        stream.write(b"GIF89a half")  # frames are streamed: part of the file is written
        raise KeyboardInterrupt

    monkeypatch.setattr(animation, "write_gif", interrupted)
    with pytest.raises(KeyboardInterrupt):
        animate(ConvSpec(3), (4, 4)).save(tmp_path / "a.gif")
    assert os.listdir(tmp_path) == []


def test_atomic_path_and_types(tmp_path):
    with atomic_path(tmp_path / "x.txt") as temporary:
        assert temporary.parent == tmp_path and not (tmp_path / "x.txt").exists()
        temporary.write_text("done")
    assert (tmp_path / "x.txt").read_text() == "done"
    with pytest.raises(TypeError, match="data"):
        write_atomic(tmp_path / "y", 42)  # type: ignore[arg-type]
    with pytest.raises(IsADirectoryError):
        write_atomic(tmp_path, b"")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_atomic(tmp_path / "missing" / "z", b"")


def test_animate_argument_errors():
    with pytest.raises(TypeError, match="input_shape"):
        animate(ConvSpec(3))
    with pytest.raises(ValueError, match="view"):
        animate(ConvSpec(3), 5, view="isometric")
    with pytest.raises(ValueError, match="not transposed"):
        animate(ConvSpec(3), 5, view="scatter")
    with pytest.raises(ValueError, match="fps"):
        animate(ConvSpec(3), 5, fps=0)
    with pytest.raises(ValueError, match="frames"):
        animate(ConvSpec(1), (100, 100))


# --------------------------------------------------------------------------- the command


def test_cli_animate_writes_and_refuses_to_overwrite(tmp_path, capsys):
    target = tmp_path / "padding_strides.gif"
    assert main(["animate", "5", "-k", "3", "-p", "same", "-s", "2", "-o", str(target)]) == 0
    with Image.open(target) as image:
        assert image.n_frames == 9
    capsys.readouterr()
    assert main(["animate", "5", "-k", "3", "-p", "same", "-s", "2", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--force" in err
    assert main(["animate", "5", "-k", "3", "-o", str(target), "--force", "--fps", "4"]) == 0
    with Image.open(target) as image:
        assert image.info["duration"] == 250


@pytest.mark.parametrize("argv", [
    ["animate", "5", "-k", "9", "-o", "x.gif"],             # kernel larger than the input
    ["animate", "5", "-o", "x.txt"],                         # unknown format
    ["animate", "5", "-p", "sideways", "-o", "x.gif"],       # bad padding
    ["animate", "-o", "x.gif"],                               # no size
    ["animate", "5", "-o", "missing/x.gif"],                  # no such folder
    ["animate", "5", "--view", "scatter", "-o", "x.gif"],    # scatter needs --transposed
])
def test_cli_animate_errors_are_one_line_exit_2(argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("convarith animate: error:") and err.count("\n") == 1
    assert os.listdir(tmp_path) == []


def test_cli_animate_views_and_values(tmp_path):
    out = tmp_path / "t.svg"
    assert main(["animate", "3", "-k", "3", "-s", "2", "-p", "1", "--transposed", "--view", "scatter",
                 "--values", "-o", str(out)]) == 0
    svg = out.read_text()
    assert "crop 1" in svg and "(scatter)" in svg
    assert main(["animate", "8", "--rank", "1", "-k", "3", "-d", "2", "-p", "causal", "--view", "flat",
                 "-o", str(tmp_path / "c.png"), "--step", "0"]) == 0
    with Image.open(tmp_path / "c.png") as image:
        assert image.size[0] > image.size[1] / 2


def test_still_png_bytes_are_a_png():
    data = animate(ConvSpec(3), (4, 4)).to_png(step=0)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"


def test_specs_display_as_pictures():
    spec = ConvSpec(3, strides=2, padding="same")
    assert spec._repr_png_().startswith(b"\x89PNG")
    assert spec._repr_svg_().startswith("<svg")
    # a big input is previewed on a small one: same geometry, few frames
    big = spec.resolve((224, 224))
    assert "input 5×5" in big._repr_svg_()
    small = ConvSpec(3, dilation=2).resolve((8, 8))
    assert "input 8×8" in small._repr_svg_()


# --------------------------------------------------------------------------- pictures that say what is computed


def test_max_pooling_marks_the_maximum_and_shows_no_weights():
    """Each step outlines the cell max pooling picks (numpy's argmax over the -inf padded
    window, first on ties) and writes no ×weight labels: a pool has no weights."""
    from convarith import explain
    from convarith.viz.frames import build_frames
    from convarith.viz.scene import PALETTE, build_scene, max_position

    seed = 20
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 9, size=(5, 5)).astype(float)
    spec = ConvSpec(2, strides=2, pool="max", padding=((0, 1), (0, 1)))
    resolved = spec.resolve((5, 5))
    board = build_frames(resolved, input_values=x)
    scene = build_scene(board, explain(spec, (5, 5)))
    padded = np.full((6, 6), -np.inf)
    padded[:5, :5] = x
    for frame in board.frames:
        r, c = frame.index
        window = padded[2 * r:2 * r + 2, 2 * c:2 * c + 2]
        want = np.unravel_index(int(np.argmax(window)), window.shape)
        winner = (2 * r + int(want[0]), 2 * c + int(want[1]))
        marks = [s for s in scene.shapes if s.kind == "polygon" and s.stroke == PALETTE.gap
                 and s.start == frame.step]
        assert len(marks) == 1, (seed, frame.index)
        assert max_position(frame, board) == winner, (seed, frame.index)
    texts = [s.text for s in scene.shapes if s.kind == "text"]
    assert not any(t.startswith("×") for t in texts)
    assert "−∞" in texts  # the padding of a max pool is -inf, not 0


def test_dropped_rows_are_drawn_and_named():
    """animate 6 -k 3 -s 2 -p valid: the last row and column are never read (6 - 3 is odd)."""
    from convarith import explain
    from convarith.viz.frames import build_frames
    from convarith.viz.scene import PALETTE, build_scene

    spec = ConvSpec(3, strides=2)
    board = build_frames(spec.resolve((6, 6)))
    scene = build_scene(board, explain(spec, (6, 6)))
    dropped = [s for s in scene.shapes if s.kind == "polygon" and s.fill == PALETTE.dropped]
    assert len(dropped) == 6 + 6 - 1
    assert any("last 1 row and 1 column never read (dropped)" in (s.text or "") for s in scene.shapes)


def test_3d_slices_are_laid_out_in_rows_not_one_strip():
    """7 padded depth slices: 3 + 3 + 1 in rows, so the picture is not a strip 5x wider than high."""
    spec = ConvSpec(3, padding="same", strides=2, rank=3)
    movie = animate(spec, (5, 5, 5))
    assert movie.scene.width / movie.scene.height < 2.0, (movie.scene.width, movie.scene.height)
    labels = [s for s in movie.scene.shapes if s.kind == "text" and (s.text or "").startswith("depth ")]
    spots = {(round(s.points[0][0]), round(s.points[0][1])) for s in labels}
    assert len(spots) == len(labels) == 7 + 3  # no two depth labels at the same place
    assert all(0 <= x <= movie.scene.width and 0 <= y <= movie.scene.height for x, y in spots)


def _cell_polygons(scene, fill):
    return [shape.points for shape in scene.shapes if shape.kind == "polygon" and shape.fill == fill]


@pytest.mark.parametrize(("argv", "size"), [
    (["9", "--rank", "1", "-k", "3", "-p", "same", "-s", "2"], 9),
    (["28", "--rank", "1", "-k", "5", "-d", "2"], 28),
    (["4", "--rank", "1", "-k", "3", "-s", "2", "-p", "1", "--transposed", "--view", "scatter"], 4),
])
def test_1d_is_drawn_flat_by_default(argv, size, tmp_path, capsys):
    """A 1-D convolution is two rows of upright cells, wider than tall (not a slanted strip)."""
    target = tmp_path / "one_d.png"
    assert main(["animate", *argv, "--step", "0", "-o", str(target)]) == 0
    with Image.open(target) as image:
        width, height = image.size
    assert width > 1.3 * height, (width, height)
    one_d = animate(ConvSpec((3,), padding="same", strides=2), (size,))
    assert one_d.view == "flat"
    cells = _cell_polygons(one_d.scene, PALETTE.input)
    assert cells, "no input cells drawn"
    for points in cells:  # upright rectangles: two distinct x and two distinct y
        assert len({round(x, 3) for x, _ in points}) == 2 and len({round(y, 3) for _, y in points}) == 2, points
    assert animate(ConvSpec((3,)), (9,), view="oblique").view == "oblique"
    assert animate(ConvSpec(3), (5, 5)).view == "oblique"
