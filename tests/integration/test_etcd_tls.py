"""overlayd's etcd connection over mutual TLS, against a real etcd that demands client certificates.

Certificates are made here with `cryptography`: a CA, a server certificate for 127.0.0.1,
a client certificate from that CA, and a client certificate from an unrelated CA.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ipam.config import ClusterConfig
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.records import HostRecord
from overlayd.config import EtcdConfig
from overlayd.errors import ClusterError, ConfigError, OverlaydError
from overlayd.lab.etcd_process import EtcdProcess, EtcdTls
from tests.integration.etcd_fixture import following, free_ports

pytestmark = pytest.mark.integration

CONFIG = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/16"), subnet_len=24)
RECORD = HostRecord("tls-host", ipaddress.ip_address("198.18.0.11"), {"type": "vxlan", "vtep_mac": "02:00:00:00:00:0b"})


# --- certificates -------------------------------------------------------------------


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


class Authority:
    """A throwaway CA that writes PEM files into a directory."""

    def __init__(self, directory: Path, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.subject = subject
        self.cert = (
            self._builder(subject, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False),
                           critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.ca_file = directory / f"{name}-ca.pem"
        self.ca_file.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject)
                .issuer_name(getattr(self, "subject", subject)).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1)))

    def issue(self, common_name: str, *, server: bool) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        # etcd 3.4's gRPC gateway dials etcd itself with the server certificate: it needs clientAuth too.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH] if server \
            else [ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = (self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]), key.public_key())
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{common_name}.pem", self.directory / f"{common_name}-key.pem")
        issued.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        issued.key.touch(mode=0o600)
        issued.key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
        return issued


@dataclass(frozen=True)
class TlsEtcd:
    server: EtcdProcess
    ca: Authority
    client: Issued
    rogue_ca: Authority
    rogue_client: Issued


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsEtcd]:
    base = tmp_path_factory.mktemp("etcd-tls")
    pki = base / "pki"
    pki.mkdir(mode=0o700)
    ca = Authority(pki, "cluster")
    server_cert = ca.issue("etcd-server", server=True)
    client = ca.issue("overlayd-client", server=False)
    rogue_ca = Authority(pki, "rogue")
    rogue_client = rogue_ca.issue("rogue-client", server=False)
    client_port, peer_port = free_ports(2)
    tls = EtcdTls(cert_file=server_cert.cert, key_file=server_cert.key, ca_file=ca.ca_file,
                  probe_cert_file=client.cert, probe_key_file=client.key)
    server = EtcdProcess(base / "data", "127.0.0.1", client_port, peer_port, log_path=base / "etcd.log", tls=tls)
    server.start()
    try:
        yield TlsEtcd(server, ca, client, rogue_ca, rogue_client)
    finally:
        server.stop()


def etcd_config(endpoint: str, *, ca: Path | None, cert: Path | None = None, key: Path | None = None) -> EtcdConfig:
    prefix = f"/t{secrets.token_hex(3)}/network"
    return EtcdConfig(endpoints=(endpoint,), prefix=prefix, ca_file=ca, cert_file=cert, key_file=key, timeout=3.0)


def connect_error(config: EtcdConfig) -> OverlaydError:
    """The error ClusterClient.connect raises for config (the test fails if it connects)."""

    async def main() -> OverlaydError:
        try:
            cluster = await ClusterClient.connect(config)
        except OverlaydError as exc:
            return exc
        await cluster.aclose()
        raise AssertionError(f"connected with {config}")

    return trio.run(main)


# --- tests -------------------------------------------------------------------------------


def test_server_runs_https_and_demands_client_certificates(tls_etcd: TlsEtcd) -> None:
    assert tls_etcd.server.endpoint.startswith("https://127.0.0.1:")
    argv = tls_etcd.server.command()
    assert "--client-cert-auth" in argv and argv[argv.index("--trusted-ca-file") + 1] == str(tls_etcd.ca.ca_file)


def test_client_with_certificate_writes_config_and_claims_a_subnet(tls_etcd: TlsEtcd) -> None:
    config = etcd_config(tls_etcd.server.endpoint, ca=tls_etcd.ca.ca_file, cert=tls_etcd.client.cert,
                         key=tls_etcd.client.key)

    async def main() -> None:
        cluster = await ClusterClient.connect(config, lease_ttl=30)
        try:
            assert await cluster.put_config(CONFIG) is True
            assert await cluster.get_config() == CONFIG
            lease = await cluster.acquire(CONFIG, RECORD)
            assert CONFIG.contains_subnet(lease.subnet)
            listed = (await cluster.list_leases(CONFIG)).leases
            assert [(l.subnet, l.record) for l in listed] == [(lease.subnet, RECORD)]
            # The watch runs on its own gRPC stream over the same TLS channel.
            async with following(cluster, CONFIG) as (initial, _batches):
                assert set(initial.peers) == {lease.subnet}
            assert await cluster.give_up(lease.subnet, RECORD)
            assert (await cluster.list_leases(CONFIG)).leases == ()
        finally:
            await cluster.aclose()

    trio.run(main)


def test_client_without_certificate_is_refused_with_a_cluster_error(tls_etcd: TlsEtcd) -> None:
    error = connect_error(etcd_config(tls_etcd.server.endpoint, ca=tls_etcd.ca.ca_file))
    assert type(error) is ClusterError
    assert tls_etcd.server.endpoint in str(error) and "\n" not in str(error)


def test_client_certificate_from_another_ca_is_refused(tls_etcd: TlsEtcd) -> None:
    error = connect_error(etcd_config(tls_etcd.server.endpoint, ca=tls_etcd.ca.ca_file,
                                      cert=tls_etcd.rogue_client.cert, key=tls_etcd.rogue_client.key))
    assert type(error) is ClusterError
    assert tls_etcd.server.endpoint in str(error)


def test_server_not_signed_by_the_trusted_ca_is_refused(tls_etcd: TlsEtcd) -> None:
    # The client trusts only the rogue CA, so the genuine server's certificate does not verify.
    error = connect_error(etcd_config(tls_etcd.server.endpoint, ca=tls_etcd.rogue_ca.ca_file,
                                      cert=tls_etcd.client.cert, key=tls_etcd.client.key))
    assert type(error) is ClusterError


def test_plain_http_to_the_tls_port_is_refused(tls_etcd: TlsEtcd) -> None:
    endpoint = tls_etcd.server.endpoint.replace("https://", "http://")
    error = connect_error(etcd_config(endpoint, ca=None))
    assert type(error) is ClusterError


@pytest.mark.parametrize("problem", ["missing cert file", "cert without key", "tls files on http"])
def test_bad_tls_options_are_config_errors(tls_etcd: TlsEtcd, problem: str) -> None:
    endpoint, client = tls_etcd.server.endpoint, tls_etcd.client
    config = {
        "missing cert file": etcd_config(endpoint, ca=tls_etcd.ca.ca_file, cert=client.cert.with_name("nope.pem"),
                                         key=client.key),
        "cert without key": etcd_config(endpoint, ca=tls_etcd.ca.ca_file, cert=client.cert),
        "tls files on http": etcd_config(endpoint.replace("https://", "http://"), ca=tls_etcd.ca.ca_file,
                                         cert=client.cert, key=client.key),
    }[problem]
    assert isinstance(connect_error(config), ConfigError)
