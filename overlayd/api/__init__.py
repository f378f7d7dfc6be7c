"""overlayd.api"""
