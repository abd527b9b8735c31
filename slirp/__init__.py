"""slirp: the edge of slirpnet — everything that touches the OS.

The TAP, host sockets, port-forward listeners, the API socket and the
ready/exit fds all live here; the protocol logic lives in ``netstack``.
"""

__version__ = "0.1.0"
