"""Per-pod namespaces (net, uts, ipc) held by bind mounts, a veth into the host bridge,
one address from the host's pool, and `pod exec` into all three namespaces."""
