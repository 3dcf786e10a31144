"""A line chart as a PNG with nothing but zlib and struct: the drain over time for the docs.

Axes with tick marks every tenth of the range; the labels live in the markdown beside the
picture, since drawing text would need a font.
"""

from __future__ import annotations

import itertools
import struct
import zlib
from pathlib import Path

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (225, 225, 225)
COLORS: list[Color] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]
TICKS = 10


class Canvas:
    """RGB pixels, (0, 0) at the top left."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(WHITE * (width * height))

    def dot(self, x: int, y: int, color: Color, size: int = 1) -> None:
        for dx in range(size):
            for dy in range(size):
                px, py = x + dx, y + dy
                if 0 <= px < self.width and 0 <= py < self.height:
                    at = 3 * (py * self.width + px)
                    self.pixels[at : at + 3] = bytes(color)

    def line(self, a: tuple[int, int], b: tuple[int, int], color: Color, size: int = 1) -> None:
        """Straight from a to b, one dot per pixel step along the longer axis."""
        steps = max(abs(b[0] - a[0]), abs(b[1] - a[1]), 1)
        for i in range(steps + 1):
            x = a[0] + (b[0] - a[0]) * i // steps
            y = a[1] + (b[1] - a[1]) * i // steps
            self.dot(x, y, color, size)

    def png(self) -> bytes:
        rows = b"".join(
            b"\x00" + bytes(self.pixels[3 * self.width * y : 3 * self.width * (y + 1)])
            for y in range(self.height)
        )
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + b"".join(
            _chunk(kind, data)
            for kind, data in ((b"IHDR", header), (b"IDAT", zlib.compress(rows, 9)), (b"IEND", b""))
        )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def line_chart(
    series: list[list[tuple[float, int]]],
    path: Path,
    *,
    size: tuple[int, int] = (800, 400),
    margin: int = 40,
) -> tuple[float, int]:
    """Draw each series (x, y) in its color on shared axes from 0; returns (x max, y max)."""
    width, height = size
    canvas = Canvas(width, height)
    x_max = max((x for points in series for x, _ in points), default=1.0) or 1.0
    y_max = max((y for points in series for _, y in points), default=1) or 1
    left, right, top, bottom = margin, width - margin // 2, margin // 2, height - margin

    def at(x: float, y: float) -> tuple[int, int]:
        return (
            left + round((right - left) * x / x_max),
            bottom - round((bottom - top) * y / y_max),
        )

    for i in range(1, TICKS + 1):  # light grid and tick marks at each tenth
        gx, gy = at(x_max * i / TICKS, y_max * i / TICKS)
        canvas.line((gx, top), (gx, bottom), GREY)
        canvas.line((left, gy), (right, gy), GREY)
        canvas.line((gx, bottom), (gx, bottom + 6), BLACK)
        canvas.line((left - 6, gy), (left, gy), BLACK)
    canvas.line((left, bottom), (right, bottom), BLACK, 2)
    canvas.line((left, top), (left, bottom), BLACK, 2)
    for index, points in enumerate(series):
        color = COLORS[index % len(COLORS)]
        for a, b in itertools.pairwise(points):
            canvas.line(at(*a), at(*b), color, 2)
    path.write_bytes(canvas.png())
    return x_max, y_max
