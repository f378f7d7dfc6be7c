"""A small Prometheus metrics registry and its text exposition format (version 0.0.4).

No dependency: counters, gauges and histograms with fixed buckets, each with an optional
fixed set of label names, plus collector callbacks for numbers kept elsewhere (the
WireGuard engine's drop counts). Updates take a lock, so kernel worker threads may
update metrics too; rendering a scrape never raises for a bad collector.
"""

from __future__ import annotations

import bisect
import logging
import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Kind = Literal["counter", "gauge", "histogram", "untyped"]
LabelPairs = tuple[tuple[str, str], ...]

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


@dataclass(frozen=True)
class Sample:
    suffix: str  # "" or, for a histogram, "_bucket", "_sum", "_count"
    labels: LabelPairs
    value: float


@dataclass(frozen=True)
class MetricFamily:
    name: str
    kind: Kind
    help: str
    samples: tuple[Sample, ...]


Collector = Callable[[], Iterable[MetricFamily]]


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} is not [a-zA-Z_:][a-zA-Z0-9_:]*")


def _check_labelnames(labelnames: Sequence[str], reserved: tuple[str, ...] = ()) -> tuple[str, ...]:
    for label in labelnames:
        if not _LABEL_RE.match(label) or label.startswith("__") or label in reserved:
            raise ValueError(f"label name {label!r} is not allowed")
    if len(set(labelnames)) != len(labelnames):
        raise ValueError(f"label names repeat: {labelnames}")
    return tuple(labelnames)


def family(name: str, kind: Kind, help: str, values: Mapping[tuple[str, ...], float],
           labelnames: Sequence[str] = ()) -> MetricFamily:
    """A family from plain values keyed by label values (for collectors)."""
    _check_name(name)
    names = _check_labelnames(labelnames)
    samples = []
    for key, value in sorted(values.items()):
        if len(key) != len(names):
            raise ValueError(f"{name}: label values {key} do not match label names {names}")
        samples.append(Sample("", tuple(zip(names, key)), float(value)))
    return MetricFamily(name, kind, help, tuple(samples))


