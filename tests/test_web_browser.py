"""The explorer page in headless Chromium: what the page shows equals what Python computes.

The server runs in a thread (uvicorn on a free loopback port); Playwright
drives the system Chromium (``/usr/bin/chromium``) as a user would: typing
in the number boxes, picking from the menus, hovering cells, uploading a
picture, opening a shared link. For every setting of a grid of more than 50,
the output size, the padding split and the footprint highlighted under the
mouse must equal :meth:`convarith.ConvSpec.resolve` and its geometry.

Skipped, with the reason, when Playwright or Chromium is missing
(``apt-get install chromium``).
"""

from __future__ import annotations

import io
import itertools
import math
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convarith import ConvSpec

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def server_url() -> Iterator[str]:
    uvicorn = pytest.importorskip("uvicorn")
    pytest.importorskip("starlette")
    from convarith.web import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("the explorer server did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    with sync_api.sync_playwright() as playwright:
        try:
            chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        except Exception as error:  # noqa: BLE001 - any launch failure means no browser here
            pytest.skip(f"Chromium does not start here: {error}")
        yield chromium
        chromium.close()


@pytest.fixture()
def page(browser: Any, server_url: str) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(server_url)
    settle(tab)
    yield tab
    context.close()
    assert not errors, errors


def settle(page: Any) -> None:
    """Wait until the answer to the latest settings is drawn."""
    page.wait_for_function("document.body.dataset.busy === '' && !!document.body.dataset.ready",
                           timeout=10_000)


# --------------------------------------------------------------------------- the grid of settings


def settings_grid() -> list[dict[str, Any]]:
    """More than 50 settings: 2-D and 1-D, every padding word, explicit, modes, transposed, pools."""
    grid: list[dict[str, Any]] = []
    for size, kernel, stride, dilation, padding in itertools.product(
        [(7, 7), (8, 5)], [(3, 3), (2, 4)], [(1, 1), (2, 3)], [(1, 1), (2, 1)],
        ["valid", "same", "same_lower", "full"],
    ):
        grid.append(dict(rank=2, input=size, kernel=kernel, stride=stride, dilation=dilation,
                         padding=padding))
    grid = grid[::3]  # a spread of the product, 22 settings
    grid += [
        dict(rank=2, input=(6, 9), kernel=(3, 3), stride=(2, 2), dilation=(1, 1),
             padding=((0, 2), (1, 0))),
        dict(rank=2, input=(5, 5), kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
             padding=((2, 2), (1, 1)), mode="reflect"),
        dict(rank=2, input=(5, 6), kernel=(3, 2), stride=(2, 1), dilation=(1, 1),
             padding=((1, 1), (1, 1)), mode="replicate"),
        dict(rank=2, input=(4, 4), kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
             padding=((2, 1), (0, 2)), mode="circular"),
        dict(rank=2, input=(9, 9), kernel=(3, 3), stride=(2, 2), dilation=(1, 1), padding="valid"),
        dict(rank=2, input=(28, 28), kernel=(3, 3), stride=(3, 3), dilation=(1, 1),
             padding=((1, 1), (1, 1))),
        dict(rank=2, input=(64, 64), kernel=(5, 5), stride=(4, 4), dilation=(2, 2), padding="same"),
        dict(rank=2, input=(3, 3), kernel=(1, 1), stride=(1, 1), dilation=(1, 1), padding="valid"),
    ]
    for size, kernel, stride, padding, op in [
        ((4, 4), (3, 3), (2, 2), "valid", None), ((4, 5), (3, 3), (2, 2), "same", None),
        ((3, 3), (4, 4), (2, 2), ((1, 1), (1, 1)), None), ((3, 4), (3, 3), (2, 2), ((1, 1), (1, 1)), (1, 1)),
        ((5, 5), (2, 3), (3, 2), ((0, 0), (0, 0)), (2, 1)), ((4, 4), (3, 3), (1, 1), ((-1, 0), (0, -1)), None),
    ]:
        grid.append(dict(rank=2, input=size, kernel=kernel, stride=stride, dilation=(1, 1),
                         padding=padding, transposed=True, op=op))
    for size, kernel, stride, padding, pool, ceil in [
        ((7, 7), (2, 2), (2, 2), "valid", "max", False), ((7, 7), (2, 2), (2, 2), "valid", "max", True),
        ((6, 7), (3, 3), (2, 2), ((1, 1), (1, 1)), "avg", False), ((5, 5), (3, 3), (2, 2), "same", "avg", True),
    ]:
        grid.append(dict(rank=2, input=size, kernel=kernel, stride=stride, dilation=(1, 1),
                         padding=padding, pool=pool, ceil=ceil))
    for size, kernel, stride, dilation, padding in [
        (16, 3, 1, 4, "causal"), (12, 3, 2, 1, "same"), (12, 3, 2, 1, "same_lower"), (10, 4, 3, 1, "valid"),
        (9, 2, 1, 3, "full"), (11, 3, 2, 2, ((2, 0),)), (8, 5, 1, 1, ((0, 4),)), (20, 7, 3, 1, "same"),
        (5, 3, 2, 1, "valid"), (1, 1, 1, 1, "valid"),
    ]:
        grid.append(dict(rank=1, input=(size,), kernel=(kernel,), stride=(stride,),
                         dilation=(dilation,), padding=padding))
    return grid


def expected(setting: dict[str, Any]) -> Any:
    return ConvSpec(
        kernel_size=setting["kernel"], strides=setting["stride"], dilation=setting["dilation"],
        padding=setting["padding"], padding_mode=setting.get("mode", "zeros"),
        transposed=setting.get("transposed", False), output_padding=setting.get("op"),
        pool=setting.get("pool"), ceil_mode=setting.get("ceil", False), rank=setting["rank"],
    ).resolve(setting["input"])


def set_controls(page: Any, s: dict[str, Any]) -> None:
    """Operate the form the way a person would."""
    page.select_option("#rank", str(s["rank"]))
    page.select_option("#pool", s.get("pool") or "")
    if bool(page.is_checked("#transposed")) != bool(s.get("transposed")):
        page.click("#transposed")
    for axis in range(s["rank"]):
        page.fill(f"#in-{axis}", str(s["input"][axis]))
        page.fill(f"#k-{axis}", str(s["kernel"][axis]))
        page.fill(f"#s-{axis}", str(s["stride"][axis]))
        page.fill(f"#d-{axis}", str(s["dilation"][axis]))
        if s.get("op"):
            page.fill(f"#op-{axis}", str(s["op"][axis]))
        elif s.get("transposed"):
            page.fill(f"#op-{axis}", "")  # empty: the default output padding
    padding = s["padding"]
    if isinstance(padding, str):
        page.select_option("#padding", padding)
    else:
        page.select_option("#padding", "explicit")
        for axis, (lo, hi) in enumerate(padding):
            page.fill(f"#p-{axis}-lo", str(lo))
            page.fill(f"#p-{axis}-hi", str(hi))
    page.select_option("#padding-mode", s.get("mode", "zeros"))
    if s.get("pool") and bool(page.is_checked("#ceil-mode")) != bool(s.get("ceil")):
        page.click("#ceil-mode")
    settle(page)


def highlighted(page: Any, selector: str) -> set[tuple[int, ...]]:
    values = page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.dataset.pos || n.dataset.out)")
    return {tuple(int(v) for v in text.split(",")) for text in values}


