"""The systemd watchdog and status task on trio's mock clock (sdwatchdog.py)."""

from __future__ import annotations

import os

import trio
import trio.testing

from overlayd.sdwatchdog import inform_systemd, watchdog_interval


def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process_only() -> None:
    pid = os.getpid()
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}, pid) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid)}, pid) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(pid + 1)}, pid) is None
    assert watchdog_interval({}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "x"}, pid) is None
    assert watchdog_interval({"WATCHDOG_USEC": "0"}, pid) is None


def run_for(seconds: float, environ: dict[str, str], status: list[str]) -> list[tuple[float, str]]:
    """(time, message) sent over `seconds`; status[0] is the status line, changed by the test."""
    sent: list[tuple[float, str]] = []

    def notify(message: str) -> bool:
        sent.append((trio.current_time(), message))
        return True

    async def main() -> None:
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(lambda: inform_systemd(lambda: status[0], environ=environ, notify=notify))
                await trio.sleep(3.5)
                status[0] = "subnet 10.244.1.0/24, 2 peers, 0 pods, health ok"

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return sent


def test_pings_at_half_the_watchdog_period_and_status_on_change() -> None:
    status = ["subnet 10.244.1.0/24, 1 peers, 0 pods, health ok"]
    sent = run_for(10.0, {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000"}, status)
    pings = [t for t, m in sent if m == "WATCHDOG=1"]
    assert pings == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert [(t, m) for t, m in sent if m.startswith("STATUS=")] == [
        (0.0, "STATUS=subnet 10.244.1.0/24, 1 peers, 0 pods, health ok"),
        (4.0, "STATUS=subnet 10.244.1.0/24, 2 peers, 0 pods, health ok")]


def test_no_watchdog_means_status_only_and_no_systemd_means_nothing() -> None:
    status = ["s"]
    assert all(not m.startswith("WATCHDOG") for _, m in run_for(10.0, {"NOTIFY_SOCKET": "/x"}, status))
    assert run_for(10.0, {"WATCHDOG_USEC": "4000000"}, ["s"]) == []


def test_a_failing_notify_socket_is_one_warning(caplog) -> None:
    def broken(message: str) -> bool:
        raise ConnectionRefusedError(111, "Connection refused")

    async def main() -> None:
        with trio.move_on_after(10):
            await inform_systemd(lambda: "s", environ={"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "1000000"},
                                 notify=broken)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert [r.getMessage() for r in caplog.records].count("cannot notify systemd (/x): [Errno 111] Connection refused") == 1
