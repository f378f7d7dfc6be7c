"""Control commands, defined apart from any transport.

The socket server and in-process callers (tests) go through `dispatch`, so a
command behaves the same however it is reached. Arguments are checked here,
before anything reaches the daemon, let alone netlink.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from overlayd.errors import UsageError
from overlayd.nat.ports import publications_untrusted
from overlayd.cluster.errors import RecordError
from overlayd.pods.names import validate_labels, validate_pod_name
from overlayd.policy.model import PROTOCOLS, Policy, parse_policy_untrusted, validate_policy_name
from overlayd.registry.records import ServicePort, ports_untrusted


class ControlPlane(Protocol):
    """What the daemon offers to its control socket."""

    async def status(self) -> dict[str, Any]: ...
    async def hosts(self) -> list[dict[str, Any]]: ...
    async def peers(self) -> list[dict[str, Any]]: ...
    async def pod_add(self, name: str, labels: dict[str, str], **extra: Any) -> dict[str, Any]: ...
    async def pod_del(self, name: str) -> None: ...
    async def pod_get(self, name: str) -> dict[str, Any]: ...
    async def pod_list(self) -> list[dict[str, Any]]: ...
    # CNI attachments (overlayd-cni)
    async def cni_exec(self, env: dict[str, str], stdin: bytes, via: str | None = None) -> tuple[str, int] | None: ...
    async def cni_list(self) -> list[dict[str, Any]]: ...
    # services (registry/)
    async def service_add(self, name: str, selector: dict[str, str],
                          ports: tuple[ServicePort, ...]) -> dict[str, Any]: ...
    async def service_del(self, name: str) -> None: ...
    async def service_get(self, name: str) -> dict[str, Any]: ...
    async def service_list(self) -> list[dict[str, Any]]: ...
    # network policy (policy/)
    async def policy_apply(self, policy: Policy, warnings: list[str],
                           signature: dict[str, Any] | None = None) -> dict[str, Any]: ...
    async def policy_del(self, name: str, signature: dict[str, Any] | None = None) -> None: ...
    async def policy_get(self, name: str) -> dict[str, Any]: ...
    async def policy_list(self) -> list[dict[str, Any]]: ...
    async def policy_explain(self, src: str, dst: str, protocol: str, port: int | None) -> dict[str, Any]: ...


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
    _only(args, "name", "labels", "ports")
    labels = args.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise UsageError("argument 'labels' must map strings to strings")
    validate_labels(labels)
    extra = _published_ports(args)
    return await plane.pod_add(_pod_name(args), labels, **extra)


def _published_ports(args: dict[str, Any]) -> dict[str, Any]:
    """pod.add's optional `ports` ([{protocol, host_port, pod_port, host_ip}]), checked; passed on only
    when given, so a pod without ports is added exactly as before."""
    if "ports" not in args:
        return {}
    ports = publications_untrusted(args["ports"])
    return {"ports": ports} if ports else {}


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


# --- CNI attachments: the calls overlayd-cni forwards, and `pod ls` --------------------

_CNI_ENV_MAX = 16  # CNI_* variables a call may carry; the spec defines 6


async def _cni_exec(plane: ControlPlane, args: dict[str, Any]) -> Any:
    """One CNI call as the runtime made it; the handler parses it (untrusted) and answers stdout and exit.

    The C front of overlayd-cni (overlayd/cni/shim.c) adds "socket" (the one it asked) and "reply": "hex",
    and gets {"exit": N, "stdout_hex": "..."}, or {"fallback": true} when the call is not for this socket
    (the config names another, or is no JSON object): the Python client then makes it.
    """
    _only(args, "env", "stdin_hex", "socket", "reply")
    env, stdin_hex = args.get("env"), args.get("stdin_hex")
    via, reply = args.get("socket"), args.get("reply", "text")
    if not isinstance(env, dict) or len(env) > _CNI_ENV_MAX or not all(
            isinstance(k, str) and k.startswith("CNI_") and isinstance(v, str) for k, v in env.items()):
        raise UsageError(f"argument 'env' must map at most {_CNI_ENV_MAX} CNI_* names to strings")
    try:
        stdin = bytes.fromhex(stdin_hex) if isinstance(stdin_hex, str) else None
    except ValueError:
        stdin = None
    if stdin is None:
        raise UsageError("argument 'stdin_hex' must be the config in hexadecimal")
    if via is not None and not isinstance(via, str):
        raise UsageError("argument 'socket' must be a string")
    if reply not in ("text", "hex"):
        raise UsageError("argument 'reply' must be \"text\" or \"hex\"")
    answer = await plane.cni_exec(env, stdin, via)
    if answer is None:
        return {"fallback": True}
    stdout, code = answer
    return {"exit": code, "stdout_hex": stdout.encode().hex()} if reply == "hex" else {"exit": code, "stdout": stdout}


async def _cni_list(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.cni_list()


# --- services ------------------------------------------------------------------------


def _service_name(args: dict[str, Any]) -> str:
    name = args.get("name")
    if not isinstance(name, str):
        raise UsageError("argument 'name' (string) is required")
    try:
        validate_pod_name(name)  # services are DNS labels too
    except UsageError as exc:
        raise UsageError(str(exc).replace("pod name", "service name")) from None
    return name


async def _service_add(plane: ControlPlane, args: dict[str, Any]) -> Any:
    """`selector` as labels, `ports` as [{port, target_port, protocol}]."""
    _only(args, "name", "selector", "ports")
    selector = args.get("selector")
    if not isinstance(selector, dict) or not selector or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        raise UsageError("argument 'selector' must map label names to values (at least one)")
    validate_labels(selector)
    try:
        ports = ports_untrusted(args.get("ports"))
    except RecordError as exc:
        raise UsageError(f"argument 'ports': {exc}") from None
    return await plane.service_add(_service_name(args), selector, ports)


async def _service_del(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name")
    await plane.service_del(_service_name(args))
    return None


async def _service_get(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name")
    return await plane.service_get(_service_name(args))


async def _service_list(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.service_list()


# --- network policy ------------------------------------------------------------------


def _policy_name(args: dict[str, Any]) -> str:
    return validate_policy_name(args.get("name"))


def _signature(args: dict[str, Any]) -> dict[str, Any] | None:
    """The cluster CA's signature (policy/signing.py), checked by the daemon in trust mode."""
    signature = args.get("signature")
    if signature is not None and not isinstance(signature, dict):
        raise UsageError("argument 'signature' must be an object (overlayctl policy ... --ca-dir)")
    return signature


