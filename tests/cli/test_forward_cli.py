"""``wonders forward`` as a process: startup errors, signals, and a SIGKILL mid-request."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.eventually import eventually
from tests.relay.harness import Keys, Upstream, client_for, make_keys
from wonders.crypto import write_key_files
from wonders.mailbox import DirectoryStore

WONDERS = str(Path(sys.executable).parent / "wonders")

#: Every test starts ``wonders forward`` as a process (its signals, exit status and log
#: are what is tested), a second or more each.
pytestmark = pytest.mark.slow


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    made = make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))
    write_key_files(made.forwarder, tmp_path / "keys", force=True)
    return made


@pytest.fixture
def mailbox(tmp_path: Path) -> DirectoryStore:
    (tmp_path / "mailbox").mkdir()
    return DirectoryStore(tmp_path / "mailbox")


def _config(tmp_path: Path, upstream: Upstream, tables: str = "", **extra: str) -> Path:
    lines = {
        "id": '"fw-test"',
        "key": '"keys/fw.key"',
        "policy": '"keys/policy.toml"',
        "mailbox": f'"{(tmp_path / "mailbox").as_uri()}"',
        "upstream_ca": f'"{upstream.ca_file}"',
        **extra,
    }
    text = "\n".join(f"{k} = {v}" for k, v in lines.items() if v)
    text += "\n[tuning]\npoll_fast = 0.005\npoll_slow = 0.1\nheartbeat_interval = 0.5\n"
    text += "stale_after = 3.0\nflush_delay = 0.02\ngrace = 10.0\n"
    text += tables
    path = tmp_path / "forwarder.toml"
    path.write_text(text)
    return path


class Process:
    def __init__(self, config: Path, log: Path, *extra: str) -> None:
        self.log = log
        self._log_file = log.open("ab")
        self.proc = subprocess.Popen([WONDERS, "forward", "--config", str(config), *extra],
                                     stdout=self._log_file, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    async def wait(self) -> int:
        """The exit status (waits up to 30 s without blocking the event loop)."""
        loop = asyncio.get_running_loop()
        code = await loop.run_in_executor(None, self.proc.wait, 30)
        self._log_file.close()
        return code

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._log_file.close()


@pytest.fixture
def processes() -> Iterator[list[Process]]:
    started: list[Process] = []
    yield started
    for process in started:
        process.stop()


async def _until_alive(mailbox: DirectoryStore, keys: Keys, process: Process) -> None:
    """Wait for the process's first heartbeat; fail at once if the process exits."""
    async with client_for(mailbox, keys) as probe:
        async def alive() -> bool:
            if process.proc.poll() is not None:
                raise AssertionError(f"forwarder exited:\n{process.output()}")
            return await probe.forwarder_alive(refresh=True)

        await eventually(alive, what="the forwarder's first heartbeat", explain=process.output)


def _start(tmp_path: Path, config: Path, processes: list[Process], *extra: str) -> Process:
    process = Process(config, tmp_path / f"forwarder-{len(processes)}.log", *extra)
    processes.append(process)
    return process


# ---------------------------------------------------------------------- startup errors


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([WONDERS, *args], capture_output=True, text=True, timeout=60)


def _one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    return lines[0]


def test_a_missing_config_file_is_a_one_line_error(tmp_path: Path) -> None:
    line = _one_error_line(_run("forward", "--config", str(tmp_path / "nope.toml")))
    assert "no such config file" in line


def test_an_unknown_config_key_is_a_one_line_error_with_a_suggestion(
    tmp_path: Path, upstream: Upstream, keys: Keys
) -> None:
    config = _config(tmp_path, upstream, mailbx='"x"')
    line = _one_error_line(_run("forward", "--config", str(config)))
    assert line.endswith("mailbx: unknown key (did you mean 'mailbox'?); known keys: id, key, "
                         "policy, mailbox, endpoint, path_style, notifications, upstream_ca, "
                         "tuning, audit")


def test_a_key_file_others_can_read_is_a_one_line_error_naming_the_chmod(
    tmp_path: Path, upstream: Upstream, keys: Keys
) -> None:
    (tmp_path / "keys" / "fw.key").chmod(0o644)
    line = _one_error_line(_run("forward", "--config", str(_config(tmp_path, upstream))))
    assert "chmod 600" in line


def test_an_invalid_policy_is_a_one_line_error_naming_the_key(
    tmp_path: Path, upstream: Upstream, keys: Keys
) -> None:
    (tmp_path / "keys" / "policy.toml").write_text("[clients.x]\nalow = 1\n")
    line = _one_error_line(_run("forward", "--config", str(_config(tmp_path, upstream))))
    assert "clients.x.alow: unknown key" in line


