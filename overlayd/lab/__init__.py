"""overlayd.lab"""
