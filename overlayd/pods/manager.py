"""Per-pod namespaces and their wiring to the host bridge (kernel side only, no state).

A pod is three namespaces held by bind mounts: net at netns_dir/netns_prefix+name
(so `ip netns exec` finds it), uts (hostname = pod name) and ipc under
pod_run_dir/name/. Its net namespace has lo, and eth0: the peer of a veth whose
host end sits in the bridge; one address and a default route via the gateway.

Deleting is fast because the kernel does the slow part. Unregistering a net
device waits in rcu_barrier() (15-35 ms here), so delete() does not unregister
the veth itself: it takes the host end down and out of the bridge (the pod is
cut off at once) and unmounts the namespace files; the kernel then frees the
namespaces and, with them, both veth ends, in its own worker. If some process
still runs inside the pod, the namespaces (and the detached veth) live until it
exits; remove_stray_links() removes such leftovers, and create() replaces one
that is in the way of a new pod of the same name.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Collection, Mapping
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from overlayd.errors import ConflictError, KernelError, NotFoundError, UsageError
from overlayd.pods import links, nsfiles
from overlayd.pods.config import PodNamespaces, PodNetworkConfig, pod_paths
from overlayd.pods.names import is_veth_name, validate_pod_name, veth_name
from overlayd.pods.rtnl import NetlinkError, Rtnl

IPAddress = IPv4Address | IPv6Address

POD_IFNAME = "eth0"
META_FILE = "pod.json"  # in the pod's directory: see write_meta()


class PodManager:
    """Creates, repairs and deletes pods in the kernel. Synchronous; callers serialise calls.

    The host side (veth creation, bridge) is programmed through a netlink socket
    opened in the constructor, i.e. in the network namespace of the thread that
    builds the manager, whatever thread calls it later.
    """

    def __init__(self, config: PodNetworkConfig) -> None:
        self._config = config
        config.netns_dir.mkdir(parents=True, exist_ok=True)
        config.pod_run_dir.mkdir(parents=True, exist_ok=True)
        self._nsfs = nsfiles.NsfsProbe()
        self._host = Rtnl()
        # Namespaces for the next pod, made ahead in the background (see create()).
        self._spare: nsfiles.NewNamespaces | None = None

    @property
    def config(self) -> PodNetworkConfig:
        return self._config

    def close(self) -> None:
        if self._spare is not None:
            self._spare.abandon()
            self._spare = None
        self._host.close()

    def __enter__(self) -> PodManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def paths(self, name: str) -> PodNamespaces:
        return pod_paths(self._config, name)

    def exists(self, name: str) -> bool:
        """Whether all three of the pod's namespaces are mounted."""
        ns = self.paths(name)
        return all(self._nsfs.is_namespace(p) for p in (ns.net, ns.uts, ns.ipc))

    def list_kernel_pods(self) -> set[str]:
        """Names with any namespace file or directory of ours, complete or half-made (see exists())."""
        names = {
            entry[len(self._config.netns_prefix) :]
            for entry in _listdir(self._config.netns_dir)
            if entry.startswith(self._config.netns_prefix)
        }
        run_dir = self._config.pod_run_dir
        names.update(entry for entry in _listdir(run_dir) if (run_dir / entry).is_dir())
        return {name for name in names if _is_pod_name(name)}

    def create(self, name: str, ip: IPAddress, *, files_made: Callable[[], object] | None = None) -> PodNamespaces:
        """Make the pod's namespaces and network; on failure nothing of it is left.

        `files_made` is called once the pod's files exist, before the network work
        (~3 ms, no file system access) starts: a caller can start its own disk write
        there to overlap it, without contending for the file system journal.
        """
        ns = self.paths(name)
        self._check_address(ip)
        if os.path.lexists(ns.net) or os.path.lexists(ns.pod_dir):
            raise ConflictError(f"pod {name}: namespaces already exist ({ns.net}, {ns.pod_dir})")
        made_veth = False
        # Creating a network namespace is the costliest step; the previous create()
        # started this one, so it is usually ready. Then start the next one.
        pending, self._spare = self._spare or nsfiles.NewNamespaces(), None
        try:
            try:
                nsfiles.make_pod_dir(ns.pod_dir)
                for path in (ns.net, ns.uts, ns.ipc):
                    nsfiles.create_placeholder(path)
                bridge = self._bridge_index()
                if files_made is not None:
                    files_made()
            except BaseException:
                pending.abandon()
                raise
            with pending.bind(name, ns.net, ns.uts, ns.ipc) as pod:
                self._add_veth(ns, bridge)
                made_veth = True
                self._configure_pod(pod, ip, prune=False)
            self._write_resolv_conf(ns)
        except BaseException as exc:
            try:
                self._remove(ns, veth=made_veth)
            except KernelError as cleanup:
                exc.add_note(f"cleaning up pod {name} failed too: {cleanup}")
            raise
        finally:
            self._spare = nsfiles.NewNamespaces()
        return ns

    def delete(self, name: str) -> None:
        """Remove whatever exists of the pod (idempotent: half-made or absent pods are fine)."""
        self._remove(self.paths(name), veth=True)

    def ensure(self, name: str, ip: IPAddress) -> None:
        """Repair an existing pod's network: veth, bridge port, MTU, address, default route."""
        ns = self.paths(name)
        self._check_address(ip)
        if not self.exists(name):
            raise NotFoundError(f"pod {name}: its namespaces do not exist")
        with nsfiles.call_in_netns(ns.net, Rtnl) as pod:
            host_end = links.get_link(self._host, ns.host_veth)
            pod_end = links.get_link(pod, POD_IFNAME)
            if host_end is not None and pod_end is not None:
                links.set_link(self._host, host_end.index, mtu=self._config.mtu, master_index=self._bridge_index())
            else:
                # Half a pair cannot be repaired in place: make a new one.
                if host_end is not None:
                    links.delete_link(self._host, ns.host_veth)
                if pod_end is not None:
                    links.delete_link(pod, POD_IFNAME)
                self._add_veth(ns, self._bridge_index())
            self._configure_pod(pod, ip, prune=True)
        self._write_resolv_conf(ns)

    def address(self, name: str) -> IPAddress | None:
        """The pod address the kernel has on the pod's eth0 (None if it has none, or several)."""
        ns = self.paths(name)
        with nsfiles.call_in_netns(ns.net, Rtnl) as pod:
            eth0 = links.get_link(pod, POD_IFNAME)
            if eth0 is None:
                return None
            family = links.family_of(self._config.gateway)
            found = [ip for ip, prefixlen in links.addresses(pod, eth0.index, family)
                     if prefixlen == self._config.prefixlen and self._config.pod_subnet_contains(ip)]
        return found[0] if len(found) == 1 else None

    def write_meta(self, name: str, meta: Mapping[str, object]) -> None:
        """Keep a copy of what the kernel cannot tell (labels, creation time) beside the pod's
        namespaces, so a lost pod store can be rebuilt. Not synced: it is a spare copy."""
        path = self.paths(name).pod_dir / META_FILE
        try:
            path.write_text(json.dumps(meta, sort_keys=True))
        except OSError as exc:
            raise KernelError(f"cannot write {path}: {exc.strerror}") from exc

    def read_meta(self, name: str) -> object | None:
        """The spare copy written by write_meta (untrusted: parse it), None if missing or unreadable."""
        try:
            return json.loads((self.paths(name).pod_dir / META_FILE).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None

    def remove_stray_links(self, keep: Collection[str]) -> list[str]:
        """Delete host veths of ours that belong to none of the pods in `keep`; returns their names."""
        wanted = {veth_name(self._config.link_prefix, name) for name in keep}
        strays = [
            link.name
            for link in links.list_links(self._host)
            if link.kind == "veth" and is_veth_name(self._config.link_prefix, link.name) and link.name not in wanted
        ]
        return [name for name in strays if links.delete_link(self._host, name)]

    def _check_address(self, ip: IPAddress) -> None:
        if not isinstance(ip, (IPv4Address, IPv6Address)) or not self._config.pod_subnet_contains(ip):
            raise UsageError(
                f"pod address {ip} is not usable on {self._config.gateway}/{self._config.prefixlen} "
                "(it must be in the subnet and not its gateway, network or broadcast address)"
            )

    def _bridge_index(self) -> int:
        bridge = links.get_link(self._host, self._config.bridge)
        if bridge is None:
            raise KernelError(f"bridge {self._config.bridge} does not exist")
        return bridge.index

    def _add_veth(self, ns: PodNamespaces, bridge: int) -> None:
        fd = os.open(ns.net, os.O_RDONLY | os.O_CLOEXEC)
        try:
            try:
                self._create_veth(ns, bridge, fd)
            except NetlinkError as exc:
                if exc.errno != errno.EEXIST:
                    raise
                self._remove_leftover_veth(ns)
                self._create_veth(ns, bridge, fd)
        finally:
            os.close(fd)

    def _create_veth(self, ns: PodNamespaces, bridge: int, netns_fd: int) -> None:
        links.create_veth(
            self._host, ns.host_veth, POD_IFNAME, mtu=self._config.mtu, master_index=bridge, peer_netns_fd=netns_fd
        )

    def _remove_leftover_veth(self, ns: PodNamespaces) -> None:
        """The veth name is taken: fine if by a deleted pod's detached end, a conflict otherwise."""
        link = links.get_link(self._host, ns.host_veth)
        if link is not None and (link.kind != "veth" or link.up or link.master is not None):
            raise ConflictError(
                f"pod {ns.name}: host link {ns.host_veth} is in use (another pod's name hashes to it, "
                "or the link is not ours)"
            )
        links.delete_link(self._host, ns.host_veth)

    def _configure_pod(self, pod: Rtnl, ip: IPAddress, *, prune: bool) -> None:
        """lo up; eth0 up with the pod address and the default route; with prune, drop other addresses."""
        links.set_link(pod, links.LOOPBACK_INDEX)
        eth0 = links.get_link(pod, POD_IFNAME)
        if eth0 is None:
            raise KernelError(f"{POD_IFNAME} is missing in the pod after creating the veth")
        links.set_link(pod, eth0.index, mtu=self._config.mtu if prune else None)
        links.replace_address(pod, eth0.index, ip, self._config.prefixlen)
        if prune:
            family = links.family_of(ip)
            for other, prefixlen in links.addresses(pod, eth0.index, family):
                if (other, prefixlen) != (ip, self._config.prefixlen):
                    links.delete_address(pod, eth0.index, other, prefixlen)
        links.replace_default_route(pod, self._config.gateway, eth0.index)

    def _write_resolv_conf(self, ns: PodNamespaces) -> None:
        """The pod's resolv.conf, rewritten only when it differs (a restart finds it in place)."""
        text = self._config.resolv_conf
        if text is None:
            return
        try:
            if ns.resolv_conf.read_text() == text:
                return
        except OSError:
            pass  # not there yet
        try:
            ns.resolv_conf.parent.mkdir(parents=True, exist_ok=True)
            ns.resolv_conf.write_text(text)
        except OSError as exc:
            raise KernelError(f"cannot write {ns.resolv_conf}: {exc.strerror}") from exc

    def _remove(self, ns: PodNamespaces, *, veth: bool) -> None:
        ns.resolv_conf.unlink(missing_ok=True)
        try:
            ns.resolv_conf.parent.rmdir()
        except OSError:
            pass  # absent, or someone put more there: left alone
        if veth:
            links.detach_link(self._host, ns.host_veth)
        for path in (ns.net, ns.uts, ns.ipc):
            nsfiles.remove_namespace_file(path)
        try:
            os.unlink(ns.pod_dir / META_FILE)
        except OSError:
            pass  # absent (a pod of an older overlayd, or half-made); remove_dir reports the rest
        nsfiles.remove_dir(ns.pod_dir)


def _listdir(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


def _is_pod_name(name: str) -> bool:
    try:
        validate_pod_name(name)
    except UsageError:
        return False
    return True
