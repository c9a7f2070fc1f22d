"""``wonders audit``, ``audit verify`` and ``audit stats`` on an audit log that a real
forwarder wrote (directory mailbox): in this process through click's runner, and
``--follow`` as a process."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO

import pytest

from tests.cli_runner import run_wonders
from tests.relay.harness import FAST, client_for, make_keys, running_forwarder, serve_upstream
from wonders.audit import AuditWriter
from wonders.crypto import load_private_key, write_key_files
from wonders.mailbox import DirectoryStore

WONDERS = str(Path(sys.executable).parent / "wonders")


async def _traffic(root: Path) -> None:
    async with serve_upstream(root) as upstream:
        keys = make_keys(root, int(upstream.url.rsplit(":", 1)[1]))
        write_key_files(keys.forwarder, root / "keys", force=True)
        store = DirectoryStore(root / "mailbox")
        settings = dataclasses.replace(FAST, id="fw-a", audit_interval=0.05)
        async with running_forwarder(store, keys, upstream, settings):
            async with client_for(store, keys) as client:
                for path in ("/echo?token=abc", "/bytes/1000"):
                    async with await client.request("GET", upstream.url + path) as response:
                        assert response.status == 200
                async with await client.request("GET", "https://example.com/") as response:
                    assert response.status == 403
                async with await client.request("GET", upstream.url + "/status/503") as response:
                    assert response.status == 503
            # follower may not reach 127.0.0.1: the address guard denies it
            async with client_for(store, keys, "follower") as client, \
                    await client.request("GET", upstream.url + "/echo") as response:
                assert response.status == 403


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory with keys/, mailbox/ (holding an audit log of five requests)."""
    root = tmp_path_factory.mktemp("audit-log")
    asyncio.run(_traffic(root))
    return root


@pytest.fixture
def root(written: Path, tmp_path: Path) -> Path:
    """A private copy, to tamper with, and a forwarder config pointing at it."""
    copy = tmp_path / "log"
    shutil.copytree(written, copy)
    (copy / "forwarder.toml").write_text(
        f'id = "fw-a"\nkey = "keys/fw.key"\npolicy = "keys/policy.toml"\n'
        f'mailbox = "{(copy / "mailbox").as_uri()}"\n')
    return copy


def _run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_wonders("audit", *args, cwd=root)


def _json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines()]


def test_the_table_shows_every_request(root: Path) -> None:
    done = _run(root, "--config", "forwarder.toml")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["TIME", "(UTC)", "CLIENT", "METHOD", "HOST", "PATH", "DECISION",
                                "STATUS", "UP", "DOWN", "MS"]
    assert len(lines) == 6
    assert "/echo?token=[redacted]" in done.stdout
    assert "example.com" in lines[3]
    assert "deny" in lines[3]
    assert "403" in lines[3]
    assert "5 records from" in done.stderr


