"""``wonder-run``: start the proxy, run a command through it, stop the proxy.

The command runs unmodified with ``HTTP(S)_PROXY`` pointing at a local mitmproxy on a free
port and a trust bundle (certifi + system roots + the proxy CA) in the variables common
clients read, so TLS verification stays on. ``--local`` needs no setup at all: a
temporary directory mailbox, throwaway keys and a forwarder inside this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import click

from wonders.cli.config import ClientConfig, find_client_config, load_client_config
from wonders.crypto import PrivateKey, PublicBundle, load_private_key, load_public_bundle
from wonders.errors import ConfigError, WondersError
from wonders.mailbox import DirectoryStore, Store, open_store
from wonders.policy import AddressEntry, AnyHost, ClientPolicy, Policy
from wonders.proxy.ca import ca_dir, check_ca_key, write_trust_bundle
from wonders.proxy.isolate import IsolationUnavailable
from wonders.relay.client import RelayClient
from wonders.text import SafeFormatter

if TYPE_CHECKING:
    from wonders.proxy.bridge import Bridge

__all__ = ["local_policy", "main"]

CA_VARIABLES = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "PIP_CERT",
                "NODE_EXTRA_CA_CERTS", "GIT_SSL_CAINFO")
LOOPBACK = ("localhost", "127.0.0.1", "::1")
#: The in-process forwarder of --local (ForwarderSettings' keyword arguments): the
#: forwarder is imported only in that mode, so the GPU side never loads it.
LOCAL_SETTINGS: dict[str, Any] = dict(id="local", poll_fast=0.005, poll_slow=0.25,
                                      heartbeat_interval=2.0, stale_after=10.0,
                                      flush_delay=0.02)


# ------------------------------------------------------------------------ configuration


def local_policy(client: PrivateKey, *, allow_private: bool) -> Policy:
    """``--local``: any public host on any port, no limits; private addresses only if
    asked."""
    everywhere = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    entry = ClientPolicy(
        name=client.name, bundle=client.public,
        allow=(AnyHost(), AddressEntry("0.0.0.0/0", everywhere[0]),
               AddressEntry("::/0", everywhere[1])),
        ports=None, max_request_bytes=None, max_response_bytes=None, rate_per_minute=None,
        max_concurrent=64, egress_bytes_per_day=None,
        allow_private=everywhere if allow_private else (),
    )
    return Policy({client.name: entry}, source="wonder-run --local", digest="local")


# ----------------------------------------------------------------------------- running


@dataclass
class Options:
    command: list[str]
    config: ClientConfig | None = None
    local: bool = False
    allow_private: bool = False
    upstream_ca: Path | None = None
    mailbox: Path | None = None
    no_proxy: Sequence[str] = ()
    verbose: bool = False
    isolate: bool = False
    check: bool = False
    say: Callable[[str], None] = field(default=lambda line: click.echo(line, err=True))


def new_proxy_secret() -> str:
    """The per-run proxy password: 256 random bits, URL-safe so it needs no quoting."""
    return secrets.token_urlsafe(32)


def child_env(port: int, bundle: Path, no_proxy: Sequence[str], secret: str,
              work: Path | None = None) -> dict[str, str]:
    """The command's environment. The proxy URL carries the per-run credentials: only the
    environment (and, for wget, a 0600 file in the run's private directory ``work``) holds
    them — never an argument, a log line or a message; a process's environment is readable
    by its own user (and root) alone."""
    from wonders.proxy.bridge import PROXY_USER

    env = dict(os.environ)
    proxy = f"http://{PROXY_USER}:{secret}@127.0.0.1:{port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = env[name.lower()] = proxy
    bypass = ",".join(dict.fromkeys([*LOOPBACK, *no_proxy]))
    env["NO_PROXY"] = env["no_proxy"] = bypass
    for name in CA_VARIABLES:
        env[name] = str(bundle)
    # Node.js ≥ 24: fetch() and http(s) use the proxy variables (older ones ignore this)
    env["NODE_USE_ENV_PROXY"] = "1"
    # npm, conda and mamba read their own settings from the environment
    env.update(npm_config_proxy=proxy, npm_config_https_proxy=proxy,
               npm_config_noproxy=bypass, npm_config_cafile=str(bundle),
               CONDA_SSL_VERIFY=str(bundle), MAMBA_SSL_VERIFY=str(bundle))
    if work is not None:  # wget reads none of the CA variables: a wgetrc of its own
        env["WGETRC"] = str(_wgetrc(work, bundle, proxy, bypass, os.environ.get("WGETRC")))
    return env


def _wgetrc(work: Path, bundle: Path, proxy: str, bypass: str, given: str | None) -> Path:
    """A wgetrc that keeps the user's own settings (``$WGETRC``, else ``~/.wgetrc``) and
    adds the trust bundle and the proxy; mode 0600, it holds the proxy secret."""
    own = Path(given) if given else Path.home() / ".wgetrc"
    try:
        kept = own.read_text(encoding="utf-8", errors="replace")
    except OSError:
        kept = ""
    path = work / "wgetrc"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with open(fd, "w", encoding="utf-8") as f:
        f.write(f"# written by wonder-run for one run; first, {own}:\n{kept}\n"
                f"ca_certificate = {bundle}\nuse_proxy = on\nhttp_proxy = {proxy}\n"
                f"https_proxy = {proxy}\nno_proxy = {bypass}\n")
    return path


def node_warning(command: Sequence[str]) -> str | None:
    """The line to print when the command is Node.js (node, npm, npx) older than 24,
    whose fetch() and http modules ignore the proxy variables."""
    if not command or Path(command[0]).name not in ("node", "npm", "npx"):
        return None
    node = shutil.which("node")
    if node is None:
        return None
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,  # noqa: S603
                                 timeout=10, check=False).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if major >= 24:
        return None
    return (f"wonder-run: Node.js {version} ignores the proxy variables in fetch() and the "
            "http modules (Node 24 reads them with NODE_USE_ENV_PROXY=1, set here); npm "
            "itself is served. For fetch, use undici's EnvHttpProxyAgent, or --isolate so "
            "that nothing can go around the relay")


def command_line(command: Sequence[str]) -> list[str]:
    """``script.py ARGS`` runs with this Python, as della_wonders did."""
    if command and command[0].endswith(".py") and Path(command[0]).is_file():
        return [sys.executable, *command]
    return list(command)


@contextlib.asynccontextmanager
async def _relay(opts: Options, work: Path) -> AsyncIterator[RelayClient]:
    """The RelayClient for this run, with the in-process forwarder in --local mode."""
    store: Store
    if opts.local:
        from wonders.relay.forwarder import Forwarder, ForwarderSettings

        mailbox = opts.mailbox or work / "mailbox"
        mailbox.mkdir(parents=True, exist_ok=True)
        store = DirectoryStore(mailbox)
        key, forwarder_key = PrivateKey.generate("local"), PrivateKey.generate("local-fw")
        policy = local_policy(key, allow_private=opts.allow_private)
        forwarder = Forwarder(store, forwarder_key, policy, ForwarderSettings(**LOCAL_SETTINGS),
                              upstream_ca=str(opts.upstream_ca) if opts.upstream_ca else None)
        task = asyncio.create_task(forwarder.run(), name="wonders-local-forwarder")
        ready = asyncio.create_task(forwarder.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        if not forwarder.ready.is_set():
            await task  # raises what stopped it
            raise WondersError("the local forwarder stopped at once")
        try:
            async with RelayClient(store, key, forwarder_key.public, poll_fast=0.005,
                                   poll_slow=0.25) as client:
                yield client
        finally:
            forwarder.stop()
            await task
        return
    assert opts.config is not None
    config = opts.config
    key = load_private_key(config.key)
    bundle: PublicBundle = load_public_bundle(config.forwarder)
    store = open_store(config.mailbox, endpoint_url=config.endpoint,
                       path_style=config.path_style, notifications=config.notifications)
    async with store:
        await store.check(f"responses/{key.name}/")
        async with RelayClient(store, key, bundle) as client:
            yield client


async def _start_proxy(
    bridge: Bridge, listening: asyncio.Event, verbose: bool, secret: str
) -> tuple[Any, asyncio.Task[None], int]:
    """Start mitmproxy on a free loopback port; it serves only requests carrying
    ``secret`` (see :class:`~wonders.proxy.bridge.WondersAddon`)."""
    from mitmproxy.options import Options as MitmOptions
    from mitmproxy.tools.dump import DumpMaster

    from wonders.proxy.bridge import WondersAddon

    confdir = ca_dir()
    check_ca_key(confdir)
    # mitmproxy's own annotations leave parts of this API untyped: hold it as Any
    master: Any = DumpMaster(MitmOptions(listen_host="127.0.0.1", listen_port=0,
                                         confdir=str(confdir)),
                             with_termlog=False, with_dumper=False)
    # validate_inbound_headers (the default, made explicit): mitmproxy refuses conflicting
    # or duplicated Content-Length/Transfer-Encoding itself. No onboarding app: nothing but
    # the bridge answers.
    master.options.update(upstream_cert=False, connection_strategy="lazy",
                          validate_inbound_headers=True, onboarding=False)
    master.addons.add(WondersAddon(bridge, listening, secret))
    if not verbose:
        logging.getLogger("mitmproxy").setLevel(logging.ERROR)
    task = asyncio.create_task(master.run(), name="wonders-proxy")
    waiter = asyncio.create_task(listening.wait())
    await asyncio.wait({task, waiter}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
    if not listening.is_set():
        waiter.cancel()
        master.shutdown()
        with contextlib.suppress(BaseException):
            await task
        raise WondersError("the proxy could not start (see the messages above)")
    addresses = master.addons.get("proxyserver").listen_addrs()
    return master, task, int(addresses[0][1])


def _in_foreground() -> bool:
    """Whether a terminal's Ctrl-C reaches the child by itself (same foreground group)."""
    try:
        return os.isatty(0) and os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


async def _run_child(command: list[str], env: dict[str, str], say: Callable[[str], None],
                     *, isolate_port: int | None = None) -> int:
    """Run the command to its end; with ``isolate_port``, in its own network namespace
    whose only way out is the proxy on that port (see :mod:`wonders.proxy.isolate`)."""
    piping: asyncio.Task[None] | None = None
    if isolate_port is not None:
        from wonders.proxy import isolate

        child, listener = await isolate.spawn(command, env, isolate_port)
        if listener is None:
            code = await child.wait()
            if code == isolate.UNAVAILABLE:
                raise IsolationUnavailable("user namespaces are not available")
            return 128 - code if code < 0 else code
        piping = asyncio.create_task(isolate.pipe_to_proxy(listener, isolate_port))
    else:
        try:
            child = await asyncio.create_subprocess_exec(*command, env=env)
        except FileNotFoundError:
            say(f"wonder-run: cannot run {command[0]!r}: no such command or file")
            return 127
        except PermissionError:
            say(f"wonder-run: cannot run {command[0]!r}: permission denied")
            return 126
    loop = asyncio.get_running_loop()

    def forward(sig: signal.Signals) -> None:
        if child.returncode is None and not (sig == signal.SIGINT and _in_foreground()):
            child.send_signal(sig)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, forward, sig)
    try:
        code = await child.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
        if piping is not None:
            piping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await piping
    return 128 - code if code < 0 else code


