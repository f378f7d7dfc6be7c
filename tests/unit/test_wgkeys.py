"""The host's WireGuard key: created 0600, stable across loads, never printed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from overlayd.backend.wgkeys import load_or_create
from overlayd.errors import ConfigError


def test_created_private_and_reloaded_identically(tmp_path: Path) -> None:
    path = tmp_path / "state" / "wireguard.key"
    first = load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert load_or_create(path) == first
    assert len(base64.b64decode(first.public_b64)) == 32
    assert base64.b64encode(first.private).decode() not in repr(first)


def test_world_readable_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wireguard.key"
    load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_or_create(path)


def test_garbage_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "wireguard.key"
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="32-byte"):
        load_or_create(path)
