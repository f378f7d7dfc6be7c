"""The nftables ruleset overlayd wants (pure): inputs in, `nft -f` text out.

One table of ours (`inet <name>`, marked by its comment) holds every NAT rule:

  postrouting  hairpin and localhost flows to published ports are masqueraded (the pod must
               answer through this host, not straight to a neighbour pod or to 127.0.0.1);
               pod-to-pod traffic is never touched; with ip_masq, pod traffic to anything
               outside the cluster network (multicast excepted) leaves with the host's address.
  prerouting   published ports: traffic to a local address of this host is DNATed to the pod
  output       the same for connections made on the host itself (127.0.0.1 included)
  published    one rule per published port, jumped to from prerouting and output
  services     service virtual IPs (nat/services.py), jumped to before published ports
  input        (IPv4) new connections from the pods to 127.0.0.0/8 are dropped: the bridge has
               route_localnet on so that 127.0.0.1:<published> works, which would otherwise let
               pods reach services bound to the host's loopback (kube-proxy's CVE-2020-8558)

The text is written exactly as `nft list table` prints it back, so the daemon can tell
whether the kernel already has what it wants (`matches`) and then change nothing.

Forwarding: an `accept` in our table cannot overrule a `drop` policy in another table's
forward chain (every base chain on a hook votes, and a drop is final). So on hosts where
another table drops forwarded packets by default (Docker's iptables FORWARD chain), pod
traffic needs an accept in that chain itself, as flannel and Calico add to iptables. We
insert two rules there (pod network as source, as destination), in the shape iptables-nft
writes (`ip saddr X counter accept` with a comment), so iptables still reads the chain.
They are ours by their comment, the only thing we ever change outside our own table.

Every value formatted here is already checked: addresses and networks are ipaddress
objects, ports and protocols are checked Publications, and the table and bridge names
are checked by the daemon config (names of letters, digits and ._-, no quotes).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

from overlayd.nat import services as service_rules
from overlayd.nat.ports import Publication
from overlayd.policy import nft as policy_rules
from overlayd.policy.nft import PolicyTable
from overlayd.registry.view import ServiceNat

IPNetwork = IPv4Network | IPv6Network
IPAddress = IPv4Address | IPv6Address

OWNER_COMMENT = "managed by overlayd"  # a table of the configured name without it is not ours
HOLE_MARK = "overlayd:"  # comments of the rules we put into other tables' forward chains: overlayd:<table> ...
MULTICAST_V4 = IPv4Network("224.0.0.0/4")
LOOPBACK_V4 = IPv4Network("127.0.0.0/8")
TABLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


@dataclass(frozen=True)
class Published:
    """A publication with the address of the pod it leads to."""

    pod_ip: IPAddress
    publication: Publication


@dataclass(frozen=True)
class NatSpec:
    table: str
    network: IPNetwork  # the cluster's pod network: traffic inside it is never NATed
    subnet: IPNetwork  # this host's pods
    bridge: str
    ip_masq: bool
    published: tuple[Published, ...] = ()
    services: tuple[ServiceNat, ...] = ()
    policy: PolicyTable | None = None  # network policy (policy/nft.py); None: no policy in the cluster


def _ip(network: IPNetwork | IPAddress) -> str:
    return "ip" if network.version == 4 else "ip6"


def _postrouting(spec: NatSpec) -> list[str]:
    ip = _ip(spec.network)
    rules = [
        # A pod reaching a published port of its own host: the reply must come back through us.
        f'oifname "{spec.bridge}" ct status dnat {ip} saddr {spec.subnet} masquerade',
    ]
    if spec.network.version == 4:
        # Host processes connecting to 127.0.0.1:<published>: a pod cannot answer 127.0.0.1.
        rules.append(f'oifname "{spec.bridge}" ip saddr {LOOPBACK_V4} masquerade')
    rules.append(f"{ip} saddr {spec.network} {ip} daddr {spec.network} return")
    if spec.ip_masq:
        if spec.network.version == 4:
            rules.append(f"ip saddr {spec.network} ip daddr != {MULTICAST_V4} masquerade")
        else:
            rules.append(f"ip6 saddr {spec.network} ip6 daddr != ff00::/8 masquerade")
    return rules


def _published_rule(item: Published) -> str:
    pub = item.publication
    match = f"ip daddr {pub.host_ip} " if pub.host_ip is not None else ""
    to = f"{item.pod_ip}:{pub.pod_port}" if item.pod_ip.version == 4 else f"[{item.pod_ip}]:{pub.pod_port}"
    return f"{match}{pub.protocol} dport {pub.host_port} dnat {_ip(item.pod_ip)} to {to}"


def _chain(name: str, hook: str | None, rules: Iterable[str]) -> list[str]:
    lines = [f"\tchain {name} {{"]
    if hook is not None:
        lines.append(f"\t\t{hook}")
    lines += [f"\t\t{rule}" for rule in rules]
    return lines + ["\t}"]


def render(spec: NatSpec) -> str:
    """The table as `nft list table` prints it (and as `nft -f` reads it)."""
    to_local = ["jump services", "fib daddr type local jump published"]
    chains = (policy_rules.counter_lines(spec.policy) + service_rules.maps(spec.services)
              + policy_rules.set_lines(spec.policy)) + [
        _chain("postrouting", "type nat hook postrouting priority srcnat; policy accept;", _postrouting(spec)),
        _chain("prerouting", "type nat hook prerouting priority dstnat; policy accept;", to_local),
        # nft 1.0.6 takes the `dstnat` keyword on prerouting only; -100 is its value.
        _chain("output", "type nat hook output priority -100; policy accept;", to_local),
        _chain("published", None, [_published_rule(p) for p in sorted(spec.published, key=_published_key)]),
    ]
    chains += [_chain(name, hook, rules) for name, hook, rules in service_rules.chains(spec.services)]
    chains += [_chain(name, hook, rules) for name, hook, rules in policy_rules.chain_parts(spec.policy)]
    if spec.network.version == 4:
        chains.append(_chain("input", "type filter hook input priority filter; policy accept;",
                             [f'iifname "{spec.bridge}" ip daddr {LOOPBACK_V4} ct state new drop']))
    lines = [f"table inet {spec.table} {{", f'\tcomment "{OWNER_COMMENT}"']
    for i, chain in enumerate(chains):
        lines += ([""] if i else []) + chain
    return "\n".join(lines + ["}"]) + "\n"


def _published_key(item: Published) -> tuple[Any, ...]:
    pub = item.publication
    # Rules for one host address come before the catch-all of the same port (which find_clash forbids anyway).
    return (pub.protocol, pub.host_port, pub.host_ip is None, str(pub.host_ip), str(item.pod_ip))


def replace_table(spec: NatSpec) -> str:
    """One transaction: the table is dropped and rebuilt (`add` first, so `delete` works when it is absent).
    nft applies a file atomically: packets see the old table or the new one, never none."""
    return f"add table inet {spec.table}\ndelete table inet {spec.table}\n{render(spec)}"


_MAP_ITEMS = re.compile(r"(elements = |map )\{([^{}]*)\}")
_COUNTER_VALUES = re.compile(r"packets \d+ bytes \d+")  # named counters (policy drops) count on


def _sorted_items(match: re.Match[str]) -> str:
    items = sorted(" ".join(item.split()) for item in match.group(2).split(","))
    return match.group(1) + "{ " + ", ".join(items) + " }"


def _normal(text: str) -> list[str]:
    """Lines without indentation; map elements in one order: nft lists a named map in hash order,
    wrapped over lines, so `elements = { ... }` is joined and sorted before comparing."""
    text = _COUNTER_VALUES.sub("packets 0 bytes 0", _MAP_ITEMS.sub(_sorted_items, text))
    return [line.strip() for line in text.splitlines() if line.strip()]


def matches(listed: str, spec: NatSpec) -> bool:
    """Whether `nft list table inet <name>` output is exactly the wanted table."""
    return _normal(listed) == _normal(render(spec))


def is_ours(listed: str) -> bool:
    return f'comment "{OWNER_COMMENT}"' in _normal(listed)


# --- holes in other tables' forward chains -----------------------------------------------

def _hole_rules(table: str, network: IPNetwork) -> dict[str, str]:
    """comment -> rule for one foreign chain."""
    ip = _ip(network)
    rules = {}
    for field in ("saddr", "daddr"):
        comment = f"{HOLE_MARK}{table} {field} {network}"
        rules[comment] = f'{ip} {field} {network} counter accept comment "{comment}"'
    return rules


@dataclass(frozen=True)
class HolePlan:
    insert: tuple[str, ...]  # nft commands
    delete: tuple[str, ...]

    @property
    def commands(self) -> tuple[str, ...]:
        return self.delete + self.insert


def plan_holes_untrusted(ruleset: object, spec: NatSpec) -> HolePlan:
    """From `nft -j -a list ruleset`: accept rules to insert into foreign forward chains whose policy
    is drop, and rules of ours (by comment) to delete where they are no longer wanted."""
    items = ruleset.get("nftables") if isinstance(ruleset, dict) else None
    if not isinstance(items, list):
        return HolePlan((), ())
    families = {"ip", "inet"} if spec.network.version == 4 else {"ip6", "inet"}
    wanted: dict[tuple[str, str, str], dict[str, str]] = {}
    for item in items:
        chain = item.get("chain") if isinstance(item, dict) else None
        if not isinstance(chain, dict) or chain.get("hook") != "forward" or chain.get("policy") != "drop":
            continue
        key = (chain.get("family"), chain.get("table"), chain.get("name"))
        if key[0] in families and key[1] != spec.table and all(_safe_name(part) for part in key):
            wanted[key] = _hole_rules(spec.table, spec.network)  # type: ignore[index]
    present: dict[tuple[str, str, str], set[str]] = {}
    delete: list[str] = []
    mark = f"{HOLE_MARK}{spec.table} "
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict) or not str(rule.get("comment", "")).startswith(mark):
            continue
        key = (rule.get("family"), rule.get("table"), rule.get("chain"))
        handle = rule.get("handle")
        if not all(_safe_name(part) for part in key) or isinstance(handle, bool) or not isinstance(handle, int):
            continue
        comment = rule["comment"]
        if comment in wanted.get(key, {}) and comment not in present.get(key, set()):  # type: ignore[arg-type]
            present.setdefault(key, set()).add(comment)  # type: ignore[arg-type]
        else:  # no longer wanted (or a duplicate): a stray of ours
            delete.append(f"delete rule {key[0]} {key[1]} {key[2]} handle {handle}")
    insert = [f"insert rule {family} {table} {chain} {rule}"
              for (family, table, chain), rules in sorted(wanted.items())
              for comment, rule in sorted(rules.items(), reverse=True)
              if comment not in present.get((family, table, chain), set())]
    return HolePlan(tuple(insert), tuple(delete))


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,255}$")


def _safe_name(value: object) -> bool:
    """Names read from the kernel go back into nft commands: only plain identifiers."""
    return isinstance(value, str) and _NAME_RE.match(value) is not None
