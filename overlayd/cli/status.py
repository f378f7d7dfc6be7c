"""overlayctl status | hosts | peers: what the daemon and the cluster look like."""

from __future__ import annotations

import argparse

from overlayd.api.client import ControlClient
from overlayd.cli.output import print_fields, print_json, print_table


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="this host: node, subnet, lease, backend, peers, pods, etcd health")
    p.set_defaults(handler=_status)
    p = sub.add_parser("hosts", help="every subnet lease in the cluster")
    p.set_defaults(handler=_hosts)
    p = sub.add_parser("peers", help="the remote hosts this host has programmed")
    p.set_defaults(handler=_peers)


def _status(args: argparse.Namespace) -> int:
    result = ControlClient(args.socket).call("status")
    if args.json:
        print_json(result)
    else:
        print_fields(result)
    return 0


def _hosts(args: argparse.Namespace) -> int:
    result = ControlClient(args.socket).call("hosts")
    if args.json:
        print_json(result)
    else:
        print_table(result, [("node", "NODE"), ("subnet", "SUBNET"), ("public_ip", "PUBLIC IP"),
                             ("backend", "BACKEND")])
    return 0


def _peers(args: argparse.Namespace) -> int:
    result = ControlClient(args.socket).call("peers")
    if args.json:
        print_json(result)
    else:
        print_table(result, [("node", "NODE"), ("subnet", "SUBNET"), ("endpoint", "ENDPOINT"),
                             ("latest_handshake", "LATEST HANDSHAKE"), ("rx_bytes", "RX"),
                             ("tx_bytes", "TX")])
    return 0
