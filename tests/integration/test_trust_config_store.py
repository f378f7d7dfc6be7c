"""Writing and reading a CA-signed cluster config against a real etcd (store.put_config / get_config)."""

from __future__ import annotations

import ipaddress
import json

import etcd3
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ipam.config import ClusterConfig
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.keys import KeyLayout
from overlayd.errors import ConflictError
from overlayd.lab.etcd_process import EtcdProcess
from overlayd.trust.certs import TrustAnchor
from overlayd.trust.configsig import ConfigSigner, ConfigVerifier
from overlayd.trust.errors import UntrustedConfig
from tests.integration.etcd_fixture import connected, etcd_config
from tests.integration.test_trust import record

pytestmark = pytest.mark.integration

CA = Ed25519PrivateKey.generate()
CONFIG = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/16"), subnet_len=24)


def test_signing_an_unchanged_config_needs_no_force_and_verifiers_check_it(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: etcd3.Etcd3Client,
) -> None:
    key = KeyLayout(etcd_prefix).config
    signer = ConfigSigner(CA)

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as cluster:
            assert await cluster.put_config(CONFIG)
            await cluster.acquire(CONFIG, record("h1", 11))
            # A live lease: changing the config needs --force, but signing the same one does not.
            with pytest.raises(ConflictError):
                await cluster.put_config(ClusterConfig(network=ipaddress.ip_network("10.99.0.0/16")))
            assert await cluster.put_config(CONFIG, signer=signer)
            assert not await cluster.put_config(CONFIG, signer=signer)  # deterministic: unchanged
            assert not await cluster.put_config(CONFIG)  # a plain writer sees the same config
            assert (await cluster.get_config()) == CONFIG  # plain readers ignore the signature
        assert json.loads(raw.get(key)[0])["signature"]["issuer"] == signer.issuer

        anchor = TrustAnchor.from_public_keys([CA.public_key()])
        verifying = await ClusterClient.connect(etcd_config(etcd_server, etcd_prefix),
                                                config_verifier=ConfigVerifier(anchor))
        try:
            assert await verifying.get_config() == CONFIG
            raw.put(key, CONFIG.to_json())
            with pytest.raises(UntrustedConfig, match="not signed"):
                await verifying.get_config()
        finally:
            await verifying.aclose()

    trio.run(main)