def pairs(text: str) -> list[tuple[int, int]]:
    return [(int(a), int(b)) for a, b in re.findall(r"\((-?\d+), (-?\d+)\)", text)]


def test_grid_of_settings_matches_python(page):
    grid = settings_grid()
    assert len(grid) >= 50
    rng = np.random.default_rng(1234)
    for number, setting in enumerate(grid):
        want = expected(setting)
        set_controls(page, setting)
        where = f"setting {number}: {setting}"
        assert not page.is_visible("#error"), (where, page.text_content("#error"))
        assert page.text_content("#output-size") == " × ".join(map(str, want.output_size)), where
        assert pairs(page.text_content("#padding-split")) == list(want.padding), where
        # hover an output cell: its footprint lights up
        out = tuple(int(rng.integers(0, n)) for n in want.output_size)
        cell = out if setting["rank"] == 2 else (out[0],)
        page.hover(f'#grid rect[data-out="{",".join(map(str, cell))}"]')
        taps = want.footprint(out)
        assert highlighted(page, "#grid rect.hl, #grid rect.hl-pad") == {t.position for t in taps}, where
        assert highlighted(page, "#grid rect.hl") == {t.position for t in taps if t.source}, where
        # hover an input cell: the outputs it feeds light up
        source = tuple(int(rng.integers(0, n)) for n in want.input_size)
        page.hover(f'#grid rect[data-src="{",".join(map(str, source))}"][data-kind="input"], '
                   f'#grid rect[data-src="{",".join(map(str, source))}"][data-kind="dropped"], '
                   f'#grid rect[data-src="{",".join(map(str, source))}"][data-kind="skipped"]')
        assert highlighted(page, "#grid rect.feed") == {o for o, _ in want.feeds(source)}, where


def test_dropped_rows_and_framework_rejection_are_shown(page):
    set_controls(page, dict(rank=2, input=(28, 28), kernel=(3, 3), stride=(2, 2),
                            dilation=(1, 1), padding="valid"))
    assert page.text_content("#dropped") == "height 1 · width 1"
    assert page.locator("#grid rect[data-kind=dropped]").count() == 28 + 28 - 1
    assert "never reach" in page.text_content("#notes") or "dropped" in page.text_content("#notes")
    page.select_option("#padding", "same")
    settle(page)
    page.click("button[data-convention=torch]")
    settle(page)
    note = page.text_content("#convention-note")
    assert "PyTorch rejects" in note and "stride" in note
    page.click("button[data-convention=jax]")
    settle(page)
    assert "JAX accepts" in page.text_content("#convention-note")


def test_server_errors_are_shown_in_words(page):
    page.fill("#in-0", "5")
    page.fill("#in-1", "5")
    page.select_option("#padding", "valid")
    page.fill("#k-0", "9")
    settle(page)
    assert page.is_visible("#error")
    assert "kernel spans 9" in page.text_content("#error")
    page.fill("#in-0", "99")
    settle(page)
    assert "input_size" in page.text_content("#error") and "64" in page.text_content("#error")


