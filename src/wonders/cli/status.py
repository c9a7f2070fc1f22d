"""``wonders status`` and ``wonders ping``: is the relay alive, and how fast is it."""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from wonders.cli.config import find_client_config, load_client_config, load_forwarder_config
from wonders.crypto import PublicBundle, load_private_key, load_public_bundle, request_id_time
from wonders.errors import (
    KeyFileError,
    ObjectNotFound,
    RelayError,
    StoreError,
    UnsafeObject,
)
from wonders.mailbox import Store, layout
from wonders.relay.records import PING_URL, Heartbeat, Liveness, parse_heartbeat
from wonders.text import human_bytes, table
from wonders.tomlconfig import Table

#: A heartbeat not seen to move for this long means the forwarder is gone, and clocks may
#: differ by up to SKEW: the clients' defaults, judged by the same rule (Liveness).
STALE_AFTER = 30.0
SKEW = 300.0


@dataclass(frozen=True)
class _Mailbox:
    url: str
    endpoint: str | None
    path_style: bool
    forwarder: PublicBundle
    own: str | None = None  # from a forwarder config: its id

    def open(self) -> Store:
        from wonders.mailbox import open_store

        return open_store(self.url, endpoint_url=self.endpoint, path_style=self.path_style)


def _mailbox(config_file: Path | None) -> _Mailbox:
    """From a client config (found as wonder-run finds it) or a forwarder config."""
    # nothing of wonders.proxy is imported: the forwarder image has none of the proxy's
    # dependencies (its HEALTHCHECK is `wonders status --config FILE`)
    if config_file is not None and config_file.is_file():
        path = config_file
    else:
        path = find_client_config(config_file)
    try:
        if "policy" in Table.load(path, keys=None):  # a forwarder's config
            forwarder = load_forwarder_config(path)
            return _Mailbox(forwarder.mailbox, forwarder.endpoint, forwarder.path_style,
                            load_private_key(forwarder.key).public, forwarder.settings.id)
        client = load_client_config(path)
        return _Mailbox(client.mailbox, client.endpoint, client.path_style,
                        load_public_bundle(client.forwarder))
    except KeyFileError as exc:
        exc.exit_code = 2
        raise


_CONFIG = click.option(
    "--config", "config_file", type=click.Path(path_type=Path, dir_okay=False),
    help="A client config (default: found as wonder-run finds it) or a forwarder config.")


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


async def _survey(mailbox: _Mailbox) -> dict[str, Any]:
    report: dict[str, Any] = {"mailbox": {"url": mailbox.url, "reachable": False},
                              "forwarders": [], "pending": {}, "alive": 0}
    if mailbox.own is not None:
        report["self"] = "missing"
    async with mailbox.open() as store:
        started = time.monotonic()
        try:
            await store.check()
        except StoreError as exc:
            report["mailbox"]["error"] = str(exc)
            return report
        report["mailbox"].update(reachable=True, ms=round((time.monotonic() - started) * 1000))
        now = time.time()
        for name, beat, state in await _judge_heartbeats(store, mailbox.forwarder):
            if beat is None:
                report["forwarders"].append({"id": name, "state": "bad-signature"})
                continue
            report["alive"] += state == "alive"
            if beat.forwarder == mailbox.own:
                report["self"] = state
            report["forwarders"].append({
                "id": beat.forwarder, "state": state, "age": round(now - beat.time, 1),
                "version": beat.version, "instance": beat.instance,
                "uptime": round(beat.time - beat.started), "in_flight": beat.in_flight,
                "counters": beat.counters, "audit": beat.audit, "policy": beat.policy,
            })
        pending: dict[str, list[float]] = defaultdict(list)
        try:
            async for key in store.list(layout.REQUESTS):
                parsed = layout.parse_envelope_key(key)
                if parsed is not None and parsed.index is None:
                    pending[parsed.client].append(now - request_id_time(parsed.request_id))
        except StoreError as exc:  # credentials that may only see their own requests
            report["pending_error"] = str(exc)
        report["pending"] = {client: {"requests": len(ages), "oldest": round(max(ages), 1)}
                             for client, ages in sorted(pending.items())}
    return report


async def _judge_heartbeats(store: Store, signer: PublicBundle) -> list[
    tuple[str, Heartbeat | None, str]
]:
    """Each heartbeat as ``(name, heartbeat or None if its signature fails, state)``, the
    state judged as clients judge it (:class:`Liveness`): a heartbeat whose clock is off
    from ours by more than STALE_AFTER (within SKEW) is read again after its interval and
    is alive if it moved."""
    liveness = Liveness(STALE_AFTER, SKEW)
    judged: dict[str, tuple[Heartbeat | None, str]] = {}
    keys = [key async for key in store.list(layout.HEARTBEATS)]
    for attempt in range(2):
        waiting = [key for key in keys if judged.get(key, (None, "pending"))[1] == "pending"]
        if not waiting:
            break
        if attempt:  # the next beat of the slowest of them (bounded by STALE_AFTER)
            beats = [b for b, _ in (judged[k] for k in waiting) if b is not None]
            await asyncio.sleep(min(STALE_AFTER, max(b.interval for b in beats) + 0.5))
        now = time.time()
        for key in waiting:
            try:
                beat = parse_heartbeat(
                    await store.get(key, max_bytes=layout.MAX_HEARTBEAT_BYTES), signer)
            except ObjectNotFound:
                judged.pop(key, None)
                continue
            except UnsafeObject:
                beat = None  # not a heartbeat this forwarder key signed
            verdict = "bad-signature" if beat is None else liveness.judge(beat, now)
            judged[key] = beat, verdict
    return [(key.removeprefix(layout.HEARTBEATS).removesuffix(".json"), beat,
             "alive" if state == "alive" else "bad-signature" if beat is None else "stale")
            for key, (beat, state) in judged.items()]


