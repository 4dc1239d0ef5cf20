"""The explorer's oblique 3-D view: the whole volume at an angle, stepped like the slices.

The volumes' layout comes from :func:`convarith.viz.scene.build_volume_scene`
through ``POST /api/volume``; the voxels the window reads come from the
geometry's taps. The tests check the view against :meth:`ResolvedConv.footprint`
and the server's ``/api/footprint``, and look at it as people see it (phone and
laptop widths, light and dark, axe-core audit) in headless Chromium.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pytest

from convarith import ConvSpec
from convarith.viz.scene import build_volume_scene
from convarith.web.api import MAX_VOLUME_CUBES, ApiError, Limits, volume_payload
from test_web_browser import (  # noqa: F401 - fixtures shared with the page's other browser tests
    _LAYOUT_PROBE,
    _axe_source,
    browser,
    goto,
    highlighted,
    server_url,
    settle,
)

VIEW_3D = "in=5x6x6&k=3x3x3&s=2x1x1&d=1x1x1&p=same"
_VOLUME_PROBE = _LAYOUT_PROBE.replace("['grid', 'stack-svg']", "['volume', 'stack-svg']")


def _text_width(text: str, size: float) -> float:
    return 0.62 * size * len(text)  # DejaVu Sans is about 0.6 em a glyph: a generous estimate


def _output_shown(page: Any) -> tuple[int, ...]:
    text = page.text_content("#frame-label")
    return tuple(int(v) for v in text.split("(")[1].rstrip(")").split(", "))


def _voxels(page: Any) -> set[tuple[int, ...]]:
    return highlighted(page, "#volume .voxel[data-pos]")


# --------------------------------------------------------------------------- the layout (no browser)


@pytest.mark.parametrize("size, kernel, stride, padding, transposed, pool", [
    ((5, 6, 6), 3, (2, 1, 1), "same", False, None),
    ((16, 16, 16), 3, 1, "same", False, None),
    ((3, 4, 5), 3, 2, "valid", True, None),
    ((7, 7, 7), 2, 2, "valid", False, "max"),
    ((7, 6, 5), 2, 2, "valid", False, "ceil"),  # ceil-mode max pooling: the last windows overhang
    ((9, 5, 7), 3, 2, "valid", False, None),  # dropped rows on every axis
    ((1, 1, 1), 1, 1, "valid", False, None),
])
@pytest.mark.parametrize("room", [330, 600, 950])
def test_volume_layout_fits_its_room_and_its_labels_do_not_collide(size, kernel, stride, padding,
                                                                   transposed, pool, room):
    resolved = ConvSpec(kernel, strides=stride, padding=padding, transposed=transposed,
                        pool="max" if pool == "ceil" else pool, ceil_mode=pool == "ceil", rank=3).resolve(size)
    picture = build_volume_scene(resolved, room=room)
    assert picture.lower.size == tuple(n + e for n, e in zip(resolved.padded_size, resolved.overhang))
    assert picture.upper.size == tuple(resolved.output_size)
    assert picture.scene.width <= room + 0.5, (picture.scene.width, picture.cell)
    boxes = []
    for shape in picture.scene.shapes:
        for x, y in shape.points:
            assert -0.5 <= x <= picture.scene.width + 0.5 and -0.5 <= y <= picture.scene.height + 0.5
        if shape.kind == "text":
            (x, y), = shape.points
            w = _text_width(shape.text, shape.size)
            left = x - w if shape.anchor[0] == "r" else x - w / 2 if shape.anchor[0] == "m" else x
            assert left >= -0.5 and left + w <= picture.scene.width + 0.5, shape.text
            boxes.append((shape.text, left, y - shape.size / 2, left + w, y + shape.size / 2))
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            apart = a[3] <= b[1] or b[3] <= a[1] or a[4] <= b[2] or b[4] <= a[2]
            assert apart, (a, b)
    # both volumes lie inside the picture, and apart
    lx0, ly0, lx1, ly1 = picture.lower.bounds()
    ux0, uy0, ux1, uy1 = picture.upper.bounds()
    assert lx1 <= ux0 or ly1 <= uy0


def test_the_volume_draws_its_sides_not_its_cells():
    """The number of still shapes grows with the volumes' sides, not with their voxel count."""
    def count(n: int) -> int:
        return len(build_volume_scene(ConvSpec(3, padding="same", rank=3).resolve((n, n, n))).scene.shapes)

    small, big = count(4), count(16)
    assert big < 8 * small  # 64 times the voxels, about 4 times the shapes
    assert count(16) < 6 * 3 * (18 + 16 + 2) + 40