def test_a_missing_mailbox_directory_is_a_one_line_error(
    tmp_path: Path, upstream: Upstream, keys: Keys
) -> None:
    line = _one_error_line(_run("forward", "--config", str(_config(tmp_path, upstream))))
    assert "no such directory" in line


def test_a_missing_bucket_is_a_one_line_error(
    tmp_path: Path, upstream: Upstream, keys: Keys, s3_endpoint: str
) -> None:
    config = _config(tmp_path, upstream, mailbox='"s3://no-such-bucket/x"',
                     endpoint=f'"{s3_endpoint}"')
    line = _one_error_line(_run("forward", "--config", str(config)))
    expected = f"s3://no-such-bucket/x/ at {s3_endpoint}: bucket 'no-such-bucket' does not exist"
    assert expected in line


# ------------------------------------------------------------------------- signals


async def test_serves_then_drains_on_sigterm(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
    processes: list[Process],
) -> None:
    process = _start(tmp_path, _config(tmp_path, upstream), processes)
    await _until_alive(mailbox, keys, process)
    async with client_for(mailbox, keys) as client:
        pending = asyncio.create_task(client.request("GET", f"{upstream.url}/hold"))
        await asyncio.wait_for(upstream.held.wait(), 30)
        process.proc.send_signal(signal.SIGTERM)  # stop claiming, finish what is in flight
        upstream.release.set()
        async with await pending as response:
            assert (response.status, await response.read()) == (200, b"released GET")
    assert await process.wait() == 0
    output = process.output()
    assert "fw-test stopped" in output
    assert "method=GET host=localhost decision=allow status=200" in output


