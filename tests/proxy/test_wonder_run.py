"""``wonder-run`` end to end: unmodified clients, TLS verification on, through the relay.

The upstream is a loopback HTTPS server on 127.0.0.2 (outside NO_PROXY's loopback names)
whose CA only the forwarder is given (``--upstream-ca``): a client that tried to reach it
directly, or with its own trust store, would fail verification.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme
from aiohttp import web

from tests.proxy.conftest import download_child, pattern_sha256
from tests.relay.harness import Upstream, serve_upstream

WONDER_RUN = str(Path(sys.executable).parent / "wonder-run")
GIT = shutil.which("git") or "git"

#: Each test starts wonder-run (mitmproxy and a forwarder) as a process, a few seconds
#: each; the control without the relay belongs with them.
pytestmark = pytest.mark.slow


@dataclass
class Done:
    code: int
    out: str
    err: str


async def wonder_run(*args: str, timeout: float = 120) -> Done:  # noqa: ASYNC109
    proc = await asyncio.create_subprocess_exec(
        WONDER_RUN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


def local(upstream: Upstream, *extra: str) -> list[str]:
    return ["--local", "--allow-private", "--upstream-ca", str(upstream.ca_file), *extra, "--"]


def python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


# ----------------------------------------------------------------------- the clients


CLIENTS = {
    "requests": """
        import requests, sys
        r = requests.get(sys.argv[1] + "/echo?via=requests")
        print(r.status_code, r.json()["path"])
    """,
    "httpx-sync": """
        import httpx, sys
        r = httpx.get(sys.argv[1] + "/echo?via=httpx")
        print(r.status_code, r.json()["path"])
    """,
    "httpx-async": """
        import asyncio, httpx, sys
        async def main():
            async with httpx.AsyncClient() as client:
                r = await client.get(sys.argv[1] + "/echo?via=httpx-async")
                print(r.status_code, r.json()["path"])
        asyncio.run(main())
    """,
    "urllib": """
        import json, sys, urllib.request
        with urllib.request.urlopen(sys.argv[1] + "/echo?via=urllib") as r:
            print(r.status, json.load(r)["path"])
    """,
    "aiohttp": """
        import asyncio, aiohttp, sys
        async def main():
            async with aiohttp.ClientSession(trust_env=True) as session:
                async with session.get(sys.argv[1] + "/echo?via=aiohttp") as r:
                    print(r.status, (await r.json())["path"])
        asyncio.run(main())
    """,
}


@pytest.mark.parametrize("client", list(CLIENTS))
async def test_unmodified_python_clients_with_verification_on(
    upstream: Upstream, client: str
) -> None:
    done = await wonder_run(*local(upstream), *python(CLIENTS[client]), upstream.url)
    assert done.code == 0, done.err
    via = client.replace("-sync", "")
    assert done.out.strip() == f"200 /echo?via={via}"
    assert "1 requests" in done.err.splitlines()[-1]


async def test_curl_gets_through_with_verification_on(upstream: Upstream) -> None:
    done = await wonder_run(*local(upstream), "curl", "-sS", "--fail", f"{upstream.url}/echo")
    assert done.code == 0, done.err
    assert '"method": "GET"' in done.out


async def test_a_direct_connection_would_not_verify(upstream: Upstream) -> None:
    """The control: without the relay, the same client cannot verify the upstream."""
    proc = await asyncio.create_subprocess_exec(
        "curl", "-sS", f"{upstream.url}/echo", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 60, err  # curl: peer certificate cannot be authenticated


async def test_post_with_a_20_mib_body(upstream: Upstream) -> None:
    code = """
        import hashlib, requests, sys
        body = hashlib.sha256(b"seed").digest() * (20 * 1024 * 1024 // 32)
        r = requests.post(sys.argv[1] + "/echo", data=body)
        doc = r.json()
        print(r.status_code, doc["length"], doc["sha256"] == hashlib.sha256(body).hexdigest())
    """
    done = await wonder_run(*local(upstream), *python(code), upstream.url)
    assert done.code == 0, done.err
    assert done.out.split() == ["200", str(20 * 1024 * 1024), "True"]


async def test_server_sent_events_arrive_one_by_one(upstream: Upstream) -> None:
    code = """
        import requests, sys
        with requests.get(sys.argv[1] + "/sse", stream=True) as r:
            for line in r.iter_lines():
                if line:
                    print(line.decode(), flush=True)
    """
    proc = await asyncio.create_subprocess_exec(
        WONDER_RUN, *local(upstream), *python(code), upstream.url,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    first = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert first == b"data: first\n"
    assert not upstream.sse_go.is_set()  # the upstream still holds the stream open
    upstream.sse_go.set()
    rest, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err
    assert rest == b"data: second\n"


async def test_pip_install_from_a_loopback_index(upstream: Upstream, tmp_path: Path) -> None:
    target = tmp_path / "site"
    done = await wonder_run(
        *local(upstream), sys.executable, "-m", "pip", "install", "--no-cache-dir",
        "--disable-pip-version-check", "--index-url", f"{upstream.url}/simple/",
        "--target", str(target), "wonders-probe")
    assert done.code == 0, done.out + done.err
    assert (target / "wonders_probe.py").read_text() == "VALUE = 42\n"


async def test_uv_pip_install_from_a_loopback_index(upstream: Upstream, tmp_path: Path) -> None:
    """uv (Rust, reqwest) reads HTTPS_PROXY with its credentials and SSL_CERT_FILE."""
    target = tmp_path / "site"
    done = await wonder_run(
        *local(upstream), str(Path(sys.executable).parent / "uv"), "pip", "install",
        "--no-cache", "--python", sys.executable, "--index-url", f"{upstream.url}/simple/",
        "--target", str(target), "wonders-probe")
    assert done.code == 0, done.out + done.err
    assert (target / "wonders_probe.py").read_text() == "VALUE = 42\n"
    # through the relay (uv may read the wheel's metadata first, with range requests)
    assert upstream.hits["/packages/wonders_probe-1.0-py3-none-any.whl"] >= 1


def _git(*args: str, cwd: Path) -> None:
    subprocess.run([GIT, "-c", "user.name=t", "-c", "user.email=t@example.org",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
async def git_server(tmp_path: Path) -> AsyncIterator[tuple[str, Path]]:
    """A repository served by git's dumb HTTP protocol (static files) over HTTPS on
    127.0.0.2; yields its URL and the CA file only the forwarder is given."""
    work, served = tmp_path / "work", tmp_path / "served"
    work.mkdir()
    served.mkdir()
    _git("init", "-q", cwd=work)
    (work / "README").write_text("relayed by wonders\n")
    _git("add", "README", cwd=work)
    _git("commit", "-q", "-m", "first", cwd=work)
    _git("clone", "-q", "--bare", str(work), str(served / "repo.git"), cwd=tmp_path)
    _git("update-server-info", cwd=served / "repo.git")
    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.2").configure_cert(server_ssl)
    ca_file = tmp_path / "git-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    app = web.Application()
    app.router.add_static("/", served)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0, ssl_context=server_ssl)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"https://127.0.0.2:{port}/repo.git", ca_file
    finally:
        await runner.cleanup()


async def test_git_clone_over_https(
    git_server: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """git (libcurl) reads https_proxy with its credentials and GIT_SSL_CAINFO."""
    url, ca_file = git_server
    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")  # fail rather than ask for a password
    clone = tmp_path / "clone"
    done = await wonder_run("--local", "--allow-private", "--upstream-ca", str(ca_file), "--",
                            "git", "clone", "-q", url, str(clone))
    assert done.code == 0, done.out + done.err
    assert (clone / "README").read_text() == "relayed by wonders\n"
    assert re.search(r"wonder-run: [1-9]\d* requests", done.err.splitlines()[-1])


# ------------------------------------------------------------------------ what fails


async def test_private_address_denied_without_allow_private(upstream: Upstream) -> None:
    done = await wonder_run("--local", "--upstream-ca", str(upstream.ca_file), "--",
                            "curl", "-sS", "-i", f"{upstream.url}/echo")
    assert done.code == 0, done.err
    assert re.search(r"^HTTP/[\d.]+ 403", done.out, re.MULTILINE), done.out
    assert "x-wonders-error: policy-denied" in done.out.lower()
    assert "address guard: loopback" in done.out
    assert "1 denied" in done.err
    assert upstream.hits["/echo"] == 0


async def test_websocket_upgrade_is_refused_with_501(upstream: Upstream) -> None:
    done = await wonder_run(*local(upstream), "curl", "-sS", "-i", "--http1.1",
                            "-H", "Connection: Upgrade",
                            "-H", "Upgrade: websocket", "-H", "Sec-WebSocket-Version: 13",
                            "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                            f"{upstream.url}/echo")
    assert re.search(r"^HTTP/1.1 501", done.out, re.MULTILINE), done.out + done.err
    assert "x-wonders-error: unsupported" in done.out.lower()
    assert upstream.hits["/echo"] == 0


# ------------------------------------------------------------------- the command itself


async def test_exit_status_is_the_commands(upstream: Upstream) -> None:
    done = await wonder_run(*local(upstream), *python("import sys; sys.exit(7)"))
    assert done.code == 7
    killed = await wonder_run(*local(upstream),
                              *python("import os, signal; os.kill(os.getpid(), signal.SIGKILL)"))
    assert killed.code == 128 + signal.SIGKILL


async def test_sigterm_is_forwarded_to_the_command(upstream: Upstream) -> None:
    code = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(42))
        print("ready", flush=True)
        signal.pause()
    """
    proc = await asyncio.create_subprocess_exec(
        WONDER_RUN, *local(upstream), *python(code),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None
    assert await asyncio.wait_for(proc.stdout.readline(), 60) == b"ready\n"
    proc.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 42, err


async def test_a_python_script_runs_with_this_python(upstream: Upstream, tmp_path: Path) -> None:
    script = tmp_path / "job.py"
    script.write_text("import sys\nprint(sys.prefix, sys.executable, sys.argv[1:])\n")
    done = await wonder_run(*local(upstream)[:-1], str(script), "--epochs", "3")
    assert done.code == 0, done.err
    # the same environment (bin/python and bin/python3 are both this interpreter)
    prefix, executable, args = done.out.strip().split(" ", 2)
    assert prefix == sys.prefix
    assert Path(executable).samefile(sys.executable)
    assert args == "['--epochs', '3']"


async def test_environment_given_to_the_command(upstream: Upstream) -> None:
    code = """
        import os
        for name in ("HTTP_PROXY", "https_proxy", "NO_PROXY", "SSL_CERT_FILE",
                     "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT", "NODE_EXTRA_CA_CERTS",
                     "GIT_SSL_CAINFO"):
            print(name, os.environ[name])
    """
    done = await wonder_run(*local(upstream, "--no-proxy", "intranet.example"), *python(code))
    assert done.code == 0, done.err
    env = dict(line.split(" ", 1) for line in done.out.splitlines())
    # the per-run credentials: user "wonders", 256 random bits as the password
    assert re.fullmatch(r"http://wonders:[A-Za-z0-9_-]{43}@127\.0\.0\.1:\d+", env["HTTP_PROXY"])
    assert env["https_proxy"] == env["HTTP_PROXY"]
    assert env["NO_PROXY"] == "localhost,127.0.0.1,::1,intranet.example"
    bundles = {env[n] for n in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
                                "PIP_CERT", "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO")}
    assert len(bundles) == 1
    assert not Path(bundles.pop()).exists()  # the per-run bundle is removed afterwards


async def test_the_ca_is_made_once_and_kept(upstream: Upstream) -> None:
    home = Path(os.environ["WONDERS_HOME"]) / "proxy-ca"
    await wonder_run(*local(upstream), "true")
    key = home / "mitmproxy-ca.pem"
    before = key.read_bytes()
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    await wonder_run(*local(upstream), "true")
    assert key.read_bytes() == before


async def test_an_unsafe_ca_key_stops_before_the_command_runs(
    upstream: Upstream, tmp_path: Path
) -> None:
    await wonder_run(*local(upstream), "true")
    key = Path(os.environ["WONDERS_HOME"]) / "proxy-ca" / "mitmproxy-ca.pem"
    key.chmod(0o644)
    marker = tmp_path / "ran"
    try:
        done = await wonder_run(*local(upstream), "touch", str(marker))
    finally:
        key.chmod(0o600)
    assert done.code == 2
    assert "chmod 600" in done.err
    assert not marker.exists()


async def test_missing_config_is_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    done = await wonder_run("true")
    assert done.code == 2
    assert done.err.count("\n") == 1
    assert "no client config found" in done.err
    assert "wonder-run --local" in done.err


async def test_a_command_that_does_not_exist(upstream: Upstream) -> None:
    done = await wonder_run(*local(upstream), "no-such-command-xyz")
    assert done.code == 127
    assert "cannot run 'no-such-command-xyz'" in done.err


@pytest.mark.slow
async def test_a_512_mib_download_with_bounded_memory(upstream: Upstream) -> None:
    """The child checks the SHA-256 and reads the proxy's peak memory (it is its parent;
    with --local the forwarder runs in that process too)."""
    size = 512 * 1024 * 1024
    done = await wonder_run(*local(upstream), sys.executable, "-c", download_child(size),
                            upstream.url, timeout=600)
    assert done.code == 0, done.err
    total, digest, peak_mib = done.out.split()
    print(f"\n512 MiB through wonder-run --local: proxy+forwarder peak RSS {peak_mib} MiB")
    assert int(total) == size
    assert digest == pattern_sha256(size)
    assert int(peak_mib) < 300


@pytest.mark.skipif(shutil.which("wget") is None, reason="wget is not installed")
async def test_wget_keeps_the_users_settings_and_verifies(
    upstream: Upstream, tmp_path: Path
) -> None:
    own = tmp_path / "mywgetrc"
    own.write_text("user_agent = kept-from-the-users-wgetrc\n")
    done = await wonder_run_env({"WGETRC": str(own)}, *local(upstream), "wget", "-q", "-O", "-",
                                f"{upstream.url}/echo/wget")
    assert done.code == 0, done.out + done.err
    doc = json.loads(done.out)
    assert doc["path"] == "/echo/wget"
    assert ["User-Agent", "kept-from-the-users-wgetrc"] in doc["headers"]
    assert own.read_text() == "user_agent = kept-from-the-users-wgetrc\n"  # left as it was


async def test_node_older_than_24_is_told_that_fetch_bypasses_the_proxy(
    upstream: Upstream,
) -> None:
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    version = subprocess.run([node, "--version"], capture_output=True, text=True,  # noqa: ASYNC221
                             check=True).stdout.strip()
    done = await wonder_run(*local(upstream), "node", "-e", "process.exit(0)")
    assert done.code == 0, done.err
    told = "ignores the proxy variables in fetch()" in done.err
    assert told == (int(version.lstrip("v").split(".")[0]) < 24)
    plain = await wonder_run(*local(upstream), sys.executable, "-c", "pass")
    assert "Node.js" not in plain.err


async def test_npm_conda_mamba_and_node_settings_in_the_environment(upstream: Upstream) -> None:
    code = """
        import os
        for name in ("npm_config_proxy", "npm_config_https_proxy", "npm_config_cafile",
                     "npm_config_noproxy", "CONDA_SSL_VERIFY", "MAMBA_SSL_VERIFY",
                     "NODE_USE_ENV_PROXY", "WGETRC", "SSL_CERT_FILE", "HTTPS_PROXY"):
            print(name, os.environ[name])
        print("wgetrc-mode", oct(os.stat(os.environ["WGETRC"]).st_mode & 0o777))
    """
    done = await wonder_run(*local(upstream), *python(code))
    assert done.code == 0, done.err
    env = dict(line.split(" ", 1) for line in done.out.splitlines())
    assert env["npm_config_proxy"] == env["npm_config_https_proxy"] == env["HTTPS_PROXY"]
    assert env["npm_config_cafile"] == env["CONDA_SSL_VERIFY"] == env["SSL_CERT_FILE"]
    assert env["MAMBA_SSL_VERIFY"] == env["SSL_CERT_FILE"]
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert env["wgetrc-mode"] == "0o600"  # it holds the proxy secret


async def wonder_run_env(extra: dict[str, str], *args: str, timeout: float = 120) -> Done:  # noqa: ASYNC109
    proc = await asyncio.create_subprocess_exec(
        WONDER_RUN, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **extra})
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode is not None
    return Done(proc.returncode, out.decode(), err.decode())


