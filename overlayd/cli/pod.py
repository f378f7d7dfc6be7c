"""overlayctl pod add | del | ls | get | exec."""

from __future__ import annotations

import argparse
import sys

from overlayd.api.client import ControlClient
from overlayd.cli.output import Column, emit, print_json, print_table
from overlayd.cli.privilege import require_root
from overlayd.errors import UsageError
from overlayd.nat.ports import parse_publish
from overlayd.pods.exec import ExecFailed, enter_pod_namespaces, exec_command
from overlayd.pods.names import validate_pod_name

_POD_COLUMNS = [Column("name", "NAME"), Column("ip", "IP"), Column("node", "HOST"), Column("labels", "LABELS"),
                Column("netns", "NETNS", wide=True), Column("created", "CREATED", wide=True)]
_NAME_HELP = "pod name (lower-case letters, digits and '-')"


def register(sub: argparse._SubParsersAction) -> None:
    pod = sub.add_parser("pod", help="manage pods on this host")
    pod_sub = pod.add_subparsers(dest="pod_command", required=True, parser_class=type(pod))
    p = pod_sub.add_parser("add", help="create a pod: namespaces, veth, address, route")
    p.add_argument("name", help=_NAME_HELP)
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="a label (repeatable)")
    p.add_argument("--publish", action="append", default=[], metavar="[HOST_IP:]HOST_PORT:POD_PORT[/PROTO]",
                   help="forward a host port to the pod (tcp or udp; repeatable)")
    p.set_defaults(handler=_add)
    p = pod_sub.add_parser("del", help="delete a pod and free its address")
    p.add_argument("name", help=_NAME_HELP)
    p.set_defaults(handler=_del)
    p = pod_sub.add_parser("ls", help="list pods")
    p.set_defaults(handler=_ls)
    p = pod_sub.add_parser("get", help="show one pod")
    p.add_argument("name", help=_NAME_HELP)
    p.set_defaults(handler=_get)
    p = pod_sub.add_parser("exec", help="run a command inside a pod's namespaces",
                           usage="overlayctl pod exec [options] NAME -- CMD [ARGS...]",
                           description="Run CMD inside the pod's net, UTS and IPC namespaces (needs root). "
                                       "Everything after -- is the command. Exit status: CMD's own, "
                                       "126 when it cannot run, 127 when it is not found.")
    p.add_argument("name", help=_NAME_HELP)
    p.set_defaults(handler=_exec, takes_command=True)  # main() hands it the words after "--" as args.cmd


def _parse_labels(items: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def _publish(specs: list[str]) -> dict[str, object]:
    """--publish values, checked here (exit 2 on a bad one) before the daemon sees them."""
    if not specs:
        return {}
    return {"ports": [parse_publish(spec).to_dict() for spec in specs]}


def _name(args: argparse.Namespace) -> str:
    validate_pod_name(args.name)  # refuse locally, before talking to the daemon
    return args.name


def _add(args: argparse.Namespace) -> int:
    labels = _parse_labels(args.label)
    result = ControlClient(args.socket).call("pod.add", name=_name(args), labels=labels, **_publish(args.publish))
    emit(result, args.style)
    return 0


def _del(args: argparse.Namespace) -> int:
    ControlClient(args.socket).call("pod.del", name=_name(args))
    if args.json:
        print_json({"deleted": args.name})
    return 0


def _ls(args: argparse.Namespace) -> int:
    client = ControlClient(args.socket)
    result = client.call("pod.list")
    attachments = client.call("cni.list")
    if args.style.json:
        print_json(result + [row | {"kind": "cni"} for row in attachments])
        return 0
    print_table(result, _POD_COLUMNS, args.style)
    if attachments:
        print()
        print_table([row | {"container_id": row["container_id"][:12]} for row in attachments], _CNI_COLUMNS,
                    args.style)
    return 0


# --- CNI attachments in `pod ls` (container IDs cut to 12 characters, as runtimes print them) ---

_CNI_COLUMNS = [("container_id", "CONTAINER"), ("ip", "IP"), ("network", "CNI NETWORK"), ("ifname", "IFNAME"),
                ("netns", "NETNS"), ("created", "CREATED")]


def _get(args: argparse.Namespace) -> int:
    result = ControlClient(args.socket).call("pod.get", name=_name(args))
    emit(result, args.style)
    return 0


def _exec(args: argparse.Namespace) -> int:
    cmd = args.cmd
    if not cmd:
        raise UsageError("pod exec: give a command after --")
    require_root("pod exec")  # entering a pod's namespaces needs CAP_SYS_ADMIN
    pod = ControlClient(args.socket).call("pod.get", name=_name(args))
    namespaces = pod["namespaces"]
    enter_pod_namespaces(namespaces["net"], namespaces["uts"], namespaces["ipc"], namespaces.get("resolv_conf"))
    sys.stdout.flush()
    try:
        exec_command(cmd)
    except ExecFailed as exc:  # a shell's exit codes, so scripts can tell "not found" from "failed"
        print(f"overlayctl: error: pod exec: {exc}", file=sys.stderr)
        return exc.exit_code
