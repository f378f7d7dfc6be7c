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

from overlayd.cni.nsopen import NetnsSockets
from overlayd.errors import ConflictError, KernelError, UsageError
from overlayd.pods import links
from overlayd.pods.config import PodNetworkConfig
from overlayd.pods.rtnl import NLM_F_CREATE, NLM_F_REPLACE, NetlinkError, Rtnl, attr, attr_str, attr_u32, parse_attrs

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
        self._inside = NetnsSockets()  # sockets in containers' namespaces; home is the constructor's
        self._bridge: int | None = None  # the bridge's ifindex, looked up again when a request finds it stale
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
        self._inside.close()
        self._host.close()

    def netns_exists(self, netns: Path) -> bool:
        identity = _identity(netns)
        return identity is not None and identity[0] == self._nsfs_dev

    def attach(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> Macs:
        """Create the veth, its container end `ifname` in `netns` with ip and default route; undone on failure.

        Four round trips to the kernel: the pair is made in one request (host end up in the bridge, MACs
        chosen here so nobody has to ask for them), then inside the container's namespace one lookup of
        the new end's index and one batch (up, address, default route).
        """
        fd = self._open_netns(netns)
        try:
            pod = self._inside.open(fd)
            try:
                self._wait_reaped(host_veth)
                macs = Macs(host=_random_mac(), container=_random_mac())
                self._create_veth(host_veth, netns, ifname, fd, macs)
                try:
                    self._configure(pod, netns, ifname, ip)
                except BaseException:
                    links.delete_link(self._host, host_veth)
                    raise
            finally:
                pod.close()
        finally:
            os.close(fd)
        return macs

    def ensure(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> Macs:
        """Repair an attachment whose netns exists: recreate a missing veth, re-add address and route."""
        host_end = links.get_link(self._host, host_veth)
        if host_end is None:
            return self.attach(host_veth, netns, ifname, ip)
        self._bridge = None
        links.set_link(self._host, host_end.index, mtu=self._config.mtu, master_index=self._bridge_index())
        fd = self._open_netns(netns)
        try:
            with self._inside.open(fd) as pod:
                container_mac = self._configure(pod, netns, ifname, ip)
        finally:
            os.close(fd)
        return Macs(host=_mac(self._host, host_veth), container=container_mac)

    def problems(self, host_veth: str, netns: Path, ifname: str, ip: IPAddress) -> list[str]:
        """What differs from the attachment as ADD made it (CHECK); empty when all is in place."""
        if not self.netns_exists(netns):
            return [f"{netns} is not a network namespace"]
        found: list[str] = []
        host_end = links.get_link(self._host, host_veth)
        if host_end is None or not host_end.up or host_end.master != self._bridge_index():
            found.append(f"host end {host_veth} is missing, down or not in bridge {self._config.bridge}")
        fd = self._open_netns(netns)
        try:
            pod = self._inside.open(fd)
        finally:
            os.close(fd)
        with pod:
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
        if self._bridge is None:
            bridge = links.get_link(self._host, self._config.bridge)
            if bridge is None:
                raise KernelError(f"bridge {self._config.bridge} does not exist")
            self._bridge = bridge.index
        return self._bridge

    def _create_veth(self, host_veth: str, netns: Path, ifname: str, netns_fd: int, macs: Macs) -> None:
        for attempt in range(2):
            try:
                links.create_veth(self._host, host_veth, ifname, mtu=self._config.mtu,
                                  master_index=self._bridge_index(), peer_netns_fd=netns_fd,
                                  host_mac=_mac_bytes(macs.host), peer_mac=_mac_bytes(macs.container))
                return
            except NetlinkError as exc:
                if exc.errno == errno.EEXIST:
                    raise ConflictError(f"{host_veth} on the host or {ifname} in {netns} exists already") from None
                if attempt or exc.errno not in _STALE_MASTER:
                    raise
                self._bridge = None  # the bridge was made again (another index): look it up, once

    def _configure(self, pod: Rtnl, netns: Path, ifname: str, ip: IPAddress) -> str:
        """Up, MTU, address and default route for the container's end (in one batch); its MAC."""
        body = links._ifinfomsg() + attr_str(links.IFLA_IFNAME, ifname) + attr_u32(links.IFLA_EXT_MASK,
                                                                                   links.RTEXT_FILTER_SKIP_STATS)
        try:
            (reply,) = pod.query(links.RTM_GETLINK, body, what=f"look up {ifname} in {netns}")
        except NetlinkError as exc:
            if exc.errno == errno.ENODEV:
                raise KernelError(f"{ifname} is missing in {netns} after creating the veth") from None
            raise
        index = links._IFINFOMSG.unpack_from(reply)[2]
        mac = _format_mac(parse_attrs(reply, links._IFINFOMSG.size).get(_IFLA_ADDRESS, b""))
        config = self._config
        family = links.family_of(ip)
        up = links._ifinfomsg(index=index, flags=links.IFF_UP, change=links.IFF_UP) + attr_u32(links.IFLA_MTU,
                                                                                                config.mtu)
        address = links._IFADDRMSG.pack(family, config.prefixlen, 0, links.RT_SCOPE_UNIVERSE, index) + attr(
            links.IFA_LOCAL, ip.packed) + attr(links.IFA_ADDRESS, ip.packed)
        route = links._RTMSG.pack(family, 0, 0, 0, links.RT_TABLE_MAIN, links.RTPROT_STATIC, links.RT_SCOPE_UNIVERSE,
                                  links.RTN_UNICAST, 0) + attr(links.RTA_GATEWAY, config.gateway.packed) + attr_u32(
            links.RTA_OIF, index)
        pod.request_all([
            (links.RTM_NEWLINK, up, 0, f"set {ifname} up"),
            (links.RTM_NEWADDR, address, NLM_F_CREATE | NLM_F_REPLACE, f"add address {ip}/{config.prefixlen}"),
            (links.RTM_NEWROUTE, route, NLM_F_CREATE | NLM_F_REPLACE, f"set default route via {config.gateway}"),
        ])
        return mac


_STALE_MASTER = frozenset({errno.EINVAL, errno.ENODEV, errno.EOPNOTSUPP})


def _random_mac() -> str:
    """A random unicast, locally administered MAC, as the kernel picks one for a new veth end."""
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02
    return _format_mac(raw)


def _format_mac(raw: bytes | bytearray) -> str:
    return ":".join(f"{b:02x}" for b in bytes(raw))


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


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
    return _format_mac(parse_attrs(reply, links._IFINFOMSG.size).get(_IFLA_ADDRESS, b""))


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
