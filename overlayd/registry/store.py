"""Blocking etcd access for pod and service records (the layout is in records.py).

Services are written by whichever daemon `overlayctl service add` reaches; the virtual IP
is chosen here and claimed with compare-and-set, so concurrent adds never share one.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network

from typing import Any

from overlayd.cluster.errors import RecordError
from overlayd.cluster.etcd import EtcdClient, Range
from overlayd.errors import ConflictError, NotFoundError
from overlayd.registry.records import PodEntry, ServiceSpec, parse_service_untrusted

VIP_ATTEMPTS = 16  # random picks before giving up on a crowded service network


# (key, pod record fields, lease id) -> the value to store: the trust layer's signature.
PodEncoder = Callable[[str, dict[str, Any], int], bytes]


class RegistryStore:
    def __init__(self, etcd: EtcdClient, prefix: str, encode_pod: PodEncoder | None = None) -> None:
        self.etcd = etcd
        self._encode_pod = encode_pod
        self.pods = f"{prefix}/pods/"
        self.services = f"{prefix}/services/"
        self.vips = f"{prefix}/vips/"
        self.policies = f"{prefix}/policies/"  # written by policy/store.py

    def pod_key(self, node: str, name: str) -> str:
        return f"{self.pods}{node}/{name}"

    def list(self, prefix: str) -> Range:
        return self.etcd.get_prefix(prefix)

    # --- this host's pods -----------------------------------------------------------

    def put_pod(self, entry: PodEntry, lease_id: int) -> None:
        key = self.pod_key(entry.node, entry.name)
        value = self._encode_pod(key, entry.to_dict(), lease_id) if self._encode_pod else entry.to_json()
        self.etcd.txn(f"publish pod {entry.name}", (), [(key, value, lease_id)])

    def delete_pod(self, node: str, name: str) -> None:
        self.etcd.txn(f"withdraw pod {name}", (), deletes=[self.pod_key(node, name)])

    # --- services ----------------------------------------------------------------------

    def create_service(self, spec: ServiceSpec) -> bool:
        """Create the service and claim its VIP in one transaction; False if either is taken."""
        return self.etcd.txn(
            f"create service {spec.name}",
            [(self.services + spec.name, 0), (self.vips + str(spec.vip), 0)],
            [(self.services + spec.name, spec.to_json(), 0), (self.vips + str(spec.vip), spec.name.encode(), 0)])

    def add_service(self, spec: ServiceSpec, network: IPv4Network) -> ServiceSpec:
        """spec with a free VIP of `network` (random picks, as Kubernetes allocates), created in etcd.
        ConflictError when the name exists or no address could be claimed."""
        if self.etcd.get(self.services + spec.name) is not None:
            raise ConflictError(f"service {spec.name} exists; delete it first (`overlayctl service del {spec.name}`)")
        hosts = network.num_addresses - 2  # neither the network nor the broadcast address
        for _ in range(VIP_ATTEMPTS):
            vip = IPv4Address(int(network.network_address) + 1 + secrets.randbelow(hosts))
            candidate = ServiceSpec(spec.name, vip, spec.selector, spec.ports)
            if self.create_service(candidate):
                return candidate
            if self.etcd.get(self.services + spec.name) is not None:
                raise ConflictError(f"service {spec.name} was created meanwhile by someone else")
        raise ConflictError(f"no free address found in the service network {network} after {VIP_ATTEMPTS} tries")

    def delete_service(self, name: str) -> ServiceSpec | None:
        """Delete the service and free its VIP (one transaction on the record we read)."""
        kv = self.etcd.get(self.services + name)
        if kv is None:
            raise NotFoundError(f"no service named {name}")
        try:
            spec: ServiceSpec | None = parse_service_untrusted(name, kv.value)
        except RecordError:  # a damaged record is deleted all the same; its VIP key (unknown) stays
            spec = None
        keys = [self.services + name] + ([self.vips + str(spec.vip)] if spec else [])
        if not self.etcd.txn(f"delete service {name}", [(self.services + name, kv.mod_revision)], deletes=keys):
            raise ConflictError(f"service {name} changed while it was being deleted; try again")
        return spec
