"""Pod records and the pod store file."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone
from ipaddress import ip_address
from pathlib import Path

import pytest

from overlayd.pods.records import PodRecord, format_time
from overlayd.pods.store import PodStore
from overlayd.statefile import StateError

RECORD = PodRecord(name="web", ip=ip_address("10.244.3.2"), node="n1", created="2024-05-01T12:00:00Z",
                   labels={"app": "web"})
POOL = {"version": 1, "subnet": "10.244.3.0/24", "last": "10.244.3.2", "allocations": {"web": "10.244.3.2"}}


def test_format_time_is_utc_with_z() -> None:
    moment = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_time(moment) == "2024-05-01T12:00:00Z"


def test_record_round_trip_and_labels_are_read_only() -> None:
    assert PodRecord.from_dict_untrusted(RECORD.to_dict()) == RECORD
    with pytest.raises(TypeError):
        RECORD.labels["app"] = "db"  # type: ignore[index]


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"name": "Web"}, "pod name"),
        ({"ip": "10.244.3"}, "does not appear to be"),
        ({"ip": 7}, "must be strings"),
        ({"created": "yesterday"}, "isoformat"),
        ({"labels": {"-x": "y"}}, "label key"),
        ({"extra": 1}, "fields"),
    ],
)
def test_bad_records_are_rejected(change: dict, problem: str) -> None:
    data = {**RECORD.to_dict(), **change}
    with pytest.raises(ValueError, match=problem):
        PodRecord.from_dict_untrusted(data)


def test_record_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="object"):
        PodRecord.from_dict_untrusted(["web"])


def test_store_round_trip_is_private(tmp_path: Path) -> None:
    store = PodStore(tmp_path / "pods.json")
    assert store.load() is None
    store.save({"web": RECORD}, POOL)
    loaded = store.load()
    assert loaded is not None
    assert loaded.pods == {"web": RECORD}
    assert loaded.pool == POOL
    assert os.stat(tmp_path / "pods.json").st_mode & 0o777 == 0o600
    store.close()


def test_async_saves_land_in_order(tmp_path: Path) -> None:
    store = PodStore(tmp_path / "pods.json")
    futures = [store.save_async({f"p{i}": PodRecord(name=f"p{i}", ip=ip_address(f"10.244.3.{i + 2}"), node="n1",
                                                   created="2024-05-01T12:00:00Z")}, POOL) for i in range(20)]
    for future in futures:
        future.result()
    loaded = store.load()
    assert loaded is not None and list(loaded.pods) == ["p19"]
    store.close()


def test_failed_async_save_reports_state_error(tmp_path: Path) -> None:
    store = PodStore(tmp_path / "missing-dir" / "pods.json")
    with pytest.raises(StateError):
        store.save_async({}, POOL).result()
    store.close()


@pytest.mark.parametrize(
    "document",
    [
        [],
        {"version": 2, "pool": {}, "pods": []},
        {"version": True, "pool": {}, "pods": []},
        {"version": 1, "pool": [], "pods": []},
        {"version": 1, "pool": {}, "pods": {}},
        {"version": 1, "pool": {}, "pods": [RECORD.to_dict(), RECORD.to_dict()]},
        {"version": 1, "pool": {}},
    ],
)
def test_corrupt_store_is_a_state_error(tmp_path: Path, document: object) -> None:
    path = tmp_path / "pods.json"
    path.write_text(json.dumps(document))
    with pytest.raises(StateError, match="corrupt"):
        PodStore(path).load()
