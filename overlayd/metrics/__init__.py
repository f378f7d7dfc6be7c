"""Prometheus metrics: a dependency-free registry (registry.py), the HTTP endpoint (http.py)
and the metric set the daemon updates (daemon.py)."""

from overlayd.metrics.daemon import CountingReporter, DaemonMetrics, HandshakeTracker
from overlayd.metrics.http import DEFAULT_ADDRESS, parse_listen_address, serve_metrics
from overlayd.metrics.registry import Counter, Gauge, Histogram, MetricFamily, Registry, Sample, family

__all__ = [
    "DEFAULT_ADDRESS",
    "Counter",
    "CountingReporter",
    "DaemonMetrics",
    "Gauge",
    "HandshakeTracker",
    "Histogram",
    "MetricFamily",
    "Registry",
    "Sample",
    "family",
    "parse_listen_address",
    "serve_metrics",
]
