"""A ControlServer in a process of its own, for tests that must starve it of file descriptors.

Usage: python -m tests.integration.control_server_child SOCKET HEADROOM

Serves a StubPlane on SOCKET. Once listening, it lowers RLIMIT_NOFILE so that only
HEADROOM more descriptors can be opened, prints "ready" and serves until killed.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from pathlib import Path

import trio

from overlayd.api.server import ControlServer
from tests.integration.test_control_socket import StubPlane


def _limit_descriptors(headroom: int) -> None:
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1 + headroom, hard))


async def main(path: Path, headroom: int) -> None:
    server = ControlServer(path, StubPlane())
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        _limit_descriptors(headroom)
        print("ready", flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    trio.run(main, Path(sys.argv[1]), int(sys.argv[2]))
