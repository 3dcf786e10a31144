"""Fixtures of the API tests (defined in `tests.api.helpers`, which other tests import too)."""

from __future__ import annotations

from tests.api.helpers import harness, upstream

__all__ = ["harness", "upstream"]
