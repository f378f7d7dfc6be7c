"""overlayd.backend"""
