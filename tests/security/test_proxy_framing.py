"""Hardening 13: conflicting or duplicated Content-Length / Transfer-Encoding from the
client are refused with 400, and the relayed request never carries the client's framing.

A request whose length two parties read differently (request smuggling) must not get
through: mitmproxy refuses these itself (``validate_inbound_headers``, kept on), the addon
refuses them too should that ever be off, and the head sealed into the mailbox carries
no Transfer-Encoding and only a Content-Length equal to the body actually relayed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.proxy.test_wonder_run import local, wonder_run
from tests.relay.harness import Upstream, serve_upstream
from tests.security.proxy_inproc import GOOD_AUTH, RecordingRelay, exchange, running_proxy
from wonders.proxy.bridge import TOKEN_HEADER, Bridge

RAW_CHILD = str(Path(__file__).with_name("raw_child.py"))


@pytest.fixture(autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path_factory.getbasetemp() / "wonders-home"))


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


#: Framing headers and a body, each read two ways by two parsers.
AMBIGUOUS = {
    "CL and TE": "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE and CL": "Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
    "two CL, different": "Content-Length: 4\r\nContent-Length: 5\r\n\r\nabcde",
    "two CL, equal": "Content-Length: 5\r\nContent-Length: 5\r\n\r\nabcde",
    "CL list": "Content-Length: 5, 5\r\n\r\nabcde",
    "CL signed": "Content-Length: +5\r\n\r\nabcde",
    "CL hex": "Content-Length: 0x5\r\n\r\nabcde",
    "two TE": "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "TE not chunked": "Transfer-Encoding: gzip\r\n\r\nabcde",
    "TE unknown": "Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "TE with a space in the name": "Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\n",
}


def _post(framing: str) -> str:
    return ("POST https://{upstream}/echo HTTP/1.1\r\nHost: {upstream}\r\n{auth}"
            "Connection: close\r\n" + framing)


@pytest.mark.slow  # wonder-run as a process
async def test_ambiguous_framing_is_refused_through_wonder_run(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Documents mitmproxy's own check, end to end: 400 for each, nothing relayed."""
    script = tmp_path / "requests.json"
    script.write_text(json.dumps([_post(f) for f in AMBIGUOUS.values()]))
    done = await wonder_run(*local(upstream), sys.executable, RAW_CHILD, str(script),
                            upstream.url.removeprefix("https://"))
    assert done.code == 0, done.err
    for name, reply in zip(AMBIGUOUS, json.loads(done.out), strict=True):
        assert reply is not None, name
        assert reply["status"] == 400, (name, reply)
    assert sum(upstream.hits.values()) == 0


@pytest.mark.parametrize("name", [n for n in AMBIGUOUS if n != "TE not chunked"])
async def test_refused_even_without_mitmproxys_header_check(name: str) -> None:
    """With ``validate_inbound_headers`` off, mitmproxy's body reader still refuses most
    of them; Content-Length with Transfer-Encoding it would read as chunked, and that is
    the addon's to refuse. (``TE: gzip`` alone it reads to the end of the connection.)"""
    relay = RecordingRelay()
    async with running_proxy(relay, validate_inbound_headers=False) as port:
        raw = (_post(AMBIGUOUS[name]).replace("https://{upstream}", "http://files.example")
               .replace("{upstream}", "files.example").replace("{auth}", GOOD_AUTH.decode()))
        reply = await exchange(port, raw.encode())
    assert reply is not None
    assert reply.status == 400, reply
    if name in ("CL and TE", "TE and CL"):
        assert reply.headers["x-wonders-error"] == "bad-request"
        assert reply.body.count(b"\n") == 1
    assert relay.seen == []


def _framing(headers: tuple[tuple[str, str], ...]) -> list[tuple[str, str]]:
    return [(k.lower(), v) for k, v in headers
            if k.lower() in ("content-length", "transfer-encoding")]


@pytest.mark.parametrize("size", [5, 300 * 1024], ids=["inline", "streamed"])
async def test_the_sealed_request_carries_no_client_framing(size: int) -> None:
    """A chunked upload is sealed without Transfer-Encoding; one with Content-Length is
    sealed with the length of the body actually relayed (whole, or streamed)."""
    body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
    chunked = b"".join(b"%x\r\n" % len(body[i:i + 7000]) + body[i:i + 7000] + b"\r\n"
                       for i in range(0, len(body), 7000)) + b"0\r\n\r\n"
    relay = RecordingRelay()
    head = b"POST http://files.example/up HTTP/1.1\r\nHost: files.example\r\n" + GOOD_AUTH
    async with running_proxy(relay) as port:
        reply = await exchange(port, head + b"Transfer-Encoding: chunked\r\n\r\n" + chunked)
        assert reply is not None
        assert reply.status == 200
        reply = await exchange(port, head + b"Content-Length: %d\r\n\r\n" % size + body)
        assert reply is not None
        assert reply.status == 200
    first, second = relay.seen
    assert first.body == body
    assert second.body == body
    # chunked from the client: no TE; whole bodies get their real length
    assert _framing(first.headers) == ([("content-length", str(size))] if size < 256 * 1024
                                       else [])
    assert _framing(second.headers) == [("content-length", str(size))]


@pytest.mark.parametrize("actual", [300 * 1024 - 1, 300 * 1024 + 1], ids=["short", "long"])
async def test_a_streamed_body_that_differs_from_its_length_never_goes_out(actual: int) -> None:
    """Should a body ever reach the bridge longer or shorter than the Content-Length the
    addon let through, the request is refused before it is sealed, not sent cut."""
    relay = RecordingRelay()
    bridge = Bridge(relay)  # type: ignore[arg-type]
    await bridge.start()
    try:
        token = bridge.register("POST", "http://files.example/up", (), 300 * 1024)
        async with aiohttp.ClientSession() as session, session.post(
            f"http://127.0.0.1:{bridge.port}/", data=b"x" * actual,
            headers={TOKEN_HEADER: token},
        ) as response:
            assert response.status == 400
            assert response.headers["X-Wonders-Error"] == "bad-request"
    finally:
        await bridge.close()
    assert relay.seen == []
