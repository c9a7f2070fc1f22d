"""wonder-run with a client config, against a separately started forwarder on moto's S3."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.proxy.test_wonder_run import wonder_run
from tests.relay.harness import Upstream, serve_upstream
from wonders.crypto import PrivateKey, load_public_bundle, write_key_files
from wonders.relay import S3Store
from wonders.relay.client import RelayClient

WONDERS = str(Path(sys.executable).parent / "wonders")


@pytest.fixture(autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path_factory.getbasetemp() / "wonders-home"))


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


@pytest.fixture
def deployment(tmp_path: Path, upstream: Upstream, bucket: str, s3_endpoint: str) -> Path:
    """Keys, a policy, a forwarder config and a client config, as an operator sets up."""
    port = upstream.url.rsplit(":", 1)[1]
    for name in ("fw1", "gpu01"):
        write_key_files(PrivateKey.generate(name), tmp_path)
    (tmp_path / "policy.toml").write_text(
        '[clients.gpu01]\nbundle = "gpu01.pub"\n'
        f'allow = ["127.0.0.2"]\nallow_private = ["127.0.0.2/32"]\nports = [{port}]\n'
    )
    mailbox = f"s3://{bucket}/cluster-a"
    (tmp_path / "forwarder.toml").write_text(
        f'id = "fw1"\nkey = "fw1.key"\npolicy = "policy.toml"\nmailbox = "{mailbox}"\n'
        f'endpoint = "{s3_endpoint}"\nupstream_ca = "{upstream.ca_file}"\n'
        "[tuning]\npoll_fast = 0.01\npoll_slow = 0.2\nheartbeat_interval = 1.0\n"
    )
    (tmp_path / "client.toml").write_text(
        f'key = "gpu01.key"\nforwarder = "fw1.pub"\nmailbox = "{mailbox}"\n'
        f'endpoint = "{s3_endpoint}"\ntimeout = 60\n'
    )
    return tmp_path


async def _start_forwarder(deployment: Path, bucket: str, s3_endpoint: str) -> (
    asyncio.subprocess.Process
):
    log = (deployment / "forwarder.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        WONDERS, "forward", "--config", str(deployment / "forwarder.toml"),
        stdout=log, stderr=log)
    key = PrivateKey.generate("probe")
    async with S3Store(bucket, "cluster-a", endpoint_url=s3_endpoint) as store:
        probe = RelayClient(store, key, load_public_bundle(deployment / "fw1.pub"))
        for _ in range(300):  # deadline-bounded wait for the first heartbeat
            if await probe.forwarder_alive(refresh=True):
                return proc
            assert proc.returncode is None, (deployment / "forwarder.log").read_text()
            await asyncio.sleep(0.05)
    raise AssertionError("forwarder did not start")


async def test_against_a_forwarder_on_s3_then_without_one(
    deployment: Path, upstream: Upstream, bucket: str, s3_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    proc = await _start_forwarder(deployment, bucket, s3_endpoint)
    try:
        done = await wonder_run("--config", str(deployment / "client.toml"), "-v", "--",
                                "curl", "-sS", "--fail", f"{upstream.url}/echo?q=secret")
        assert done.code == 0, done.err
        assert '"method": "GET"' in done.out
        assert f"GET {upstream.url}/echo 200" in done.err  # the query is not logged

        monkeypatch.setenv("WONDERS_CONFIG", str(deployment / "client.toml"))
        found = await wonder_run("curl", "-sS", "--fail", f"{upstream.url}/echo")
        assert found.code == 0, found.err
    finally:
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 30) == 0
    loop = asyncio.get_running_loop()
    started = loop.time()
    gone = await wonder_run("curl", "-sS", "-i", f"{upstream.url}/echo")
    assert re.search(r"^HTTP/[\d.]+ 503", gone.out, re.MULTILINE), gone.out + gone.err
    assert "x-wonders-error: no-forwarder" in gone.out.lower()
    assert "no forwarder is alive" in gone.out
    assert loop.time() - started < 30  # at once, not after the 60 s timeout
    assert upstream.hits["/echo"] == 2
