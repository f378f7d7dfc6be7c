#!/bin/bash
# Put an installed overlayd where the system and the unit look for it (setup.sh runs this
# after building the virtual environment):
#   /usr/local/bin/{overlayd,overlayctl,overlayd-wg} -> $OVERLAYD_VENV/bin/...  (the unit's ExecStart)
#   /etc/systemd/system/overlayd.service  (not enabled: `systemctl enable --now overlayd`)
#   /usr/share/doc/overlayd/README.md     (the unit's Documentation=)
#   /usr/share/doc/overlayd/overlayd.toml.example  (copy to /etc/overlayd/overlayd.toml)
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
