"""The forwarder image's contents, run as the image runs them (no Docker needed).

The base image cannot be pulled here, so the image is rebuilt by hand from what the
Dockerfile says: a wheel of this checkout (``pip wheel --no-deps .``) in a fresh virtual
environment with exactly the Dockerfile's dependency list (no mitmproxy); the user of
the Dockerfile's ``useradd`` (uid 10001); the config directory read-only (a read-only
bind mount, or ``chmod a-w`` where mounting is not allowed); the state directory
(``XDG_STATE_HOME`` of the Dockerfile's ``ENV``) writable; the environment of the
Dockerfile's ``ENV`` plus the credentials minio-compose.yml passes, and nothing else; the
Dockerfile's ``ENTRYPOINT`` + ``CMD`` and ``HEALTHCHECK`` command lines, with the image's
paths mapped to temporary ones. The mailbox is S3 (moto) and the audit log a directory
that stops accepting writes, so that the records go to the spool in the state volume.
Needs root (to run as another user); skipped, saying so, otherwise.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.eventually import eventually_sync

pytestmark = [pytest.mark.deploy, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = (ROOT / "Dockerfile").read_text()


@dataclass
class Image:
    """What the Dockerfile puts in the image and how it runs it."""

    requirements: list[str]
    uid: int
    env: dict[str, str]
    workdir: str
    command: list[str]  # ENTRYPOINT + CMD
    healthcheck: list[str]


def _image() -> Image:
    runtime = DOCKERFILE[DOCKERFILE.rindex("\nFROM "):]  # the final stage

    def instruction(name: str) -> str:
        found = re.search(rf"^{name} ((?:.*\\\n)*.*)$", runtime, re.MULTILINE)
        assert found is not None, name
        return found.group(1).replace("\\\n", " ")

    health = re.search(r"\bCMD (\[.*\])", instruction("HEALTHCHECK"))
    assert health is not None
    uid = re.search(r"useradd --system --uid (\d+)", DOCKERFILE)
    assert uid is not None
    return Image(
        requirements=re.findall(r'"([a-z][a-z0-9-]*[<>=][^"]*)"', DOCKERFILE),
        uid=int(uid.group(1)),
        env=dict(word.split("=", 1) for word in shlex.split(instruction("ENV"))),
        workdir=instruction("WORKDIR"),
        command=json.loads(instruction("ENTRYPOINT")) + json.loads(instruction("CMD")),
        healthcheck=json.loads(health.group(1)),
    )


@pytest.fixture
def image_user() -> Iterator[pwd.struct_passwd]:
    """The image's user, created here (as a system user) if this machine has none."""
    if os.geteuid() != 0:
        pytest.skip("needs root: runs the forwarder as the image's uid 10001 (setpriv)")
    setpriv, useradd, userdel = (shutil.which(p) for p in ("setpriv", "useradd", "userdel"))
    if not (setpriv and useradd and userdel):
        pytest.skip("needs setpriv, useradd and userdel (util-linux, passwd)")
    uid = _image().uid
    created = False
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        subprocess.run([useradd, "--system", "--uid", str(uid), "--user-group",
                        "--no-create-home", "--home-dir", "/nonexistent", "wonders-image"],
                       check=True, capture_output=True)
        user, created = pwd.getpwuid(uid), True
    try:
        yield user
    finally:
        if created:
            subprocess.run([userdel, user.pw_name], capture_output=True)


