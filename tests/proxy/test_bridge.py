"""The proxy and bridge in-process, with a relay whose response breaks mid-body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import requests

from wonders.crypto import Headers
from wonders.errors import EnvelopeError, NoForwarder
from wonders.proxy.bridge import Bridge
from wonders.proxy.run import _start_proxy


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
    master, task, port = await _start_proxy(bridge, asyncio.Event(), verbose=False)
    proxies = {"http": f"http://127.0.0.1:{port}"}

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


async def test_no_forwarder_is_a_503_with_a_clear_line() -> None:
    outcome = await _through_proxy(_Relay(fail=NoForwarder("no forwarder is alive on x")))
    assert isinstance(outcome, requests.Response)
    assert outcome.status_code == 503
    assert outcome.headers["X-Wonders-Error"] == "no-forwarder"
    assert outcome.text == "wonders: no forwarder is alive on x\n"
