"""Operating wonders from the command line alone: init, clients, forward, status, ping,
wonder-run and audit, on a directory mailbox and on moto's S3 server (as processes), and
the refusals of init and clients (in this process)."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import run_wonders
from tests.relay.harness import Upstream, serve_upstream

BIN = Path(sys.executable).parent
WONDERS, WONDER_RUN = str(BIN / "wonders"), str(BIN / "wonder-run")


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=120, cwd=cwd)


async def _arun(*args: str) -> subprocess.CompletedProcess[str]:
    """A command run off the event loop, which keeps serving the loopback upstream."""
    return await asyncio.to_thread(_run, *args)


@pytest.fixture(params=["directory", "s3"])
def mailbox(request: pytest.FixtureRequest, tmp_path: Path) -> list[str]:
    """``--mailbox URL`` (and ``--endpoint URL`` for S3) for the init commands."""
    if request.param == "directory":
        (tmp_path / "mailbox").mkdir()
        return ["--mailbox", (tmp_path / "mailbox").as_uri()]
    endpoint = request.getfixturevalue("s3_endpoint")
    bucket = request.getfixturevalue("bucket")
    return ["--mailbox", f"s3://{bucket}/cluster-a", "--endpoint", endpoint]


@pytest.mark.slow  # every command as a process, wonder-run and a forwarder included
async def test_from_init_to_a_relayed_request(tmp_path: Path, mailbox: list[str]) -> None:
    # an upstream by address, not "localhost", which wonder-run leaves out of the proxy
    async with serve_upstream(tmp_path, "127.0.0.2") as upstream:
        await _init_to_relayed_request(tmp_path, upstream, mailbox)


async def _init_to_relayed_request(tmp_path: Path, upstream: Upstream, mailbox: list[str]
                                   ) -> None:
    fwd, gpu = tmp_path / "fwd", tmp_path / "gpu"
    made = await _arun(WONDERS, "init", "forwarder", "--name", "fw1", *mailbox, "--dir", str(fwd))
    assert made.returncode == 0, made.stderr
    assert f"wonders forward --config {fwd / 'forwarder.toml'}" in made.stdout
    made = await _arun(WONDERS, "init", "client", "--name", "gpu01", *mailbox, "--dir", str(gpu),
                "--forwarder", str(fwd / "fw1.pub"))
    assert made.returncode == 0, made.stderr
    assert "wonders clients add gpu01.pub" in made.stdout
    assert (gpu / "gpu01.key").stat().st_mode & 0o777 == 0o600
    port = upstream.url.rsplit(":", 1)[1]
    added = await _arun(WONDERS, "clients", "add", str(gpu / "gpu01.pub"), "--allow", "127.0.0.2",
                 "--port", port, "--allow-private", "127.0.0.2/32",
                 "--policy", str(fwd / "policy.toml"))
    assert added.returncode == 0, added.stderr
    listed = await _arun(WONDERS, "clients", "list", "--policy", str(fwd / "policy.toml"))
    assert "gpu01" in listed.stdout
    # the operator trusts the upstream's private CA (a documented forwarder key)
    with (fwd / "forwarder.toml").open("a") as config:
        config.write(f'upstream_ca = "{upstream.ca_file}"\n')
    client_config = str(gpu / "client.toml")

    nobody = await _arun(WONDERS, "status", "--config", client_config)
    assert nobody.returncode == 1
    assert "reachable" in nobody.stdout
    assert "no forwarder heartbeats" in nobody.stdout
    no_pong = await _arun(WONDERS, "ping", "--config", client_config)
    assert no_pong.returncode == 1
    assert "no forwarder is alive" in no_pong.stderr

    forward = await asyncio.create_subprocess_exec(
        WONDERS, "forward", "--config", str(fwd / "forwarder.toml"),
        stderr=asyncio.subprocess.PIPE)
    try:
        assert forward.stderr is not None
        assert b"fw1 serving" in await asyncio.wait_for(forward.stderr.readline(), 60)
        pong = await _arun(WONDERS, "ping", "--config", client_config, "--count", "2")
        assert pong.returncode == 0, pong.stderr
        assert "answered by fw1" in pong.stdout
        assert "2 round trips: min" in pong.stdout
        alive = await _arun(WONDERS, "status", "--config", client_config, "--json")
        assert alive.returncode == 0, alive.stdout + alive.stderr
        report = json.loads(alive.stdout)
        assert report["alive"] == 1
        (beat,) = report["forwarders"]
        assert (beat["id"], beat["state"]) == ("fw1", "alive")
        assert set(beat["counters"]) >= {"requests", "denied", "errors", "bytes_down"}
        assert beat["audit"]["blocked"] is False
        table = await _arun(WONDERS, "status", "--config", str(fwd / "forwarder.toml"))
        assert table.returncode == 0
        assert "fw1" in table.stdout
        assert "alive" in table.stdout
        fetched = await _arun(WONDER_RUN, "--config", client_config, "--", sys.executable, "-c",
                       "import urllib.request, sys; "
                       f"print(urllib.request.urlopen('{upstream.url}/echo/e2e').read()[:40])")
        assert fetched.returncode == 0, fetched.stderr
        assert "/echo/e2e" in fetched.stdout
        forward.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(forward.wait(), 60) == 0
    finally:
        if forward.returncode is None:
            forward.kill()
            await forward.wait()
    gone = await _arun(WONDERS, "status", "--config", client_config)
    assert gone.returncode == 1  # a clean stop removes the heartbeat
    health = await _arun(WONDERS, "status", "--config", str(fwd / "forwarder.toml"), "--json")
    assert health.returncode == 1  # the container's health check: this forwarder is gone
    assert json.loads(health.stdout)["self"] == "missing"
    audit = await _arun(WONDERS, "audit", "--config", str(fwd / "forwarder.toml"), "--json")
    assert audit.returncode == 0, audit.stderr
    hosts = [json.loads(line)["host"] for line in audit.stdout.splitlines()]
    assert hosts == ["ping.wonders.invalid", "ping.wonders.invalid", "127.0.0.2"]


def test_init_refuses_to_overwrite_and_bad_names(tmp_path: Path) -> None:
    url = (tmp_path / "m").as_uri()
    assert run_wonders("init", "forwarder", "--name", "fw1", "--mailbox", url, "--dir",
                       str(tmp_path)).returncode == 0
    again = run_wonders("init", "forwarder", "--name", "fw1", "--mailbox", url, "--dir",
                        str(tmp_path))
    assert again.returncode == 2
    assert "nothing was written" in again.stderr
    bad = run_wonders("init", "client", "--name", "gpu 1", "--mailbox", url)
    assert bad.returncode == 2
    assert "invalid name" in bad.stderr
    bad_url = run_wonders("init", "client", "--name", "gpu1", "--mailbox", "ftp://x",
                          "--dir", str(tmp_path / "c"))
    assert bad_url.returncode == 2
    assert "unsupported scheme" in bad_url.stderr
    assert not (tmp_path / "c").exists()


POLICY = """\
# Cluster A egress policy. Reviewed by ops.
allow = ["pypi.org"]   # everyone

