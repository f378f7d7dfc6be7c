#!/bin/bash
# Put an installed overlayd where the system and the unit look for it (setup.sh runs this
# after building the virtual environment):
#   /usr/local/bin/{overlayd,overlayctl,overlayd-wg} -> $OVERLAYD_VENV/bin/...  (the unit's ExecStart)
#   /etc/systemd/system/overlayd.service  (not enabled: `systemctl enable --now overlayd`)
#   /usr/share/doc/overlayd/README.md     (the unit's Documentation=)
#   /usr/share/doc/overlayd/overlayd.toml.example  (copy to /etc/overlayd/overlayd.toml)
# and checks that overlayd-cni's C front builds here: `overlayctl cni install` compiles it for the
# socket it is given (without a C compiler it installs the slower Python client, and says so).
# /etc/overlayd is left alone: the daemon reads /etc/overlayd/overlayd.toml whenever it
# exists, so a file put there unasked would change every overlayd started on this machine.
#
# OVERLAYD_VENV  the virtual environment (default /opt/overlayd/venv)
# DESTDIR        install under this directory instead of / (packaging, tests)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${OVERLAYD_VENV:-/opt/overlayd/venv}
root=${DESTDIR:-}
install -d "$root/usr/local/bin"
for cmd in overlayd overlayctl overlayd-wg; do
  ln -sfn "$venv/bin/$cmd" "$root/usr/local/bin/$cmd"
done
install -D -m 0644 deploy/overlayd.service "$root/etc/systemd/system/overlayd.service"
install -D -m 0644 README.md "$root/usr/share/doc/overlayd/README.md"
install -D -m 0644 deploy/overlayd.toml "$root/usr/share/doc/overlayd/overlayd.toml.example"
# The same build `overlayctl cni install` makes, into a scratch file, to warn now rather than then.
scratch=$(mktemp -d)
if ! "$venv/bin/python" -c 'import sys; from pathlib import Path; from overlayd.cni.build import build_shim
build_shim(Path(sys.argv[1]) / "overlayd-cni", "/run/overlayd/overlayd.sock")' "$scratch" 2>"$scratch/err"; then
  echo "install.sh: note: overlayd-cni's C front does not build here ($(tail -c 300 "$scratch/err")); " \
       "\`overlayctl cni install\` will install the Python client (~10 ms slower per call)" >&2
fi
rm -rf "$scratch"
