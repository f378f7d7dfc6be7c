"""The daemon's metric set (read back with prometheus_client's own parser), and the metrics
port: /metrics, /healthz and /readyz on a real socket."""

from __future__ import annotations

import re

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from overlayd import __version__
from overlayd.errors import ConfigError
from overlayd.backend.wireguard import drops_from_engine_counters
from overlayd.health import HealthModel
from overlayd.metrics import CountingReporter, DaemonMetrics, HandshakeTracker, parse_listen_address, serve_metrics
from overlayd.metrics.http import MAX_REQUEST_HEAD


def parse_exposition(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": {(sample name, sorted labels): value}}}"""
    return {f.name: {"type": f.type, "help": f.documentation,
                     "samples": {(s.name, tuple(sorted(s.labels.items()))): s.value for s in f.samples}}
            for f in text_string_to_metric_families(text)}


def _value(m: DaemonMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


# --- the daemon's metric set ------------------------------------------------------


def test_daemon_metrics_render_every_documented_family() -> None:
    m = DaemonMetrics()
    m.reconcile_runs.labels(result="ok").inc()
    m.reconcile_duration.observe(0.02)
    m.event_to_kernel.observe(0.3)
    m.count_dropped(["plain text"])
    m.count_refusal("uid")
    m.etcd_errors.labels(operation="watch").inc()
    m.wireguard_handshakes.inc()
    m.set_pods_source(lambda: 4)
    m.set_wireguard_drops_source(lambda: drops_from_engine_counters({"drop_bad_mac": 4, "udp_sends": 9}))
    m.set_policy_drops_source(lambda: ({("web-only", "ingress"): 3}, 1))
    parsed = parse_exposition(m.render().decode())
    # The parser names counter families without `_total`; their samples keep it.
    expected = {
        "overlayd_build_info": "gauge", "overlayd_ready": "gauge", "overlayd_etcd_reachable": "gauge",
        "overlayd_leases": "gauge", "overlayd_peers": "gauge", "overlayd_peers_refused": "gauge",
        "overlayd_pods": "gauge", "overlayd_reconcile_runs": "counter",
        "overlayd_reconcile_duration_seconds": "histogram", "overlayd_event_to_kernel_seconds": "histogram",
        "overlayd_etcd_errors": "counter", "overlayd_dropped_records": "counter",
        "overlayd_control_refusals": "counter", "overlayd_wireguard_handshakes": "counter",
        "overlayd_wireguard_drops": "counter", "overlayd_state_files_damaged": "counter",
        "overlayd_cni_attachments": "gauge", "overlayd_services": "gauge", "overlayd_service_endpoints": "gauge",
        "overlayd_registry_records_refused": "gauge", "overlayd_service_rule_updates": "counter",
        "overlayd_policies": "gauge", "overlayd_policy_rule_updates": "counter",
        "overlayd_policy_drops": "counter", "overlayd_policy_unknown_drops": "counter",
        "overlayd_dns_queries": "counter", "overlayd_dns_dropped": "counter",
    }
    assert {name: f["type"] for name, f in parsed.items() if name.startswith("overlayd_")} == expected
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= set(parsed)
    assert not [name for name in parsed if name.endswith("_created")]  # no _created series
    assert parsed["overlayd_build_info"]["samples"] == {("overlayd_build_info", (("version", __version__),)): 1}
    assert parsed["overlayd_pods"]["samples"] == {("overlayd_pods", ()): 4}
    assert parsed["overlayd_wireguard_drops"]["samples"] == {
        ("overlayd_wireguard_drops_total", (("reason", "bad_mac"),)): 4}
    drops = parsed["overlayd_dropped_records"]["samples"]
    assert drops[("overlayd_dropped_records_total", (("reason", "malformed"),))] == 1
    assert drops[("overlayd_dropped_records_total", (("reason", "conflict"),))] == 0  # present from the start
    refusals = parsed["overlayd_control_refusals"]["samples"]
    assert refusals == {("overlayd_control_refusals_total", (("reason", r),)): float(r == "uid")
                        for r in ("uid", "oversized", "malformed", "timeout")}


def test_registries_are_private_to_each_daemon() -> None:
    a, b = DaemonMetrics(), DaemonMetrics()  # a shared registry would refuse the second set of names
    a.peers.set(3)
    assert (_value(a, "overlayd_peers"), _value(b, "overlayd_peers")) == (3, 0)


def test_unknown_refusal_reasons_count_as_malformed() -> None:
    m = DaemonMetrics()
    m.count_refusal("no-such-reason")
    assert _value(m, "overlayd_control_refusals_total", reason="malformed") == 1
    assert _value(m, "overlayd_control_refusals_total", reason="no-such-reason") is None


def test_pods_read_zero_before_start_up_has_a_pod_store() -> None:
    m = DaemonMetrics()
    assert _value(m, "overlayd_pods") == 0
    m.set_pods_source(lambda: None)
    assert _value(m, "overlayd_pods") == 0


def test_wireguard_drops_are_absent_without_a_source_and_a_broken_source_costs_nothing_else() -> None:
    m = DaemonMetrics()
    assert "overlayd_wireguard_drops" not in parse_exposition(m.render().decode())
    m.set_wireguard_drops_source(lambda: None)
    assert "overlayd_wireguard_drops" not in parse_exposition(m.render().decode())
    m.set_wireguard_drops_source(lambda: 1 / 0)
    parsed = parse_exposition(m.render().decode())
    assert "overlayd_wireguard_drops" not in parsed and "overlayd_peers" in parsed


def test_counting_reporter_counts_etcd_failures_and_passes_everything_on() -> None:
    calls: list[tuple[str, str]] = []

    class Inner:
        def fail(self, component: str, message: str) -> None:
            calls.append(("fail", component))

        def recover(self, component: str) -> None:
            calls.append(("recover", component))

    m = DaemonMetrics()
    reporter = CountingReporter(Inner(), m)
    reporter.recover("watch")
    assert _value(m, "overlayd_etcd_reachable") == 1
    reporter.fail("watch", "down")
    reporter.fail("watch", "still down")
    reporter.fail("lease", "renew failed")
    reporter.fail("kernel", "netlink")  # not etcd: passed on, not counted
    assert _value(m, "overlayd_etcd_errors_total", operation="watch") == 2
    assert _value(m, "overlayd_etcd_errors_total", operation="lease") == 1
    reporter.recover("watch")
    assert _value(m, "overlayd_etcd_reachable") == 0  # the lease still fails
    reporter.recover("lease")
    assert _value(m, "overlayd_etcd_reachable") == 1
    assert calls[:2] == [("recover", "watch"), ("fail", "watch")] and ("fail", "kernel") in calls


def test_handshake_tracker_counts_newer_times_after_the_baseline() -> None:
    t = HandshakeTracker()
    assert t.update({b"a": 100.0, b"b": None}) == 0  # baseline: made before we looked
    assert t.update({b"a": 100.0, b"b": None}) == 0
    assert t.update({b"a": 220.0, b"b": 230.0}) == 2
    assert t.update({b"a": 220.0, b"b": 230.0, b"c": 240.0}) == 1  # a new peer's first handshake
    assert t.update({b"a": 340.0}) == 1
    assert t.update({b"a": 340.0, b"b": 350.0}) == 1  # b left and came back


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:9469", ("127.0.0.1", 9469)),
    ("[::1]:9100", ("::1", 9100)),
    ("localhost:1", ("localhost", 1)),
])
def test_listen_address_parses(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize("text", ["", "9469", ":9469", "127.0.0.1:", "127.0.0.1:0", "127.0.0.1:65536",
                                  "::1:9469", "127.0.0.1:x"])
def test_bad_listen_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_listen_address(text)


# --- the HTTP endpoint on a real socket --------------------------------------------


async def _exchange(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        if request:
            await stream.send_all(request)
        else:
            await stream.send_eof()
        reply = bytearray()
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                reply += chunk
        return bytes(reply)


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_http_endpoint_serves_metrics_and_survives_bad_requests() -> None:
    m = DaemonMetrics()
    m.peers.set(3)
    health = HealthModel()

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, m.render, health.unready, "127.0.0.1", 0)
            ok = await _exchange(port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            head, _, body = ok.partition(b"\r\n\r\n")
            assert _status(ok) == 200
            assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
            assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) == len(body)
            assert parse_exposition(body.decode())["overlayd_peers"]["samples"] == {("overlayd_peers", ()): 3}

            head_only = await _exchange(port, b"HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
            assert _status(head_only) == 200 and head_only.endswith(b"\r\n\r\n")
            assert _status(await _exchange(port, b"GET / HTTP/1.1\r\n\r\n")) == 404
            assert _status(await _exchange(port, b"GET /metricsx HTTP/1.1\r\n\r\n")) == 404
            assert _status(await _exchange(port, b"POST /metrics HTTP/1.1\r\n\r\n")) == 405
            assert _status(await _exchange(port, b"\xff\xfe garbage\r\n\r\n")) == 400
            assert _status(await _exchange(port, b"GET /metrics\r\n\r\n")) == 400
            assert _status(await _exchange(port, b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_REQUEST_HEAD)) == 431
            assert await _exchange(port, b"") == b""  # a client that says nothing and hangs up
            again = await _exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            assert _status(again) == 200
            nursery.cancel_scope.cancel()

    trio.run(main)


def test_healthz_answers_while_readyz_follows_health() -> None:
    clock = [100.0]
    health = HealthModel(clock=lambda: clock[0])

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, DaemonMetrics().render, health.unready, "127.0.0.1", 0)

            async def get(path: str) -> tuple[int, bytes]:
                reply = await _exchange(port, f"GET {path} HTTP/1.1\r\n\r\n".encode())
                return _status(reply), reply.partition(b"\r\n\r\n")[2]

            assert await get("/healthz") == (200, b"ok\n")
            assert await get("/readyz") == (503, b"starting: start-up has not finished\n")
            health.set_ready()
            assert await get("/readyz") == (200, b"ok\n")
            health.fail("lease", "etcd unreachable")
            clock[0] += 2.5
            assert await get("/readyz") == (503, b"lease: etcd unreachable (for 2.5s, 1 failure)\n")
            assert await get("/healthz") == (200, b"ok\n")  # degraded is not dead
            health.recover("lease")
            assert await get("/readyz?verbose=1") == (200, b"ok\n")
            nursery.cancel_scope.cancel()

    trio.run(main)
