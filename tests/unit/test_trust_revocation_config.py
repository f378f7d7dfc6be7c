"""Pure logic of the signed cluster config, the revocation list and the peer re-check."""

from __future__ import annotations

import base64
import ipaddress
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ipam.config import ClusterConfig
from overlayd.cluster.configdoc import decode_config_untrusted, encode_config
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord, Lease
from overlayd.errors import ConfigError
from overlayd.trust.certs import TrustAnchor, issue_certificate
from overlayd.trust.config import trust_config_from_mapping
from overlayd.trust.configsig import ConfigSigner, ConfigVerifier
from overlayd.trust.errors import RecordRejected, RevocationError, UntrustedConfig
from overlayd.trust.guard import TrustGuard
from overlayd.trust.keyfiles import raw_public
from overlayd.trust.revocation import (
    RevocationReason,
    Revocations,
    next_generation,
    parse_revocation_list_untrusted,
    sign_revocation_list,
    verify_revocation_list,
)
from overlayd.trust.signing import RecordSigner, RecordVerifier

CA, OTHER = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
ANCHOR = TrustAnchor.from_public_keys([CA.public_key()])
KEY = "/overlayd/network/config"
REVOKED = "/overlayd/network/revoked"
CONFIG = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/16"), subnet_len=24)
SERIAL_A, SERIAL_B = "a" * 32, "b" * 32


# --- signed config ------------------------------------------------------------------------

def test_signed_config_round_trip_and_plain_readers_ignore_the_signature() -> None:
    data = encode_config(CONFIG, ConfigSigner(CA)(KEY, CONFIG))
    config, signature = decode_config_untrusted(data, where=KEY)
    assert config == CONFIG
    ConfigVerifier(ANCHOR)(KEY, config, signature)
    assert decode_config_untrusted(CONFIG.to_json().encode(), where=KEY) == (CONFIG, None)


@pytest.mark.parametrize("signature, message", [
    (None, "not signed by the cluster CA"),
    ("x", "must be an object with issuer and sig"),
    ({"issuer": "zz", "sig": ""}, "issuer must be 16"),
    ({"issuer": "0" * 16, "sig": ""}, "not a trust anchor"),
    ({"issuer": ConfigSigner(CA).issuer, "sig": "!!"}, "does not match"),
    ({"issuer": ConfigSigner(CA).issuer, "sig": "A" * 88}, "does not match"),
    ({"issuer": ConfigSigner(CA).issuer, "sig": "", "extra": 1}, "must be an object"),
])
def test_bad_config_signatures_are_one_clear_error(signature: object, message: str) -> None:
    with pytest.raises(UntrustedConfig, match=message):
        ConfigVerifier(ANCHOR)(KEY, CONFIG, signature)


def test_config_signature_is_bound_to_config_key_and_ca() -> None:
    signature = ConfigSigner(CA)(KEY, CONFIG)
    other = ClusterConfig(network=ipaddress.ip_network("10.99.0.0/16"), subnet_len=24)
    for key, config, sig in [("/other/config", CONFIG, signature), (KEY, other, signature),
                             (KEY, CONFIG, ConfigSigner(OTHER)(KEY, CONFIG))]:
        with pytest.raises(UntrustedConfig):
            ConfigVerifier(ANCHOR)(key, config, sig)


@pytest.mark.parametrize("data", [b"", b"[]", b"{", b'{"network": "10.0.0.0/8", "network": "10.0.0.0/8"}',
                                  b'{"backend": {"type": "bogus"}}', b"\xff", b"[" * 100000])
def test_damaged_config_documents_are_one_config_error(data: bytes) -> None:
    with pytest.raises(ConfigError, match=f"cluster config at {KEY} is invalid"):
        decode_config_untrusted(data, where=KEY)


# --- revocation list ----------------------------------------------------------------------

def test_revocation_list_round_trip() -> None:
    revoked = sign_revocation_list(CA, REVOKED, [SERIAL_B, SERIAL_A], 7)
    parsed = parse_revocation_list_untrusted(revoked.to_bytes())
    assert parsed == revoked and parsed.serials == {SERIAL_A, SERIAL_B}
    verify_revocation_list(ANCHOR, REVOKED, parsed)
    with pytest.raises(RevocationError, match="does not verify"):
        verify_revocation_list(ANCHOR, "/other/revoked", parsed)
    with pytest.raises(RevocationError, match="not a trust anchor"):
        verify_revocation_list(ANCHOR, REVOKED, sign_revocation_list(OTHER, REVOKED, [SERIAL_A], 8))


