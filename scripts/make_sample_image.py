"""Draw the explorer's bundled sample picture (src/convarith/web/static/sample.png).

A 96x96 grayscale scene made only of geometry - a disc, a square, a triangle,
stripes at two angles and a smooth gradient - so every kernel preset (edge,
blur, sharpen, Sobel) has something to show. Deterministic: running it again
writes the same bytes.

    .venv/bin/python scripts/make_sample_image.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 96
OUT = Path(__file__).resolve().parents[1] / "src" / "convarith" / "web" / "static" / "sample.png"


def draw(size: int = SIZE) -> np.ndarray:
    """The scene as uint8 pixels."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    picture = 40 + 60 * x / (size - 1)  # gradient background
    picture[(x - 30) ** 2 + (y - 30) ** 2 < 16**2] = 230  # disc
    picture[(x > 56) & (x < 84) & (y > 12) & (y < 40)] = 20  # square
    triangle = (y > 56) & (y < 88) & (np.abs(x - 26) < (y - 56) * 0.6)
    picture[triangle] = 200
    stripes = (x > 52) & (x < 90) & (y > 52) & (y < 90)
    picture[stripes & (((x + y) // 4) % 2 == 0)] = 245
    picture[stripes & (((x + y) // 4) % 2 == 1)] = 15
    return np.clip(picture, 0, 255).astype(np.uint8)


def main() -> None:
    OUT.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(draw(), mode="L").save(OUT, format="PNG", optimize=True)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
