#!/bin/bash
# overlayd host VM: install the project, configure it for the private network,
# run it under systemd and add one pod.
set -euo pipefail
name=$1 ip=$2 etcd_ip=$3
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3-pip iproute2 etcd-client
pip3 install --break-system-packages -q /vagrant
install -d -m 0755 /etc/overlayd
cat > /etc/overlayd/overlayd.toml <<CONF
node_name = "${name}"
public_ip = "${ip}"        # not the NAT interface: it is 10.0.2.15 everywhere
[etcd]
endpoints = ["http://${etcd_ip}:2379"]
CONF
# The first host writes the cluster config (a no-op when it is already the same).
overlayctl network init --etcd-endpoints "http://${etcd_ip}:2379" --backend vxlan
install -m 0644 /vagrant/deploy/overlayd.service /etc/systemd/system/overlayd.service
systemctl daemon-reload
systemctl enable --now overlayd
overlayctl pod get "pod-${name}" >/dev/null 2>&1 || overlayctl pod add "pod-${name}" --label app=demo
overlayctl status
