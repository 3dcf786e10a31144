"""kktd: companion daemon for cashier PCs with a Shtrih-M fiscal register."""

from __future__ import annotations

__version__ = "0.1.0"