async def _policy_apply(plane: ControlPlane, args: dict[str, Any]) -> Any:
    """`document`: one NetworkPolicy document, decoded (the CLI reads YAML or JSON); `signature`:
    the cluster CA's, required by daemons in trust mode."""
    _only(args, "document", "signature")
    policy, warnings = parse_policy_untrusted(args.get("document"))
    signature = _signature(args)
    return await (plane.policy_apply(policy, warnings, signature) if signature is not None
                  else plane.policy_apply(policy, warnings))


async def _policy_del(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name", "signature")
    signature = _signature(args)
    name = _policy_name(args)
    await (plane.policy_del(name, signature) if signature is not None else plane.policy_del(name))
    return None


async def _policy_get(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args, "name")
    return await plane.policy_get(_policy_name(args))


async def _policy_list(plane: ControlPlane, args: dict[str, Any]) -> Any:
    _only(args)
    return await plane.policy_list()


async def _policy_explain(plane: ControlPlane, args: dict[str, Any]) -> Any:
    """`from`, `to`: pod names (HOST/NAME when ambiguous) or addresses; `port` (or null), `protocol`."""
    _only(args, "from", "to", "port", "protocol")
    src, dst = args.get("from"), args.get("to")
    if not (isinstance(src, str) and isinstance(dst, str) and 0 < len(src) <= 320 and 0 < len(dst) <= 320):
        raise UsageError("arguments 'from' and 'to' must be pod names or addresses")
    protocol, port = args.get("protocol", "tcp"), args.get("port")
    if protocol not in PROTOCOLS.values():
        raise UsageError("argument 'protocol' must be tcp, udp or sctp")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535):
        raise UsageError("argument 'port' must be a port number (1-65535) or null")
    return await plane.policy_explain(src, dst, protocol, port)


COMMANDS: dict[str, Handler] = {
    "status": _status,
    "hosts": _hosts,
    "peers": _peers,
    "pod.add": _pod_add,
    "pod.del": _pod_del,
    "pod.get": _pod_get,
    "pod.list": _pod_list,
    "cni.exec": _cni_exec,
    "cni.list": _cni_list,
    "service.add": _service_add,
    "service.del": _service_del,
    "service.get": _service_get,
    "service.list": _service_list,
    "policy.apply": _policy_apply,
    "policy.del": _policy_del,
    "policy.get": _policy_get,
    "policy.list": _policy_list,
    "policy.explain": _policy_explain,
}


async def dispatch(plane: ControlPlane, cmd: str, args: dict[str, Any]) -> Any:
    handler = COMMANDS.get(cmd)
    if handler is None:
        raise UsageError(f"unknown command {cmd!r}; known: {', '.join(sorted(COMMANDS))}")
    return await handler(plane, args)
