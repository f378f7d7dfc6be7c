"""overlayctl ca: the operator's path from nothing to a host whose daemon signs and verifies."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pytest

from overlayd.cli import ca
from overlayd.errors import ConfigError, ConflictError, UsageError
from overlayd.trust.certs import certificate_file_bytes, issue_certificate, load_certificate, load_trust_anchor
from overlayd.trust.config import TrustConfig, load_host_trust
from overlayd.trust.keyfiles import load_private_key, load_public_key, raw_public, write_public_file


def run(*argv: str) -> int:
    """Parse like overlayctl does (global --json, then the ca subcommands) and run the handler."""
    parser = argparse.ArgumentParser(prog="overlayctl")
    parser.add_argument("--json", action="store_true")
    ca.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


@pytest.fixture
def printed(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What the commands print with --json (output.print_json binds sys.stdout when imported)."""
    values: list[dict] = []
    monkeypatch.setattr(ca, "print_json", values.append)
    return values


def test_full_enrolment_flow(tmp_path: Path, capsys: pytest.CaptureFixture[str], printed: list[dict]) -> None:
    ca_dir, state = tmp_path / "ca", tmp_path / "state"
    assert run("ca", "init", "--dir", str(ca_dir)) == 0
    assert (ca_dir / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (ca_dir / "ca.pub").stat().st_mode & 0o777 == 0o644
    assert ca_dir.stat().st_mode & 0o777 == 0o700
    assert "set [trust] ca_file" in capsys.readouterr().out

    assert run("--json", "ca", "host-key", "--out", str(state / "host.key")) == 0
    made = printed.pop()
    assert made["created"] and made["public_key_file"] == str(state / "host.key.pub")
    assert (state / "host.key").stat().st_mode & 0o777 == 0o600
    # Running it again reuses the key (e.g. to print the public key of an enrolled host).
    assert run("--json", "ca", "host-key", "--out", str(state / "host.key")) == 0
    again = printed.pop()
    assert not again["created"] and again["public_key"] == made["public_key"]

    cert_path = tmp_path / "host-1.cert"
    assert run("ca", "sign-host", "--ca-dir", str(ca_dir), "--node", "host-1",
               "--host-key-pub", str(state / "host.key.pub"), "--out", str(cert_path), "--days", "30") == 0
    cert = load_certificate(cert_path)
    load_trust_anchor(ca_dir / "ca.pub").verify(cert)
    assert cert.node == "host-1"
    assert cert.public_key == raw_public(load_private_key(state / "host.key").public_key())
    assert abs(cert.not_after - (time.time() + 30 * 86400)) < 60 and cert.valid_at(time.time())

    assert run("--json", "ca", "show", "--cert", str(cert_path), "--ca-file", str(ca_dir / "ca.pub")) == 0
    shown = printed.pop()
    assert shown["node"] == "host-1" and shown["verified"] == "signed by the trust anchor"

    # The files plug straight into the daemon's [trust] section.
    trust = load_host_trust(TrustConfig(ca_file=ca_dir / "ca.pub", host_cert=cert_path), node="host-1",
                            state_dir=state)
    assert trust.signer is not None and trust.verifier is not None


def test_init_refuses_to_replace_a_ca(tmp_path: Path) -> None:
    run("ca", "init", "--dir", str(tmp_path))
    key_before = (tmp_path / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to replace"):
        run("ca", "init", "--dir", str(tmp_path))
    (tmp_path / "ca.pub").unlink()
    with pytest.raises(ConflictError, match="refusing to overwrite"):
        run("ca", "init", "--dir", str(tmp_path))
    assert (tmp_path / "ca.key").read_bytes() == key_before


@pytest.fixture
def enrolled(tmp_path: Path) -> Path:
    run("ca", "init", "--dir", str(tmp_path / "ca"))
    run("ca", "host-key", "--out", str(tmp_path / "host.key"))
    return tmp_path


@pytest.mark.parametrize("extra, error", [
    (["--node", "Host_1"], "not a valid host name"),
    (["--node", "host-1", "--days", "0"], "out of range"),
    (["--node", "host-1", "--days", "4000"], "out of range"),
])
def test_sign_host_bad_usage(enrolled: Path, extra: list[str], error: str) -> None:
    with pytest.raises(UsageError, match=error):
        run("ca", "sign-host", "--ca-dir", str(enrolled / "ca"), "--host-key-pub", str(enrolled / "host.key.pub"),
            "--out", str(enrolled / "c"), *extra)


def test_sign_host_refuses_a_private_key_as_public(enrolled: Path) -> None:
    with pytest.raises(ConfigError, match="holds a private key"):
        run("ca", "sign-host", "--ca-dir", str(enrolled / "ca"), "--node", "host-1",
            "--host-key-pub", str(enrolled / "host.key"), "--out", str(enrolled / "c"))
    assert not (enrolled / "c").exists()


def test_show_against_another_ca_fails(enrolled: Path) -> None:
    run("ca", "sign-host", "--ca-dir", str(enrolled / "ca"), "--node", "host-1",
        "--host-key-pub", str(enrolled / "host.key.pub"), "--out", str(enrolled / "c"))
    run("ca", "init", "--dir", str(enrolled / "other"))
    with pytest.raises(ConfigError, match="not a trust anchor"):
        run("ca", "show", "--cert", str(enrolled / "c"), "--ca-file", str(enrolled / "other" / "ca.pub"))
    assert run("ca", "show", "--cert", str(enrolled / "c")) == 0  # without an anchor: just print it
    assert load_public_key(enrolled / "host.key.pub")


def test_show_exits_1_for_a_cert_that_is_not_valid_now(enrolled: Path, printed: list[dict]) -> None:
    now = int(time.time())
    expired = issue_certificate(load_private_key(enrolled / "ca" / "ca.key"), "host-1",
                                raw_public(load_public_key(enrolled / "host.key.pub")),
                                not_before=now - 7200, not_after=now - 3600)
    write_public_file(enrolled / "old.cert", certificate_file_bytes(expired))
    assert run("--json", "ca", "show", "--cert", str(enrolled / "old.cert"),
               "--ca-file", str(enrolled / "ca" / "ca.pub")) == 1
    assert printed[-1]["verified"] == "signed by the trust anchor, but NOT valid now"
