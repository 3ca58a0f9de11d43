"""Draw the page's app icons (``src/freestems/web/static/icons/``): the brand mark of the page's header, four
rounded bars, white on the accent colour of ``app.css``.

The web app manifest (``src/freestems/web/manifest.webmanifest``) lists them: ``icon-192.png`` and
``icon-512.png`` (a rounded square, transparent corners) and ``maskable-512.png`` (the colour to every edge,
the bars inside the central safe circle, since a launcher may cut any shape out of it). The PNG files are
committed; run this again only to change them::

    python3 scripts/make_icons.py

Only numpy and the standard library: each shape is drawn at 4x and averaged down (anti-aliased edges), and
the PNG is written by hand (one IDAT chunk, 8-bit RGBA).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np

FOLDER = Path(__file__).resolve().parents[1] / "src" / "freestems" / "web" / "static" / "icons"
ACCENT = (0x4F, 0x3F, 0xD6)
"""``--accent`` of app.css (light scheme): the manifest's ``theme_color`` too."""
BARS = (0.40, 0.80, 1.00, 0.55)
"""The bars' heights, as the header's ``.brand-mark i`` (relative to the tallest)."""
SUPERSAMPLE = 4


def rounded_box(size: int, left: float, top: float, right: float, bottom: float, radius: float) -> np.ndarray:
    """Coverage (0..1) of a rounded rectangle in a ``size`` x ``size`` image; coordinates in pixels."""
    fine = size * SUPERSAMPLE
    centres = (np.arange(fine) + 0.5) / SUPERSAMPLE
    x, y = np.meshgrid(centres, centres)
    dx = np.maximum(np.maximum(left + radius - x, x - (right - radius)), 0)
    dy = np.maximum(np.maximum(top + radius - y, y - (bottom - radius)), 0)
    inside = (x >= left) & (x <= right) & (y >= top) & (y <= bottom) & (dx**2 + dy**2 <= radius**2)
    return inside.reshape(size, SUPERSAMPLE, size, SUPERSAMPLE).mean(axis=(1, 3))


def bars(size: int, extent: float) -> np.ndarray:
    """Coverage of the four bars, centred, the tallest ``extent`` of the image's side."""
    tallest = extent * size
    width = tallest * 0.16
    gap = tallest * 0.12
    total = 4 * width + 3 * gap
    coverage = np.zeros((size, size))
    for index, height in enumerate(BARS):
        left = (size - total) / 2 + index * (width + gap)
        top = (size - height * tallest) / 2
        bar = rounded_box(size, left, top, left + width, top + height * tallest, width / 2)
        coverage = np.maximum(coverage, bar)
    return coverage


def icon(size: int, maskable: bool) -> np.ndarray:
    """RGBA pixels: white bars on the accent colour (a full square when ``maskable``)."""
    if maskable:  # the safe zone is the central circle of 80 % of the side: the bars stay inside it
        shape, mark = np.ones((size, size)), bars(size, 0.42)
    else:
        shape, mark = rounded_box(size, 0, 0, size, size, size * 0.22), bars(size, 0.6)
    rgb = np.empty((size, size, 3))
    for channel, value in enumerate(ACCENT):
        rgb[..., channel] = value * (1 - mark) + 255 * mark
    alpha = shape * 255
    return np.dstack([rgb, alpha]).round().clip(0, 255).astype(np.uint8)


def png(pixels: np.ndarray) -> bytes:
    """An 8-bit RGBA PNG of ``pixels`` (height, width, 4)."""
    height, width, _ = pixels.shape
    rows = b"".join(b"\x00" + pixels[row].tobytes() for row in range(height))  # filter 0 on every row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(rows, 9))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    shapes = [("icon-192", 192, False), ("icon-512", 512, False), ("maskable-512", 512, True)]
    for name, size, maskable in shapes:
        path = FOLDER / f"{name}.png"
        path.write_bytes(png(icon(size, maskable)))
        print(f"{path}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
