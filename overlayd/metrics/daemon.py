"""The metrics overlayd exports, in one object the daemon owns and updates.

Built on prometheus_client, each daemon with a private CollectorRegistry (tests run several
daemons in one process; the library's global REGISTRY would mix them). Names carry the
`overlayd_` prefix; counters end in `_total`, durations are seconds. The registry also
carries the library's `process_*` and `python_info` metrics. Label values come from the
fixed sets below, never from etcd data, so a hostile record cannot blow up the number of
time series.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from overlayd.dns.metrics import DnsMetrics

from overlayd import __version__

log = logging.getLogger(__name__)

# A `_created` series per counter and histogram doubles the series for a timestamp nobody
# graphs; the switch is process-wide, and this process is the daemon.
prometheus_client.disable_created_metrics()


class Reporter(Protocol):
    """overlayd.health.Reporter, restated so metrics does not import the daemon's modules."""

    def fail(self, component: str, message: str) -> None: ...
    def recover(self, component: str) -> None: ...


# Backend reconciles take milliseconds (netlink) to seconds (many peers, WireGuard via UAPI).
RECONCILE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# The 5 s removal goal sits in the middle; a minute covers a reconcile retried after an error.
EVENT_TO_KERNEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# overlayd_dropped_records_total{reason}
# Skipped while reading etcd (WatchBatch.rejected), by the RecordError's reason (overlayd.cluster.errors):
DROP_MALFORMED = "malformed"  # key or value did not parse; also any reason not listed here
DROP_BAD_SUBNET = "bad_subnet"  # not one of the cluster's host subnets
DROP_BAD_ENDPOINT = "bad_endpoint"  # public_ip is loopback, broadcast, multicast...
# ... or refused by the trust anchor, by overlayd.trust.errors.RejectReason (restated: no import of trust here).
DROP_UNVERIFIED = ("unsigned", "bad_cert", "untrusted_cert", "cert_not_yet_valid", "cert_expired",
                   "node_mismatch", "no_lease", "replayed", "bad_signature", "revoked")
DROP_BACKEND_MISMATCH = "backend_mismatch"  # record fine, but its backend data does not fit our backend
DROP_CONFLICT = "conflict"  # refused by peer screening: overlap, our IP/MAC/key, MAC shared by hosts
DROP_REASONS = (DROP_MALFORMED, DROP_BAD_SUBNET, DROP_BAD_ENDPOINT, *DROP_UNVERIFIED, DROP_BACKEND_MISMATCH,
                DROP_CONFLICT)

# overlayd_control_refusals_total{reason}
REFUSED_UID = "uid"  # SO_PEERCRED uid not allowed
REFUSED_OVERSIZED = "oversized"
REFUSED_MALFORMED = "malformed"  # not JSON, not an object, bad cmd/args
REFUSED_TIMEOUT = "timeout"  # request line not received in time
REFUSAL_REASONS = (REFUSED_UID, REFUSED_OVERSIZED, REFUSED_MALFORMED, REFUSED_TIMEOUT)

# overlayd_etcd_errors_total{operation}: the daemon's etcd-facing health components
# (config: reading the cluster config; lease: claiming and renewing; watch: listing and watching).
ETCD_OPERATIONS = ("config", "lease", "watch")

WireGuardDrops = Callable[[], Mapping[str, int] | None]
# ({(policy, direction): packets}, packets dropped for an unknown local address) or None (policy/running.py)
PolicyDrops = Callable[[], tuple[Mapping[tuple[str, str], int], int] | None]
PodCount = Callable[[], int | None]


class DaemonMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        self.build_info = Gauge("overlayd_build_info", "Always 1; the version label says which overlayd runs",
                                ("version",), registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.ready = Gauge("overlayd_ready", "1 once the host's pods and peers are programmed, else 0", registry=r)
        self.etcd_reachable = Gauge("overlayd_etcd_reachable", "1 if the last etcd call succeeded, else 0",
                                    registry=r)
        self.leases = Gauge("overlayd_leases", "Subnet leases in the cluster as last seen, own included", registry=r)
        self.peers = Gauge("overlayd_peers", "Peers the last reconcile programmed into the kernel", registry=r)
        self.refused_peers = Gauge("overlayd_peers_refused", "Peers the last reconcile refused to program",
                                   registry=r)
        self.pods = Gauge("overlayd_pods", "Pods on this host", registry=r)
        self.reconcile_runs = Counter("overlayd_reconcile_runs_total", "Backend reconciles, by result (ok, error)",
                                      ("result",), registry=r)
        self.reconcile_duration = Histogram("overlayd_reconcile_duration_seconds", "Duration of backend reconciles",
                                            buckets=RECONCILE_BUCKETS, registry=r)
        self.event_to_kernel = Histogram(
            "overlayd_event_to_kernel_seconds",
            "Time from an etcd watch event reaching this daemon to the kernel being programmed for it",
            buckets=EVENT_TO_KERNEL_BUCKETS, registry=r)
        self.etcd_errors = Counter("overlayd_etcd_errors_total", "Failed etcd operations, by operation",
                                   ("operation",), registry=r)
        self.dropped_records = Counter("overlayd_dropped_records_total",
                                       "Host records skipped and never programmed, by reason", ("reason",), registry=r)
        self.control_refusals = Counter("overlayd_control_refusals_total",
                                        "Control socket requests refused, by reason", ("reason",), registry=r)
        self.wireguard_handshakes = Counter("overlayd_wireguard_handshakes_total",
                                            "WireGuard handshakes completed with peers", registry=r)
        self.state_damaged = Counter("overlayd_state_files_damaged_total",
                                     "Local state files found damaged, set aside and rebuilt from kernel and etcd",
                                     registry=r)
        self.cni_attachments = Gauge("overlayd_cni_attachments", "CNI attachments (overlayd-cni) on this host",
                                     registry=r)
        self.services = Gauge("overlayd_services", "Services in the cluster as last seen", registry=r)
        self.service_endpoints = Gauge("overlayd_service_endpoints",
                                       "Endpoints programmed for service VIPs (one per service port and pod)", registry=r)
        self.registry_refused = Gauge("overlayd_registry_records_refused",
                                      "Pod and service records in etcd this host refuses (malformed)", registry=r)
        self.service_rule_updates = Counter("overlayd_service_rule_updates_total",
                                            "Rewrites of the service rules after a registry change", registry=r)
        self.policies = Gauge("overlayd_policies", "Network policies in force on this host", registry=r)
        self.policy_rule_updates = Counter("overlayd_policy_rule_updates_total",
                                           "Rewrites of the network policy rules after a policy or pod change",
                                           registry=r)
        self.dns = DnsMetrics(r)  # overlayd_dns_queries_total, overlayd_dns_dropped_total (dns/metrics.py)
        # Every known label value shows from the start: a rate() over a series that appears late misses its first step.
        for reason in DROP_REASONS:
            self.dropped_records.labels(reason=reason)
        for reason in REFUSAL_REASONS:
            self.control_refusals.labels(reason=reason)
        for operation in ETCD_OPERATIONS:
            self.etcd_errors.labels(operation=operation)
        for result in ("ok", "error"):
            self.reconcile_runs.labels(result=result)
        self._pods_source: PodCount | None = None
        self.pods.set_function(self._pod_count)
        self._wireguard = _WireGuardDrops()
        r.register(self._wireguard)
        self._policy_drops = _PolicyDrops()
        r.register(self._policy_drops)

    def count_dropped(self, rejected: Iterable[str]) -> None:
        """Count skipped etcd entries (WatchBatch.rejected) by the reason each carries."""
        for text in rejected:
            reason = getattr(text, "reason", DROP_MALFORMED)  # a cluster.errors.Rejection, or plain text
            self.dropped_records.labels(reason=reason if reason in DROP_REASONS else DROP_MALFORMED).inc()

    def count_refusal(self, reason: str) -> None:
        """One control socket request refused (REFUSAL_REASONS; anything else counts as malformed)."""
        self.control_refusals.labels(reason=reason if reason in REFUSAL_REASONS else REFUSED_MALFORMED).inc()

    def set_pods_source(self, source: PodCount | None) -> None:
        """source() returns the number of pods (None before start-up is done); it runs at every
        scrape, so it must read memory, not the kernel."""
        self._pods_source = source

    def set_wireguard_drops_source(self, source: WireGuardDrops | None) -> None:
        """source() returns the WireGuard engine's drop counts by reason (Device.drops), or None
        when unknown; it runs at every scrape, so it must return a cached snapshot, not do I/O."""
        self._wireguard.source = source

    def set_policy_drops_source(self, source: PolicyDrops | None) -> None:
        """source() returns the network policy drop counts as last read from the kernel (memory only)."""
        self._policy_drops.source = source

    def _pod_count(self) -> float:
        count = self._pods_source() if self._pods_source is not None else None
        return float(count or 0)

    def render(self) -> bytes:
        """The text exposition format (0.0.4) of everything in the registry."""
        return prometheus_client.generate_latest(self.registry)

    def exported_names(self) -> frozenset[str]:
        """Every sample name a scrape can show now (a dashboard may query only these)."""
        return frozenset(sample.name for family in self.registry.collect() for sample in family.samples)


class _SourcedCollector(Collector):
    """A collector whose values come from a callable set later (`source`), read at each scrape."""

    what = "counters"  # for the log line when the source fails

    def __init__(self) -> None:
        self.source: Callable[[], Any] | None = None

    def _read(self) -> Any:
        """The source's values; None while unset, when it knows nothing, or when it failed."""
        try:
            return self.source() if self.source is not None else None
        except Exception:  # a broken source must not cost the other metrics their scrape
            log.exception("reading the %s failed", self.what)
            return None


class _WireGuardDrops(_SourcedCollector):
    """overlayd_wireguard_drops_total{reason}, read from the engine's counters at each scrape;
    absent while no source is set or the source knows nothing."""

    what = "WireGuard drop counters"

    def collect(self) -> Iterator[Metric]:
        drops = self._read()
        if drops is None:
            return
        family = CounterMetricFamily("overlayd_wireguard_drops_total",
                                     "Packets the WireGuard engine dropped, by reason", labels=("reason",))
        for reason, count in sorted(drops.items()):
            family.add_metric((str(reason),), float(count))
        yield family


class _PolicyDrops(_SourcedCollector):
    """overlayd_policy_drops_total{policy, direction} and overlayd_policy_unknown_drops_total, from
    the named counters of our nftables table (read every few seconds, and before each rewrite).
    Policy names are label values: they come from `overlayctl policy apply`, an operator's
    command, and there is one series pair per policy in force."""

    what = "policy drop counters"

    def collect(self) -> Iterator[Metric]:
        drops = self._read()
        if drops is None:
            return
        per_policy, unknown = drops
        family = CounterMetricFamily("overlayd_policy_drops_total",
                                     "Packets network policy dropped at a pod the policy isolates (first packets of "
                                     "flows no rule allows, retries included), by policy and direction; a drop at a "
                                     "pod several policies isolate counts for each",
                                     labels=("policy", "direction"))
        for (policy, direction), count in sorted(per_policy.items()):
            family.add_metric((policy, direction), float(count))
        yield family
        yield CounterMetricFamily("overlayd_policy_unknown_drops_total",
                                  "Packets dropped because their pod address on this host was not yet known to the "
                                  "policy rules", value=float(unknown))


class CountingReporter:
    """A health Reporter (overlayd.health) that also counts: each failure of an etcd-facing
    component adds to overlayd_etcd_errors_total{operation=component}, and overlayd_etcd_reachable
    is 0 while any of them is failing. Everything is passed on to `inner`."""

    def __init__(self, inner: Reporter, metrics: DaemonMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self._failing: set[str] = set()

    def fail(self, component: str, message: str) -> None:
        if component in ETCD_OPERATIONS:
            self._metrics.etcd_errors.labels(operation=component).inc()
            self._failing.add(component)
            self._metrics.etcd_reachable.set(0)
        self._inner.fail(component, message)

    def recover(self, component: str) -> None:
        if component in ETCD_OPERATIONS:
            self._failing.discard(component)
            self._metrics.etcd_reachable.set(0 if self._failing else 1)
        self._inner.recover(component)


class HandshakeTracker:
    """Counts completed handshakes from successive peer snapshots (latest handshake time per key).

    A newer time than last seen is one handshake (two in one polling interval count once;
    WireGuard rekeys every two minutes, so poll well within that). The first snapshot only
    sets the baseline: handshakes made before this daemon started are not counted.
    """

    def __init__(self) -> None:
        self._latest: dict[bytes, float] = {}
        self._primed = False

    def update(self, latest: Mapping[bytes, float | None]) -> int:
        new = 0
        for key, when in latest.items():
            if when is None:
                continue
            before = self._latest.get(key)
            if self._primed and (before is None or when > before):
                new += 1
            self._latest[key] = when
        # Forget removed peers, so a peer that comes back counts again.
        for key in set(self._latest) - set(latest):
            del self._latest[key]
        self._primed = True
        return new
