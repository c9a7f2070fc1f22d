"""URL hosts (names and IP literals), and the classification behind the private-address
guard.

Pure code, no I/O (no DNS here: the forwarder resolves, then asks :func:`classify`).

**One definition of a host.** :func:`parse_host` is the only place that decides what a
URL host is. It first applies the UTS-46 mapping that IDNA (and so yarl, aiohttp and
browsers) applies: every character that maps to ``.`` (``。`` ``．`` ``｡``) becomes
``.``, fullwidth digits become ASCII digits, letters are case-folded, ignored characters
(soft hyphen, …) vanish. Only then is the host classified, so ``１２７。0。0。2`` is the
literal 127.0.0.2, never a name. A name comes out in IDNA (punycode) ASCII, lowercased,
without its trailing dot; a literal comes out in its canonical form (``127.0.0.2``,
``[::1]``). The forwarder puts that text back into the URL it fetches
(:func:`wonders.policy.parse_target`), so what is decided is what is connected to.

**Literals.** A URL host is an IP address in more spellings than ``ipaddress`` accepts:
``inet_aton`` forms (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``127.1``) and bracketed
IPv6 with or without a zone (``[::1]``, ``[::ffff:127.0.0.1]``, ``[fe80::1%eth0]``).
:func:`parse_ip_literal` recognises all of them, as browsers do (WHATWG URL): a host whose
last label is numeric is an IPv4 literal or invalid, never a name.

**Classes.** :data:`IPV4_CLASSES` and :data:`IPV6_CLASSES` list, first match wins, the
ranges that are not the public internet. IPv6 forms that carry an IPv4 address are
classified by that address: IPv4-mapped ``::ffff:0:0/96`` and NAT64 ``64:ff9b::/96`` reach
the embedded host, so ``::ffff:127.0.0.1`` is loopback and ``64:ff9b::8.8.8.8`` is public.
6to4 and Teredo tunnels are refused whatever they carry. :func:`ipv4_of` gives that
embedded address, so an IPv4 deny entry or ``allow_private`` range covers the mapped and
NAT64 spellings of its addresses too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Final

import idna

__all__ = [
    "IPV4_CLASSES",
    "IPV6_CLASSES",
    "AddressClass",
    "Host",
    "IPAddress",
    "classify",
    "ipv4_of",
    "normalize_name",
    "parse_host",
    "parse_ip_literal",
    "uts46_map",
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
        ("3fff::/20", "documentation (RFC 9637)"),
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


_CARRIERS: Final = tuple(net for net, name in IPV6_CLASSES if name in (_MAPPED, _NAT64))


def ipv4_of(address: IPAddress) -> IPv4Address | None:
    """The IPv4 address ``address`` reaches: itself, the one an IPv4-mapped
    (``::ffff:0:0/96``) or NAT64 (``64:ff9b::/96``) address carries, else None."""
    if isinstance(address, IPv4Address):
        return address
    if not address.scope_id and any(address in net for net in _CARRIERS):
        return IPv4Address(int(address) & 0xFFFFFFFF)
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
                embedded = ipv4_of(address)
                assert embedded is not None
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


def uts46_map(host: str) -> str:
    """``host`` after the UTS-46 mapping IDNA applies before anything else (non-transitional,
    without the STD3 rules, as ``idna.encode(uts46=True)`` and so yarl do): characters that
    map to ``.`` become ``.``, fullwidth forms become ASCII, letters are case-folded,
    ignored characters vanish.

    Raises ValueError for a character IDNA disallows.
    """
    try:
        return idna.uts46_remap(host, std3_rules=False, transitional=False)
    except idna.IDNAError as exc:
        raise ValueError(f"invalid host {host!r}: {exc}") from None


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a URL host spells, or None if the host is a name.

    The host is UTS-46 mapped first (:func:`uts46_map`), so ``127。0。0。1`` and
    ``１２７.0.0.1`` are 127.0.0.1, as they are once IDNA has seen them.

    Raises ValueError for a host that is neither (``[not-an-ip]``, ``1.2.3.999``) or that
    has a character IDNA disallows.
    """
    if not host.startswith("["):
        host = uts46_map(host)
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"unbalanced brackets in host {host!r}")
        inner = host[1:-1].replace("%25", "%", 1)  # a zone is written %25 in a URL (RFC 6874)
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


#: A host name once IDNA has encoded it: LDH labels, non-empty, no trailing dot.
_ASCII_NAME = re.compile(r"[a-z0-9-]+(?:\.[a-z0-9-]+)*")


def normalize_name(host: str) -> str:
    """The canonical form of a host *name*: UTS-46 mapped, IDNA (punycode) ASCII,
    lowercase, one trailing dot dropped.

    Raises ValueError for a host that is not a valid name, including one that is an IP
    address in any spelling (use :func:`parse_host` when either is fine).
    """
    if parse_ip_literal(host) is not None:
        raise ValueError(f"{host!r} is an IP address, not a name")
    mapped = uts46_map(host)
    name = mapped[:-1] if mapped.endswith(".") else mapped
    if not name or len(name) > 253:
        raise ValueError(f"invalid host name {host!r}")
    try:
        ascii_name = idna.encode(name, uts46=True).decode("ascii").lower()
    except (idna.IDNAError, UnicodeError) as exc:
        raise ValueError(f"invalid host name {host!r}: {exc}") from None
    if not _ASCII_NAME.fullmatch(ascii_name) or parse_ip_literal(ascii_name) is not None:
        raise ValueError(f"invalid host name {host!r}")
    return ascii_name


@dataclass(frozen=True, slots=True)
class Host:
    """A URL host, normalised (see the module docstring).

    Attributes:
        text: the host as it goes back into a URL: an IDNA ASCII name, a dotted-quad IPv4
            address or a bracketed IPv6 address.
        address: the address of an IP-literal host, None for a name.
    """

    text: str
    address: IPAddress | None

    @property
    def name(self) -> str:
        """The name, or "" for an address."""
        return "" if self.address is not None else self.text


def parse_host(host: str) -> Host:
    """The normalised form of a URL host: the one definition of "this host is an IP
    address" (see the module docstring).

    Raises ValueError for a host that is neither an address nor a valid name.
    """
    address = parse_ip_literal(host)
    if address is None:
        return Host(normalize_name(host), None)
    if isinstance(address, IPv6Address):
        return Host(f"[{str(address).replace('%', '%25')}]", address)
    return Host(str(address), address)
