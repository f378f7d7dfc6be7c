"""Tamper-evident host records against a real etcd.

With a trust anchor, records written straight into etcd (etcdctl / a raw etcd3 client, as
an attacker with etcd write access would) are never peers, are counted with a reason,
and never lose their key to a claim; validly signed records are peers. Without an
anchor, nothing changes.
"""

from __future__ import annotations

import ipaddress
import json
import subprocess
import time
from pathlib import Path

import etcd3
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ipam.config import ClusterConfig
from overlayd.cluster.diff import HostAdded, HostRemoved
from overlayd.cluster.keys import KeyLayout
from overlayd.cluster.records import HostRecord
from overlayd.errors import ConflictError
from overlayd.lab.etcd_process import EtcdProcess
from overlayd.trust.certs import TrustAnchor, certificate_file_bytes, issue_certificate
from overlayd.trust.config import TrustConfig, load_host_trust
from overlayd.trust.errors import RejectReason
from overlayd.trust.keyfiles import create_private_key, public_pem, raw_public, write_public_file
from overlayd.trust.signing import RecordSigner, RecordVerifier
from tests.integration.etcd_fixture import connected, following, receive

pytestmark = pytest.mark.integration

CONFIG = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/16"), subnet_len=24)
CA = Ed25519PrivateKey.generate()
ROGUE_CA = Ed25519PrivateKey.generate()
ANCHOR = TrustAnchor.from_public_keys([CA.public_key()])


def record(node: str, host: int) -> HostRecord:
    backend = {"type": "vxlan", "vtep_mac": f"02:00:00:00:00:{host:02x}"}
    return HostRecord(node, ipaddress.ip_address(f"198.18.0.{host}"), backend)


def identity(node: str, *, ca: Ed25519PrivateKey = CA, valid: tuple[int, int] = (-300, 86400)) -> RecordSigner:
    key = Ed25519PrivateKey.generate()
    now = int(time.time())
    cert = issue_certificate(ca, node, raw_public(key.public_key()),
                             not_before=now + valid[0], not_after=now + valid[1])
    return RecordSigner(key, cert)



def etcdctl_put(server: EtcdProcess, key: str, value: bytes, *, lease: int = 0) -> None:
    on_lease = [f"--lease={lease:x}"] if lease else []
    subprocess.run(["etcdctl", f"--endpoints={server.endpoint}", "put", *on_lease, key, value.decode()],
                   check=True, capture_output=True, timeout=30, env={"ETCDCTL_API": "3", "PATH": "/usr/bin:/bin"})