#: What --check shows of the command's environment: what wonder-run sets.
CHECK_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", *CA_VARIABLES, "WGETRC",
                   "NODE_USE_ENV_PROXY", "npm_config_proxy", "npm_config_https_proxy",
                   "npm_config_noproxy", "npm_config_cafile", "CONDA_SSL_VERIFY",
                   "MAMBA_SSL_VERIFY")


async def _check(client: RelayClient, env: dict[str, str], secret: str,
                 say: Callable[[str], None]) -> int:
    """``--check``: show the environment a command would get (the secret masked), then one
    signed round trip that the forwarder answers itself. 0 if it came back."""
    from wonders.relay.records import PING_URL

    for name in CHECK_VARIABLES:
        click.echo(f"{name}={env[name].replace(secret, '****')}")
    started = time.monotonic()
    try:
        async with await client.request("GET", PING_URL, timeout=30) as answer:
            body = await answer.read()
    except WondersError as exc:
        say(f"wonder-run: check: no round trip through {client.store.url}: {exc}")
        return 1
    if answer.status != 200:
        say(f"wonder-run: check: the forwarder answered {answer.status}: "
            f"{body.decode(errors='replace').strip()}")
        return 1
    who = json.loads(body).get("forwarder", "?")
    click.echo(f"round trip through {client.store.url}: {(time.monotonic() - started) * 1000:.0f}"
               f" ms, answered by {who}")
    return 0


