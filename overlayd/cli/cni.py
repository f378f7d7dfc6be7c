"""overlayctl cni install: put overlayd-cni and a network config where container runtimes look.

overlayd-cni is built from its C front (overlayd/cni/shim.c: starts in about a
millisecond, hands edge cases to the Python client) for the socket the
conflist names; without a C compiler it is the Python client alone.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import overlayd
from overlayd.cni.build import BuildError, build_shim, find_compiler
from overlayd.errors import OverlaydError, UsageError
from overlayd.statefile import write_json_atomic

PLUGIN = "overlayd-cni"
CONFLIST = "10-overlayd.conflist"
DEFAULT_BIN_DIR = Path("/opt/cni/bin")
DEFAULT_CONF_DIR = Path("/etc/cni/net.d")
CHAINED = ("portmap", "bandwidth", "tuning", "firewall")


def register(sub: argparse._SubParsersAction) -> None:
    cni = sub.add_parser("cni", help="the CNI plugin for container runtimes")
    cni_sub = cni.add_subparsers(dest="cni_command", required=True, parser_class=type(cni))
    p = cni_sub.add_parser("install", help=f"install {PLUGIN} and {CONFLIST}")
    p.add_argument("--bin-dir", type=Path, default=DEFAULT_BIN_DIR, help=f"default {DEFAULT_BIN_DIR}")
    p.add_argument("--conf-dir", type=Path, default=DEFAULT_CONF_DIR, help=f"default {DEFAULT_CONF_DIR}")
    p.add_argument("--network", default="overlayd", help="the CNI network name (default overlayd)")
    p.add_argument("--plugin", choices=("auto", "c", "python"), default="auto",
                   help="c: build the C front with the system's compiler (fast start); python: the Python "
                        "client alone; auto (default): c when a C compiler is found, else python")
    p.set_defaults(handler=_install)


def conflist(network: str, socket: Path) -> dict:
    """overlayd-cni first, then the reference plugins a runtime chains for ports, shaping, sysctls, firewall."""
    plugins: list[dict] = [{"type": PLUGIN, "socket": str(socket)},
                           {"type": "portmap", "capabilities": {"portMappings": True}},
                           {"type": "bandwidth", "capabilities": {"bandwidth": True}},
                           {"type": "tuning"}, {"type": "firewall"}]
    return {"cniVersion": "1.0.0", "name": network, "plugins": plugins}


def launcher() -> str:
    """The plugin executable: this Python, isolated and without site (start-up is the plugin's cost: see
    overlayd.cni.client), importing this overlayd."""
    package_root = Path(overlayd.__file__).resolve().parent.parent
    return (f"#!{sys.executable} -IS\n"
            "# overlayd-cni, installed by `overlayctl cni install`\n"
            "import sys\n"
            f"sys.path[:0] = [{str(package_root)!r}]\n"
            "from overlayd.cni.client import main\n"
            "sys.exit(main())\n")


def _place_launcher(binary: Path) -> None:
    temporary = binary.with_name(f".{PLUGIN}.{os.getpid()}")
    temporary.write_text(launcher())
    temporary.chmod(0o755)
    os.replace(temporary, binary)  # a runtime running the old plugin meanwhile is not disturbed


def _install(args: argparse.Namespace) -> int:
    binary = args.bin_dir / PLUGIN
    conf = args.conf_dir / CONFLIST
    socket = str(args.socket)
    note = None
    kind = args.plugin
    if kind == "auto" and find_compiler() is None:
        kind = "python"
        note = ("no C compiler (cc) found: installed the Python client, which starts ~10 ms slower per call "
                "than the C front (install gcc and run this again for it)")
    try:
        args.bin_dir.mkdir(parents=True, exist_ok=True)
        args.conf_dir.mkdir(parents=True, exist_ok=True)
        if kind == "python":
            _place_launcher(binary)
        else:
            try:
                build_shim(binary, socket)
                kind = "c"
            except BuildError as exc:
                if args.plugin == "c":
                    raise UsageError(f"cni install: {exc}") from None
                _place_launcher(binary)
                kind = "python"
                note = f"the C front could not be built ({exc}); installed the Python client (slower to start)"
        write_json_atomic(conf, conflist(args.network, args.socket), mode=0o644)
    except OSError as exc:
        raise OverlaydError(f"cni install: {exc}") from None
    result = {"plugin": str(binary), "kind": kind, "conflist": str(conf), "chained": list(CHAINED),
              "note": note}
    if args.json:
        print(json.dumps(result))
    else:
        print(f"installed {binary} ({'C front, Python client as fallback' if kind == 'c' else 'Python client'})"
              f"\ninstalled {conf}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    return 0
