"""``wonders audit``: read, verify and summarise the audit log in the bucket."""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from wonders.audit import (
    Batch,
    Problem,
    batch_keys,
    heartbeats_of,
    incomplete_intents,
    parse_time,
    read_batches,
    verify_log,
)
from wonders.crypto import PublicBundle, load_private_key, load_public_bundle
from wonders.errors import ConfigError, KeyFileError, StoreError
from wonders.mailbox import Store, layout, wait_event
from wonders.text import human_bytes, table

DECISIONS = ("allow", "deny", "report", "rejected")


@dataclass(frozen=True)
class _Source:
    url: str
    endpoint: str | None
    path_style: bool
    signer: PublicBundle
    #: The relay mailbox (heartbeats, intents) when it is not the audit store.
    relay: tuple[str, str | None, bool] | None = None

    def open(self) -> Store:
        from wonders.mailbox import open_store

        return open_store(self.url, endpoint_url=self.endpoint, path_style=self.path_style)

    def open_relay(self) -> Store | None:
        from wonders.mailbox import open_store

        if self.relay is None:
            return None
        url, endpoint, path_style = self.relay
        return open_store(url, endpoint_url=endpoint, path_style=path_style)


def _source(config: Path | None, mailbox: str | None, key: Path | None,
            endpoint: str | None, path_style: bool) -> _Source:
    if config is not None:
        from wonders.cli.config import load_forwarder_config

        loaded = load_forwarder_config(config)
        try:
            signer = (load_public_bundle(key) if key is not None
                      else load_private_key(loaded.key).public)
        except KeyFileError as exc:
            exc.exit_code = 2
            raise
        audit = loaded.audit
        url, where, style = (mailbox or audit.mailbox, endpoint or audit.endpoint,
                             path_style or audit.path_style)
        relay = (loaded.mailbox, loaded.endpoint, loaded.path_style)
        return _Source(url, where, style, signer,
                       None if relay == (url, where, style) else relay)
    if mailbox is None or key is None:
        raise ConfigError(
            "say where the audit log is and whose it is: --config FORWARDER.toml, or "
            "--mailbox URL (the audit bucket or directory) and --key FORWARDER.pub"
        )
    try:
        signer = load_public_bundle(key)
    except KeyFileError as exc:
        exc.exit_code = 2
        raise
    return _Source(mailbox, endpoint, path_style, signer)


def _where(function: Callable[..., Any]) -> Callable[..., Any]:
    """The options that say where the audit log is, shared by every audit command."""
    for option in reversed((
        click.option("--config", "config_file", type=click.Path(path_type=Path),
                     help="The forwarder's config file: its audit store and key."),
        click.option("--mailbox", help="The audit log's store (s3://BUCKET/PREFIX or "
                                       "file:///DIR), without --config or to override it."),
        click.option("--key", "key_file", type=click.Path(path_type=Path),
                     help="The forwarder's public bundle (FORWARDER.pub) to verify with."),
        click.option("--endpoint", help="S3 endpoint URL (MinIO and others)."),
        click.option("--path-style", is_flag=True, help="Path-style S3 addressing."),
    )):
        function = option(function)
    return function


def _when(value: str | None, name: str, now: float) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value, now)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=name) from None


def _record_time(record: dict[str, Any]) -> float:
    try:
        return datetime.fromisoformat(str(record.get("time"))).timestamp()
    except ValueError:
        return 0.0


@dataclass(frozen=True)
class _Filter:
    since: float | None
    until: float | None
    clients: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    decisions: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()

    def __call__(self, record: dict[str, Any]) -> bool:
        moment = _record_time(record)
        if self.since is not None and moment < self.since:
            return False
        if self.until is not None and moment > self.until:
            return False
        if self.clients and record.get("client") not in self.clients:
            return False
        host = str(record.get("host") or "").lower()
        if self.hosts and not any(fnmatch.fnmatchcase(host, h.lower()) for h in self.hosts):
            return False
        if self.decisions and record.get("decision") not in self.decisions:
            return False
        status = str(record.get("status") or "-")
        return not self.statuses or any(
            status == s or (s.endswith("xx") and status[:1] == s[:1]) for s in self.statuses
        )


