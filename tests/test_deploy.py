"""The deployment files checked against the code.

The bucket policies are checked by running the code: a forwarder, a GPU-side client and
an auditor go through every kind of exchange (small and streamed bodies both ways, a
denial, a ping, a timeout the client cleans up after, a stale claim taken over, the
janitor, the audit log in the mailbox and in its own bucket, a clean stop) on stores that
record each call. Every call must be allowed by that side's policy, and every grant in a
policy must have been used, so each prefix is granted to exactly the side that uses it.
The compose file, the Dockerfile and the Slurm scripts are checked for pinned images and
for commands and options that exist.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.eventually import eventually
from tests.relay.harness import (
    FAST,
    Keys,
    Upstream,
    WrappedStore,
    client_for,
    make_keys,
    running_forwarder,
)
from wonders.audit import verify_log
from wonders.cli import main
from wonders.crypto import RequestHead, new_request_id, seal_request
from wonders.errors import RelayTimeout
from wonders.mailbox import DirectoryStore, Store, layout
from wonders.relay.records import PING_URL, Claim

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


class Recording(WrappedStore):
    """A store that notes every call as (S3 action, bucket, key or list prefix)."""

    def __init__(self, inner: Store, bucket: str, calls: set[tuple[str, str, str]]) -> None:
        super().__init__(inner)
        self.bucket, self.calls = bucket, calls

    def _on(self, action: str, key: str) -> None:
        self.calls.add((action, self.bucket, key))


Grant = tuple[int, str, str]  # statement index, action, resource or prefix pattern


def _grants(policy: dict[str, Any], user: str) -> list[tuple[Grant, str, str]]:
    """(grant, action, pattern) for every action × resource (× list prefix)."""
    found = []
    for n, statement in enumerate(policy["Statement"]):
        assert statement["Effect"] == "Allow"
        for action in statement["Action"]:
            for resource in statement["Resource"]:
                resource = resource.replace("${aws:username}", user)
                if action == "s3:ListBucket":
                    prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                    for prefix in prefixes:
                        pattern = prefix.replace("${aws:username}", user)
                        found.append(((n, action, f"{resource}?prefix={prefix}"), action,
                                      f"{resource}?prefix={pattern}"))
                else:
                    assert "Condition" not in statement
                    found.append(((n, action, resource), action, resource))
    return found


def _allowing(grants: list[tuple[Grant, str, str]], call: tuple[str, str, str]) -> list[Grant]:
    action, bucket, key = call
    target = (f"arn:aws:s3:::{bucket}?prefix={key}" if action == "s3:ListBucket"
              else f"arn:aws:s3:::{bucket}/{key}")
    return [grant for grant, granted, pattern in grants
            if granted == action and fnmatch.fnmatchcase(target, pattern)]


#: Grants the exchange below cannot reach, and why they are there.
UNEXERCISED: dict[str, set[str]] = {
    # verify reads a heartbeat (the chain's tip) only while its forwarder runs, and an
    # intent only when no record completes it (its forwarder died)
    "auditor": {"arn:aws:s3:::wonders/status/forwarders/*",
                "arn:aws:s3:::wonders/claims/*.intent"},
}


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))


async def _exchange(tmp_path: Path, keys: Keys, upstream: Upstream, separate_audit: bool,
                    calls: dict[str, set[tuple[str, str, str]]]) -> None:
    for name in (f"mailbox-{separate_audit}", f"audit-{separate_audit}"):
        (tmp_path / name).mkdir()
    mailbox = DirectoryStore(tmp_path / f"mailbox-{separate_audit}")
    audit_base = DirectoryStore(tmp_path / f"audit-{separate_audit}") if separate_audit \
        else mailbox
    forwarder_store = Recording(mailbox, "wonders", calls["forwarder"])
    audit_store = Recording(audit_base, "wonders-audit" if separate_audit else "wonders",
                            calls["forwarder"])
    gpu = Recording(mailbox, "wonders", calls["gpu"])
    # a request whose claim is held by a forwarder that died: taken over
    rid = new_request_id(time.time() - 60)
    sealed = seal_request(RequestHead("GET", f"{upstream.url}/echo/orphan"), request_id=rid,
                          sender=keys.clients["gpu01"], recipient=keys.forwarder.public,
                          now=time.time() - 60)
    await gpu.put(layout.head_key("requests", "gpu01", rid), sealed.data)
    await mailbox.put(layout.claim_key(rid, 0),
                      Claim("ghost", "0" * 16, 0, time.time() - 60).to_json())
    settings = dataclasses.replace(FAST, audit_interval=0.05, read_timeout=30)
    await forwarder_store.check()  # as `wonders forward` does at startup
    await audit_store.check()
    async with running_forwarder(forwarder_store, keys, upstream, settings,
                                 audit_store=audit_store) as forwarder:
        async with client_for(gpu, keys) as client:
            for method, path, body in (("GET", "/echo", b""),
                                       ("PUT", "/echo", b"x" * 700_000),
                                       ("GET", "/bytes/300000", b"")):
                async with await client.request(method, upstream.url + path,
                                                body=body) as response:
                    assert response.status == 200
                    await response.read()
            async with await client.request("GET", "https://example.com/") as response:
                assert response.status == 403
            async with await client.request("GET", PING_URL) as response:
                assert response.status == 200
            with pytest.raises(RelayTimeout):
                await client.request("GET", f"{upstream.url}/hold", timeout=0.5)
            upstream.release.set()
            await eventually(
                lambda: upstream.hits["/echo/orphan"] > 0 and not forwarder.in_flight,
                what="the orphan to be taken over and answered")
        # the janitor, a day later: leftovers of the timed-out and orphaned requests go
        real = forwarder.clock
        forwarder.clock = lambda: real() + 86400
        assert await forwarder.sweep() > 0
        forwarder.clock = real
    auditor = Recording(audit_base, "wonders-audit" if separate_audit else "wonders",
                        calls["auditor"])
    await auditor.check()
    relay = Recording(mailbox, "wonders", calls["auditor"])  # heartbeats and intents
    result = await verify_log(auditor, keys.forwarder.public, mailbox=relay)
    assert result.problems == []
    assert result.records >= 7


async def test_bucket_policies_grant_each_side_exactly_what_its_code_uses(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    calls: dict[str, set[tuple[str, str, str]]] = {"forwarder": set(), "gpu": set(),
                                                   "auditor": set()}
    for separate in (False, True):
        upstream.release.clear()
        await _exchange(tmp_path, keys, upstream, separate, calls)
    problems = []
    for side in ("gpu", "forwarder", "auditor"):
        policy = json.loads((DEPLOY / "policies" / f"{side}.json").read_text())
        grants = _grants(policy, "gpu01")
        used: set[Grant] = set()
        for call in sorted(calls[side]):
            allowing = _allowing(grants, call)
            if not allowing:
                problems.append(f"{side}: {call} is not allowed by {side}.json")
            used.update(allowing)
        for grant, _, _ in grants:
            if grant not in used and grant[2] not in UNEXERCISED.get(side, set()):
                problems.append(f"{side}: {grant} is granted but never used")
    assert problems == [], "\n".join(problems)
    # and the other side's objects stay out of reach
    gpu = _grants(json.loads((DEPLOY / "policies" / "gpu.json").read_text()), "gpu01")
    for call in [("s3:GetObject", "wonders", layout.claim_key(new_request_id(0), 0)),
                 ("s3:PutObject", "wonders", layout.heartbeat_key("fw1")),
                 ("s3:GetObject", "wonders", layout.audit_head_key("fw1")),
                 ("s3:ListBucket", "wonders", layout.AUDIT),
                 ("s3:ListBucket", "wonders", layout.REQUESTS),
                 ("s3:GetObject", "wonders", f"{layout.RESPONSES}gpu02/x/head"),
                 ("s3:PutObject", "wonders", f"{layout.REQUESTS}gpu02/x/head")]:
        assert not _allowing(gpu, call), call
    forwarder = _grants(json.loads((DEPLOY / "policies" / "forwarder.json").read_text()), "")
    assert not _allowing(forwarder, ("s3:DeleteObject", "wonders", "audit/2026/01/01/a/b"))
    assert not _allowing(forwarder, ("s3:DeleteObject", "wonders-audit", "audit/x"))


# ------------------------------------------------------------------ static checks


def _help(*command: str) -> str:
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0, result.output
    return result.output


def _options_exist(line: str) -> None:
    """Every --option on a wonders / wonder-run command line is in that command's help."""
    words = line.split()
    if words[0] == "wonder-run":
        from wonders.proxy.run import main as wonder_run

        text = CliRunner().invoke(wonder_run, ["--help"]).output
        own = words[1 : words.index("--")] if "--" in words else words[1:]
    else:
        command = [w for w in words[1:3] if not w.startswith("-")]
        text = _help(*command)
        own = words[1:]
    for word in own:
        if word.startswith("--"):
            assert word.split("=")[0] in text, (line, word)


