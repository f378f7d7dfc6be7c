"""The one-line "run as root" refusal for commands that need root, before they touch anything."""

from __future__ import annotations

import os

from overlayd.errors import OverlaydError


class NeedsRoot(OverlaydError):
    """The command needs root (exit 1, not a usage error: the line was right)."""


def require_root(what: str) -> None:
    if os.geteuid() != 0:
        raise NeedsRoot(f"{what} needs root (network namespaces): run as root, e.g. with sudo")
