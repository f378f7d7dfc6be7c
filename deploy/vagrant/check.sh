#!/bin/bash
# Cross-host check, run on the last host: every pod in the cluster answers
# ping from this host's pod. Pod IPs come from the daemon's view of the cluster.
set -euo pipefail
pod="pod-$(hostname)"
fail=0
for host_ip in "${@:2}"; do
  pod_ip=$(overlayctl --json hosts | python3 -c '
import json, sys, ipaddress
want = sys.argv[1]
for h in json.load(sys.stdin):
    if h["public_ip"] == want:
        print(ipaddress.ip_network(h["subnet"]).network_address + 2)' "$host_ip")
  if overlayctl pod exec "$pod" -- ping -c 3 -W 2 "$pod_ip" >/dev/null; then
    echo "ok    $pod -> $pod_ip (host $host_ip)"
  else
    echo "FAIL  $pod -> $pod_ip (host $host_ip)"; fail=1
  fi
done
exit $fail