def test_the_volume_endpoint_refuses_what_it_cannot_draw():
    with pytest.raises(ApiError, match="3-D convolutions; this one has 2 axes"):
        volume_payload({"input_size": [5, 5], "kernel_size": 3}, Limits())
    with pytest.raises(ApiError, match="room"):
        volume_payload({"input_size": [5, 5, 5], "kernel_size": 3, "room": 10}, Limits())
    reply = volume_payload({"input_size": [5, 5, 5], "kernel_size": 3, "room": 500}, Limits())
    assert reply["max_cubes"] == MAX_VOLUME_CUBES
    assert {s["role"] for s in reply["shapes"]} >= {"vol-input", "vol-output", "label", "output-label"}


# --------------------------------------------------------------------------- in the browser


@pytest.fixture()
def page(browser: Any, server_url: str) -> Any:  # noqa: F811 - the fixtures imported above
    context = browser.new_context(viewport={"width": 1280, "height": 900}, bypass_csp=True)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    yield tab
    context.close()
    assert not errors, errors


pytestmark = pytest.mark.browser


def test_the_toggle_shows_the_volume_and_its_voxels_are_the_servers_window(page, server_url):  # noqa: F811
    goto(page, server_url, VIEW_3D)
    assert page.is_visible("#grid") and not page.is_visible("#volume")
    page.click("#look-oblique")
    settle(page)
    page.wait_for_selector("#volume .voxel")
    assert page.is_visible("#volume") and not page.is_visible("#grid")
    assert "look=oblique" in page.url
    assert page.get_attribute("#look-oblique", "aria-pressed") == "true"
    want = ConvSpec((3, 3, 3), strides=(2, 1, 1), padding="same").resolve((5, 6, 6))
    settings = {"input_size": [5, 6, 6], "kernel_size": [3, 3, 3], "strides": [2, 1, 1], "padding": "same"}
    page.focus("#volume")
    seen = []
    for key in ("ArrowRight", "PageDown", "ArrowRight", "End", "Home"):
        page.keyboard.press(key)
        out = _output_shown(page)
        reply = page.request.post(server_url + "api/footprint", data={**settings, "output": list(out)}).json()
        server = {tuple(t["position"]) for t in reply["taps"]}
        assert _voxels(page) == server == {t.position for t in want.footprint(out)}, (key, out)
        # padding voxels are drawn as padding, real ones as read input
        padding = {tuple(t["position"]) for t in reply["taps"] if t["source"] is None}
        assert highlighted(page, "#volume .voxel.pad") == padding
        assert highlighted(page, "#volume .voxel.out") == {out}
        seen.append(frozenset(server))
        depths = sorted({p[0] for p in server})
        assert page.text_content("#depth-label").startswith(  # no "input slice z": none is singled out
            f"the window reads slices {depths[0]}–{depths[-1]} of 0–{want.padded_size[0] - 1}")
    assert len(set(seen)) >= 4  # the voxels move with the steps
    # play runs the same player
    page.keyboard.press(" ")
    page.wait_for_function("document.getElementById('frame-label').textContent.startsWith('frame 3 ')")
    page.keyboard.press(" ")
    assert _voxels(page) == {t.position for t in want.footprint(_output_shown(page))}
    # the shared link opens the oblique view; O goes back to slices, by keyboard alone
    goto(page, server_url, VIEW_3D + "&look=oblique&frame=7")
    page.wait_for_selector("#volume .voxel")
    assert _voxels(page) == {t.position for t in want.footprint(_output_shown(page))}
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("o")
    assert page.is_visible("#grid") and not page.is_visible("#volume")
    assert "look=oblique" not in page.url
    out = _output_shown(page)  # the slices are whole again, the window lit in them
    assert highlighted(page, "#grid rect.hl, #grid rect.hl-pad") == {t.position for t in want.footprint(out)}
    page.focus("#look-oblique")
    page.keyboard.press("Enter")
    page.wait_for_selector("#volume .voxel")
    assert page.is_visible("#volume")


