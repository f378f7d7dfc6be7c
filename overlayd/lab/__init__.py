"""A cluster of simulated hosts on one machine: network namespaces on a simulated
underlay, a real etcd, one overlayd per host."""
