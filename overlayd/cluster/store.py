"""Cluster state operations on etcd, blocking: config, listings, subnet claims and cooldown.

flannel's subnet.Manager without its exits. Claims are etcd transactions ("create the
key only if it is absent"), so two hosts never hold one subnet; losing a race means
listing again and choosing again. A daemon that restarts takes its old key over with a
transaction on the key's mod_revision, so the key never disappears and peers see at most
a HostChanged. The key layout is documented in keys.py.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass, replace
from types import MappingProxyType

from ipam.config import ClusterConfig
from ipam.errors import OutOfSubnets
from ipam.subnets import choose_subnet
from overlayd.cluster.configdoc import ConfigSigner, ConfigVerifier, decode_config_untrusted, encode_config
from overlayd.cluster.errors import LeaseLost, RecordError, SubnetTaken
from overlayd.cluster.etcd import EtcdClient, KeyValue, WatchStream
from overlayd.cluster.keys import IPNetwork, KeyLayout
from overlayd.cluster.records import (
    HostRecord,
    Lease,
    LeaseVerifier,
    RecordEncoder,
    parse_host_record_untrusted,
    parse_lease_untrusted,
)
from overlayd.errors import ClusterError, ConfigError, ConflictError, NotFoundError

log = logging.getLogger(__name__)

# Every failed claim means another host just took a subnet, so this bound is only reached
# under absurd contention (or a bug); the caller retries later instead of spinning here.
_MAX_CLAIM_ATTEMPTS = 64
_MAX_CONFIG_ATTEMPTS = 5


@dataclass(frozen=True)
class Listing:
    """The subnet leases as of one etcd revision."""

    revision: int
    leases: tuple[Lease, ...]  # the usable ones, by subnet
    taken: frozenset[IPNetwork]  # every subnet that has a key, usable record or not
    rejected: tuple[str, ...]  # why each skipped entry was skipped
    refused: Mapping[str, str]  # key -> why, for the keys among them that hold a refused record


def key_text(key: bytes) -> str:
    """An etcd key for messages and maps (keys are untrusted bytes)."""
    return key.decode("utf-8", "replace")


def lease_from_kv(
    layout: KeyLayout, config: ClusterConfig, kv: KeyValue, verifier: LeaseVerifier | None = None
) -> Lease:
    """Parse one subnet key read from etcd; RecordError if it is unusable (or fails verifier)."""
    assert config.subnet_len is not None  # resolved by ClusterConfig
    lease = parse_lease_untrusted(
        kv.key,
        kv.value,
        layout=layout,
        network=config.network,
        subnet_len=config.subnet_len,
        lease_id=kv.lease_id or None,
        mod_revision=kv.mod_revision,
        verifier=verifier,
    )
    return replace(lease, create_revision=kv.create_revision)


class SubnetStore:
    """encoder/verifier: optional trust hooks (overlayd/trust): how our record is written under
    a key (e.g. signed), and a check every record read must pass to count as a lease."""

    def __init__(
        self,
        etcd: EtcdClient,
        layout: KeyLayout,
        *,
        lease_ttl: int,
        encoder: RecordEncoder | None = None,
        verifier: LeaseVerifier | None = None,
        config_verifier: ConfigVerifier | None = None,
    ) -> None:
        self.etcd = etcd
        self.layout = layout
        self.lease_ttl = lease_ttl
        self._rng = random.SystemRandom()  # which free subnet a claim picks
        self.encoder = encoder
        self.verifier = verifier
        self.config_verifier = config_verifier  # the config must pass it to be returned (configdoc.py)
        self._unknown_warned: list[str] = []  # the unknown config fields last warned about

    # -- cluster config ------------------------------------------------------------------

    def get_config(self) -> ClusterConfig:
        kv = self.etcd.get(self.layout.config)
        if kv is None:
            raise NotFoundError(f"no cluster config at {self.layout.config} (run `overlayctl network init`)")
        config, signature = decode_config_untrusted(kv.value, where=self.layout.config)
        if self.config_verifier is not None:
            self.config_verifier(self.layout.config, config, signature)  # unknown fields included
        unknown = config.unknown_fields()
        if unknown and unknown != self._unknown_warned:  # once per set, not at every re-read
            log.warning("cluster config at %s has fields this overlayd does not know, ignored: %s "
                        "(written by a newer version? upgrade this host)", self.layout.config, ", ".join(unknown))
        self._unknown_warned = unknown
        return config

    def put_config(self, config: ClusterConfig, *, force: bool = False, signer: ConfigSigner | None = None) -> bool:
        """Store the cluster config (signed by `signer` if given); returns False when an identical
        one (with an identical signature, when signing) is already there.

        A different existing config is replaced only while no subnet lease exists (checked
        in the same transaction), unless force: hosts holding leases were set up for it.
        Signing an unchanged config changes nothing for those hosts, so it needs no force.
        """
        key = self.layout.config
        data = encode_config(config, signer(key, config) if signer else None)
        for _ in range(_MAX_CONFIG_ATTEMPTS):
            current = self.etcd.get(self.layout.config)
            same = current is not None and self._same_config(current.value, config)
            if same and (signer is None or current.value == data):  # Ed25519 signatures are deterministic
                return False
            guard = None if force or same or current is None else self.layout.subnets
            expected = current.mod_revision if current else 0
            result = self.etcd.put_if(self.layout.config, data, mod_revision=expected, require_empty=guard)
            if result.succeeded:
                return True
            now = result.current.mod_revision if result.current else 0
            holders = len(self.etcd.get_prefix(self.layout.subnets).kvs) if now == expected else 0
            if holders:  # the config did not move, so the lease guard failed
                raise ConflictError(
                    f"cluster config at {self.layout.config} differs and {holders} host subnet lease(s) "
                    "exist; stop those hosts first or force the change"
                )
            # Someone else wrote the config, or the last lease expired, meanwhile: look again.
        raise ClusterError(f"cluster config at {self.layout.config} keeps changing under us; try again")

    def _same_config(self, data: bytes, config: ClusterConfig) -> bool:
        try:
            return decode_config_untrusted(data, where=self.layout.config)[0] == config
        except ConfigError:
            return False  # a broken stored config is "different": replacing it follows the same rule

    # -- listings ------------------------------------------------------------------------

    def list_leases(self, config: ClusterConfig) -> Listing:
        listed = self.etcd.get_prefix(self.layout.subnets)
        leases, taken, rejected, refused = [], set(), [], {}
        for kv in listed.kvs:
            try:
                taken.add(self.layout.subnet_of_key_untrusted(kv.key))
                leases.append(lease_from_kv(self.layout, config, kv, self.verifier))
            except RecordError as exc:
                rejected.append(str(exc))
                refused[key_text(kv.key)] = str(exc)
        return Listing(listed.revision, tuple(leases), frozenset(taken), tuple(rejected),
                       MappingProxyType(refused))

    def list_cooling(self) -> frozenset[IPNetwork]:
        cooling = set()
        for kv in self.etcd.get_prefix(self.layout.cooldown).kvs:
            try:
                cooling.add(self.layout.cooling_subnet_of_key_untrusted(kv.key))
            except RecordError as exc:
                log.debug("skipping cooldown key: %s", exc)
        return frozenset(cooling)

    def watch(self, start_revision: int) -> WatchStream:
        return self.etcd.watch(self.layout.subnets, start_revision)

    # -- claims --------------------------------------------------------------------------

    def acquire(self, config: ClusterConfig, record: HostRecord, *, previous: IPNetwork | None = None) -> Lease:
        """Claim a subnet for `record` under a new etcd lease of lease_ttl seconds.

        previous (the subnet from the daemon's state) is kept when possible: taken over
        in place if its key still names record.node, claimed again if it is free.
        Raises ConflictError when every subnet is taken, ClusterError when etcd fails.
        """
        if previous is not None and not config.contains_subnet(previous):
            log.warning("previous subnet %s does not fit cluster network %s; choosing anew", previous, config.network)
            previous = None
        lease_id = self.etcd.grant(self.lease_ttl)
        try:
            return self._claim(config, record, lease_id, previous)
        except Exception:
            self._revoke_quietly(lease_id)  # deletes whatever the failed attempt may have written
            raise

    def _value(self, key: str, record: HostRecord, lease_id: int) -> bytes:
        return self.encoder(key, record, lease_id) if self.encoder else record.to_json()

    def _claim(self, config: ClusterConfig, record: HostRecord, lease_id: int, previous: IPNetwork | None) -> Lease:
        for _ in range(_MAX_CLAIM_ATTEMPTS):
            if previous is not None:
                lease = self._take_over(previous, record, lease_id)
                if lease is not None:
                    return lease
            listing = self.list_leases(config)
            try:
                subnet = choose_subnet(
                    config, None, listing.taken, previous=previous, cooling=self.list_cooling(), rng=self._rng
                )
            except OutOfSubnets as exc:
                raise ConflictError(str(exc)) from None
            key = self.layout.subnet_key(subnet)
            result = self.etcd.put_if(key, self._value(key, record, lease_id), mod_revision=0, lease_id=lease_id)
            # A key already on our lease means an earlier try of this very transaction was applied
            # but its answer was lost (the client moved on to the next endpoint).
            if result.current is not None and (result.succeeded or result.current.lease_id == lease_id):
                log.info("claimed subnet %s for %s (lease %x)", subnet, record.node, lease_id)
                return Lease(subnet, record, lease_id, result.current.mod_revision, result.current.create_revision)
            log.info("lost the race for subnet %s; choosing again", subnet)
        raise ClusterError(f"no subnet claimed after {_MAX_CLAIM_ATTEMPTS} attempts (heavy contention)")

    def reclaim(self, config: ClusterConfig, record: HostRecord, subnet: IPNetwork) -> Lease:
        """Claim `subnet` again for a host that lost its lease on it, under a new etcd lease.

        Our own surviving key is taken over in place; a free subnet is claimed even while it
        cools down (it cooled because it was ours). Never another subnet: the host's bridge
        and pods are numbered in this one. Raises SubnetTaken when another host holds it (we
        then write nothing), ConflictError when it no longer fits the cluster network,
        ClusterError when etcd fails.
        """
        if not config.contains_subnet(subnet):
            raise ConflictError(f"subnet {subnet} is not a host subnet of cluster network {config.network} any more")
        key = self.layout.subnet_key(subnet)
        current = self.etcd.get(key)
        if current is not None and self._holder(current) != record.node:
            raise SubnetTaken(subnet, self._holder(current))
        lease_id = self.etcd.grant(self.lease_ttl)
        try:
            if current is not None:
                lease = self._take_over(subnet, record, lease_id)
                if lease is not None:
                    return lease
            result = self.etcd.put_if(key, self._value(key, record, lease_id), mod_revision=0, lease_id=lease_id)
            if result.current is not None and (result.succeeded or result.current.lease_id == lease_id):
                log.info("claimed subnet %s again for %s (lease %x)", subnet, record.node, lease_id)
                return Lease(subnet, record, lease_id, result.current.mod_revision, result.current.create_revision)
            # Another host took it between our read and our write.
            raise SubnetTaken(subnet, self._holder(result.current) if result.current else None)
        except Exception:
            self._revoke_quietly(lease_id)
            raise

    def find_own(self, config: ClusterConfig, record: HostRecord) -> IPNetwork | None:
        """The subnet whose key names this host (node name and public IP), for a host that
        lost its saved state: it takes that subnet back instead of claiming a second one.
        Recognised whatever the record's signature says; of several, the oldest claim."""
        mine = []
        for kv in self.etcd.get_prefix(self.layout.subnets).kvs:
            try:
                subnet = self.layout.subnet_of_key_untrusted(kv.key)
                holder = parse_host_record_untrusted(kv.value)
            except RecordError:
                continue
            if (holder.node, holder.public_ip) == (record.node, record.public_ip) and config.contains_subnet(subnet):
                mine.append((kv.create_revision, subnet))
        return min(mine, key=lambda found: found[0])[1] if mine else None

    def give_up(self, subnet: IPNetwork, record: HostRecord) -> bool:
        """Release `subnet` if its key names this host (the operator renumbers it); False if not ours."""
        kv = self.etcd.get(self.layout.subnet_key(subnet))
        if kv is None or self._holder(kv) != record.node or not kv.lease_id:
            return False
        self.release(Lease(subnet, record, kv.lease_id))
        log.info("gave up subnet %s of %s (lease %x)", subnet, record.node, kv.lease_id)
        return True

    @staticmethod
    def _holder(kv: KeyValue) -> str | None:
        """The node a subnet key's record names; None if the record is unreadable."""
        try:
            return parse_host_record_untrusted(kv.value).node
        except RecordError:
            return None

    def _take_over(self, subnet: IPNetwork, record: HostRecord, lease_id: int) -> Lease | None:
        """Move our own surviving key to the new lease, in place; None if it is not ours (any more)."""
        key = self.layout.subnet_key(subnet)
        kv = self.etcd.get(key)
        if kv is None:
            return None
        try:
            holder = parse_host_record_untrusted(kv.value)
        except RecordError:
            return None
        if not self._is_ours(key, kv, subnet, holder, record):
            return None
        result = self.etcd.put_if(key, self._value(key, record, lease_id), mod_revision=kv.mod_revision, lease_id=lease_id)
        if not result.succeeded or result.current is None:
            return None
        if kv.lease_id and kv.lease_id != lease_id:
            # The old lease now holds nothing; revoking it makes a stale twin daemon notice.
            self._revoke_quietly(kv.lease_id)
        log.info("took over subnet %s for %s (lease %x)", subnet, record.node, lease_id)
        return Lease(subnet, record, lease_id, result.current.mod_revision, result.current.create_revision)

    def _is_ours(self, key: str, kv: KeyValue, subnet: IPNetwork, holder: HostRecord, record: HostRecord) -> bool:
        """Whether a key's record is this host's own: by node name and public IP whatever its
        signature says (our certificate expired and was renewed, trust was switched on, the CA
        rotated: the key is still ours, and is signed anew when taken over); by node name alone
        when it verifies (this host's public IP changed)."""
        if holder.node != record.node:
            return False
        if holder.public_ip == record.public_ip or self.verifier is None:
            return True
        try:
            self.verifier(key, kv.value, Lease(subnet, holder, kv.lease_id or None))
        except RecordError:
            return False  # our name at another address, unverified: maybe forged, never overwritten
        return True

    def renew(self, lease: Lease) -> int:
        """Keep the lease alive; returns its TTL. Raises LeaseLost if the lease is gone, or if
        our key was deleted or moved to another lease (a live lease alone holds nothing)."""
        if lease.lease_id is None:
            raise ClusterError(f"lease for {lease.subnet} has no etcd lease id")
        ttl = self.etcd.keepalive(lease.lease_id)
        key = self.layout.subnet_key(lease.subnet)
        kv = self.etcd.get(key)
        if kv is None or kv.lease_id != lease.lease_id:
            raise LeaseLost(lease.lease_id, f"no longer holds the key of subnet {lease.subnet}")
        ours = self._value(key, lease.record, lease.lease_id)
        if kv.value != ours:
            # Someone wrote another value under our key and lease (an old record replayed, a
            # hand edit): peers would act on it. Write ours back; a lost race is seen next time.
            result = self.etcd.put_if(key, ours, mod_revision=kv.mod_revision, lease_id=lease.lease_id)
            log.warning("the record under %s was not the one this host wrote; %s", key,
                        "written back" if result.succeeded else "it changed again, checking at the next renewal")
        return ttl

    def release(self, lease: Lease) -> None:
        """Give the subnet up now (its key goes with the lease) and let it cool down."""
        if lease.lease_id is not None:
            self.etcd.revoke(lease.lease_id)
        self.cool_down(lease.subnet)

    def cool_down(self, subnet: IPNetwork) -> None:
        """Mark a freed subnet as cooling for lease_ttl seconds; a no-op if it already is."""
        key = self.layout.cooldown_key(subnet)
        if self.etcd.get(key) is not None:
            return
        lease_id = self.etcd.grant(self.lease_ttl)
        if not self.etcd.put_if(key, b"", mod_revision=0, lease_id=lease_id).succeeded:
            self._revoke_quietly(lease_id)  # another host marked it first

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.etcd.revoke(lease_id)
        except ClusterError as exc:
            log.warning("could not revoke etcd lease %x (it expires by itself): %s", lease_id, exc)
