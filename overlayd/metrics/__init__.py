"""Prometheus metrics: the metric set the daemon updates, on a private prometheus_client
registry (daemon.py), and the metrics port with /metrics, /healthz and /readyz (http.py)."""

from overlayd.metrics.daemon import CountingReporter, DaemonMetrics, HandshakeTracker
from overlayd.metrics.http import DEFAULT_ADDRESS, parse_listen_address, serve_metrics

__all__ = [
    "DEFAULT_ADDRESS",
    "CountingReporter",
    "DaemonMetrics",
    "HandshakeTracker",
    "parse_listen_address",
    "serve_metrics",
]