def test_a_big_volume_stays_small_to_draw(page, server_url):  # noqa: F811
    goto(page, server_url, "in=16x16x16&k=3x3x3&s=1x1x1&d=1x1x1&p=same&look=oblique")
    page.wait_for_selector("#volume .voxel")
    drawn = page.evaluate("document.querySelectorAll('#volume *').length")
    assert drawn < 600, drawn  # 18 x 18 x 18 padded voxels, drawn as faces and grid lines
    page.keyboard.press("End")
    assert _voxels(page) == {t.position for t in ConvSpec(3, padding="same", rank=3).resolve((16, 16, 16))
                             .footprint((15, 15, 15))}
    # past MAX_VOLUME_CUBES taps the window is drawn as its box alone
    goto(page, server_url, "in=9x9x9&k=8x8x8&s=1x1x1&d=1x1x1&p=valid&look=oblique")
    page.wait_for_selector("#volume .voxel.many")
    assert 8 ** 3 > MAX_VOLUME_CUBES
    assert page.locator("#volume .voxel[data-pos]").count() == 0
    assert page.evaluate("document.querySelectorAll('#volume *').length") < 600


_SHOTS = [(390, 844, "light"), (1280, 800, "light"), (390, 844, "dark"), (1280, 800, "dark")]


@pytest.mark.parametrize("width, height, scheme",
                         _SHOTS[::3] if os.environ.get("CI") == "true" else _SHOTS)  # CI: phone light, laptop dark
def test_the_oblique_view_fits_without_overflow_or_colliding_labels(browser, server_url, width, height,  # noqa: F811
                                                                     scheme):
    context = browser.new_context(viewport={"width": width, "height": height}, color_scheme=scheme,
                                  bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    try:
        for query in (VIEW_3D + "&frame=40", "in=16x16x16&k=3x3x3&s=1x1x1&d=1x1x1&p=same",
                      "in=3x4x5&k=3x3x3&s=2x2x2&d=1x1x1&p=valid&t=1", "in=9x5x7&k=3x3x3&s=2x2x2&d=1x1x1&p=valid"):
            goto(page, server_url, query + "&look=oblique")
            page.wait_for_selector("#volume .voxel")
            assert page.is_visible("#volume")
            problems = page.evaluate(_VOLUME_PROBE)
            assert not problems, (width, scheme, query, problems)
    finally:
        context.close()
    assert not errors, errors


@pytest.mark.parametrize("width", [390, 1280])
def test_accessibility_audit_with_the_oblique_view_open(browser, server_url, width):  # noqa: F811
    source = _axe_source()
    if source is None:
        pytest.skip("axe-core not installed (npm install --no-save axe-core@4.14.1, or set AXE_CORE_JS)")
    context = browser.new_context(viewport={"width": width, "height": 900}, bypass_csp=True)
    page = context.new_page()
    try:
        goto(page, server_url, VIEW_3D + "&look=oblique")
        page.wait_for_selector("#volume .voxel")
        page.add_script_tag(content=source)
        result = page.evaluate("async () => (await axe.run(document, {resultTypes: ['violations']})).violations"
                               ".map(v => ({id: v.id, impact: v.impact, nodes: v.nodes.slice(0, 3).map(n => n.target.join(' '))}))")
    finally:
        context.close()
    bad = [v for v in result if v["impact"] in ("serious", "critical")]
    assert not bad, bad


def test_export_draws_the_oblique_picture(page, server_url):  # noqa: F811
    goto(page, server_url, VIEW_3D + "&look=oblique")
    page.wait_for_selector("#volume .voxel")
    with page.expect_download() as download:
        page.click("#export-svg")
    text = open(download.value.path(), encoding="utf-8").read()
    assert "<polygon" in text and "data-pos" in text and math.isfinite(len(text))


# --------------------------------------------------------------------------- as a newcomer sees it


def test_a_1d_strip_on_a_phone_has_cells_big_enough_for_their_labels(browser, server_url):  # noqa: F811
    """At 390 px a 1-D input of 12 went side by side with its output in 15 px cells, too small
    for the kernel's tap labels; the two strips now stack and the cells carry their labels."""
    context = browser.new_context(viewport={"width": 390, "height": 844}, bypass_csp=True)
    page = context.new_page()
    try:
        goto(page, server_url, "in=12&k=3&s=2&d=1&p=same&frame=2")
        cell = float(page.get_attribute("#grid rect.cell.in", "width")) + 1
        assert cell >= 26, cell
        assert page.locator("#grid .tap-label").count() == 3
        assert not page.evaluate(_LAYOUT_PROBE)
    finally:
        context.close()


def test_the_transposed_view_menu_shows_its_whole_choice(browser, server_url):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True)
    page = context.new_page()
    try:
        goto(page, server_url, "in=3x3&k=3x3&s=2x2&d=1x1&p=valid&t=1")
        room, text = page.evaluate("""() => {
          const select = document.getElementById('view'), probe = document.createElement('span');
          probe.style.font = getComputedStyle(select).font;
          probe.textContent = select.selectedOptions[0].textContent;
          document.body.appendChild(probe);
          const text = probe.getBoundingClientRect().width;
          probe.remove();
          return [select.clientWidth - 26, text];  // less the arrow and the padding
        }""")
        assert text <= room, (text, room)
    finally:
        context.close()


