"""The Slurm scripts, run by Slurm.

``deploy/slurm/minicluster.sh`` starts munged, slurmctld and slurmd on loopback (one node
with this machine's CPUs and memory, and one GPU in name only); ``forwarder.sbatch`` and
``gpu-job.sbatch`` are submitted with ``sbatch`` as they are, against a directory mailbox
and a loopback HTTPS upstream that only the forwarder trusts (``upstream_ca``). The GPU
job's request must come back through the relay. Then, with a request in flight, the
forwarder's time limit is brought close: Slurm's warning signal (the script's
``--signal``) must make it drain — finish that request, delete its heartbeat, exit 0
before the limit — and its audit log must verify.
Skipped, with the reason, where Slurm or munge is missing or will not start.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.eventually import eventually
from tests.relay.harness import serve_upstream
from wonders.mailbox import layout

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
SLURM = ROOT / "deploy" / "slurm"
BIN = Path(sys.executable).parent  # wonders and wonder-run of this environment

#: The GPU job's program (gpu-job.sbatch runs `python eval.py --judge URL`): one request
#: to the upstream named in its environment, through wonder-run's proxy.
EVAL_PY = """\
import json, os, sys, urllib.request
url = os.environ["SELFTEST_UPSTREAM"] + "/echo?from=gpu-job"
with urllib.request.urlopen(url, timeout=120) as response:
    body = json.load(response)
print("eval.py", sys.argv[1:], "status", response.status, "path", body["path"], flush=True)
"""

#: A request the upstream holds until the test releases it.
HOLD_PY = """\
import os, urllib.request
with urllib.request.urlopen(os.environ["SELFTEST_UPSTREAM"] + "/hold", timeout=300) as r:
    print(r.read().decode(), flush=True)
"""


@pytest.fixture
def cluster() -> Iterator[dict[str, str]]:
    """A running one-node cluster: the environment that reaches it."""
    # not under pytest's tmp_path: munged wants every directory above its socket
    # searchable by all, and pytest's base directory is private
    where = Path(tempfile.mkdtemp(prefix="wonders-slurm-"))
    script = str(SLURM / "minicluster.sh")
    try:
        started = subprocess.run([script, "start", str(where)], capture_output=True,
                                 text=True, timeout=180)
        if started.returncode == 77:
            pytest.skip(f"no Slurm cluster here: {started.stderr.strip()}")
        assert started.returncode == 0, started.stdout + started.stderr
        yield {**os.environ, "SLURM_CONF": str(where / "slurm.conf")}
    finally:
        subprocess.run([script, "stop", str(where)], timeout=120)
        shutil.rmtree(where, ignore_errors=True)


def _run(env: dict[str, str], *command: str, cwd: Path | None = None) -> str:
    done = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
    return done.stdout


async def _until(what: str, seconds: float, check: Callable[[], bool],
                 explain: Callable[[], str]) -> None:
    """Poll ``check`` (the event loop keeps serving the upstream) until it holds; the
    daemons' files are read at most four times a second."""
    await eventually(check, seconds, what=what, explain=explain, max_interval=0.25)


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else f"({path} is missing)"


def _outcome(cluster_dir: Path, job: str) -> tuple[str, str] | None:
    """(JobState, ExitCode) once the job has finished (jobcomp/filetxt's line), else None."""
    for line in _text(cluster_dir / "log" / "jobcomp.txt").splitlines():
        fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
        if fields.get("JobId") == job:
            return fields["JobState"], fields["ExitCode"]
    return None


