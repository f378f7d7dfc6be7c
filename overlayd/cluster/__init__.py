"""overlayd.cluster"""
