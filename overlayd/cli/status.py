"""overlayctl status | hosts | peers: what the daemon and the cluster look like.

`status` exits 1 when the host is degraded, so scripts and monitoring can use it;
`status --check` prints one line and exits 0 only when the daemon is ready and healthy
(also 1 while it is starting or cannot be reached).
"""

from __future__ import annotations

import argparse
from typing import Any

from overlayd.api.client import ControlClient
from overlayd.cli.output import Column, emit
from overlayd.errors import OverlaydError

EXIT_OK, EXIT_UNHEALTHY = 0, 1

_HOST_COLUMNS = [Column("node", "NODE"), Column("subnet", "SUBNET"), Column("public_ip", "PUBLIC IP"),
                 Column("backend", "BACKEND"), Column("self", "SELF", wide=True)]
_PEER_COLUMNS = [Column("node", "NODE"), Column("subnet", "SUBNET"), Column("endpoint", "ENDPOINT"),
                 Column("latest_handshake", "LATEST HANDSHAKE"), Column("rx_bytes", "RX"), Column("tx_bytes", "TX")]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="this host: node, subnet, lease, backend, peers, pods, etcd health")
    p.add_argument("--check", action="store_true",
                   help="print one line; exit 0 only when the daemon is ready and healthy, else 1")
    p.set_defaults(handler=_status)
    p = sub.add_parser("hosts", help="every subnet lease in the cluster")
    p.set_defaults(handler=_hosts)
    p = sub.add_parser("peers", help="the remote hosts this host has programmed")
    p.set_defaults(handler=_peers)


def exit_code(status: dict[str, Any]) -> int:
    return EXIT_UNHEALTHY if status.get("health") == "degraded" else EXIT_OK


def check_line(status: dict[str, Any]) -> tuple[str, int]:
    """`status --check`: "ok", or the health and the first problem."""
    health = status.get("health", "unknown")
    if status.get("ready") and health == "ok":
        return "ok", EXIT_OK
    problems = status.get("problems") or []
    return health + (f": {problems[0]}" if problems else ""), EXIT_UNHEALTHY


def _status(args: argparse.Namespace) -> int:
    if args.check:
        try:
            line, code = check_line(ControlClient(args.socket).call("status"))
        except OverlaydError as exc:
            line, code = f"unreachable: {exc}", EXIT_UNHEALTHY
        print(line)
        return code
    result = ControlClient(args.socket).call("status")
    emit(result, args.style)
    return exit_code(result)


def _hosts(args: argparse.Namespace) -> int:
    emit(ControlClient(args.socket).call("hosts"), args.style, columns=_HOST_COLUMNS)
    return 0


def _peers(args: argparse.Namespace) -> int:
    emit(ControlClient(args.socket).call("peers"), args.style, columns=_PEER_COLUMNS)
    return 0
