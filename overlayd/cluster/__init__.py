"""overlayd.cluster: what the cluster is (subnet leases, host records, peer events), kept in etcd.

Pure parts: keys.py (key layout, documented there), records.py (values, untrusted parsing),
diff.py (LeaseWatcher: listings and watch events in, host events out), grace.py (peers
missing after an outage stay a moment).
etcd I/O: etcd.py (blocking client), store.py (claims, config, cooldown), watch.py (list +
watch loop), keeper.py (renew the lease, claim the same subnet again when it is lost),
client.py (the trio API the daemon uses; start there).
"""
