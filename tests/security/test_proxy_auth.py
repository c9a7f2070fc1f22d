"""Hardening 1: the proxy serves only the user who started it.

Any local user can connect to 127.0.0.1 ports. Before the fix, anyone who found the port
of a running ``wonder-run`` had requests relayed under its owner's key. Now the command
gets credentials in its proxy URL, and everything else gets 407.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.proxy.test_wonder_run import local, wonder_run
from tests.relay.harness import Upstream, serve_upstream
from tests.security.proxy_inproc import (
    GOOD_AUTH,
    SECRET,
    RecordingRelay,
    basic,
    exchange,
    running_proxy,
)

RAW_CHILD = str(Path(__file__).with_name("raw_child.py"))


@pytest.fixture(autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path_factory.getbasetemp() / "wonders-home"))


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


def _auth_line(credentials: str) -> str:
    return f"Proxy-Authorization: {basic(credentials).decode()}\r\n"


#: What another local user might send: no credentials, or guesses and near misses.
ATTEMPTS = {
    "none": "",
    "wrong-password": _auth_line("wonders:" + "x" * 43),
    "empty-password": _auth_line("wonders:"),
    "secret-minus-one": "Proxy-Authorization: Basic {near_short}\r\n",
    "secret-plus-one": "Proxy-Authorization: Basic {near_long}\r\n",
    "other-user": "Proxy-Authorization: Basic {other_user}\r\n",
    "bearer-scheme": "Proxy-Authorization: Bearer {secret}\r\n",
    "unencoded": "Proxy-Authorization: Basic wonders:{secret}\r\n",
    "in-authorization": "Authorization: Basic {good}\r\n",
    "a-good-and-a-bad-header": "{auth}" + _auth_line("wonders:wrong"),
}


def _attack_requests() -> tuple[list[str], list[str]]:
    """Each attempt as a plain (absolute-form) request and as a CONNECT."""
    names, raws = [], []
    for name, header in ATTEMPTS.items():
        for form, first in (("GET", f"GET https://{{upstream}}/echo?attempt={name} HTTP/1.1"),
                            ("CONNECT", "CONNECT {upstream} HTTP/1.1")):
            names.append(f"{form} {name}")
            raws.append(first + "\r\nHost: {upstream}\r\n" + header
                        + "Connection: close\r\n\r\n")
    return names, raws


@pytest.mark.slow  # wonder-run as a process
async def test_another_local_user_without_the_secret_gets_407(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Ten ways of not holding the secret, as plain requests and CONNECTs, against a real
    wonder-run: each gets 407 proxy-auth and nothing reaches the upstream. Then the
    command's own client, with the proxy URL it was given, gets through."""
    names, raws = _attack_requests()  # near misses are made in the run, from its secret
    script = tmp_path / "requests.json"
    script.write_text(json.dumps(raws))
    host = upstream.url.removeprefix("https://")
    control = textwrap.dedent("""
        import requests, sys
        print(requests.get(sys.argv[1] + "/echo?control=1").status_code)
    """)
    done = await wonder_run(*local(upstream), "sh", "-c",
                            '"$0" "$1" "$2" "$3" && "$0" -c "$4" "$5"', sys.executable,
                            RAW_CHILD, str(script), host, control, upstream.url)
    assert done.code == 0, done.err
    replies_line, control_line = done.out.strip().splitlines()
    for name, reply in zip(names, json.loads(replies_line), strict=True):
        assert reply is not None, name
        assert reply["status"] == 407, (name, reply)
        assert reply["headers"]["x-wonders-error"] == "proxy-auth", name
        assert reply["headers"]["proxy-authenticate"].startswith("Basic "), name
        assert reply["headers"]["content-type"].startswith("text/plain"), name
        assert reply["body"].endswith("\n"), name
        assert reply["body"].count("\n") == 1, name
    assert sum(upstream.hits.values()) == 1  # the control only
    assert upstream.hits["/echo"] == 1
    assert control_line == "200"


