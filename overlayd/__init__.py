"""overlayd: an overlay network for pods that span many hosts."""

__version__ = "0.1.0"
