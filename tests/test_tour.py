"""The lesson page: content, sizes of the feature maps, offline, atomic, the command."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("PIL")
from PIL import Image  # noqa: E402

from convarith.cli import main  # noqa: E402
from convarith.tour import PIXEL, build_tour, lesson_picture, write_tour  # noqa: E402


@pytest.fixture(scope="module")
def page() -> str:
    started = time.perf_counter()
    text = build_tour(progress=False)
    assert time.perf_counter() - started < 20, "the tour must render in well under 20 s"
    return text


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r'<section id="([^"]+)">', page)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def _images(html: str) -> list[tuple[str, bytes]]:
    return [(kind, base64.b64decode(data))
            for kind, data in re.findall(r'src="data:image/([a-z+]+);base64,([^"]+)"', html)]


def test_every_tweak_of_the_lesson_has_a_section(page):
    sections = _sections(page)
    assert list(sections) == ["convolution", "padding", "strides", "example", "formula",
                              "formula-stride1", "formula-stride3", "dilation", "beyond"]
    for slug, body in sections.items():
        if slug in ("formula", "beyond"):
            continue
        kinds = [kind for kind, _ in _images(body)]
        assert kinds[0] == "svg+xml", slug  # the animation
        assert "<h3>The arithmetic</h3>" in body and "keras.layers.Conv2D(" in body
        assert "torch.nn.Conv2d(" in body


# feature-map size on the 28×28 picture, by hand: floor((28 + 2P - K_eff) / S) + 1
@pytest.mark.parametrize(("slug", "size"), [
    ("convolution", 26), ("padding", 28), ("strides", 13), ("example", 14),
    ("formula-stride1", 28), ("formula-stride3", 10), ("dilation", 24),
])
def test_feature_maps_have_the_stated_size(page, slug, size):
    body = _sections(page)[slug]
    pngs = [data for kind, data in _images(body) if kind == "png"]
    picture, feature = pngs[-2], pngs[-1]
    with Image.open(io.BytesIO(picture)) as image:
        assert image.size == (28 * PIXEL, 28 * PIXEL)
    with Image.open(io.BytesIO(feature)) as image:
        assert image.size == (size * PIXEL, size * PIXEL)
    assert f"feature map <b>{size}×{size}</b>" in body


def test_animations_are_the_lessons_configurations(page):
    sections = _sections(page)
    example = dict(_images(sections["example"]))["svg+xml"].decode()
    assert "input 5×5, padding 1" in example and "output 3×3" in example
    assert example.count('class="s') >= 9 and "<script" not in example
    dilation = dict(_images(sections["dilation"]))["svg+xml"].decode()
    assert "K_eff = K + (K - 1)(D - 1) = 3 + 2·1 = 5" in dilation
    stride3 = dict(_images(sections["formula-stride3"]))["svg+xml"].decode()
    assert "input 28, padding 1" in stride3 and "output 10" in stride3


def test_formula_misprint_and_the_right_formula(page):
    formula = _sections(page)["formula"]
    assert "(I − K + 2P) / (S + 1)" in formula and "O = floor((I − K + 2P) / S) + 1" in formula
    # (28 - 3 + 2) / (1 + 1) = 13.5 and / (3 + 1) = 6.75: the misprint; 28 and 10: right
    assert "<b>28</b>" in formula and "13.5" in formula
    assert "<b>10</b>" in formula and "6.75" in formula
    assert "O = floor(27 / 3) + 1 = 10" in _sections(page)["formula-stride3"]


def test_beyond_the_lesson_shows_the_padding_trap_and_both_transposed_views(page):
    svgs = [data.decode() for kind, data in _images(_sections(page)["beyond"]) if kind == "svg+xml"]
    assert len(svgs) == 4
    assert "input 6×6, padding (0, 1)" in svgs[0] and "input 6×6, padding 1" in svgs[1]
    assert "zeros inserted" in svgs[2] and "(scatter)" in svgs[3]


def test_the_page_is_self_contained(page):
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "<script" not in page and "<link" not in page
    assert all(src.startswith(("data:", "#")) for src in re.findall(r'(?:src|href)="([^"]*)"', page))


def test_lesson_picture_is_drawn_not_loaded():
    image = lesson_picture()
    assert image.shape == (28, 28)
    assert image[:, :3].max() < 0.2 and image.max() == 1.0  # ink in the middle, margins blank


def test_write_tour_refuses_to_overwrite_and_is_atomic(tmp_path, monkeypatch):
    path = write_tour(tmp_path / "lesson", progress=False)
    assert path == tmp_path / "lesson" / "index.html"
    first = path.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        write_tour(tmp_path / "lesson", progress=False)
    assert path.read_bytes() == first

    import convarith.tour as tour

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tour, "build_tour", broken)
    with pytest.raises(KeyboardInterrupt):
        write_tour(tmp_path / "lesson", progress=False, force=True)
    assert path.read_bytes() == first and os.listdir(path.parent) == ["index.html"]


def test_cli_tour_with_no_arguments_writes_the_default_page(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["tour"]) == 0
    page = Path("convarith-tour/index.html")
    assert page.stat().st_size > 50_000
    err = capsys.readouterr().err
    assert "convarith-tour/index.html" in err
    assert main(["tour", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("convarith tour: error:") and "--force" in err and err.count("\n") == 1
    assert main(["tour", "-q", "--force", "--out", "other.html"]) == 0
    assert Path("other.html").exists()


def test_cli_tour_out_under_a_file_is_an_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("afile").write_text("x")
    assert main(["tour", "-q", "--out", "afile/sub"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.browser
def test_page_renders_in_chromium(tmp_path):
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    path = write_tour(tmp_path, progress=False)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--no-first-run"])
        try:
            view = browser.new_page(viewport={"width": 1280, "height": 900})
            view.goto(path.as_uri())
            view.wait_for_load_state("load")
            sizes = view.evaluate("[...document.images].map(i => [i.naturalWidth, i.complete])")
            heading = view.inner_text("h1")
        finally:
            browser.close()
    assert heading == "Tweaking your convolutions"
    assert len(sizes) == 7 * 3 + 4 and all(width > 0 and done for width, done in sizes)


def test_plain_progress_without_rich_and_open(tmp_path, monkeypatch, capsys):
    import sys
    import webbrowser

    monkeypatch.setitem(sys.modules, "rich.progress", None)  # as if rich were not installed
    opened = []
    monkeypatch.setattr(webbrowser, "open", lambda url: opened.append(url) or True)
    path = write_tour(tmp_path, progress=True, open_browser=True)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("[")]
    assert lines[0].startswith("[1/") and lines[-1].endswith("page assembled")
    assert opened == [path.resolve().as_uri()]
