"""The metrics registry, its text exposition (parsed back), and the /metrics HTTP endpoint."""

from __future__ import annotations

import math
import re

import pytest
import trio

from overlayd.errors import ConfigError
from overlayd.backend.wireguard import drops_from_engine_counters
from overlayd.metrics import (
    CountingReporter,
    DaemonMetrics,
    HandshakeTracker,
    Registry,
    family,
    parse_listen_address,
    serve_metrics,
)
from overlayd.metrics.http import MAX_REQUEST_HEAD

# --- a strict reader of the 0.0.4 text format, to check what we write ---------

_SAMPLE_RE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)\Z")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|\Z)')


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "\\": "\\", '"': '"'}[m.group(1)], text)


def _labels(text: str) -> tuple[tuple[str, str], ...]:
    pairs, pos = [], 0
    while pos < len(text):
        match = _LABEL_RE.match(text, pos)
        assert match, f"bad labels at {text[pos:]!r}"
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    return tuple(pairs)


def parse_exposition(text: str) -> dict[str, dict]:
    """{family: {"type", "help", "samples": {(name, labels): value}}}; asserts the format's rules."""
    assert text.endswith("\n")
    families: dict[str, dict] = {}
    current = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in families, f"{name} appears twice"
            current = families[name] = {"help": _unescape(help_text), "samples": {}}
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert current is families.get(name) and "type" not in current and not current["samples"]
            assert kind in ("counter", "gauge", "histogram", "untyped")
            current["type"] = kind
        else:
            match = _SAMPLE_RE.match(line)
            assert match, f"bad sample line {line!r}"
            name, _, labels, value = match.groups()
            assert current is not None and name.startswith(next(k for k, v in families.items() if v is current))
            key = (name, _labels(labels or ""))
            assert key not in current["samples"], f"duplicate sample {key}"
            current["samples"][key] = float(value)
    return families


# --- registry and exposition ---------------------------------------------------


def test_counters_gauges_and_labels_parse_back() -> None:
    r = Registry()
    requests = r.counter("t_requests_total", "Requests served", ("method", "code"))
    temperature = r.gauge("t_temperature", "Degrees")
    requests.inc(method="GET", code="200")
    requests.inc(2.5, method="GET", code="200")
    requests.inc(method="POST", code="500")
    temperature.set(-3.25)
    temperature.inc(1)
    parsed = parse_exposition(r.render())
    assert parsed["t_requests_total"]["type"] == "counter"
    assert parsed["t_requests_total"]["help"] == "Requests served"
    assert parsed["t_requests_total"]["samples"] == {
        ("t_requests_total", (("method", "GET"), ("code", "200"))): 3.5,
        ("t_requests_total", (("method", "POST"), ("code", "500"))): 1.0,
    }
    assert parsed["t_temperature"]["samples"] == {("t_temperature", ()): -2.25}
    assert requests.value(method="GET", code="200") == 3.5


def test_unlabelled_metrics_start_at_zero_and_labelled_ones_empty() -> None:
    r = Registry()
    r.counter("t_a_total", "a")
    r.counter("t_b_total", "b", ("x",))
    parsed = parse_exposition(r.render())
    assert parsed["t_a_total"]["samples"] == {("t_a_total", ()): 0.0}
    assert parsed["t_b_total"]["samples"] == {}


def test_label_values_and_help_are_escaped() -> None:
    r = Registry()
    nasty = 'back\\slash "quoted"\nnew line, comma=} {'
    c = r.counter("t_escape_total", 'help with \\ and\nnewline "quotes" stay', ("v",))
    c.inc(v=nasty)
    text = r.render()
    assert "\nnew line" not in text  # no raw newline inside a sample or help line
    parsed = parse_exposition(text)
    assert parsed["t_escape_total"]["help"] == 'help with \\ and\nnewline "quotes" stay'
    assert parsed["t_escape_total"]["samples"] == {("t_escape_total", (("v", nasty),)): 1.0}


def test_histogram_buckets_are_cumulative_and_le_is_inclusive() -> None:
    r = Registry()
    h = r.histogram("t_latency_seconds", "Latency", (0.1, 1, 10), ("path",))
    for value in (0.05, 0.1, 0.5, 1.0, 3, 100):
        h.observe(value, path="/x")
    samples = parse_exposition(r.render())["t_latency_seconds"]["samples"]
    bucket = {le: samples[("t_latency_seconds_bucket", (("path", "/x"), ("le", le)))]
              for le in ("0.1", "1", "10", "+Inf")}
    assert bucket == {"0.1": 2, "1": 4, "10": 5, "+Inf": 6}  # 0.1 and 1.0 land in their own bucket
    assert samples[("t_latency_seconds_count", (("path", "/x"),))] == 6
    assert samples[("t_latency_seconds_sum", (("path", "/x"),))] == pytest.approx(104.65)
    assert h.count(path="/x") == 6


def test_unlabelled_histogram_shows_empty_buckets() -> None:
    r = Registry()
    r.histogram("t_h", "h", (1, 2))
    samples = parse_exposition(r.render())["t_h"]["samples"]
    assert samples[("t_h_bucket", (("le", "+Inf"),))] == 0
    assert samples[("t_h_count", ())] == 0