[defaults]
rate_per_minute = 60   # keep it low

[clients.old]
bundle = "old.pub"
allow = ["example.org"]
# the old node's note stays with it

[clients.keep]   # this one stays
bundle = "keep.pub"
allow = ["*.hf.co"]
"""


def test_clients_add_and_remove_keep_the_rest_of_the_file(tmp_path: Path) -> None:
    (tmp_path / "keys").mkdir()
    for name in ("old", "keep", "new"):
        assert run_wonders("keygen", name, "--out", str(tmp_path / "keys")).returncode == 0
    policy = tmp_path / "policy.toml"
    for name in ("old", "keep"):
        (tmp_path / f"{name}.pub").write_bytes((tmp_path / "keys" / f"{name}.pub").read_bytes())
    policy.write_text(POLICY)
    added = run_wonders("clients", "add", str(tmp_path / "keys" / "new.pub"), "--allow",
                        "api.openai.com", "--policy", str(policy))
    assert added.returncode == 0, added.stderr
    assert policy.read_text().startswith(POLICY)  # every byte before it kept
    assert (tmp_path / "new.pub").exists()  # the bundle now sits beside the policy
    removed = run_wonders("clients", "remove", "old", "--policy", str(policy))
    assert removed.returncode == 0, removed.stderr
    text = policy.read_text()
    assert "[clients.old]" not in text
    assert "the old node's note" not in text
    assert "# Cluster A egress policy. Reviewed by ops." in text
    assert "rate_per_minute = 60   # keep it low" in text
    assert '[clients.keep]   # this one stays\nbundle = "keep.pub"' in text
    listed = run_wonders("clients", "list", "--policy", str(policy))
    assert [line.split()[0] for line in listed.stdout.splitlines()] == ["NAME", "keep", "new"]
    # refusals leave the file as it was
    before = policy.read_text()
    twice = run_wonders("clients", "add", str(tmp_path / "keys" / "new.pub"),
                        "--policy", str(policy))
    assert twice.returncode == 2
    assert "already there" in twice.stderr
    invalid = run_wonders("clients", "add", str(tmp_path / "keys" / "old.pub"), "--allow",
                          "*", "--policy", str(policy))
    assert invalid.returncode == 2
    assert "nothing was written" in invalid.stderr
    missing = run_wonders("clients", "remove", "ghost", "--policy", str(policy))
    assert missing.returncode == 2
    assert "no client 'ghost' (clients: keep, new)" in missing.stderr
    assert policy.read_text() == before
