#!/bin/bash
# One-time set-up on a fresh Debian machine, as root: the system packages
# overlayd and its tests use, then overlayd itself (editable) with test extras.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(etcd-server etcd-client wireguard-go wireguard-tools iperf3 tcpdump nftables
          iproute2 iputils-ping procps util-linux containernetworking-plugins python3-pip)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's etcd-server starts a system etcd on 127.0.0.1:2379; overlayd's lab
# and tests run their own, so leave the port free.
if systemctl is-active --quiet etcd 2>/dev/null; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi

python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore --break-system-packages -e '.[test]'
command -v pyenv >/dev/null && pyenv rehash || true
