"""``wonders forward``: run the internet-side forwarder."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import click

from wonders.crypto import load_private_key
from wonders.errors import KeyFileError, PolicyError, StoreError
from wonders.policy import load_policy
from wonders.text import SafeFormatter

__all__ = ["forward"]


@click.command()
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
    from wonders.cli.config import load_forwarder_config
    from wonders.mailbox import open_store
    from wonders.relay.forwarder import Forwarder
    from wonders.relay.forwarder.metrics import Metrics

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
