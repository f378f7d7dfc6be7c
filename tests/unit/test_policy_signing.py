"""Policies signed by the cluster CA (trust mode): signatures, and what the registry view keeps
enforcing when records are forged, replayed or deleted behind the CA's back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from overlayd.cluster.errors import RecordError
from overlayd.policy import cache
from overlayd.policy.model import Policy, parse_policy_untrusted
from overlayd.policy.records import policy_json, tombstone_json
from overlayd.policy.signing import PolicySigner, PolicyVerifier
from overlayd.registry.view import Change, RegistryView
from overlayd.trust.certs import TrustAnchor

CA = Ed25519PrivateKey.generate()
OTHER_CA = Ed25519PrivateKey.generate()
SIGN = PolicySigner(CA)
VERIFY = PolicyVerifier(TrustAnchor.from_public_keys([CA.public_key()]))
KEY = "/o/policies/web"


def policy(port: int, name: str = "web") -> Policy:
    return parse_policy_untrusted({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                                   "metadata": {"name": name}, "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                                                                        "ingress": [{"ports": [{"port": port}]}]}})[0]


def signed(p: Policy, generation: int, signer: PolicySigner = SIGN, key: str = KEY) -> bytes:
    return policy_json(p, signer(key, p.to_doc(), generation))


def test_sign_and_verify() -> None:
    p = policy(80)
    signature = SIGN(KEY, p.to_doc(), 7)
    assert VERIFY(KEY, p.to_doc(), signature) == 7
    assert repr(SIGN).startswith("PolicySigner(issuer=") and "Private" not in repr(SIGN)


@pytest.mark.parametrize("change,reason", [
    (lambda s, d: (KEY, policy(81).to_doc(), s), "bad_signature"),  # the policy was changed
    (lambda s, d: ("/o/policies/other", d, s), "bad_signature"),  # moved to another name
    (lambda s, d: ("/x/policies/web", d, s), "bad_signature"),  # another cluster prefix
    (lambda s, d: (KEY, d, s | {"generation": 8}), "bad_signature"),  # another generation
    (lambda s, d: (KEY, d, PolicySigner(OTHER_CA)(KEY, d, 7)), "untrusted_cert"),
    (lambda s, d: (KEY, d, None), "unsigned"),
    (lambda s, d: (KEY, d, {"issuer": s["issuer"], "sig": s["sig"]}), "malformed"),
    (lambda s, d: (KEY, d, s | {"generation": True}), "malformed"),
])
def test_verify_refuses(change: Any, reason: str) -> None:
    doc = policy(80).to_doc()
    with pytest.raises(RecordError) as caught:
        VERIFY(*change(SIGN(KEY, doc, 7), doc))
    assert caught.value.reason == reason


def view() -> RegistryView:
    return RegistryView("/o", verify_policy=VERIFY)


def test_trust_mode_keeps_the_last_signed_version() -> None:
    v = view()
    assert v.apply([Change(KEY.encode(), signed(policy(80), 10))])
    assert v.policies["web"] == policy(80) and v.policy_generations == {"web": 10}
    # An unsigned or forged change: refused, the signed one stays in force.
    assert not v.apply([Change(KEY.encode(), policy_json(policy(1)))])
    assert not v.apply([Change(KEY.encode(), signed(policy(1), 11, PolicySigner(OTHER_CA)))])
    assert v.policies["web"] == policy(80) and "stays in force" in v.refused[KEY]
    # A replay of an older signed version: refused.
    assert not v.apply([Change(KEY.encode(), signed(policy(443), 9))])
    assert v.policies["web"] == policy(80) and "replayed" in v.refused[KEY]
    # Deleted behind the CA's back: still enforced.
    assert not v.apply([Change(KEY.encode(), None)])
    assert v.policies["web"] == policy(80) and "still enforced" in v.refused[KEY]
    # A newer signed version replaces it; a signed tombstone removes it.
    assert v.apply([Change(KEY.encode(), signed(policy(8080), 12))]) and v.policies["web"] == policy(8080)
    assert KEY not in v.refused
    assert v.apply([Change(KEY.encode(), tombstone_json("web", SIGN(KEY, None, 13)))])
    assert v.policies == {} and v.policy_generations == {"web": 13}
    # ... and the tombstone cannot be undone by writing back an older version.
    assert not v.apply([Change(KEY.encode(), signed(policy(8080), 12))]) and v.policies == {}


def test_a_listing_without_the_policy_does_not_delete_it_in_trust_mode() -> None:
    v = view()
    v.reset("/o/policies/", [Change(KEY.encode(), signed(policy(80), 10))])
    v.reset("/o/policies/", [])
    assert v.policies["web"] == policy(80) and "still enforced" in v.refused[KEY]


def test_without_trust_tombstones_and_deletes_remove_and_signatures_are_ignored() -> None:
    v = RegistryView("/o")
    assert v.apply([Change(KEY.encode(), signed(policy(80), 10))]) and "web" in v.policies
    assert v.apply([Change(KEY.encode(), tombstone_json("web", SIGN(KEY, None, 11)))]) and v.policies == {}
    assert v.apply([Change(KEY.encode(), policy_json(policy(81)))]) and v.policies["web"] == policy(81)
    assert v.apply([Change(KEY.encode(), None)]) and v.policies == {}


def test_generations_survive_a_restart_through_the_cache(tmp_path: Path) -> None:
    cache.save(tmp_path, [policy(80)], [], {"web": 10, "gone": 4})
    assert cache.load_generations(tmp_path) == {"web": 10, "gone": 4}
    v = view()
    v.seed_policies(cache.load(tmp_path)[0], cache.load_generations(tmp_path))
    v.reset("/o/policies/", [Change(KEY.encode(), signed(policy(443), 9))])  # replayed while we were down
    assert v.policies["web"] == policy(80) and "replayed" in v.refused[KEY]
    (tmp_path / cache.FILE_NAME).write_text("{damaged")
    assert cache.load_generations(tmp_path) == {}
