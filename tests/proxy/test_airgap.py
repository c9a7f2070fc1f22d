"""A true air gap: wonder-run and its command run in a new network namespace that has
only its own loopback, connected to a forwarder outside through a directory mailbox."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy.test_wonder_run import WONDER_RUN
from tests.relay.harness import FAST, Keys, Upstream, running_forwarder
from wonders.crypto import PrivateKey, write_key_files
from wonders.mailbox import DirectoryStore
from wonders.policy import load_policy

#: Run "$@" in a new user and network namespace, with its loopback up and nothing else.
_ISOLATED = ["unshare", "--user", "--map-root-user", "--net", "sh", "-c",
             'ip link set lo up && exec "$@"', "isolated"]


def _why_no_namespace() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs unshare(1) and ip(8)"
    try:
        done = subprocess.run([*_ISOLATED, "true"], capture_output=True, text=True,
                              timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"cannot run unshare: {exc}"
    if done.returncode != 0:
        return f"this kernel refuses an unprivileged network namespace: {done.stderr.strip()}"
    return None


async def _isolated(*command: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        *_ISOLATED, *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.slow  # pip through wonder-run, in a namespace
async def test_pip_install_from_inside_a_namespace_with_no_network(
    tmp_path: Path, upstream: Upstream
) -> None:
    reason = _why_no_namespace()
    if reason:
        pytest.skip(reason)
    port = upstream.url.rsplit(":", 1)[1]
    forwarder, gpu = PrivateKey.generate("fw1"), PrivateKey.generate("gpu01")
    for key in (forwarder, gpu):
        write_key_files(key, tmp_path)
    (tmp_path / "policy.toml").write_text(
        '[clients.gpu01]\nbundle = "gpu01.pub"\n'
        f'allow = ["127.0.0.2"]\nallow_private = ["127.0.0.2/32"]\nports = [{port}]\n')
    mailbox = tmp_path / "mailbox"
    mailbox.mkdir()
    (tmp_path / "client.toml").write_text(
        f'key = "gpu01.key"\nforwarder = "fw1.pub"\nmailbox = "{mailbox.as_uri()}"\n'
        "timeout = 120\n")
    keys = Keys(forwarder, {"gpu01": gpu}, load_policy(tmp_path / "policy.toml"))

    # From inside, the upstream cannot be reached directly: there is no route out.
    code, out = await _isolated(
        sys.executable, "-c",
        f"import socket; socket.create_connection(('127.0.0.2', {port}), timeout=5)")
    assert code != 0
    assert "ConnectionRefusedError" in out, out  # its 127.0.0.2 is its own, and empty
    code, out = await _isolated(  # nor anything else: there is no route at all
        sys.executable, "-c", "import socket; socket.create_connection(('192.0.2.1', 443))")
    assert code != 0
    assert "Network is unreachable" in out, out

    async with running_forwarder(DirectoryStore(mailbox), keys, upstream, FAST):
        code, out = await _isolated(
            WONDER_RUN, "--config", str(tmp_path / "client.toml"), "--",
            sys.executable, "-m", "pip", "install", "--no-cache-dir",
            "--disable-pip-version-check", "--index-url", f"{upstream.url}/simple/",
            "--target", str(tmp_path / "site"), "wonders-probe")
    assert code == 0, out
    assert (tmp_path / "site" / "wonders_probe.py").read_text() == "VALUE = 42\n"
    assert "wonder-run: " in out  # its summary: the requests went through the relay
    assert upstream.hits["/packages/wonders_probe-1.0-py3-none-any.whl"] == 1
