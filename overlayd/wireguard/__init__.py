"""overlayd.wireguard"""
