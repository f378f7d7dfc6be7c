"""A host that lost its saved state asks etcd which subnet is its own; an etcd error is
retried, never taken for "none" (which would claim the host a second subnet)."""

from __future__ import annotations

import logging
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import trio
import trio.testing

from ipam.config import ClusterConfig
from overlayd.cluster.records import HostRecord
from overlayd.config import config_from_mapping
from overlayd.errors import ClusterError
from overlayd.health import HealthModel, LoggingReporter
from overlayd.hoststate import StateFiles
from overlayd.metrics import DaemonMetrics
from overlayd.startup import Startup

OWN = ip_network("10.244.7.0/24")


class FlakyCluster:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def find_own(self, config: ClusterConfig, record: HostRecord) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise ClusterError("etcd: deadline exceeded")
        return OWN


def test_an_etcd_error_while_looking_for_our_subnet_is_retried(tmp_path: Path) -> None:
    health = HealthModel()
    startup = Startup(config_from_mapping({"node_name": "h1", "state_dir": str(tmp_path)}), renumber=False,
                      files=StateFiles(tmp_path), health=health, metrics=DaemonMetrics(),
                      reporter=LoggingReporter(logging.getLogger("t"), health), kernel=None)  # type: ignore[arg-type]
    cluster = FlakyCluster(failures=3)
    record = HostRecord("h1", ip_address("198.18.0.11"), {"type": "vxlan", "vtep_mac": "02:00:00:00:00:0b"})

    async def main() -> Any:
        return await startup._find_own_subnet(cluster, ClusterConfig(), record)  # type: ignore[arg-type]

    assert trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0)) == OWN
    assert cluster.calls == 4 and health.report().problems == ()
