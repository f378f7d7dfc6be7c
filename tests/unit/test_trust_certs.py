"""Trust anchor pieces: Ed25519 key files, host certificates (strict parsing), the anchor."""

from __future__ import annotations

import base64
import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from hypothesis import given
from hypothesis import strategies as st

from overlayd.errors import ConfigError, ConflictError
from overlayd.trust.certs import (
    HostCertificate,
    TrustAnchor,
    certificate_file_bytes,
    issue_certificate,
    load_certificate,
    load_trust_anchor,
    parse_certificate_untrusted,
    parse_time_untrusted,
)
from overlayd.trust.errors import CertificateError, UntrustedCertificate
from overlayd.trust.keyfiles import (
    create_private_key,
    is_weak_public_key,
    key_id,
    load_or_create_private_key,
    load_private_key,
    load_public_key,
    public_pem,
    raw_public,
    write_public_file,
)

CA = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
OTHER_CA = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
HOST = Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
T0 = 1_750_000_000
ANCHOR = TrustAnchor.from_public_keys([CA.public_key()])


def cert(ca: Ed25519PrivateKey = CA, node: str = "host-1", host: Ed25519PrivateKey = HOST) -> HostCertificate:
    return issue_certificate(ca, node, raw_public(host.public_key()), not_before=T0, not_after=T0 + 86400,
                             serial="ab" * 16)


# -- key files ---------------------------------------------------------------------------


def test_private_key_is_0600_from_creation_and_reloads(tmp_path: Path) -> None:
    old = os.umask(0)  # even a permissive umask must not widen the mode
    try:
        key = create_private_key(tmp_path / "new" / "host.key")
    finally:
        os.umask(old)
    path = tmp_path / "new" / "host.key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert raw_public(load_private_key(path).public_key()) == raw_public(key.public_key())
    again, created = load_or_create_private_key(path)
    assert not created and raw_public(again.public_key()) == raw_public(key.public_key())


def test_private_key_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "ca.key"
    first = create_private_key(path)
    with pytest.raises(ConflictError, match="refusing to overwrite"):
        create_private_key(path)
    assert raw_public(load_private_key(path).public_key()) == raw_public(first.public_key())


def test_private_key_readable_by_others_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "host.key"
    create_private_key(path)
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(path)