async def test_forwarder_and_gpu_job_run_under_slurm(tmp_path: Path,
                                                     cluster: dict[str, str]) -> None:
    cluster_dir = Path(cluster["SLURM_CONF"]).parent
    slurm_logs = cluster_dir / "log"

    def daemons() -> str:
        return "\n".join(f"--- {p.name}\n{_text(p)[-3000:]}"
                         for p in (slurm_logs / "slurmctld.log", slurm_logs / "slurmd.log"))

    async with serve_upstream(tmp_path, host="127.0.0.2") as upstream:
        port = upstream.url.rsplit(":", 1)[1]
        mailbox, fwd, client, jobs = (tmp_path / n for n in ("mailbox", "fwd", "client",
                                                              "jobs"))
        for d in (mailbox, jobs):
            d.mkdir()
        env = {
            **cluster,
            "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
            # the scripts' own knobs: where the configs are
            "WONDERS_FORWARDER_CONFIG": str(fwd / "forwarder.toml"),
            "WONDERS_CONFIG": str(client / "client.toml"),
            # keep the audit spool and the proxy CA out of the real home
            "XDG_STATE_HOME": str(tmp_path / "state"),
            "WONDERS_HOME": str(tmp_path / "wonders-home"),
            "SELFTEST_UPSTREAM": upstream.url,
        }
        wonders = str(BIN / "wonders")
        # set up as the operator's guide says
        _run(env, wonders, "init", "forwarder", "--name", "fw1", "--mailbox",
             mailbox.as_uri(), "--dir", str(fwd))
        config = fwd / "forwarder.toml"
        config.write_text(f'upstream_ca = "{upstream.ca_file}"\n' + config.read_text())
        _run(env, wonders, "init", "client", "--name", "gpu01", "--mailbox",
             mailbox.as_uri(), "--forwarder", str(fwd / "fw1.pub"), "--dir", str(client))
        _run(env, wonders, "clients", "add", "--policy", str(fwd / "policy.toml"),
             str(client / "gpu01.pub"), "--allow", "127.0.0.2", "--port", port,
             "--allow-private", "127.0.0.2/32")
        (jobs / "eval.py").write_text(EVAL_PY)

        # the forwarder, with the script's own time limit (12 h) and signal
        forwarder = _run(env, "sbatch", "--parsable", str(SLURM / "forwarder.sbatch"),
                         cwd=jobs).strip().split(";")[0]
        forwarder_log = jobs / f"wonders-forwarder-{forwarder}.log"
        await _until("the forwarder serves", 120,
                     lambda: "serving" in _text(forwarder_log),
                     lambda: _text(forwarder_log) + daemons())
        serving_since = time.monotonic()

        gpu = _run(env, "sbatch", "--parsable", str(SLURM / "gpu-job.sbatch"),
                   cwd=jobs).strip().split(";")[0]
        gpu_log = jobs / f"eval-{gpu}.log"
        await _until("the GPU job ends", 240, lambda: _outcome(cluster_dir, gpu) is not None,
                     lambda: _text(gpu_log) + _text(forwarder_log) + daemons())
        assert _outcome(cluster_dir, gpu) == ("COMPLETED", "0:0"), _text(gpu_log)
        output = _text(gpu_log)
        # its ping and its program's request both went through the relay
        assert "answered by fw1" in output, output
        assert "eval.py ['--judge', 'https://api.openai.com/v1'] status 200 path " \
               "/echo?from=gpu-job" in output, output
        assert upstream.hits["/echo"] == 1
        assert "client=gpu01 method=GET host=127.0.0.2 decision=allow status=200" \
               in _text(forwarder_log)

        # A request in flight (the upstream holds it) when the warning comes...
        holder = await asyncio.create_subprocess_exec(
            str(BIN / "wonder-run"), "--", sys.executable, "-c", HOLD_PY, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        try:
            try:
                await asyncio.wait_for(upstream.held.wait(), 120)
            except TimeoutError:
                pytest.fail("the held request did not reach the upstream within 120 s\n"
                            + _text(forwarder_log))
            # Bring the forwarder's time limit within two minutes: Slurm then sends the
            # script's --signal (B:TERM@60) to the batch shell, which is the forwarder
            # (exec), at least 60 s before the limit.
            minutes = math.floor((time.monotonic() - serving_since) / 60) + 2
            _run(env, "scontrol", "update", f"JobId={forwarder}", f"TimeLimit={minutes}")
            await _until("the forwarder drains on Slurm's warning signal", 240,
                         lambda: "stopping: waiting up to" in _text(forwarder_log),
                         lambda: _text(forwarder_log) + daemons())
            assert _outcome(cluster_dir, forwarder) is None  # still draining
            upstream.release.set()  # ...is finished before the forwarder exits
            out, _ = await asyncio.wait_for(holder.communicate(), 120)
        finally:
            if holder.returncode is None:
                holder.kill()
                await holder.wait()
        assert holder.returncode == 0, out.decode(errors="replace")
        assert b"released GET" in out, out
        await _until("the forwarder job ends", 120,
                     lambda: _outcome(cluster_dir, forwarder) is not None,
                     lambda: _text(forwarder_log) + daemons())
        log = _text(forwarder_log)
        # COMPLETED, not TIMEOUT: it exited by itself on the warning, before the limit
        assert _outcome(cluster_dir, forwarder) == ("COMPLETED", "0:0"), log
        assert "wonders forward: fw1 stopped" in log, log
        assert not (mailbox / layout.heartbeat_key("fw1")).exists(), "heartbeat left behind"

        verified = _run(env, wonders, "audit", "verify", "--config", str(config))
        assert "every signature and chain link checks" in verified, verified
        listed = _run(env, wonders, "audit", "--config", str(config), "--json")
        records = [json.loads(line) for line in listed.splitlines()]
        seen = {(r["client"], r["host"], str(r["path"]).split("?")[0], r["status"])
                for r in records}
        assert seen == {("gpu01", "ping.wonders.invalid", "/", 200),
                        ("gpu01", "127.0.0.2", "/echo", 200),
                        ("gpu01", "127.0.0.2", "/hold", 200)}, listed
