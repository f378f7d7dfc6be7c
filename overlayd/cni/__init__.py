"""The CNI plugin (overlayd-cni, a thin client of the daemon) and the daemon's side of CNI attachments."""
