"""deploy/grafana-overlayd.json queries only metrics the daemon really exports, and shows every
overlayd_ family. The exported names come from the daemon's own registry, not from a list here."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from overlayd.metrics import DaemonMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-overlayd.json"

# Words in PromQL that are neither metric names nor followed by "(".
_KEYWORDS = frozenset({"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or",
                       "unless", "offset", "inf", "nan"})


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (a small reader, enough for dashboards)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers (Grafana variables live there too)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # range selectors
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)  # label lists
    expr = re.sub(r"(?<![\w$])\d+(\.\d+)?([eE][+-]?\d+)?", " ", expr)  # numbers
    names = set()
    for match in re.finditer(r"(?<![\w$])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        if match.group() in _KEYWORDS or expr[match.end():].lstrip().startswith("("):
            continue  # a keyword, or a function or aggregation called here
        names.add(match.group())
    return names


def _panels(panels: list[dict]) -> Iterator[dict]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _queries(dashboard: dict) -> Iterator[tuple[str, str]]:
    """(where, PromQL) for every panel target and every query variable."""
    for panel in _panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            match = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert match, f"variable {variable['name']}: expected label_values(SELECTOR, LABEL), got {query!r}"
            yield f"variable {variable['name']!r}", match.group(1)


@pytest.fixture(scope="module")
def exported() -> frozenset[str]:
    metrics = DaemonMetrics()
    metrics.set_wireguard_drops_source(lambda: {"bad_mac": 0})  # present when the WireGuard backend runs
    metrics.set_policy_drops_source(lambda: ({("p", "ingress"): 0}, 0))  # present while policies are in force
    return metrics.exported_names()


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


@pytest.mark.parametrize("expr, names", [
    ('sum by (instance, le) (rate(overlayd_x_bucket{instance=~"$instance",a="}"}[$__rate_interval]))',
     {"overlayd_x_bucket"}),
    ("histogram_quantile(0.99, a_total) / on(instance) group_left(version) b > 1e3", {"a_total", "b"}),
    ("rate(process_cpu_seconds_total[5m]) * 60", {"process_cpu_seconds_total"}),
])
def test_the_reader_finds_metric_names(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


def test_every_query_names_an_exported_metric(dashboard: dict, exported: frozenset[str]) -> None:
    queries = list(_queries(dashboard))
    assert len(queries) >= 10
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= exported, f"{where}: {sorted(names - exported)} not exported by overlayd"


def test_every_overlayd_family_has_a_panel(dashboard: dict) -> None:
    metrics = DaemonMetrics()
    metrics.set_wireguard_drops_source(lambda: {"bad_mac": 0})
    metrics.set_policy_drops_source(lambda: ({("p", "ingress"): 0}, 0))
    used = set().union(*(metric_names(expr) for _, expr in _queries(dashboard)))
    for family in metrics.registry.collect():
        if family.name.startswith("overlayd_"):
            assert used & {sample.name for sample in family.samples}, f"no panel shows {family.name}"


def test_panels_have_unique_ids_and_a_prometheus_datasource(dashboard: dict) -> None:
    panels = list(_panels(dashboard["panels"]))
    assert len({p["id"] for p in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
