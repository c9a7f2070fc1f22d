"""The egress budget counts everything that leaves, and URLs and headers are capped
(hardening item 11).

Before the fix only request bodies counted against ``egress_bytes_per_day``: a client
could send without limit through URLs and headers (bodiless GETs cost nothing), and the
forwarder passed any URL length or header size on to the upstream.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.relay.harness import POLICY, Keys, Upstream, client_for, make_keys, running_forwarder
from wonders.crypto import Headers
from wonders.mailbox import Store
from wonders.policy import egress_bytes, parse_policy


def _keys(tmp_path: Path, upstream: Upstream, extra: str = "") -> Keys:
    text = POLICY.replace('max_response_bytes = "32 MiB"', 'max_response_bytes = "32 MiB"\n'
                          + extra)
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]), text)


async def _ask(store: Store, keys: Keys, url: str, headers: Headers = ()) -> tuple[int, str]:
    async with client_for(store, keys) as client, \
            await client.request("GET", url, headers, timeout=30) as response:
        await response.read()
        return response.status, response.header("X-Wonders-Error") or ""


async def test_a_url_over_max_url_length_is_refused_before_it_is_sent(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    keys = _keys(tmp_path, upstream)  # the default: 8192
    async with running_forwarder(store, keys, upstream) as forwarder:
        long = f"{upstream.url}/echo?q=" + "a" * 9000
        assert await _ask(store, keys, long) == (414, "url-too-long")
        assert forwarder.counters.denied == 1
        assert await _ask(store, keys, f"{upstream.url}/echo?q=" + "a" * 8000) == (200, "")
    assert upstream.hits["/echo"] == 1


async def test_headers_over_max_header_bytes_are_refused_before_they_are_sent(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    keys = _keys(tmp_path, upstream)  # the default: 64 KiB
    big = tuple((f"X-Big-{i}", "a" * 7000) for i in range(10))  # 70 KiB
    async with running_forwarder(store, keys, upstream):
        assert await _ask(store, keys, f"{upstream.url}/echo", big) == (
            431, "request-headers-too-large")
        assert await _ask(store, keys, f"{upstream.url}/echo", big[:1]) == (200, "")
    assert upstream.hits["/echo"] == 1


async def test_the_caps_are_policy_settings(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    keys = _keys(tmp_path, upstream, 'max_url_length = 100\nmax_header_bytes = "1 KiB"')
    base = f"{upstream.url}/echo?q="
    async with running_forwarder(store, keys, upstream):
        assert await _ask(store, keys, base + "a" * (101 - len(base))) == (414, "url-too-long")
        assert await _ask(store, keys, base + "a" * (100 - len(base))) == (200, "")
        over = (("X-Pad", "a" * (1024 - 9 + 1)),)  # name, ": ", value, CRLF
        assert await _ask(store, keys, base, over) == (431, "request-headers-too-large")
        assert await _ask(store, keys, base, (("X-Pad", "a" * (1024 - 9)),)) == (200, "")


async def test_the_egress_budget_counts_url_and_header_bytes(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    keys = _keys(tmp_path, upstream, "egress_bytes_per_day = 2000")
    url, pad = f"{upstream.url}/echo", (("X-Pad", "a" * 1400),)
    assert 1400 < egress_bytes("GET", url, pad) <= 1000 + 1000  # one fits, not two
    async with running_forwarder(store, keys, upstream):
        assert await _ask(store, keys, url, pad) == (200, "")
        assert await _ask(store, keys, url, pad) == (429, "rate-limited")  # no body at all
    assert upstream.hits["/echo"] == 1


def test_policy_defaults_for_the_caps(tmp_path: Path) -> None:
    from wonders.crypto import PrivateKey, write_key_files

    write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    policy = parse_policy('[defaults]\nmax_url_length = "unlimited"\n'
                          '[clients.gpu01]\nbundle = "gpu01.pub"\n', base=tmp_path)
    assert policy.clients["gpu01"].max_url_length is None
    assert policy.clients["gpu01"].max_header_bytes == 64 * 1024
    with pytest.raises(Exception, match="max_url_length"):
        parse_policy('[defaults]\nmax_url_length = "8 KiB"\n', base=tmp_path)


async def test_a_followed_redirect_is_charged_to_the_budget(
    store: Store, tmp_path: Path, upstream: Upstream
) -> None:
    """Each hop the forwarder follows sends a URL and headers out again: when the budget
    cannot pay for the next hop, the redirect goes back to the program instead."""
    target = f"{upstream.url}/echo"
    first = f"{upstream.url}/redirect?to={target}"
    cost = egress_bytes("GET", first, ()) + egress_bytes("GET", target, ())
    for budget, expected, hits in ((cost, 200, 1), (cost - 1, 302, 0)):
        upstream.hits.clear()
        keys = _keys(tmp_path, upstream, f"egress_bytes_per_day = {budget}\n"
                                         "follow_redirects = true")
        async with running_forwarder(store, keys, upstream):
            assert (await _ask(store, keys, first))[0] == expected
        assert upstream.hits["/redirect"] == 1
        assert upstream.hits["/echo"] == hits
