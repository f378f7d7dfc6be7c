"""Blocking etcd access: endpoints, TLS, timeouts and error mapping around python3-etcd3.

This is the only module that talks gRPC. Every call has a deadline; when an endpoint is
unreachable the call moves on to the next one, and when all fail it raises ClusterError
naming each endpoint and why, never a raw gRPC error. Calls are safe from any thread.

We build etcd3's Endpoint ourselves: the stock client marks an endpoint that failed once
as unusable for 300 s ("Trying to use a failed node"), which would turn a short etcd
restart into a five-minute outage. We also run watches on our own gRPC stream: etcd3's
Watcher never reports a broken stream to its callbacks (its error path fails with a
NameError) and only notices a compacted start revision after its timeout.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import grpc
from etcd3 import etcdrpc, exceptions, transactions
from etcd3.client import Endpoint, MultiEndpointEtcd3Client
from etcd3.utils import prefix_range_end

from overlayd.cluster.errors import LeaseLost, WatchCompacted
from overlayd.errors import ClusterError, ConfigError

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
_DEFAULT_PORT = 2379
_GRPC_OPTIONS = [
    # Reconnect within a second once etcd is back (gRPC's default backoff grows to 120 s); the
    # minimum also bounds each connect attempt, so a SYN lost to a silent outage is retried soon.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Notice a dead peer under a long-lived watch; etcd refuses pings more often than every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    # Listings come in pages of LIST_PAGE keys, but a watch response or a page of big records
    # may still pass gRPC's default 4 MB; one oversized answer must not make etcd unreadable.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
]
# Keys per range request when listing: a page of ~1 kB records stays far below every limit.
LIST_PAGE = 1000
# Errors that say "this endpoint did not answer": try the next one.
_ENDPOINT_DOWN = (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError, exceptions.InternalServerError)
_ENDPOINT_DOWN_CODES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL)


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease_id: int


@dataclass(frozen=True)
class Range:
    """Keys under a prefix as of `revision` (watch from revision + 1 to miss nothing)."""

    revision: int
    kvs: tuple[KeyValue, ...]


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    current: KeyValue | None  # the key after the transaction (None: absent)


@dataclass(frozen=True)
class WatchEvent:
    kind: Literal["put", "delete"]
    kv: KeyValue  # for a delete: the key and the deleting revision


@dataclass(frozen=True)
class WatchChunk:
    revision: int
    events: tuple[WatchEvent, ...]


def _kv(kv: object) -> KeyValue:
    """Copy a protobuf mvccpb.KeyValue into our own value type."""
    return KeyValue(kv.key, kv.value, kv.create_revision, kv.mod_revision, kv.lease)  # type: ignore[attr-defined]


class _LeaseNotFound(ClusterError):
    """etcd answered NOT_FOUND, which it only does for a lease that does not exist."""


def _reason(exc: BaseException) -> str:
    """The most specific text for an etcd3 or gRPC failure (etcd3 hides the gRPC error in __context__)."""
    for err in (exc, exc.__context__):
        if isinstance(err, grpc.RpcError) and hasattr(err, "code"):
            return f"{err.code().name.lower()}: {err.details()}"
    return str(exc) or type(exc).__name__


def _read(path: Path | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"etcd {what} {path}: {exc.strerror}") from None


def _credentials(
    ca_file: Path | None, cert_file: Path | None, key_file: Path | None
) -> grpc.ChannelCredentials:
    if (cert_file is None) != (key_file is None):
        raise ConfigError("etcd client certificate and key go together")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca_file, "CA file"),  # None: the system's roots
        private_key=_read(key_file, "key file"),
        certificate_chain=_read(cert_file, "certificate file"),
    )


class WatchStream:
    """One watch on a key range from a start revision, read with blocking next_chunk() calls."""

    def __init__(self, url: str, channel: grpc.Channel, prefix: bytes, start_revision: int, timeout: float) -> None:
        self._url = url
        self._requests: queue.SimpleQueue[etcdrpc.WatchRequest | None] = queue.SimpleQueue()
        create = etcdrpc.WatchCreateRequest(
            key=prefix, range_end=prefix_range_end(prefix), start_revision=start_revision
        )
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._stream = etcdrpc.WatchStub(channel).Watch(iter(self._requests.get, None))
        # A watch that is never confirmed is as broken as one that fails.
        timed_out = threading.Event()

        def expire() -> None:
            timed_out.set()
            self._stream.cancel()

        timer = threading.Timer(timeout, expire)
        timer.start()
        try:
            first = next(self._stream)
        except StopIteration:
            raise ClusterError(f"etcd at {url} closed the watch stream at once") from None
        except grpc.RpcError:
            self.cancel()
            if timed_out.is_set():
                raise ClusterError(f"etcd at {url} did not create the watch within {timeout:g}s") from None
            raise  # classified by the client (endpoint down or not)
        finally:
            timer.cancel()
        if not first.created or first.canceled:
            self.cancel()
            raise ClusterError(f"etcd at {url} refused the watch: {first.cancel_reason or 'no reason given'}")

    def next_chunk(self) -> WatchChunk:
        """Block until the next batch of events; WatchCompacted or ClusterError when the watch ends."""
        while True:
            try:
                response = next(self._stream)
            except StopIteration:
                raise ClusterError(f"etcd at {self._url} closed the watch stream") from None
            except grpc.RpcError as exc:
                raise ClusterError(f"watch on etcd at {self._url} broke: {_reason(exc)}") from None
            if response.compact_revision:
                raise WatchCompacted(response.compact_revision)
            if response.canceled:
                raise ClusterError(f"etcd at {self._url} cancelled the watch: {response.cancel_reason or 'no reason'}")
            if response.events:  # empty responses are progress notifications
                events = tuple(
                    WatchEvent("delete" if e.type == e.DELETE else "put", _kv(e.kv)) for e in response.events
                )
                return WatchChunk(response.header.revision, events)

    def cancel(self) -> None:
        """End the watch; a next_chunk() blocked in another thread raises ClusterError."""
        self._requests.put(None)
        self._stream.cancel()


class EtcdClient:
    """Blocking etcd client over one or more endpoints ("http(s)://host:port")."""

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        ca_file: Path | None = None,
        cert_file: Path | None = None,
        key_file: Path | None = None,
    ) -> None:
        if not endpoints:
            raise ConfigError("no etcd endpoints given")
        tls = ca_file is not None or cert_file is not None
        self.timeout = timeout
        self.urls = tuple(endpoints)
        self._clients = [self._client(url, timeout, tls, ca_file, cert_file, key_file) for url in self.urls]
        self._current = 0  # the endpoint that answered last; tried first
        self._lock = threading.Lock()

    @staticmethod
    def _client(
        url: str, timeout: float, tls: bool, ca_file: Path | None, cert_file: Path | None, key_file: Path | None
    ) -> MultiEndpointEtcd3Client:
        parts = urlsplit(url)
        try:
            port = parts.port or _DEFAULT_PORT
        except ValueError:
            raise ConfigError(f"etcd endpoint {url!r}: bad port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"etcd endpoint {url!r}: expected http(s)://host:port")
        secure = parts.scheme == "https"
        if tls and not secure:
            raise ConfigError(f"etcd endpoint {url!r}: TLS files are set but the endpoint is plain http")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        endpoint = Endpoint(
            host,
            port,
            secure=secure,
            creds=_credentials(ca_file, cert_file, key_file) if secure else None,
            time_retry=0,  # never blacklist: we pick endpoints ourselves
            opts=_GRPC_OPTIONS,
        )
        return MultiEndpointEtcd3Client(endpoints=[endpoint], timeout=timeout)

    def _call(self, what: str, fn: Callable[[MultiEndpointEtcd3Client, str], T]) -> T:
        """Run fn(client, url) on the endpoints in turn until one answers."""
        with self._lock:
            first = self._current
        failures = []
        for step in range(len(self._clients)):
            index = (first + step) % len(self._clients)
            url = self.urls[index]
            try:
                result = fn(self._clients[index], url)
            except _ENDPOINT_DOWN as exc:
                failures.append(f"{url}: {_reason(exc)}")
                continue
            except grpc.RpcError as exc:
                if exc.code() in _ENDPOINT_DOWN_CODES:  # type: ignore[attr-defined]
                    failures.append(f"{url}: {_reason(exc)}")
                    continue
                if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                    raise _LeaseNotFound(f"etcd {what} at {url}: {_reason(exc)}") from None
                raise ClusterError(f"etcd {what} at {url}: {_reason(exc)}") from None
            except exceptions.Etcd3Exception as exc:
                raise ClusterError(f"etcd {what} at {url}: {_reason(exc)}") from None
            with self._lock:
                self._current = index
            return result
        raise ClusterError(f"etcd unreachable ({what}): {'; '.join(failures)}")

    def status(self) -> str:
        """The version of the etcd server that answers (a cheap reachability check)."""

        def status(c: MultiEndpointEtcd3Client, url: str) -> str:
            response = c.maintenancestub.Status(etcdrpc.StatusRequest(), c.timeout, metadata=c.metadata)
            return str(response.version)

        return self._call("status", status)

    def get(self, key: str) -> KeyValue | None:
        def get(c: MultiEndpointEtcd3Client, url: str) -> KeyValue | None:
            response = c.get_response(key)
            return _kv(response.kvs[0]) if response.kvs else None

        return self._call(f"get {key}", get)

    def get_prefix(self, prefix: str, *, page_size: int = LIST_PAGE) -> Range:
        """Every key under prefix as of one revision, read in pages of page_size keys.

        The first page fixes the revision and every later page is read as of it, so the
        listing is one snapshot however the keys change meanwhile. If etcd compacts that
        revision before the last page, the listing fails with ClusterError (callers retry).
        """
        start, end = prefix.encode(), prefix_range_end(prefix.encode())
        revision = 0  # 0: the newest, for the first page
        kvs: list[KeyValue] = []
        while True:
            request = etcdrpc.RangeRequest(key=start, range_end=end, limit=page_size, revision=revision)
            page = self._range_page(f"list {prefix}", request)
            revision = revision or page.header.revision
            kvs.extend(_kv(kv) for kv in page.kvs)
            if not page.more or not page.kvs:
                return Range(revision, tuple(kvs))
            start = page.kvs[-1].key + b"\0"  # the next key after the last one listed

    def _range_page(self, what: str, request: etcdrpc.RangeRequest) -> etcdrpc.RangeResponse:
        """One range request (its keys come sorted by key, etcd's default)."""
        return self._call(what, lambda c, url: c.kvstub.Range(request, c.timeout, metadata=c.metadata))

    def put_if(
        self,
        key: str,
        value: bytes,
        *,
        mod_revision: int,
        lease_id: int = 0,
        require_empty: str | None = None,
    ) -> TxnResult:
        """Put `value` iff the key's mod_revision is `mod_revision` (0: the key is absent) and,
        when require_empty is given, no key starts with it. One etcd transaction.

        Raises LeaseLost when lease_id does not exist (any more).
        """
        compare = [transactions.Mod(key) == mod_revision]
        if require_empty is not None:
            # Over a range the compare must hold for every key, and an empty range has create_revision 0.
            empty = require_empty.encode()
            compare.append(transactions.Create(empty, prefix_range_end(empty)) == 0)
        put = etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease_id))
        read = etcdrpc.RequestOp(request_range=etcdrpc.RangeRequest(key=key.encode()))
        request = etcdrpc.TxnRequest(
            compare=[check.build_message() for check in compare], success=[put, read], failure=[read]
        )

        def txn(c: MultiEndpointEtcd3Client, url: str) -> TxnResult:
            response = c.kvstub.Txn(request, c.timeout, metadata=c.metadata)
            kvs = response.responses[-1].response_range.kvs
            return TxnResult(response.succeeded, _kv(kvs[0]) if kvs else None)

        try:
            return self._call(f"transaction on {key}", txn)
        except _LeaseNotFound:
            raise LeaseLost(lease_id) from None

    def txn(self, what: str, compare: Sequence[tuple[str, int]], puts: Sequence[tuple[str, bytes, int]] = (),
            deletes: Sequence[str] = ()) -> bool:
        """One transaction: if every (key, mod_revision) holds (0: the key is absent), put each
        (key, value, lease_id) and delete each key. Returns whether it applied. LeaseLost when a
        lease named in a put does not exist."""
        checks = [(transactions.Mod(key) == revision).build_message() for key, revision in compare]
        ops = [etcdrpc.RequestOp(request_put=etcdrpc.PutRequest(key=key.encode(), value=value, lease=lease))
               for key, value, lease in puts]
        ops += [etcdrpc.RequestOp(request_delete_range=etcdrpc.DeleteRangeRequest(key=key.encode()))
                for key in deletes]
        request = etcdrpc.TxnRequest(compare=checks, success=ops, failure=[])
        try:
            return self._call(what, lambda c, url: c.kvstub.Txn(request, c.timeout, metadata=c.metadata).succeeded)
        except _LeaseNotFound:
            raise LeaseLost(next((lease for _, _, lease in puts if lease), 0)) from None

    def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; returns its id."""
        return self._call("lease grant", lambda c, url: c.lease(ttl).id)

    def keepalive(self, lease_id: int) -> int:
        """Refresh a lease; returns its remaining TTL, raises LeaseLost if it is gone."""

        def refresh(c: MultiEndpointEtcd3Client, url: str) -> int:
            responses = list(c.refresh_lease(lease_id))
            return responses[-1].TTL if responses else 0

        ttl = self._call("lease keepalive", refresh)
        if ttl <= 0:
            raise LeaseLost(lease_id)
        return ttl

    def revoke(self, lease_id: int) -> None:
        """Revoke a lease (deleting its keys); a lease that is already gone is fine."""
        try:
            self._call("lease revoke", lambda c, url: c.revoke_lease(lease_id))
        except _LeaseNotFound:
            pass

    def watch(self, prefix: str, start_revision: int) -> WatchStream:
        """Watch every key under prefix from start_revision (inclusive)."""

        def start(c: MultiEndpointEtcd3Client, url: str) -> WatchStream:
            return WatchStream(url, c.channel, prefix.encode(), start_revision, self.timeout)

        return self._call(f"watch {prefix}", start)

    def close(self) -> None:
        for client in self._clients:
            client.close()