def test_animation_steps_and_plays(page):
    set_controls(page, dict(rank=2, input=(5, 5), kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
                            padding="valid"))
    assert "frame 1 / 9" in page.text_content("#frame-label")
    page.click("#next")
    page.click("#next")
    assert "output (0, 2)" in page.text_content("#frame-label")
    assert highlighted(page, "#grid rect.hl") == {(r, c) for r in range(3) for c in range(2, 5)}
    page.fill("#scrub", "8")
    assert "frame 9 / 9" in page.text_content("#frame-label")
    page.focus("#grid")
    page.keyboard.press("ArrowLeft")
    assert "frame 8 / 9" in page.text_content("#frame-label")
    page.click("#first")
    page.select_option("#speed", "8")
    page.click("#play")
    page.wait_for_function("document.getElementById('frame-label').textContent.includes('frame 9 / 9')",
                           timeout=5000)


def test_stack_code_and_solver_tabs(page):
    page.fill("#in-0", "16")
    page.fill("#in-1", "16")
    settle(page)
    sizes = page.eval_on_selector_all("#layers [data-size]", "n => n.map(x => x.textContent)")
    # default stack: k3 'same' then k3 s2 'same' -> 16 -> 16 -> 8
    assert sizes == ["16 × 16 → 16 × 16", "16 × 16 → 8 × 8"]
    page.click("#add-layer")
    page.wait_for_function("document.querySelectorAll('#layers .layer').length === 3")
    page.wait_for_function(
        "[...document.querySelectorAll('#layers [data-size]')].every(n => n.textContent)")
    assert page.locator("#stack-svg rect.rf-in").count() > 0
    page.click('#stack-svg rect[data-out="3,3"]')  # a cell of the last output: the field it reads
    page.wait_for_function("document.getElementById('receptive-text').textContent.startsWith('output cell (3, 3)')")
    page.click("#layers .layer:nth-child(3) [data-act=remove]")
    page.wait_for_function("document.querySelectorAll('#layers .layer').length === 2")
    page.click("button[data-tab=code]")
    page.click("button[data-port=torch]")
    page.wait_for_function("document.querySelector('#code code').textContent.includes('torch')")
    page.click("button[data-tab=solve]")
    page.fill("#solve-size", "28")
    page.fill("#solve-target", "14")
    page.click("#solve")
    page.wait_for_selector("#solutions tbody tr")
    rows = page.eval_on_selector_all(
        "#solutions tbody tr", "r => r.map(x => [...x.cells].slice(0, 4).map(c => c.textContent))")
    assert ["3", "2", "1", "(0, 1)"] in rows, rows  # kernel 3, stride 2: pads (0, 1) as Keras 'same'
    page.click("#solutions tbody tr:nth-child(3) button")  # 'use' it
    settle(page)
    assert page.input_value("#padding") == "explicit" and page.input_value("#k-0") == "3"


def test_uploaded_picture_gives_a_feature_map(page, tmp_path):
    from PIL import Image

    picture = np.zeros((40, 30, 3), np.uint8)
    picture[10:30, 5:25] = (250, 120, 0)
    path = tmp_path / "square.png"
    Image.fromarray(picture).save(path)
    set_controls(page, dict(rank=2, input=(7, 7), kernel=(3, 3), stride=(2, 2), dilation=(1, 1),
                            padding="valid"))
    page.click("button[data-tab=image]")
    page.wait_for_function("document.getElementById('image-out').dataset.ready === '1'")
    with page.expect_file_chooser() as chooser:
        page.select_option("#image-source", "upload")
    chooser.value.set_files(str(path))
    want = ConvSpec(3, strides=2).resolve((40, 30)).output_size
    page.wait_for_function(
        f"document.getElementById('image-out-cap').textContent.includes('{want[0]} × {want[1]}')")
    src = page.get_attribute("#image-out", "src")
    assert src and src.startswith("data:image/png;base64,")
    import base64

    feature = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert feature.size == (want[1], want[0])
    assert page.evaluate("document.getElementById('image-out').naturalWidth") == want[1]


def test_shared_link_restores_the_view(page, browser):
    set_controls(page, dict(rank=2, input=(9, 6), kernel=(3, 2), stride=(2, 1), dilation=(1, 2),
                            padding=((1, 0), (2, 1)), mode="replicate"))
    page.click("button[data-convention=onnx]")
    page.click("#next")
    page.click("#next")
    page.click("button[data-tab=code]")
    settle(page)
    url = page.url
    summary = [page.text_content(s) for s in ("#output-size", "#padding-split", "#frame-label")]
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, bypass_csp=True)
    other = context.new_page()
    other.goto(url)
    settle(other)
    assert [other.text_content(s) for s in ("#output-size", "#padding-split", "#frame-label")] == summary
    assert other.input_value("#in-0") == "9" and other.input_value("#d-1") == "2"
    assert other.input_value("#padding") == "explicit" and other.input_value("#padding-mode") == "replicate"
    assert "on" in (other.get_attribute("button[data-convention=onnx]", "class") or "")
    assert other.is_visible("#tab-code")
    context.close()


# --------------------------------------------------------------------------- what the page says


