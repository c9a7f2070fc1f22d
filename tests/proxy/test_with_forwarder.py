"""wonder-run with a client config, against a separately started forwarder on moto's S3."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.proxy.conftest import download_child, pattern_sha256
from tests.proxy.test_wonder_run import CLIENTS, python, wonder_run
from tests.relay.harness import Upstream
from wonders.crypto import PrivateKey, load_public_bundle, write_key_files
from wonders.mailbox import S3Store
from wonders.relay.client import RelayClient

WONDERS = str(Path(sys.executable).parent / "wonders")

#: A ``wonders forward`` process on moto and wonder-run processes: seconds each.
pytestmark = pytest.mark.slow


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

        async def alive() -> bool:
            assert proc.returncode is None, (deployment / "forwarder.log").read_text()
            return await probe.forwarder_alive(refresh=True)

        await eventually(alive, what="the forwarder's first heartbeat",
                         explain=(deployment / "forwarder.log").read_text)
    return proc


@pytest.fixture
async def s3_forwarder(
    deployment: Path, bucket: str, s3_endpoint: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    proc = await _start_forwarder(deployment, bucket, s3_endpoint)
    try:
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


@pytest.mark.parametrize("client", [*CLIENTS, "curl", "pip"])
async def test_clients_through_a_forwarder_on_s3(
    deployment: Path, upstream: Upstream, s3_forwarder: asyncio.subprocess.Process,
    client: str, tmp_path: Path,
) -> None:
    config = ["--config", str(deployment / "client.toml"), "--"]
    if client == "curl":
        done = await wonder_run(*config, "curl", "-sS", "--fail", f"{upstream.url}/echo")
        assert '"method": "GET"' in done.out, done.err
    elif client == "pip":
        done = await wonder_run(
            *config, sys.executable, "-m", "pip", "install", "--no-cache-dir",
            "--disable-pip-version-check", "--index-url", f"{upstream.url}/simple/",
            "--target", str(tmp_path / "site"), "wonders-probe")
        assert (tmp_path / "site" / "wonders_probe.py").exists(), done.out + done.err
    else:
        done = await wonder_run(*config, *python(CLIENTS[client]), upstream.url)
        via = client.replace("-sync", "")
        assert done.out.strip() == f"200 /echo?via={via}", done.err
    assert done.code == 0, done.err


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


@pytest.mark.slow
async def test_512_mib_with_both_processes_peak_memory_reported(
    tmp_path: Path, upstream: Upstream
) -> None:
    """wonder-run and a 'wonders forward' process over a directory mailbox; the child
    checks the SHA-256 and reads its parent's (the proxy's) peak memory."""
    port = upstream.url.rsplit(":", 1)[1]
    for name in ("fw1", "gpu01"):
        write_key_files(PrivateKey.generate(name), tmp_path)
    (tmp_path / "mailbox").mkdir()
    mailbox = (tmp_path / "mailbox").as_uri()
    (tmp_path / "policy.toml").write_text(
        '[clients.gpu01]\nbundle = "gpu01.pub"\nallow = ["127.0.0.2"]\n'
        f'allow_private = ["127.0.0.2/32"]\nports = [{port}]\nmax_response_bytes = "1 GiB"\n')
    (tmp_path / "forwarder.toml").write_text(
        f'id = "fw1"\nkey = "fw1.key"\npolicy = "policy.toml"\nmailbox = "{mailbox}"\n'
        f'upstream_ca = "{upstream.ca_file}"\n[tuning]\npoll_fast = 0.005\npoll_slow = 0.2\n')
    (tmp_path / "client.toml").write_text(
        f'key = "gpu01.key"\nforwarder = "fw1.pub"\nmailbox = "{mailbox}"\n')
    log = (tmp_path / "forwarder.log").open("wb")
    forwarder = await asyncio.create_subprocess_exec(
        WONDERS, "forward", "--config", str(tmp_path / "forwarder.toml"), stdout=log,
        stderr=log)
    try:
        heartbeat = tmp_path / "mailbox" / "status" / "forwarders" / "fw1.json"
        await eventually(heartbeat.exists, what="the forwarder's first heartbeat",
                         explain=(tmp_path / "forwarder.log").read_text)
        size = 512 * 1024 * 1024
        code = download_child(size)
        started = asyncio.get_running_loop().time()
        done = await wonder_run("--config", str(tmp_path / "client.toml"), "--",
                                sys.executable, "-c", code, upstream.url, timeout=600)
        seconds = asyncio.get_running_loop().time() - started
        status = Path(f"/proc/{forwarder.pid}/status").read_text()
        forwarder_peak = int(next(line for line in status.splitlines()
                                  if line.startswith("VmHWM:")).split()[1]) // 1024
    finally:
        forwarder.send_signal(signal.SIGTERM)
        await asyncio.wait_for(forwarder.wait(), 60)
        log.close()
    assert done.code == 0, done.err
    total, digest, proxy_peak = done.out.split()
    print(f"\n512 MiB via wonder-run + wonders forward (directory mailbox): {seconds:.1f} s, "
          f"{size / seconds / 1e6:.0f} MB/s; peak RSS: proxy {proxy_peak} MiB, "
          f"forwarder {forwarder_peak} MiB")
    assert int(total) == size
    assert digest == pattern_sha256(size)
    assert int(proxy_peak) < 300
    assert forwarder_peak < 300