def _audit_state(audit: dict[str, Any]) -> str:
    if not audit:
        return "-"
    if audit.get("blocked"):
        return f"BLOCKED, {audit.get('waiting')} waiting"
    if audit.get("failing"):
        return f"failing, {audit.get('waiting')} waiting"
    return f"ok (batch {audit.get('seq')})"


def _print(report: dict[str, Any]) -> None:
    box = report["mailbox"]
    if not box["reachable"]:
        click.echo(f"mailbox {box['url']}: UNREACHABLE: {box.get('error')}")
        return
    click.echo(f"mailbox {box['url']}: reachable ({box['ms']} ms)")
    rows = [("FORWARDER", "STATE", "HEARTBEAT", "VERSION", "UP FOR", "IN-FLIGHT", "REQUESTS",
             "DENIED", "ERRORS", "DOWN", "AUDIT")]
    for f in report["forwarders"]:
        if f["state"] == "bad-signature":
            rows.append((f["id"], "BAD SIGNATURE (another key?)", *("-",) * 9))
            continue
        c = f["counters"]
        rows.append((f["id"], f["state"], f"{_age(f['age'])} ago", f["version"],
                     _age(f["uptime"]), str(f["in_flight"]), str(c.get("requests", 0)),
                     str(c.get("denied", 0)), str(c.get("errors", 0)),
                     human_bytes(c.get("bytes_down", 0)), _audit_state(f["audit"])))
    if len(rows) == 1:
        click.echo("no forwarder heartbeats: no forwarder has run on this mailbox "
                   "(start one with 'wonders forward --config forwarder.toml')")
    else:
        click.echo(table(rows))
    if report.get("pending_error"):
        click.echo(f"pending requests: cannot list ({report['pending_error']})")
    elif report["pending"]:
        click.echo("pending requests:")
        for client, p in report["pending"].items():
            click.echo(f"  {client}: {p['requests']}, the oldest {_age(p['oldest'])} old")
    else:
        click.echo("pending requests: none")


@click.command()
@_CONFIG
@click.option("--json", "as_json", is_flag=True, help="The report as one JSON object.")
def status(config_file: Path | None, as_json: bool) -> None:
    """Show whether the mailbox is reachable, each forwarder's heartbeat (age, version,
    in-flight, counters, audit log) and the requests waiting per client.

    Exit status 0 when at least one forwarder is alive (a heartbeat signed by the pinned
    forwarder key, younger than 30 s, or seen to move when the two clocks differ by up to
    5 minutes: the clients' rule), 1 otherwise. Given a forwarder's config, 0 only
    when that forwarder (its id) is alive: the container's health check.
    """
    mailbox = _mailbox(config_file)
    report = asyncio.run(_survey(mailbox))
    if as_json:
        click.echo(json.dumps(report, indent=1))
    else:
        _print(report)
    if mailbox.own is not None:
        sys.exit(0 if report.get("self") == "alive" else 1)
    sys.exit(0 if report["alive"] else 1)


@click.command()
@_CONFIG
@click.option("--count", "-c", default=3, show_default=True, type=click.IntRange(1, 1000),
              help="How many round trips.")
@click.option("--timeout", default=30.0, show_default=True, type=click.FloatRange(0.1),
              help="Seconds to wait for each answer.")
def ping(config_file: Path | None, count: int, timeout: float) -> None:
    """A signed round trip through the mailbox that the forwarder answers itself (no
    internet involved): the first thing to run on a new node.

    Prints each round-trip time and a summary; exit status 1 if any round trip fails.
    """
    from wonders.mailbox import open_store
    from wonders.relay.client import RelayClient

    config = load_client_config(find_client_config(config_file))
    try:
        key = load_private_key(config.key)
        forwarder = load_public_bundle(config.forwarder)
    except KeyFileError as exc:
        exc.exit_code = 2
        raise

    async def run() -> list[float]:
        store = open_store(config.mailbox, endpoint_url=config.endpoint,
                           path_style=config.path_style)
        times: list[float] = []
        async with store, RelayClient(store, key, forwarder, poll_fast=0.005) as client:
            await store.check(f"responses/{key.name}/")
            click.echo(f"ping {store.url} as {key.name}, forwarder key {forwarder.name} "
                       f"({forwarder.kid[:12]}…)")
            for n in range(1, count + 1):
                started = time.monotonic()
                async with await client.request("GET", PING_URL, timeout=timeout) as answer:
                    body = await answer.read()
                elapsed = (time.monotonic() - started) * 1000
                if answer.status != 200:
                    raise RelayError(f"ping {n}: {answer.status}: "
                                     f"{body.decode(errors='replace').strip()}")
                doc = json.loads(body)
                times.append(elapsed)
                click.echo(f"{n}: {elapsed:.1f} ms  answered by {doc['forwarder']} "
                           f"(wonders {doc['version']})")
        return times

    times = asyncio.run(run())
    click.echo(f"{len(times)} round trips: min {min(times):.1f}, median "
               f"{statistics.median(times):.1f}, max {max(times):.1f} ms")