def goto(page: Any, server_url: str, query: str) -> None:
    page.goto(server_url + "?" + query)
    settle(page)


@pytest.mark.parametrize("query, rules, lacking", [
    # Keras Conv2D, JAX lax.conv and ONNX Conv pad with zeros only
    ("in=5x5&k=3x3&s=1x1&d=1x1&p=same&pm=reflect&conv=keras", "Keras", "fill"),
    ("in=5x5&k=3x3&s=1x1&d=1x1&p=same&pm=reflect&conv=jax", "JAX", "fill"),
    ("in=5x5&k=3x3&s=1x1&d=1x1&p=same&pm=circular&conv=onnx", "ONNX", "fill"),
    # Keras pooling layers take no dilation
    ("in=9x9&k=2x2&s=2x2&d=2x2&p=valid&pool=max&conv=keras", "Keras", "dilation"),
])
def test_framework_rules_refuse_what_the_framework_would_compute_otherwise(page, server_url, query,
                                                                           rules, lacking):
    goto(page, server_url, query + "&tab=code&port=torch")
    note = page.text_content("#convention-note")
    assert f"{rules} rejects" in note and lacking in note, note
    assert "accepts" not in note
    code = page.text_content("#code code")
    assert "neutral settings" in code and "Keras port of Keras" not in code
    if "pm=reflect" in query:  # what is drawn is what the code computes: a reflect fill
        assert "padding_mode='reflect'" in code
        page.hover("#grid rect[data-pos='0,0']")
        assert "copies input[1,1] (reflect)" in page.text_content("#cell-sum")


@pytest.mark.parametrize("query, rules", [
    # lax.reduce_window pools with any window dilation; ONNX AveragePool has `dilations`
    ("in=6x6&k=2x2&s=2x2&d=1x1&p=valid&pool=max&conv=jax", "JAX"),
    ("in=9x9&k=2x2&s=2x2&d=2x2&p=valid&pool=avg&conv=onnx", "ONNX"),
])
def test_framework_rules_accept_what_the_framework_expresses(page, server_url, query, rules):
    goto(page, server_url, query + "&tab=code&port=torch")
    note = page.text_content("#convention-note")
    assert f"{rules} accepts" in note and "rejects" not in note, note


def test_keras_really_has_no_padding_mode():
    """The refusal above is Keras's own rule: its Conv2D takes no padding_mode."""
    keras = pytest.importorskip("keras")
    with pytest.raises((TypeError, ValueError)):
        keras.layers.Conv2D(1, 3, padding="same", padding_mode="reflect")


@pytest.mark.parametrize("query, must, must_not", [
    ("in=7x7&k=3x3&s=2x2&d=1x1&p=same&pool=avg&conv=torch", ["AvgPool2d", "explicit per side"],
     ["Conv2d", "--"]),
    ("in=3x3&k=3x3&s=2x2&d=1x1&p=explicit&pads=1,1x1,1&t=1&conv=keras", ["Conv2DTranspose", "Cropping2D"],
     ["ZeroPadding", "--"]),
    ("in=7x7&k=3x3&s=1x1&d=1x1&p=explicit&pads=0,1x1,1&conv=torch", ["symmetric", "JAX or ONNX rules"],
     ["--convention"]),
])
def test_refusals_name_the_right_layer_and_no_command_line_flags(page, server_url, query, must,
                                                                  must_not):
    goto(page, server_url, query)
    note = page.text_content("#convention-note")
    for word in must:
        assert word in note, (word, note)
    for word in must_not:
        assert word not in note, (word, note)


@pytest.mark.parametrize("typed", ["2.5", "1e3", "-3"])
def test_typed_numbers_are_refused_not_rounded(page, typed):
    page.fill("#in-0", typed)
    settle(page)
    error = page.text_content("#error")
    assert page.is_visible("#error") and "input_size" in error and typed in error, error
    assert "None" not in error


@pytest.mark.parametrize("query, words", [
    ("in=abc", ["input_size", "'abc'"]),
    ("in=2.5x7", ["input_size", "'2.5'"]),
    ("in=7x7x7x7", ["in=7x7x7x7", "4 axes"]),
    ("in=7x7&k=1e3", ["kernel_size", "'1e3'"]),
])
def test_links_the_page_cannot_show_are_refused_in_words(page, server_url, query, words):
    goto(page, server_url, query)
    error = page.text_content("#error")
    assert page.is_visible("#error"), query
    for word in words:
        assert word in error, (word, error)


def test_an_empty_box_is_named_not_shown_as_none(page):
    page.fill("#k-1", "")
    settle(page)
    error = page.text_content("#error")
    assert "kernel_size (axis 1) is empty" in error and "None" not in error, error


def test_the_solver_keeps_its_own_question(page, server_url):
    goto(page, server_url, "in=9x9&k=3x3&s=1x1&d=1x1&p=same")
    assert page.input_value("#solve-size") == "28" and page.input_value("#solve-target") == "14"


