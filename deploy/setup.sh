#!/bin/bash
# One-time set-up on a fresh Debian machine, as root: the system packages
# overlayd and its tests use, then overlayd itself (editable, with test extras)
# in a fresh virtual environment holding the newest versions pyproject.toml
# allows. The system Python is never used: its old packages would hide missing
# or wrong requirements. Then install.sh links the commands into /usr/local/bin (where the
# unit's ExecStart looks) and installs the systemd unit and the docs.
#
# OVERLAYD_VENV  where the virtual environment goes (default /opt/overlayd/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${OVERLAYD_VENV:-/opt/overlayd/venv}

packages=(etcd-server etcd-client wireguard-go wireguard-tools iperf3 tcpdump nftables
          iproute2 iputils-ping procps util-linux containernetworking-plugins python3-venv
          dnsmasq-base zsh dnsperf  # zsh: the tests run the completion script overlayctl generates for it;
                                    # dnsperf: benchmarks/bench_dns.py
          gcc libc6-dev)  # `overlayctl cni install` builds overlayd-cni's C front (libc.a: linked statically)
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

# --clear: a fresh environment every time, so an upgrade never mixes old and new.
python3 -m venv --clear "$venv"
# pip's and setuptools' chatter goes to a log, shown only when the install fails.
log="$venv/setup-pip.log"
{ "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
  "$venv/bin/python" -m pip install --disable-pip-version-check --upgrade --upgrade-strategy eager -e '.[test]'
} >"$log" 2>&1 || { cat "$log" >&2; echo "setup.sh: installing overlayd into $venv failed" >&2; exit 1; }
OVERLAYD_VENV=$venv deploy/install.sh
