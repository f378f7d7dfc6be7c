"""Service virtual IPs as nftables chains of our table (pure), after kube-proxy's nftables mode.

    map service_ips          VIP . protocol . port -> goto the service port's chain
    map no_endpoint_services VIP . protocol . port -> goto reject_service (nothing selected)
    chain services           one vmap lookup; jumped to from prerouting (pods, other hosts)
                             and output (this host's own connections)
    chain svc_<name>_<proto>_<port>
                             DNAT to one endpoint drawn by `numgen random`
    chain service_filter_*   filter hooks (forward: pods; output: the host) reject what has no
                             endpoint at once, instead of routing the VIP to the default gateway

Only the first packet of a connection goes through NAT; conntrack keeps the endpoint for the
rest, so rewriting the table leaves established connections where they are. Hairpin (a pod
reaching a service it backs) and same-host endpoints are masqueraded by ruleset.py's
`ct status dnat` rule, so replies come back through the host to be un-NATed.
"""

from __future__ import annotations

from collections.abc import Sequence

from overlayd.registry.view import ServiceNat

KEY_TYPE = "ipv4_addr . inet_proto . inet_service"
LOOKUP = "ip daddr . meta l4proto . th dport"
REJECT_CHAIN = "reject_service"


def chain_name(row: ServiceNat) -> str:
    # Service names are DNS labels (a-z, 0-9, '-'), so this is one-to-one and needs no quoting.
    return f"svc_{row.service.replace('-', '_')}_{row.port.protocol}_{row.port.port}"


def _element(row: ServiceNat, target: str) -> str:
    return f"{row.vip} . {row.port.protocol} . {row.port.port} : goto {target}"


def _map(name: str, elements: Sequence[str]) -> list[str]:
    lines = [f"\tmap {name} {{", f"\t\ttype {KEY_TYPE} : verdict"]
    if elements:
        lines.append(f"\t\telements = {{ {', '.join(elements)} }}")
    return lines + ["\t}"]


def _dnat(row: ServiceNat) -> str:
    choices = ", ".join(f"{i} : {ip} . {row.port.target_port}" for i, ip in enumerate(row.endpoints))
    return (f"meta l4proto {row.port.protocol} dnat ip to numgen random mod {len(row.endpoints)} "
            f"map {{ {choices} }}")


def maps(rows: Sequence[ServiceNat]) -> list[list[str]]:
    served = [r for r in rows if r.endpoints]
    return [_map("service_ips", [_element(r, chain_name(r)) for r in served]),
            _map("no_endpoint_services", [_element(r, REJECT_CHAIN) for r in rows if not r.endpoints])]


def chains(rows: Sequence[ServiceNat]) -> list[tuple[str, str | None, list[str]]]:
    """(name, base-chain hook or None, rules) for every service chain."""
    result: list[tuple[str, str | None, list[str]]] = [
        ("services", None, [f"{LOOKUP} vmap @service_ips"]),
        ("service_filter_forward", "type filter hook forward priority filter; policy accept;",
         [f"{LOOKUP} vmap @no_endpoint_services"]),
        ("service_filter_output", "type filter hook output priority filter; policy accept;",
         [f"{LOOKUP} vmap @no_endpoint_services"]),
        # TCP gets a reset (ICMP errors are rate-limited by the kernel: a burst of connects would hang).
        (REJECT_CHAIN, None, ["meta l4proto tcp reject with tcp reset", "reject"]),
    ]
    result += [(chain_name(r), None, [_dnat(r)]) for r in rows if r.endpoints]
    return result
