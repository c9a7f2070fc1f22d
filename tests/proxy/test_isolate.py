"""``wonder-run --isolate``: inside, the proxy is the only way out; without user
namespaces, exit 2 and one line, and the command never runs."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy.conftest import download_child, pattern_sha256
from tests.proxy.test_wonder_run import Done, local, python, wonder_run
from tests.relay.harness import Upstream
from wonders.cli.config import load_client_config
from wonders.errors import ConfigError


def _namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "true"], capture_output=True,
        check=False).returncode == 0


pytestmark = [pytest.mark.skipif(not _namespaces_work(),
                                 reason="user namespaces are not available on this machine"),
              pytest.mark.slow]  # wonder-run processes in namespaces


async def test_only_the_proxy_is_reachable_from_inside(upstream: Upstream) -> None:
    host, port = upstream.url.removeprefix("https://").rsplit(":", 1)
    done = await wonder_run(*local(upstream, "--isolate"), *python(f"""
        import os, socket, ssl, sys, time, urllib.request
        try:
            socket.create_connection(({host!r}, {port}), timeout=5)
            print("direct: connected")
        except OSError as exc:
            print("direct: failed", type(exc).__name__)
        started = time.monotonic()
        try:
            socket.getaddrinfo("pypi.org", 443)
            print("lookup: resolved")
        except OSError as exc:
            print("lookup: failed", type(exc).__name__, round(time.monotonic() - started))
        status = open("/proc/self/status").read()
        print("uid", os.getuid(), "caps", status.split("CapEff:")[1].split()[0])
        with urllib.request.urlopen({upstream.url + "/echo/inside"!r}) as answer:
            print("proxied:", answer.status, answer.read()[:200].decode())
    """))
    assert done.code == 0, done.out + done.err
    lines = done.out.splitlines()
    assert "direct: failed ConnectionRefusedError" in lines  # inside, 127.0.0.2 is not it
    assert "lookup: failed gaierror 0" in lines  # at once, not after a timeout
    assert f"uid {os.getuid()} caps 0000000000000000" in lines  # the user's own, no caps
    assert any(line.startswith("proxied: 200") and "/echo/inside" in line for line in lines)
    assert upstream.hits["/echo/inside"] == 1


async def test_pip_install_under_isolate(upstream: Upstream, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = await wonder_run(
        *local(upstream, "--isolate"), sys.executable, "-m", "pip", "install",
        "--no-cache-dir", "--disable-pip-version-check", "--index-url",
        f"{upstream.url}/simple/", "--target", str(target), "wonders-probe")
    assert done.code == 0, done.out + done.err
    assert (target / "wonders_probe.py").read_text() == "VALUE = 42\n"


async def test_without_user_namespaces_exit_2_and_the_command_never_runs(
    upstream: Upstream, tmp_path: Path
) -> None:
    # the limit is per user namespace: 0 inside one we make, as a node's sysctl would be
    marker = tmp_path / "ran"
    wonder = str(Path(sys.executable).parent / "wonder-run")
    args = " ".join([wonder, *local(upstream, "--isolate"), "touch", str(marker)])
    done = await _run("unshare", "--user", "--map-root-user", "sh", "-c",
                      f"echo 0 > /proc/sys/user/max_user_namespaces && exec {args}")
    assert done.code == 2, done.out + done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert "--isolate: cannot make a user and network namespace" in lines[0]
    assert "user.max_user_namespaces is 0" in lines[0]
    assert "sysctl -w user.max_user_namespaces" in lines[0]  # what an administrator can do
    assert not marker.exists()


async def test_isolate_in_the_client_config(tmp_path: Path) -> None:
    config = tmp_path / "client.toml"
    config.write_text('key = "k"\nforwarder = "f"\nmailbox = "file:///x"\nisolate = true\n')
    assert load_client_config(config).isolate is True
    config.write_text('key = "k"\nforwarder = "f"\nmailbox = "file:///x"\nisolate = "yes"\n')
    with pytest.raises(ConfigError, match="isolate: expected true or false"):
        load_client_config(config)


async def _run(*args: str) -> Done:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def test_a_large_download_streams_through_the_namespace_bridge(upstream: Upstream) -> None:
    size = 48 * 1024 * 1024
    done = await wonder_run(*local(upstream, "--isolate"), sys.executable, "-c",
                            download_child(size), upstream.url)
    assert done.code == 0, done.out + done.err
    total, digest, _ = done.out.split()
    assert (int(total), digest) == (size, pattern_sha256(size))