def _list(**changes: object) -> bytes:
    doc = sign_revocation_list(CA, REVOKED, [SERIAL_A, SERIAL_B], 7).to_dict()
    doc.update(changes)
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize("data, message", [
    (b"\x00", "not UTF-8|not valid JSON"),
    (b"[1]", "must be a JSON object"),
    (_list(signature=...), "fields wrong"),
    (_list(extra=1), "fields wrong"),
    (_list(version=2), "version must be 1"),
    (_list(generation=0), "generation must be"),
    (_list(generation=True), "generation must be"),
    (_list(generation=2**60), "generation must be"),
    (_list(serials="a"), "serials must be a list"),
    (_list(serials=["A" * 32]), "32 lower-case hex"),
    (_list(serials=[SERIAL_B, SERIAL_A]), "sorted and unique"),
    (_list(serials=[SERIAL_A, SERIAL_A]), "sorted and unique"),
    (_list(issuer=5), "issuer must be"),
    (_list(signature="abc"), "signature must be"),
    (b"{" + b'"a":' * 1 + b"[" * 200000 + b"}", "at most|not valid JSON"),
])
def test_malformed_revocation_lists_are_one_clear_error(data: bytes, message: str) -> None:
    with pytest.raises(RevocationError, match=message) as info:
        parse_revocation_list_untrusted(data)
    assert info.value.reason == RevocationReason.MALFORMED


def test_generation_grows_even_when_the_clock_does_not() -> None:
    assert next_generation(0, now=1000) == 1000
    assert next_generation(5000, now=1000) == 5001


def test_revocations_never_go_back_and_count_each_bad_value_once(tmp_path: Path) -> None:
    saved = tmp_path / "revoked.json"
    state = Revocations(ANCHOR, REVOKED, saved)
    old = sign_revocation_list(CA, REVOKED, [SERIAL_A], 5).to_bytes()
    new = sign_revocation_list(CA, REVOKED, [SERIAL_A, SERIAL_B], 6).to_bytes()
    assert state.offer(new) and state.is_revoked(SERIAL_B)
    assert not state.offer(new)  # polled again: nothing new
    for _ in range(2):
        with pytest.raises(RevocationError, match="older than generation 6"):
            state.offer(old)
    forged = json.dumps({**json.loads(new), "serials": [], "generation": 99}).encode()
    with pytest.raises(RevocationError, match="does not verify"):
        state.offer(forged)
    assert state.ignored == {RevocationReason.STALE: 1, RevocationReason.UNTRUSTED: 1}
    assert state.is_revoked(SERIAL_B)

    # A restart takes the saved list back, so a replay is refused from the start.
    again = Revocations(ANCHOR, REVOKED, saved)
    assert again.load_saved() is None and again.is_revoked(SERIAL_B)
    with pytest.raises(RevocationError):
        again.offer(old)
    saved.write_text('{"version": 1}')
    damaged = Revocations(ANCHOR, REVOKED, saved)
    assert "ignored" in (damaged.load_saved() or "") and damaged.current is None
    saved.write_text("{")
    assert "corrupt" in (Revocations(ANCHOR, REVOKED, saved).load_saved() or "")


# --- re-check of programmed peers ---------------------------------------------------------

def _signer(node: str, not_after: int) -> RecordSigner:
    key = Ed25519PrivateKey.generate()
    cert = issue_certificate(CA, node, raw_public(key.public_key()), not_before=0, not_after=not_after)
    return RecordSigner(key, cert)


LEASE_ID = 0x51  # the etcd lease the records are written under