async def test_407_for_every_spelling_in_process() -> None:
    """The same guard, in process, with a relay that records: a refused request is never
    handed to the relay, for plain requests and CONNECT alike."""
    relay = RecordingRelay()
    bad = [b"", b"Proxy-Authorization: " + basic("wonders:wrong") + b"\r\n",
           b"Proxy-Authorization: " + basic(f"wonders:{SECRET}\x00") + b"\r\n",
           b"Proxy-Authorization: " + basic(f"Wonders:{SECRET}") + b"\r\n",
           b"Proxy-Authorization: Basic =\r\n",
           b"Proxy-Authorization: Basic \xff\xfe\r\n",
           b"Proxy-Authorization: Basic\r\n",
           GOOD_AUTH + GOOD_AUTH]  # two headers, even equal: refused
    async with running_proxy(relay) as port:
        for header in bad:
            for line in (b"GET http://files.example/x HTTP/1.1",
                         b"CONNECT files.example:443 HTTP/1.1"):
                reply = await exchange(port, line + b"\r\nHost: files.example\r\n" + header
                                       + b"Connection: close\r\n\r\n")
                assert reply is not None
                assert reply.status == 407, (line, header)
                assert reply.headers["x-wonders-error"] == "proxy-auth"
                assert SECRET.encode() not in reply.body
        # an origin-form request, as to a web server, is no way around it either
        reply = await exchange(port, b"GET /x HTTP/1.1\r\nHost: files.example\r\n\r\n")
        assert reply is not None
        assert reply.status == 407
        assert relay.seen == []
        # the right credentials, any case of the header name and scheme: relayed
        lower = b"proxy-authorization: basic " + basic(f"wonders:{SECRET}")[6:] + b"\r\n"
        for header in (GOOD_AUTH, lower):
            reply = await exchange(port, b"GET http://files.example/x HTTP/1.1\r\n"
                                   b"Host: files.example\r\n" + header + b"\r\n")
            assert reply is not None
            assert reply.status == 200, reply
    assert [r.url for r in relay.seen] == ["http://files.example/x"] * 2
    for request in relay.seen:  # the credentials never travel on
        assert not any(k.lower().startswith("proxy-") for k, _ in request.headers)
        assert SECRET not in repr(request.headers)


_LEAK_CHILD = """
    import json, os, subprocess, sys, requests
    from pathlib import Path
    from urllib.parse import urlsplit
    secret = urlsplit(os.environ["HTTPS_PROXY"]).password
    assert secret, "no credentials in the proxy URL"
    ok = requests.get(sys.argv[1] + "/echo?q=1")
    failed = requests.get(sys.argv[2] + "/nothing-listens-here")
    # every process this user can see, this one's children included
    grandchild = subprocess.run(["sh", "-c", "cat /proc/self/cmdline; sleep 0"],
                                capture_output=True).stdout
    seen = [grandchild]
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            seen.append((proc / "cmdline").read_bytes())
        except OSError:
            pass
    in_args = [c.decode(errors="replace") for c in seen if secret.encode() in c]
    print(json.dumps({"secret": secret, "echo": ok.text, "failed": failed.text,
                      "failed_status": failed.status_code, "in_args": in_args,
                      "processes": len(seen)}))
"""


@pytest.mark.slow  # wonder-run as a process
async def test_the_secret_is_in_no_argument_log_line_or_message(upstream: Upstream) -> None:
    done = await wonder_run(*local(upstream, "-v"), sys.executable, "-c",
                            textwrap.dedent(_LEAK_CHILD), upstream.url, "https://127.0.0.2:1")
    assert done.code == 0, done.err
    report = json.loads(done.out)
    secret = report["secret"]
    assert len(secret) >= 40
    assert report["in_args"] == []
    assert report["processes"] > 3  # the scan saw this run's processes at least
    assert secret not in done.err  # -v lines, the summary, mitmproxy's own messages
    assert re.search(r"^wonder-run: GET https://127\.0\.0\.2:\d+/echo 200 ", done.err,
                     re.MULTILINE), done.err
    assert "2 requests" in done.err.splitlines()[-1]
    assert report["failed_status"] == 502
    assert secret not in report["failed"]
    echo = json.loads(report["echo"])  # what the upstream received
    assert secret not in report["echo"]
    assert not [k for k, _ in echo["headers"] if k.lower().startswith("proxy-")]
