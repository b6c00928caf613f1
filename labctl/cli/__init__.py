"""The labctl command line: load the profile, call an operation, render its result.

``base`` holds the group, shared options, output helpers and ``run()``/``main()`` (the one
place errors become output and exit codes); ``lab``, ``provision``, ``checks`` and ``watch``
register their commands on the group when imported here.
"""

from __future__ import annotations

from labctl.cli import (  # noqa: F401  (register commands)
    apply,
    checks,
    export,
    lab,
    provision,
    watch,
)
from labctl.cli.base import State, cli, main, run

__all__ = ["State", "cli", "main", "run"]
