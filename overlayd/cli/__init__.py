"""overlayd.cli"""
