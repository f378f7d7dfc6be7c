"""state_dir/services.json: the service rules last programmed, for the next start.

The truth is etcd; this file only bridges a restart: start-up rewrites our nftables table
before the registry has been listed (or while etcd is away), and without it every VIP
would stop working until then. A damaged file is skipped (services come back with the
first listing); it is never a reason to fail.
"""

from __future__ import annotations

import logging
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

from overlayd.cluster.errors import RecordError
from overlayd.errors import UsageError
from overlayd.pods.names import validate_pod_name
from overlayd.registry.records import ports_untrusted
from overlayd.registry.view import ServiceNat
from overlayd.statefile import StateError, read_json, write_json_atomic

log = logging.getLogger("overlayd")

FILE_NAME = "services.json"
MAX_ROWS = 10_000


def _row(row: ServiceNat) -> dict[str, Any]:
    return {"service": row.service, "vip": str(row.vip), "port": row.port.to_dict(),
            "endpoints": [str(ip) for ip in row.endpoints]}


def save(state_dir: Path, rows: tuple[ServiceNat, ...]) -> None:
    write_json_atomic(state_dir / FILE_NAME, [_row(r) for r in rows])


def _parse_row_untrusted(item: object) -> ServiceNat:
    if not isinstance(item, dict) or not isinstance(item.get("endpoints"), list):
        raise RecordError("a row must be an object with endpoints")
    name = item.get("service")
    try:
        validate_pod_name(name)  # type: ignore[arg-type]  # checks the type too
    except UsageError as exc:
        raise RecordError(str(exc)) from None
    try:
        vip = IPv4Address(item.get("vip"))
        endpoints = tuple(IPv4Address(ip) for ip in item["endpoints"])
    except ValueError as exc:
        raise RecordError(str(exc)) from None
    (port,) = ports_untrusted([item.get("port")])
    return ServiceNat(name, vip, port, endpoints)


def load(state_dir: Path) -> tuple[ServiceNat, ...]:
    try:
        doc = read_json(state_dir / FILE_NAME)
    except StateError as exc:
        log.warning("%s; services come back with the first registry listing", exc)
        return ()
    if doc is None:
        return ()
    try:
        if not isinstance(doc, list) or len(doc) > MAX_ROWS:
            raise RecordError(f"not a list of at most {MAX_ROWS} rows")
        return tuple(_parse_row_untrusted(item) for item in doc)
    except (RecordError, TypeError) as exc:
        log.warning("%s: %s; services come back with the first registry listing", state_dir / FILE_NAME, exc)
        return ()
