"""overlayd-cni's parsing of untrusted stdin and environment, and its result/error JSON (pure)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio

from overlayd.cni import client, handler, spec
from overlayd.cni.spec import CniError
from overlayd.errors import ConflictError, KernelError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def _conf(**extra: object) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd-cni"} | extra).encode()


class FakeDaemon:
    """The daemon's operations as the handler calls them, answering from memory."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[Any, ...]] = []

    async def status(self) -> dict[str, Any]:
        return {"ready": True, "subnet": "10.5.1.0/24"}

    async def cni_add(self, *key: str) -> dict[str, Any]:
        self.calls.append(("add", *key))
        if self.fail:
            raise self.fail
        return {"host_veth": "ovlz1234567", "host_mac": "aa:aa:aa:aa:aa:aa", "ifname": key[2],
                "container_mac": "bb:bb:bb:bb:bb:bb", "netns": key[3], "ip": "10.5.1.2", "prefixlen": 24,
                "gateway": "10.5.1.1"}

    async def cni_del(self, *key: str) -> None:
        self.calls.append(("del", *key))

    async def cni_check(self, *key: str) -> dict[str, Any]:
        raise KernelError("eth0 lacks its address")

    async def cni_gc(self, network: str, valid: list[tuple[str, str]]) -> list[str]:
        self.calls.append(("gc", network, valid))
        return []


def _run(conf: bytes, daemon: FakeDaemon | None = None, **env: str) -> tuple[int, dict]:
    out, code = trio.run(handler.handle, ENV | env, conf, daemon or FakeDaemon())
    return code, json.loads(out) if out else {}


def test_a_good_config_parses_with_defaults() -> None:
    conf = spec.parse_config_untrusted(_conf(dns={"nameservers": ["10.0.0.53"]}), "ADD")
    assert conf.name == "overlayd" and conf.socket == spec.DEFAULT_SOCKET
    assert conf.dns == {"nameservers": ["10.0.0.53"]} and conf.valid_attachments is None


@pytest.mark.parametrize(("raw", "code"), [
    (b"", 6), (b"{", 6), (b"[]", 6), (b"\xff", 6), (b"[" * 100_000, 6),
    (_conf(cniVersion="0.4.0"), 1), (_conf(cniVersion="2.0.0"), 1), (_conf(cniVersion=1), 7),
    (_conf(name=""), 7), (_conf(name="a b"), 7), (_conf(socket="relative.sock"), 7), (_conf(socket=5), 7),
    (_conf(dns=[]), 7), (_conf(dns={"nameservers": "1.1.1.1"}), 7), (_conf(prevResult=[]), 7),
])
def test_bad_configs_get_one_error_with_the_spec_code(raw: bytes, code: int) -> None:
    with pytest.raises(CniError) as err:
        spec.parse_config_untrusted(raw, "ADD")
    assert err.value.code == code


def test_status_and_gc_need_1_1_0() -> None:
    with pytest.raises(CniError) as err:
        spec.parse_config_untrusted(_conf(), "GC")
    assert err.value.code == 1
    gc = spec.parse_config_untrusted(_conf(cniVersion="1.1.0", **{
        "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]}), "GC")
    assert gc.valid_attachments == (("a", "eth0"),)
    with pytest.raises(CniError):
        spec.parse_config_untrusted(_conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"x": 1}]}), "GC")


@pytest.mark.parametrize(("env", "ok"), [
    ({}, True), ({"CNI_COMMAND": "BOGUS"}, False), ({"CNI_CONTAINERID": ""}, False),
    ({"CNI_CONTAINERID": "-x"}, False), ({"CNI_IFNAME": "a" * 16}, False), ({"CNI_IFNAME": "e/0"}, False),
    ({"CNI_IFNAME": ".."}, False), ({"CNI_NETNS": ""}, False), ({"CNI_NETNS": "rel"}, False),
    ({"CNI_PATH": ""}, False), ({"CNI_COMMAND": "DEL", "CNI_NETNS": "", "CNI_PATH": ""}, True),
])
def test_environment(env: dict[str, str], ok: bool) -> None:
    if ok:
        spec.parse_env(ENV | env)
    else:
        with pytest.raises(CniError) as err:
            spec.parse_env(ENV | env)
        assert err.value.code == 4


def test_the_client_answers_version_without_a_daemon_and_even_without_stdin() -> None:
    out, code = client.run({"CNI_COMMAND": "VERSION"}, _conf())
    assert (json.loads(out), code) == ({"cniVersion": "1.0.0", "supportedVersions": ["1.0.0", "1.1.0"]}, 0)
    assert json.loads(client.run({"CNI_COMMAND": "VERSION"}, b"")[0])["cniVersion"] == "1.1.0"
    assert client.SUPPORTED_VERSIONS == list(spec.SUPPORTED_VERSIONS)


