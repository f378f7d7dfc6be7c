"""CNI attachments in the kernel: a veth from the host bridge into a runtime's network namespace.

The namespace belongs to the runtime (CNI_NETNS): we put an interface, an
address and a default route into it and never delete or unmount it. The host
end carries our mark: link_prefix + "z" + 7 hex digits of a hash of the
attachment, a shape pod veths (8 hex digits) never have, so pod reconciling
leaves it alone. Synchronous, like PodManager; callers serialise calls.
"""

from __future__ import annotations

import errno
import hashlib
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path

from overlayd.errors import ConflictError, KernelError, UsageError
from overlayd.pods import links, nsfiles
from overlayd.pods.config import PodNetworkConfig
from overlayd.pods.rtnl import NetlinkError, Rtnl, attr_str, attr_u32, parse_attrs

IPAddress = IPv4Address | IPv6Address
CNI_MARK = "z"
_HASH_HEX = 7
_IFLA_ADDRESS = 1


def cni_veth_name(link_prefix: str, network: str, container_id: str, ifname: str) -> str:
    """The host end's name: stable for one attachment, and marked as a CNI one (see module doc)."""
    digest = hashlib.sha256(f"{network}/{container_id}/{ifname}".encode()).hexdigest()
    return link_prefix + CNI_MARK + digest[:_HASH_HEX]


def is_cni_veth_name(link_prefix: str, ifname: str) -> bool:
    tail = ifname[len(link_prefix) + len(CNI_MARK):]
    return ifname.startswith(link_prefix + CNI_MARK) and len(tail) == _HASH_HEX and \
        all(c in "0123456789abcdef" for c in tail)


@dataclass(frozen=True)
class Macs:
    host: str
    container: str


