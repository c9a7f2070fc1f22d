"""Processes killed with SIGKILL: a forwarder under load (then restarted), and the proxy
in the middle of a download (its unread response is cleaned up later)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.proxy.conftest import pattern_sha256
from tests.relay.harness import (
    FAST,
    Upstream,
    client_for,
    make_keys,
    running_forwarder,
    serve_upstream,
)
from wonders.crypto import write_key_files
from wonders.errors import EnvelopeError, RelayError
from wonders.mailbox import DirectoryStore, layout

BIN = Path(sys.executable).parent


@pytest.mark.slow
async def test_a_forwarder_killed_under_load_then_restarted(
    tmp_path: Path, upstream: Upstream
) -> None:
    keys = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    write_key_files(keys.forwarder, tmp_path / "keys", force=True)
    (tmp_path / "mailbox").mkdir()
    store = DirectoryStore(tmp_path / "mailbox")
    config = tmp_path / "forwarder.toml"
    config.write_text(
        f'id = "fw1"\nkey = "keys/fw.key"\npolicy = "keys/policy.toml"\n'
        f'mailbox = "{(tmp_path / "mailbox").as_uri()}"\nupstream_ca = "{upstream.ca_file}"\n'
        "[tuning]\npoll_fast = 0.005\npoll_slow = 0.1\nheartbeat_interval = 0.5\n"
        "stale_after = 3.0\n")
    log = (tmp_path / "forwarder.log").open("ab")

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen([str(BIN / "wonders"), "forward", "--config", str(config)],
                                stdout=log, stderr=log)

    first = start()
    outcomes: list[str] = []
    size = 3 * 1024 * 1024 + 17
    try:
        async with client_for(store, keys) as client:
            await eventually(lambda: client.forwarder_alive(refresh=True), 60,
                             what="the forwarder's first heartbeat",
                             explain=(tmp_path / "forwarder.log").read_text)

            async def one(n: int) -> None:
                try:
                    async with await client.request("GET", f"{upstream.url}/bytes/{size}",
                                                    timeout=10) as response:
                        body = await response.read()
                    assert response.status == 200
                    assert hashlib.sha256(body).hexdigest() == pattern_sha256(size)
                    outcomes.append("complete")
                except (RelayError, EnvelopeError) as exc:
                    outcomes.append(type(exc).__name__)

            load = [asyncio.create_task(one(n)) for n in range(40)]
            # under load: some done, many in flight
            await eventually(lambda: len(outcomes) >= 5, 60, what="five requests to end",
                             max_interval=0.01)
            first.kill()
            before = len(outcomes)
            await asyncio.to_thread(first.wait, 30)
            second = start()
            try:
                await asyncio.wait_for(asyncio.gather(*load), 180)
            finally:
                second.send_signal(signal.SIGTERM)
                assert await asyncio.to_thread(second.wait, 60) == 0
    finally:
        for process in (first,):
            if process.poll() is None:
                process.kill()
        log.close()
    assert len(outcomes) == 40
    # A GET whose answer had not begun is executed again by the restarted forwarder;
    # one whose answer was half stored when the forwarder died cannot be completed
    # (nothing may be added to a started answer), and ends as a timeout, never as a
    # truncated body taken for complete.
    assert set(outcomes) <= {"complete", "RelayTimeout"}, outcomes
    assert outcomes[:before] == ["complete"] * before
    assert outcomes.count("complete") > before, outcomes  # the restart took requests over
    assert "took over a stale claim" in (tmp_path / "forwarder.log").read_text()


@pytest.mark.slow
async def test_the_proxy_killed_mid_download_leaves_nothing_after_the_janitor(
    tmp_path: Path,
) -> None:
    async with serve_upstream(tmp_path, "127.0.0.2") as upstream:
        port = upstream.url.rsplit(":", 1)[1]
        keys = make_keys(tmp_path, int(port), policy_text=(
            '[clients.gpu01]\nbundle = "gpu01.pub"\nallow = ["127.0.0.2"]\n'
            'allow_private = ["127.0.0.2/32"]\nports = [{port}]\n'
            '[clients.locked]\nbundle = "locked.pub"\n'
            '[clients.follower]\nbundle = "follower.pub"\n'))
        write_key_files(keys.forwarder, tmp_path / "keys", force=True)
        (tmp_path / "mailbox").mkdir()
        store = DirectoryStore(tmp_path / "mailbox")
        (tmp_path / "client.toml").write_text(
            f'key = "keys/gpu01.key"\nforwarder = "keys/fw.pub"\n'
            f'mailbox = "{(tmp_path / "mailbox").as_uri()}"\n')
        size = 40 * 1024 * 1024
        child = ("import sys, urllib.request\n"
                 f"r = urllib.request.urlopen('{upstream.url}/bytes/{size}')\n"
                 "r.read(1024); print('reading', flush=True)\n"
                 "import time; time.sleep(3600)\n")  # stops reading: the proxy stalls
        async with running_forwarder(store, keys, upstream, FAST) as forwarder:
            proxy = await asyncio.create_subprocess_exec(
                str(BIN / "wonder-run"), "--config", str(tmp_path / "client.toml"), "--",
                sys.executable, "-c", child, stdout=asyncio.subprocess.PIPE,
                start_new_session=True, env={**os.environ,
                                             "WONDERS_HOME": str(tmp_path / "home")})
            assert proxy.stdout is not None
            assert await asyncio.wait_for(proxy.stdout.readline(), 60) == b"reading\n"
            os.killpg(proxy.pid, signal.SIGKILL)  # the proxy and its command
            await proxy.wait()
            await eventually(lambda: not forwarder.in_flight, 60,
                             what="the forwarder to finish storing the answer")
            left = [k async for k in store.list(layout.RESPONSES)]
            assert left, "the unread answer should still be in the mailbox"
            assert sum(1 for k in left if "/body/" in k) >= 2
            # the janitor, once the answer has outlived the request's lifetime
            real = forwarder.clock
            forwarder.clock = lambda: real() + 86400
            removed = await forwarder.sweep()
            forwarder.clock = real
        assert removed >= len(left)
        for prefix in (layout.RESPONSES, layout.REQUESTS, layout.CLAIMS):
            assert [k async for k in store.list(prefix)] == [], prefix