async def test_check_shows_the_environment_masked_and_makes_one_round_trip(
    upstream: Upstream,
) -> None:
    done = await wonder_run(*local(upstream)[:-1], "--check")
    assert done.code == 0, done.out + done.err
    env = dict(line.split("=", 1) for line in done.out.splitlines() if "=" in line)
    assert re.fullmatch(r"http://wonders:\*\*\*\*@127\.0\.0\.1:\d+", env["HTTPS_PROXY"])
    assert env["SSL_CERT_FILE"] == env["WGETRC"].replace("wgetrc", "ca-bundle.pem")
    assert "answered by local" in done.out.splitlines()[-1]


async def test_check_without_a_forwarder_exits_1(tmp_path: Path) -> None:
    from wonders.crypto import PrivateKey, write_key_files

    (tmp_path / "mailbox").mkdir(mode=0o700)
    for name in ("gpu01", "fw1"):
        write_key_files(PrivateKey.generate(name), tmp_path)
    config = tmp_path / "client.toml"
    config.write_text(f'key = "gpu01.key"\nforwarder = "fw1.pub"\n'
                      f'mailbox = "{(tmp_path / "mailbox").as_uri()}"\n')
    done = await wonder_run("--config", str(config), "--check")
    assert done.code == 1, done.out + done.err
    assert "no forwarder is alive" in done.err
    assert "HTTPS_PROXY=http://wonders:****@" in done.out


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is not installed")
async def test_npm_uses_the_proxy_and_the_bundle(tmp_path: Path) -> None:
    # A registry named by host name, outside NO_PROXY ("localhost." is not "localhost"):
    # npm takes the proxy and the CA from npm_config_*; /echo answers its ping.
    async with serve_upstream(tmp_path) as named:
        registry = named.url.replace("https://localhost:", "https://localhost.:") + "/echo/"
        done = await wonder_run_env({"npm_config_cache": str(tmp_path / "npm-cache")},
                                    *local(named), "npm", "ping", "--registry", registry)
    assert done.code == 0, done.out + done.err
    assert "PONG" in done.err
    assert named.hits["/echo/-/ping"] == 1


async def test_names_planted_in_the_mailbox_cannot_steer_the_terminal(
    upstream: Upstream, tmp_path: Path
) -> None:
    """Review: wonder-run printed store warnings with Python's default handler, so a name
    planted in a shared mailbox reached the node user's terminal raw."""
    mailbox = tmp_path / "mailbox"
    planted = mailbox / "responses" / "local" / "x\x1b[31mRED\x1b[0m\nwonder-run: forged"
    planted.parent.mkdir(parents=True)
    planted.write_bytes(b"")
    done = await wonder_run(*local(upstream, "--mailbox", str(mailbox)), *python(f"""
        import urllib.request
        print(urllib.request.urlopen({upstream.url + "/echo"!r}).status)
    """))
    assert done.code == 0, done.err
    assert "not a valid object key" in done.err  # it was reported...
    assert "\x1b" not in done.err  # ...escaped
    assert not any(line.startswith("wonder-run: forged") for line in done.err.splitlines())