def test_an_older_answer_never_overwrites_a_newer_one(page):
    """The Keras code is answered slowly, after the PyTorch code the user asked for next."""
    def slow_keras(route: Any) -> None:
        if '"to": "keras"' in (route.request.post_data or "") or '"to":"keras"' in (
                route.request.post_data or ""):
            time.sleep(0.8)
        route.continue_()

    page.click("button[data-tab=code]")
    settle(page)
    page.route("**/api/port", slow_keras)
    page.click("button[data-port=torch]")
    page.click("button[data-port=keras]")
    page.click("button[data-port=torch]")
    page.wait_for_function("document.querySelector('#code code').textContent.includes('PyTorch code')")
    time.sleep(1.2)  # the slow Keras answer has arrived by now, and must have been dropped
    assert "PyTorch code" in page.text_content("#code code")
    page.unroute("**/api/port")


# --------------------------------------------------------------------------- one palette


def test_the_page_uses_the_animations_palette():
    from dataclasses import asdict

    from convarith.viz.scene import PALETTE

    css = (Path(__file__).resolve().parent.parent / "src/convarith/web/static/style.css").read_text()
    declared = dict(re.findall(r"--c-([a-z-]+):\s*(#[0-9a-fA-F]{6})", css.split("}", 1)[0]))
    assert declared, "style.css declares no --c-* colours"
    palette = {name.replace("_", "-"): colour.lower() for name, colour in asdict(PALETTE).items()}
    for name, colour in declared.items():
        assert palette.get(name) == colour.lower(), (name, colour, palette.get(name))
    for name in ("input", "output", "padding", "dropped", "input-read", "output-target"):
        assert name in declared, name


# --------------------------------------------------------------------------- as people see it


LAYOUT_VIEWS = [
    "in=7x7&k=3x3&s=2x2&d=1x1&p=same",
    "in=3x3&k=3x3&s=2x2&d=1x1&p=explicit&pads=1,1x1,1&t=1",  # 3x3 -> 7x7 zeros inserted, padded
    "in=64x64&k=3x3&s=1x1&d=1x1&p=same&tab=stack",
    "in=6x6&k=3x3&s=2x2&d=1x1&p=valid&conv=keras&tab=code&port=torch",
    "in=28&k=3&s=3&d=1&p=explicit&pads=1,1",
    "in=5x6x6&k=3x3x3&s=2x1x1&d=1x1x1&p=same&frame=40&tab=stack",  # 3-D: three sizes in each label
]

_LAYOUT_PROBE = """() => {
  const problems = [];
  const doc = document.scrollingElement;
  if (doc.scrollWidth > innerWidth + 1) problems.push(`page is ${doc.scrollWidth} px wide at ${innerWidth}`);
  for (const el of document.querySelectorAll('header button, #stage, #controls, #tabs, .player, .legend')) {
    const r = el.getBoundingClientRect();
    if (r.width && r.right > innerWidth + 1) problems.push(`${el.id || el.className || el.tagName} ends at ${r.right}`);
  }
  for (const id of ['grid', 'stack-svg']) {
    const svg = document.getElementById(id);
    if (!svg || !svg.getBoundingClientRect().width) continue;
    // what a person sees: the picture, clipped by a figure that scrolls sideways
    const own = svg.getBoundingClientRect(), frame = (svg.closest('.figure') || svg).getBoundingClientRect();
    const box = { left: Math.max(own.left, frame.left), right: Math.min(own.right, frame.right),
                  top: own.top, bottom: own.bottom, width: own.width };
    const drawn = svg.getBBox(), view = svg.viewBox.baseVal;
    if (drawn.x < view.x - 1 || drawn.y < view.y - 1 || drawn.x + drawn.width > view.x + view.width + 1
        || drawn.y + drawn.height > view.y + view.height + 1)
      problems.push(`#${id} draws outside its frame (${drawn.width|0}x${drawn.height|0} in ${view.width|0}x${view.height|0})`);
    const texts = [...svg.querySelectorAll('text')].filter((t) => t.textContent.trim())
      .map((t) => [t, t.getBoundingClientRect()]);
    for (const [t, r] of texts) {
      if (r.left < box.left - 1 || r.right > box.right + 1 || r.top < box.top - 1 || r.bottom > box.bottom + 1)
        problems.push(`#${id} label "${t.textContent}" is cut (${r.left|0}..${r.right|0} in ${box.left|0}..${box.right|0})`);
      const size = parseFloat(getComputedStyle(t).fontSize) * (box.width / svg.viewBox.baseVal.width || 1);
      if (!t.classList.contains('tap-label') && size < 9) problems.push(`#${id} label "${t.textContent}" is ${size.toFixed(1)} px`);
    }
    for (let i = 0; i < texts.length; i++) for (let j = i + 1; j < texts.length; j++) {
      const [a, ra] = texts[i], [b, rb] = texts[j];
      const overlap = Math.min(ra.right, rb.right) - Math.max(ra.left, rb.left) > 1
        && Math.min(ra.bottom, rb.bottom) - Math.max(ra.top, rb.top) > 1;
      if (overlap) problems.push(`#${id} labels "${a.textContent}" and "${b.textContent}" overlap`);
    }
  }
  const sum = document.getElementById('cell-sum');
  if (sum.scrollHeight > sum.clientHeight + 2 && getComputedStyle(sum).overflowY !== 'auto')
    problems.push('the weighted sum is cut');
  return problems;
}"""


