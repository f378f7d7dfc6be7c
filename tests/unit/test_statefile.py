"""write_json_atomic / read_json: durability steps, permissions, failure handling."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from overlayd.errors import OverlaydError
from overlayd.statefile import StateError, read_json, write_json_atomic


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_round_trip_and_overwrite(tmp_path: Path) -> None:
    target = tmp_path / "pool.json"
    write_json_atomic(target, {"a": [1, "x", None]})
    assert read_json(target) == {"a": [1, "x", None]}
    write_json_atomic(str(target), {"b": 2})
    assert read_json(str(target)) == {"b": 2}
    assert os.listdir(tmp_path) == ["pool.json"]  # no temporary files left behind


def test_missing_file_reads_as_none(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    assert read_json(tmp_path / "no-dir" / "absent.json") is None


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644])
def test_file_has_the_mode_exactly_despite_the_umask(tmp_path: Path, mode: int) -> None:
    old = os.umask(0o077)
    try:
        write_json_atomic(tmp_path / "f.json", 1, mode=mode)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "f.json") == mode


def test_replacing_a_world_readable_file_never_exposes_the_new_data(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "key.json"
    target.write_text("{}")
    target.chmod(0o644)
    modes_at_write = []
    real_write = os.write

    def spying_write(fd: int, data) -> int:
        modes_at_write.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", spying_write)
    old = os.umask(0)
    try:
        write_json_atomic(target, {"secret": "k"})
    finally:
        os.umask(old)
    assert modes_at_write and set(modes_at_write) == {0o600}
    assert _mode(target) == 0o600


def test_file_and_directory_are_fsynced_before_and_after_rename(tmp_path: Path, monkeypatch) -> None:
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def spying_fsync(fd: int) -> None:
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def spying_replace(src, dst) -> None:
        events.append("rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", spying_fsync)
    monkeypatch.setattr(os, "replace", spying_replace)
    write_json_atomic(tmp_path / "f.json", [1])
    assert events == ["fsync-file", "rename", "fsync-dir"]


def test_failed_write_keeps_the_old_file_and_cleans_up(tmp_path: Path, monkeypatch) -> None:
    target = tmp_path / "f.json"
    write_json_atomic(target, {"old": True})

    def failing_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(StateError) as info:
        write_json_atomic(target, {"new": True})
    assert str(target) in str(info.value) and "No space left" in str(info.value)
    monkeypatch.undo()
    assert read_json(target) == {"old": True}
    assert os.listdir(tmp_path) == ["f.json"]


def test_unserialisable_object_touches_nothing(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        write_json_atomic(tmp_path / "f.json", {"x": object()})
    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "f.json", float("nan"))
    assert os.listdir(tmp_path) == []


def test_missing_directory_is_a_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot create"):
        write_json_atomic(tmp_path / "nope" / "f.json", 1)


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (b"", "not valid JSON"),
        (b'{"a": ', "not valid JSON"),
        (b"\xff\xfe", "not UTF-8"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_corrupt_file_raises_state_error_naming_the_path(tmp_path: Path, content: bytes, words: str) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(content)
    with pytest.raises(StateError) as info:
        read_json(target)
    assert isinstance(info.value, OverlaydError)
    assert info.value.path == str(target)
    assert str(target) in str(info.value) and words in str(info.value)


def test_unreadable_path_raises_state_error(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="cannot read"):
        read_json(tmp_path)  # a directory
