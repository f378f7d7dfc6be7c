"""Packet NAT and forwarding for pods: egress masquerade and published ports, in one nftables table we own."""