@pytest.mark.parametrize(("command", "code"), [("ADD", 11), ("STATUS", 50)])
def test_the_client_reports_an_unreachable_daemon_as_spec_json(command: str, code: int) -> None:
    out, exit_code = client.run(ENV | {"CNI_COMMAND": command}, _conf(socket="/nonexistent/overlayd.sock"))
    error = json.loads(out)
    assert exit_code == 1 and error["code"] == code and "cannot reach overlayd" in error["msg"]


@pytest.mark.parametrize("text", ["", "{", "[1, 2", '{"a": NaN}x', "\udcff"])
def test_the_client_decoder_never_raises(text: str) -> None:
    assert client._decode(text) is None


def test_errors_are_json_on_stdout_with_the_config_version() -> None:
    code, out = _run(_conf(cniVersion="0.3.1"))
    assert code == 1 and out["code"] == 1 and out["cniVersion"] == "0.3.1" and "not supported" in out["msg"]
    code, out = _run(_conf(), FakeDaemon(fail=ConflictError("overlayd is still starting (no subnet yet)")))
    assert code == 1 and out["code"] == 11
    code, out = _run(_conf(), FakeDaemon(fail=ConflictError("no free address")))
    assert code == 1 and out["code"] == 100


def test_add_check_del_gc_through_the_handler() -> None:
    daemon = FakeDaemon()
    code, result = _run(_conf(dns={"nameservers": ["10.5.1.1"]}), daemon)
    assert code == 0 and result["ips"][0]["address"] == "10.5.1.2/24" and result["dns"]["nameservers"]
    code, error = _run(_conf(prevResult=result), daemon, CNI_COMMAND="CHECK")
    assert code == 1 and error["code"] == 101 and "lacks its address" in error["msg"]
    assert _run(_conf(), daemon, CNI_COMMAND="DEL", CNI_NETNS="") == (0, {})
    gc = _conf(cniVersion="1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "k", "ifname": "eth0"}]})
    assert _run(gc, daemon, CNI_COMMAND="GC") == (0, {})
    assert daemon.calls[1:] == [("del", "overlayd", "abc123", "eth0"), ("gc", "overlayd", [("k", "eth0")])]


def test_result_has_interfaces_ips_routes_and_dns() -> None:
    attachment = {"host_veth": "ovlz1234567", "host_mac": "aa:aa:aa:aa:aa:aa", "ifname": "eth0",
                  "container_mac": "bb:bb:bb:bb:bb:bb", "netns": "/run/netns/c", "ip": "10.5.1.2", "prefixlen": 24,
                  "gateway": "10.5.1.1"}
    result = spec.build_result("1.0.0", attachment, {"nameservers": ["10.5.1.1"]})
    assert result["interfaces"][1] == {"name": "eth0", "mac": "bb:bb:bb:bb:bb:bb", "sandbox": "/run/netns/c"}
    assert result["ips"] == [{"address": "10.5.1.2/24", "gateway": "10.5.1.1", "interface": 1}]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.5.1.1"}]
    assert result["dns"] == {"nameservers": ["10.5.1.1"]}
    assert spec.prev_result_address(result, "eth0") == "10.5.1.2/24"
    assert spec.prev_result_address({"ips": [{"interface": 7}], "interfaces": []}, "eth0") is None


def test_cni_veth_names_never_look_like_pod_veths() -> None:
    from overlayd.cni.wiring import cni_veth_name, is_cni_veth_name
    from overlayd.pods.names import is_veth_name, veth_name

    name = cni_veth_name("ovl", "overlayd", "abc", "eth0")
    assert len(name) <= 15 and is_cni_veth_name("ovl", name) and not is_veth_name("ovl", name)
    assert not is_cni_veth_name("ovl", veth_name("ovl", "web"))
    assert name == cni_veth_name("ovl", "overlayd", "abc", "eth0") != cni_veth_name("ovl", "overlayd", "abc", "net1")


@pytest.mark.parametrize("row", [
    None, [], {"network": "n"},
    {"network": "n", "container_id": "c", "ifname": "eth0", "netns": "rel", "ip": "10.0.0.2", "host_veth": "v",
     "created": "2026-01-01T00:00:00Z"},
    {"network": "n", "container_id": "c", "ifname": "eth0", "netns": "/n", "ip": "bad", "host_veth": "v",
     "created": "2026-01-01T00:00:00Z"},
])
def test_stored_attachments_are_parsed_as_untrusted(row: object) -> None:
    from overlayd.cni.records import Attachment

    with pytest.raises(ValueError):
        Attachment.from_dict_untrusted(row)


def test_the_client_refuses_a_config_the_control_socket_would_not_take() -> None:
    from overlayd.api import protocol

    assert client.MAX_REQUEST_BYTES == protocol.MAX_REQUEST_BYTES
    big = _conf(socket="/nonexistent/overlayd.sock", pad="x" * 40_000)
    out, code = client.run(ENV, big)
    assert code == 1 and json.loads(out)["code"] == 7