@pytest.mark.parametrize("width, height, scheme", [(390, 844, "light"), (1280, 800, "light"),
                                                   (390, 844, "dark")])
def test_layout_fits_without_overflow_or_overlapping_labels(browser, server_url, width, height, scheme):
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                                  bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        # under CI the three views that broke before (label collision, cut stack label, wide code)
        views = LAYOUT_VIEWS[1:4] + LAYOUT_VIEWS[5:] if os.environ.get("CI") == "true" else LAYOUT_VIEWS
        for query in views:
            goto(page, server_url, query)
            problems = page.evaluate(_LAYOUT_PROBE)
            assert not problems, (width, query, problems)
        if width < 500:  # on a phone the picture comes before the controls
            grid_top = page.evaluate("document.getElementById('grid').getBoundingClientRect().top")
            assert grid_top < height, grid_top
    finally:
        context.close()
    assert not errors, errors


def test_keyboard_space_plays_and_arrows_step(page):
    set_controls(page, dict(rank=2, input=(5, 5), kernel=(3, 3), stride=(1, 1), dilation=(1, 1),
                            padding="valid"))
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("ArrowRight")
    assert "frame 2 / 9" in page.text_content("#frame-label")
    page.keyboard.press("PageDown")  # a whole output row: (0, 1) -> (1, 1)
    assert "output (1, 1)" in page.text_content("#frame-label")
    page.keyboard.press("End")
    assert "frame 9 / 9" in page.text_content("#frame-label")
    page.keyboard.press("Home")
    page.keyboard.press(" ")
    assert "pause" in page.text_content("#play")
    page.keyboard.press(" ")
    assert "play" in page.text_content("#play")


def test_a_tap_on_an_input_cell_shows_what_it_feeds(browser, server_url):
    context = browser.new_context(viewport={"width": 390, "height": 844}, has_touch=True, bypass_csp=True)
    page = context.new_page()
    try:
        goto(page, server_url, "in=5x5&k=3x3&s=1x1&d=1x1&p=valid")
        page.tap("#grid rect[data-pos='2,2']")
        assert "input[2,2] feeds 9 output cells" in page.text_content("#cell-sum")
        assert page.locator("#grid rect.feed").count() == 9
    finally:
        context.close()


def _axe_source() -> str | None:
    for candidate in (os.environ.get("AXE_CORE_JS"),
                      str(Path(__file__).resolve().parent.parent / "node_modules/axe-core/axe.min.js")):
        if candidate and Path(candidate).is_file():
            return Path(candidate).read_text(encoding="utf-8")
    return None


@pytest.mark.parametrize("width", [390, 1280])
def test_accessibility_audit_has_no_serious_violations(browser, server_url, width):
    source = _axe_source()
    if source is None:
        pytest.skip("axe-core not installed (npm install --no-save axe-core@4.14.1, or set AXE_CORE_JS)")
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    page = context.new_page()
    try:
        goto(page, server_url, "in=7x7&k=3x3&s=2x2&d=1x1&p=same")
        page.add_script_tag(content=source)
        result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                               ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))")
    finally:
        context.close()
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, bad


# --------------------------------------------------------------------------- export, command, quiz


def test_the_animate_command_shown_draws_the_same_animation(page, server_url, tmp_path):
    from PIL import Image

    from convarith.cli import main

    goto(page, server_url, "in=6x5&k=3x2&s=2x1&d=1x1&p=explicit&pads=1,1x0,1&pm=zeros")
    command = page.text_content("#cli")
    assert command.startswith("convarith animate 6x5 -k 3x2 -s 2x1"), command
    frames = int(page.text_content("#frame-label").split("/")[1].split()[0])
    out = tmp_path / "conv.gif"
    argv = command.split()[2:]
    argv[argv.index("-o") + 1] = str(out)
    assert main(["animate", *argv]) == 0
    with Image.open(out) as gif:
        assert gif.n_frames == frames


def test_export_svg_and_png(page, tmp_path):
    import xml.etree.ElementTree as ET

    from PIL import Image

    with page.expect_download() as svg_download:
        page.click("#export-svg")
    path = tmp_path / "grid.svg"
    svg_download.value.save_as(path)
    root = ET.parse(path).getroot()
    rects = root.findall(".//{http://www.w3.org/2000/svg}rect")
    assert len(rects) > 81 + 16  # the padded 9x9 input and the 4x4 output
    assert not any("url(" in (r.get("style") or "") for r in rects)  # colours written in, no page CSS
    with page.expect_download() as png_download:
        page.click("#export-png")
    png = tmp_path / "grid.png"
    png_download.value.save_as(png)
    width = int(page.get_attribute("#grid", "width") or 0)
    with Image.open(png) as image:
        assert image.size[0] == 2 * width


def _focused(page: Any) -> str:
    return page.evaluate("(() => { const a = document.activeElement; return a && a.classList.contains('cell') ? "
                         "(a.dataset.out !== undefined ? 'out:' + a.dataset.out : 'in:' + a.dataset.pos) : ''; })()")


