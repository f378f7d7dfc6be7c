"""Where overlayctl's connection settings come from: flag > environment > config file > default.

The environment uses the names operators already export for etcdctl (ETCDCTL_ENDPOINTS,
ETCDCTL_CACERT, ETCDCTL_CERT, ETCDCTL_KEY) plus OVERLAYCTL_SOCKET. The client config file
is $OVERLAYCTL_CONFIG, else $XDG_CONFIG_HOME/overlayctl/config.toml (~/.config/...):

    socket = "/run/overlayd/overlayd.sock"
    [etcd]
    endpoints = ["https://10.0.0.1:2379", "https://10.0.0.2:2379"]   # or one comma-separated string
    prefix = "/overlayd/network"
    ca_file = "ca.crt"        # relative paths are relative to the config file
    cert_file = "client.crt"
    key_file = "client.key"

A file that cannot be read or has a wrong or unknown key is a usage error (one line, exit 2).
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from overlayd.errors import UsageError

CONFIG_ENV = "OVERLAYCTL_CONFIG"


@dataclass(frozen=True)
class Setting:
    dest: str  # argparse dest of the flag
    env: str
    section: str | None  # table in the config file, None for the top level
    key: str
    default: str | None
    is_path: bool


SETTINGS = (
    Setting("socket", "OVERLAYCTL_SOCKET", None, "socket", "/run/overlayd/overlayd.sock", True),
    # Bare like etcdctl's, so it becomes https when TLS files are set.
    Setting("etcd_endpoints", "ETCDCTL_ENDPOINTS", "etcd", "endpoints", "127.0.0.1:2379", False),
    Setting("etcd_prefix", "OVERLAYCTL_ETCD_PREFIX", "etcd", "prefix", "/overlayd/network", False),
    Setting("etcd_ca", "ETCDCTL_CACERT", "etcd", "ca_file", None, True),
    Setting("etcd_cert", "ETCDCTL_CERT", "etcd", "cert_file", None, True),
    Setting("etcd_key", "ETCDCTL_KEY", "etcd", "key_file", None, True),
)
_FILE_KEYS: dict[str | None, set[str]] = {}
for _s in SETTINGS:
    _FILE_KEYS.setdefault(_s.section, set()).add(_s.key)


def default_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME") or "~").expanduser() / ".config")
    return Path(base) / "overlayctl" / "config.toml"


def config_path(env: Mapping[str, str]) -> tuple[Path, bool]:
    """The config file and whether it was named explicitly (then it must exist)."""
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV]), True
    return default_config_path(env), False


def load_config_file(path: Path, *, required: bool) -> dict[str, str]:
    """The file's settings by dest, paths made absolute; {} when an implicit file is absent."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise UsageError(f"config file {path} ({CONFIG_ENV}) does not exist") from None
        return {}
    except PermissionError:
        if required:
            raise UsageError(f"config file {path} ({CONFIG_ENV}): permission denied") from None
        return {}  # e.g. sudo or setpriv kept another user's $HOME: that file is not ours to use
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path}: cannot read it ({getattr(exc, 'strerror', None) or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path}: not valid TOML ({exc})") from None
    return _settings_from_toml(raw, path)


def _settings_from_toml(raw: dict[str, Any], path: Path) -> dict[str, str]:
    def fail(message: str) -> UsageError:
        return UsageError(f"config file {path}: {message}")

    for key, value in raw.items():
        if isinstance(value, dict):
            if key not in _FILE_KEYS:
                raise fail(f"unknown table [{key}]")
            unknown = sorted(set(value) - _FILE_KEYS[key])
            if unknown:
                raise fail(f"unknown key {key}.{unknown[0]} (known: {', '.join(sorted(_FILE_KEYS[key]))})")
        elif key not in _FILE_KEYS[None]:
            raise fail(f"unknown key {key!r}")
    found: dict[str, str] = {}
    for setting in SETTINGS:
        table = raw.get(setting.section, {}) if setting.section else raw
        if setting.key not in table:
            continue
        value = table[setting.key]
        name = f"{setting.section}.{setting.key}" if setting.section else setting.key
        if setting.dest == "etcd_endpoints" and isinstance(value, list):
            if not value or not all(isinstance(v, str) and v for v in value):
                raise fail(f"{name}: expected a list of URLs")
            value = ",".join(value)
        if not isinstance(value, str) or not value:
            raise fail(f"{name}: expected a non-empty string")
        # Paths in a config file are relative to it, as kubeconfig's are.
        found[setting.dest] = str(path.parent / value) if setting.is_path else value
    return found


def normalize_endpoints(endpoints: str, *, tls: bool) -> str:
    """etcdctl takes bare host:port endpoints; give them a scheme (https when TLS files are set)."""
    scheme = "https://" if tls else "http://"
    return ",".join(e if "://" in e else scheme + e for e in (p.strip() for p in endpoints.split(",")) if e)


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], file_values: Mapping[str, str]) -> dict[str, Any]:
    """Each setting's value by dest: the flag if given, else the environment, the file, the default."""
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        value = flags.get(setting.dest)
        if value is None:
            value = env.get(setting.env) or file_values.get(setting.dest) or setting.default
        values[setting.dest] = Path(value) if setting.is_path and value is not None else value
    tls = any(values[d] is not None for d in ("etcd_ca", "etcd_cert", "etcd_key"))
    values["etcd_endpoints"] = normalize_endpoints(str(values["etcd_endpoints"]), tls=tls)
    return values


def isolated_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for overlayctl runs that must use only their own flags (the lab's):
    none of the caller's settings, and an empty config file."""
    names = {s.env for s in SETTINGS} | {CONFIG_ENV}
    clean = {k: v for k, v in (os.environ if env is None else env).items() if k not in names}
    clean[CONFIG_ENV] = os.devnull
    return clean
