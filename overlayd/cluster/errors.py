"""Errors of the cluster layer; all are ClusterErrors, so the daemon and CLI handle them as one kind."""

from __future__ import annotations

from ipaddress import IPv4Network, IPv6Network

from overlayd.errors import ClusterError, ConflictError


# RecordError.reason: why an entry was skipped, from a fixed set (a metric label, never etcd data).
MALFORMED = "malformed"  # the key or value does not parse
BAD_SUBNET = "bad_subnet"  # a subnet that is not one of the cluster's host subnets
BAD_ENDPOINT = "bad_endpoint"  # public_ip is no address a peer could send to (loopback, broadcast...)


class Rejection(str):
    """The text of a RecordError that also knows its reason: code that keeps only str(exc),
    such as a listing's `rejected`, keeps the reason with it."""

    reason: str

    def __new__(cls, text: str, reason: str) -> Rejection:
        rejection = super().__new__(cls, text)
        rejection.reason = reason
        return rejection


class RecordError(ClusterError):
    """A key or value read from etcd is unusable; callers count it (by `reason`) and skip the entry."""

    reason: str = MALFORMED

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __str__(self) -> Rejection:
        return Rejection(super().__str__(), str(self.reason))


class LeaseLost(ClusterError):
    """The etcd lease holding our subnet expired or was revoked, or our key is gone from it."""

    def __init__(self, lease_id: int, what: str = "expired or was revoked") -> None:
        self.lease_id = lease_id
        super().__init__(f"etcd lease {lease_id:x} {what}")


class WatchCompacted(ClusterError):
    """The watch's start revision was compacted away: the caller must re-list."""

    def __init__(self, compact_revision: int) -> None:
        self.compact_revision = compact_revision
        super().__init__(f"watch start revision compacted (etcd keeps history from revision {compact_revision})")


class SubnetTaken(ConflictError):
    """The subnet this host held is now held by another host (or by a record we cannot read)."""

    def __init__(self, subnet: IPv4Network | IPv6Network, holder: str | None) -> None:
        self.subnet = subnet
        self.holder = holder
        who = f"host {holder!r}" if holder else "an unreadable record"
        super().__init__(f"subnet {subnet} is now held by {who}")
