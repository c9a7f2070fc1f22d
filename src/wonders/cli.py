"""The ``wonders`` command.

Errors that wonders raises on purpose (:class:`~wonders.errors.WondersError`) end the
command with one line on stderr and the error's exit status: 1 for a failure, 2 for input
to fix (bad usage, configuration or policy, as click does for usage).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import sys
import time
from ipaddress import ip_address
from pathlib import Path

import click

from wonders import __version__
from wonders._audit_cli import audit
from wonders._onboard import clients, init
from wonders._status_cli import ping, status
from wonders._text import SafeFormatter
from wonders.crypto import PrivateKey, check_name, load_private_key, write_key_files
from wonders.errors import KeyFileError, PolicyError, StoreError, WondersError
from wonders.relay.addresses import IPAddress
from wonders.relay.policy import Decision, Policy, load_policy, parse_target


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except WondersError as exc:
            click.echo(f"wonders: error: {exc}", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="wonders")
def main() -> None:
    """Relay controlled HTTP(S) requests from air-gapped GPU nodes through a bucket."""


def _name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return check_name(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.argument("name", callback=_name)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Directory to write NAME.key and NAME.pub into.",
)
@click.option("--force", is_flag=True, help="Replace existing NAME.key / NAME.pub files.")
def keygen(name: str, out_dir: Path, force: bool) -> None:
    """Create a key pair: NAME.key (private, mode 0600) and NAME.pub (public bundle).

    Prints the key id. Give NAME.pub to the other side (a client's bundle goes into the
    forwarder's policy; the forwarder's bundle is pinned by every client). NAME.key never
    leaves this machine.
    """
    key = PrivateKey.generate(name)
    key_path, pub_path = write_key_files(key, out_dir, force=force)
    click.echo(f"wrote {key_path} (private, keep it here) and {pub_path} (public bundle)")
    click.echo(f"key id: {key.kid}")


@main.group()
def policy() -> None:
    """Check and explain the egress policy."""


def _resolve(host: str) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host.strip("[]"), None, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return []
    return list(dict.fromkeys(ip_address(info[4][0]) for info in infos))


def _explain(
    rules: Policy, client: str, method: str, url: str, now: float, resolve: bool
) -> Decision:
    decision = rules.decide(client, method, url, now=now)
    if not (resolve and decision.allowed):
        return decision
    try:
        host = parse_target(url).host  # the host as the forwarder will look it up
    except ValueError:
        return decision
    if host.address is not None:
        return decision  # decide() already applied the address guard
    guarded = rules.guard(client, host.text, _resolve(host.text))
    return decision if guarded.decision.allowed else guarded.decision


@policy.command("check")
@click.option("--policy", "policy_file", required=True, type=click.Path(path_type=Path),
              help="The policy file (TOML).")
@click.option("--client", help="The client whose requests to decide (needed with URLs).")
@click.option("--method", default="GET", show_default=True, help="The HTTP method.")
@click.option("--resolve", is_flag=True,
              help="Also look the host names up in DNS and apply the private-address guard.")
@click.argument("urls", nargs=-1)
def policy_check(
    policy_file: Path, client: str | None, method: str, resolve: bool, urls: tuple[str, ...]
) -> None:
    """Validate a policy file, or decide URLs for a client and name the rule for each.

    Without URLs, only validates the file. With URLs, prints one line per URL:
    the decision (ALLOW, DENY, or REPORT for allowed-but-would-deny in report mode), the
    URL and the rule that decided. Exits 0 if every URL is allowed, 1 otherwise; an
    invalid policy file exits 2. Without --resolve no DNS lookup is made, so host names
    are decided by the allow/deny rules alone (IP-literal hosts always meet the guard).
    """
    rules = load_policy(policy_file)
    if not urls:
        names = ", ".join(rules.clients) or "none"
        click.echo(f"{policy_file}: valid; clients: {names}; digest {rules.digest[:16]}")
        return
    if client is None:
        raise click.UsageError("--client is required to decide URLs")
    if client not in rules.clients:
        raise click.UsageError(
            f"client {client!r} is not in {policy_file} (clients: {', '.join(rules.clients)})"
        )
    now = time.time()
    all_allowed = True
    for url in urls:
        decision = _explain(rules, client, method.upper(), url, now, resolve)
        all_allowed &= decision.allowed
        click.echo(f"{decision.action.upper():<6} {method.upper()} {url}  [{decision.rule}]"
                   f"  {decision.reason}")
    sys.exit(0 if all_allowed else 1)


@main.command()
@click.option("--config", "config_file", required=True, type=click.Path(path_type=Path),
              help="The forwarder's config file (TOML).")
@click.option("--upstream-ca", type=click.Path(path_type=Path),
              help="Extra CA bundle to trust for upstream TLS (overrides the config key).")
@click.option("--metrics-port", type=click.IntRange(0, 65535),
              help="Serve Prometheus metrics at http://ADDRESS:PORT/metrics (0: a free "
                   "port, printed at startup). Off by default.")
@click.option("--metrics-address", default="127.0.0.1", show_default=True,
              help="The address to serve metrics on (0.0.0.0 in a container).")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def forward(config_file: Path, upstream_ca: Path | None, metrics_port: int | None,
            metrics_address: str, verbose: bool) -> None:
    """Run the internet-side forwarder until SIGTERM or SIGINT.

    It polls the mailbox, executes each allowed request once, streams the sealed responses
    back, and logs one line per request. SIGHUP reloads the policy file (an invalid file
    keeps the old policy). Startup problems (config, keys, policy, mailbox) are one line
    and exit status 2.
    """
    from wonders.config import load_forwarder_config
    from wonders.relay import open_store
    from wonders.relay.forwarder import Forwarder
    from wonders.relay.metrics import Metrics

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])
    for noisy in ("botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    config = load_forwarder_config(config_file)
    try:
        key = load_private_key(config.key)
    except KeyFileError as exc:
        exc.exit_code = 2
        raise
    rules = load_policy(config.policy)
    extra_ca = upstream_ca or config.upstream_ca
    if extra_ca is not None and not extra_ca.is_file():
        raise click.BadParameter(f"{extra_ca}: no such CA file", param_hint="--upstream-ca")

    async def serve() -> None:
        store = open_store(config.mailbox, endpoint_url=config.endpoint,
                           path_style=config.path_style, notifications=config.notifications)
        audit = config.audit
        separate = (audit.mailbox, audit.endpoint, audit.path_style) != (
            config.mailbox, config.endpoint, config.path_style)
        audit_store = (open_store(audit.mailbox, endpoint_url=audit.endpoint,
                                  path_style=audit.path_style) if separate else store)
        async with store, contextlib.AsyncExitStack() as stack:
            if separate:
                await stack.enter_async_context(audit_store)
            try:
                await store.check()
                if separate:
                    await audit_store.check()
            except StoreError as exc:
                exc.exit_code = 2
                raise
            metrics = Metrics() if metrics_port is not None else None
            forwarder = Forwarder(store, key, rules, config.settings,
                                  upstream_ca=str(extra_ca) if extra_ca else None,
                                  audit_store=audit_store, audit_spool=audit.spool,
                                  audit_keep_query=audit.keep_query, metrics=metrics)
            if metrics is not None and metrics_port is not None:
                try:
                    host, port = metrics.serve(metrics_port, metrics_address)
                except OSError as exc:
                    raise click.BadParameter(
                        f"cannot serve metrics on {metrics_address}:{metrics_port}: {exc}",
                        param_hint="--metrics-port") from None
                click.echo(f"wonders forward: metrics on http://{host}:{port}/metrics", err=True)
            loop = asyncio.get_running_loop()

            def reload() -> None:
                try:
                    forwarder.reload(load_policy(config.policy))
                except PolicyError as exc:
                    logging.getLogger("wonders.forwarder").error(
                        "policy not reloaded, keeping the old one: %s", exc)

            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, forwarder.stop)
            loop.add_signal_handler(signal.SIGHUP, reload)
            running = asyncio.create_task(forwarder.run())
            ready = asyncio.create_task(forwarder.ready.wait())
            await asyncio.wait({running, ready}, return_when=asyncio.FIRST_COMPLETED)
            if forwarder.ready.is_set():  # its first heartbeat is stored: clients see it
                click.echo(
                    f"wonders forward: {config.settings.id} serving {store.url} as "
                    f"{key.name} ({key.kid}); policy {config.policy} with "
                    f"{len(rules.clients)} clients; audit log in {audit_store.url}", err=True,
                )
            else:
                ready.cancel()
            await running
            click.echo(f"wonders forward: {config.settings.id} stopped", err=True)

    asyncio.run(serve())


main.add_command(audit)
main.add_command(init)
main.add_command(clients)
main.add_command(status)
main.add_command(ping)


if __name__ == "__main__":  # pragma: no cover
    main()
