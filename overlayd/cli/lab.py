"""overlayctl lab up | status | down: a cluster of simulated hosts on this machine."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from overlayd.cli.output import Style, print_json, print_table
from overlayd.cli.privilege import require_root
from overlayd.errors import OverlaydError, UsageError
from overlayd.lab import runner
from overlayd.config import WIREGUARD_IMPLEMENTATIONS
from overlayd.lab.plan import BACKENDS, DEFAULT_BASE_DIR, make_plan, validate_lab_name


def register(sub: argparse._SubParsersAction) -> None:
    lab = sub.add_parser("lab", help="run a cluster of simulated hosts (network namespaces) here")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True, parser_class=type(lab))
    for name, handler, help_text in (("up", _up, "build the lab, start etcd and daemons, check every pod pair"),
                                     ("status", _status, "show hosts, pods and the reachability matrix"),
                                     ("down", _down, "remove every namespace, process and file of the lab")):
        p = lab_sub.add_parser(name, help=help_text)
        p.add_argument("--name", default="ovlab", help="lab name, prefixes every namespace (default ovlab)")
        p.add_argument("--dir", type=Path, default=DEFAULT_BASE_DIR, help=f"base dir (default {DEFAULT_BASE_DIR})")
        p.set_defaults(handler=handler)
        if name == "up":
            p.add_argument("--hosts", type=int, default=3, help="number of simulated hosts (default 3)")
            p.add_argument("--backend", default="vxlan", choices=BACKENDS,
                           help="how the hosts carry pod traffic (default vxlan)")
            p.add_argument("--wireguard-implementation", default="auto", choices=WIREGUARD_IMPLEMENTATIONS,
                           help="the daemons' [wireguard] implementation (default auto)")


def _plan_from_state(args: argparse.Namespace):
    validate_lab_name(args.name)
    state_path = args.dir / args.name / "lab.json"
    try:
        state = json.loads(state_path.read_text())
    except FileNotFoundError:
        raise UsageError(f"lab {args.name!r} is not up (no {state_path})") from None
    except (OSError, ValueError) as exc:
        raise UsageError(f"lab {args.name!r}: its state file {state_path} is damaged ({exc}); "
                         f"`overlayctl lab down --name {args.name}` removes what is left") from None
    if not isinstance(state, dict) or not isinstance(state.get("hosts"), int) or not isinstance(
            state.get("backend"), str):
        raise UsageError(f"lab {args.name!r}: its state file {state_path} is damaged (no hosts or backend); "
                         f"`overlayctl lab down --name {args.name}` removes what is left")
    return make_plan(args.name, state["hosts"], state["backend"], args.dir)


def _print_result(result: dict[str, Any], style: Style) -> None:
    if style.json:
        print_json(result)
        return
    print(f"lab {result['name']}  backend {result['backend']}  etcd {result['etcd']}\n")
    print_table(result["hosts"], [("name", "HOST"), ("netns", "NETNS"), ("underlay_ip", "UNDERLAY IP"),
                                  ("subnet", "POD SUBNET"), ("peers", "PEERS"), ("health", "HEALTH")], style)
    print()
    print_table(result["pods"], [("name", "POD"), ("host", "HOST"), ("ip", "IP"), ("netns", "NETNS")], style)
    print("\nreachability (ICMP+TCP, row = from, column = to):")
    names = [p["name"] for p in result["pods"]]
    rows = []
    for src in names:
        row: dict[str, Any] = {"from": src}
        for dst in names:
            if src == dst:
                row[dst] = "."
            else:
                r = result["matrix"].get(src, {}).get(dst, {})
                row[dst] = "ok" if r.get("icmp") and r.get("tcp") else \
                    "icmp-only" if r.get("icmp") else "tcp-only" if r.get("tcp") else "FAIL"
        rows.append(row)
    print_table(rows, [("from", "FROM")] + [(n, n) for n in names])  # its header names the columns: always shown
    print("\nall pod pairs reachable" if result["ok"] else "\nSOME POD PAIRS UNREACHABLE")


def _up(args: argparse.Namespace) -> int:
    require_root("lab up")
    plan = make_plan(args.name, args.hosts, args.backend, args.dir,
                     wireguard_implementation=args.wireguard_implementation)
    made = _missing_dirs(args.dir)
    try:
        result = runner.up(plan)
    except (OSError, subprocess.CalledProcessError) as exc:  # a tool missing or failing: one line, no traceback
        _remove_empty(made)
        raise OverlaydError(f"lab up failed (the lab is removed again): {exc}") from None
    except BaseException:
        _remove_empty(made)  # runner.up removed the lab's own dir; the base dirs it made go too
        raise
    _print_result(result, args.style)
    return 0 if result["ok"] else 1


def _missing_dirs(path: Path) -> list[Path]:
    """path and its parents that do not exist yet, deepest first."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:
        try:
            d.rmdir()
        except OSError:  # not empty (someone else's) or already gone
            return


def _status(args: argparse.Namespace) -> int:
    require_root("lab status")
    result = runner.status(_plan_from_state(args))
    _print_result(result, args.style)
    return 0 if result["ok"] else 1


def _down(args: argparse.Namespace) -> int:
    require_root("lab down")
    validate_lab_name(args.name)
    result = runner.down(args.name, args.dir)
    if args.json:
        print_json(result)
    else:
        print(f"lab {args.name}: stopped {result['processes_stopped']} processes, removed "
              f"{len(result['namespaces_removed'])} namespaces and {result['mounts_removed']} mounts",
              file=sys.stdout)
    return 0
