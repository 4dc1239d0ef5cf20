"""How long the pictures take to render, and how big the files are.

Renders the lesson's 5×5 'same' + stride-2 animation and a 16×16 dilated one
(3×3 kernel, dilation 2 -> 144 frames) as GIF and SVG, and times the whole
tour page. Prints medians of a few runs (machines here are shared and noisy).

    python benchmarks/render.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from convarith import ConvSpec, animate
from convarith.tour import build_tour


def _median_seconds(run: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    cases = [
        ("lesson 5×5, 'same', stride 2", ConvSpec(3, padding="same", strides=2), (5, 5), {}),
        ("lesson 5×5 with cell values", ConvSpec(3, padding="same", strides=2), (5, 5), {"values": True}),
        ("16×16, 3×3 dilation 2", ConvSpec(3, dilation=2), (16, 16), {}),
        ("16×16 dilated, flat view", ConvSpec(3, dilation=2), (16, 16), {"view": "flat"}),
    ]
    print(f"{'animation':<32} {'frames':>6} {'GIF s':>7} {'GIF KiB':>8} {'SVG s':>7} {'SVG KiB':>8}")
    for name, spec, size, options in cases:
        gif_s, gif = _median_seconds(lambda s=spec, n=size, o=options: animate(s, n, **o).to_gif(), args.repeat)
        svg_s, svg = _median_seconds(lambda s=spec, n=size, o=options: animate(s, n, **o).to_svg(), args.repeat)
        frames = len(animate(spec, size, **options))
        assert isinstance(gif, bytes) and isinstance(svg, str)
        print(f"{name:<32} {frames:>6} {gif_s:>7.2f} {len(gif) / 1024:>8.1f} {svg_s:>7.2f} "
              f"{len(svg.encode()) / 1024:>8.1f}")
    tour_s, page = _median_seconds(lambda: build_tour(progress=False), args.repeat)
    assert isinstance(page, str)
    print(f"\ntour page: {tour_s:.2f} s, {len(page.encode()) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
