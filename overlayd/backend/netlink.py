"""Thin synchronous netlink layer over a pyroute2 IPRoute: dumps parsed into values, and writes.

Every netlink failure becomes a KernelError that names the operation. Deleting
something that is already gone is not an error (reconcilers race with the admin
and with the kernel's own cleanup).

pyroute2 0.9 opens one netlink socket per calling thread, in that thread's network
namespace: callers must only use an IPRoute from threads in the namespace it serves.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from pyroute2.netlink.exceptions import NetlinkError

from overlayd.errors import KernelError

from . import nlwire
from .nlwire import Batch
from .objects import (
    IFA_F_NODAD,
    RT_TABLE_MAIN,
    RTNH_F_ONLINK,
    Address,
    FdbEntry,
    IPAddress,
    IPInterface,
    IPNetwork,
    Link,
    Neighbour,
    Route,
    address_from_msg,
    link_from_msg,
)

RT_SCOPE_LINK = 253
T = TypeVar("T")

SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK = 10, 11, 12
SO_RCVBUFFORCE = 33
# Requests per sendmsg(): their acknowledgements must fit the receive buffer, or the kernel drops them.
BATCH_CHUNK = 256
_RCVBUF = 4 << 20
_TIMEOUT_S = 30.0
_DUMP_ATTEMPTS = 3  # a dump the kernel marks interrupted (the table changed meanwhile) is redone

# Errors that mean "the object to delete does not exist (any more)".
_GONE = {errno.ENOENT, errno.ESRCH, errno.ENODEV, errno.EADDRNOTAVAIL}


@contextlib.contextmanager
def _kernel(operation: str, *, missing_ok: bool = False) -> Iterator[None]:
    try:
        yield
    except NetlinkError as exc:
        if missing_ok and exc.code in _GONE:
            return
        raise KernelError(f"{operation}: {exc.args[1] if len(exc.args) > 1 else exc}") from exc
    except OSError as exc:
        raise KernelError(f"{operation}: {exc.strerror or exc}") from exc


def _raw_socket() -> socket.socket:
    """A NETLINK_ROUTE socket in the calling thread's network namespace (where the IPRoute serves too)."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
    try:
        sock.settimeout(_TIMEOUT_S)  # the kernel always answers; never hang a reconcile if it did not
        with contextlib.suppress(OSError):
            # Strict checking makes the kernel honour the filters in dump requests (Linux >= 4.20);
            # without it the dumps are whole and the callers' own filters do the work.
            sock.setsockopt(SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without a copy of the request
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # ... but with the kernel's reason
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, _RCVBUF)
        except PermissionError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _dump(request: Callable[[int], bytes], parse: Callable[[bytes], T | None]) -> list[T]:
    """One dump on a fresh raw socket, parsed with `parse` (None: skipped). Raises OSError."""
    for seq in range(1, _DUMP_ATTEMPTS + 1):
        found: list[T] = []
        interrupted = False
        with _raw_socket() as sock:
            sock.send(request(seq))
            done = False
            while not done:
                for msg in nlwire.split(sock.recv(1 << 20)):
                    if msg.seq != seq:
                        continue
                    if msg.type in (nlwire.NLMSG_DONE, nlwire.NLMSG_ERROR):
                        ack = nlwire.parse_ack(msg)
                        if ack.error:
                            raise OSError(ack.error, ack.detail or os.strerror(ack.error))
                        done = True
                        break
                    interrupted = interrupted or bool(msg.flags & nlwire.NLM_F_DUMP_INTR)
                    item = parse(msg.body)
                    if item is not None:
                        found.append(item)
        if not interrupted:
            return found
    raise OSError(errno.EAGAIN, "the table kept changing during the dump")


