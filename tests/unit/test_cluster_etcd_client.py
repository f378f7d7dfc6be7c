"""EtcdClient settings checks (no etcd needed: gRPC channels connect lazily)."""

from pathlib import Path

import pytest

from overlayd.cluster.etcd import EtcdClient
from overlayd.errors import ConfigError


def test_several_endpoints_and_ipv6() -> None:
    client = EtcdClient(["http://127.0.0.1:2379", "http://[::1]:2379", "http://etcd.example"], timeout=1.5)
    try:
        assert client.urls == ("http://127.0.0.1:2379", "http://[::1]:2379", "http://etcd.example")
        assert client.timeout == 1.5
    finally:
        client.close()


@pytest.mark.parametrize("url", ["127.0.0.1:2379", "ftp://127.0.0.1:2379", "http://", "http://host:notaport"])
def test_bad_endpoint_urls(url: str) -> None:
    with pytest.raises(ConfigError, match="etcd endpoint"):
        EtcdClient([url])


def test_no_endpoints() -> None:
    with pytest.raises(ConfigError):
        EtcdClient([])


def test_tls_files_with_plain_http_refused(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="plain http"):
        EtcdClient(["http://127.0.0.1:2379"], ca_file=ca)


def test_missing_tls_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ca.pem"):
        EtcdClient(["https://127.0.0.1:2379"], ca_file=tmp_path / "ca.pem")


def test_client_cert_needs_its_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_bytes(b"x")
    with pytest.raises(ConfigError, match="go together"):
        EtcdClient(["https://127.0.0.1:2379"], cert_file=cert)


def test_https_without_ca_uses_system_roots() -> None:
    EtcdClient(["https://127.0.0.1:2379"]).close()
