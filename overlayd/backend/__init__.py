"""How the kernel is programmed: host bridge and forwarding, and the backends behind one contract.

- contract.py   what every backend is to the daemon: Backend, BackendContext, ReconcileResult
- registry.py   backend type name -> module (imported on use); make_backend()
- underlay.py   which public IP / interface / MTU carries tunnel traffic
- host.py       pod bridge with the subnet's gateway address, IP forwarding
- vxlan.py      VxlanBackend: converge one VXLAN device and its peers (executor)
- vxlan_plan.py pure planner: desired peers + observed kernel state -> actions
- peers.py      the one peer screening every backend applies; PeerVtep (a VXLAN peer)
- addresses.py  converge a link's addresses (ours carry IFA_PROTO = RTPROT_OVERLAYD)
- netlink.py    thin pyroute2 layer: dumps parsed into objects.py values, writes
- objects.py    kernel objects as frozen values; RTPROT_OVERLAYD
- mac.py        MAC validation and random local MACs (the persisted VTEP MAC)
- wireguard.py  WireGuardBackend: kernel module or our userspace engine, peers and routes
- wgkeys.py     this host's WireGuard key pair (0600 from creation)

Everything is synchronous pyroute2 code. pyroute2 0.9 opens a netlink socket per
calling thread in that thread's network namespace, and /proc/sys/net resolves to
the opening thread's namespace too: only call in from threads in the host's netns.
"""