def test_listing_with_anchor_returns_only_verified_hosts(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: etcd3.Etcd3Client, tmp_path: Path,
) -> None:
    layout = KeyLayout(etcd_prefix)
    # host-1 is set up the way the daemon does it: files on disk, loaded by load_host_trust.
    key = create_private_key(tmp_path / "state" / "host.key")
    write_public_file(tmp_path / "ca.pub", public_pem(CA.public_key()))
    now = int(time.time())
    cert = issue_certificate(CA, "host-1", raw_public(key.public_key()), not_before=now - 60, not_after=now + 3600)
    write_public_file(tmp_path / "host.cert", certificate_file_bytes(cert))
    trust = load_host_trust(TrustConfig(ca_file=tmp_path / "ca.pub", host_cert=tmp_path / "host.cert"),
                            node="host-1", state_dir=tmp_path / "state")
    signer_1 = trust.signer
    assert signer_1 is not None

    def key_of(subnet: str) -> str:
        return layout.subnet_key(ipaddress.ip_network(subnet))

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix, signer=signer_1, verifier=trust.verifier) as host_1:
            lease_1 = await host_1.acquire(CONFIG, record("host-1", 11))
        stored = json.loads(raw.get(layout.subnet_key(lease_1.subnet))[0])
        assert stored["cert"]["node"] == "host-1" and "sig" in stored

        # The attacker's writes, each aimed at one check, on an etcd lease of the attacker's, at
        # subnets host-1 did not get (its record overwritten would change what is checked).
        at = [n for n in (f"10.244.{i}.0/24" for i in range(200, 208)) if ipaddress.ip_network(n) != lease_1.subnet]
        lease = raw.lease(300)
        forged = {
            at[0]: record("evil", 66).to_json(),  # unsigned
            at[1]: json.dumps({  # host-1's signature, attacker's address
                **json.loads(signer_1(key_of(at[1]), record("host-1", 11), lease.id)),
                "public_ip": "198.18.0.66",
            }).encode(),
            at[2]: signer_1(key_of(at[2]), record("host-1", 11), lease_1.lease_id),  # replayed
            at[3]: identity("evil", ca=ROGUE_CA)(key_of(at[3]), record("evil", 66), lease.id),
            at[4]: identity("old", valid=(-7200, -3600))(key_of(at[4]), record("old", 67), lease.id),
            at[5]: json.dumps({  # host-2 (certified) signs a record claiming to be host-1
                **json.loads(identity("host-2")(key_of(at[5]), record("host-2", 12), lease.id)),
                "node": "host-1",
            }).encode(),
        }
        for subnet, value in forged.items():
            raw.put(key_of(subnet), value, lease=lease)
        # A validly signed record on no lease at all: it would never expire.
        forged[at[6]] = signer_1(key_of(at[6]), record("host-1", 11), lease.id)
        raw.put(key_of(at[6]), forged[at[6]])

        observer = RecordVerifier(ANCHOR)
        async with connected(etcd_server, etcd_prefix, verifier=observer) as cluster:
            listing = await cluster.list_leases(CONFIG)
        assert [(l.subnet, l.record.node) for l in listing.leases] == [(lease_1.subnet, "host-1")]
        assert listing.taken == {lease_1.subnet, *map(ipaddress.ip_network, forged)}
        assert observer.rejected == {
            RejectReason.UNSIGNED: 1, RejectReason.BAD_SIGNATURE: 1, RejectReason.REPLAYED: 1,
            RejectReason.UNTRUSTED_CERT: 1, RejectReason.CERT_EXPIRED: 1, RejectReason.NODE_MISMATCH: 1,
            RejectReason.NO_LEASE: 1,
        }
        assert set(listing.refused) == {key_of(subnet) for subnet in forged}
        reasons = "\n".join(listing.rejected)
        for subnet, reason in [(at[0], "unsigned"), (at[1], "bad_signature"),
                               (at[2], "replayed"), (at[3], "untrusted_cert"),
                               (at[4], "cert_expired"), (at[5], "node_mismatch"),
                               (at[6], "no_lease")]:
            assert f"{subnet}: record of" in reasons and f"({reason})" in reasons

        # Without the anchor, the same cluster shows every forged entry as a host (the old behaviour).
        async with connected(etcd_server, etcd_prefix) as plain:
            assert len((await plain.list_leases(CONFIG)).leases) == 8

    trio.run(main)


def test_watch_with_anchor_ignores_forged_puts_and_follows_signed_hosts(
    etcd_server: EtcdProcess, etcd_prefix: str,
) -> None:
    layout = KeyLayout(etcd_prefix)
    forged_key = layout.subnet_key(ipaddress.ip_network("10.244.77.0/24"))
    observer = RecordVerifier(ANCHOR)
    signer_2 = identity("host-2")

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix, verifier=observer) as cluster:
            async with following(cluster, CONFIG) as (initial, batches):
                assert not initial.peers

                etcdctl_put(etcd_server, forged_key, record("evil", 66).to_json())
                batch = await receive(batches)
                assert batch.events == () and not batch.peers
                assert len(batch.rejected) == 1 and "(unsigned)" in batch.rejected[0]
                assert observer.rejected == {RejectReason.UNSIGNED: 1}

                async with connected(etcd_server, etcd_prefix, signer=signer_2, verifier=RecordVerifier(ANCHOR)) as h2:
                    lease_2 = await h2.acquire(CONFIG, record("host-2", 12))
                batch = await receive(batches)
                assert batch.events == (HostAdded(batch.peers[lease_2.subnet]),)
                assert batch.peers[lease_2.subnet].record == record("host-2", 12)

                # Re-pointing host-2's subnet at the attacker's address drops the peer; it never
                # redirects its traffic.
                assert lease_2.lease_id is not None
                tampered = json.loads(signer_2(layout.subnet_key(lease_2.subnet), record("host-2", 12),
                                               lease_2.lease_id))
                etcdctl_put(etcd_server, layout.subnet_key(lease_2.subnet),
                            json.dumps({**tampered, "public_ip": "198.18.0.66"}).encode(), lease=lease_2.lease_id)
                batch = await receive(batches)
                assert [type(e) for e in batch.events] == [HostRemoved] and not batch.peers
                assert "(bad_signature)" in batch.rejected[0]
                assert observer.rejected == {RejectReason.UNSIGNED: 1, RejectReason.BAD_SIGNATURE: 1}

    trio.run(main)