def test_the_oblique_view_hides_the_answer_in_a_quiz_and_steps_aside_for_the_scatter_view(page, server_url):  # noqa: F811
    goto(page, server_url, VIEW_3D + "&look=oblique")
    page.wait_for_selector("#volume .voxel")
    page.click("#quiz-toggle")
    for selector in ("#volume .vol-output", "#volume .output-label", "#volume .voxel.out"):
        assert page.eval_on_selector(selector, "n => getComputedStyle(n).visibility") == "hidden", selector
    assert page.eval_on_selector("#volume .vol-input", "n => getComputedStyle(n).visibility") == "visible"
    # the scatter view steps through input cells: the slices show it, the oblique button says why not
    goto(page, server_url, "in=3x3x3&k=2x2x2&s=2x2x2&d=1x1x1&p=valid&t=1&view=scatter&look=oblique")
    assert page.is_visible("#grid") and not page.is_visible("#volume")
    assert page.is_disabled("#look-oblique")
    assert "direct view" in page.get_attribute("#look-oblique", "title")


@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((7, 7), (2, 2), (2, 2), "valid"), ((16,), (3,), (2,), "valid"), ((6, 5), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((5, 6, 7), (2, 2, 2), (2, 2, 2), "valid"),
])
def test_every_cell_a_ceil_mode_window_reads_is_in_the_geometry(size, kernel, stride, padding):
    """The grid the page draws reaches as far as the windows: a ceil-mode pooling window
    overhangs the padded input, and its last taps must have cells to light up."""
    from convarith.web.api import geometry_payload, parse_settings

    rank = len(size)
    body = {"input_size": list(size), "kernel_size": list(kernel), "strides": list(stride), "rank": rank,
            "padding": padding if isinstance(padding, str) else [list(p) for p in padding],
            "pool": "max", "ceil_mode": True}
    data = geometry_payload(parse_settings(body, Limits()), Limits())
    resolved = ConvSpec(kernel, strides=stride, padding=padding, pool="max", ceil_mode=True).resolve(size)
    assert any(resolved.overhang)  # each case has a window past the padded input
    for axis in range(rank):
        grid = data["axes"][axis]["grid"]
        assert len(grid) == resolved.padded_size[axis] + resolved.overhang[axis]
        reached = {t.position[0] for o in range(resolved.output_size[axis]) for t in resolved.axis_taps(axis, o)}
        assert max(reached) == len(grid) - 1
        assert {grid[p]["kind"] for p in reached if p >= resolved.padded_size[axis]} == (
            {"beyond"} if resolved.overhang[axis] else set())