def test_json_lines_hold_every_record_and_each_filter_selects_its_own(root: Path) -> None:
    everything = _json_lines(_run(root, "--config", "forwarder.toml", "--json").stdout)
    assert [r["client"] for r in everything] == ["gpu01"] * 4 + ["follower"]
    assert all(r["forwarder"] == "fw-a" for r in everything)

    def ids(*args: str) -> list[object]:
        done = _run(root, "--config", "forwarder.toml", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [r["path"] for r in _json_lines(done.stdout)]

    assert ids("--client", "follower") == ["/echo"]
    assert ids("--decision", "deny") == ["/", "/echo"]
    assert ids("--host", "example.*") == ["/"]
    assert ids("--host", "LOCAL*", "--status", "2xx") == ["/echo?token=[redacted]", "/bytes/1000"]
    assert ids("--status", "503") == ["/status/503"]
    assert ids("--status", "4xx", "--client", "gpu01") == ["/"]
    assert ids("--since", "2999-01-01") == []
    assert ids("--until", "2000-01-01") == []
    assert len(ids("--since", "10m")) == 5


def test_the_mailbox_and_public_key_instead_of_a_config(root: Path) -> None:
    done = _run(root, "--mailbox", (root / "mailbox").as_uri(), "--key", "keys/fw.pub",
                "--json")
    assert done.returncode == 0, done.stderr
    assert len(_json_lines(done.stdout)) == 5
    # the wrong key: nothing shown, every batch reported, exit 1
    wrong = _run(root, "--mailbox", (root / "mailbox").as_uri(), "--key", "keys/gpu01.pub")
    assert wrong.returncode == 1
    assert "signature does not verify" in wrong.stderr
    assert "0 records" in wrong.stderr


def test_bad_input_is_one_line_and_exit_2(root: Path) -> None:
    nowhere = _run(root)
    assert nowhere.returncode == 2
    assert "--config FORWARDER.toml, or --mailbox URL" in nowhere.stderr
    bad_time = _run(root, "--config", "forwarder.toml", "--since", "last tuesday")
    assert bad_time.returncode == 2
    assert "30m, 1h, 7d" in bad_time.stderr
    bad_status = _run(root, "--config", "forwarder.toml", "--status", "ok")
    assert bad_status.returncode == 2
    assert "like 403" in bad_status.stderr


def test_verify_passes_then_names_a_deleted_and_an_edited_batch(root: Path) -> None:
    ok = _run(root, "verify", "--config", "forwarder.toml")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "every signature and chain link checks" in ok.stdout
    # the five records may share one batch or spread over several (audit_interval)
    assert sorted((root / "mailbox" / "audit").rglob("*.jsonl"))
    # more batches: three small writers' worth on the same chain
    key = load_private_key(root / "keys" / "fw.key")

    async def more() -> None:
        writer = AuditWriter(DirectoryStore(root / "mailbox"), key, "fw-a", batch_records=1,
                             interval=3600)
        await writer.open()
        for n in range(3):
            writer.add({"n": n, "time": "2026-01-01T00:00:00.000Z"})
        await writer.close(5)

    asyncio.run(more())
    batches = sorted((root / "mailbox" / "audit").rglob("*.jsonl"))
    deleted, edited = batches[-3], batches[-2]
    deleted.unlink()
    edited.write_bytes(edited.read_bytes().replace(b'"n":1', b'"n":5'))
    bad = _run(root, "verify", "--config", "forwarder.toml")
    assert bad.returncode == 1
    problems = [line for line in bad.stdout.splitlines() if line.startswith("PROBLEM")]
    rel = str(edited.relative_to(root / "mailbox"))
    assert len(problems) == 2, bad.stdout
    assert f"PROBLEM {rel}: its signature does not verify" in bad.stdout
    assert "missing (deleted)" in bad.stdout
    assert "2 problems" in bad.stdout
    as_json = json.loads(_run(root, "verify", "--config", "forwarder.toml", "--json").stdout)
    assert as_json["ok"] is False
    assert {p["key"] for p in as_json["problems"]} >= {rel}
    # reading the log shows the rest and says which batch it left out
    shown = _run(root, "--config", "forwarder.toml", "--json", "--since", "3000d")
    assert shown.returncode == 1
    assert rel in shown.stderr


def test_stats_per_client_and_host(root: Path) -> None:
    done = _run(root, "stats", "--config", "forwarder.toml", "--json")
    assert done.returncode == 0, done.stderr
    stats = json.loads(done.stdout)
    assert stats["total"]["requests"] == 5
    assert stats["total"]["denied"] == 2
    assert stats["total"]["errors"] == 1  # the 503
    assert stats["clients"]["gpu01"]["requests"] == 4
    follower = stats["clients"]["follower"]
    down = follower.pop("down")  # the 403's explanation
    assert 0 < down < 500
    assert follower == {"requests": 1, "allowed": 0, "denied": 1, "rejected": 0, "errors": 0,
                        "up": 0}
    assert stats["hosts"]["example.com"]["denied"] == 1
    assert stats["hosts"]["localhost"]["down"] > 1000
    table = _run(root, "stats", "--config", "forwarder.toml")
    assert table.returncode == 0
    assert "5 requests, 2 denied, 0 rejected, 1 errors" in table.stdout
    assert "CLIENT" in table.stdout
    assert "HOST" in table.stdout


def _readline(stream: IO[str], within: float = 30.0) -> str:
    """One line, or fail after ``within`` seconds (the reader thread ends when the
    process is killed and the pipe closes)."""
    pool = ThreadPoolExecutor(1)
    try:
        return pool.submit(stream.readline).result(timeout=within)
    finally:
        pool.shutdown(wait=False)


@pytest.mark.slow  # a process that keeps running until SIGINT
def test_follow_prints_new_batches(root: Path) -> None:
    follow = subprocess.Popen(
        [WONDERS, "audit", "--config", "forwarder.toml", "--json", "--follow",
         "--client", "gpu07"], cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert follow.stderr is not None
        assert follow.stdout is not None
        # the initial part is done (no gpu07 records) when the summary comes
        assert "0 records" in _readline(follow.stderr)
        key = load_private_key(root / "keys" / "fw.key")

        async def later() -> None:
            writer = AuditWriter(DirectoryStore(root / "mailbox"), key, "fw-a", interval=3600)
            await writer.open()
            writer.add({"client": "gpu01", "time": "2026-01-01T00:00:00.000Z"})
            writer.add({"client": "gpu07", "path": "/new", "time": "2026-01-01T00:00:00.000Z"})
            await writer.close(5)

        asyncio.run(later())
        started = time.monotonic()
        line = _readline(follow.stdout)  # --follow looks every second
        assert json.loads(line)["path"] == "/new"
        assert time.monotonic() - started < 30
        follow.send_signal(signal.SIGINT)
        assert follow.wait(30) == 0
    finally:
        if follow.poll() is None:
            follow.kill()
            follow.wait()