def _status(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[
    str, ...
]:
    for value in values:
        ok = len(value) == 3 and value[0] in "12345" and (
            value[1:].isdigit() or value[1:].lower() == "xx")
        if not ok:
            raise click.BadParameter(f"{value!r}: give a status like 403 or a class like 5xx")
    return tuple(v.lower() for v in values)


async def _keys(store: Store, since: float | None, until: float | None, now: float) -> list[str]:
    """Batch keys that can hold records from ``since`` to ``until``: a batch is filed on
    the day it is written, which is the day of its records or a day later."""
    return await batch_keys(store, since, min(now, (until if until is not None else now) + 86400))


def _warn(problem: Problem) -> None:
    click.echo(f"wonders audit: {problem}; its records are not shown "
               "(run 'wonders audit verify')", err=True)


_COLUMNS = ("TIME (UTC)", "CLIENT", "METHOD", "HOST", "PATH", "DECISION", "STATUS", "UP",
            "DOWN", "MS")


def _row(record: dict[str, Any]) -> tuple[str, ...]:
    moment = str(record.get("time", ""))[:19].replace("T", " ")
    path = str(record.get("path") or "-")
    if len(path) > 48:
        path = path[:47] + "…"
    total = record.get("total_ms")
    return (moment, str(record.get("client", "-")), str(record.get("method") or "-"),
            str(record.get("host") or "-"), path, str(record.get("decision", "-")),
            str(record.get("status") or record.get("error") or "-"),
            human_bytes(int(record.get("up") or 0)), human_bytes(int(record.get("down") or 0)),
            f"{total:.0f}" if isinstance(total, int | float) else "-")


def _table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> str:
    right = {i for i, h in enumerate(header) if h in ("UP", "DOWN", "MS", "REQUESTS", "DENIED",
                                                     "ERRORS", "REJECTED")}
    return table([header, *rows], right)


def _emit(records: Iterable[dict[str, Any]], as_json: bool, header: bool) -> int:
    rows = list(records)
    if as_json:
        for record in rows:
            click.echo(json.dumps(record, sort_keys=True))
    elif rows:
        text = _table([_row(r) for r in rows], _COLUMNS)
        click.echo(text if header else "\n".join(text.splitlines()[1:]))
    sys.stdout.flush()
    return len(rows)


@click.group(invoke_without_command=True)
@_where
@click.option("--since", default="24h", show_default=True,
              help="Records from this time: a duration before now (30m, 1h, 7d) or an ISO "
                   "date or time (UTC unless a zone is given).")
@click.option("--until", help="Records up to this time (same forms as --since).")
@click.option("--client", "clients", multiple=True, help="Only this client (repeatable).")
@click.option("--host", "hosts", multiple=True,
              help="Only hosts matching this pattern, e.g. '*.hf.co' (repeatable).")
@click.option("--decision", "decisions", multiple=True, type=click.Choice(DECISIONS),
              help="Only this decision (repeatable).")
@click.option("--status", "statuses", multiple=True, callback=_status,
              help="Only this status (403) or class (5xx) (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing new records (Ctrl-C stops).")
@click.pass_context
def audit(
    ctx: click.Context, config_file: Path | None, mailbox: str | None, key_file: Path | None,
    endpoint: str | None, path_style: bool, since: str, until: str | None,
    clients: tuple[str, ...], hosts: tuple[str, ...], decisions: tuple[str, ...],
    statuses: tuple[str, ...], as_json: bool, follow: bool,
) -> None:
    """Show the audit log: one record per request, oldest first.

    Every batch is checked against the forwarder's key as it is read; a batch that fails
    is reported on stderr, its records are not shown, and the exit status is 1. Use
    `wonders audit verify` to check the whole chain, `wonders audit stats` for totals.
    """
    if ctx.invoked_subcommand is not None:
        ctx.obj = (config_file, mailbox, key_file, endpoint, path_style)
        return
    source = _source(config_file, mailbox, key_file, endpoint, path_style)
    now = time.time()
    chosen = _Filter(_when(since, "--since", now), _when(until, "--until", now), clients,
                     hosts, decisions, statuses)
    bad = asyncio.run(_show(source, chosen, as_json, follow, now))
    sys.exit(1 if bad else 0)


async def _show(source: _Source, chosen: _Filter, as_json: bool, follow: bool,
                now: float) -> int:
    bad = 0
    async with source.open() as store:
        await store.check()
        keys = await _keys(store, chosen.since, chosen.until, now)
        records: list[dict[str, Any]] = []
        async for item in read_batches(store, keys, source.signer):
            if isinstance(item, Problem):
                bad += 1
                _warn(item)
            else:
                records += filter(chosen, item.records)
        records.sort(key=_record_time)
        shown = _emit(records, as_json, header=True)
        click.echo(f"{shown} records from {len(keys)} batches"
                   + ("; following (Ctrl-C stops)" if follow else ""), err=True)
        if follow:
            bad += await _follow(store, source.signer, chosen, as_json, keys)
    return bad


async def _follow(store: Store, signer: PublicBundle, chosen: _Filter, as_json: bool,
                  seen_keys: list[str]) -> int:
    """Print records of batches written from now on, until SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    last: dict[str, str] = {}  # forwarder -> newest batch key seen
    for key in seen_keys:
        parsed = layout.parse_audit_key(key)
        if parsed is not None and key > last.get(parsed.forwarder, ""):
            last[parsed.forwarder] = key
    following = _Filter(None, None, chosen.clients, chosen.hosts, chosen.decisions,
                        chosen.statuses)
    bad = 0
    while not stop.is_set():
        try:
            fresh = await _new_batches(store, last)
        except StoreError as exc:
            click.echo(f"wonders audit: {exc}; retrying", err=True)
            fresh = []
        async for item in read_batches(store, fresh, signer):
            if isinstance(item, Problem):
                bad += 1
                _warn(item)
            else:
                _emit(filter(following, item.records), as_json, header=False)
        await wait_event(stop, 1.0)
    return bad


async def _new_batches(store: Store, last: dict[str, str]) -> list[str]:
    """Keys of batches newer than ``last`` (updated), for every forwarder with a head."""
    today = datetime.now(UTC).date()
    forwarders = {k.removeprefix(layout.AUDIT_HEADS).removesuffix(".json")
                  async for k in store.list(layout.AUDIT_HEADS)}
    fresh: list[str] = []
    for forwarder in sorted(forwarders | set(last)):
        newest = last.get(forwarder)
        parsed = layout.parse_audit_key(newest) if newest else None
        day = parsed.day if parsed else today
        while day <= today:
            prefix = layout.audit_forwarder_prefix(day, forwarder)
            after = newest if newest and newest.startswith(prefix) else None
            keys = [k async for k in store.list(prefix, start_after=after)]
            keys = [k for k in keys if layout.parse_audit_key(k) is not None]
            if keys:
                newest = keys[-1]
                fresh += keys
            day += timedelta(days=1)
        if newest:
            last[forwarder] = newest
    return fresh


def _inherit(ctx: click.Context, config_file: Path | None, mailbox: str | None,
             key_file: Path | None, endpoint: str | None, path_style: bool) -> _Source:
    parent = ctx.obj or (None, None, None, None, False)
    return _source(config_file or parent[0], mailbox or parent[1], key_file or parent[2],
                   endpoint or parent[3], path_style or parent[4])


@audit.command("verify")
@_where
@click.option("--since", help="Check only batches filed from this day (default: all).")
@click.option("--json", "as_json", is_flag=True, help="The result as one JSON object.")
@click.pass_context
def audit_verify(
    ctx: click.Context, config_file: Path | None, mailbox: str | None, key_file: Path | None,
    endpoint: str | None, path_style: bool, since: str | None, as_json: bool,
) -> None:
    """Check every batch's signature and every forwarder's chain.

    Reports each missing (deleted), edited, reordered, inserted or forged batch with its
    object key, one per line, batches missing past the newest one that the head object or
    the forwarder's signed heartbeat names, and every executed request that no record
    completes (its intent in the mailbox is all there is: the forwarder died, and no
    other recorded it). Exit status 1 on any problem, 0 when the log is whole.
    With --since, batches filed before that day are not read, so the first batch in the
    window is not linked to its predecessor.
    """
    source = _inherit(ctx, config_file, mailbox, key_file, endpoint, path_style)
    start = _when(since, "--since", time.time())

    async def run() -> Any:
        async with source.open() as store, contextlib.AsyncExitStack() as stack:
            await store.check()
            relay = source.open_relay()
            if relay is not None:
                await stack.enter_async_context(relay)
            return await verify_log(store, source.signer, since=start, mailbox=relay)

    result = asyncio.run(run())
    if as_json:
        click.echo(json.dumps({
            "forwarders": result.forwarders, "batches": result.batches,
            "records": result.records, "ok": not result.problems,
            "incomplete": result.incomplete,
            "problems": [{"key": p.key, "problem": p.problem} for p in result.problems],
        }, indent=1))
    else:
        for problem in result.problems:
            click.echo(f"PROBLEM {problem}")
        verdict = (f"{len(result.problems)} problems" if result.problems
                   else "every signature and chain link checks")
        click.echo(f"{result.batches} batches, {result.records} records, "
                   f"{result.forwarders} forwarder{'' if result.forwarders == 1 else 's'}: "
                   f"{verdict}")
    sys.exit(1 if result.problems else 0)


@dataclass
class _Tally:
    requests: int = 0
    allowed: int = 0
    denied: int = 0
    rejected: int = 0
    errors: int = 0
    up: int = 0
    down: int = 0

    def add(self, record: dict[str, Any]) -> None:
        self.requests += 1
        decision = record.get("decision")
        status = record.get("status") or 0
        if decision == "deny":
            self.denied += 1
        elif decision == "rejected":
            self.rejected += 1
        elif decision in ("allow", "report"):
            self.allowed += 1
            if record.get("error") or (isinstance(status, int) and status >= 500):
                self.errors += 1
        self.up += int(record.get("up") or 0)
        self.down += int(record.get("down") or 0)

    def row(self, name: str) -> tuple[str, ...]:
        return (name, str(self.requests), str(self.denied), str(self.rejected),
                str(self.errors), human_bytes(self.up), human_bytes(self.down))


@audit.command("stats")
@_where
@click.option("--since", default="7d", show_default=True,
              help="From this time (30m, 1h, 7d, or an ISO date or time).")
@click.option("--until", help="Up to this time.")
@click.option("--json", "as_json", is_flag=True, help="The totals as one JSON object.")
@click.pass_context
def audit_stats(
    ctx: click.Context, config_file: Path | None, mailbox: str | None, key_file: Path | None,
    endpoint: str | None, path_style: bool, since: str, until: str | None, as_json: bool,
) -> None:
    """Totals per client and per host: requests, denials, errors, bytes each way.

    A request tried more than once (a forwarder took it over) counts once, by its last
    attempt. Batches that fail verification are left out and reported (exit status 1).
    """
    source = _inherit(ctx, config_file, mailbox, key_file, endpoint, path_style)
    now = time.time()
    chosen = _Filter(_when(since, "--since", now), _when(until, "--until", now))

    async def run() -> tuple[list[dict[str, Any]], int, int]:
        async with source.open() as store, contextlib.AsyncExitStack() as stack:
            await store.check()
            relay = source.open_relay()
            if relay is not None:
                await stack.enter_async_context(relay)
            keys = await _keys(store, chosen.since, chosen.until, now)
            latest: dict[str, dict[str, Any]] = {}
            recorded: set[tuple[str, int]] = set()
            bad = 0
            async for item in read_batches(store, keys, source.signer):
                if isinstance(item, Batch):
                    recorded.update((str(r.get("id")), int(r.get("attempt") or 0))
                                    for r in item.records)
                    for record in filter(chosen, item.records):
                        rid = str(record.get("id"))
                        if rid not in latest or record.get("attempt", 0) >= latest[rid].get(
                                "attempt", 0):
                            latest[rid] = record
                else:
                    bad += 1
                    _warn(item)
            mailbox = relay or store
            _, incomplete = await incomplete_intents(
                mailbox, source.signer, recorded, now=time.time(),
                beats=await heartbeats_of(mailbox, source.signer))
            return list(latest.values()), bad, incomplete

    records, bad, incomplete = asyncio.run(run())
    total = _Tally()
    by_client: dict[str, _Tally] = defaultdict(_Tally)
    by_host: dict[str, _Tally] = defaultdict(_Tally)
    for record in records:
        total.add(record)
        by_client[str(record.get("client"))].add(record)
        by_host[str(record.get("host") or "-")].add(record)

    def ordered(tallies: dict[str, _Tally]) -> list[tuple[str, _Tally]]:
        return sorted(tallies.items(), key=lambda item: (-item[1].requests, item[0]))

    if as_json:
        click.echo(json.dumps({
            "since": chosen.since, "until": chosen.until if chosen.until else now,
            "total": vars(total), "incomplete": incomplete,
            "clients": {name: vars(t) for name, t in ordered(by_client)},
            "hosts": {name: vars(t) for name, t in ordered(by_host)},
        }, indent=1))
    else:
        start = datetime.fromtimestamp(chosen.since or 0, UTC).strftime("%Y-%m-%d %H:%M")
        end = datetime.fromtimestamp(chosen.until or now, UTC).strftime("%Y-%m-%d %H:%M")
        click.echo(f"{start} to {end} UTC: {total.requests} requests, {total.denied} denied, "
                   f"{total.rejected} rejected, {total.errors} errors, "
                   f"{human_bytes(total.up)} up, {human_bytes(total.down)} down")
        numbers = ("REQUESTS", "DENIED", "REJECTED", "ERRORS", "UP", "DOWN")
        for title, tallies in (("CLIENT", by_client), ("HOST", by_host)):
            click.echo("")
            click.echo(_table([t.row(name) for name, t in ordered(tallies)],
                              (title, *numbers)))
    if incomplete:
        click.echo(f"wonders audit: {incomplete} executed request"
                   f"{' has' if incomplete == 1 else 's have'} no audit record (the "
                   "forwarder died and none other completed it); run 'wonders audit verify'",
                   err=True)
    sys.exit(1 if bad or incomplete else 0)
