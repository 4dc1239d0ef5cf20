"""The lesson page: content, sizes of the feature maps, offline, atomic, the command."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

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


def _svgs(html: str) -> list[str]:
    """The animations, inlined as <svg role="img"> elements."""
    return re.findall(r'<svg role="img".*?</svg>', html, flags=re.S)


def _images(html: str) -> list[tuple[str, bytes]]:
    return [(kind, base64.b64decode(data))
            for kind, data in re.findall(r'src="data:image/([a-z+]+);base64,([^"]+)"', html)]


def test_every_tweak_of_the_lesson_has_a_section(page):
    sections = _sections(page)
    assert list(sections) == ["convolution", "padding", "strides", "example", "formula",
                              "formula-stride1", "formula-stride3", "dilation", "beyond", "exercises"]
    for slug, body in sections.items():
        if slug in ("formula", "beyond", "exercises"):
            continue
        assert len(_svgs(body)) == 1, slug  # the animation, with its player
        assert 'data-act="play"' in body and "convarith animate" in body, slug
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
    picture, feature = pngs[-3], pngs[-2]  # the last one is the colour scale
    with Image.open(io.BytesIO(picture)) as image:
        assert image.size == (28 * PIXEL, 28 * PIXEL)
    with Image.open(io.BytesIO(feature)) as image:
        assert image.size == (size * PIXEL, size * PIXEL)
    assert f"feature map <b>{size}×{size}</b>" in body


def test_animations_are_the_lessons_configurations(page):
    sections = _sections(page)
    example = _svgs(sections["example"])[0]
    assert "input 5×5, padding 1" in example and "output 3×3" in example
    assert example.count('class="s') >= 9 and "<script" not in example
    dilation = _svgs(sections["dilation"])[0]
    assert "K_eff = K + (K - 1)(D - 1) = 3 + 2·1 = 5" in dilation
    stride3 = _svgs(sections["formula-stride3"])[0]
    assert "input 28, padding 1" in stride3 and "output 10" in stride3


def test_formula_misprint_and_the_right_formula(page):
    formula = _sections(page)["formula"]
    assert "(I − K + 2P) / (S + 1)" in formula and "O = floor((I − K + 2P) / S) + 1" in formula
    # (28 - 3 + 2) / (1 + 1) = 13.5 and / (3 + 1) = 6.75: the misprint; 28 and 10: right
    assert "<b>28</b>" in formula and "13.5" in formula
    assert "<b>10</b>" in formula and "6.75" in formula
    assert "O = floor(27 / 3) + 1 = 10" in _sections(page)["formula-stride3"]


def test_beyond_the_lesson_shows_the_padding_trap_and_both_transposed_views(page):
    svgs = _svgs(_sections(page)["beyond"])
    assert len(svgs) == 4
    assert "input 6×6, padding (0, 1)" in svgs[0] and "input 6×6, padding 1" in svgs[1]
    assert "zeros inserted" in svgs[2] and "(scatter)" in svgs[3]


def test_the_page_is_self_contained(page):
    from convarith.tour import EXPLORER

    assert not re.search(r'src="(https?:)?//', page)
    assert "<script src" not in page and "<link" not in page
    links = re.findall(r'href="([^"]*)"', page)
    assert all(link.startswith(("#", EXPLORER)) for link in links), links
    assert all(src.startswith(("data:", "#")) for src in re.findall(r'src="([^"]*)"', page))
    assert len(page.encode("utf-8")) < 1_000_000, "the tour must stay one file under 1 MB"


def test_scoped_styles_do_not_leak_between_animations(page):
    """Every inline SVG names its classes c0, s0_1...: each rule must carry its figure's id."""
    for figure in re.findall(r'<figure class="movie[^"]*" id="([^"]+)".*?</figure>', page, flags=re.S):
        assert figure.startswith("m-")
    for style in re.findall(r"<svg role=\"img\".*?<style>(.*?)</style>", page, flags=re.S):
        rules = re.findall(r"(?:^|[}\n])([^{}@\n][^{}]*)\{", style)
        selectors = [r for r in rules if not re.match(r"\s*[\d.]+%", r)]
        assert selectors and all(r.strip().startswith("#m-") for r in selectors), selectors[:5]
        assert "@keyframes k" not in style


def _code_blocks(body: str) -> tuple[str, str]:
    import html

    blocks = [html.unescape(b) for b in re.findall(r"<pre[^>]*><code>(.*?)</code></pre>", body, flags=re.S)]
    keras_code = next(b for b in blocks if b.startswith("import keras"))
    torch_code = next(b for b in blocks if b.startswith("import torch\n\nmodel"))
    return keras_code, torch_code


@pytest.mark.parametrize(("slug", "size"), [
    ("convolution", 26), ("padding", 28), ("strides", 13), ("example", 14),
    ("formula-stride1", 28), ("formula-stride3", 10), ("dilation", 24),
])
def test_code_samples_run_and_give_the_feature_map_size(page, slug, size):
    """The Keras and PyTorch code shown runs as is and gives the size the page states."""
    import numpy as np

    keras_code, torch_code = _code_blocks(_sections(page)[slug])
    assert "activation" not in keras_code and "filters=1" in keras_code
    keras = pytest.importorskip("keras")
    scope: dict = {}
    exec(keras_code, scope)  # noqa: S102 - the page's own sample
    assert tuple(scope["model"](np.zeros((1, 28, 28, 1), np.float32)).shape) == (1, size, size, 1)
    torch = pytest.importorskip("torch")
    scope = {}
    exec(torch_code, scope)  # noqa: S102
    assert tuple(scope["model"](torch.zeros(1, 1, 28, 28)).shape) == (1, 1, size, size)
    del keras, torch


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
    # per lesson section: the picture, the feature map and its colour scale
    assert len(sizes) == 7 * 3 and all(width > 0 and done for width, done in sizes)