class CniWiring:
    """Builds, checks and removes attachments; its host netlink socket lives in the constructor's netns."""

    def __init__(self, config: PodNetworkConfig) -> None:
        self._config = config
        self._host = Rtnl()
        # Deletes detached pairs off the request path (see detach()); its socket is made here, in the host's netns.
        self._reaper_rtnl = Rtnl()
        self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlayd-cni-reaper")
        self._reaping: dict[str, Future[bool]] = {}
        self._nsfs_dev = os.stat("/proc/thread-self/ns/net").st_dev
        # Never a container's: the daemon's own network namespace and init's (the machine's).
        self._host_netns = {_identity(Path(p)) for p in ("/proc/thread-self/ns/net", "/proc/1/ns/net")} - {None}

    @property
    def config(self) -> PodNetworkConfig:
        return self._config

    def close(self) -> None:
        self._reaper.shutdown(wait=True)
        self._reaper_rtnl.close()
        self._host.close()

    def netns_exists(self, netns: Path) -> bool:
        identity = _identity(netns)
        return identity is not None and identity[0] == self._nsfs_dev

    def attach(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> Macs:
        """Create the veth, its container end `ifname` in `netns` with ip and default route; undone on failure."""
        fd = self._open_netns(netns)
        self._wait_reaped(host_veth)
        try:
            try:
                links.create_veth(self._host, host_veth, ifname, mtu=self._config.mtu,
                                  master_index=self._bridge_index(), peer_netns_fd=fd)
            except NetlinkError as exc:
                if exc.errno == errno.EEXIST:
                    raise ConflictError(f"{host_veth} on the host or {ifname} in {netns} exists already") from None
                raise
        finally:
            os.close(fd)
        try:
            return self._configure(host_veth, netns, ifname, ip)
        except BaseException:
            links.delete_link(self._host, host_veth)
            raise

    def ensure(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> Macs:
        """Repair an attachment whose netns exists: recreate a missing veth, re-add address and route."""
        host_end = links.get_link(self._host, host_veth)
        if host_end is None:
            return self.attach(host_veth, netns, ifname, ip)
        links.set_link(self._host, host_end.index, mtu=self._config.mtu, master_index=self._bridge_index())
        return self._configure(host_veth, netns, ifname, ip)

    def problems(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> list[str]:
        """What differs from the attachment as ADD made it (CHECK); empty when all is in place."""
        if not self.netns_exists(netns):
            return [f"{netns} is not a network namespace"]
        found: list[str] = []
        host_end = links.get_link(self._host, host_veth)
        if host_end is None or not host_end.up or host_end.master != self._bridge_index():
            found.append(f"host end {host_veth} is missing, down or not in bridge {self._config.bridge}")
        with nsfiles.call_in_netns(netns, Rtnl) as pod:
            link = links.get_link(pod, ifname)
            if link is None:
                return found + [f"{ifname} is missing in {netns}"]
            if not link.up:
                found.append(f"{ifname} is down")
            family = links.family_of(ip)
            if (ip, self._config.prefixlen) not in links.addresses(pod, link.index, family):
                found.append(f"{ifname} lacks its address {ip}/{self._config.prefixlen}")
            if not _has_default_route(pod, self._config.gateway, link.index):
                found.append(f"the default route via {self._config.gateway} dev {ifname} is missing")
        return found

    def detach(self, host_veth: str) -> bool:
        """Cut the pair off at once (host end down, out of the bridge) and delete it in the background;
        False if it was gone.

        Deleting (or moving) a link waits for an RCU barrier, 15-35 ms here: most of a DEL
        if the runtime had to wait for it. The reaper thread deletes the pair with its own
        netlink socket; an ADD that needs the same name waits for that (see attach()).
        A crash before the reaper ran leaves a detached link of ours: reconcile deletes it.
        """
        if not links.detach_link(self._host, host_veth):
            return False
        self._reaping[host_veth] = self._reaper.submit(links.delete_link, self._reaper_rtnl, host_veth)
        return True

    def _wait_reaped(self, host_veth: str) -> None:
        pending = self._reaping.pop(host_veth, None)
        if pending is not None:
            try:
                pending.result()
            except KernelError:
                pass  # the name is still taken then: create_veth reports it

    def cni_links(self) -> dict[str, bool]:
        """Our CNI host ends: name -> whether detached (down and in no bridge: a DEL the reaper did not finish)."""
        return {link.name: not link.up and link.master is None for link in links.list_links(self._host)
                if link.kind == "veth" and is_cni_veth_name(self._config.link_prefix, link.name)}

    def _open_netns(self, netns: Path) -> int:
        try:
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise UsageError(f"CNI_NETNS {netns}: {exc.strerror}") from None
        st = os.fstat(fd)
        if st.st_dev != self._nsfs_dev or (st.st_dev, st.st_ino) in self._host_netns:
            os.close(fd)
            raise UsageError(f"CNI_NETNS {netns} is not a container's network namespace")
        return fd

    def _bridge_index(self) -> int:
        bridge = links.get_link(self._host, self._config.bridge)
        if bridge is None:
            raise KernelError(f"bridge {self._config.bridge} does not exist")
        return bridge.index

    def _configure(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> Macs:
        with nsfiles.call_in_netns(netns, Rtnl) as pod:
            link = links.get_link(pod, ifname)
            if link is None:
                raise KernelError(f"{ifname} is missing in {netns} after creating the veth")
            links.set_link(pod, link.index, mtu=self._config.mtu)
            links.replace_address(pod, link.index, ip, self._config.prefixlen)
            links.replace_default_route(pod, self._config.gateway, link.index)
            container_mac = _mac(pod, ifname)
        return Macs(host=_mac(self._host, host_veth), container=container_mac)


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _mac(rtnl: Rtnl, ifname: str) -> str:
    body = links._ifinfomsg() + attr_str(links.IFLA_IFNAME, ifname) + attr_u32(links.IFLA_EXT_MASK,
                                                                               links.RTEXT_FILTER_SKIP_STATS)
    (reply,) = rtnl.query(links.RTM_GETLINK, body, what=f"read the MAC of {ifname}")
    raw = parse_attrs(reply, links._IFINFOMSG.size).get(_IFLA_ADDRESS, b"")
    return ":".join(f"{b:02x}" for b in bytes(raw))


_RTM_GETROUTE = 26
_RTA_DST = 1


def _has_default_route(rtnl: Rtnl, gateway: IPAddress, index: int) -> bool:
    family = links.family_of(gateway)
    body = links._RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
    for reply in rtnl.query(_RTM_GETROUTE, body, what="list routes", dump=True):
        dst_len, table = reply[1], reply[4]
        attrs = parse_attrs(reply, links._RTMSG.size)
        oif = attrs.get(links.RTA_OIF)
        if dst_len == 0 and table == links.RT_TABLE_MAIN and _RTA_DST not in attrs \
                and attrs.get(links.RTA_GATEWAY) == gateway.packed \
                and oif is not None and int.from_bytes(oif, "little") == index:
            return True
    return False
