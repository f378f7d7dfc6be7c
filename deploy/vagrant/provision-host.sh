#!/bin/bash
# overlayd host VM: install the project, configure it for the private network,
# run it under systemd and add one pod.
set -euo pipefail
name=$1 ip=$2 etcd_ip=$3
# The same install as on a real host: venv, /usr/local/bin links, unit, docs.
/vagrant/deploy/setup.sh
install -d -m 0755 /etc/overlayd
# This VM's values (deploy/overlayd.toml is the single-host example): the private network.
cat > /etc/overlayd/overlayd.toml <<CONF
node_name = "${name}"
public_ip = "${ip}"        # not the NAT interface: it is 10.0.2.15 everywhere
[etcd]
endpoints = ["http://${etcd_ip}:2379"]
CONF
# The first host writes the cluster config (a no-op when it is already the same).
overlayctl network init --etcd-endpoints "http://${etcd_ip}:2379" --backend vxlan
systemctl daemon-reload
systemctl enable --now overlayd
overlayctl pod get "pod-${name}" >/dev/null 2>&1 || overlayctl pod add "pod-${name}" --label app=demo
overlayctl status
