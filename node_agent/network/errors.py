"""The network package's error tree.

::

    NetworkError           any failure of a network call (code: HTTP-ish status)
     +-- NetworkCommandError  a host tool (ip, iptables, dnsmasq) failed or timed out (500)

Validation failures are plain ``NetworkError`` with code 400. Foreign errors
(``subprocess``, ``OSError``) are translated once, where the tool is called.
"""

from __future__ import annotations

from corral_shared.errors import CodedError


class NetworkError(CodedError):
    """A network request that cannot be honoured; ``code`` is the HTTP status to answer."""

    code: int = 400


class NetworkCommandError(NetworkError):
    """A host networking tool failed: the request was valid, the host was not."""

    code = 500
