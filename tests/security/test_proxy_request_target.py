"""Hardening 13: control characters in the request line are refused at the proxy, and
what reaches a log line is escaped.

A job could put ESC sequences or NULs in a URL: relayed, they reach the forwarder's host,
the upstream, and every log line that prints the URL, where they rewrite the operator's
terminal or forge log lines. Raw control bytes in the request target are now refused with
400 ``bad-request``; percent-encoded, they are an ordinary URL. Log lines escape anything
not printable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.proxy.test_wonder_run import local, wonder_run
from tests.relay.harness import Upstream, serve_upstream
from tests.security.proxy_inproc import GOOD_AUTH, RecordingRelay, exchange, running_proxy
from wonders.proxy.bridge import TOKEN_HEADER, Bridge, printable

RAW_CHILD = str(Path(__file__).with_name("raw_child.py"))


@pytest.fixture(autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path_factory.getbasetemp() / "wonders-home"))


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


def _get(target: str, method: str = "GET") -> str:
    return f"{method} {target} HTTP/1.1\r\nHost: {{upstream}}\r\n{{auth}}Connection: close\r\n\r\n"


def _tunnelled(path: str) -> str:
    """A CONNECT, then a plain HTTP/1.1 request in origin form through the tunnel (as
    inside TLS): mitmproxy checks less there than in an absolute-form request line."""
    return ("CONNECT {upstream} HTTP/1.1\r\nHost: {upstream}\r\n{auth}\r\n{then}"
            f"GET {path} HTTP/1.1\r\nHost: {{upstream}}\r\nConnection: close\r\n\r\n")


#: Request lines the addon refuses (each reaches it: mitmproxy's parser lets them by).
REFUSED = {
    "tunnel, ESC": _tunnelled("/echo/\x1b]0;owned\x07"),
    "tunnel, C1 CSI as UTF-8": _tunnelled("/echo/\xc2\x9b2J"),
    "tunnel, NUL": _tunnelled("/echo?\x00"),
    "tunnel, raw UTF-8": _tunnelled("/echo/\xe2\x80\xaeevil"),
    "ESC in the path": _get("https://{upstream}/echo/\x1b[2J\x1b[31mred"),
    "NUL in the path": _get("https://{upstream}/echo/a\x00b"),
    "C0 in the query": _get("https://{upstream}/echo?q=\x01\x1f"),
    "DEL in the path": _get("https://{upstream}/echo/\x7f"),
    "ESC in the method": _get("https://{upstream}/echo", "G\x1bET"),
    "origin-form, ESC": _get("/echo/\x1b[0m"),
}
#: Percent-encoded, the same characters are fine.
RELAYED = {"percent-encoded": _get("https://{upstream}/echo/%1B%5B2J%00%7F?q=%01")}


@pytest.mark.slow  # wonder-run as a process
async def test_raw_control_characters_in_the_request_line_get_400(
    upstream: Upstream, tmp_path: Path
) -> None:
    script = tmp_path / "requests.json"
    script.write_text(json.dumps([*REFUSED.values(), *RELAYED.values()]))
    done = await wonder_run(*local(upstream), sys.executable, RAW_CHILD, str(script),
                            upstream.url.removeprefix("https://"))
    assert done.code == 0, done.err
    replies = json.loads(done.out)
    for name, reply in zip(REFUSED, replies, strict=False):
        assert reply is not None, name
        if name == "origin-form, ESC":  # not a proxy request: refused before anything
            assert reply["status"] in (400, 407), (name, reply)
            continue
        assert reply["status"] == 400, (name, reply)
        assert reply["headers"]["x-wonders-error"] == "bad-request", name
        assert reply["body"].count("\n") == 1, name
        assert "\x1b" not in reply["body"]
    relayed = replies[-1]
    assert relayed["status"] == 200, relayed
    assert json.loads(relayed["body"])["path"] == "/echo/%1B%5B2J%00%7F?q=%01"
    assert sum(upstream.hits.values()) == 1  # only the percent-encoded one


def test_printable_escapes_every_spelling() -> None:
    assert printable("GET /a\x1b[31m\x00\x7f\u2028\u202e\x9b\udcff") == (
        "GET /a\\x1b[31m\\x00\\x7f\\u2028\\u202e\\x9b\\udcff")
    assert printable("C:\\x1b") == "C:\\\\x1b"  # a literal backslash cannot pass for one
    assert printable("https://pypi.org/simple/é/") == "https://pypi.org/simple/é/"


async def test_log_lines_escape_what_is_not_printable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever reaches the bridge, its -v line and its error line stay one printable
    line: the URL's control characters are escaped, not written to the terminal."""
    lines: list[str] = []
    bridge = Bridge(RecordingRelay(broken=True), on_request=lines.append)  # type: ignore[arg-type]
    await bridge.start()
    caplog.set_level(logging.ERROR, logger="wonders.proxy")
    url = "http://files.example/\x1b[2J\u202e\udcff\x9b\n?q=\x00"  # urlsplit drops \n
    try:
        token = bridge.register("G\x1bET", url, ())
        async with aiohttp.ClientSession() as session:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{bridge.port}/",
                                       headers={TOKEN_HEADER: token}) as response:
                    await response.read()
    finally:
        await bridge.close()
    errors = [r.getMessage() for r in caplog.records if r.name == "wonders.proxy"]
    assert len(lines) == 1
    assert len(errors) == 1
    assert lines[0].startswith("G\\x1bET http://files.example/\\x1b[2J\\u202e\\udcff\\x9b 200 ")
    assert errors[0].startswith(
        "G\\x1bET http://files.example/\\x1b[2J\\u202e\\udcff\\x9b: response aborted")
    for line in (*lines, *errors):
        assert all(c.isprintable() for c in line), line


@pytest.mark.parametrize("name", list(REFUSED)[:-1])
async def test_refused_in_process_and_never_relayed(name: str) -> None:
    relay = RecordingRelay()
    raw = (REFUSED[name].replace("{upstream}", "files.example:80").replace("https://", "http://")
           .replace("{auth}", GOOD_AUTH.decode()))
    first, _, then = raw.partition("{then}")
    async with running_proxy(relay) as port:
        reply = await exchange(port, first.encode("latin-1"), then=then.encode("latin-1"))
    assert reply is not None
    assert reply.status == 400
    assert reply.headers["x-wonders-error"] == "bad-request"
    assert relay.seen == []
