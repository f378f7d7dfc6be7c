"""Policy enforcement as chains and sets of our nftables table (pure): policies and pods in,
table parts out, written exactly as `nft list table` prints them (ruleset.matches compares).

One host enforces for its own pods: the egress of the pods it runs and their ingress. A
flow between pods of two hosts is judged twice, egress on the source's host and ingress on
the destination's; a flow between pods of one host is judged there for both. So the rules
hook into forwarding, where every pod packet passes: routed (other hosts, the world) and
bridged between pods of this host (br_netfilter hands bridged IP packets to the inet
hooks; see running.py). The host's own traffic to and from its pods takes input and output,
not forward, and is never filtered, as Kubernetes wants.

    counter pi_<policy>, pe_<policy>   packets dropped at a pod the policy isolates (ingress,
                                       egress); policy_unknown: dropped for an unknown local IP
    set local_pods                     this host's pods (from the pod service, not etcd: known
                                       before the pod add returns)
    set iso_ingress, iso_egress        local pods some policy isolates in that direction
    set l<n>                           local pods a policy's podSelector selects
    set p<n>                           pods of the whole cluster a peer's podSelector selects
    set b<n>                           an ipBlock: its cidr minus its excepts, as prefixes
    chain policy_forward               forward hook: replies and established flows first,
                                       then unknown local addresses, then the two checks
    chain policy_egress, policy_ingress  one rule per (rule, peer, port) of each policy that
                                       selects a local pod: `return` when it allows (the other
                                       check still runs), else every isolating policy counts
                                       the drop and the packet is dropped

`ct state established,related accept` comes first: replies of allowed flows pass, and a
rewrite of the table (one transaction) keeps established flows, allowed under the old rules.
A pod IP of this host's subnet that is not in local_pods (a pod whose add has not reached
the rules yet) is dropped, so a pod is never open before its policies cover it. Without any
policy in the cluster none of this exists: no cost and no change for clusters without policy.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network

from overlayd.policy.model import Direction, IPAddress, IPBlock, IPNetwork, Policy, PortRule, Selector

UNKNOWN_COUNTER = "policy_unknown"
HOOK = "type filter hook forward priority filter; policy accept;"
DIRECTIONS: tuple[Direction, ...] = ("egress", "ingress")


@dataclass(frozen=True)
class PodIP:
    """What the rules need of a pod: its address, its labels, whether it runs on this host."""

    ip: IPAddress
    labels: frozenset[tuple[str, str]]
    local: bool


@dataclass(frozen=True)
class NftSet:
    name: str
    type: str
    interval: bool
    elements: tuple[str, ...]


@dataclass(frozen=True)
class PolicyTable:
    policies: tuple[str, ...]  # names, for counters and tests
    counters: tuple[str, ...]
    sets: tuple[NftSet, ...]
    chains: tuple[tuple[str, str | None, tuple[str, ...]], ...]


def counter_name(policy: str, direction: Direction) -> str:
    # Policy names are lowercase letters, digits, '-' and '.', at most 63: valid nft identifiers.
    return ("pi_" if direction == "ingress" else "pe_") + policy


def _element(net: IPNetwork | IPAddress) -> str:
    if isinstance(net, (IPv4Network, IPv6Network)) and net.prefixlen == net.max_prefixlen:
        return str(net.network_address)  # nft prints a one-address prefix as the address
    return str(net)


@lru_cache(maxsize=4096)
def _prefixes(block: IPBlock) -> tuple[IPNetwork, ...]:
    return block.prefixes()


def _port(rule: PortRule) -> str:
    if rule.port is None:
        return f"meta l4proto {rule.protocol}"
    span = f"{rule.port}-{rule.end_port}" if rule.end_port is not None else str(rule.port)
    return f"{rule.protocol} dport {span}"


class _Builder:
    def __init__(self, pods: Sequence[PodIP], family: int) -> None:
        self.ip = "ip" if family == 4 else "ip6"
        self.addr_type = "ipv4_addr" if family == 4 else "ipv6_addr"
        self.family = family
        self.sets: list[NftSet] = []
        self._named: dict[tuple[object, ...], str] = {}
        # Pods of one deployment share labels: evaluate each selector once per distinct label set.
        self._groups: dict[tuple[frozenset[tuple[str, str]], bool], list[IPAddress]] = {}
        for pod in pods:
            if pod.ip.version == family:
                self._groups.setdefault((pod.labels, pod.local), []).append(pod.ip)
        self._label_dicts = {labels: dict(labels) for labels, _ in self._groups}
        self._selected: dict[tuple[object, ...], list[IPAddress]] = {}

    def add_set(self, name: str, elements: Iterable[str], interval: bool = False) -> str:
        self.sets.append(NftSet(name, self.addr_type, interval, tuple(elements)))
        return name

    def selected(self, selector: Selector, local_only: bool) -> list[IPAddress]:
        key = (local_only, selector.key)
        if key not in self._selected:
            found: set[IPAddress] = set()
            for (labels, local), ips in self._groups.items():
                if (local or not local_only) and selector.matches(self._label_dicts[labels]):
                    found.update(ips)
            self._selected[key] = sorted(found, key=int)
        return self._selected[key]

    def selector_set(self, selector: Selector, local_only: bool) -> str:
        key = ("l" if local_only else "p", selector.key)
        if key not in self._named:
            name = f"{key[0]}{sum(1 for k in self._named if k[0] == key[0])}"
            self._named[key] = self.add_set(name, (str(ip) for ip in self.selected(selector, local_only)))
        return self._named[key]

    def block_set(self, prefixes: tuple[IPNetwork, ...]) -> str:
        key = ("b", prefixes)
        if key not in self._named:
            name = f"b{sum(1 for k in self._named if k[0] == 'b')}"
            self._named[key] = self.add_set(name, (_element(p) for p in prefixes), interval=True)
        return self._named[key]


def _side_rules(b: _Builder, policies: Sequence[Policy], direction: Direction) -> tuple[str, ...]:
    own_field, peer_field = ("saddr", "daddr") if direction == "egress" else ("daddr", "saddr")
    allow: list[str] = []
    count: list[str] = []
    for policy in policies:
        if not policy.isolates(direction) or not b.selected(policy.pod_selector, local_only=True):
            continue  # selects no pod of this host: nothing to enforce here
        own = f"{b.ip} {own_field} @{b.selector_set(policy.pod_selector, local_only=True)}"
        for index, rule in enumerate(policy.rules(direction)):
            peers: list[str] = []
            for peer in rule.peers:
                if peer.ip_block is not None:
                    if peer.ip_block.cidr.version == b.family:  # the other family never meets our pods
                        peers.append(f" {b.ip} {peer_field} @{b.block_set(_prefixes(peer.ip_block))}")
                elif peer.pods is not None:
                    peers.append(f" {b.ip} {peer_field} @{b.selector_set(peer.pods, local_only=False)}")
            if not rule.peers:
                peers = [""]
            ports = [f" {_port(p)}" for p in rule.ports] or [""]
            comment = f'comment "{policy.name} {direction} {index}"'
            allow += [f"{own}{peer}{port} return {comment}" for peer in peers for port in ports]
        count.append(f'{own} counter name "{counter_name(policy.name, direction)}"')
    return tuple(allow + count + ["drop"])


def build(policies: Iterable[Policy], pods: Iterable[PodIP], subnet: IPNetwork) -> PolicyTable | None:
    """The table parts enforcing `policies` for the local pods of `pods`; None without policies."""
    ordered = sorted(policies, key=lambda p: p.name)
    if not ordered:
        return None
    pods = list(pods)
    b = _Builder(pods, subnet.version)
    local = sorted({p.ip for p in pods if p.local and p.ip.version == subnet.version}, key=int)
    b.add_set("local_pods", (str(ip) for ip in local))
    for direction in ("ingress", "egress"):
        isolated: set[IPAddress] = set()
        for policy in ordered:
            if policy.isolates(direction):  # type: ignore[arg-type]
                isolated.update(b.selected(policy.pod_selector, local_only=True))
        b.add_set(f"iso_{direction}", (str(ip) for ip in sorted(isolated, key=int)))
    sides = {d: _side_rules(b, ordered, d) for d in DIRECTIONS}
    ip = b.ip
    forward = (
        "ct state established,related accept",
        f'{ip} saddr {subnet} {ip} saddr != @local_pods counter name "{UNKNOWN_COUNTER}" drop',
        f'{ip} daddr {subnet} {ip} daddr != @local_pods counter name "{UNKNOWN_COUNTER}" drop',
        f"{ip} saddr @iso_egress jump policy_egress",
        f"{ip} daddr @iso_ingress jump policy_ingress",
    )
    counters = [UNKNOWN_COUNTER] + [counter_name(p.name, d) for p in ordered for d in DIRECTIONS if p.isolates(d)]
    chains = (("policy_forward", HOOK, forward), ("policy_egress", None, sides["egress"]),
              ("policy_ingress", None, sides["ingress"]))
    return PolicyTable(tuple(p.name for p in ordered), tuple(counters), tuple(b.sets), chains)


def pod_ips(entries: Iterable[object], node: str) -> list[PodIP]:
    """Registry records (registry.records.PodEntry) as PodIPs; `node` is this host."""
    return [PodIP(e.ip, frozenset(e.labels.items()), e.node == node) for e in entries]  # type: ignore[attr-defined]


# --- text, in the order `nft list table` prints: counters, sets (after the service maps), chains ---


def counter_lines(table: PolicyTable | None) -> list[list[str]]:
    if table is None:
        return []
    return [[f"\tcounter {name} {{", "\t\tpackets 0 bytes 0", "\t}"] for name in table.counters]


def set_lines(table: PolicyTable | None) -> list[list[str]]:
    if table is None:
        return []
    blocks = []
    for s in table.sets:
        lines = [f"\tset {s.name} {{", f"\t\ttype {s.type}"]
        if s.interval:
            lines.append("\t\tflags interval")
        if s.elements:
            lines.append(f"\t\telements = {{ {', '.join(s.elements)} }}")
        blocks.append(lines + ["\t}"])
    return blocks


def chain_parts(table: PolicyTable | None) -> list[tuple[str, str | None, list[str]]]:
    if table is None:
        return []
    return [(name, hook, list(rules)) for name, hook, rules in table.chains]


def counter_values_untrusted(listing: object) -> dict[str, int]:
    """`nft -j list counters table inet <t>` -> {counter name: packets}."""
    items = listing.get("nftables") if isinstance(listing, Mapping) else None
    values: dict[str, int] = {}
    for item in items if isinstance(items, list) else []:
        counter = item.get("counter") if isinstance(item, Mapping) else None
        if isinstance(counter, Mapping) and isinstance(counter.get("name"), str):
            packets = counter.get("packets")
            if isinstance(packets, int) and not isinstance(packets, bool) and packets >= 0:
                values[counter["name"]] = packets
    return values
