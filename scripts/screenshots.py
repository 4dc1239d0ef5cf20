"""Refresh the screenshots in docs/images/: the explorer and the tour, at phone and desktop widths.

Starts the explorer on a free loopback port, builds the tour page, and takes
full-page screenshots with headless Chromium (Playwright) at 390×844 (a phone)
and 1280×800 (a laptop)::

    python scripts/screenshots.py            # all of them, into docs/images/
    python scripts/screenshots.py --out /tmp/shots --query "in=5x5&k=3x3&p=same"
    python scripts/screenshots.py --no-tour --name explorer-3d --query "in=5x6x6&k=3x3x3&s=2x1x1&d=1x1x1&p=same&frame=40"
    python scripts/screenshots.py --no-tour --name explorer-3d-oblique --query "in=5x6x6&k=3x3x3&s=2x1x1&d=1x1x1&p=same&frame=40&look=oblique"
    python scripts/screenshots.py --timing     # first paint and per-control redraw at 28x28

Needs playwright, starlette, uvicorn and /usr/bin/chromium.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import threading
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu"]
WIDTHS = {"phone": (390, 844), "desktop": (1280, 800)}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _serve() -> tuple[str, object]:
    import uvicorn

    from convarith.web import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(), host="127.0.0.1", port=port,
                                           log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline:
            raise SystemExit("the explorer server did not start")
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/", server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "images"))
    parser.add_argument("--query", default="in=7x7&k=3x3&s=2x2&d=1x1&p=same&tab=stack",
                        help="the explorer view to show (its URL query)")
    parser.add_argument("--no-tour", action="store_true", help="skip the tour page")
    parser.add_argument("--name", default="explorer",
                        help="file name prefix of the explorer shots (e.g. explorer-3d with a 3-D --query)")
    parser.add_argument("--dark", action="store_true", help="also shoot the explorer and the tour in dark mode")
    parser.add_argument("--timing", action="store_true",
                        help="measure first paint and each control's redraw at 28x28 instead")
    args = parser.parse_args()
    if args.timing:
        timing()
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    url, server = _serve()
    tour_file = None
    if not args.no_tour:
        from convarith.tour import build_tour

        tour_file = Path(tempfile.mkdtemp()) / "tour.html"
        tour_file.write_text(build_tour(progress=False), encoding="utf-8")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        schemes = ["light", "dark"] if args.dark else ["light"]
        for name, (width, height) in WIDTHS.items():
            for scheme in schemes:
                context = browser.new_context(viewport={"width": width, "height": height},
                                              color_scheme=scheme,  # type: ignore[arg-type]
                                              bypass_csp=True)
                page = context.new_page()
                page.goto(url + "?" + args.query)
                page.wait_for_function(
                    "document.body.dataset.busy === '' && !!document.body.dataset.ready")
                suffix = "" if scheme == "light" else "-dark"
                target = out / f"{args.name}-{name}{suffix}.png"
                page.screenshot(path=str(target), full_page=name == "phone")
                print(target)
                if name == "desktop" and scheme == "light" and args.name == "explorer":  # the README's picture
                    page.screenshot(path=str(out / "explorer.png"))
                if tour_file is not None:
                    page.goto(tour_file.as_uri())
                    target = out / f"tour-{name}{suffix}.png"
                    page.screenshot(path=str(target))
                    print(target)
                context.close()
        browser.close()
    server.should_exit = True  # type: ignore[attr-defined]


_REDRAW = """([selector, value]) => new Promise((done) => {
  const start = performance.now(), box = document.querySelector(selector);
  const before = document.body.dataset.drawn;
  box.value = value;
  box.dispatchEvent(new Event("input", {bubbles: true}));
  const poll = () => (document.body.dataset.drawn !== before ? done(performance.now() - start)
                                                               : requestAnimationFrame(poll));
  poll();
})"""


def timing(repeats: int = 5) -> None:
    """First paint of the explorer on loopback, and the time from a control's change to the
    redrawn grid (includes the 16 ms keystroke coalescing), medians over ``repeats``."""
    import statistics

    from playwright.sync_api import sync_playwright

    url, server = _serve()
    view = url + "?in=28x28&k=3x3&s=1x1&d=1x1&p=same"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 800}, bypass_csp=True).new_page()
        paints = []
        for _ in range(repeats):
            page.goto(view)
            page.wait_for_function("!!document.body.dataset.drawn")
            # the paint entry can be recorded a frame after the page says it has drawn
            page.wait_for_function("performance.getEntriesByName('first-contentful-paint').length > 0")
            paints.append(page.evaluate(
                "performance.getEntriesByName('first-contentful-paint')[0].startTime"))
        print(f"first contentful paint: median {statistics.median(paints):.0f} ms "
              f"(runs {', '.join(f'{t:.0f}' for t in paints)})")
        for selector, values in (("#k-0", ("5", "3")), ("#s-0", ("2", "1")), ("#d-0", ("2", "1")),
                                 ("#in-1", ("27", "28")), ("#padding", ("valid", "same"))):
            times = [page.evaluate(_REDRAW, [selector, values[i % 2]]) for i in range(2 * repeats)]
            print(f"{selector:10s} redraw: median {statistics.median(times):.0f} ms "
                  f"(max {max(times):.0f})")
        browser.close()
    server.should_exit = True  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
