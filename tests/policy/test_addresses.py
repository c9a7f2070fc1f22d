"""IP literal spellings and address classification (the private-address guard's table)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest

from wonders.policy.addresses import IPV4_CLASSES, IPV6_CLASSES, classify, parse_ip_literal

# (address, category or None for public) — in the style of Smokescreen's TestClassifyAddr
CLASSIFIED = [
    ("8.8.8.8", None),
    ("1.1.1.1", None),
    ("93.184.216.34", None),
    ("100.63.255.255", None),
    ("100.128.0.0", None),
    ("172.15.255.255", None),
    ("172.32.0.0", None),
    ("192.169.0.1", None),
    ("223.255.255.255", None),
    ("0.0.0.0", "this network"),
    ("0.255.255.255", "this network"),
    ("10.0.0.1", "private (RFC 1918)"),
    ("10.255.255.255", "private (RFC 1918)"),
    ("172.16.0.1", "private (RFC 1918)"),
    ("172.31.255.255", "private (RFC 1918)"),
    ("192.168.1.1", "private (RFC 1918)"),
    ("100.64.0.1", "shared address space (CGNAT)"),
    ("100.127.255.255", "shared address space (CGNAT)"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "cloud metadata (link-local)"),
    ("169.254.0.1", "link-local"),
    ("192.0.0.8", "IETF protocol assignments"),
    ("192.0.2.1", "documentation (TEST-NET-1)"),
    ("198.51.100.7", "documentation (TEST-NET-2)"),
    ("203.0.113.9", "documentation (TEST-NET-3)"),
    ("192.88.99.1", "6to4 relay anycast"),
    ("198.18.0.1", "benchmarking"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "broadcast"),
    ("2606:4700:4700::1111", None),
    ("2001:4860:4860::8888", None),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:8.8.8.8", None),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:10.1.2.3", "IPv4-mapped private (RFC 1918)"),
    ("::ffff:169.254.169.254", "IPv4-mapped cloud metadata (link-local)"),
    ("64:ff9b::808:808", None),
    ("64:ff9b::7f00:1", "NAT64 loopback"),
    ("64:ff9b::a9fe:a9fe", "NAT64 cloud metadata (link-local)"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("::127.0.0.1", "IPv4-compatible (deprecated)"),
    ("2002:7f00:1::1", "6to4 tunnel"),
    ("2002:808:808::1", "6to4 tunnel"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo tunnel"),
    ("2001:db8::1", "documentation"),
    ("3fff::1", "documentation (RFC 9637)"),
    ("2001:2::1", "IETF protocol assignments"),
    ("100::1", "discard-only"),
    ("fc00::1", "unique local (ULA)"),
    ("fd12:3456:789a::1", "unique local (ULA)"),
    ("fe80::1", "link-local"),
    ("fec0::1", "site-local (deprecated)"),
    ("ff02::1", "multicast"),
    ("4000::1", "reserved"),
    ("fe80::1%eth0", "scoped (zone) address"),
]


@pytest.mark.parametrize(("address", "category"), CLASSIFIED, ids=[a for a, _ in CLASSIFIED])
def test_each_address_is_classified_as_the_table_says(address: str, category: str | None) -> None:
    result = classify(ip_address(address))
    assert result.category == category
    assert result.public is (category is None)


def test_every_class_of_the_guard_has_a_case_in_the_table() -> None:
    """A class added to IPV4_CLASSES or IPV6_CLASSES without an address here fails (the
    carriers, IPv4-mapped and NAT64, are named with the class of what they carry)."""
    seen = {classify(ip_address(address)).category for address, _ in CLASSIFIED}
    names = {name for _, name in IPV4_CLASSES} | {name for _, name in IPV6_CLASSES}
    missing = {name for name in names
               if not any(c == name or (c or "").startswith(f"{name} ") for c in seen)}
    assert missing == set()


def test_embedded_address_is_reported() -> None:
    result = classify(IPv6Address("::ffff:169.254.169.254"))
    assert result.embedded == IPv4Address("169.254.169.254")
    assert result.describe() == (
        "::ffff:a9fe:a9fe (carries 169.254.169.254) is IPv4-mapped cloud metadata (link-local)"
    )


LITERALS = [
    ("127.0.0.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0x7f.1", "127.0.0.1"),
    ("0x7F000001", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("0", "0.0.0.0"),
    ("0xa9.0xfe.0xa9.0xfe", "169.254.169.254"),
    ("025177524776", "169.254.169.254"),
    ("[::1]", "::1"),
    ("[::ffff:127.0.0.1]", "::ffff:7f00:1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("::1", "::1"),
]


@pytest.mark.parametrize(("host", "expected"), LITERALS, ids=[h for h, _ in LITERALS])
def test_every_spelling_of_an_address_is_recognised(host: str, expected: str) -> None:
    assert parse_ip_literal(host) == ip_address(expected)


@pytest.mark.parametrize(
    "host", ["example.com", "hf.co", "1e3.com", "a1", "0x.example", "localhost"]
)
def test_names_are_not_addresses(host: str) -> None:
    assert parse_ip_literal(host) is None


@pytest.mark.parametrize(
    "host",
    ["1.2.3.999", "08.0.0.1", "4294967296", "1.2.3.4.5", "a.1", "[::1", "[not-ip]", "1::2::3"],
)
def test_numeric_hosts_that_are_not_addresses_are_errors_not_names(host: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_ip_literal(host)
