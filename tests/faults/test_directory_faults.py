"""A directory mailbox whose disk fills up, or whose directory stops being writable: each
side gets a clear error (the client retries until its deadline, then a 504 naming the
cause), and both keep serving once it is fixed.

The mailbox is a 4 MiB tmpfs in a new user and mount namespace, and the scenario runs
without capabilities (so file permissions apply even to root); skipped, with the reason,
where the kernel refuses unprivileged namespaces."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCENARIO = textwrap.dedent('''
    import asyncio, json, os, sys, dataclasses
    from pathlib import Path
    from wonders.crypto import PrivateKey, write_key_files
    from wonders.errors import RelayError
    from wonders.mailbox import DirectoryStore
    from wonders.relay.client import RelayClient
    from wonders.relay.forwarder import Forwarder, ForwarderSettings
    from wonders.policy import parse_policy
    from wonders.relay.records import PING_URL

    disk, keys = Path(sys.argv[1]), Path(sys.argv[2])

    def say(**event):
        print(json.dumps(event), flush=True)

    async def main():
        fw, gpu = PrivateKey.generate("fw"), PrivateKey.generate("gpu01")
        write_key_files(gpu, keys)
        policy = parse_policy('[clients.gpu01]\\nbundle = "gpu01.pub"\\n', base=keys)
        (disk / "mailbox").mkdir()
        store = DirectoryStore(disk / "mailbox")
        settings = ForwarderSettings(id="fw", poll_fast=0.005, poll_slow=0.1,
                                     heartbeat_interval=0.5, stale_after=30,
                                     audit_interval=0.2)
        forwarder = Forwarder(store, fw, policy, settings)
        running = asyncio.create_task(forwarder.run())
        await forwarder.ready.wait()
        async with RelayClient(store, gpu, fw.public, poll_fast=0.005, poll_slow=0.1,
                               heartbeat_check=0.5) as client:
            async def ping(label, timeout=20):
                try:
                    async with await client.request("GET", PING_URL, timeout=timeout) as r:
                        await r.read()
                        say(step=label, status=r.status)
                except RelayError as exc:  # the client retried until its deadline: 504
                    say(step=label, error=str(exc))

            await ping("before")
            filler = disk / "filler"
            with open(filler, "wb") as out:
                try:
                    while True:
                        out.write(b"x" * 65536)
                        out.flush()
                except OSError:
                    pass
            await ping("disk-full", timeout=2)
            filler.unlink()
            await ping("space-freed")
            own = disk / "mailbox" / "requests" / "gpu01"
            own.mkdir(parents=True, exist_ok=True)
            os.chmod(own, 0o500)
            await ping("not-writable", timeout=2)
            os.chmod(own, 0o700)
            await ping("writable-again")
        say(step="forwarder", running=not running.done())
        forwarder.stop()
        await running
        say(step="audit", waiting=forwarder.audit.waiting, written=forwarder.audit.written)

    asyncio.run(main())
''')


UNSHARE = shutil.which("unshare") or "unshare"


def _namespace_problem() -> str | None:
    if not (shutil.which("unshare") and shutil.which("setpriv")):
        return "needs unshare(1) and setpriv(1)"
    probe = subprocess.run(
        [UNSHARE, "--user", "--map-root-user", "--mount", "true"], capture_output=True,
        text=True, timeout=30)
    if probe.returncode != 0:
        return f"this kernel refuses an unprivileged mount namespace: {probe.stderr.strip()}"
    return None


@pytest.mark.slow  # a fault test with processes
def test_disk_full_and_permission_denied_then_fixed(tmp_path: Path) -> None:
    problem = _namespace_problem()
    if problem:
        pytest.skip(problem)
    disk, keys = tmp_path / "disk", tmp_path / "keys"
    disk.mkdir()
    keys.mkdir()
    (tmp_path / "scenario.py").write_text(SCENARIO)
    done = subprocess.run(
        [UNSHARE, "--user", "--map-root-user", "--mount", "/bin/sh", "-c",
         'mount -t tmpfs -o size=4m wonders-test "$1" && shift && '
         'exec setpriv --bounding-set=-all --inh-caps=-all "$@"', "scenario", str(disk),
         sys.executable, str(tmp_path / "scenario.py"), str(disk), str(keys)],
        capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    events = {e["step"]: e for e in map(json.loads, done.stdout.splitlines())}
    assert events["before"]["status"] == 200
    assert "No space left on device; free some space" in events["disk-full"]["error"]
    assert events["space-freed"]["status"] == 200
    assert "permission denied on" in events["not-writable"]["error"]
    assert "chmod -R g+rwX,o-rwx" in events["not-writable"]["error"]  # what to run
    assert events["writable-again"]["status"] == 200
    assert events["forwarder"]["running"] is True
    # three pings were executed, and their records reached the (freed) disk
    assert events["audit"] == {"step": "audit", "waiting": 0, "written": 3}