_TOUR_PROBE = """() => {
  const problems = [];
  const doc = document.scrollingElement;
  if (doc.scrollWidth > innerWidth + 1) problems.push(`page is ${doc.scrollWidth} px wide at ${innerWidth}`);
  for (const el of document.querySelectorAll('section, section > *, .row > *, .maps > *')) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > innerWidth + 1) problems.push(`${el.tagName}.${el.className} ends at ${r.right|0}`);
  }
  for (const svg of document.querySelectorAll('figure.movie svg')) {
    const scale = svg.getBoundingClientRect().width / svg.viewBox.baseVal.width;
    for (const t of svg.querySelectorAll('text')) {
      const size = parseFloat(getComputedStyle(t).fontSize) * scale;
      if (parseFloat(getComputedStyle(t).fontSize) >= 13 && size < 9.5)
        problems.push(`"${t.textContent}" shown at ${size.toFixed(1)} px`);
    }
  }
  return problems;
}"""


def _tour_browser(tmp_path_factory: Any) -> Any:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium is not installed")
    return chromium


@pytest.fixture(scope="module")
def tour_file(page, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tour") / "index.html"
    path.write_text(page, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def chromium_browser():
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(chromium):
        pytest.skip("chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"])
        yield browser
        browser.close()


@pytest.mark.browser
@pytest.mark.parametrize("width", [390, 1280])
def test_tour_fits_phones_and_laptops(chromium_browser, tour_file, width):
    context = chromium_browser.new_context(viewport={"width": width, "height": 844})
    view = context.new_page()
    errors: list[str] = []
    view.on("pageerror", lambda error: errors.append(str(error)))
    view.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        view.goto(tour_file.as_uri())
        problems = view.evaluate(_TOUR_PROBE)
    finally:
        context.close()
    assert not problems, problems
    assert not errors, errors


@pytest.mark.browser
def test_tour_players_pause_step_and_respect_reduced_motion(chromium_browser, tour_file):
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900})
    view = context.new_page()
    try:
        view.goto(tour_file.as_uri())
        fig = "#m-example"
        view.click(f"{fig} [data-act=play]")  # pause
        assert view.text_content(f"{fig} [data-act=play]") == "play"
        paused = view.evaluate(f"document.querySelector('{fig} svg').getAnimations({{subtree: true}})"
                               ".every(a => a.playState === 'paused')")
        assert paused
        view.click(f"{fig} [data-act=next]")
        first = view.text_content(f"{fig} .where")
        view.click(f"{fig} [data-act=next]")
        second = view.text_content(f"{fig} .where")
        assert int(second.split()[1]) == int(first.split()[1]) % 9 + 1, (first, second)
        view.focus(fig)
        view.keyboard.press(" ")
        assert view.text_content(f"{fig} [data-act=play]") == "pause"
    finally:
        context.close()
    context = chromium_browser.new_context(viewport={"width": 1280, "height": 900},
                                           reduced_motion="reduce")
    view = context.new_page()
    try:
        view.goto(tour_file.as_uri())
        states = view.evaluate("[...document.querySelectorAll('figure.movie svg')]"
                               ".flatMap(s => s.getAnimations({subtree: true}).map(a => a.playState))")
        labels = view.eval_on_selector_all("figure.movie .where", "n => n.map(x => x.textContent)")
    finally:
        context.close()
    assert states and set(states) == {"paused"}
    assert all(label.startswith("step 1 /") for label in labels)


@pytest.mark.browser
def test_exercises_answer_at_once_offline(chromium_browser, tour_file):
    from convarith import ConvSpec

    context = chromium_browser.new_context(viewport={"width": 390, "height": 844}, offline=True)
    view = context.new_page()
    try:
        view.goto(tour_file.as_uri())
        item = "#exercises li:nth-child(2)"  # input 7, kernel 3, padding 1, stride 2: by hand 4
        assert ConvSpec(3, padding=1, strides=2, rank=1).resolve((7,)).output_size == (4,)
        view.fill(f"{item} input", "3")
        assert "not quite" in view.text_content(f"{item} .feedback")
        view.fill(f"{item} input", "4")
        assert view.text_content(f"{item} .feedback").startswith("right")
    finally:
        context.close()


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


@pytest.mark.browser
def test_tour_accessibility_audit(chromium_browser, tour_file):
    """axe-core finds no serious or critical problem (skipped when axe-core is not installed)."""
    candidates = [os.environ.get("AXE_CORE_JS"),
                  str(Path(__file__).resolve().parent.parent / "node_modules/axe-core/axe.min.js")]
    source = next((Path(c).read_text(encoding="utf-8") for c in candidates if c and Path(c).is_file()), None)
    if source is None:
        pytest.skip("axe-core not installed (npm install --no-save axe-core@4.14.1, or set AXE_CORE_JS)")
    context = chromium_browser.new_context(viewport={"width": 390, "height": 844})
    view = context.new_page()
    try:
        view.goto(tour_file.as_uri())
        view.add_script_tag(content=source)
        result = view.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']}))"
                               ".violations.map(v => ({id: v.id, impact: v.impact, "
                               "nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))")
    finally:
        context.close()
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, bad
