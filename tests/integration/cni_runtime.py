"""Drive CNI plugins the way a container runtime does (libcni's order, environment and stdin).

A network list is run plugin by plugin: ADD in order, each given the previous
plugin's result as prevResult; CHECK in order with the cached ADD result; DEL
in reverse order with it. Plugins run in the host's network namespace (the lab
host's), found through CNI_PATH.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.integration.conftest import unique_name

REFERENCE_PLUGINS = Path("/usr/lib/cni")


class PluginFailed(AssertionError):
    def __init__(self, plugin: str, command: str, returncode: int, stdout: str, stderr: str) -> None:
        super().__init__(f"{plugin} {command} exited {returncode}: {stdout.strip()} {stderr.strip()}")
        self.returncode = returncode
        self.error = _json_or_none(stdout)


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


@dataclass
class Runtime:
    host_netns: str  # where the runtime (and so every plugin) runs
    cni_path: list[Path]

    def exec_plugin(self, plugin: str, command: str, conf: dict[str, Any] | bytes, *, container_id: str = "",
                    netns: str = "", ifname: str = "", extra_env: dict[str, str] | None = None,
                    ) -> subprocess.CompletedProcess[str]:
        binary = next((d / plugin for d in self.cni_path if (d / plugin).exists()), None)
        assert binary is not None, f"plugin {plugin} not in {self.cni_path}"
        env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": container_id,
               "CNI_NETNS": netns, "CNI_IFNAME": ifname, "CNI_PATH": ":".join(map(str, self.cni_path))}
        env |= extra_env or {}
        stdin = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        proc = subprocess.run(["ip", "netns", "exec", self.host_netns, str(binary)], input=stdin,
                              capture_output=True, env=env, timeout=60)
        return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(), proc.stderr.decode())

    def call(self, plugin: str, command: str, conf: dict[str, Any], **kw: Any) -> Any:
        proc = self.exec_plugin(plugin, command, conf, **kw)
        if proc.returncode != 0:
            raise PluginFailed(plugin, command, proc.returncode, proc.stdout, proc.stderr)
        return _json_or_none(proc.stdout) if proc.stdout.strip() else None


@dataclass
class Container:
    """A sandbox as a runtime makes it: its own netns (`ip netns add`), an ID, an interface name."""

    id: str = field(default_factory=lambda: "c" + unique_name("") + unique_name(""))
    netns_name: str = field(default_factory=lambda: unique_name("cnitest-"))
    ifname: str = "eth0"
    result: Any = None  # the cached ADD result

    @property
    def netns(self) -> str:
        return f"/run/netns/{self.netns_name}"

    def create(self) -> Container:
        subprocess.run(["ip", "netns", "add", self.netns_name], check=True)
        subprocess.run(["ip", "-n", self.netns_name, "link", "set", "lo", "up"], check=True)
        return self

    def remove(self) -> None:
        subprocess.run(["ip", "netns", "del", self.netns_name], capture_output=True)


def plugin_conf(netlist: dict[str, Any], plugin: dict[str, Any], runtime_config: dict[str, Any],
                prev: Any) -> dict[str, Any]:
    """One plugin's stdin, as libcni builds it: name and version of the list, its capabilities' runtimeConfig."""
    conf = dict(plugin) | {"cniVersion": netlist["cniVersion"], "name": netlist["name"]}
    wanted = {cap for cap, on in plugin.get("capabilities", {}).items() if on}
    chosen = {k: v for k, v in runtime_config.items() if k in wanted}
    if chosen:
        conf["runtimeConfig"] = chosen
    if prev is not None:
        conf["prevResult"] = prev
    return conf


def add(runtime: Runtime, netlist: dict[str, Any], c: Container, runtime_config: dict[str, Any] | None = None) -> Any:
    prev = None
    for plugin in netlist["plugins"]:
        prev = runtime.call(plugin["type"], "ADD", plugin_conf(netlist, plugin, runtime_config or {}, prev),
                            container_id=c.id, netns=c.netns, ifname=c.ifname)
    c.result = prev
    return prev


def check(runtime: Runtime, netlist: dict[str, Any], c: Container, runtime_config: dict[str, Any] | None = None,
          *, skip: frozenset[str] = frozenset()) -> None:
    for plugin in netlist["plugins"]:
        if plugin["type"] in skip:
            continue
        runtime.call(plugin["type"], "CHECK", plugin_conf(netlist, plugin, runtime_config or {}, c.result),
                     container_id=c.id, netns=c.netns, ifname=c.ifname)


def delete(runtime: Runtime, netlist: dict[str, Any], c: Container, runtime_config: dict[str, Any] | None = None,
           ) -> None:
    for plugin in reversed(netlist["plugins"]):
        runtime.call(plugin["type"], "DEL", plugin_conf(netlist, plugin, runtime_config or {}, c.result),
                     container_id=c.id, netns=c.netns, ifname=c.ifname)
