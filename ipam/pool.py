"""Pod addresses inside one host subnet.

Addresses are handed out round robin like CNI host-local: the search for a free address starts
right after the last one allocated, so a just-released address is not reused while untouched
ones remain, and a restarted pod does not get the address a dead pod's peers may still cache.

Never handed out: the network address (for IPv6 that is the subnet-router anycast address), the
gateway (the first address after it, kept for the host's bridge) and the IPv4 broadcast address.

The pool does no I/O: the daemon persists to_dict() (for example with overlayd.statefile) after
each change and passes it back as state= on restart. That state is untrusted input.
"""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from typing import Any

from ipam.errors import InvalidState, OutOfAddresses, SubnetMismatch

IPAddress = IPv4Address | IPv6Address
IPNetwork = IPv4Network | IPv6Network

STATE_VERSION = 1
_STATE_FIELDS = ("version", "subnet", "last", "allocations")


def _check_owner(owner: object) -> None:
    if not isinstance(owner, str) or not owner:
        raise ValueError(f"an owner must be a non-empty string, got {owner!r}")


class AddressPool:
    """Allocates pod addresses of one subnet to owners (e.g. a pod id), one address per owner."""

    def __init__(self, subnet: IPNetwork, *, state: Mapping[str, Any] | None = None) -> None:
        if not isinstance(subnet, (IPv4Network, IPv6Network)):
            raise TypeError(f"expected an IPv4Network or IPv6Network, got {subnet!r}")
        self._subnet = subnet
        self._first = int(subnet.network_address) + 2
        self._last = int(subnet.broadcast_address) - (1 if subnet.version == 4 else 0)
        if self._first > self._last:
            raise ValueError(f"subnet {subnet} has no room for pod addresses besides its gateway")
        self._address_of: dict[str, int] = {}
        self._owner_of: dict[int, str] = {}
        self._cursor: int | None = None  # the last address allocated; the next search starts after it
        if state is not None:
            self._load_untrusted(state)

    @property
    def subnet(self) -> IPNetwork:
        return self._subnet

    @property
    def gateway(self) -> IPAddress:
        return self._address(int(self._subnet.network_address) + 1)

    @property
    def capacity(self) -> int:
        """How many pod addresses the subnet holds."""
        return self._last - self._first + 1

    @property
    def allocations(self) -> dict[str, IPAddress]:
        """A copy of owner -> address, in address order."""
        return {self._owner_of[a]: self._address(a) for a in sorted(self._owner_of)}

    def lookup(self, owner: str) -> IPAddress | None:
        address = self._address_of.get(owner)
        return None if address is None else self._address(address)

    def allocate(self, owner: str) -> IPAddress:
        """The owner's address, allocating the next free one if it has none yet."""
        _check_owner(owner)
        if owner in self._address_of:
            return self._address(self._address_of[owner])
        if len(self._owner_of) >= self.capacity:
            raise OutOfAddresses(self._subnet, self.capacity)
        # Not full, so this loop meets a free address after at most len(allocations) steps.
        candidate = self._first if self._cursor is None else self._cursor + 1
        while True:
            if candidate > self._last:
                candidate = self._first
            if candidate not in self._owner_of:
                break
            candidate += 1
        self._address_of[owner] = candidate
        self._owner_of[candidate] = owner
        self._cursor = candidate
        return self._address(candidate)

    def assign(self, owner: str, address: IPAddress) -> None:
        """Give the owner this very address (a pod found in the kernel keeps the one it has).

        InvalidState if the address is not a pod address of the subnet, is held by another
        owner, or the owner already holds a different one.
        """
        _check_owner(owner)
        value = self._parse_address_untrusted(f"address of {owner!r}", str(address))
        holder = self._owner_of.get(value)
        if holder is not None and holder != owner:
            raise InvalidState(f"{address} is already the address of {holder!r}")
        current = self._address_of.get(owner)
        if current is not None and current != value:
            raise InvalidState(f"{owner!r} already holds {self._address(current)}")
        self._address_of[owner] = value
        self._owner_of[value] = owner

    def release(self, owner: str) -> IPAddress | None:
        """Free the owner's address and return it; None if the owner held none."""
        address = self._address_of.pop(owner, None)
        if address is None:
            return None
        del self._owner_of[address]
        return self._address(address)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state that state= accepts back."""
        return {
            "version": STATE_VERSION,
            "subnet": str(self._subnet),
            "last": None if self._cursor is None else str(self._address(self._cursor)),
            "allocations": {owner: str(address) for owner, address in self.allocations.items()},
        }

    def _address(self, value: int) -> IPAddress:
        return IPv4Address(value) if self._subnet.version == 4 else IPv6Address(value)

    def _load_untrusted(self, state: object) -> None:
        if not isinstance(state, Mapping):
            raise InvalidState(f"pool state must be a JSON object, got {type(state).__name__}")
        unknown = sorted(repr(key) for key in state if key not in _STATE_FIELDS)
        if unknown:
            known = ", ".join(_STATE_FIELDS)
            raise InvalidState(f"pool state has unknown fields {', '.join(unknown)} (known: {known})")
        version = state.get("version")
        if isinstance(version, bool) or version != STATE_VERSION:
            raise InvalidState(f"pool state version is {version!r}, expected {STATE_VERSION}")
        self._check_subnet_untrusted(state.get("subnet"))
        allocations = state.get("allocations", {})
        if not isinstance(allocations, Mapping):
            raise InvalidState(f"pool state allocations must be a JSON object, got {type(allocations).__name__}")
        for owner, text in allocations.items():
            if not isinstance(owner, str) or not owner:
                raise InvalidState(f"pool state has an invalid owner {owner!r}: owners are non-empty strings")
            address = self._parse_address_untrusted(f"address of {owner!r}", text)
            if address in self._owner_of:
                raise InvalidState(
                    f"pool state gives {text} to both {self._owner_of[address]!r} and {owner!r}"
                )
            self._address_of[owner] = address
            self._owner_of[address] = owner
        last = state.get("last")
        self._cursor = None if last is None else self._parse_address_untrusted("last", last)

    def _check_subnet_untrusted(self, text: object) -> None:
        if not isinstance(text, str):
            raise InvalidState(f"pool state subnet must be a CIDR string, got {text!r}")
        try:
            subnet = ip_network(text, strict=True)
        except ValueError as exc:
            raise InvalidState(f"pool state subnet is invalid: {exc}") from None
        if subnet != self._subnet:
            raise SubnetMismatch(text, self._subnet)

    def _parse_address_untrusted(self, what: str, text: object) -> int:
        """A pod address from the state: a string naming a usable address of this subnet."""
        if not isinstance(text, str):
            raise InvalidState(f"pool state {what} must be an address string, got {text!r}")
        try:
            address = ip_address(text)
        except ValueError:
            raise InvalidState(f"pool state {what} is not an IP address: {text!r}") from None
        # A scope id would make two spellings of one address compare different.
        if isinstance(address, IPv6Address) and address.scope_id is not None:
            raise InvalidState(f"pool state {what} must not carry a scope id: {text!r}")
        if address.version != self._subnet.version or not self._first <= int(address) <= self._last:
            raise InvalidState(
                f"pool state {what} {text} is not a pod address of {self._subnet} "
                f"({self._address(self._first)}..{self._address(self._last)})"
            )
        return int(address)
