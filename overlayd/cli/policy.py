"""overlayctl policy apply | ls | get | del | explain."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overlayd.api.client import ControlClient
from overlayd.cli.output import Column, emit, print_json
from overlayd.errors import UsageError
from overlayd.policy.model import PROTOCOLS, parse_policy_untrusted

_COLUMNS = [Column("name", "NAME"), Column("pod_selector", "POD-SELECTOR"), Column("types", "TYPES"),
            Column("ingress_rules", "INGRESS"), Column("egress_rules", "EGRESS"), Column("pod_count", "PODS")]
_PORT = re.compile(r"(\d{1,5}|any)(?:/(tcp|udp|sctp))?")
MAX_FILE_BYTES = 4 * 1024 * 1024


def register(sub: argparse._SubParsersAction) -> None:
    policy = sub.add_parser("policy", help="network policy: which pods may talk to which (Kubernetes NetworkPolicy)")
    policy_sub = policy.add_subparsers(dest="policy_command", required=True, parser_class=type(policy))
    p = policy_sub.add_parser("apply", help="create or replace policies from NetworkPolicy documents (YAML or JSON)")
    p.add_argument("-f", "--filename", required=True, metavar="FILE",
                   help="a file of one or more documents ('-' for standard input)")
    _signing_arguments(p)
    p.set_defaults(handler=_apply)
    p = policy_sub.add_parser("ls", help="list policies with the number of pods each selects")
    p.set_defaults(handler=_ls)
    p = policy_sub.add_parser("get", help="show one policy as a NetworkPolicy document, and the pods it selects")
    p.add_argument("name", help="the policy's metadata.name")
    p.set_defaults(handler=_get)
    p = policy_sub.add_parser("del", help="delete a policy")
    p.add_argument("name", help="the policy's metadata.name")
    _signing_arguments(p)
    p.set_defaults(handler=_del)
    p = policy_sub.add_parser("explain", help="whether a new flow FROM -> TO:PORT is allowed, and by which rule "
                                              "(exit 0 allowed, 1 denied)")
    p.add_argument("src", metavar="FROM", help="a pod name (HOST/NAME when two hosts have one) or an address")
    p.add_argument("dst", metavar="TO", help="a pod name (HOST/NAME when two hosts have one) or an address")
    p.add_argument("port", metavar="PORT[/PROTO]", help="destination port (or 'any') and tcp (default), udp or sctp")
    p.set_defaults(handler=_explain)


def _signing_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-dir", type=Path, metavar="DIR",
                        help="directory holding the cluster CA's ca.key: sign (trust mode requires it)")
    parser.add_argument("--etcd-prefix", metavar="PREFIX",
                        help="the cluster's key prefix the signature binds to (env OVERLAYCTL_ETCD_PREFIX; "
                             "default /overlayd/network)")


def _signer(args: argparse.Namespace) -> Callable[[str, dict[str, Any] | None], dict[str, Any]] | None:
    """sign(name, canonical document or None for a delete) with the CA key of --ca-dir, or None."""
    if args.ca_dir is None:
        return None
    from overlayd.cli.ca import CA_KEY_NAME
    from overlayd.policy.signing import PolicySigner
    from overlayd.trust.keyfiles import load_private_key

    signer = PolicySigner(load_private_key(args.ca_dir / CA_KEY_NAME))
    # The generation only grows: the signer's clock, in nanoseconds.
    return lambda name, doc: signer(f"{args.etcd_prefix}/policies/{name}", doc, time.time_ns())


def read_documents(path: str) -> list[Any]:
    """The documents of a YAML (or JSON) file; a `kind: List` contributes its items."""
    import yaml  # only this command needs it

    try:
        text = sys.stdin.read(MAX_FILE_BYTES + 1) if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"-f {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"-f {path}: not UTF-8 text") from None
    if len(text) > MAX_FILE_BYTES:
        raise UsageError(f"-f {path}: larger than {MAX_FILE_BYTES} bytes")
    try:
        loaded = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UsageError(f"-f {path}: not valid YAML or JSON{at}: {problem}") from None
    docs: list[Any] = []
    for doc in loaded:
        if isinstance(doc, dict) and doc.get("kind") == "List" and isinstance(doc.get("items"), list):
            docs += doc["items"]
        else:
            docs.append(doc)
    if not docs:
        raise UsageError(f"-f {path}: no documents")
    return docs


def _apply(args: argparse.Namespace) -> int:
    docs = read_documents(args.filename)
    policies = []
    for i, doc in enumerate(docs):  # all checked before any is applied
        try:
            policies.append(parse_policy_untrusted(doc)[0])
        except UsageError as exc:
            which = f"document {i + 1}" if len(docs) > 1 else "the document"
            raise UsageError(f"{which}: {exc}") from None
    sign = _signer(args)
    client = ControlClient(args.socket)
    results = [client.call("policy.apply", document=doc,
                           **({"signature": sign(policy.name, policy.to_doc())} if sign else {}))
               for doc, policy in zip(docs, policies)]
    if args.style.json:
        print_json(results)
        return 0
    for result in results:
        for warning in result.get("warnings", []):
            print(f"overlayctl: warning: policy {result['name']}: {warning}", file=sys.stderr)
        print(f"policy/{result['name']} {result['result']}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    rows = ControlClient(args.socket).call("policy.list")
    if args.style.json:
        print_json(rows)
    else:
        emit([row | {"pod_count": len(row["pods"])} for row in rows], args.style, columns=_COLUMNS)
    return 0


def _get(args: argparse.Namespace) -> int:
    row = ControlClient(args.socket).call("policy.get", name=args.name)
    if args.style.json:
        print_json(row)
        return 0
    import yaml

    sys.stdout.write(yaml.safe_dump(row["document"], sort_keys=False, default_flow_style=False))
    print(f"# selects {len(row['pods'])} pod(s): {', '.join(row['pods']) or '-'}")
    return 0


def _del(args: argparse.Namespace) -> int:
    sign = _signer(args)
    ControlClient(args.socket).call("policy.del", name=args.name,
                                    **({"signature": sign(args.name, None)} if sign else {}))
    if args.style.json:
        print_json({"deleted": args.name})
    else:
        print(f"policy/{args.name} deleted")
    return 0


def parse_port(text: str) -> tuple[int | None, str]:
    match = _PORT.fullmatch(text)
    if match is None or (match.group(1) != "any" and not 1 <= int(match.group(1)) <= 65535):
        raise UsageError(f"port {text!r}: expected PORT[/tcp|/udp|/sctp] with PORT 1-65535 or 'any', e.g. 80/tcp")
    protocol = match.group(2) or "tcp"
    assert protocol in PROTOCOLS.values()
    return (None if match.group(1) == "any" else int(match.group(1))), protocol


def _explain(args: argparse.Namespace) -> int:
    port, protocol = parse_port(args.port)
    result: dict[str, Any] = ControlClient(args.socket).call("policy.explain", **{"from": args.src, "to": args.dst},
                                                             port=port, protocol=protocol)
    if args.style.json:
        print_json(result)
    else:
        print(f"{result['verdict'].upper()}  {result['from']} -> {result['to']} "
              f"port {result['port'] if result['port'] is not None else 'any'}/{result['protocol']}")
        print(f"  {result['egress']}")
        print(f"  {result['ingress']}")
    return 0 if result["verdict"] == "allow" else 1
