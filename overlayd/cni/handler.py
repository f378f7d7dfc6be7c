"""The daemon's side of overlayd-cni: one CNI call (environment and stdin as the runtime gave them) in, stdout
and exit code out.

overlayd.cni.client (or its C front, shim.c) forwards the call untouched
(command `cni.exec`); here it is parsed as untrusted input and carried out
against the CNI attachments. Every failure becomes the spec's error JSON with
its code, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from overlayd.cni import spec
from overlayd.cni.client import target_socket
from overlayd.cni.spec import CniError, Env, NetConf
from overlayd.errors import ConflictError, KernelError, NotFoundError, OverlaydError, UsageError


class CniOps(Protocol):
    """What a CNI call needs of the daemon (overlayd.api.answers.Answers)."""

    async def status(self) -> dict[str, Any]: ...
    async def cni_add(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]: ...
    async def cni_del(self, network: str, container_id: str, ifname: str) -> None: ...
    async def cni_check(self, network: str, container_id: str, ifname: str, netns: str) -> dict[str, Any]: ...
    async def cni_gc(self, network: str, valid: list[tuple[str, str]]) -> list[str]: ...


async def handle(environ: Mapping[str, str], raw: bytes, ops: CniOps, *, via: str | None = None,
                 ) -> tuple[str, int] | None:
    """(stdout, exit code) of the CNI call.

    `via`: the socket the caller (the C front) asked. None when the Python client would not have asked it:
    the config names another socket, or is no JSON object (the client answers that itself).
    """
    if via is not None and target_socket(raw) != via:
        return None
    try:
        env = spec.parse_env(environ)
        if env.command == "VERSION" and not raw.strip():  # some runtimes ask without a config
            conf = NetConf(cni_version=spec.SUPPORTED_VERSIONS[-1], name="", socket=spec.DEFAULT_SOCKET)
        else:
            conf = spec.parse_config_untrusted(raw, env.command)
        result = await _run(env, conf, ops)
    except CniError as exc:
        return json.dumps(exc.to_json(spec.peek_version(raw))) + "\n", 1
    return ("" if result is None else json.dumps(result) + "\n"), 0


async def _run(env: Env, conf: NetConf, ops: CniOps) -> dict[str, Any] | None:
    """Carry out one command; the JSON to print, or None for commands that print nothing."""
    key = (conf.name, env.container_id, env.ifname)
    if env.command == "VERSION":
        return {"cniVersion": conf.cni_version, "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    if env.command == "ADD":
        attachment = await _call(ops.cni_add(*key, env.netns))
        # The network config's own dns wins; else the resolvers the host's pods use.
        return spec.build_result(conf.cni_version, attachment, conf.dns or attachment.get("dns") or {})
    if env.command == "DEL":
        await _call(ops.cni_del(*key))
        return None
    if env.command == "CHECK":
        await _check(env, conf, ops)
        return None
    if env.command == "GC":
        assert conf.valid_attachments is not None
        await _call(ops.cni_gc(conf.name, list(conf.valid_attachments)))
        return None
    await _status(ops)
    return None


async def _call(request: Any) -> Any:
    """Await one daemon operation; its errors become CniErrors with the code a runtime can act on."""
    try:
        return await request
    except NotFoundError as exc:
        raise CniError(spec.ERR_UNKNOWN_CONTAINER, str(exc)) from None
    except UsageError as exc:
        raise CniError(spec.ERR_INVALID_ENV, str(exc)) from None
    except ConflictError as exc:
        still_starting = "still starting" in str(exc)
        raise CniError(spec.ERR_TRY_AGAIN if still_starting else spec.ERR_REFUSED, str(exc)) from None
    except KernelError as exc:
        raise CniError(spec.ERR_IO, str(exc)) from None
    except OverlaydError as exc:
        raise CniError(spec.ERR_INTERNAL, str(exc)) from None


async def _check(env: Env, conf: NetConf, ops: CniOps) -> None:
    try:
        attachment = await _call(ops.cni_check(conf.name, env.container_id, env.ifname, env.netns))
    except CniError as exc:
        if exc.code in (spec.ERR_REFUSED, spec.ERR_IO):
            raise CniError(spec.ERR_CHECK_FAILED, exc.msg) from None
        raise
    expected = spec.prev_result_address(conf.prev_result, env.ifname)
    have = f"{attachment['ip']}/{attachment['prefixlen']}"
    if expected is not None and expected != have:
        raise CniError(spec.ERR_CHECK_FAILED, f"prevResult gives {env.ifname} {expected}, overlayd has {have}")


async def _status(ops: CniOps) -> None:
    status = await ops.status()
    if not status.get("ready") or not status.get("subnet"):
        raise CniError(spec.ERR_NOT_AVAILABLE, f"overlayd is not ready (health {status.get('health')})")
