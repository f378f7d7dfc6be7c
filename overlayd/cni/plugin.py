"""overlayd-cni: the CNI plugin binary, a thin client of the local overlayd's control socket.

The runtime runs it with CNI_* in the environment and the network config on
stdin; it asks the daemon, which owns addresses and kernel state, and prints
the result or the spec's error JSON (exit 1). Imports are kept to the standard
library and the control-socket client: runtimes call plugins on every
container start, so start-up time is the plugin's cost.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any, TextIO

from overlayd.api.client import ControlClient, DaemonUnreachable
from overlayd.cni import spec
from overlayd.cni.spec import CniError, Env, NetConf
from overlayd.errors import (ConflictError, KernelError, NotFoundError, OverlaydError,
                             UsageError)

_TIMEOUT = 60.0  # seconds; the runtime has its own, longer deadline


def _client(conf: NetConf) -> ControlClient:
    return ControlClient(conf.socket, timeout=_TIMEOUT)  # type: ignore[arg-type]


def _call(conf: NetConf, cmd: str, **args: Any) -> Any:
    """One daemon request; its errors become CniErrors with the code a runtime can act on."""
    try:
        return _client(conf).call(cmd, **args)
    except DaemonUnreachable as exc:
        raise CniError(spec.ERR_TRY_AGAIN, str(exc)) from None
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


def _attachment_args(conf: NetConf, env: Env) -> dict[str, Any]:
    return {"network": conf.name, "container_id": env.container_id, "ifname": env.ifname}


def run(env: Env, conf: NetConf) -> dict[str, Any] | None:
    """Carry out one command; the JSON to print, or None for commands that print nothing."""
    if env.command == "VERSION":
        return {"cniVersion": conf.cni_version, "supportedVersions": list(spec.SUPPORTED_VERSIONS)}
    if env.command == "ADD":
        attachment = _call(conf, "cni.add", netns=env.netns, **_attachment_args(conf, env))
        return spec.build_result(conf.cni_version, attachment, conf.dns)
    if env.command == "DEL":
        _call(conf, "cni.del", **_attachment_args(conf, env))
        return None
    if env.command == "CHECK":
        _check(conf, env)
        return None
    if env.command == "GC":
        assert conf.valid_attachments is not None
        _call(conf, "cni.gc", network=conf.name, valid=[list(pair) for pair in conf.valid_attachments])
        return None
    _status(conf)
    return None


def _check(conf: NetConf, env: Env) -> None:
    try:
        attachment = _call(conf, "cni.check", netns=env.netns, **_attachment_args(conf, env))
    except CniError as exc:
        if exc.code in (spec.ERR_REFUSED, spec.ERR_IO):
            raise CniError(spec.ERR_CHECK_FAILED, exc.msg) from None
        raise
    expected = spec.prev_result_address(conf.prev_result, env.ifname)
    have = f"{attachment['ip']}/{attachment['prefixlen']}"
    if expected is not None and expected != have:
        raise CniError(spec.ERR_CHECK_FAILED, f"prevResult gives {env.ifname} {expected}, overlayd has {have}")


def _status(conf: NetConf) -> None:
    try:
        status = _client(conf).call("status")
    except OverlaydError as exc:
        raise CniError(spec.ERR_NOT_AVAILABLE, f"overlayd is not available: {exc}") from None
    if not status.get("ready") or not status.get("subnet"):
        raise CniError(spec.ERR_NOT_AVAILABLE, f"overlayd is not ready (health {status.get('health')})")


def main(environ: Mapping[str, str] | None = None, stdin: Any = None, stdout: TextIO | None = None) -> int:
    environ = os.environ if environ is None else environ
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout if stdout is None else stdout
    raw = b""
    try:
        raw = stdin.read(spec.MAX_CONFIG_BYTES + 1)
        env = spec.parse_env(environ)
        if env.command == "VERSION" and not raw.strip():  # some runtimes ask without a config
            conf = NetConf(cni_version=spec.SUPPORTED_VERSIONS[-1], name="", socket=spec.DEFAULT_SOCKET)
        else:
            conf = spec.parse_config_untrusted(raw, env.command)
        result = run(env, conf)
    except CniError as exc:
        json.dump(exc.to_json(spec.peek_version(raw)), stdout)
        stdout.write("\n")
        return 1
    except Exception as exc:  # the spec wants JSON on stdout even for what we did not foresee
        error = CniError(spec.ERR_INTERNAL, f"overlayd-cni: unexpected {type(exc).__name__}: {exc}")
        json.dump(error.to_json(spec.peek_version(raw)), stdout)
        stdout.write("\n")
        return 1
    if result is not None:
        json.dump(result, stdout)
        stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
