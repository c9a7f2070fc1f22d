"""The proxy and bridge in-process, with a relay whose response breaks mid-body."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests

from wonders.crypto import Headers
from wonders.errors import EnvelopeError, NoForwarder, RelayTimeout
from wonders.proxy.bridge import Bridge
from wonders.proxy.run import _start_proxy

SECRET = "test-secret-0123456789abcdef"


class _Response:
    id = "01M808TX000000000000000001"
    status, reason = 200, "OK"

    def __init__(self, headers: Headers) -> None:
        self.headers = headers

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    async def iter_body(self) -> AsyncIterator[bytes]:
        yield b"the first segment verified; "
        raise EnvelopeError("tampered", "body segment 1 does not authenticate")

    async def aclose(self) -> None:
        return None


class _Relay:
    """Stands in for RelayClient: answers with a body that fails verification, or 503."""

    def __init__(self, headers: Headers = (), fail: Exception | None = None) -> None:
        self.headers, self.fail = headers, fail

    async def request(self, *args: object, **kwargs: object) -> _Response:
        if self.fail is not None:
            raise self.fail
        return _Response(self.headers)


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path / "home"))


async def _through_proxy(relay: _Relay) -> requests.Response | BaseException:
    bridge = Bridge(relay)  # type: ignore[arg-type]
    await bridge.start()
    master, task, port = await _start_proxy(bridge, asyncio.Event(), False, SECRET)
    proxies = {"http": f"http://wonders:{SECRET}@127.0.0.1:{port}"}

    def fetch() -> requests.Response | BaseException:
        try:
            response = requests.get("http://files.example/model.bin", proxies=proxies,
                                    timeout=30)
            return response
        except requests.RequestException as exc:
            return exc

    try:
        return await asyncio.get_running_loop().run_in_executor(None, fetch)
    finally:
        master.shutdown()
        await task
        await bridge.close()


@pytest.mark.parametrize(
    "headers", [(), (("Content-Length", "1000"),)], ids=["chunked", "content-length"]
)
async def test_a_body_failing_verification_aborts_the_connection(headers: Headers) -> None:
    outcome = await _through_proxy(_Relay(headers))
    # requests raises when the body ends badly; a clean end would return a Response
    assert isinstance(outcome, requests.exceptions.ChunkedEncodingError | requests.ConnectionError)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (NoForwarder("no forwarder is alive on x"), 503, "no-forwarder"),
        (RelayTimeout("no response for request y in time"), 504, "timeout"),
        (EnvelopeError("tampered", "response head does not authenticate"), 502,
         "verification-failed"),
    ],
    ids=["503", "504", "502"],
)
async def test_relay_failures_are_one_line_with_a_status(
    error: Exception, status: int, code: str
) -> None:
    outcome = await _through_proxy(_Relay(fail=error))
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == status
    assert outcome.headers["X-Wonders-Error"] == code
    assert outcome.text.startswith("wonders: ")
    assert outcome.text.count("\n") == 1


async def test_non_http_traffic_in_a_tunnel_is_refused_not_hung() -> None:
    """An SSH client through CONNECT: the proxy refuses to connect anywhere and closes."""
    bridge = Bridge(_Relay())  # type: ignore[arg-type]
    await bridge.start()
    master, task, port = await _start_proxy(bridge, asyncio.Event(), False, SECRET)
    auth = base64.b64encode(f"wonders:{SECRET}".encode())
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"CONNECT 10.0.0.1:22 HTTP/1.1\r\nHost: 10.0.0.1:22\r\n"
                     b"Proxy-Authorization: Basic " + auth + b"\r\n\r\n")
        await writer.drain()
        established = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert established.startswith(b"HTTP/1.1 200")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        await writer.drain()
        rest = await asyncio.wait_for(reader.read(), 10)  # EOF: the tunnel was closed
        assert b"SSH" not in rest
        writer.close()
    finally:
        master.shutdown()
        await task
        await bridge.close()
