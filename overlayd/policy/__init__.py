"""Network policy: Kubernetes NetworkPolicy semantics for overlayd pods.

    model.py    the policy documents, parsed and checked (pure; every parser is *_untrusted)
    reach.py    the reachability model: may this flow pass, and which rule says so (pure)
    records.py  the etcd record under {prefix}/policies/<name>
    nft.py      the rules of our nftables table that enforce them on one host (pure)
    counters.py drops per policy, read from the kernel's named counters
    running.py  the daemon side: keeps the rules in step with policies and pods (trio)
"""
