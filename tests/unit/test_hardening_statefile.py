"""Temporary files a crashed writer left next to a state file are removed; nothing else is touched."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from overlayd import statefile
from overlayd.statefile import read_json, write_json_atomic


@pytest.fixture(autouse=True)
def _fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each test acts as a freshly started process that has not looked at the directory yet.
    monkeypatch.setattr(statefile, "_swept", set(), raising=False)


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _touch(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_text("partial")


def _leftovers(dead: int) -> list[str]:
    return [".pods.json.1a2b3c4d.tmp",  # written by a version without pids in the name
            f".pods.json.{dead}.deadbeef.tmp"]


def _bystanders() -> list[str]:
    live = os.getppid()  # a writer that is still running: its file may be in flight
    return [f".pods.json.{live}.cafebabe.tmp", ".other.json.1a2b3c4d.tmp", ".pods.jsonx.1a2b3c4d.tmp",
            ".pods.json.tmp", "pods.json.bak", ".pods.json.1a2b3c4d.tmp.keep", ".pods.json.XYZ.tmp"]


def test_a_write_removes_leftover_temporaries_of_that_file_only(tmp_path: Path) -> None:
    dead = _dead_pid()
    _touch(tmp_path, *_leftovers(dead), *_bystanders())
    write_json_atomic(tmp_path / "pods.json", {"pods": []})
    assert sorted(os.listdir(tmp_path)) == sorted(["pods.json", *_bystanders()])
    assert read_json(tmp_path / "pods.json") == {"pods": []}


def test_reading_at_start_removes_them_too(tmp_path: Path) -> None:
    dead = _dead_pid()
    write_json_atomic(tmp_path / "pods.json", {"v": 1})
    statefile._swept.clear()  # a new process
    _touch(tmp_path, *_leftovers(dead), *_bystanders())
    assert read_json(tmp_path / "pods.json") == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == sorted(["pods.json", *_bystanders()])


def test_a_missing_directory_is_not_an_error_when_reading(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent" / "pods.json") is None