def test_non_ed25519_and_garbage_keys_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(ec_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    path.chmod(0o600)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        load_private_key(path)
    path.write_bytes(b"hello")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_private_key(path)
    with pytest.raises(ConfigError, match="not found"):
        load_private_key(tmp_path / "missing.key")
    big = tmp_path / "big.pub"
    big.write_bytes(b"x" * 10000)
    with pytest.raises(ConfigError, match="larger than"):
        load_public_key(big)


def test_public_key_file_round_trip_and_private_key_mixup(tmp_path: Path) -> None:
    pub = tmp_path / "host.pub"
    write_public_file(pub, public_pem(HOST.public_key()))
    assert pub.stat().st_mode & 0o777 == 0o644
    assert raw_public(load_public_key(pub)) == raw_public(HOST.public_key())
    private = tmp_path / "host.key"
    create_private_key(private)
    with pytest.raises(ConfigError, match="holds a private key"):
        load_public_key(private)


def _small_order_ys() -> set[int]:
    """Derived from the curve equation, independently of the module's table."""
    p = 2**255 - 19
    d = (-121665 * pow(121666, -1, p)) % p
    root_minus_one = pow(2, (p - 1) // 4, p)

    def sqrt(a: int) -> int | None:
        r = pow(a, (p + 3) // 8, p)
        if r * r % p == a % p:
            return r
        return r * root_minus_one % p if r * r % p == -a % p else None

    ys = {0, 1, p - 1}  # order 4 (y = 0), identity, order 2
    s = sqrt(1 + d)
    assert s is not None
    for t in ((-1 + s) * pow(d, -1, p) % p, (-1 - s) * pow(d, -1, p) % p):  # y^2 of the order-8 points
        r = sqrt(t)
        if r is not None:
            ys |= {r, p - r}
    return ys


def test_small_order_keys_are_weak_and_really_forgeable() -> None:
    ys = _small_order_ys()
    assert len(ys) == 5
    for y in ys:
        for sign in (0, 1 << 255):
            assert is_weak_public_key((y | sign).to_bytes(32, "little"))
    assert is_weak_public_key(((2**255 - 19) + 5).to_bytes(32, "little"))  # non-canonical y
    assert not is_weak_public_key(raw_public(HOST.public_key()))
    # Why it matters: OpenSSL accepts an all-zero "signature" by the zero key on a good share of
    # messages, so a forger only has to vary a record a little.
    zero_key = Ed25519PublicKey.from_public_bytes(bytes(32))
    forged = 0
    for i in range(64):
        try:
            zero_key.verify(bytes(64), b"record %d" % i)
            forged += 1
        except InvalidSignature:
            pass
    assert forged > 0
    with pytest.raises(CertificateError, match="weak"):
        issue_certificate(CA, "host-1", bytes(32), not_before=T0, not_after=T0 + 1)


# -- certificates ------------------------------------------------------------------------


def test_certificate_round_trip_and_verifies() -> None:
    issued = cert()
    parsed = parse_certificate_untrusted(json.loads(json.dumps(issued.to_dict())))
    assert parsed == issued
    assert parsed.issuer == key_id(raw_public(CA.public_key()))
    assert parsed.to_dict()["not_before"] == "2025-06-15T15:06:40Z"
    ANCHOR.verify(parsed)
    assert parsed.valid_at(T0) and not parsed.valid_at(T0 + 86400) and not parsed.valid_at(T0 - 1)


def test_certificate_of_another_ca_is_untrusted() -> None:
    with pytest.raises(UntrustedCertificate, match="not a trust anchor"):
        ANCHOR.verify(cert(ca=OTHER_CA))
    # Claiming our CA's key id does not help: the signature is checked.
    forged = replace(cert(ca=OTHER_CA), issuer=key_id(raw_public(CA.public_key())))
    with pytest.raises(UntrustedCertificate, match="does not verify"):
        ANCHOR.verify(forged)


@pytest.mark.parametrize("change", [
    {"node": "host-2"},
    {"not_after": T0 + 10 * 86400},
    {"not_before": T0 - 86400},
    {"public_key": raw_public(OTHER_CA.public_key())},
    {"serial": "cd" * 16},
])
def test_any_changed_field_breaks_the_ca_signature(change: dict[str, Any]) -> None:
    with pytest.raises(UntrustedCertificate):
        ANCHOR.verify(replace(cert(), **change))


def test_anchor_with_several_keys_trusts_each(tmp_path: Path) -> None:
    path = tmp_path / "ca.pub"
    path.write_bytes(public_pem(CA.public_key()) + b"\n# rotating\n" + public_pem(OTHER_CA.public_key()))
    anchor = load_trust_anchor(path)
    assert len(anchor.keys) == 2
    anchor.verify(cert())
    anchor.verify(cert(ca=OTHER_CA))


@pytest.mark.parametrize("content, message", [
    (b"", "no PEM public key"),
    (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "not a public key"),
    (b"x" * 70000, "larger than"),
])
def test_bad_anchor_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "ca.pub"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_trust_anchor(path)


def test_certificate_file_round_trip_and_garbage(tmp_path: Path) -> None:
    path = tmp_path / "host.cert"
    path.write_bytes(certificate_file_bytes(cert()))
    assert load_certificate(path) == cert()
    path.write_bytes(b'{"node": "a", "node": "b"}')
    with pytest.raises(ConfigError, match="repeats the field"):
        load_certificate(path)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match=str(path)):
        load_certificate(path)


VALID = cert().to_dict()


@pytest.mark.parametrize("field, value", [
    ("version", True),  # bool is an int in Python, but not a version
    ("version", "1"),
    ("version", 2),
    ("node", "Host_1"),
    ("node", 7),
    ("node", "a" * 300),
    ("public_key", base64.b64encode(bytes(31)).decode()),
    ("public_key", VALID["public_key"][:-2] + "B="),  # same bytes, non-zero padding bits
    ("public_key", " " + VALID["public_key"][1:]),
    ("public_key", None),
    ("not_before", "2025-06-15 15:06:40Z"),
    ("not_before", "2025-02-30T00:00:00Z"),
    ("not_before", "2025-06-15T23:59:60Z"),
    ("not_before", T0),
    ("not_after", "2025-06-15T15:06:40+00:00"),
    ("not_after", "2025-06-15T15:06:40Z"),  # == not_before
    ("serial", "AB" * 16),
    ("serial", "ab" * 17),
    ("issuer", "abc"),
    ("signature", base64.b64encode(bytes(63)).decode()),
    ("signature", "!" * 88),
    ("signature", []),
])
def test_malformed_certificate_fields_are_refused(field: str, value: object) -> None:
    with pytest.raises(CertificateError):
        parse_certificate_untrusted({**VALID, field: value})


@pytest.mark.parametrize("doc", [None, [], "cert", {}, {**VALID, "extra": 1},
                                 {k: v for k, v in VALID.items() if k != "serial"}])
def test_malformed_certificate_shapes_are_refused(doc: object) -> None:
    with pytest.raises(CertificateError):
        parse_certificate_untrusted(doc)


def test_times_parse_only_canonically() -> None:
    assert parse_time_untrusted("1970-01-01T00:00:00Z", "t") == 0
    assert parse_time_untrusted("2025-06-15T15:06:40Z", "t") == T0
    for text in ("2025-6-15T15:06:40Z", "2025-06-15T15:06:40.5Z", "2025-13-01T00:00:00Z", "1969-12-31T23:59:59Z"):
        with pytest.raises(CertificateError):
            parse_time_untrusted(text, "t")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=100),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


@given(st.sampled_from(sorted(VALID)), JSON)
def test_any_field_value_is_refused_cleanly_or_accepted(field: str, value: object) -> None:
    try:
        parsed = parse_certificate_untrusted({**VALID, field: value})
    except CertificateError:
        return
    assert parsed.to_dict()[field] == value  # only the canonical spelling of the same value passes


@given(JSON)
def test_arbitrary_json_never_crashes_the_parser(doc: object) -> None:
    with pytest.raises(CertificateError):
        parse_certificate_untrusted(doc)
