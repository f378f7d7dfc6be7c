"""overlayctl ca init | host-key | sign-host | show | revoke: the cluster trust anchor (overlayd/trust).

    overlayctl ca init --dir /root/overlayd-ca           # ca.key (0600) + ca.pub (the trust anchor)
    overlayctl ca host-key --out /var/lib/overlayd/host.key   # on each host: prints its public key
    overlayctl ca sign-host --ca-dir /root/overlayd-ca --node host-1 \\
        --host-key-pub host-1.pub --out host-1.cert [--days 365 | --valid-seconds 600]
    overlayctl ca show --cert host-1.cert [--ca-file ca.pub]
    overlayctl ca revoke --ca-dir /root/overlayd-ca (--serial S | --cert host-1.cert)... [--etcd-...]

All but revoke work on files only. revoke adds serials to the CA-signed revocation list in
etcd (revocation.py). The CA key stays on the machine that signs; hosts get ca.pub and their
own certificate.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import trio

from overlayd.cli.network import add_etcd_arguments, etcd_config, with_cluster
from overlayd.cli.output import print_fields, print_json
from overlayd.cluster.client import ClusterClient
from overlayd.cluster.records import is_node_name
from overlayd.errors import ClusterError, ConfigError, UsageError
from overlayd.trust.certs import (
    HostCertificate,
    TrustAnchor,
    certificate_file_bytes,
    format_time,
    issue_certificate,
    load_certificate,
    load_trust_anchor,
)
from overlayd.trust.errors import RevocationError, UntrustedCertificate
from overlayd.trust.keyfiles import (
    create_private_key,
    key_id,
    load_or_create_private_key,
    load_private_key,
    load_public_key,
    public_b64,
    public_pem,
    raw_public,
    write_public_file,
)

CA_KEY_NAME = "ca.key"
CA_PUB_NAME = "ca.pub"
DEFAULT_DAYS = 365
MAX_DAYS = 3650
# Certificates start a little in the past, so hosts whose clocks lag still accept them.
BACKDATE_SECONDS = 300
MIN_SECONDS, MAX_SECONDS = 10, 86400
_REVOKE_ATTEMPTS = 5


def register(sub: argparse._SubParsersAction) -> None:
    ca = sub.add_parser("ca", help="cluster trust anchor: CA key, host keys and host certificates")
    ca_sub = ca.add_subparsers(dest="ca_command", required=True, parser_class=type(ca))
    init = ca_sub.add_parser("init", help="make the cluster signing key and its public trust anchor")
    init.add_argument("--dir", type=Path, required=True, help=f"directory for {CA_KEY_NAME} (0600) and {CA_PUB_NAME}")
    init.set_defaults(handler=_init)
    host_key = ca_sub.add_parser("host-key", help="make (or reuse) a host identity key and print its public key")
    host_key.add_argument("--out", type=Path, required=True, help="private key file (0600), e.g. state_dir/host.key")
    host_key.add_argument("--pub-out", type=Path, help="public key file to write (default: OUT.pub)")
    host_key.set_defaults(handler=_host_key)
    sign = ca_sub.add_parser("sign-host", help="issue a certificate binding a host name to its public key")
    sign.add_argument("--ca-dir", type=Path, required=True, help=f"directory holding {CA_KEY_NAME}")
    sign.add_argument("--node", required=True, help="the host's node_name")
    sign.add_argument("--host-key-pub", type=Path, required=True, help="the host's public key file (PEM)")
    sign.add_argument("--out", type=Path, required=True, help="certificate file to write")
    validity = sign.add_mutually_exclusive_group()
    validity.add_argument("--days", type=int, default=DEFAULT_DAYS, help=f"validity (default {DEFAULT_DAYS})")
    validity.add_argument("--valid-seconds", type=int,
                          help=f"validity in seconds ({MIN_SECONDS}..{MAX_SECONDS}): short-lived certificates")
    sign.set_defaults(handler=_sign_host)
    show = ca_sub.add_parser("show", help="print a host certificate, verified against a trust anchor if given")
    show.add_argument("--cert", type=Path, required=True, help="the host certificate file to show")
    show.add_argument("--ca-file", type=Path, help="trust anchor (ca.pub) to verify against")
    show.set_defaults(handler=_show)
    revoke = ca_sub.add_parser("revoke", help="add host certificates to the CA-signed revocation list in etcd")
    revoke.add_argument("--ca-dir", type=Path, required=True, help=f"directory holding {CA_KEY_NAME}")
    revoke.add_argument("--serial", action="append", default=[], help="certificate serial (repeatable)")
    revoke.add_argument("--cert", action="append", default=[], type=Path, help="certificate file (repeatable)")
    revoke.add_argument("--ca-file", type=Path,
                        help="trust anchor the current list may be signed by (while rotating the CA)")
    add_etcd_arguments(revoke)
    revoke.set_defaults(handler=_revoke)


def _init(args: argparse.Namespace) -> int:
    args.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pub_path = args.dir / CA_PUB_NAME
    if pub_path.exists():  # checked first so a refused init leaves nothing behind
        raise ConfigError(f"{pub_path} already exists; refusing to replace a trust anchor")
    key = create_private_key(args.dir / CA_KEY_NAME)
    write_public_file(pub_path, public_pem(key.public_key()))
    ident = key_id(raw_public(key.public_key()))
    if args.json:
        print_json({"ca_key": str(args.dir / CA_KEY_NAME), "trust_anchor": str(pub_path), "key_id": ident})
    else:
        print(f"CA key {args.dir / CA_KEY_NAME} (keep it private), trust anchor {pub_path} (key id {ident}):")
        print(f"copy {pub_path} to every host and set [trust] ca_file to it")
    return 0


def _host_key(args: argparse.Namespace) -> int:
    key, created = load_or_create_private_key(args.out)
    pub_path = args.pub_out or args.out.with_name(args.out.name + ".pub")
    pem = public_pem(key.public_key())
    write_public_file(pub_path, pem)
    if args.json:
        print_json({"private_key": str(args.out), "created": created, "public_key_file": str(pub_path),
                    "public_key": public_b64(raw_public(key.public_key()))})
    else:
        print(f"{'created' if created else 'using existing'} host key {args.out}; public key in {pub_path}:")
        print(pem.decode(), end="")
    return 0


def _sign_host(args: argparse.Namespace) -> int:
    if not is_node_name(args.node):
        raise UsageError(f"--node {args.node!r} is not a valid host name")
    if not 1 <= args.days <= MAX_DAYS:
        raise UsageError(f"--days {args.days} out of range 1..{MAX_DAYS}")
    if args.valid_seconds is not None and not MIN_SECONDS <= args.valid_seconds <= MAX_SECONDS:
        raise UsageError(f"--valid-seconds {args.valid_seconds} out of range {MIN_SECONDS}..{MAX_SECONDS}")
    validity = args.valid_seconds if args.valid_seconds is not None else args.days * 86400
    ca_key = load_private_key(args.ca_dir / CA_KEY_NAME)
    host_public = raw_public(load_public_key(args.host_key_pub))
    now = int(time.time())
    cert = issue_certificate(ca_key, args.node, host_public,
                             not_before=now - BACKDATE_SECONDS, not_after=now + validity)
    write_public_file(args.out, certificate_file_bytes(cert))
    if args.json:
        print_json(cert.to_dict())
    else:
        print(f"wrote {args.out}: {args.node} until {format_time(cert.not_after)} (serial {cert.serial})")
    return 0


def _fields(cert: HostCertificate) -> dict[str, str]:
    return {"node": cert.node, "public_key": public_b64(cert.public_key), "not_before": format_time(cert.not_before),
            "not_after": format_time(cert.not_after), "serial": cert.serial, "issuer": cert.issuer}


def _show(args: argparse.Namespace) -> int:
    """Exit 1 when a trust anchor is given and the certificate is not valid now."""
    cert = load_certificate(args.cert)
    fields = _fields(cert)
    status = 0
    if args.ca_file is not None:
        try:
            load_trust_anchor(args.ca_file).verify(cert)
        except UntrustedCertificate as exc:
            raise ConfigError(f"{args.cert}: {exc}") from None
        status = 0 if cert.valid_at(time.time()) else 1
        fields["verified"] = "signed by the trust anchor" + (", but NOT valid now" if status else "")
    print_json(fields) if args.json else print_fields(fields)
    return status


def _revoke(args: argparse.Namespace) -> int:
    from overlayd.trust.revocation import (RevocationList, is_serial, next_generation,
                                           parse_revocation_list_untrusted, sign_revocation_list,
                                           verify_revocation_list)

    bad = [s for s in args.serial if not is_serial(s)]
    if bad:
        raise UsageError(f"--serial {bad[0][:40]!r} is not a certificate serial (32 lower-case hex digits)")
    serials = set(args.serial) | {load_certificate(path).serial for path in args.cert}
    if not serials:
        raise UsageError("name at least one certificate: --serial S or --cert FILE")
    ca_key = load_private_key(args.ca_dir / CA_KEY_NAME)
    anchor_keys = dict(load_trust_anchor(args.ca_file).keys) if args.ca_file else {}
    anchor = TrustAnchor({**anchor_keys, **TrustAnchor.from_public_keys([ca_key.public_key()]).keys})

    async def job(cluster: ClusterClient) -> tuple[RevocationList, bool]:
        key = cluster.store.layout.revoked
        for _ in range(_REVOKE_ATTEMPTS):
            kv = await cluster.read_key(key)
            previous = None
            if kv is not None:
                try:
                    previous = parse_revocation_list_untrusted(kv.value)
                    verify_revocation_list(anchor, key, previous)
                except RevocationError as exc:
                    raise ConfigError(
                        f"the revocation list at {key} is not one this CA signed ({exc}); put back a signed copy "
                        f"(any host's state_dir/revoked.json) or delete the key and revoke every serial again"
                    ) from None
                if serials <= previous.serials:
                    return previous, False
            merged = serials | (previous.serials if previous else frozenset())
            revoked = sign_revocation_list(ca_key, key, merged, next_generation(previous.generation if previous else 0))
            # Compare-and-set: two operators revoking at once both end up on the list.
            if await cluster.put_key_if(key, revoked.to_bytes(), mod_revision=kv.mod_revision if kv else 0):
                return revoked, True
        raise ClusterError(f"the revocation list at {key} keeps changing under us; try again")

    revoked, written = trio.run(with_cluster, etcd_config(args), job)
    if args.json:
        print_json({"written": written, "generation": revoked.generation, "serials": sorted(revoked.serials)})
    else:
        state = "wrote" if written else "unchanged:"
        print(f"{state} revocation list generation {revoked.generation}: {len(revoked.serials)} revoked "
              f"(now including {', '.join(sorted(serials))})")
    return 0
