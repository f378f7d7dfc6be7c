"""systemd's watchdog (WATCHDOG=1) and status line (STATUS=), sent from the trio loop.

The pings come from a trio task, so they stop when the loop stops turning: a daemon stuck
in a blocking call misses them and systemd restarts it (WatchdogSec= in the unit). The
STATUS= line, shown by `systemctl status overlayd`, is sent when it changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from overlayd import sdnotify

if TYPE_CHECKING:
    from overlayd.health import HealthModel
    from overlayd.peerloop import PeerLoop
    from overlayd.startup import Host

log = logging.getLogger(__name__)

STATUS_CHECK = 1.0  # seconds between looks at the status line


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3) advises;
    None when the watchdog is off or meant for another process (WATCHDOG_PID)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
        if environ.get("WATCHDOG_PID", str(pid)) != str(pid) or usec <= 0:
            return None
    except ValueError:
        return None
    return usec / 2e6


def status_line(host: Host, peers: PeerLoop, health: HealthModel) -> str:
    return (f"subnet {host.subnet}, {len(peers.programmed)} peers, {len(host.pods.list())} pods, "
            f"health {health.report().health}")


async def inform_systemd(status: Callable[[], str], *, environ: Mapping[str, str] = os.environ,
                         notify: Callable[[str], bool] = sdnotify.notify) -> None:
    """Ping the watchdog and keep STATUS= current until cancelled; returns at once outside systemd."""
    if not environ.get("NOTIFY_SOCKET"):
        return
    ping_every = watchdog_interval(environ, os.getpid())
    next_ping = trio.current_time()
    sent_status = None
    failed = False
    while True:
        messages = []
        if ping_every is not None and trio.current_time() >= next_ping:
            messages.append("WATCHDOG=1")
            next_ping = trio.current_time() + ping_every
        text = status()
        if text != sent_status:
            messages.append(f"STATUS={text}")
            sent_status = text
        try:
            for message in messages:
                notify(message)
        except OSError as exc:  # systemd gone or socket replaced: say so once, keep trying
            if not failed:
                log.warning("cannot notify systemd (%s): %s", environ.get("NOTIFY_SOCKET"), exc)
            failed = True
        await trio.sleep(min(ping_every or STATUS_CHECK, STATUS_CHECK))
