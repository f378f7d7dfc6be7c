"""Test-wide guard: no test may change the root namespace's addresses, routes or links.

Every test snapshots them before and compares after, so a namespace bug that
leaks into the host fails the test that caused it instead of going unnoticed.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest


def _root_netns_snapshot() -> tuple[str, ...]:
    def dump(*args: str) -> str:
        out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True).stdout or "[]"
        entries = json.loads(out)
        for entry in entries:  # counters and timers change by themselves
            for volatile in ("stats64", "operstate", "linkmode", "addr_info_lifetimes"):
                entry.pop(volatile, None)
            for info in entry.get("addr_info", []):
                info.pop("valid_life_time", None)
                info.pop("preferred_life_time", None)
        return json.dumps(entries, sort_keys=True)

    return (dump("addr", "show"), dump("route", "show", "table", "all"), dump("link", "show"))


@pytest.fixture(autouse=True)
def root_netns_untouched(request: pytest.FixtureRequest) -> Iterator[None]:
    if os.geteuid() != 0 or "integration" not in request.node.nodeid:
        yield
        return
    before = _root_netns_snapshot()
    yield
    after = _root_netns_snapshot()
    for name, b, a in zip(("addresses", "routes", "links"), before, after):
        assert a == b, f"this test changed the root namespace's {name}"
