"""Backend types by name: the one place that knows which module implements which type.

A backend module is imported only when a cluster uses it (the WireGuard one loads
`cryptography` and the protocol core, which a VXLAN host does without). Adding a backend
is one module with a `from_context(BackendContext) -> Backend` factory plus one line here.
"""

from __future__ import annotations

import importlib

from overlayd.errors import ConfigError

from .contract import Backend, BackendContext

BACKENDS: dict[str, str] = {
    "vxlan": "overlayd.backend.vxlan",
    "wireguard": "overlayd.backend.wireguard",
    "host-gw": "overlayd.backend.hostgw",
}


def make_backend(type_name: str, ctx: BackendContext) -> Backend:
    """The backend the cluster config names (ConfigError for a type this build lacks)."""
    module_name = BACKENDS.get(type_name)
    if module_name is None:
        raise ConfigError(f"backend {type_name!r} is not supported (known: {', '.join(sorted(BACKENDS))})")
    backend: Backend = importlib.import_module(module_name).from_context(ctx)
    return backend