def test_special_values_render_in_prometheus_spelling() -> None:
    r = Registry()
    g = r.gauge("t_g", "g", ("k",))
    g.set(math.inf, k="inf")
    g.set(-math.inf, k="ninf")
    g.set(math.nan, k="nan")
    g.set(1e-7, k="small")
    g.set(2**60, k="big")
    text = r.render()
    assert 't_g{k="inf"} +Inf' in text and 't_g{k="ninf"} -Inf' in text and 't_g{k="nan"} NaN' in text
    samples = parse_exposition(text)["t_g"]["samples"]
    assert samples[("t_g", (("k", "small"),))] == 1e-7
    assert samples[("t_g", (("k", "big"),))] == 2.0**60


@pytest.mark.parametrize("make", [
    lambda r: r.counter("bad name", "x"),
    lambda r: r.counter("t_x", "x", ("__reserved",)),
    lambda r: r.counter("t_x", "x", ("a", "a")),
    lambda r: r.histogram("t_x", "x", ()),
    lambda r: r.histogram("t_x", "x", (2, 1)),
    lambda r: r.histogram("t_x", "x", (1,), ("le",)),
])
def test_bad_definitions_are_refused(make) -> None:
    with pytest.raises(ValueError):
        make(Registry())


def test_bad_updates_are_refused() -> None:
    r = Registry()
    c = r.counter("t_c_total", "c", ("a",))
    with pytest.raises(ValueError):
        c.inc(-1, a="x")
    with pytest.raises(ValueError):
        c.inc(b="x")
    with pytest.raises(ValueError):
        c.inc()
    with pytest.raises(ValueError):
        r.histogram("t_h", "h", (1,)).observe(math.nan)
    with pytest.raises(ValueError):
        r.gauge("t_c_total", "same name twice")


def test_collectors_add_families_and_a_broken_one_is_skipped() -> None:
    r = Registry()
    r.counter("t_own_total", "own")
    r.add_collector(lambda: [family("t_ext_total", "counter", "external", {("a",): 2, ("b",): 5}, ("k",))])
    r.add_collector(lambda: 1 / 0)
    r.add_collector(lambda: [family("t_own_total", "counter", "clash", {(): 9})])
    parsed = parse_exposition(r.render())
    assert parsed["t_ext_total"]["samples"] == {("t_ext_total", (("k", "a"),)): 2, ("t_ext_total", (("k", "b"),)): 5}
    assert parsed["t_own_total"]["samples"] == {("t_own_total", ()): 0}


# --- the daemon's metric set ------------------------------------------------------


def test_daemon_metrics_render_every_documented_family() -> None:
    m = DaemonMetrics()
    m.reconcile_runs.inc(result="ok")
    m.reconcile_duration.observe(0.02)
    m.event_to_kernel.observe(0.3)
    m.dropped_records.inc(reason="malformed")
    m.control_refusals.inc(reason="uid")
    m.etcd_errors.inc(operation="watch")
    m.wireguard_handshakes.inc()
    m.set_wireguard_drops_source(lambda: drops_from_engine_counters({"drop_bad_mac": 4, "udp_sends": 9}))
    parsed = parse_exposition(m.render())
    expected = {
        "overlayd_ready": "gauge", "overlayd_etcd_reachable": "gauge", "overlayd_leases": "gauge",
        "overlayd_peers": "gauge", "overlayd_peers_refused": "gauge", "overlayd_reconcile_runs_total": "counter",
        "overlayd_reconcile_duration_seconds": "histogram", "overlayd_event_to_kernel_seconds": "histogram",
        "overlayd_etcd_errors_total": "counter", "overlayd_dropped_records_total": "counter",
        "overlayd_control_refusals_total": "counter", "overlayd_wireguard_handshakes_total": "counter",
        "overlayd_wireguard_drops_total": "counter", "overlayd_state_files_damaged_total": "counter",
        "overlayd_cni_attachments": "gauge",
    }
    assert {name: f["type"] for name, f in parsed.items()} == expected
    assert parsed["overlayd_wireguard_drops_total"]["samples"] == {
        ("overlayd_wireguard_drops_total", (("reason", "bad_mac"),)): 4}
    drops = parsed["overlayd_dropped_records_total"]["samples"]
    assert drops[("overlayd_dropped_records_total", (("reason", "malformed"),))] == 1
    assert drops[("overlayd_dropped_records_total", (("reason", "conflict"),))] == 0  # present from the start


def test_wireguard_drops_are_absent_without_a_source() -> None:
    m = DaemonMetrics()
    assert "overlayd_wireguard_drops_total" not in parse_exposition(m.render())
    m.set_wireguard_drops_source(lambda: None)
    assert "overlayd_wireguard_drops_total" not in parse_exposition(m.render())


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
    assert m.etcd_reachable.value() == 1
    reporter.fail("watch", "down")
    reporter.fail("watch", "still down")
    reporter.fail("lease", "renew failed")
    reporter.fail("kernel", "netlink")  # not etcd: passed on, not counted
    assert m.etcd_errors.value(operation="watch") == 2 and m.etcd_errors.value(operation="lease") == 1
    reporter.recover("watch")
    assert m.etcd_reachable.value() == 0  # the lease still fails
    reporter.recover("lease")
    assert m.etcd_reachable.value() == 1
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

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_metrics, m.registry, "127.0.0.1", 0)
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
