"""The byte vectors of the contract: `shtrih.txt` beside this file is a verbatim copy of
vectors/shtrih.txt from the shared contract folder, so a bare clone can run the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kktd.kkt.frames import STX

VECTORS_FILE = Path(__file__).with_name("shtrih.txt")


@dataclass(frozen=True)
class Vector:
    label: str
    lines: tuple[tuple[str, bytes], ...]  # ("->" | "<-", bytes)

    def frames(self, direction: str) -> list[bytes]:
        return [raw for arrow, raw in self.lines if arrow == direction and raw[0] == STX]


def parse_vectors(text: str) -> list[Vector]:
    """Every `[capture]`/`[spec]` entry with its `->`/`<-` lines; other lines are prose."""
    vectors: list[Vector] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith(("[capture]", "[spec]")):
            vectors.append(Vector(stripped.split("] ", 1)[1], ()))
        elif stripped.startswith(("->", "<-")):
            arrow, hexes = stripped[:2], stripped[2:]
            last = vectors[-1]
            vectors[-1] = Vector(last.label, (*last.lines, (arrow, bytes.fromhex(hexes))))
    return vectors


ALL_VECTORS = parse_vectors(VECTORS_FILE.read_text(encoding="utf-8"))


def vector_bytes(title: str, index: int = 0) -> bytes:
    """The index-th line (either direction) of the first vector whose label contains `title`."""
    found = next(v for v in ALL_VECTORS if title in v.label)
    return found.lines[index][1]
