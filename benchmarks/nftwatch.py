"""What the nftables benchmarks share: watching rules appear in a lab host, and the floor
under any rule update (`nft -f` of the same table alone)."""

from __future__ import annotations

import queue
import statistics
import subprocess
import threading
import time
from collections.abc import Callable

TABLE = "overlayd"


def nft_list(netns: str, table: str = TABLE) -> str:
    return subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", table],
                          capture_output=True, text=True, check=True).stdout


def nft_f_floor(netns: str, text: str, rounds: int, table: str = TABLE) -> list[float]:
    """Seconds to write `text` (a listed table) back with `nft -f` alone, once per round."""
    script = f"add table inet {table}\ndelete table inet {table}\n{text}"
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        subprocess.run(["ip", "netns", "exec", netns, "nft", "-f", "-"], input=script, text=True, check=True)
        times.append(time.perf_counter() - start)
    return times


def wait_until(check: Callable[[], object], timeout: float = 30.0, interval: float = 0.05) -> float:
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout:
            raise RuntimeError("timed out")
        time.sleep(interval)
    return time.perf_counter() - start


def summary_ms(values: list[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    ordered = sorted(values)
    return {"median_ms": statistics.median(ordered) * 1e3, "min_ms": ordered[0] * 1e3, "max_ms": ordered[-1] * 1e3,
            "p90_ms": ordered[(len(ordered) * 9) // 10] * 1e3, "count": len(ordered)}


class RuleMonitor:
    """`nft monitor` in a host's netns: the moment a rule appears, without polling `nft list`."""

    def __init__(self, netns: str) -> None:
        self._proc = subprocess.Popen(["ip", "netns", "exec", netns, "nft", "monitor", "rules"],
                                      stdout=subprocess.PIPE, text=True, bufsize=1)
        self._lines: queue.SimpleQueue[tuple[float, str]] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.3)  # let it subscribe

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            if line.startswith("add rule"):
                self._lines.put((time.perf_counter(), line))

    def drain(self) -> None:
        while not self._lines.empty():
            self._lines.get()

    def wait(self, predicate: Callable[[str], bool], timeout: float = 30.0) -> float:
        """The time at which a rule satisfying predicate(line) was added."""
        deadline = time.perf_counter() + timeout
        while True:
            at, line = self._lines.get(timeout=max(0.0, deadline - time.perf_counter()))
            if predicate(line):
                return at

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()
