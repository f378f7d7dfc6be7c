"""overlayd-cni's parsing of untrusted stdin and environment, and its result/error JSON (pure)."""

from __future__ import annotations

import io
import json

import pytest

from overlayd.cni import plugin, spec
from overlayd.cni.spec import CniError

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc123", "CNI_NETNS": "/run/netns/x", "CNI_IFNAME": "eth0",
       "CNI_PATH": "/opt/cni/bin"}


def _conf(**extra: object) -> bytes:
    return json.dumps({"cniVersion": "1.0.0", "name": "overlayd", "type": "overlayd-cni"} | extra).encode()


def _run(conf: bytes, **env: str) -> tuple[int, dict]:
    out = io.StringIO()
    code = plugin.main(ENV | env, io.BytesIO(conf), out)
    return code, json.loads(out.getvalue()) if out.getvalue() else {}


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


def test_version_answers_without_a_daemon_and_even_without_stdin() -> None:
    assert _run(_conf(), CNI_COMMAND="VERSION") == (0, {"cniVersion": "1.0.0",
                                                       "supportedVersions": ["1.0.0", "1.1.0"]})
    assert _run(b"", CNI_COMMAND="VERSION")[1]["cniVersion"] == "1.1.0"


def test_errors_are_json_on_stdout_with_the_config_version() -> None:
    code, out = _run(_conf(cniVersion="0.3.1"))
    assert code == 1 and out["code"] == 1 and out["cniVersion"] == "0.3.1" and "not supported" in out["msg"]
    code, out = _run(_conf(socket="/nonexistent/overlayd.sock"))
    assert code == 1 and out["code"] == 11 and "cannot reach overlayd" in out["msg"]


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
