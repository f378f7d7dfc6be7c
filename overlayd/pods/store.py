"""The pod store: one JSON file holding the pods and the address pool, written atomically.

Pods and their addresses are saved in the same file so that no crash can leave
an address allocated without its pod or the other way round.

Writes run on one background thread, in the order they were asked for, so the
caller can program the kernel while the disk syncs (both take about a
millisecond) and wait for the write before it answers.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.pods.records import PodRecord
from overlayd.statefile import StateError, read_json, set_aside, write_json_atomic

STORE_VERSION = 1


@dataclass(frozen=True)
class StoredPods:
    pods: dict[str, PodRecord]
    pool: Mapping[str, Any]  # AddressPool.to_dict(), checked by AddressPool itself


class PodStore:
    def __init__(self, path: Path) -> None:
        self._path = Path(path)
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="overlayd-pod-store")

    def close(self) -> None:
        """Finish pending writes and stop the writer thread."""
        self._writer.shutdown(wait=True)

    @property
    def path(self) -> Path:
        return self._path

    def load(self) -> StoredPods | None:
        """What was saved last, or None when nothing was; StateError if the file is unusable."""
        data = read_json(self._path)
        if data is None:
            return None
        try:
            return _parse_untrusted(data)
        except ValueError as exc:
            raise StateError(str(self._path), f"corrupt: {exc}") from None

    def set_aside(self) -> str | None:
        """Move a damaged store out of the way (see statefile.set_aside); where it went."""
        return set_aside(self._path)

    def save(self, pods: Mapping[str, PodRecord], pool: Mapping[str, Any]) -> None:
        self.save_async(pods, pool).result()

    def save_async(self, pods: Mapping[str, PodRecord], pool: Mapping[str, Any]) -> Future[None]:
        """Start saving a snapshot (taken now); the future fails with StateError if the write does."""
        document = {
            "version": STORE_VERSION,
            "pool": dict(pool),
            "pods": [pods[name].to_dict() for name in sorted(pods)],
        }
        return self._writer.submit(write_json_atomic, self._path, document)


def _parse_untrusted(data: object) -> StoredPods:
    if not isinstance(data, dict) or set(data) != {"version", "pool", "pods"}:
        raise ValueError("expected an object with version, pool and pods")
    if data["version"] != STORE_VERSION or isinstance(data["version"], bool):
        raise ValueError(f"version is {data['version']!r}, expected {STORE_VERSION}")
    if not isinstance(data["pool"], dict) or not isinstance(data["pods"], list):
        raise ValueError("pool must be an object and pods a list")
    pods: dict[str, PodRecord] = {}
    for raw in data["pods"]:
        record = PodRecord.from_dict_untrusted(raw)
        if record.name in pods:
            raise ValueError(f"pod {record.name} is listed twice")
        pods[record.name] = record
    return StoredPods(pods=pods, pool=data["pool"])
