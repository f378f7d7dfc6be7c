"""Pod names, labels and the kernel names derived from them (pure, no I/O)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping

from overlayd.errors import UsageError

POD_NAME_MAX = 63
LABELS_MAX = 64
LABEL_NAME_MAX = 63
LABEL_PREFIX_MAX = 253
LABEL_VALUE_MAX = 63
IFNAME_MAX = 15  # IFNAMSIZ - 1
VETH_HASH_HEX = 8

# An RFC 1123 label, as Kubernetes requires of pod-like names.
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")
# Label names and values: alphanumeric at both ends, '-', '_' and '.' inside.
_LABEL_TOKEN = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?")
_LINK_PREFIX = re.compile(r"[a-z][a-z0-9-]*")


def validate_pod_name(name: str) -> None:
    """Raise UsageError unless `name` is a DNS label: 1..63 of a-z 0-9 '-', alphanumeric at both ends."""
    if not isinstance(name, str):
        raise UsageError(f"pod name must be a string, got {type(name).__name__}")
    if not name:
        raise UsageError("pod name is empty")
    if len(name) > POD_NAME_MAX:
        raise UsageError(f"pod name {name[:20]!r}... is {len(name)} characters long; at most {POD_NAME_MAX}")
    if not _DNS_LABEL.fullmatch(name):
        raise UsageError(
            f"pod name {name!r} is invalid: use lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )


def _validate_label_key(key: str) -> None:
    if not isinstance(key, str):
        raise UsageError(f"label key must be a string, got {type(key).__name__}")
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix or len(prefix) > LABEL_PREFIX_MAX or not _DNS_SUBDOMAIN.fullmatch(prefix):
            raise UsageError(
                f"label key {key!r}: the prefix before '/' must be a DNS subdomain "
                f"(lowercase, dots between labels, at most {LABEL_PREFIX_MAX} characters)"
            )
    if not name:
        raise UsageError(f"label key {key!r}: the name part is empty")
    if len(name) > LABEL_NAME_MAX or not _LABEL_TOKEN.fullmatch(name):
        raise UsageError(
            f"label key {key!r}: the name must be 1..{LABEL_NAME_MAX} of letters, digits, '-', '_', '.', "
            "starting and ending with a letter or digit"
        )


def _validate_label_value(key: str, value: str) -> None:
    if not isinstance(value, str):
        raise UsageError(f"label {key!r}: value must be a string, got {type(value).__name__}")
    if value and (len(value) > LABEL_VALUE_MAX or not _LABEL_TOKEN.fullmatch(value)):
        raise UsageError(
            f"label {key!r}: value {value[:LABEL_VALUE_MAX + 1]!r} must be empty or 1..{LABEL_VALUE_MAX} of "
            "letters, digits, '-', '_', '.', starting and ending with a letter or digit"
        )


def validate_labels(labels: Mapping[str, str]) -> None:
    """Raise UsageError unless `labels` are Kubernetes-like key=value pairs, at most LABELS_MAX of them."""
    if not isinstance(labels, Mapping):
        raise UsageError(f"labels must be a mapping of strings, got {type(labels).__name__}")
    if len(labels) > LABELS_MAX:
        raise UsageError(f"a pod has {len(labels)} labels; at most {LABELS_MAX}")
    for key, value in labels.items():
        _validate_label_key(key)
        _validate_label_value(key, value)


def validate_link_prefix(prefix: str) -> None:
    """The prefix must leave room for the 8 hex digits of a veth name within IFNAMSIZ."""
    room = IFNAME_MAX - VETH_HASH_HEX
    if not (1 <= len(prefix) <= room and _LINK_PREFIX.fullmatch(prefix)):
        raise UsageError(
            f"link prefix {prefix!r} is invalid: 1..{room} of a-z 0-9 '-', starting with a letter"
        )


def veth_name(link_prefix: str, pod_name: str) -> str:
    """Host-side veth name: the prefix plus 8 hex digits of SHA-256(pod name); stable across restarts."""
    digest = hashlib.sha256(pod_name.encode("ascii")).hexdigest()
    return link_prefix + digest[:VETH_HASH_HEX]


def is_veth_name(link_prefix: str, ifname: str) -> bool:
    """Whether `ifname` has the shape of a veth name derived with this prefix."""
    tail = ifname[len(link_prefix) :]
    return (
        ifname.startswith(link_prefix)
        and len(tail) == VETH_HASH_HEX
        and all(c in "0123456789abcdef" for c in tail)
    )