@contextlib.contextmanager
def _read_only(directory: Path) -> Iterator[str]:
    """``directory`` read-only for everyone: a read-only bind mount onto itself, or
    ``chmod a-w`` of it and its files where this machine does not allow mounting."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if mount and umount and subprocess.run([mount, "--bind", str(directory), str(directory)],
                                capture_output=True).returncode == 0:
        try:
            done = subprocess.run([mount, "-o", "remount,bind,ro", str(directory)],
                                  capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            yield "a read-only bind mount"
        finally:
            subprocess.run([umount, str(directory)], check=True)
        return
    for path in (*directory.iterdir(), directory):
        path.chmod(path.stat().st_mode & ~0o222)
    yield "chmod a-w"


def _wait(what: str, seconds: float, check: Callable[[], bool],
          explain: Callable[[], str]) -> None:
    eventually_sync(check, seconds, what=what, explain=explain)


def test_the_image_contents_run_as_the_image_runs_them(
    image_user: pwd.struct_passwd, bucket: str, s3_endpoint: str
) -> None:
    image = _image()
    uid, gid = image_user.pw_uid, image_user.pw_gid
    # not under pytest's tmp_path, which uid 10001 cannot enter
    base = Path(tempfile.mkdtemp(prefix="wonders-image-"))
    base.chmod(0o755)
    try:
        _run_image(image, base, uid, gid, bucket, s3_endpoint)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run_image(image: Image, base: Path, uid: int, gid: int, bucket: str,
               s3_endpoint: str) -> None:
    opt, etc, var_lib = base / "opt-wonders", base / "etc-wonders", base / "var-lib"
    # the image's paths, here
    paths = {"/opt/wonders": str(opt), "/etc/wonders": str(etc), "/var/lib": str(var_lib)}

    def here(text: str) -> str:
        for image_path, path in paths.items():
            text = re.sub(rf"{re.escape(image_path)}(?=/|$|:)", path, text)
        return text

    # build stage: the wheel, installed with --no-deps, then the Dockerfile's list
    wheels = base / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(wheels), str(ROOT)], check=True, timeout=600)
    subprocess.run([sys.executable, "-m", "venv", str(opt)], check=True, timeout=300)
    pip = [str(opt / "bin" / "python"), "-m", "pip", "install", "--quiet",
           "--no-cache-dir"]
    subprocess.run([*pip, "--no-deps", *map(str, wheels.glob("*.whl"))], check=True,
                   timeout=600)
    subprocess.run([*pip, *image.requirements], check=True, timeout=900)
    assert subprocess.run([str(opt / "bin" / "python"), "-c", "import mitmproxy"],
                          capture_output=True).returncode != 0, "mitmproxy is installed"

    # runtime stage: the user's home is the state volume, /var/lib itself is not theirs
    home = Path(here(image.workdir))
    assert home.is_relative_to(base), home  # never outside this test's directory
    home.mkdir(parents=True)
    os.chown(home, uid, gid)
    audit = base / "audit"  # the audit log's own store, writable by the forwarder at first
    audit.mkdir()
    os.chown(audit, uid, gid)

    # the operator's side: `wonders init forwarder`, a client, and the key for uid 10001
    ours = Path(sys.executable).parent / "wonders"
    endpoint = ["--endpoint", s3_endpoint]
    subprocess.run([ours, "init", "forwarder", "--name", "fw1", "--mailbox", f"s3://{bucket}",
                    *endpoint, "--dir", str(etc)], check=True, capture_output=True)
    subprocess.run([ours, "init", "client", "--name", "gpu01", "--mailbox", f"s3://{bucket}",
                    *endpoint, "--forwarder", str(etc / "fw1.pub"), "--dir",
                    str(base / "client")], check=True, capture_output=True)
    subprocess.run([ours, "clients", "add", "--policy", str(etc / "policy.toml"),
                    str(base / "client" / "gpu01.pub")], check=True, capture_output=True)
    with (etc / "forwarder.toml").open("a") as config:
        config.write(f'\n[tuning]\ngrace = 3.0\n\n[audit]\nmailbox = "{audit.as_uri()}"\n')
    os.chown(etc / "fw1.key", uid, -1)  # docs/operating.md: sudo chown 10001 forwarder/fw1.key

    # the container's environment: the Dockerfile's ENV and what compose passes
    compose = yaml.safe_load((ROOT / "minio-compose.yml").read_text())
    passed = compose["services"]["forwarder"]["environment"]
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home)}
    for name, value in image.env.items():
        env[name] = here(value.replace("$PATH", env["PATH"]))
    env.update({name: "testing" for name in passed})  # moto takes any credentials
    as_image_user = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--"]
    healthcheck = [*as_image_user, *map(here, image.healthcheck)]

    def health() -> subprocess.CompletedProcess[str]:
        return subprocess.run(healthcheck, env=env, cwd=home, capture_output=True, text=True,
                              timeout=60)

    def healthy() -> bool:
        return health().returncode == 0

    with _read_only(etc) as how:
        denied = subprocess.run([*as_image_user, "touch", str(etc / "x")],
                                capture_output=True, text=True)
        assert denied.returncode != 0, f"the config directory is writable ({how})"
        assert not healthy(), "healthy before the forwarder runs"
        log = base / "forwarder.log"
        with log.open("wb") as out:
            forwarder = subprocess.Popen([*as_image_user, *map(here, image.command)],
                                         env=env, cwd=home, stdout=out,
                                         stderr=subprocess.STDOUT)
        try:
            _wait("the forwarder serves", 120,
                  lambda: forwarder.poll() is not None or "serving" in log.read_text(),
                  log.read_text)
            assert forwarder.poll() is None, log.read_text()
            check = health()
            assert check.returncode == 0, check.stdout + check.stderr + log.read_text()
            # the audit store stops accepting writes: records must go to the spool
            for path in (audit, *audit.rglob("*")):
                path.chmod(path.stat().st_mode & ~0o222)
            ping = subprocess.run([ours, "ping", "--config", str(base / "client" /
                                   "client.toml"), "--count", "1"], capture_output=True,
                                  text=True, timeout=120)
            assert ping.returncode == 0, ping.stdout + ping.stderr + log.read_text()
            assert healthy(), log.read_text()
            forwarder.send_signal(signal.SIGTERM)  # docker stop
            assert forwarder.wait(timeout=60) == 0, log.read_text()
        finally:
            if forwarder.poll() is None:
                forwarder.kill()
                forwarder.wait()
        text = log.read_text()
        assert "wonders forward: fw1 stopped" in text, text
        assert not healthy(), "still healthy once the forwarder stopped"
    # the records not stored went to the spool in the state volume, owned by uid 10001
    spool = Path(env["XDG_STATE_HOME"]) / "wonders" / "audit-spool-fw1.jsonl"
    assert spool.parent == home  # the image's VOLUME
    assert spool.is_file(), f"{text}\nstate: {sorted(map(str, home.rglob('*')))}"
    assert spool.stat().st_uid == uid
    assert "ping.wonders.invalid" in spool.read_text()
    assert grp.getgrgid(gid)  # the user's group exists, as useradd made it in the image