def test_the_compose_file_pins_releases_and_uses_existing_options() -> None:
    compose = yaml.safe_load((ROOT / "minio-compose.yml").read_text())
    services = compose["services"]
    for name, service in services.items():
        if "image" in service:
            image = service["image"]
            assert re.search(r":RELEASE\.\d{4}-\d\d-\d\dT\d\d-\d\d-\d\dZ$", image), (name, image)
    assert services["minio"]["healthcheck"]["test"] == ["CMD", "mc", "ready", "local"]
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "./deploy:/deploy:ro" in services["minio-init"]["volumes"]
    forwarder = services["forwarder"]
    assert forwarder["build"] == "."
    assert "./forwarder:/etc/wonders:ro" in forwarder["volumes"]
    _options_exist("wonders forward " + " ".join(forwarder["command"]))


def test_the_minio_init_script_makes_every_role_and_expires_all_but_the_audit() -> None:
    script = (DEPLOY / "minio-init.sh").read_text()
    assert subprocess.run(["/bin/sh", "-n", str(DEPLOY / "minio-init.sh")]).returncode == 0
    created = re.search(r"for role in ([a-z ]+); do", script)
    assert created is not None
    roles = set(created.group(1).split())
    assert roles == {p.stem for p in (DEPLOY / "policies").glob("*.json")}
    expiring = re.search(r"for prefix in ([a-z/ ]+); do\s+mc ilm rule add", script)
    assert expiring is not None
    assert set(expiring.group(1).split()) == {layout.REQUESTS, layout.CLAIMS, layout.RESPONSES}
    assert layout.AUDIT not in expiring.group(1)
    assert "mc mb --ignore-existing --with-lock local/wonders-audit" in script


