"""Hosts written with Unicode dots, fullwidth digits, case or a trailing dot are IP literals
when IDNA says so: decided, guarded and connected to as the address they spell.

Before the fix, ``127。0。0。2`` was classified as a *name* (so any name pattern, report
mode or ``wonder-run --local`` allowed it) while IDNA, then aiohttp, turned it into the
literal 127.0.0.2 and connected to loopback without asking the guarded resolver.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import AsyncIterator
from functools import cache
from ipaddress import IPv4Address, ip_address
from pathlib import Path

import idna
import pytest

from tests.relay.harness import Upstream, client_for, make_keys, running_forwarder, serve_upstream
from wonders.audit import Batch, batch_keys, read_batches
from wonders.crypto import PrivateKey
from wonders.mailbox import DirectoryStore
from wonders.policy import ClientPolicy, HostPattern, Policy, parse_target
from wonders.policy.addresses import Host, parse_host, parse_ip_literal
from wonders.proxy.run import local_policy
from wonders.relay.forwarder.upstream import AddressDenied
from wonders.relay.forwarder.upstream import Upstream as HttpUpstream

NOW = 1_795_305_600.0
KEY = PrivateKey.generate("gpu")


@cache
def dot_likes() -> tuple[str, ...]:
    """Every code point that IDNA's UTS-46 mapping turns into something with a '.', read
    from the table idna ships (each row covers the code points up to the next row's start),
    then confirmed one by one with ``idna.uts46_remap``."""
    from idna.uts46data import uts46_replacements, uts46_starts

    found: list[str] = []
    bounds = [*uts46_starts, sys.maxunicode + 1]
    for i, replacement in enumerate(uts46_replacements):
        if replacement is not None and "." in replacement:
            found.extend(chr(cp) for cp in range(bounds[i], bounds[i + 1]))
    for char in found:
        assert "." in idna.uts46_remap(char, std3_rules=False)
    return tuple(found)


def test_the_enumeration_finds_the_known_dots() -> None:
    # a sanity check of the enumeration itself, not the list the tests use
    assert {"\u3002", "\uff0e", "\uff61"} <= set(dot_likes())


def _spelled(dot: str) -> str:
    """127.0.0.2 with ``dot`` for each '.', as far as that character maps to just '.'."""
    return dot.join(["127", "0", "0", "2"])


def _local() -> Policy:
    """``wonder-run --local`` without --allow-private: any public host, any port."""
    return local_policy(KEY, allow_private=False)


def _report() -> Policy:
    entry = ClientPolicy(name="gpu", bundle=KEY.public, allow=(HostPattern.parse("example.com"),),
                         ports=None, mode="report")
    return Policy({"gpu": entry})


LOOPBACK_2 = IPv4Address("127.0.0.2")


@pytest.mark.parametrize("dot", dot_likes(), ids=lambda d: f"U+{ord(d):04X}")
def test_unicode_dots_make_an_ip_literal_that_meets_the_guard(dot: str) -> None:
    host = _spelled(dot)
    if idna.uts46_remap(dot, std3_rules=False) != ".":
        # a character mapping to more than a dot ("1." …): still one definition for all
        assert parse_host(host) == parse_host(idna.uts46_remap(host, std3_rules=False))
        return
    assert parse_ip_literal(host) == LOOPBACK_2
    assert parse_host(host) == Host("127.0.0.2", LOOPBACK_2)
    assert parse_target(f"https://{host}:8443/x?y").url == "https://127.0.0.2:8443/x?y"
    for policy in (_local(), _report()):
        decision = policy.decide("gpu", "GET", f"https://{host}:8443/", now=NOW)
        assert decision.action == "deny", decision
        assert decision.rule == "address guard: loopback"
        guarded = policy.guard("gpu", host, [LOOPBACK_2])
        assert guarded.address is None


@pytest.mark.parametrize("dot", dot_likes(), ids=lambda d: f"U+{ord(d):04X}")
async def test_the_upstream_guards_a_literal_host_itself(dot: str) -> None:
    """aiohttp never asks the resolver about a literal: Upstream must ask the guard. Port 1
    on loopback: were anything connected to, the error would not be AddressDenied."""
    upstream = HttpUpstream(_local)
    try:
        with pytest.raises(AddressDenied) as info:
            await upstream.request("gpu", "GET", f"http://{_spelled(dot)}:1/", (), None)
        assert info.value.decision.rule == "address guard: loopback"
    finally:
        await upstream.close()


OTHER_SPELLINGS = [
    ("１２７.０.０.２", "127.0.0.2"),  # fullwidth digits
    ("１２７。０．0｡２.", "127.0.0.2"),  # all of them mixed, trailing dot
    ("127.0.0.\u00ad2", "127.0.0.2"),  # a soft hyphen, which IDNA ignores
    ("０ｘ７ｆ.０.０.２", "127.0.0.2"),  # fullwidth inet_aton hex
    ("０Ｘ７Ｆ｡２", "127.0.0.2"),  # fullwidth upper case, short form
    ("２１３０７０６４３４", "127.0.0.2"),  # one fullwidth number
    ("169。254。169。254", "169.254.169.254"),
    ("[::ffff:7f00:2]", "::ffff:127.0.0.2"),
]


@pytest.mark.parametrize(("host", "address"), OTHER_SPELLINGS)
def test_other_spellings_are_the_literal_they_spell(host: str, address: str) -> None:
    assert parse_ip_literal(host) == ip_address(address)
    for policy in (_local(), _report()):
        decision = policy.decide("gpu", "GET", f"http://{host}/", now=NOW)
        assert decision.action == "deny", decision
        assert decision.rule.startswith("address guard: ")


def test_fullwidth_brackets_are_brackets() -> None:
    assert parse_ip_literal("［::ffff:127.0.0.2］") == ip_address("::ffff:127.0.0.2")


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("HTTPS://LocalHost.:443/A?b#c", "https://localhost/A?b#c"),
        ("https://ＥＸＡＭＰＬＥ。com/", "https://example.com/"),
        ("http://bücher.example:8080", "http://xn--bcher-kva.example:8080"),
        ("https://u:p@0x7f.1/p", "https://u:p@127.0.0.1/p"),
        ("https://[0:0:0:0:0:0:0:1]:8443/", "https://[::1]:8443/"),
    ],
)
def test_targets_are_normalised_once_and_for_all(url: str, expected: str) -> None:
    target = parse_target(url)
    assert target.url == expected
    assert parse_target(target.url) == target  # normalising again changes nothing


@pytest.mark.parametrize(
    "url", ["https://a..b/", "https://127.0.0.2../", "https://a%2e.example/", "https://\u2488/",
            "https://exa mple.com/", "https:example.com/", " https://example.com/"],
)
def test_hosts_that_normalise_to_nothing_sensible_are_malformed(url: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        parse_target(url)
    assert _local().decide("gpu", "GET", url, now=NOW).action == "deny"


# ------------------------------------------------------------------------- end to end


@pytest.fixture
async def loopback2(tmp_path: Path) -> AsyncIterator[Upstream]:
    """An HTTPS upstream on 127.0.0.2 (its certificate names that address)."""
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


@pytest.mark.parametrize("mode", ["report", "local"])
async def test_a_loopback_upstream_written_with_unicode_dots_is_not_reached(
    tmp_path: Path, loopback2: Upstream, mode: str
) -> None:
    port = int(loopback2.url.rsplit(":", 1)[1])
    keys = make_keys(tmp_path, port, f"""
[clients.gpu01]
bundle = "gpu01.pub"
allow = ["example.com"]
ports = [{port}]
mode = "report"

[clients.locked]
bundle = "locked.pub"

[clients.follower]
bundle = "follower.pub"
""")
    if mode == "local":
        keys = dataclasses.replace(keys, policy=local_policy(keys.clients["gpu01"],
                                                              allow_private=False))
    (tmp_path / "mailbox").mkdir()
    async with DirectoryStore(tmp_path / "mailbox") as store, \
            running_forwarder(store, keys, loopback2), client_for(store, keys) as client:
        for dot in ("\u3002", "\uff0e", "\uff61"):
            url = f"https://{_spelled(dot)}:{port}/echo"
            async with await client.request("GET", url) as response:
                assert response.status == 403
                assert response.header("X-Wonders-Error") == "policy-denied"
                assert "address guard: loopback" in (await response.read()).decode()
    assert loopback2.hits["/echo"] == 0


@pytest.mark.parametrize("host", ["ＬＯＣＡＬＨＯＳＴ", "ＬＯＣＡＬＨＯＳＴ。"])
async def test_the_normalised_url_is_what_is_fetched_and_audited(
    tmp_path: Path, upstream: Upstream, host: str
) -> None:
    """The audit log names the host as connected to, not a Unicode disguise of it (and a
    trailing Unicode dot is a trailing dot)."""
    port = int(upstream.url.rsplit(":", 1)[1])
    keys = make_keys(tmp_path, port)  # gpu01 may reach localhost
    (tmp_path / "mailbox").mkdir()
    async with DirectoryStore(tmp_path / "mailbox") as store:
        async with running_forwarder(store, keys, upstream), client_for(store, keys) as client:
            url = f"https://{host}:{port}/echo?q=1"
            async with await client.request("GET", url) as response:
                assert response.status == 200
                doc = json.loads(await response.read())
        seen = {k.lower(): v for k, v in doc["headers"]}
        assert seen["host"] == f"localhost:{port}"
        batches = await batch_keys(store, None, time.time())
        records = [r async for b in read_batches(store, batches, keys.forwarder.public)
                   if isinstance(b, Batch) for r in b.records]
    assert [(r["host"], r["port"], r["path"]) for r in records] == [
        ("localhost", port, "/echo?q=[redacted]")]
