"""overlayctl service add | del | ls | get."""

from __future__ import annotations

import argparse
from typing import Any

from overlayd.api.client import ControlClient
from overlayd.cli.output import Column, emit, print_json
from overlayd.errors import UsageError
from overlayd.registry.records import parse_port_spec, parse_selector

_COLUMNS = [Column("name", "NAME"), Column("vip", "VIP"), Column("ports", "PORTS"), Column("selector", "SELECTOR"),
            Column("endpoints", "ENDPOINTS")]
_ENDPOINT_COLUMNS = [Column("pod", "POD"), Column("node", "HOST"), Column("ip", "IP")]
_NAME_HELP = "service name (lower-case letters, digits and '-'; its DNS name is NAME.svc.<domain>)"


def register(sub: argparse._SubParsersAction) -> None:
    service = sub.add_parser("service", help="services: one virtual IP for the pods a selector picks")
    service_sub = service.add_subparsers(dest="service_command", required=True, parser_class=type(service))
    p = service_sub.add_parser("add", help="create a service and claim its virtual IP")
    p.add_argument("name", help=_NAME_HELP)
    p.add_argument("--selector", required=True, metavar="KEY=VALUE[,KEY=VALUE]",
                   help="the pods it sends to: every label must match")
    p.add_argument("--port", action="append", required=True, metavar="PORT[:TARGET_PORT][/tcp|/udp]",
                   help="a port of the VIP and the pods' port it leads to (repeatable; tcp by default)")
    p.set_defaults(handler=_add)
    p = service_sub.add_parser("del", help="delete a service and free its virtual IP")
    p.add_argument("name", help=_NAME_HELP)
    p.set_defaults(handler=_del)
    p = service_sub.add_parser("ls", help="list services with their endpoint counts")
    p.set_defaults(handler=_ls)
    p = service_sub.add_parser("get", help="show one service with its endpoints")
    p.add_argument("name", help=_NAME_HELP)
    p.set_defaults(handler=_get)


def _add(args: argparse.Namespace) -> int:
    ports = [parse_port_spec(text) for text in args.port]
    if len({(p.protocol, p.port) for p in ports}) != len(ports):
        raise UsageError("--port repeats a port and protocol")
    result = ControlClient(args.socket).call("service.add", name=args.name, selector=parse_selector(args.selector),
                                             ports=[p.to_dict() for p in ports])
    emit(_for_humans(result) if not args.style.json else result, args.style)
    return 0


def _del(args: argparse.Namespace) -> int:
    ControlClient(args.socket).call("service.del", name=args.name)
    if args.style.json:
        print_json({"deleted": args.name})
    return 0


def _ls(args: argparse.Namespace) -> int:
    rows = ControlClient(args.socket).call("service.list")
    if args.style.json:
        print_json(rows)
    else:
        emit([_for_humans(row) | {"endpoints": len(row["endpoints"])} for row in rows], args.style,
             columns=_COLUMNS)
    return 0


def _get(args: argparse.Namespace) -> int:
    row = ControlClient(args.socket).call("service.get", name=args.name)
    if args.style.json:
        print_json(row)
        return 0
    emit({k: v for k, v in _for_humans(row).items() if k != "endpoints"}, args.style)
    print()
    emit(row["endpoints"], args.style, columns=_ENDPOINT_COLUMNS)
    return 0


def _for_humans(row: dict[str, Any]) -> dict[str, Any]:
    ports = ",".join(f"{p['port']}:{p['target_port']}/{p['protocol']}" for p in row["ports"])
    selector = ",".join(f"{k}={v}" for k, v in sorted(row["selector"].items()))
    return row | {"ports": ports, "selector": selector}
