"""The daemon's [trust] section: parsing, and loading key, certificate and anchor together."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlayd.errors import ConfigError
from overlayd.trust.certs import certificate_file_bytes, issue_certificate
from overlayd.trust.config import TrustConfig, load_host_trust, trust_config_from_mapping
from overlayd.trust.keyfiles import create_private_key, public_pem, raw_public, write_public_file

CA = Ed25519PrivateKey.from_private_bytes(bytes([1]) * 32)
OTHER_CA = Ed25519PrivateKey.from_private_bytes(bytes([2]) * 32)
T0 = 1_750_000_000
DAY = 86400


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A CA anchor, a host key in the state dir and its certificate for host-1 (valid T0..T0+100d)."""
    state = tmp_path / "state"
    key = create_private_key(state / "host.key")
    write_public_file(tmp_path / "ca.pub", public_pem(CA.public_key()))
    cert = issue_certificate(CA, "host-1", raw_public(key.public_key()), not_before=T0, not_after=T0 + 100 * DAY)
    write_public_file(tmp_path / "host.cert", certificate_file_bytes(cert))
    return {"state": state, "ca": tmp_path / "ca.pub", "cert": tmp_path / "host.cert", "key": state / "host.key"}


def load(config: TrustConfig, files: dict[str, Path], node: str = "host-1", now: float = T0 + DAY):
    return load_host_trust(config, node=node, state_dir=files["state"], clock=lambda: now)


# -- parsing -----------------------------------------------------------------------------


def test_no_section_means_no_trust() -> None:
    assert trust_config_from_mapping(None) == TrustConfig()
    assert trust_config_from_mapping({}) == TrustConfig()


def test_paths_and_default_host_key() -> None:
    config = trust_config_from_mapping({"ca_file": "/etc/overlayd/ca.pub", "host_cert": "/etc/overlayd/host.cert"})
    assert config.ca_file == Path("/etc/overlayd/ca.pub")
    assert config.host_key_path(Path("/var/lib/overlayd")) == Path("/var/lib/overlayd/host.key")
    explicit = trust_config_from_mapping({"host_key": "/k", "host_cert": "/c"})
    assert explicit.host_key_path(Path("/var/lib/overlayd")) == Path("/k")


@pytest.mark.parametrize("values, message", [
    ({"ca": "/x"}, "unknown \\[trust\\] keys: ca"),
    ({"host_cert": 5}, "trust.host_cert: expected a non-empty path"),
    ({"host_cert": ""}, "trust.host_cert: expected a non-empty path"),
    ({"ca_file": "/etc/overlayd/ca.pub"}, "needs trust.host_cert"),
    ("ca.pub", "must be a table"),
])
def test_bad_sections(values: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        trust_config_from_mapping(values)  # type: ignore[arg-type]


# -- loading -----------------------------------------------------------------------------


def test_nothing_configured_signs_and_verifies_nothing(files: dict[str, Path]) -> None:
    trust = load(TrustConfig(), files)
    assert trust.signer is None and trust.verifier is None
    assert trust.status() == {"signing": None, "verifying": None, "rejected": {}}


def test_cert_alone_signs_without_verifying(files: dict[str, Path]) -> None:
    trust = load(TrustConfig(host_cert=files["cert"]), files)
    assert trust.signer is not None and trust.signer.cert.node == "host-1"
    assert trust.verifier is None


def test_full_trust_signs_and_verifies(files: dict[str, Path]) -> None:
    trust = load(TrustConfig(ca_file=files["ca"], host_cert=files["cert"]), files)
    assert trust.signer is not None and trust.verifier is not None
    status = trust.status()
    assert status["signing"]["node"] == "host-1" and status["signing"]["not_after"] == "2025-09-23T15:06:40Z"
    assert status["verifying"] == sorted(trust.verifier.anchor.keys) and status["rejected"] == {}


def test_missing_host_key_says_how_to_make_one(files: dict[str, Path]) -> None:
    files["key"].unlink()
    with pytest.raises(ConfigError, match="overlayctl ca host-key --out .*host.key"):
        load(TrustConfig(host_cert=files["cert"]), files)


def test_cert_for_another_node_is_refused(files: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="is for 'host-1', but node_name is 'host-2'"):
        load(TrustConfig(host_cert=files["cert"]), files, node="host-2")


def test_cert_for_another_key_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    other = create_private_key(tmp_path / "other.key")
    with pytest.raises(ConfigError, match="does not match"):
        load(TrustConfig(host_cert=files["cert"], host_key=tmp_path / "other.key"), files)
    assert other  # the key exists; only the pairing is wrong


@pytest.mark.parametrize("now", [T0 - 1, T0 + 100 * DAY])
def test_cert_outside_its_validity_is_refused(files: dict[str, Path], now: float) -> None:
    with pytest.raises(ConfigError, match="valid only from"):
        load(TrustConfig(host_cert=files["cert"]), files, now=now)


def test_soon_expiring_cert_is_a_warning(files: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    load(TrustConfig(host_cert=files["cert"]), files, now=T0 + 90 * DAY)
    assert "expires at 2025-09-23T15:06:40Z" in caplog.text


def test_cert_not_issued_by_the_anchor_is_refused(files: dict[str, Path], tmp_path: Path) -> None:
    write_public_file(tmp_path / "other-ca.pub", public_pem(OTHER_CA.public_key()))
    with pytest.raises(ConfigError, match="not a trust anchor"):
        load(TrustConfig(ca_file=tmp_path / "other-ca.pub", host_cert=files["cert"]), files)


def test_world_readable_host_key_is_refused(files: dict[str, Path]) -> None:
    files["key"].chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load(TrustConfig(host_cert=files["cert"]), files)
