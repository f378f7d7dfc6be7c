"""The daemon's health model and its quiet logging policy (scripted clocks, no daemon)."""

from __future__ import annotations

import logging

import pytest

from overlayd.health import HealthModel, LoggingReporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def model(clock: Clock) -> HealthModel:
    return HealthModel(clock=clock, wall_clock=lambda: 1_700_000_000.0)


def test_starting_until_ready_then_ok(model: HealthModel) -> None:
    assert model.report().health == "starting"
    model.set_ready()
    report = model.report()
    assert (report.health, report.problems, report.last_error) == ("ok", (), None)


def test_a_problem_degrades_until_its_own_component_recovers(model: HealthModel, clock: Clock) -> None:
    model.set_ready()
    assert model.fail("lease", "etcd unreachable") is not None  # the first failure starts a problem
    clock.now += 3
    assert model.fail("watch", "watch broke") is not None
    assert model.fail("lease", "etcd still unreachable") is None  # counted, not new
    report = model.report()
    assert report.health == "degraded"
    assert [(p.component, p.failures, p.message) for p in report.problems] == [
        ("lease", 2, "etcd still unreachable"), ("watch", 1, "watch broke")]
    ended = model.recover("lease")
    assert ended is not None and ended.failures == 2 and ended.since == 100.0
    assert model.report().health == "degraded"  # the watch still fails: one recovery hides nothing
    assert model.recover("lease") is None
    model.recover("watch")
    assert model.report().health == "ok"


def test_last_error_is_stamped_and_outlives_recovery(model: HealthModel) -> None:
    model.set_ready()
    model.fail("lease", "etcd unreachable")
    model.recover("lease")
    report = model.report()
    assert report.health == "ok"
    assert report.last_error == "2023-11-14T22:13:20Z lease: etcd unreachable"


def test_a_note_sets_last_error_but_not_health(model: HealthModel) -> None:
    model.set_ready()
    model.note("skipped etcd record: bad vtep_mac")
    report = model.report()
    assert report.health == "ok" and report.last_error is not None and "bad vtep_mac" in report.last_error


def test_problem_reports_how_long_it_lasts(model: HealthModel, clock: Clock) -> None:
    model.fail("kernel", "reconcile failed")
    clock.now += 12.34
    problem = model.problem("kernel")
    assert problem is not None
    assert problem.describe(clock.now) == "kernel: reconcile failed (for 12.3s, 1 failure)"


def test_logging_reporter_logs_the_first_failure_and_the_recovery_only(
    model: HealthModel, clock: Clock, caplog: pytest.LogCaptureFixture,
) -> None:
    log = logging.getLogger("test.health")
    reporter = LoggingReporter(log, model, loud=("subnet",))
    with caplog.at_level(logging.INFO, logger="test.health"):
        for _ in range(50):  # a long outage: one retry a second
            reporter.fail("lease", "etcd unreachable")
            clock.now += 1
        reporter.recover("lease")
        reporter.recover("lease")  # nothing to recover: silent
        reporter.fail("subnet", "held by another host")
    records = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert records == [
        ("WARNING", "lease: etcd unreachable (retrying quietly until it recovers)"),
        ("INFO", "lease: recovered after 50 failure(s) over 50.0s"),
        ("ERROR", "subnet: held by another host (retrying quietly until it recovers)"),
    ]
    assert model.problem("subnet") is not None and model.problem("lease") is None
