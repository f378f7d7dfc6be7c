#!/bin/bash
# etcd VM: Debian's etcd-server listening on the private network.
set -euo pipefail
ip=$1
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq etcd-server
cat > /etc/default/etcd <<CONF
ETCD_NAME=etcd
ETCD_DATA_DIR=/var/lib/etcd/default
ETCD_LISTEN_CLIENT_URLS=http://${ip}:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://${ip}:2379
CONF
systemctl restart etcd
