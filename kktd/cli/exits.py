"""The `kktd` command's exit codes (SPEC section 6), for every command.

78 is EX_CONFIG, which the unit's RestartPreventExitStatus= names so a bad config does not
crash-loop.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_CONFIG = 78
