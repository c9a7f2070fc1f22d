"""IP literals in URL hosts, and the classification behind the private-address guard.

Pure code, no I/O (no DNS here: the forwarder resolves, then asks :func:`classify`).

**Literals.** A URL host is an IP address in more spellings than ``ipaddress`` accepts:
``inet_aton`` forms (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) and bracketed
IPv6 with or without a zone (``[::1]``, ``[::ffff:127.0.0.1]``, ``[fe80::1%eth0]``).
:func:`parse_ip_literal` recognises all of them, as browsers do (WHATWG URL): a host whose
last label is numeric is an IPv4 literal or invalid, never a name.

**Classes.** :data:`IPV4_CLASSES` and :data:`IPV6_CLASSES` list, first match wins, the
ranges that are not the public internet. IPv6 forms that carry an IPv4 address are
classified by that address: IPv4-mapped ``::ffff:0:0/96`` and NAT64 ``64:ff9b::/96`` reach
the embedded host, so ``::ffff:127.0.0.1`` is loopback and ``64:ff9b::8.8.8.8`` is public.
6to4 and Teredo tunnels are refused whatever they carry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

__all__ = [
    "IPV4_CLASSES",
    "IPV6_CLASSES",
    "AddressClass",
    "IPAddress",
    "classify",
    "parse_ip_literal",
]

IPAddress = IPv4Address | IPv6Address

_MAPPED = "IPv4-mapped"
_NAT64 = "NAT64"

IPV4_CLASSES: Final[tuple[tuple[IPv4Network, str], ...]] = tuple(
    (IPv4Network(net), name)
    for net, name in (
        ("0.0.0.0/8", "this network"),
        ("10.0.0.0/8", "private (RFC 1918)"),
        ("100.64.0.0/10", "shared address space (CGNAT)"),
        ("127.0.0.0/8", "loopback"),
        ("169.254.169.254/32", "cloud metadata (link-local)"),
        ("169.254.0.0/16", "link-local"),
        ("172.16.0.0/12", "private (RFC 1918)"),
        ("192.0.0.0/24", "IETF protocol assignments"),
        ("192.0.2.0/24", "documentation (TEST-NET-1)"),
        ("192.88.99.0/24", "6to4 relay anycast"),
        ("192.168.0.0/16", "private (RFC 1918)"),
        ("198.18.0.0/15", "benchmarking"),
        ("198.51.100.0/24", "documentation (TEST-NET-2)"),
        ("203.0.113.0/24", "documentation (TEST-NET-3)"),
        ("224.0.0.0/4", "multicast"),
        ("255.255.255.255/32", "broadcast"),
        ("240.0.0.0/4", "reserved"),
    )
)

IPV6_CLASSES: Final[tuple[tuple[IPv6Network, str], ...]] = tuple(
    (IPv6Network(net), name)
    for net, name in (
        ("::/128", "unspecified"),
        ("::1/128", "loopback"),
        ("::ffff:0:0/96", _MAPPED),
        ("::/96", "IPv4-compatible (deprecated)"),
        ("64:ff9b::/96", _NAT64),
        ("64:ff9b:1::/48", "local-use NAT64"),
        ("100::/64", "discard-only"),
        ("2001::/32", "Teredo tunnel"),
        ("2001:db8::/32", "documentation"),
        ("2001::/23", "IETF protocol assignments"),
        ("2002::/16", "6to4 tunnel"),
        ("fc00::/7", "unique local (ULA)"),
        ("fe80::/10", "link-local"),
        ("fec0::/10", "site-local (deprecated)"),
        ("ff00::/8", "multicast"),
    )
)
_GLOBAL_UNICAST_V6 = IPv6Network("2000::/3")


@dataclass(frozen=True, slots=True)
class AddressClass:
    """What an address is.

    Attributes:
        address: the address classified.
        category: why it is not public (``"loopback"``, …), or ``None`` if it is public.
        embedded: the IPv4 address an IPv4-mapped or NAT64 address carries.
    """

    address: IPAddress
    category: str | None
    embedded: IPv4Address | None = None

    @property
    def public(self) -> bool:
        return self.category is None

    def describe(self) -> str:
        via = f" (carries {self.embedded})" if self.embedded is not None else ""
        return f"{self.address}{via} is {self.category or 'public'}"


def _v4_category(address: IPv4Address) -> str | None:
    for network, name in IPV4_CLASSES:
        if address in network:
            return name
    return None


def classify(address: IPAddress) -> AddressClass:
    """Classify an address; see the module docstring for the rules."""
    if isinstance(address, IPv4Address):
        return AddressClass(address, _v4_category(address))
    if address.scope_id:
        return AddressClass(address, "scoped (zone) address")
    for network, name in IPV6_CLASSES:
        if address in network:
            if name in (_MAPPED, _NAT64):
                embedded = IPv4Address(int(address) & 0xFFFFFFFF)
                inner = _v4_category(embedded)
                return AddressClass(address, f"{name} {inner}" if inner else None, embedded)
            return AddressClass(address, name)
    if address not in _GLOBAL_UNICAST_V6:
        return AddressClass(address, "reserved")
    return AddressClass(address, None)


#: A numeric IPv4 part in inet_aton's grammar (decimal, 0-octal, 0x-hex).
_NUMERIC = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")


def _v4_number(part: str) -> int:
    if part[:2] in ("0x", "0X"):
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part.startswith("0"):
        return int(part, 8)  # raises on 8 and 9: as inet_aton, not a valid literal
    return int(part)


def _parse_v4(host: str) -> IPv4Address:
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(_NUMERIC.fullmatch(p) for p in parts):
        raise ValueError(f"{host!r} looks like an IPv4 address but is not one")
    try:
        numbers = [_v4_number(p) for p in parts]
    except ValueError:
        raise ValueError(f"{host!r} has an invalid octal part") from None
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} is out of the IPv4 range")
    value = last
    for i, n in enumerate(leading):
        value |= n << (8 * (3 - i))
    return IPv4Address(value)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host spells, or None if the host is a name.

    Raises ValueError for a host that is neither (``[not-an-ip]``, ``1.2.3.999``).
    """
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"unbalanced brackets in host {host!r}")
        inner = host[1:-1]
        try:
            return IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{host!r} is not an IPv6 address") from None
    if ":" in host:
        try:
            return ip_address(host)
        except ValueError:
            raise ValueError(f"{host!r} is not a valid host") from None
    name = host[:-1] if host.endswith(".") else host
    if name and _NUMERIC.fullmatch(name.rsplit(".", 1)[-1]):
        return _parse_v4(name)
    return None
