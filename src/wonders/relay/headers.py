"""HTTP header rules both sides apply: hop-by-hop headers never cross the relay. Pure."""

from __future__ import annotations

from wonders.crypto import Headers

__all__ = ["HOP_BY_HOP", "strip_hop_by_hop"]

#: Headers that belong to one connection, never forwarded (RFC 9110 §7.6.1), plus the
#: proxy's own.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
    "proxy-connection", "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})

def strip_hop_by_hop(headers: Headers) -> Headers:
    """Drop hop-by-hop headers, ``Proxy-*`` headers and those named in ``Connection``."""
    named = {
        token.strip().lower()
        for name, value in headers if name.lower() == "connection"
        for token in value.split(",")
    }
    return tuple(
        (name, value) for name, value in headers
        if name.lower() not in HOP_BY_HOP
        and name.lower() not in named
        and not name.lower().startswith("proxy-")
    )
