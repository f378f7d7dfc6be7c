"""The reachability model (pure): may a new flow pass, and which rule decides.

Kubernetes' semantics in a few lines, for the truth-table test, `overlayctl policy explain`
and as the reference the nftables rules (nft.py) must agree with:

- A pod is isolated for egress when some policy with the Egress type selects it, and for
  ingress when some policy with the Ingress type does; the two are independent.
- A pod no policy isolates allows everything in that direction.
- An isolated pod allows what any rule of any policy selecting it allows (a union; there
  are no deny rules). A rule allows a flow when one of its peers matches the other end (a
  pod selector: a pod of the cluster whose labels match; an IP block: the address) or it has
  no peers, and one of its ports matches the destination port and protocol or it has none.
- A flow passes when the source's egress and the destination's ingress both allow it.
  Replies of a flow that passed always pass (conntrack), which this model does not need to
  say: it judges the first packet.

Not modelled, as in the enforcement: traffic between a pod and the host it runs on is never
filtered (Kubernetes allows it too), and nor is a pod talking to itself over loopback.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from overlayd.policy.model import Direction, IPAddress, Policy, Rule


@dataclass(frozen=True)
class Endpoint:
    """One end of a flow: a pod of the registry (labels set), or any other address (labels None)."""

    ip: IPAddress
    labels: Mapping[str, str] | None = None
    name: str | None = None
    node: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.labels is not None

    def __str__(self) -> str:
        if self.name is None:
            return str(self.ip)
        return f"{self.name} ({self.ip}{' on ' + self.node if self.node else ''})"


@dataclass(frozen=True)
class Allowance:
    policy: str
    rule: int  # index in the policy's ingress or egress list
    peer: int | None  # index in the rule's from/to, None: the rule has no peers
    port: int | None  # index in the rule's ports, None: the rule has no ports


@dataclass(frozen=True)
class Side:
    """One direction's judgement: the source's egress or the destination's ingress."""

    direction: Direction
    isolated_by: tuple[str, ...]  # policies that select the pod for this direction, by name
    allowed_by: Allowance | None

    @property
    def allowed(self) -> bool:
        return not self.isolated_by or self.allowed_by is not None


@dataclass(frozen=True)
class Verdict:
    egress: Side
    ingress: Side

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed


def isolating(policies: Iterable[Policy], labels: Mapping[str, str] | None, direction: Direction) -> list[Policy]:
    """The policies that isolate a pod with these labels in `direction`, by name; none for a non-pod."""
    if labels is None:
        return []
    return sorted((p for p in policies if p.isolates(direction) and p.pod_selector.matches(labels)),
                  key=lambda p: p.name)


def rule_allows(rule: Rule, other: Endpoint, protocol: str, port: int | None) -> tuple[int | None, int | None] | None:
    """(peer index, port index) of the first match, or None when the rule does not allow the flow."""
    peer_at: int | None = None
    if rule.peers:
        for i, peer in enumerate(rule.peers):
            if peer.ip_block is not None:
                if peer.ip_block.contains(other.ip):
                    peer_at = i
                    break
            elif peer.pods is not None and other.labels is not None and peer.pods.matches(other.labels):
                peer_at = i
                break
        else:
            return None
    port_at: int | None = None
    if rule.ports:
        for j, item in enumerate(rule.ports):
            if item.matches(protocol, port):
                port_at = j
                break
        else:
            return None
    return peer_at, port_at


def judge(policies: Iterable[Policy], pod: Endpoint, other: Endpoint, direction: Direction, protocol: str,
          port: int | None) -> Side:
    """`pod`'s side of a flow: its egress (other = destination) or its ingress (other = source)."""
    chosen = isolating(policies, pod.labels, direction)
    for policy in chosen:
        for index, rule in enumerate(policy.rules(direction)):
            found = rule_allows(rule, other, protocol, port)
            if found is not None:
                return Side(direction, tuple(p.name for p in chosen), Allowance(policy.name, index, *found))
    return Side(direction, tuple(p.name for p in chosen), None)


def evaluate(policies: Iterable[Policy], src: Endpoint, dst: Endpoint, protocol: str, port: int | None) -> Verdict:
    """Whether the first packet of a flow src -> dst:port/protocol passes, and why."""
    policies = list(policies)
    return Verdict(judge(policies, src, dst, "egress", protocol, port),
                   judge(policies, dst, src, "ingress", protocol, port))


def explain(policies: Mapping[str, Policy], verdict: Verdict, src: Endpoint, dst: Endpoint, protocol: str,
            port: int | None) -> dict[str, Any]:
    """The verdict in words, one line per side (for `overlayctl policy explain`)."""
    lines = []
    for side, pod, other in ((verdict.egress, src, dst), (verdict.ingress, dst, src)):
        verb = "send to" if side.direction == "egress" else "receive from"
        if not pod.is_pod:
            lines.append(f"{side.direction}: {pod} is not a pod of the registry: not filtered")
        elif not side.isolated_by:
            lines.append(f"{side.direction}: no policy selects {pod.name} for {side.direction}: allowed")
        elif side.allowed_by is not None:
            a = side.allowed_by
            rule = policies[a.policy].rules(side.direction)[a.rule]
            what = f"rule {a.rule} of policy {a.policy}"
            peer = f"peer {a.peer} ({rule.peers[a.peer]})" if a.peer is not None else "any peer"
            ports = f"port {a.port} ({rule.ports[a.port]})" if a.port is not None else "any port"
            lines.append(f"{side.direction}: allowed by {what}: {peer}, {ports}")
        else:
            lines.append(f"{side.direction}: denied: {pod.name} is isolated by {', '.join(side.isolated_by)} and no "
                         f"{side.direction} rule of them lets it {verb} {other}")
    return {"from": str(src), "to": str(dst), "port": port, "protocol": protocol,
            "verdict": "allow" if verdict.allowed else "deny", "egress": lines[0], "ingress": lines[1]}
