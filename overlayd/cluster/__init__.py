"""overlayd.cluster: what the cluster is (subnet leases, host records, peer events), kept in etcd.

Pure parts: keys.py (key layout, documented there), records.py (values, untrusted parsing),
diff.py (LeaseWatcher: listings and watch events in, host events out).
etcd I/O: etcd.py (blocking client), store.py (claims, config, cooldown), watch.py (list +
watch loop), client.py (the trio API the daemon uses; start there).
"""
