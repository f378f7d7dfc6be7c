"""Secrets stay secret (finding 8 of issue 13): compared in constant time, never in a repr."""

from __future__ import annotations

import ast
import base64
import ipaddress
from pathlib import Path

import pytest

from overlayd.wireguard import PeerConfig, PeerStatus
from overlayd.wireguard.uapi import DeviceState, PeerState, PeerUpdate, SetRequest

SOURCES = sorted((Path(__file__).resolve().parents[2] / "overlayd" / "wireguard").glob("*.py"))
# Names that hold secrets (or the all-zero key a secret is compared with) in the engine.
SECRET_NAMES = {
    "private_key", "preshared_key", "psk", "ZERO_KEY", "_ZERO_KEY", "NO_PRESHARED_KEY",
    "static_static", "shared", "secret", "_secret", "cookie", "_cookie", "chaining_key",
}

SECRET = bytes(range(0xA0, 0xC0))
PUBLIC = bytes(range(32))


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def secret_comparisons(source: str) -> list[int]:
    """Lines where == or != has a secret-named operand (bytes == stops at the first difference)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare) and any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            if any(_names(operand) & SECRET_NAMES for operand in (node.left, *node.comparators)):
                lines.append(node.lineno)
    return lines


def test_the_check_finds_what_it_looks_for() -> None:
    assert secret_comparisons("if key == ZERO_KEY: pass\nx = peer.preshared_key != other\n") == [1, 2]
    assert secret_comparisons("if key == 'private_key': pass\nok = public_key == peer.public_key\n") == []


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.name)
def test_secrets_are_compared_in_constant_time(path: Path) -> None:
    assert secret_comparisons(path.read_text()) == [], f"use crypto.constant_time_equal in {path.name}"


@pytest.mark.parametrize("value", [
    PeerConfig(PUBLIC, preshared_key=SECRET, allowed_ips=(ipaddress.ip_network("10.0.0.0/24"),)),
    PeerStatus(PUBLIC, SECRET, None, (), 0, 0, 0, None),
    PeerUpdate(PUBLIC, preshared_key=SECRET),
    SetRequest(private_key=SECRET, peers=(PeerUpdate(PUBLIC, preshared_key=SECRET),)),
    PeerState(PUBLIC, preshared_key=SECRET),
    DeviceState(private_key=SECRET, peers=(PeerState(PUBLIC, preshared_key=SECRET),)),
], ids=lambda v: type(v).__name__)
def test_reprs_show_no_key(value: object) -> None:
    text = repr(value)
    assert repr(PUBLIC) in text  # public keys stay: they say which peer it is
    for form in (repr(SECRET), SECRET.hex(), base64.b64encode(SECRET).decode()):
        assert form not in text