def test_the_image_is_pinned_unprivileged_and_holds_the_forwarders_dependencies() -> None:
    text = (ROOT / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    assert bases
    assert all(re.fullmatch(r"python:3\.11\.\d+-slim-\w+", b) for b in bases), bases
    assert re.search(r"^USER wonders$", text, re.MULTILINE)
    assert "useradd --system --uid 10001" in text
    health = re.search(r'HEALTHCHECK .*\\\n\s+CMD \[(.*)\]', text)
    assert health is not None
    _options_exist(" ".join(json.loads(f"[{health.group(1)}]")))
    entry = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    cmd = json.loads(re.search(r"^CMD (.*)$", text, re.MULTILINE).group(1))  # type: ignore[union-attr]
    _options_exist(" ".join(entry + cmd))
    # the forwarder's dependencies are pyproject's, less the proxy's (mitmproxy)
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {d for d in declared if not d.startswith("mitmproxy")}
    installed = set(re.findall(r'"([a-z][a-z0-9-]*[<>=][^"]*)"', text))
    assert installed == wanted
    assert "--no-deps ." in text


@pytest.mark.slow  # new interpreters
def test_the_forwarder_runs_without_mitmproxy(tmp_path: Path) -> None:
    """What the image lacks is never imported by the forwarder's commands."""
    code = ("import sys; sys.modules['mitmproxy'] = None\n"
            "from wonders.cli import main\n"
            "for args in (['forward', '--help'], ['status', '--help'], ['audit', '--help']):\n"
            "    try:\n        main(args)\n    except SystemExit as exit:\n"
            "        assert exit.code == 0, (args, exit.code)\n"
            "import wonders.relay.forwarder, wonders.cli.config, wonders.cli.status\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    # the image's HEALTHCHECK, with nothing of the proxy (nor its dependencies, such as
    # certifi) importable: exit status 1 (no forwarder alive), not an ImportError
    (tmp_path / "mailbox").mkdir()
    init = CliRunner().invoke(main, ["init", "forwarder", "--name", "fw1", "--mailbox",
                                     (tmp_path / "mailbox").as_uri(), "--dir",
                                     str(tmp_path / "fwd")])
    assert init.exit_code == 0, init.output
    code = ("import sys; sys.modules['wonders.proxy'] = sys.modules['certifi'] = None\n"
            "from wonders.cli import main\n"
            f"main(['status', '--config', {str(tmp_path / 'fwd' / 'forwarder.toml')!r}])\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "reachable" in done.stdout, done.stdout + done.stderr


@pytest.mark.parametrize("script", ["forwarder.sbatch", "gpu-job.sbatch"])
def test_the_slurm_scripts_parse_and_use_existing_options(script: str) -> None:
    path = DEPLOY / "slurm" / script
    assert subprocess.run(["/bin/bash", "-n", str(path)]).returncode == 0
    lines = [line.strip() for line in path.read_text().splitlines()]
    assert lines[0] == "#!/bin/bash"
    commands = [re.sub(r"^(exec|srun) ", "", line) for line in lines
                if re.match(r"^(exec |srun )?(wonders|wonder-run) ", line)]
    assert commands
    for command in commands:
        _options_exist(command)