def test_screen_drops_expired_and_revoked_peers_once_each(tmp_path: Path) -> None:
    now = [1000.0]
    layout = KeyLayout()
    me = _signer("me", 5000)
    guard = TrustGuard(me, RecordVerifier(ANCHOR, clock=lambda: now[0]), layout, tmp_path, clock=lambda: now[0])
    leases = {}
    signers = {"short": _signer("short", 2000), "long": _signer("long", 9000), "gone": _signer("gone", 9000)}
    for index, (node, signer) in enumerate(signers.items()):
        subnet = ipaddress.ip_network(f"10.244.{index}.0/24")
        record = HostRecord(node, ipaddress.ip_address(f"198.18.0.{index + 10}"), {"type": "vxlan"})
        lease = Lease(subnet, record, LEASE_ID)
        leases[subnet] = guard.verifier(layout.subnet_key(subnet), signer(layout.subnet_key(subnet), record, LEASE_ID),
                                        lease)

    assert guard.screen(leases) == (leases, [])
    now[0] = 3000.0
    revoked = sign_revocation_list(CA, layout.revoked, [signers["gone"].cert.serial], 1).to_bytes()
    assert guard.refresh(revoked) == (True, None)
    kept, dropped = guard.screen(leases)
    assert {lease.record.node for lease in kept.values()} == {"long"}
    assert sorted(reason.reason for reason in dropped) == ["cert_expired", "revoked"]
    assert guard.screen(leases)[1] == []  # the next batch repeats them: not counted again
    assert guard.own_problem() is None

    # A revoked record is refused when read, too.
    subnet = ipaddress.ip_network("10.244.2.0/24")
    record = leases[subnet].record
    with pytest.raises(RecordRejected, match=r"\(revoked\)"):
        key = layout.subnet_key(subnet)
        guard.verifier(key, signers["gone"](key, record, LEASE_ID), Lease(subnet, record, LEASE_ID))

    now[0] = 6000.0
    assert "expired" in (guard.own_problem() or "")
    forged = base64.b64encode(b"x").decode().encode()
    assert guard.refresh(forged)[1] is not None and guard.refresh(forged)[1] is None  # reported once


@pytest.mark.parametrize("value", [0, 0.5, 3601, True, "60", float("nan")])
def test_recheck_interval_is_validated(value: object) -> None:
    with pytest.raises(ConfigError, match="recheck_interval"):
        trust_config_from_mapping({"recheck_interval": value})


def test_recheck_interval_default_and_value() -> None:
    assert trust_config_from_mapping({}).recheck_interval == 60
    assert trust_config_from_mapping({"recheck_interval": 2.5}).recheck_interval == 2.5


# --- overlayctl: bad input is one UsageError, before any etcd or key file is touched -------

def _ca(*argv: str) -> int:
    import argparse

    from overlayd.cli import ca

    parser = argparse.ArgumentParser(prog="overlayctl")
    parser.add_argument("--json", action="store_true")
    ca.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.mark.parametrize("argv, message", [
    (("--serial", "xyz"), "not a certificate serial"),
    ((), "name at least one certificate"),
])
def test_ca_revoke_usage_errors(tmp_path: Path, argv: tuple[str, ...], message: str) -> None:
    from overlayd.errors import UsageError

    with pytest.raises(UsageError, match=message):
        _ca("ca", "revoke", "--ca-dir", str(tmp_path), *argv)


@pytest.mark.parametrize("seconds", ["9", "86401", "-5"])
def test_sign_host_valid_seconds_bounds(tmp_path: Path, seconds: str) -> None:
    from overlayd.errors import UsageError

    with pytest.raises(UsageError, match="--valid-seconds"):
        _ca("ca", "sign-host", "--ca-dir", str(tmp_path), "--node", "h1", "--host-key-pub", str(tmp_path / "x"),
            "--out", str(tmp_path / "c"), "--valid-seconds", seconds)


def test_fields_this_version_does_not_know_are_covered_by_the_signature() -> None:
    # A newer overlayctl signed a config with a field this daemon ignores: it verifies, and
    # an etcd writer cannot add, change or drop such a field under the CA's signature.
    newer = ClusterConfig.from_dict_untrusted({**CONFIG.to_dict(), "ipam_mode": "dense"})
    data = encode_config(newer, ConfigSigner(CA)(KEY, newer))
    config, signature = decode_config_untrusted(data, where=KEY)
    ConfigVerifier(ANCHOR)(KEY, config, signature)
    assert config.unknown_fields() == ["ipam_mode"]
    doc = json.loads(data)
    for tampered in ({**doc, "ipam_mode": "sparse"}, {**doc, "other": 1},
                     {k: v for k, v in doc.items() if k != "ipam_mode"}):
        config, signature = decode_config_untrusted(json.dumps(tampered).encode(), where=KEY)
        with pytest.raises(UntrustedConfig, match="does not match"):
            ConfigVerifier(ANCHOR)(KEY, config, signature)