async def test_the_audit_log_goes_to_its_own_store_and_is_flushed_on_sigterm(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
    processes: list[Process],
) -> None:
    (tmp_path / "audit").mkdir()
    tables = f'audit_interval = 3600\n[audit]\nmailbox = "{(tmp_path / "audit").as_uri()}"\n'
    process = _start(tmp_path, _config(tmp_path, upstream, tables), processes)
    await _until_alive(mailbox, keys, process)
    async with client_for(mailbox, keys) as client:
        for n in range(3):
            async with await client.request("GET", f"{upstream.url}/echo/{n}") as response:
                assert response.status == 200
    assert not list((tmp_path / "audit").rglob("*.jsonl"))  # the hour is not up yet
    process.proc.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
    assert f"audit log in {(tmp_path / 'audit').as_uri()}" in process.output()
    assert not [k async for k in mailbox.list("audit/")]
    shown = await asyncio.create_subprocess_exec(
        WONDERS, "audit", "--config", str(tmp_path / "forwarder.toml"), "--json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(shown.communicate(), 60)
    assert shown.returncode == 0, err
    paths = [json.loads(line)["path"] for line in out.splitlines()]
    assert paths == ["/echo/0", "/echo/1", "/echo/2"]


async def test_the_metrics_endpoint_counts_requests_by_client_decision_and_status(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
    processes: list[Process],
) -> None:
    process = _start(tmp_path, _config(tmp_path, upstream), processes, "--metrics-port", "0")
    await _until_alive(mailbox, keys, process)
    found = re.search(r"metrics on (http://127\.0\.0\.1:\d+/metrics)", process.output())
    assert found, process.output()
    async with client_for(mailbox, keys) as client:
        for path in ("/echo", "/echo", "/status/404"):
            async with await client.request("GET", f"{upstream.url}{path}") as response:
                await response.read()
        async with await client.request("GET", "https://example.com/") as response:
            assert response.status == 403
    async with aiohttp.ClientSession() as session:
        expected = [
            'wonders_requests_total{client="gpu01",decision="allow",status="200"} 2.0',
            'wonders_requests_total{client="gpu01",decision="allow",status="404"} 1.0',
            'wonders_requests_total{client="gpu01",decision="deny",status="403"} 1.0',
            'wonders_request_seconds_count{client="gpu01"} 4.0',
            'wonders_upstream_seconds_count{client="gpu01"} 3.0',
            "wonders_in_flight 0.0",
            "wonders_audit_blocked 0.0",
        ]
        scrapes = [""]

        async def all_counted() -> bool:
            async with session.get(found.group(1)) as scraped:
                scrapes[-1] = await scraped.text()
            return all(line in scrapes[-1] for line in expected)

        # the last record is counted just after its answer is stored
        await eventually(all_counted, what=f"the metrics to show {expected}",
                         explain=lambda: scrapes[-1])
        text = scrapes[-1]
        assert re.search(r'wonders_body_bytes_total\{client="gpu01",direction="down"\} [1-9]',
                         text)
        assert "wonders_pending_requests" in text
    process.proc.send_signal(signal.SIGTERM)
    assert await process.wait() == 0


async def test_a_metrics_port_in_use_is_an_error_with_exit_status_2(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = await asyncio.create_subprocess_exec(
            WONDERS, "forward", "--config", str(_config(tmp_path, upstream)),
            "--metrics-port", str(port), stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in err.decode()


async def _until_logged(process: Process, text: str) -> None:
    """Wait for ``text`` in the forwarder's log; fails if it never comes."""
    await eventually(lambda: text in process.output(), what=f"{text!r} in the log",
                     explain=process.output)


async def test_sighup_reloads_the_policy_and_keeps_it_if_invalid(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
    processes: list[Process],
) -> None:
    policy = tmp_path / "keys" / "policy.toml"
    process = _start(tmp_path, _config(tmp_path, upstream), processes)
    await _until_alive(mailbox, keys, process)
    async with client_for(mailbox, keys) as client:
        async with await client.request("GET", f"{upstream.url}/echo") as response:
            assert response.status == 200
        policy.write_text(policy.read_text().replace('allow = ["localhost", "127.0.0.1"]',
                                                     'allow = ["example.org"]', 1))
        process.proc.send_signal(signal.SIGHUP)
        await _until_logged(process, "policy reloaded")
        async with await client.request("GET", f"{upstream.url}/echo") as response:
            assert response.status == 403
        policy.write_text("not = [valid")
        process.proc.send_signal(signal.SIGHUP)
        await _until_logged(process, "policy not reloaded, keeping the old one")
        async with await client.request("GET", f"{upstream.url}/echo") as response:
            assert response.status == 403  # still the last good policy
    process.proc.send_signal(signal.SIGTERM)
    assert await process.wait() == 0


@pytest.mark.slow
@pytest.mark.parametrize(("method", "status", "body", "hits"), [
    ("GET", 200, b"released GET", 2),
    ("POST", 502, b"", 1),
])
async def test_sigkill_mid_request_then_restart(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
    processes: list[Process], method: str, status: int, body: bytes, hits: int,
) -> None:
    """A GET is executed again by the restarted forwarder; a POST is not (502)."""
    config = _config(tmp_path, upstream)
    first = _start(tmp_path, config, processes)
    await _until_alive(mailbox, keys, first)
    async with client_for(mailbox, keys) as client:
        pending = asyncio.create_task(
            client.request(method, f"{upstream.url}/hold", body=b"payload", timeout=60))
        await asyncio.wait_for(upstream.held.wait(), 30)
        os.kill(first.proc.pid, signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        upstream.release.set()
        second = _start(tmp_path, config, processes)
        async with await asyncio.wait_for(pending, 60) as response:
            assert response.status == status
            text = await response.read()
            if body:
                assert text == body
            else:
                assert b"not sent again" in text
                assert response.header("X-Wonders-Error") == "not-retried"
        second.proc.send_signal(signal.SIGTERM)
        assert await second.wait() == 0
    assert upstream.hits["/hold"] == hits
    assert "took over a stale claim" in second.output()


def _vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status memory figure, in bytes (VmRSS now, VmHWM the peak)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} for {pid}")


@pytest.mark.slow
async def test_a_64_mib_response_streams_with_bounded_memory_on_both_sides(
    tmp_path: Path, upstream: Upstream, keys: Keys, mailbox: DirectoryStore,
    processes: list[Process],
) -> None:
    import hashlib
    import tracemalloc

    size = 64 * 1024 * 1024
    policy = tmp_path / "keys" / "policy.toml"
    policy.write_text(policy.read_text().replace('"32 MiB"', '"128 MiB"'))
    process = _start(tmp_path, _config(tmp_path, upstream), processes)
    await _until_alive(mailbox, keys, process)
    forwarder_before = _vm(process.proc.pid, "VmHWM")
    digest, total = hashlib.sha256(), 0
    tracemalloc.start()
    try:
        async with client_for(mailbox, keys) as client:
            async with await client.request("GET", f"{upstream.url}/bytes/{size}") as response:
                async for piece in response.iter_body():
                    digest.update(piece)
                    total += len(piece)
        _, client_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    forwarder_growth = _vm(process.proc.pid, "VmHWM") - forwarder_before
    mib = 1024 * 1024
    print(f"\n64 MiB response: client-side peak traced {client_peak / mib:.1f} MiB, "
          f"forwarder peak RSS grew {forwarder_growth / mib:.1f} MiB")
    expected = hashlib.sha256((bytes(range(256)) * 4096 * 64)[:size]).hexdigest()
    assert total == size
    assert digest.hexdigest() == expected
    # A few 1 MiB segments in flight on each side, never the body.
    assert client_peak < 16 * mib
    assert forwarder_growth < 32 * mib
    process.proc.send_signal(signal.SIGTERM)
    assert await process.wait() == 0
