"""The daemon's health as a pure model: jobs report failures and recoveries, status reads it.

Each long-lived job (lease keeping, the lease watch, kernel reconciles...) reports under
its own component name, so one job recovering never hides another's failure. Health is
"starting" until the daemon is ready, then "degraded" while any component has a problem,
else "ok". `last_error` keeps the most recent error text (with its UTC time) even after
recovery, so an operator can see what went wrong last.

The logging policy lives here too (LoggingReporter): a failing component logs its first
failure and its recovery; the retries in between are counted, not logged, so a daemon that
waits out a long etcd outage writes two lines, not one per retry.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, replace
from typing import Literal, Protocol

Health = Literal["starting", "ok", "degraded"]


@dataclass(frozen=True)
class Problem:
    component: str
    message: str  # the latest failure's text
    since: float  # clock time of the first failure in this run of failures
    failures: int  # failures in a row, the first included

    def describe(self, now: float) -> str:
        """One line for `overlayctl status`: "lease: <error> (for 12.3s, 5 failures)"."""
        failures = f"{self.failures} failure" + ("s" if self.failures != 1 else "")
        return f"{self.component}: {self.message} (for {max(0.0, now - self.since):.1f}s, {failures})"


@dataclass(frozen=True)
class HealthReport:
    health: Health
    problems: tuple[Problem, ...]  # ordered by when they began
    last_error: str | None


class HealthModel:
    """Problems by component plus readiness; clocks are injected so tests can script time."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self._problems: dict[str, Problem] = {}
        self._ready = False
        self.last_error: str | None = None

    @property
    def ready(self) -> bool:
        return self._ready

    def set_ready(self) -> None:
        self._ready = True

    def fail(self, component: str, message: str) -> Problem | None:
        """Record a failure; returns the new Problem when this starts one (worth logging), else None."""
        self._stamp(f"{component}: {message}")
        current = self._problems.get(component)
        if current is None:
            problem = Problem(component, message, self._clock(), 1)
            self._problems[component] = problem
            return problem
        self._problems[component] = replace(current, message=message, failures=current.failures + 1)
        return None

    def recover(self, component: str) -> Problem | None:
        """The component works again; returns the Problem that ended (worth logging), if any."""
        return self._problems.pop(component, None)

    def note(self, message: str) -> None:
        """A one-off error that leaves health alone (e.g. a record skipped): last_error only."""
        self._stamp(message)

    def problem(self, component: str) -> Problem | None:
        return self._problems.get(component)

    def report(self) -> HealthReport:
        problems = tuple(sorted(self._problems.values(), key=lambda p: p.since))
        health: Health = "starting" if not self._ready else "degraded" if problems else "ok"
        return HealthReport(health, problems, self.last_error)

    def unready(self) -> list[str]:
        """Why this host is not ready to carry traffic (for /readyz): empty only when health is "ok"."""
        report = self.report()
        if report.health == "starting":
            return ["starting: start-up has not finished"]
        now = self._clock()
        return [problem.describe(now) for problem in report.problems]

    def now(self) -> float:
        return self._clock()

    def _stamp(self, message: str) -> None:
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._wall_clock()))
        self.last_error = f"{when} {message}"


class Reporter(Protocol):
    """Where a long-lived job reports how it fares (the cluster layer takes one)."""

    def fail(self, component: str, message: str) -> None: ...
    def recover(self, component: str) -> None: ...


class LoggingReporter:
    """A Reporter over a HealthModel that logs the first failure and the recovery only.

    Components in `loud` log their failures at error level: they need an operator.
    """

    def __init__(self, logger: logging.Logger, model: HealthModel | None = None, *,
                 loud: Collection[str] = ()) -> None:
        self.log = logger
        self.model = model or HealthModel()
        self.loud = frozenset(loud)

    def fail(self, component: str, message: str) -> None:
        started = self.model.fail(component, message)
        if started is not None:
            level = logging.ERROR if component in self.loud else logging.WARNING
            self.log.log(level, "%s: %s (retrying quietly until it recovers)", component, message)
        else:
            self.log.debug("%s: still failing: %s", component, message)

    def recover(self, component: str) -> None:
        ended = self.model.recover(component)
        if ended is not None:
            self.log.info("%s: recovered after %d failure(s) over %.1fs", component, ended.failures,
                          self.model.now() - ended.since)
