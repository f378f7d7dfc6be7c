"""Netlink's bulk paths against a real kernel in a throwaway namespace.

The struct-based dumps must read what pyroute2's decoding of the same tables reads, and
apply_batch must program a batch larger than one chunk and name the request that failed.
A worker thread joins the namespace: raw netlink sockets and pyroute2 follow the thread.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import ipaddress
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from pyroute2 import IPRoute

from overlayd.backend.netlink import Netlink
from overlayd.backend.nlwire import Batch
from overlayd.backend.objects import (
    RT_TABLE_MAIN,
    RTPROT_OVERLAYD,
    FdbEntry,
    fdb_from_msg,
    neighbour_from_msg,
    route_from_msg,
)
from overlayd.errors import KernelError

pytestmark = pytest.mark.integration

T = TypeVar("T")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def sh(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stderr.strip()}"
    return done.stdout


def _enter(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")
    finally:
        os.close(fd)


class Netns:
    def __init__(self, name: str) -> None:
        self.name = name
        self._worker = concurrent.futures.ThreadPoolExecutor(1, initializer=_enter, initargs=(name,))
        self.ipr: Any = self.run(IPRoute)

    def run(self, fn: Callable[..., T], *args: Any) -> T:
        return self._worker.submit(fn, *args).result(timeout=60)

    def ip(self, *args: str) -> str:
        return sh("ip", "-n", self.name, *args)

    def close(self) -> None:
        self.run(self.ipr.close)
        self._worker.shutdown()


@pytest.fixture
def ns() -> Iterator[Netns]:
    name = f"ovl-nl-{secrets.token_hex(3)}"
    sh("ip", "netns", "add", name)
    space = Netns(name)
    try:
        space.ip("link", "add", "ul0", "type", "veth", "peer", "name", "ul1")  # no dummy module here
        space.ip("link", "set", "ul1", "up")
        space.ip("addr", "add", "198.18.0.10/24", "dev", "ul0")
        space.ip("link", "set", "ul0", "up")
        space.ip("link", "add", "vx0", "type", "vxlan", "id", "1", "dstport", "4789", "local", "198.18.0.10",
                 "dev", "ul0", "nolearning")
        space.ip("link", "set", "vx0", "up")
        space.ip("addr", "add", "10.244.0.0/32", "dev", "vx0")
        space.ip("addr", "add", "fd00:244::/128", "dev", "vx0", "nodad")
        yield space
    finally:
        space.close()
        sh("ip", "netns", "del", name)


def _ifindex(space: Netns, name: str) -> int:
    return int(json.loads(space.ip("-j", "link", "show", name))[0]["ifindex"])


def test_dumps_read_what_pyroute2_decodes(ns: Netns) -> None:
    vx = _ifindex(ns, "vx0")
    # Objects overlayd reads, and look-alikes it must not see: another table, another device.
    ns.ip("link", "add", "br0", "type", "bridge")
    ns.ip("link", "set", "br0", "up")
    for i in range(1, 40):
        ns.ip("route", "add", f"10.245.{i}.0/24", "via", f"10.245.{i}.0", "dev", "vx0", "onlink", "proto", "213")
        ns.ip("route", "add", f"fd00:245:{i:x}::/64", "via", f"fd00:245:{i:x}::", "dev", "vx0", "onlink")
        ns.ip("neigh", "add", f"10.245.{i}.0", "lladdr", f"02:00:00:00:01:{i:02x}", "dev", "vx0", "nud", "permanent")
        ns.ip("neigh", "add", f"fd00:245:{i:x}::", "lladdr", f"02:00:00:00:01:{i:02x}", "dev", "vx0")
        ns.ip("route", "add", f"10.246.{i}.0/24", "dev", "ul0", "table", "100")
    ns.ip("route", "add", "default", "via", "198.18.0.1", "metric", "7")
    ns.ip("route", "add", "10.247.0.0/16", "nexthop", "via", "198.18.0.2", "nexthop", "via", "198.18.0.3")
    ns.ip("neigh", "add", "198.18.0.5", "lladdr", "02:00:00:00:02:05", "dev", "ul0")
    sh("bridge", "-n", ns.name, "fdb", "append", "00:00:00:00:00:00", "dev", "vx0", "dst", "198.18.0.20")
    sh("bridge", "-n", ns.name, "fdb", "add", "02:00:00:00:01:01", "dev", "vx0", "dst", "198.18.0.21")
    sh("bridge", "-n", ns.name, "fdb", "add", "02:00:00:00:01:02", "dev", "vx0", "dst", "198.18.0.22",
       "port", "4790", "vni", "3")
    sh("bridge", "-n", ns.name, "fdb", "add", "02:00:00:00:03:01", "dev", "br0", "self", "permanent")
    nl = Netlink(ns.ipr)

    def compare() -> None:
        for version, family in ((4, 2), (6, 10)):
            theirs = [route_from_msg(m) for m in ns.ipr.route("dump", family=family) if m.get("table") == RT_TABLE_MAIN]
            assert nl.main_routes(version) == theirs and len(theirs) > 40
            theirs_n = [neighbour_from_msg(m) for m in ns.ipr.neigh("dump", family=family) if m.get("ifindex") == vx]
            assert nl.neighbours(version, vx) == theirs_n and len(theirs_n) >= 39
        theirs_f = [fdb_from_msg(m) for m in ns.ipr.fdb("dump") if m.get("ifindex") == vx]
        assert nl.fdb(vx) == theirs_f and len(theirs_f) == 3
        assert FdbEntry(vx, "02:00:00:00:01:02", ipaddress.ip_address("198.18.0.22"), 4790, 3) in theirs_f

    ns.run(compare)


def test_apply_batch_programs_more_than_a_chunk_and_names_the_failure(ns: Netns) -> None:
    vx = _ifindex(ns, "vx0")
    nl = Netlink(ns.ipr)
    batch = Batch()
    peers = [(ipaddress.ip_network(f"10.{i // 256 + 1}.{i % 256}.0/24"), f"02:00:00:{i >> 8:02x}:{i & 255:02x}:01")
             for i in range(700)]
    for i, (subnet, mac) in enumerate(peers):
        batch.replace_fdb(vx, mac, ipaddress.ip_address(f"198.18.{i // 250 + 1}.{i % 250 + 1}"))
        batch.replace_neighbour(vx, subnet.network_address, mac)
        batch.replace_onlink_route(subnet, subnet.network_address, vx, RTPROT_OVERLAYD)
    ns.run(nl.apply_batch, batch)
    routes = json.loads(ns.ip("-j", "route", "show", "proto", str(RTPROT_OVERLAYD), "dev", "vx0"))
    assert len(routes) == 700 and {"onlink"} <= set(routes[0]["flags"])
    assert len(json.loads(ns.ip("-j", "neigh", "show", "dev", "vx0", "nud", "permanent"))) == 700
    fdb = json.loads(sh("bridge", "-n", ns.name, "-j", "fdb", "show", "dev", "vx0"))
    assert {e["mac"] for e in fdb if "dst" in e} == {mac for _, mac in peers}

    # Deleting what is gone is fine; a route through a missing device fails and is named.
    routes_now = ns.run(nl.main_routes, 4)
    ours = [r for r in routes_now if r.protocol == RTPROT_OVERLAYD][:2]
    failing = Batch()
    for route in ours:
        failing.delete_route(route)
        failing.delete_route(route)  # the second time it is already gone
    failing.replace_onlink_route(ipaddress.ip_network("10.99.0.0/24"), ipaddress.ip_address("10.99.0.0"), 9999,
                                 RTPROT_OVERLAYD)
    with pytest.raises(KernelError, match=r"^set route 10\.99\.0\.0/24 via 10\.99\.0\.0: "):
        ns.run(nl.apply_batch, failing)
    assert len(json.loads(ns.ip("-j", "route", "show", "proto", str(RTPROT_OVERLAYD)))) == 698
