"""A redirect the forwarder follows to another origin (scheme, host or port) does not carry
the client's credentials there, and https never redirects down to http here.

Before the fix every hop was sent the same headers: an upstream could send a client's
Authorization, Cookie or API key to any other host the policy allows by answering with a
302; and an https URL could be followed to plain http.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.relay.harness import (
    Keys,
    Upstream,
    client_for,
    make_keys,
    running_forwarder,
    serve_upstream,
)
from wonders.audit import is_credential
from wonders.mailbox import DirectoryStore, Store

CREDENTIALS = (
    ("Authorization", "Bearer s3cret"),
    ("Cookie", "session=s3cret"),
    ("X-Api-Key", "s3cret"),
    ("X-Auth-Token", "s3cret"),
    ("Proxy-Authorization", "Basic s3cret"),
)
PLAIN = (("X-Custom", "kept"), ("Accept", "application/json"))


def test_every_header_here_is_one_the_audit_redacts() -> None:
    assert all(is_credential(name) for name, _ in CREDENTIALS)
    assert not any(is_credential(name) for name, _ in PLAIN)


@pytest.fixture
async def second(tmp_path: Path) -> AsyncIterator[Upstream]:
    """Another loopback upstream, on another port: another origin."""
    (tmp_path / "second").mkdir()
    async with serve_upstream(tmp_path / "second") as server:
        yield server


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    (tmp_path / "mailbox").mkdir()
    async with DirectoryStore(tmp_path / "mailbox") as mailbox:
        yield mailbox


def _port(upstream: Upstream) -> int:
    return int(upstream.url.rsplit(":", 1)[1])


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream, second: Upstream) -> Keys:
    """gpu01 follows redirects between the two upstreams (both localhost)."""
    return make_keys(tmp_path, _port(upstream), f"""
[clients.gpu01]
bundle = "gpu01.pub"
allow = ["localhost"]
allow_private = ["127.0.0.0/8"]
ports = [{{port}}, {_port(second)}]
follow_redirects = true

[clients.locked]
bundle = "locked.pub"

[clients.follower]
bundle = "follower.pub"
""")


def _both(tmp_path: Path, upstream: Upstream, second: Upstream) -> Upstream:
    """``upstream`` with a CA file that also trusts ``second``'s CA."""
    bundle = tmp_path / "both-cas.pem"
    bundle.write_bytes(upstream.ca_file.read_bytes() + second.ca_file.read_bytes())
    return dataclasses.replace(upstream, ca_file=bundle)


async def _headers_seen(
    store: Store, keys: Keys, upstream: Upstream, url: str
) -> dict[str, str]:
    async with client_for(store, keys) as client:
        async with await client.request("GET", url, CREDENTIALS + PLAIN) as response:
            assert response.status == 200
            doc = json.loads(await response.read())
    return {k.lower(): v for k, v in doc["headers"]}


async def test_a_redirect_to_another_origin_drops_the_credentials(
    tmp_path: Path, store: Store, keys: Keys, upstream: Upstream, second: Upstream
) -> None:
    async with running_forwarder(store, keys, _both(tmp_path, upstream, second)):
        seen = await _headers_seen(
            store, keys, upstream, f"{upstream.url}/redirect?to={second.url}/echo/landed")
    assert second.hits["/echo/landed"] == 1
    assert seen["x-custom"] == "kept"
    leaked = [name for name, _ in CREDENTIALS if name.lower() in seen]
    assert leaked == []
    assert not any("s3cret" in value for value in seen.values())


async def test_a_redirect_within_the_origin_keeps_them(
    tmp_path: Path, store: Store, keys: Keys, upstream: Upstream, second: Upstream
) -> None:
    async with running_forwarder(store, keys, _both(tmp_path, upstream, second)):
        seen = await _headers_seen(
            store, keys, upstream, f"{upstream.url}/redirect?to=/echo/same")
    assert upstream.hits["/echo/same"] == 1
    assert seen["authorization"] == "Bearer s3cret"
    assert seen["cookie"] == "session=s3cret"
    assert seen["x-api-key"] == "s3cret"
    assert "proxy-authorization" not in seen  # hop-by-hop: never forwarded at all


async def test_https_is_never_followed_down_to_http(
    tmp_path: Path, store: Store, keys: Keys, upstream: Upstream, second: Upstream
) -> None:
    down = f"http://localhost:{_port(second)}/echo/plain"
    async with running_forwarder(store, keys, _both(tmp_path, upstream, second)), \
            client_for(store, keys) as client:
        url = f"{upstream.url}/redirect?to={down}"
        async with await client.request("GET", url, CREDENTIALS) as response:
            assert response.status == 302
            assert response.header("Location") == down
    assert upstream.hits["/redirect"] == 1