async def run(opts: Options) -> int:
    """Run ``opts.command`` through the relay; returns its exit status."""
    from wonders.proxy.bridge import Bridge

    work = Path(tempfile.mkdtemp(prefix="wonder-run-"))
    try:
        async with _relay(opts, work) as client:
            timeout = opts.config.timeout if opts.config else 300.0
            bridge = Bridge(client, timeout=timeout,
                            on_request=(lambda line: opts.say(f"wonder-run: {line}"))
                            if opts.verbose else None)
            await bridge.start()
            listening = asyncio.Event()
            try:
                secret = new_proxy_secret()
                master, task, port = await _start_proxy(bridge, listening, opts.verbose,
                                                        secret)
            except BaseException:
                await bridge.close()
                raise
            try:
                bundle = write_trust_bundle(ca_dir(), work / "ca-bundle.pem")
                no_proxy = list(opts.no_proxy)
                if opts.config and opts.config.endpoint:
                    no_proxy.append(urlsplit(opts.config.endpoint).hostname or "")
                env = child_env(port, bundle, [h for h in no_proxy if h], secret, work)
                if opts.check:
                    return await _check(client, env, secret, opts.say)
                warning = node_warning(opts.command)
                if warning:
                    opts.say(warning)
                code = await _run_child(command_line(opts.command), env, opts.say,
                                        isolate_port=port if opts.isolate else None)
            finally:
                master.shutdown()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await bridge.close()
            opts.say(f"wonder-run: {bridge.stats.summary()}")
            return code
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------------- CLI


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False,
                                 "help_option_names": ["-h", "--help"]})