def test_a_ceil_mode_window_lights_up_all_its_cells(page, server_url):  # noqa: F811
    goto(page, server_url, "in=7x7&k=2x2&s=2x2&d=1x1&p=valid&pool=max&ceil=1")
    page.keyboard.press("End")
    want = ConvSpec(2, strides=2, pool="max", ceil_mode=True).resolve((7, 7))
    out = _output_shown(page)
    assert out == (3, 3)
    taps = want.footprint(out)
    assert highlighted(page, "#grid rect.hl, #grid rect.hl-pad") == {t.position for t in taps}
    assert highlighted(page, "#grid rect.hl") == {(6, 6)}  # the one real cell: the maximum of one
    assert highlighted(page, "#grid rect[data-kind='beyond']") >= {(6, 7), (7, 6), (7, 7)}
    assert page.is_visible(".legend .beyond-only")
    assert "8 × 8 (the last window overhangs)" in page.text_content("#grid .grid-label")
    assert "max(x[6,6])" in page.text_content("#cell-sum")
    goto(page, server_url, VIEW_3D)
    assert not page.is_visible(".legend .beyond-only")


def test_the_gif_export_says_it_draws_slices_when_the_volume_is_shown(page, server_url):  # noqa: F811
    goto(page, server_url, "in=3x3x3&k=2x2x2&s=1x1x1&d=1x1x1&p=valid&look=oblique")
    page.wait_for_selector("#volume .voxel")
    with page.expect_download():
        page.click("#export-gif")
    page.wait_for_function("document.getElementById('export-status').textContent.includes('depth slices')")


def test_the_volume_is_laid_out_again_when_the_window_narrows(page, server_url):  # noqa: F811
    goto(page, server_url, VIEW_3D + "&look=oblique&frame=5")
    page.wait_for_selector("#volume .voxel")
    wide = float(page.get_attribute("#volume", "width"))
    before = _voxels(page)
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function(f"Number(document.getElementById('volume').getAttribute('width')) < {wide}")
    page.wait_for_selector("#volume .voxel")
    assert _voxels(page) == before  # the same step, drawn again
    assert not page.evaluate(_VOLUME_PROBE)


def test_a_narrowed_window_lays_the_grid_and_the_layer_stack_out_again(page, server_url):  # noqa: F811
    """The layer stack's picture kept its desktop width when the window narrowed (a cut label)."""
    goto(page, server_url, "in=28x28&k=3x3&s=2x2&d=1x1&p=same&tab=stack")
    page.set_viewport_size({"width": 390, "height": 844})
    page.wait_for_function("document.getElementById('stack-svg').getBoundingClientRect().right <= innerWidth")
    assert not page.evaluate(_LAYOUT_PROBE)


def test_the_3d_slices_name_the_slice_they_show(page, server_url):  # noqa: F811
    """A 3-D input drawn one slice at a time said only "input 5 × 6 × 6": the picture looked 2-D."""
    goto(page, server_url, VIEW_3D + "&frame=40")
    labels = page.eval_on_selector_all("#grid .grid-label", "ts => ts.map(t => t.textContent)")
    assert labels[0].endswith("· slice 2") and labels[1].endswith("· slice 1"), labels
    page.evaluate("document.activeElement.blur()")
    page.keyboard.press("]")
    assert page.eval_on_selector("#grid .grid-label", "t => t.textContent").endswith("· slice 3")
    assert not page.evaluate(_LAYOUT_PROBE)


def test_a_kernel_tap_marks_the_voxel_it_multiplies_in_the_volume(page, server_url):  # noqa: F811
    goto(page, server_url, VIEW_3D + "&look=oblique&frame=40")
    page.wait_for_selector("#volume .voxel")
    out = _output_shown(page)
    want = ConvSpec((3, 3, 3), strides=(2, 1, 1), padding="same").resolve((5, 6, 6))
    shown = page.get_attribute("#kernel .k-slice:not([display='none'])", "data-kz")
    tap = next(t for t in want.footprint(out) if t.kernel == (int(shown), 1, 2))
    page.hover(f"#kernel [data-tap='{shown},1,2']")
    assert highlighted(page, "#volume .voxel.tap-hover") == {tap.position}
    page.mouse.move(0, 0)