class _Metric:
    kind: Kind = "untyped"
    _reserved: tuple[str, ...] = ()

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        _check_name(name)
        self.name = name
        self.help = help
        self.labelnames = _check_labelnames(labelnames, self._reserved)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, object]) -> tuple[str, ...]:
        if len(labels) != len(self.labelnames) or set(labels) != set(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {tuple(labels)}")
        return tuple(str(labels[n]) for n in self.labelnames)

    def _pairs(self, key: tuple[str, ...]) -> LabelPairs:
        return tuple(zip(self.labelnames, key))

    def collect(self) -> MetricFamily:
        raise NotImplementedError


class _Valued(_Metric):
    """A counter or gauge: one number per label set (unlabelled ones start at 0)."""

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._values: dict[tuple[str, ...], float] = {} if self.labelnames else {(): 0.0}

    def value(self, **labels: object) -> float:
        key = self._key(labels)
        with self._lock:
            return self._values.get(key, 0.0)

    def _add(self, amount: float, labels: Mapping[str, object]) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def collect(self) -> MetricFamily:
        with self._lock:
            items = sorted(self._values.items())
        return MetricFamily(self.name, self.kind, self.help,
                            tuple(Sample("", self._pairs(k), v) for k, v in items))


class Counter(_Valued):
    kind: Kind = "counter"

    def inc(self, amount: float = 1.0, /, **labels: object) -> None:
        """Add amount (>= 0); inc(0, ...) makes a label set appear at 0."""
        if not amount >= 0:
            raise ValueError(f"{self.name}: a counter only goes up (got {amount})")
        self._add(amount, labels)


class Gauge(_Valued):
    kind: Kind = "gauge"

    def set(self, value: float, /, **labels: object) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def inc(self, amount: float = 1.0, /, **labels: object) -> None:
        self._add(amount, labels)

    def dec(self, amount: float = 1.0, /, **labels: object) -> None:
        self._add(-amount, labels)


class Histogram(_Metric):
    """Observations counted into fixed buckets (upper bounds, `le`), plus their sum and count."""

    kind: Kind = "histogram"
    _reserved = ("le",)

    def __init__(self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        bounds = [float(b) for b in buckets if not math.isinf(b)]
        if not bounds or any(math.isnan(b) for b in bounds) or any(a >= b for a, b in zip(bounds, bounds[1:])):
            raise ValueError(f"{name}: buckets must be increasing finite numbers, got {buckets}")
        self.buckets = tuple(bounds)
        # Per label set: a count per bucket (the last one is +Inf, not cumulative) and the sum.
        self._counts: dict[tuple[str, ...], list[int]] = {}
        self._sums: dict[tuple[str, ...], float] = {}
        if not self.labelnames:
            self._counts[()] = [0] * (len(self.buckets) + 1)
            self._sums[()] = 0.0

    def observe(self, value: float, /, **labels: object) -> None:
        if math.isnan(value):
            raise ValueError(f"{self.name}: cannot observe NaN")
        key = self._key(labels)
        index = bisect.bisect_left(self.buckets, value)  # first bound >= value: `le` is inclusive
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            counts[index] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def count(self, **labels: object) -> int:
        key = self._key(labels)
        with self._lock:
            return sum(self._counts.get(key, ()))

    def collect(self) -> MetricFamily:
        with self._lock:
            items = sorted((k, list(c), self._sums[k]) for k, c in self._counts.items())
        samples: list[Sample] = []
        for key, counts, total in items:
            pairs = self._pairs(key)
            running = 0
            for bound, count in zip((*self.buckets, math.inf), counts):
                running += count
                samples.append(Sample("_bucket", (*pairs, ("le", format_value(bound))), running))
            samples.append(Sample("_sum", pairs, total))
            samples.append(Sample("_count", pairs, running))
        return MetricFamily(self.name, self.kind, self.help, tuple(samples))


class Registry:
    """The metrics of one process, rendered together for a scrape."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}
        self._collectors: list[Collector] = []
        self._lock = threading.Lock()

    def _register(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._register(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._register(metric)
        return metric

    def histogram(self, name: str, help: str, buckets: Sequence[float], labelnames: Sequence[str] = ()) -> Histogram:
        metric = Histogram(name, help, buckets, labelnames)
        self._register(metric)
        return metric

    def add_collector(self, collector: Collector) -> None:
        """collector() is called at every scrape; it must be quick and must not block."""
        with self._lock:
            self._collectors.append(collector)

    def collect(self) -> list[MetricFamily]:
        with self._lock:
            metrics, collectors = list(self._metrics.values()), list(self._collectors)
        families = [m.collect() for m in metrics]
        seen = {f.name for f in families}
        for collector in collectors:
            try:
                extra = list(collector())
            except Exception:  # a broken source must not cost the other metrics their scrape
                log.exception("metrics collector %r failed", collector)
                continue
            for fam in extra:
                if fam.name in seen:
                    log.warning("metrics collector %r repeats metric %s; skipped", collector, fam.name)
                    continue
                seen.add(fam.name)
                families.append(fam)
        return families

    def render(self) -> str:
        return render(self.collect())


# Text exposition format 0.0.4.


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def format_value(value: float) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render(families: Iterable[MetricFamily]) -> str:
    lines = []
    for fam in families:
        lines.append(f"# HELP {fam.name} {escape_help(fam.help)}")
        lines.append(f"# TYPE {fam.name} {fam.kind}")
        for sample in fam.samples:
            labels = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in sample.labels)
            lines.append(f"{fam.name}{sample.suffix}{{{labels}}} {format_value(sample.value)}" if labels
                         else f"{fam.name}{sample.suffix} {format_value(sample.value)}")
    return "\n".join(lines) + "\n" if lines else ""