@click.option("--config", "config_file", type=click.Path(path_type=Path),
              help="Client config (default: $WONDERS_CONFIG, ./wonders.toml, "
                   "~/.config/wonders/client.toml).")
@click.option("--local", is_flag=True,
              help="No setup: a temporary mailbox and a forwarder inside this process.")
@click.option("--allow-private", is_flag=True,
              help="With --local: let requests reach private addresses (loopback, LAN).")
@click.option("--upstream-ca", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="With --local: an extra CA bundle the local forwarder trusts upstream.")
@click.option("--mailbox", type=click.Path(file_okay=False, path_type=Path),
              help="With --local: keep the mailbox in this directory instead of a temporary one.")
@click.option("--no-proxy", multiple=True, metavar="HOST",
              help="Another host the command reaches directly (repeatable).")
@click.option("--isolate/--no-isolate", default=None,
              help="Run COMMAND in its own network namespace where only the proxy is "
                   "reachable (no root needed; default: 'isolate' in the client config, "
                   "else off).")
@click.option("--check", is_flag=True,
              help="Print the environment COMMAND would get (the proxy secret masked), make "
                   "one round trip through the relay, and exit (no COMMAND).")
@click.option("-v", "--verbose", is_flag=True, help="One line per request on stderr.")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
def main(config_file: Path | None, local: bool, allow_private: bool, upstream_ca: Path | None,
         mailbox: Path | None, no_proxy: tuple[str, ...], isolate: bool | None, check: bool,
         verbose: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND with its HTTP(S) requests relayed to the internet through wonders.

    \b
      wonder-run --local -- curl https://pypi.org/simple/
      wonder-run train.py --epochs 3        (a .py file runs with this Python)

    Exits with the command's status (128 + N if signal N killed it), after one summary
    line on stderr.
    """
    if not local and (allow_private or upstream_ca or mailbox):
        raise click.UsageError("--allow-private, --upstream-ca and --mailbox go with --local")
    if check and command:
        raise click.UsageError("--check runs no command; drop the command, or --check")
    if not check and not command:
        raise click.UsageError("Missing argument 'COMMAND...'.")
    # log lines may quote names planted in the mailbox: control characters escaped, so
    # none can steer the terminal or forge a line
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("wonder-run: %(message)s"))
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler])
    try:
        config = None if local else load_client_config(find_client_config(config_file))
        if isolate is None:
            isolate = config.isolate if config is not None else False
        opts = Options(list(command), config, local, allow_private, upstream_ca, mailbox,
                       no_proxy, verbose, isolate, check=check)
        code = asyncio.run(run(opts))
    except IsolationUnavailable:
        sys.exit(2)  # the one line saying why is written; the command did not run
    except WondersError as exc:
        click.echo(f"wonder-run: error: {exc}", err=True)
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    sys.exit(code)

