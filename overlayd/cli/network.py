"""overlayctl network init | show: the cluster config in etcd.

These talk to etcd directly (the config exists before any daemon does).
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from pathlib import Path
from typing import Any

import trio

from ipam.config import BackendConfig, ClusterConfig
from ipam.errors import InvalidConfig
from overlayd.cli.output import print_fields, print_json
from overlayd.cluster.client import ClusterClient
from overlayd.config import EtcdConfig, check_etcd_endpoint
from overlayd.errors import ConfigError, OverlaydError, UsageError


def register(sub: argparse._SubParsersAction) -> None:
    network = sub.add_parser("network", help="the cluster-wide network config in etcd")
    net_sub = network.add_subparsers(dest="network_command", required=True, parser_class=type(network))
    init = net_sub.add_parser("init", help="write the cluster config (refused under live leases without --force)")
    init.add_argument("--cidr", default="10.244.0.0/16", help="pod network (default 10.244.0.0/16)")
    init.add_argument("--subnet-len", type=int, help="per-host subnet prefix length (default /24, IPv6 /64)")
    init.add_argument("--service-cidr", help="where service virtual IPs come from (default 10.96.0.0/16)")
    init.add_argument("--backend", default="vxlan", choices=["vxlan", "wireguard", "host-gw"],
                      help="how hosts carry pod traffic (default vxlan)")
    init.add_argument("--vni", type=int, help="VXLAN network identifier (default 1)")
    init.add_argument("--port", type=int, help="UDP port (VXLAN default 4789, WireGuard 51820; host-gw has none)")
    init.add_argument("--force", action="store_true", help="change the config even while hosts hold leases")
    init.add_argument("--ca-dir", type=Path, help="directory holding the cluster CA's ca.key: sign the config "
                                                  "(daemons with a trust anchor refuse an unsigned one)")
    init.set_defaults(handler=_init)
    show = net_sub.add_parser("show", help="print the cluster config")
    show.set_defaults(handler=_show)
    for p in (init, show):
        add_etcd_arguments(p)


def add_etcd_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every overlayctl command that talks to etcd directly; unset ones come
    from the environment or the config file (settings.py), so the defaults live there."""
    group = parser.add_argument_group("etcd")
    group.add_argument("--etcd-endpoints", metavar="URL,...",
                       help="comma-separated etcd URLs (env ETCDCTL_ENDPOINTS; default 127.0.0.1:2379, "
                            "https with TLS files)")
    group.add_argument("--etcd-prefix", metavar="PREFIX",
                       help="key prefix of the cluster (env OVERLAYCTL_ETCD_PREFIX; default /overlayd/network)")
    group.add_argument("--etcd-ca", type=Path, metavar="FILE", help="CA certificate of etcd (env ETCDCTL_CACERT)")
    group.add_argument("--etcd-cert", type=Path, metavar="FILE", help="client certificate (env ETCDCTL_CERT)")
    group.add_argument("--etcd-key", type=Path, metavar="FILE", help="client key (env ETCDCTL_KEY)")


def etcd_config(args: argparse.Namespace) -> EtcdConfig:
    endpoints = tuple(e for e in args.etcd_endpoints.split(",") if e)
    for endpoint in endpoints:
        try:
            check_etcd_endpoint(endpoint)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
    return EtcdConfig(endpoints=endpoints, prefix=args.etcd_prefix,
                      ca_file=args.etcd_ca, cert_file=args.etcd_cert, key_file=args.etcd_key)


def _cluster_config(args: argparse.Namespace) -> ClusterConfig:
    try:
        network = ipaddress.ip_network(args.cidr)
        backend = BackendConfig(type=args.backend, vni=args.vni, port=args.port)
        services = ipaddress.IPv4Network(args.service_cidr) if args.service_cidr else None
        return ClusterConfig(network=network, subnet_len=args.subnet_len, backend=backend, service_network=services)
    except (ValueError, InvalidConfig) as exc:
        raise UsageError(str(exc)) from None


async def with_cluster(etcd: EtcdConfig, job: Any) -> Any:
    cluster = await ClusterClient.connect(etcd)
    try:
        return await job(cluster)
    finally:
        await cluster.aclose()


def _warn_if_local(network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> None:
    """Daemons refuse to start on a cluster network over their own networks; if this
    machine is on one, say so now (a warning: it may not be a host of the cluster)."""
    from pyroute2 import IPRoute

    from overlayd.backend.netlink import Netlink
    from overlayd.backend.objects import RTPROT_OVERLAYD
    from overlayd.backend.overlap import check_cluster_network, host_networks

    try:
        with IPRoute() as ipr:
            nl = Netlink(ipr)
            links, addresses = nl.links(), nl.addresses()
    except (OverlaydError, OSError):
        return  # nothing to compare with; the daemons still check
    # Addresses with our mark are a running daemon's, inside the cluster network by design.
    theirs = [a for a in addresses if a.protocol != RTPROT_OVERLAYD]
    try:
        check_cluster_network(network, host_networks(links, theirs, ours=()))
    except ConfigError as exc:
        print(f"overlayctl: warning: {exc}", file=sys.stderr)


def _init(args: argparse.Namespace) -> int:
    config = _cluster_config(args)  # validate before touching etcd
    signer = None
    if args.ca_dir is not None:
        from overlayd.cli.ca import CA_KEY_NAME
        from overlayd.trust.configsig import ConfigSigner
        from overlayd.trust.keyfiles import load_private_key

        signer = ConfigSigner(load_private_key(args.ca_dir / CA_KEY_NAME))
    _warn_if_local(config.network)

    async def job(cluster: ClusterClient) -> bool:
        return await cluster.put_config(config, force=args.force, signer=signer)

    written = trio.run(with_cluster, etcd_config(args), job)
    signed = f"signed by CA key {signer.issuer}" if signer else "unsigned"
    if args.json:
        print_json({"written": written, "config": config.to_dict(), "signed_by": signer.issuer if signer else None})
    else:
        print(("wrote" if written else "unchanged:") + f" {config.to_json()} ({signed})")
    return 0


def _show(args: argparse.Namespace) -> int:
    async def job(cluster: ClusterClient) -> ClusterConfig:
        return await cluster.get_config()

    config = trio.run(with_cluster, etcd_config(args), job)
    print_json(config.to_dict()) if args.json else print_fields(config.to_dict())
    return 0