def test_claims_never_overwrite_an_unverifiable_key(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: etcd3.Etcd3Client,
) -> None:
    small = ClusterConfig(network=ipaddress.ip_network("10.244.0.0/23"), subnet_len=24)  # two subnets
    layout = KeyLayout(etcd_prefix)
    first = ipaddress.ip_network("10.244.0.0/24")
    # A forged record claiming host-1's name sits on the subnet host-1 had before.
    forged = record("host-1", 66).to_json()
    raw.put(layout.subnet_key(first), forged)
    signer_1, signer_2 = identity("host-1"), identity("host-2")

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix, signer=signer_1, verifier=RecordVerifier(ANCHOR)) as h1:
            lease_1 = await h1.acquire(small, record("host-1", 11), previous=first)
        assert lease_1.subnet == ipaddress.ip_network("10.244.1.0/24")  # not the forged key
        assert raw.get(layout.subnet_key(first))[0] == forged

        async with connected(etcd_server, etcd_prefix, signer=signer_2, verifier=RecordVerifier(ANCHOR)) as h2:
            with pytest.raises(ConflictError, match="no free"):
                await h2.acquire(small, record("host-2", 12))
        assert raw.get(layout.subnet_key(first))[0] == forged

        # host-1 restarting takes its own signed key over, in place.
        async with connected(etcd_server, etcd_prefix, signer=signer_1, verifier=RecordVerifier(ANCHOR)) as h1:
            again = await h1.acquire(small, record("host-1", 11), previous=lease_1.subnet)
        assert again.subnet == lease_1.subnet and again.lease_id != lease_1.lease_id

    trio.run(main)


def test_without_an_anchor_behaviour_is_unchanged(
    etcd_server: EtcdProcess, etcd_prefix: str, raw: etcd3.Etcd3Client,
) -> None:
    layout = KeyLayout(etcd_prefix)
    unsigned_subnet = ipaddress.ip_network("10.244.5.0/24")
    raw.put(layout.subnet_key(unsigned_subnet), record("host-1", 11).to_json())

    async def main() -> None:
        async with connected(etcd_server, etcd_prefix) as plain:
            # An unsigned record naming us is ours to take over, as before.
            lease_1 = await plain.acquire(CONFIG, record("host-1", 11), previous=unsigned_subnet)
            assert lease_1.subnet == unsigned_subnet
            assert set(json.loads(raw.get(layout.subnet_key(unsigned_subnet))[0])) == {"node", "public_ip", "backend"}
        # A host that signs (host_cert without ca_file) is still read by hosts that do not verify.
        async with connected(etcd_server, etcd_prefix, signer=identity("host-2")) as signing:
            lease_2 = await signing.acquire(CONFIG, record("host-2", 12))
        async with connected(etcd_server, etcd_prefix) as plain:
            listing = await plain.list_leases(CONFIG)
        assert {l.subnet: l.record for l in listing.leases} == {
            lease_1.subnet: record("host-1", 11), lease_2.subnet: record("host-2", 12),
        }
        assert listing.rejected == ()

    trio.run(main)
