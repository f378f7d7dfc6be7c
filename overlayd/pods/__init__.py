"""overlayd.pods"""
