"""``python -m kktd`` is the ``kktd`` command."""

from __future__ import annotations

import sys

from kktd.cli import main

sys.exit(main())