def test_every_cell_is_reachable_by_keyboard(page, server_url):
    """Tab reaches one input and one output cell; arrows, Page Up/Down and Home/End move between cells,
    and a focused cell shows what hovering it shows (its feeds, or its footprint)."""
    goto(page, server_url, "in=12x10&k=3x3&s=2x1&d=1x1&p=valid")
    want = ConvSpec(3, strides=(2, 1)).resolve((12, 10))
    page.focus("#grid")
    page.keyboard.press("Tab")
    assert _focused(page) == "in:0,0"
    assert highlighted(page, "#grid rect.feed") == {o for o, _ in want.feeds((0, 0))}
    for key, cell in (("ArrowRight", (0, 1)), ("ArrowDown", (1, 1)), ("PageDown", (9, 1)), ("PageDown", (11, 1)),
                      ("End", (11, 9)), ("ArrowRight", (11, 9)), ("Home", (11, 0)), ("PageUp", (3, 0))):
        page.keyboard.press(key)
        assert _focused(page) == "in:" + ",".join(map(str, cell)), key
        assert highlighted(page, "#grid rect.feed") == {o for o, _ in want.feeds(cell)}, key
    page.keyboard.press("Tab")
    assert _focused(page) == "out:0,0"
    page.keyboard.press("ArrowDown")
    page.keyboard.press("ArrowRight")
    assert _focused(page) == "out:1,1"
    taps = want.footprint((1, 1))
    assert highlighted(page, "#grid rect.hl, #grid rect.hl-pad") == {t.position for t in taps}
    page.keyboard.press("Enter")  # the animation jumps to that output cell
    assert page.text_content("#frame-label").startswith(f"frame {1 * want.output_size[1] + 1 + 1} /")
    # touch and pointer users skip a row of frames with buttons; long animations play fast
    page.click("#next-row")
    assert page.text_content("#frame-label").startswith(f"frame {2 * want.output_size[1] + 2} /")
    speeds = page.eval_on_selector_all("#speed option", "os => os.map(o => Number(o.value))")
    assert 4096 * 700 / max(speeds) / 1000 < 60  # a 64x64 input plays in under a minute


def _shown_slice(page: Any, group: str) -> int:
    values = page.eval_on_selector_all(f"#grid .{group} .slice", "gs => gs.filter(g => g.getAttribute('display') "
                                       "!== 'none').map(g => Number(g.dataset.z))")
    assert len(values) == 1, values
    return int(values[0])


def test_3d_slices_step_with_the_window_and_the_depth_keys(page, server_url):
    """3-D: one depth slice of the input and output at a time; the window's taps in it light up."""
    goto(page, server_url, "in=5x6x6&k=3x3x3&s=2x1x1&d=1x1x1&p=same")
    assert not page.is_visible("#error"), page.text_content("#error")
    want = ConvSpec((3, 3, 3), strides=(2, 1, 1), padding="same").resolve((5, 6, 6))
    assert page.text_content("#output-size") == " × ".join(map(str, want.output_size))
    frames = int(page.text_content("#frame-label").split("/")[1].split()[0])
    assert frames == math.prod(want.output_size)
    for key in ("End", "Home", "PageDown"):
        page.keyboard.press(key)
        out = tuple(int(v) for v in page.text_content("#frame-label").split("(")[1].rstrip(")").split(", "))
        taps = want.footprint(out)
        depths = sorted({t.position[0] for t in taps})
        assert _shown_slice(page, "output-grid") == out[0]
        z = _shown_slice(page, "input-grid")
        assert z in depths  # the input slice shown is one the window reads
        while z > depths[0]:
            page.keyboard.press("[")
            z -= 1
        for step in range(len(depths)):
            assert _shown_slice(page, "input-grid") == z
            shown = {t.position for t in taps if t.position[0] == z}
            assert {p for p in highlighted(page, "#grid rect.hl, #grid rect.hl-pad") if p[0] == z} == shown
            assert f"input slice {z} " in page.text_content("#depth-label")
            if step < len(depths) - 1:
                page.keyboard.press("]")
                z += 1
    # the slider reaches every padded depth slice
    assert page.get_attribute("#depth", "max") == str(want.padded_size[0] - 1)
    # too many cells to draw is refused in words, naming the input size
    goto(page, server_url, "in=40x40x40&k=3x3x3&s=1x1x1&d=1x1x1&p=valid")
    assert "too many to draw" in page.text_content("#error")


def test_export_gif_is_the_animation_the_command_draws(page, server_url, tmp_path):
    from PIL import Image

    goto(page, server_url, "in=6x5&k=3x2&s=2x1&d=1x1&p=explicit&pads=1,1x0,1&pm=zeros")
    frames = int(page.text_content("#frame-label").split("/")[1].split()[0])
    with page.expect_download() as gif_download:
        page.click("#export-gif")
    path = tmp_path / "page.gif"
    gif_download.value.save_as(path)
    assert gif_download.value.suggested_filename == "convarith.gif"
    want = ConvSpec((3, 2), strides=(2, 1), padding=((1, 1), (0, 1))).resolve((6, 5))
    with Image.open(path) as gif:
        assert gif.n_frames == frames == math.prod(want.output_size)
    # a refusal is shown in words next to the button, not downloaded
    goto(page, server_url, "in=64x64&k=3x3&s=1x1&d=1x1&p=same")
    page.route("**/api/animation.gif", lambda route: route.fulfill(
        status=422, content_type="application/json",
        body='{"error": {"message": "the GIF would have 4096 frames", "field": "every", "status": 422}}'))
    page.click("#export-gif")
    page.wait_for_function("document.getElementById('export-status').textContent.startsWith('no GIF')")


