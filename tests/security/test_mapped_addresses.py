"""IPv4 deny entries also deny the IPv6 forms that reach the same IPv4 host (IPv4-mapped
``::ffff:0:0/96`` and NAT64 ``64:ff9b::/96``), as literals and as resolved addresses;
``3fff::/20`` is documentation space (RFC 9637), never the public internet.

Before the fix a deny entry matched only addresses of its own IP version, so
``[::ffff:203.0.113.5]`` walked past ``deny = ["203.0.113.0/24"]`` whenever the guard
let it through (``allow_private``, or any public IPv4 address denied by name).
"""

from __future__ import annotations

from ipaddress import ip_address, ip_network

import pytest

from wonders.crypto import PrivateKey
from wonders.policy import AddressEntry, AnyHost, ClientPolicy, Policy
from wonders.policy.addresses import classify
from wonders.proxy.run import local_policy

NOW = 1_795_305_600.0
KEY = PrivateKey.generate("gpu")
EVERYWHERE = (ip_network("0.0.0.0/0"), ip_network("::/0"))


def _entry(text: str) -> AddressEntry:
    return AddressEntry(text, ip_network(text))


def _policy(*, allow_private: tuple[str, ...] | None = None) -> Policy:
    """Everything allowed, private ranges included unless ``allow_private`` narrows them;
    documentation space and 10/8 denied by the client, 8.8.8.0/24 globally."""
    private = EVERYWHERE if allow_private is None else tuple(map(ip_network, allow_private))
    entry = ClientPolicy(
        name="gpu", bundle=KEY.public,
        allow=(AnyHost(), _entry("0.0.0.0/0"), _entry("::/0")),
        deny=(_entry("203.0.113.0/24"), _entry("10.0.0.0/8")),
        ports=None, allow_private=private,
    )
    return Policy({"gpu": entry}, deny=(_entry("8.8.8.0/24"),))


DENIED = [
    ("::ffff:203.0.113.5", 'client gpu: deny[0] "203.0.113.0/24"'),
    ("::ffff:cb00:7105", 'client gpu: deny[0] "203.0.113.0/24"'),
    ("64:ff9b::cb00:7105", 'client gpu: deny[0] "203.0.113.0/24"'),
    ("64:ff9b::203.0.113.5", 'client gpu: deny[0] "203.0.113.0/24"'),
    ("::ffff:10.1.2.3", 'client gpu: deny[1] "10.0.0.0/8"'),
    ("64:ff9b::a01:203", 'client gpu: deny[1] "10.0.0.0/8"'),
    ("::ffff:8.8.8.8", 'global: deny[0] "8.8.8.0/24"'),
    ("64:ff9b::808:808", 'global: deny[0] "8.8.8.0/24"'),
]


@pytest.mark.parametrize(("address", "rule"), DENIED)
def test_ipv4_deny_entries_cover_mapped_and_nat64_literals(address: str, rule: str) -> None:
    decision = _policy().decide("gpu", "GET", f"https://[{address}]/", now=NOW)
    assert (decision.action, decision.rule) == ("deny", rule)


@pytest.mark.parametrize(("address", "rule"), DENIED)
def test_ipv4_deny_entries_cover_mapped_and_nat64_resolved_addresses(
    address: str, rule: str
) -> None:
    guarded = _policy().guard("gpu", "rebound.example", [ip_address(address)])
    assert guarded.address is None
    assert guarded.decision.rule == rule


@pytest.mark.parametrize("address", ["8.8.4.4", "::ffff:8.8.4.4", "64:ff9b::808:404",
                                     "2606:4700::1111"])
def test_addresses_outside_the_deny_entries_still_pass(address: str) -> None:
    assert _policy().guard("gpu", "ok.example", [ip_address(address)]).address == \
        ip_address(address)


@pytest.mark.parametrize(
    ("address", "allowed"),
    [("10.1.2.3", True), ("::ffff:10.1.2.3", True), ("64:ff9b::a01:203", True),
     ("::ffff:10.9.9.9", False), ("127.0.0.1", False), ("::ffff:127.0.0.1", False)],
)
def test_ipv4_allow_private_ranges_cover_the_mapped_forms_alike(
    address: str, allowed: bool
) -> None:
    policy = Policy({"gpu": ClientPolicy(
        name="gpu", bundle=KEY.public, allow=(AnyHost(),), ports=None,
        allow_private=(ip_network("10.1.2.0/24"),),
    )})
    guarded = policy.guard("gpu", "inside.example", [ip_address(address)])
    assert (guarded.address is not None) is allowed


@pytest.mark.parametrize("address", ["3fff::1", "3fff:fff:ffff::1"])
def test_rfc9637_documentation_space_is_not_public(address: str) -> None:
    assert classify(ip_address(address)).category == "documentation (RFC 9637)"
    decision = local_policy(KEY, allow_private=False).decide(
        "gpu", "GET", f"https://[{address}]/", now=NOW)
    assert decision.action == "deny"
    assert decision.rule == "address guard: documentation (RFC 9637)"
