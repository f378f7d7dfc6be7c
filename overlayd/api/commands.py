"""Control commands, defined apart from any transport.

The socket server and in-process callers (tests) go through `dispatch`, so a
command behaves the same however it is reached. Arguments are checked here,
before anything reaches the daemon, let alone netlink.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from overlayd.cni.spec import CniError, check_container_id, check_ifname
from overlayd.errors import UsageError
from overlayd.pods.names import validate_labels, validate_pod_name


class ControlPlane(Protocol):
    """What the daemon offers to its control socket."""

    async def status(self) -> dict[str, Any]: ...
    async def hosts(self) -> list[dict[str, Any]]: ...
    async def peers(self) -> list[dict[str, Any]]: ...
    async def pod_add(self, name: str, labels: dict[str, str]) -> dict[str, Any]: ...
    async def pod_del(self, name: str) -> None: ...
    async def pod_get(self, name: str) -> dict[str, Any]: ...
    async def pod_list(self) -> list[dict[str, Any]]: ...
    # CNI attachments (overlayd-cni)
    async def cni_add(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]: ...
    async def cni_del(self, network: str, container_id: str, ifname: str) -> None: ...
    async def cni_check(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]: ...
    async def cni_gc(self, network: str, valid: list[tuple[str, str]]) -> list[str]: ...
    async def cni_list(self) -> list[dict[str, Any]]: ...


Handler = Callable[[ControlPlane, dict[str, Any]], Awaitable[Any]]


def _only(args: dict[str, Any], *allowed: str) -> None:
    extra = set(args) - set(allowed)
    if extra:
        raise UsageError(f"unexpected arguments: {', '.join(sorted(extra))}")


def _pod_name(args: dict[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str):
        raise UsageError("argument 'name' (string) is required")
    validate_pod_name(name)
    return name


async def _status(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.status()


async def _hosts(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.hosts()


async def _peers(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.peers()


async def _pod_add(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name", "labels")
    labels = args.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise UsageError("argument 'labels' must map strings to strings")
    validate_labels(labels)
    return await plane.pod_add(_pod_name(args), labels)


async def _pod_del(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name")
    await plane.pod_del(_pod_name(args))
    return None


async def _pod_get(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name")
    return await plane.pod_get(_pod_name(args))


async def _pod_list(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.pod_list()


# --- CNI attachments: the requests overlayd-cni sends --------------------------------


def _cni_key(args: dict[str, Any]) -> tuple[str, str, str]:
    network, container_id, ifname = args.get("network"), args.get("container_id"), args.get("ifname")
    try:
        check_container_id(network)
        check_container_id(container_id)
        check_ifname(ifname)
    except CniError as exc:
        raise UsageError(f"{exc.msg} (network, container_id, ifname)") from None
    return network, container_id, ifname  # type: ignore[return-value]


def _cni_netns(args: dict[str, Any]) -> str:
    netns = args.get("netns")
    if not isinstance(netns, str) or not netns.startswith("/") or "\0" in netns or len(netns) > 4096:
        raise UsageError("argument 'netns' must be an absolute path")
    return netns


async def _cni_add(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "network", "container_id", "ifname", "netns")
    return await plane.cni_add(*_cni_key(args), _cni_netns(args))


async def _cni_del(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "network", "container_id", "ifname")
    await plane.cni_del(*_cni_key(args))
    return None


async def _cni_check(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "network", "container_id", "ifname", "netns")
    return await plane.cni_check(*_cni_key(args), _cni_netns(args))


async def _cni_gc(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "network", "valid")
    network, valid = args.get("network"), args.get("valid")
    try:
        check_container_id(network)
    except CniError as exc:
        raise UsageError(f"network: {exc.msg}") from None
    if not isinstance(valid, list) or not all(isinstance(pair, list) and len(pair) == 2
                                              and all(isinstance(x, str) for x in pair) for pair in valid):
        raise UsageError("argument 'valid' must be a list of [container_id, ifname] pairs")
    return await plane.cni_gc(network, [(cid, ifname) for cid, ifname in valid])  # type: ignore[arg-type]


async def _cni_list(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.cni_list()


COMMANDS: dict[str, Handler] = {
    "status": _status,
    "hosts": _hosts,
    "peers": _peers,
    "pod.add": _pod_add,
    "pod.del": _pod_del,
    "pod.get": _pod_get,
    "pod.list": _pod_list,
    "cni.add": _cni_add,
    "cni.del": _cni_del,
    "cni.check": _cni_check,
    "cni.gc": _cni_gc,
    "cni.list": _cni_list,
}


async def dispatch(plane: ControlPlane, cmd: str, args: dict[str, Any]) -> Any:
    handler = COMMANDS.get(cmd)
    if handler is None:
        raise UsageError(f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}")
    return await handler(plane, args)
