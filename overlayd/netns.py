"""Running the daemon inside a named network namespace (as the lab does)."""

from __future__ import annotations

import os
from pathlib import Path

from overlayd.errors import ConfigError
from overlayd.pods.nsutil import CLONE_NEWNET, setns


def enter_named_netns(name: str, netns_dir: Path = Path("/run/netns")) -> None:
    """Move the calling thread into netns_dir/name.

    Only the network namespace changes (unlike `ip netns exec`, which also
    enters a private mount namespace): pod namespaces this daemon bind-mounts
    must stay visible to the rest of the host.
    """
    path = netns_dir / name
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConfigError(f"netns {name!r} does not exist ({path})") from None
    try:
        setns(fd, CLONE_NEWNET)
    finally:
        os.close(fd)
