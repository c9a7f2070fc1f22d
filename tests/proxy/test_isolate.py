"""``wonder-run --isolate``: inside, the proxy is the only way out; Unix sockets that are
files outside (in /tmp, /run, $XDG_RUNTIME_DIR, named by SSH_AUTH_SOCK) are out of reach;
without user or mount namespaces, exit 2 and one line, and the command never runs."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.proxy.conftest import download_child, pattern_sha256
from tests.proxy.test_wonder_run import WONDER_RUN, Done, local, python, wonder_run
from tests.relay.harness import Upstream
from wonders.cli.config import load_client_config
from wonders.errors import ConfigError


def _namespaces_work() -> bool:
    unshare = shutil.which("unshare")
    return unshare is not None and subprocess.run(
        [unshare, "--user", "--map-root-user", "--net", "--mount", "true"], capture_output=True,
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
    # tmp_path may be under /tmp, which is private inside: the working directory stays
    done = await isolated(
        *local(upstream, "--isolate"), sys.executable, "-m", "pip", "install",
        "--no-cache-dir", "--disable-pip-version-check", "--index-url",
        f"{upstream.url}/simple/", "--target", "site", "wonders-probe", cwd=tmp_path)
    assert done.code == 0, done.out + done.err
    assert (tmp_path / "site" / "wonders_probe.py").read_text() == "VALUE = 42\n"


async def test_without_user_namespaces_exit_2_and_the_command_never_runs(
    upstream: Upstream, elsewhere: Path
) -> None:
    # the limit is per user namespace: 0 inside one we make, as a node's sysctl would be;
    # the marker is where a command run isolated could write it too
    marker = elsewhere / "ran"
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


# ------------------------------------------------------- Unix sockets that are files

#: Where --isolate puts something fresh in front of what is outside.
HIDDEN = ("/tmp", "/var/tmp", "/run", "/dev/shm")


def _hidden(path: Path) -> bool:
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + "/") for root in HIDDEN)


@pytest.fixture
def outside_tmp() -> Iterator[Path]:
    """A directory in the node's own /tmp (tmp_path need not be there)."""
    path = Path(tempfile.mkdtemp(prefix="wonders-isolate-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def elsewhere() -> Iterator[Path]:
    """A directory outside everything --isolate hides (in $HOME, as a job's files are)."""
    home = Path.home()
    if _hidden(home) or not os.access(home, os.W_OK):
        pytest.skip(f"$HOME ({home}) is under {HIDDEN} or not writable")
    path = Path(tempfile.mkdtemp(prefix=".wonders-isolate-", dir=home))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["under-run", "elsewhere"])
def runtime_dir(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A directory to pass as $XDG_RUNTIME_DIR: in /run/user/UID (or /run) as systemd
    makes it, or elsewhere (its own fresh mount inside)."""
    if request.param == "elsewhere":
        yield request.getfixturevalue("elsewhere")
        return
    own = Path(f"/run/user/{os.getuid()}")
    parent = own if own.is_dir() and os.access(own, os.W_OK) else Path("/run")
    if not os.access(parent, os.W_OK):
        pytest.skip(f"cannot make a directory in {own} or /run")
    path = Path(tempfile.mkdtemp(prefix="wonders-isolate-", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.asynccontextmanager
async def unix_server(path: Path) -> AsyncIterator[Path]:
    """A service outside: a Unix socket server on the file ``path`` that says 'outside'."""

    async def greet(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"outside\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(greet, path=str(path))
    try:
        yield path
    finally:
        server.close()
        await server.wait_closed()


#: A command that tries each Unix socket path given and prints a JSON object per path:
#: "connected: <greeting>" or "failed: <exception name>".
PROBE = """
    import json, socket, sys
    result = {}
    for path in sys.argv[1:]:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(path)
                result[path] = "connected: " + s.recv(64).decode().strip()
        except OSError as exc:
            result[path] = "failed: " + type(exc).__name__
    print(json.dumps(result))
"""


async def isolated(*args: str, env: dict[str, str] | None = None,
                   cwd: Path | None = None) -> Done:
    """wonder-run with ``env`` added to (or, for None values, removed from) this
    environment, in ``cwd``."""
    full = dict(os.environ)
    for name, value in (env or {}).items():
        full.pop(name, None)
        if value is not None:
            full[name] = value
    proc = await asyncio.create_subprocess_exec(
        WONDER_RUN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env=full, cwd=cwd)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def _last_json(done: Done) -> dict[str, str]:
    assert done.code == 0, done.out + done.err
    parsed: dict[str, str] = json.loads(done.out.strip().splitlines()[-1])
    return parsed


async def test_unix_sockets_in_tmp_and_the_runtime_dir_are_out_of_reach(
    upstream: Upstream, outside_tmp: Path, runtime_dir: Path
) -> None:
    async with unix_server(outside_tmp / "tmux") as in_tmp, \
            unix_server(runtime_dir / "bus") as in_runtime:
        # also through /proc/PID/root, which names this process's view of the files
        via_proc = f"/proc/{os.getpid()}/root{in_tmp}"
        paths = [str(in_tmp), str(in_runtime), via_proc]
        env = {"XDG_RUNTIME_DIR": str(runtime_dir)}
        outside = _last_json(await isolated(*local(upstream, "--no-isolate"),
                                            *python(PROBE), *paths, env=env))
        assert outside == dict.fromkeys(paths, "connected: outside")  # so this test can fail
        inside = _last_json(await isolated(*local(upstream, "--isolate"),
                                           *python(PROBE), *paths, env=env))
    assert inside == {str(in_tmp): "failed: FileNotFoundError",
                      str(in_runtime): "failed: FileNotFoundError",
                      via_proc: "failed: PermissionError"}


async def test_the_runtime_dir_inside_is_fresh_and_private(
    upstream: Upstream, runtime_dir: Path
) -> None:
    (runtime_dir / "left-by-a-service").write_text("")
    done = await isolated(*local(upstream, "--isolate"), *python("""
        import json, os, stat, urllib.request
        where = os.environ["XDG_RUNTIME_DIR"]
        info = os.stat(where)
        with urllib.request.urlopen(os.environ["UPSTREAM"] + "/echo/runtime") as answer:
            status = answer.status
        print(json.dumps({"path": where, "entries": os.listdir(where),
                          "mode": oct(stat.S_IMODE(info.st_mode)), "uid": info.st_uid,
                          "proxied": status}))
    """), env={"XDG_RUNTIME_DIR": str(runtime_dir), "UPSTREAM": upstream.url})
    assert _last_json(done) == {"path": str(runtime_dir), "entries": [], "mode": "0o700",
                                "uid": os.getuid(), "proxied": 200}


async def test_variables_that_name_sockets_outside_are_not_passed_in(
    upstream: Upstream, elsewhere: Path
) -> None:
    names = ("SSH_AUTH_SOCK", "DBUS_SESSION_BUS_ADDRESS", "DOCKER_HOST", "TMUX",
             "CONTAINER_HOST")
    show = f"""
        import json, os
        print(json.dumps({{name: os.environ.get(name) for name in {names!r}}}))
    """
    async with unix_server(elsewhere / "agent.sock") as agent:
        env = {"SSH_AUTH_SOCK": str(agent),
               "DBUS_SESSION_BUS_ADDRESS": f"unix:path={elsewhere}/bus",
               "DOCKER_HOST": "unix:///run/docker.sock",
               "TMUX": "/tmp/tmux-1000/default,1234,0",
               "CONTAINER_HOST": "tcp://10.1.2.3:2375"}  # a network address: unreachable
        outside = _last_json(await isolated(*local(upstream, "--no-isolate"), *python(show),
                                            env=env))
        assert outside == env
        inside = _last_json(await isolated(*local(upstream, "--isolate"), *python(show),
                                           env=env))
        assert inside == {**dict.fromkeys(names), "CONTAINER_HOST": env["CONTAINER_HOST"]}
        # the agent's socket is in $HOME, which stays: the file itself is covered (by an
        # empty read-only file)
        reached = _last_json(await isolated(*local(upstream, "--isolate"), *python(PROBE),
                                            str(agent), env=env))
        assert reached == {str(agent): "failed: PermissionError"}


async def test_the_command_has_a_private_tmp(upstream: Upstream, outside_tmp: Path) -> None:
    (outside_tmp / "outside-only").write_text("x")
    tmpdir = outside_tmp / "job-tmpdir"  # a $TMPDIR under /tmp, as a batch system sets it
    tmpdir.mkdir()
    (tmpdir / "old").write_text("x")
    name = f"wonders-isolate-{os.getpid()}-{id(outside_tmp)}"
    done = await isolated(*local(upstream, "--isolate"), *python(f"""
        import json, os, tempfile
        wrote = {{}}
        for where in ("/tmp", "/var/tmp", "/dev/shm"):
            path = os.path.join(where, {name!r})
            with open(path, "w") as f:
                f.write("inside")
            wrote[where] = open(path).read()
        fd, _ = tempfile.mkstemp()
        os.close(fd)
        print(json.dumps({{"wrote": wrote, "sees-outside": os.path.exists({
            str(outside_tmp / "outside-only")!r}),
            "tmpdir": os.environ["TMPDIR"], "sees-old": "old" in os.listdir(os.environ["TMPDIR"])
        }}))
    """), env={"TMPDIR": str(tmpdir)})
    inside = _last_json(done)
    assert inside == {"wrote": dict.fromkeys(["/tmp", "/var/tmp", "/dev/shm"], "inside"),
                      "sees-outside": False, "tmpdir": str(tmpdir), "sees-old": False}
    for where in ("/tmp", "/var/tmp", "/dev/shm"):
        assert not (Path(where) / name).exists(), where
    # what the command wrote in $TMPDIR inside (a file from mkstemp) is not outside; only
    # wonder-run's own directory for the run, removed at the end, was there
    assert [p.name for p in tmpdir.iterdir()] == ["old"]


async def test_the_working_directory_stays_even_under_tmp(
    upstream: Upstream, outside_tmp: Path
) -> None:
    job = outside_tmp / "job"
    job.mkdir()
    (job / "input.txt").write_text("data\n")
    async with unix_server(job / "service.sock") as service:
        done = await isolated(*local(upstream, "--isolate"), *python("""
            import json, os, socket
            open("output.txt", "w").write(open("input.txt").read().upper())
            try:
                socket.socket(socket.AF_UNIX).connect("service.sock")
                reached = "connected"
            except OSError as exc:
                reached = type(exc).__name__
            print(json.dumps({"cwd": os.getcwd(), "service": reached}))
        """), cwd=job)
    assert _last_json(done) == {"cwd": str(job), "service": "PermissionError"}
    assert (job / "output.txt").read_text() == "DATA\n"
    assert service.exists()


async def test_a_working_directory_that_would_be_hidden_is_refused(
    upstream: Upstream, elsewhere: Path
) -> None:
    marker = elsewhere / "ran"
    done = await isolated(*local(upstream, "--isolate"), "touch", str(marker),
                          cwd=Path("/tmp"))
    assert done.code == 2, done.out + done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert "--isolate: the working directory /tmp would be hidden" in lines[0]
    assert not marker.exists()


async def test_without_mount_namespaces_exit_2_and_the_command_never_runs(
    upstream: Upstream, elsewhere: Path
) -> None:
    # user and network namespaces work; mount namespaces do not (the limit is per user
    # namespace: 0 inside one we make); the command must not run with the hole open
    marker = elsewhere / "ran"
    wonder = str(Path(sys.executable).parent / "wonder-run")
    args = " ".join([wonder, *local(upstream, "--isolate"), "touch", str(marker)])
    done = await _run("unshare", "--user", "--map-root-user", "sh", "-c",
                      f"echo 0 > /proc/sys/user/max_mnt_namespaces && exec {args}")
    assert done.code == 2, done.out + done.err
    lines = done.err.strip().splitlines()
    assert len(lines) == 1, done.err
    assert "--isolate: cannot make a mount namespace" in lines[0]
    assert "user.max_mnt_namespaces is 0" in lines[0]
    assert not marker.exists()


async def test_the_command_starts_with_the_signal_dispositions_it_would_have_outside(
    upstream: Upstream,
) -> None:
    # the helper is Python, which ignores SIGPIPE and SIGXFSZ: the command must not
    # inherit that (`yes | head` must end yes with SIGPIPE, as anywhere else)
    show = ["sh", "-c", "grep SigIgn /proc/self/status"]
    outside = await isolated(*local(upstream, "--no-isolate"), *show)
    inside = await isolated(*local(upstream, "--isolate"), *show)
    assert outside.code == inside.code == 0, outside.err + inside.err
    assert inside.out == outside.out


async def test_a_command_with_namespaces_of_its_own_cannot_uncover_tmp(
    upstream: Upstream, outside_tmp: Path
) -> None:
    # as root of a user and mount namespace it makes itself, the command may unmount
    # and bind; the mounts that cover /tmp came from a more privileged namespace and
    # are locked together with what they cover
    escape = """
        import ctypes, json, os, socket, sys
        libc = ctypes.CDLL(None, use_errno=True)
        def call(name, *args):
            return 0 if getattr(libc, name)(*args) == 0 else ctypes.get_errno()
        def reach(path):
            try:
                with socket.socket(socket.AF_UNIX) as s:
                    s.connect(path)
                    return s.recv(64).decode().strip()
            except OSError as exc:
                return type(exc).__name__
        path = sys.argv[1]
        result = {"unshare": call("unshare", 0x10000000 | 0x00020000)}
        result["umount"] = call("umount2", b"/tmp", 2)  # MNT_DETACH
        result["direct"] = reach(path)
        os.makedirs("/var/tmp/root", exist_ok=True)
        result["rbind"] = call("mount", b"/", b"/var/tmp/root", None,
                               ctypes.c_ulong(0x1000 | 0x4000), None)  # MS_BIND | MS_REC
        result["umount-copy"] = call("umount2", b"/var/tmp/root/tmp", 2)
        result["copy"] = reach("/var/tmp/root" + path)
        print(json.dumps(result))
    """
    async with unix_server(outside_tmp / "service") as service:
        outside = _last_json(await isolated(*local(upstream, "--no-isolate"),
                                            *python(escape), str(service)))
        assert outside["direct"] == "outside"  # so this test can fail
        inside = _last_json(await isolated(*local(upstream, "--isolate"),
                                           *python(escape), str(service)))
    assert inside == {"unshare": 0, "umount": errno.EINVAL, "direct": "FileNotFoundError",
                      "rbind": 0, "umount-copy": errno.EINVAL, "copy": "FileNotFoundError"}


async def test_a_socket_gone_between_the_plan_and_the_mounts_does_not_stop_the_run(
    tmp_path: Path, elsewhere: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wonders.proxy import isolate

    gone = elsewhere / "control-master.sock"  # in the plan, then no longer there
    planned = isolate.plan

    def plan_then_lose_it(*args: Any, **kwargs: Any) -> isolate.Plan:
        layout = planned(*args, **kwargs)
        covered = kwargs["covered"]
        return isolate.Plan((*layout.mounts, isolate.Bind(covered, str(gone))), layout.env,
                            layout.cwd)

    monkeypatch.setattr(isolate, "plan", plan_then_lose_it)
    marker = elsewhere / "ran"
    child, listener = await isolate.spawn(["touch", str(marker)], dict(os.environ), 0,
                                          work=tmp_path)
    assert listener is not None
    listener.close()
    assert await asyncio.wait_for(child.wait(), 60) == 0
    assert marker.exists()
