"""The yardstick bench_wireguard measures against (python_relay.py) carries traffic both ways:
a benchmark kind that could not would quote a floor it never measured."""

from __future__ import annotations

import pytest

from tests.integration.wg_bed import WgBed

pytestmark = pytest.mark.integration


def test_the_relay_bed_carries_pings_and_tcp_both_ways() -> None:
    with WgBed("relay", "relay") as bed:
        bed.ping(bed.a, bed.b.tunnel_ip)
        bed.ping(bed.b, bed.a.tunnel_ip)
        bed.tcp_transfer(bed.a, bed.b, 1_000_000)
