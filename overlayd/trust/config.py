"""The daemon's [trust] settings and what they load into: a record signer and verifier.

    [trust]
    ca_file = "/etc/overlayd/ca.pub"          # trust anchor: verify every peer's record
    host_cert = "/etc/overlayd/host.cert"      # this host's certificate: sign our record
    host_key = "/var/lib/overlayd/host.key"    # its private key (default: state_dir/host.key)
    recheck_interval = 60                      # seconds between re-checks of peers' certificates,
                                               # the revocation list and the cluster config (1..3600)

No [trust] section: records are neither signed nor verified, exactly as before. host_cert
alone: our record is signed, peers' records are not checked (the first step of turning
trust on in a running cluster: sign everywhere, then add ca_file everywhere). ca_file
needs host_cert, since peers that verify would otherwise ignore this host. With ca_file,
the cluster config and the revocation list count only when the CA signed them
(configsig.py, revocation.py), and peers are re-checked every recheck_interval (guard.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overlayd.errors import ConfigError

if TYPE_CHECKING:
    from overlayd.trust.signing import RecordSigner, RecordVerifier

# The certificate and signing modules (and so `cryptography`) are imported only
# when trust is configured: a daemon without it saves their memory (~6 MB).

log = logging.getLogger(__name__)

DEFAULT_HOST_KEY_NAME = "host.key"
# Warn this long before our certificate runs out: peers drop our record when it does.
EXPIRY_WARNING_SECONDS = 30 * 86400
DEFAULT_RECHECK_INTERVAL = 60.0
# Below a second the re-check would mostly poll etcd; above an hour a revoked host lingers.
RECHECK_INTERVAL_RANGE = (1, 3600)


@dataclass(frozen=True)
class TrustConfig:
    ca_file: Path | None = None
    host_key: Path | None = None  # default: state_dir / "host.key"
    host_cert: Path | None = None
    recheck_interval: float = DEFAULT_RECHECK_INTERVAL

    def __post_init__(self) -> None:
        if self.ca_file is not None and self.host_cert is None:
            raise ConfigError("trust.ca_file needs trust.host_cert: peers that verify would ignore this host's record")
        interval = self.recheck_interval
        if type(interval) not in (int, float) or not RECHECK_INTERVAL_RANGE[0] <= interval <= RECHECK_INTERVAL_RANGE[1]:
            raise ConfigError(f"trust.recheck_interval: expected seconds from {RECHECK_INTERVAL_RANGE[0]} to "
                              f"{RECHECK_INTERVAL_RANGE[1]}, got {interval!r}")

    def host_key_path(self, state_dir: Path) -> Path:
        return self.host_key or state_dir / DEFAULT_HOST_KEY_NAME


def trust_config_from_mapping(values: Mapping[str, Any] | None) -> TrustConfig:
    """The [trust] table of the TOML file (merged with flags); ConfigError for anything off."""
    if values is None:
        return TrustConfig()
    if not isinstance(values, Mapping):
        raise ConfigError("[trust] must be a table")
    unknown = set(values) - {"ca_file", "host_key", "host_cert", "recheck_interval"}
    if unknown:
        raise ConfigError(f"unknown [trust] keys: {', '.join(sorted(map(str, unknown)))}")
    paths: dict[str, Any] = {}
    if "recheck_interval" in values:
        paths["recheck_interval"] = values["recheck_interval"]  # checked by TrustConfig
    for key, value in values.items():
        if key == "recheck_interval":
            continue
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value:
            raise ConfigError(f"trust.{key}: expected a non-empty path string, got {value!r}")
        paths[key] = Path(value)
    return TrustConfig(**paths)


@dataclass(frozen=True)
class HostTrust:
    """What the daemon hands the cluster layer: encoder=signer, verifier=verifier (None: off)."""

    signer: RecordSigner | None = None
    verifier: RecordVerifier | None = None

    def status(self) -> dict[str, Any]:
        """For `overlayctl status` and metrics."""
        signing = None
        if self.signer is not None:
            from overlayd.trust.certs import format_time

            cert = self.signer.cert
            signing = {"node": cert.node, "serial": cert.serial, "issuer": cert.issuer,
                       "not_after": format_time(cert.not_after)}
        return {
            "signing": signing,
            "verifying": None if self.verifier is None else sorted(self.verifier.anchor.keys),
            "rejected": {} if self.verifier is None else {str(k): v for k, v in self.verifier.rejected.items()},
        }


def load_host_trust(
    config: TrustConfig, *, node: str, state_dir: Path, clock: Callable[[], float] = time.time,
) -> HostTrust:
    """Load key, certificate and anchor and check they fit together; ConfigError naming the problem."""
    if config.host_cert is None:
        return HostTrust()
    from overlayd.trust.certs import format_time, load_certificate, load_trust_anchor
    from overlayd.trust.errors import UntrustedCertificate
    from overlayd.trust.keyfiles import load_private_key
    from overlayd.trust.signing import RecordSigner, RecordVerifier

    key_path = config.host_key_path(state_dir)
    if not key_path.exists():
        raise ConfigError(f"host key {key_path} not found: create it with `overlayctl ca host-key --out {key_path}`")
    cert = load_certificate(config.host_cert)
    if cert.node != node:
        raise ConfigError(f"host certificate {config.host_cert} is for {cert.node!r}, but node_name is {node!r}")
    signer = RecordSigner(load_private_key(key_path), cert)
    now = clock()
    if not cert.valid_at(now):
        raise ConfigError(f"host certificate {config.host_cert} is valid only from {format_time(cert.not_before)} "
                          f"until {format_time(cert.not_after)}")
    if cert.not_after - now < EXPIRY_WARNING_SECONDS:
        log.warning("host certificate %s expires at %s: renew it (`overlayctl ca sign-host`) and restart",
                    config.host_cert, format_time(cert.not_after))
    if config.ca_file is None:
        return HostTrust(signer=signer)
    anchor = load_trust_anchor(config.ca_file)
    try:
        anchor.verify(cert)
    except UntrustedCertificate as exc:
        raise ConfigError(f"host certificate {config.host_cert}: {exc} ({config.ca_file})") from None
    return HostTrust(signer=signer, verifier=RecordVerifier(anchor, clock=clock))
