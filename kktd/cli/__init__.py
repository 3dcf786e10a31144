"""The ``kktd`` command: the daemon's entry (`kktd run`) and the client of its local API.

`entry` parses the command line; the client half (`args`, `commands`, `client`, `render`,
`csv_export`) is loaded only by the client commands.
"""

from __future__ import annotations

from kktd.cli.entry import main

__all__ = ["main"]
