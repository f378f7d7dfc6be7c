"""The policy.* control commands check their arguments before the daemon sees them, and the
CLI reads YAML and JSON files of NetworkPolicy documents."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from overlayd.api.commands import dispatch
from overlayd.cli.policy import parse_port, read_documents
from overlayd.errors import UsageError


class Plane:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    async def policy_apply(self, policy: Any, warnings: list[str]) -> dict[str, Any]:
        self.calls.append(("apply", (policy.name, tuple(warnings))))
        return {"name": policy.name, "result": "created", "warnings": warnings}

    async def policy_explain(self, src: str, dst: str, protocol: str, port: int | None) -> dict[str, Any]:
        self.calls.append(("explain", (src, dst, protocol, port)))
        return {}

    async def policy_del(self, name: str) -> None:
        self.calls.append(("del", (name,)))


DOC = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "p", "namespace": "x"},
       "spec": {"podSelector": {}}}


def call(plane: Plane, cmd: str, **args: Any) -> Any:
    return trio.run(dispatch, plane, cmd, args)


def test_apply_parses_the_document_and_passes_warnings() -> None:
    plane = Plane()
    result = call(plane, "policy.apply", document=DOC)
    assert result["name"] == "p" and plane.calls[0][0] == "apply"
    assert "namespace" in plane.calls[0][1][1][0]


@pytest.mark.parametrize("cmd,args,needle", [
    ("policy.apply", {"document": {**DOC, "spec": {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {}}]}]}}},
     "namespaceSelector"),
    ("policy.apply", {"document": "text"}, "must be an object"),
    ("policy.apply", {"document": DOC, "extra": 1}, "unexpected arguments"),
    ("policy.del", {"name": "Bad Name"}, "metadata.name"),
    ("policy.explain", {"from": "a", "to": "b", "port": 0, "protocol": "tcp"}, "port"),
    ("policy.explain", {"from": "a", "to": "b", "port": 80, "protocol": "icmp"}, "protocol"),
    ("policy.explain", {"from": "", "to": "b", "port": 80, "protocol": "tcp"}, "pod names or addresses"),
])
def test_bad_arguments_are_usage_errors(cmd: str, args: dict[str, Any], needle: str) -> None:
    plane = Plane()
    with pytest.raises(UsageError, match=needle):
        call(plane, cmd, **args)
    assert plane.calls == []


def test_explain_passes_a_missing_port_as_none() -> None:
    plane = Plane()
    call(plane, "policy.explain", **{"from": "a", "to": "h2/b", "port": None, "protocol": "udp"})
    assert plane.calls == [("explain", ("a", "h2/b", "udp", None))]


def test_read_documents_yaml_json_lists_and_errors(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\n"
                    "spec: {podSelector: {}}\n---\n---\nkind: List\nitems:\n- {kind: NetworkPolicy, metadata: {name: b}}\n")
    docs = read_documents(str(path))
    assert [d["metadata"]["name"] for d in docs] == ["a", "b"]
    path.write_text('{"kind": "NetworkPolicy", "metadata": {"name": "j"}}')
    assert read_documents(str(path))[0]["metadata"]["name"] == "j"
    path.write_text("key: [unclosed\n")
    with pytest.raises(UsageError, match="not valid YAML or JSON .line"):
        read_documents(str(path))
    path.write_text("---\n")
    with pytest.raises(UsageError, match="no documents"):
        read_documents(str(path))
    with pytest.raises(UsageError, match="No such file"):
        read_documents(str(tmp_path / "missing.yaml"))
    path.write_text("!!python/object/apply:os.system ['true']\n")
    with pytest.raises(UsageError):  # safe_load: no Python objects from a file
        read_documents(str(path))


@pytest.mark.parametrize("text,expected", [("80", (80, "tcp")), ("53/udp", (53, "udp")), ("any/sctp", (None, "sctp")),
                                           ("65535/tcp", (65535, "tcp"))])
def test_parse_port(text: str, expected: tuple) -> None:
    assert parse_port(text) == expected


@pytest.mark.parametrize("text", ["0", "65536", "80/icmp", "http", "80/"])
def test_parse_port_refuses(text: str) -> None:
    with pytest.raises(UsageError, match="PORT"):
        parse_port(text)