def test_quiz_hides_the_answer_and_checks_it(page):
    page.click("#quiz-toggle")
    assert page.evaluate("getComputedStyle(document.getElementById('output-size')).visibility") == "hidden"
    page.fill("#quiz-answer", "3x3")
    page.click("#quiz-check")
    assert "not yet" in page.text_content("#quiz-feedback")
    want = ConvSpec(3, strides=2, padding="same").resolve((7, 7)).output_size  # the default view
    page.fill("#quiz-answer", f"{want[0]}x{want[1]}")
    page.keyboard.press("Enter")
    assert page.text_content("#quiz-feedback").startswith("right")
    assert page.evaluate("getComputedStyle(document.getElementById('output-size')).visibility") == "visible"
    page.click("#quiz-new")
    settle(page)
    assert page.evaluate("document.body.classList.contains('quizzing')")


def test_a_kernel_tap_shows_the_input_cell_it_multiplies(page):
    """Output (0, 0) of the default view (7x7, k3, s2, 'same': pads (1, 1)): tap (2, 2) reads x[1, 1]."""
    resolved = ConvSpec(3, strides=2, padding="same").resolve((7, 7))
    want = next(t for t in resolved.footprint((0, 0)) if t.kernel == (2, 2))
    page.hover("#kernel [data-tap='2,2']")
    marked = highlighted(page, "#grid rect.tap-hover")
    assert marked == {want.position}
    assert f"x[{want.source[0]},{want.source[1]}]" in page.text_content("#cell-sum")
    page.focus("#kernel [data-tap='0,0']")
    first = next(t for t in resolved.footprint((0, 0)) if t.kernel == (0, 0))
    assert highlighted(page, "#grid rect.tap-hover") == {first.position}
    assert "a zero (padding)" in page.text_content("#cell-sum")


def test_3d_kernel_shows_the_depth_slice_that_reads_the_input_slice_shown(page, server_url):
    """5x6x6, k3, strides (2, 1, 1), 'same': the kernel slice shown is the one whose taps read the
    input slice shown (from convarith's footprint), and a tap marks its input cell on that slice."""
    goto(page, server_url, "in=5x6x6&k=3x3x3&s=2x1x1&d=1x1x1&p=same&frame=40")
    resolved = ConvSpec(3, strides=(2, 1, 1), padding="same").resolve((5, 6, 6))
    for step in range(3):
        index = tuple(int(v) for v in re.search(r"output \((\d+), (\d+), (\d+)\)",
                                                  page.text_content("#frame-label")).groups())
        depth = int(page.input_value("#depth"))
        reading = [t for t in resolved.footprint(index) if t.position[0] == depth]
        shown = page.eval_on_selector_all("#kernel .k-slice:not([display='none'])", "n => n.map(x => x.dataset.kz)")
        if not reading:  # a slice the window does not read: no kernel slice
            assert shown == [], (index, depth, shown)
        else:
            kz = reading[0].kernel[0]
            assert shown == [str(kz)], (index, depth, shown)
            tap = reading[-1]
            page.hover(f"#kernel [data-tap='{','.join(map(str, tap.kernel))}']")
            assert highlighted(page, "#grid rect.tap-hover") == {tap.position}, (index, tap)
            page.mouse.move(0, 0)
        page.evaluate("document.activeElement.blur()")
        page.keyboard.press("]" if step < 2 else "[")


def test_a_grid_control_does_not_redraw_the_layer_stack_but_the_input_size_does(page):
    sent: list[str] = []
    page.on("request", lambda request: sent.append(request.url.rsplit("/", 1)[-1]))
    page.fill("#k-0", "5")
    settle(page)
    assert "geometry" in sent and "stack" not in sent, sent
    sent.clear()
    page.fill("#in-0", "9")
    settle(page)
    assert "stack" in sent, sent
    assert page.eval_on_selector_all("#layers [data-size]", "n => n.map(x => x.textContent)")[0].startswith("9 ×")


def test_transposed_scatter_view_steps_through_input_cells(page, server_url):
    """Each frame is one input cell; the output cells it adds to are the framework's own
    (PyTorch ConvTranspose2d: a one-hot input's output is non-zero exactly there)."""
    goto(page, server_url, "in=3x3&k=3x3&s=2x2&d=1x1&p=explicit&pads=1,1x1,1&t=1&view=scatter")
    assert page.input_value("#view") == "scatter"
    assert "frame 1 / 9 · input (0, 0)" in page.text_content("#frame-label")
    page.click("#next")
    page.click("#next")
    page.click("#next")  # input (1, 0)
    marked = highlighted(page, "#grid rect.out.current")
    torch = pytest.importorskip("torch")
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 1, 0] = 1.0
    y = torch.nn.functional.conv_transpose2d(x, torch.ones(1, 1, 3, 3), stride=2, padding=1)
    want = {tuple(int(v) for v in idx) for idx in torch.nonzero(y[0, 0]).tolist()}
    assert marked == want
    assert "--view scatter" in page.text_content("#cli")
