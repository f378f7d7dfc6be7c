"""A CNI attachment as the daemon records it (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from ipaddress import IPv4Address, IPv6Address, ip_address
from pathlib import Path
from typing import Any

from overlayd.cni.spec import CniError, check_container_id, check_ifname

IPAddress = IPv4Address | IPv6Address
AttachmentKey = tuple[str, str, str]  # network, container ID, interface name


@dataclass(frozen=True)
class Attachment:
    network: str
    container_id: str
    ifname: str
    netns: Path  # the runtime's; never ours to delete
    ip: IPAddress
    host_veth: str
    created: str  # ISO-8601 UTC

    @property
    def key(self) -> AttachmentKey:
        return (self.network, self.container_id, self.ifname)

    @property
    def owner(self) -> str:
        """Its name in the address pool: pod names are DNS labels, so ':' keeps the two apart."""
        return owner_of(self.key)

    def to_dict(self) -> dict[str, Any]:
        return {"network": self.network, "container_id": self.container_id, "ifname": self.ifname,
                "netns": str(self.netns), "ip": str(self.ip), "host_veth": self.host_veth, "created": self.created}

    @classmethod
    def from_dict_untrusted(cls, data: object) -> Attachment:
        fields = ("network", "container_id", "ifname", "netns", "ip", "host_veth", "created")
        if not isinstance(data, dict) or set(data) != set(fields) or not all(isinstance(data[f], str)
                                                                            for f in fields):
            raise ValueError(f"an attachment must be an object of strings with fields {', '.join(fields)}")
        try:
            check_container_id(data["container_id"])
            check_container_id(data["network"])
            check_ifname(data["ifname"])
            ip = ip_address(data["ip"])
            datetime.fromisoformat(data["created"].replace("Z", "+00:00"))
        except CniError as exc:
            raise ValueError(exc.msg) from None
        if not data["netns"].startswith("/"):
            raise ValueError(f"attachment netns {data['netns']!r} is not an absolute path")
        return cls(network=data["network"], container_id=data["container_id"], ifname=data["ifname"],
                   netns=Path(data["netns"]), ip=ip, host_veth=data["host_veth"], created=data["created"])


def owner_of(key: AttachmentKey) -> str:
    return "cni:" + "/".join(key)