def _read_acks(sock: socket.socket, seqs: range, batch: Batch) -> list[tuple[int, int, str | None]]:
    """Wait for an acknowledgement of each of `seqs`; the failures (seq, errno, detail) in order."""
    pending = set(seqs)
    failures: list[tuple[int, int, str | None]] = []
    while pending:
        for msg in nlwire.split(sock.recv(1 << 20)):
            if msg.type != nlwire.NLMSG_ERROR or msg.seq not in pending:
                continue
            pending.discard(msg.seq)
            ack = nlwire.parse_ack(msg)
            if ack.error and not (batch.missing_ok[msg.seq - 1] and ack.error in _GONE):
                failures.append((msg.seq, ack.error, ack.detail))
    return sorted(failures)


class Netlink:
    """Reads and writes the few kernel objects overlayd manages, via one IPRoute."""

    def __init__(self, ipr: Any) -> None:
        self._ipr = ipr

    # -- reads -------------------------------------------------------------------------------

    def links(self) -> list[Link]:
        with _kernel("list links"):
            return [link_from_msg(m) for m in self._ipr.link("dump")]

    def link(self, name: str) -> Link | None:
        """The link called `name`, or None."""
        with _kernel(f"look up link {name}"):
            try:
                msgs = self._ipr.link("get", ifname=name)
            except NetlinkError as exc:
                if exc.code == errno.ENODEV:
                    return None
                raise
        return link_from_msg(msgs[0])

    def addresses(self, ifindex: int | None = None) -> list[Address]:
        with _kernel("list addresses"):
            msgs = self._ipr.addr("dump")
            return [address_from_msg(m) for m in msgs if ifindex is None or m.get("index") == ifindex]

    def main_routes(self, version: int) -> list[Route]:
        """Routes of the main table for one IP version (one dump, filtered by the kernel)."""
        with _kernel("list routes"):
            routes = _dump(lambda seq: nlwire.route_dump_request(seq, version), nlwire.parse_route)
        return [r for r in routes if r.table == RT_TABLE_MAIN and r.dst.version == version]

    def neighbours(self, version: int, ifindex: int) -> list[Neighbour]:
        with _kernel("list neighbours"):
            found = _dump(lambda seq: nlwire.neighbour_dump_request(seq, version, ifindex), nlwire.parse_neighbour)
        return [n for n in found if n.ifindex == ifindex and n.ip.version == version]

    def fdb(self, ifindex: int) -> list[FdbEntry]:
        with _kernel("list FDB entries"):
            found = _dump(lambda seq: nlwire.fdb_dump_request(seq, ifindex), nlwire.parse_fdb)
        return [e for e in found if e.ifindex == ifindex]

    # -- many changes at once -----------------------------------------------------------------

    def apply_batch(self, batch: Batch) -> None:
        """Send `batch` in few sendmsg() calls and check every acknowledgement (one round trip per
        request costs a quarter of a millisecond; thousands of peers make that seconds).

        The kernel carries on after a failed request, so on failure an unknown part of the batch
        is applied: KernelError names the first failed request, and the caller must treat the
        kernel as unknown (a full reconcile next)."""
        with _kernel("apply batch"), _raw_socket() as sock:
            for start in range(0, len(batch), BATCH_CHUNK):
                chunk = range(start + 1, min(start + BATCH_CHUNK, len(batch)) + 1)  # their sequence numbers
                sock.send(b"".join(batch.messages[start : chunk.stop - 1]))
                failures = _read_acks(sock, chunk, batch)
                if failures:
                    seq, error, detail = failures[0]
                    raise KernelError(f"{batch.operations[seq - 1]}: {detail or os.strerror(error)}")

    # -- links -------------------------------------------------------------------------------

    def create_link(self, name: str, kind: str, **attrs: Any) -> Link:
        with _kernel(f"create {kind} link {name}"):
            self._ipr.link("add", ifname=name, kind=kind, **attrs)
        created = self.link(name)
        if created is None:
            raise KernelError(f"create {kind} link {name}: it vanished right after creation")
        return created

    def set_link(self, link: Link, **attrs: Any) -> None:
        with _kernel(f"configure link {link.name} ({', '.join(sorted(attrs))})"):
            self._ipr.link("set", index=link.index, **attrs)

    def delete_link(self, link: Link) -> None:
        with _kernel(f"delete link {link.name}", missing_ok=True):
            self._ipr.link("del", index=link.index)

    # -- addresses ---------------------------------------------------------------------------

    def add_address(self, ifindex: int, interface: IPInterface, protocol: int) -> None:
        attrs: dict[str, Any] = {}
        if interface.version == 4:
            attrs["broadcast"] = str(interface.network.broadcast_address)
        else:
            attrs["flags"] = IFA_F_NODAD  # our own gateway address: nobody else may hold it
        with _kernel(f"add address {interface} to link #{ifindex}"):
            self._ipr.addr(
                "add",
                index=ifindex,
                address=str(interface.ip),
                prefixlen=interface.network.prefixlen,
                proto=protocol,
                **attrs,
            )

    def delete_address(self, address: Address) -> None:
        with _kernel(f"delete address {address.interface} from link #{address.ifindex}", missing_ok=True):
            self._ipr.addr(
                "del",
                index=address.ifindex,
                address=str(address.interface.ip),
                prefixlen=address.interface.network.prefixlen,
            )

    # -- routes, neighbours, FDB ---------------------------------------------------------------

    def route_oif(self, dst: IPAddress) -> int | None:
        """The interface the kernel would send to `dst` through (None: no route)."""
        try:
            answer = self._ipr.route("get", dst=str(dst))
        except (NetlinkError, OSError):
            return None
        return answer[0].get_attr("RTA_OIF") if answer else None

    def add_onlink_route(self, dst: IPNetwork, gateway: IPAddress, oif: int, protocol: int) -> bool:
        """An onlink route `dst via gateway dev oif`, never over an existing route to `dst`:
        False if one is there (the full reconcile's batch replaces; see nlwire.Batch)."""
        try:
            with _kernel(f"add route {dst} via {gateway}"):
                self._ipr.route("add", dst=str(dst), gateway=str(gateway), oif=oif, flags=RTNH_F_ONLINK,
                                proto=protocol, table=RT_TABLE_MAIN)
        except KernelError as exc:
            if isinstance(exc.__cause__, NetlinkError) and exc.__cause__.code == errno.EEXIST:
                return False
            raise
        return True

    def replace_gateway_route(self, dst: IPNetwork, gateway: IPAddress, oif: int, protocol: int) -> None:
        """`dst via gateway dev <oif>`: the kernel checks that the gateway is on-link (host-gw)."""
        with _kernel(f"set route {dst} via {gateway}"):
            self._ipr.route("replace", dst=str(dst), gateway=str(gateway), oif=oif, proto=protocol,
                            table=RT_TABLE_MAIN)

    def replace_dev_route(self, dst: IPNetwork, oif: int, protocol: int) -> None:
        """`dst dev <oif> scope link`: for a point-to-point device such as WireGuard's."""
        with _kernel(f"set route {dst} dev #{oif}"):
            self._ipr.route("replace", dst=str(dst), oif=oif, proto=protocol, table=RT_TABLE_MAIN,
                            scope=RT_SCOPE_LINK)

    def delete_route(self, route: Route) -> None:
        # Give every key field so that exactly this route goes, not a namesake with another metric.
        attrs: dict[str, Any] = {
            "dst": str(route.dst),
            "table": route.table,
            "proto": route.protocol,
            "type": route.type,
            "tos": route.tos,
            "priority": route.priority,
            "scope": route.scope,
        }
        if route.oif is not None:
            attrs["oif"] = route.oif
        if route.gateway is not None:
            attrs["gateway"] = str(route.gateway)
        with _kernel(f"delete route {route.dst}", missing_ok=True):
            self._ipr.route("del", **attrs)

