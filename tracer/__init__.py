"""tcpstate-tracer: every TCP state transition on a Linux host, as answers an operator needs."""

__version__ = "0.1.0"
