"""Loading a policy file: :func:`load_policy` and :func:`parse_policy`.

Strict: unknown keys, wrong types, bad patterns or CIDRs and unreadable bundles are errors
naming the key path (:class:`~wonders.errors.PolicyError`, exit status 2). The result is a
new immutable :class:`~wonders.policy.rules.Policy`, so a reload can swap it in whole. No
I/O except reading the policy file and the bundles it names.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from wonders.crypto import PublicBundle, check_name, load_public_bundle, parse_public_bundle
from wonders.errors import KeyFileError, PolicyError
from wonders.policy.rules import SCHEMES, ClientPolicy, Entry, Policy, parse_entry, parse_network
from wonders.tomlconfig import Table, read_file

__all__ = ["load_policy", "parse_policy"]

_LIMIT_KEYS = ("max_request_bytes", "max_response_bytes", "rate_per_minute", "max_concurrent",
               "egress_bytes_per_day", "max_header_bytes", "max_url_length")
_SETTING_KEYS = ("methods", "ports", "schemes", *_LIMIT_KEYS, "mode", "allow_private",
                 "follow_redirects")
_CLIENT_KEYS = ("bundle", "allow", "deny", "not_before", "not_after", *_SETTING_KEYS)
_TOP_KEYS = ("allow", "deny", "defaults", "clients")
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*")


def _entries(table: Table, key: str) -> tuple[Entry, ...]:
    out = []
    for i, text in enumerate(table.strings(key, [])):
        try:
            out.append(parse_entry(text))
        except ValueError as exc:
            raise table.fail(f"{key}[{i}]", str(exc)) from None
    return tuple(out)


def _limit(table: Table, key: str) -> int | None:
    if table.value(key) == "unlimited":
        return None
    if key.endswith(("bytes", "day")):  # a byte count
        return table.size(key, expected='a byte count (e.g. 10485760 or "10 MiB") or '
                                        '"unlimited"')
    return table.integer(key, minimum=0, expected='a whole number or "unlimited"')


def _setting(table: Table, key: str) -> Any:
    """The value of one of the settings a client entry and ``[defaults]`` share."""
    if key == "methods":
        methods = table.strings(key)
        for m in methods:
            if not _METHOD.fullmatch(m):
                raise table.fail(key, f"{m!r} is not an upper-case HTTP method")
        return tuple(methods)
    if key == "ports":
        ports = table.value(key)
        if not isinstance(ports, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in ports
        ):
            raise table.wrong(key, "a list of port numbers (1-65535)", ports)
        return tuple(ports)
    if key == "schemes":
        schemes = table.strings(key)
        bad = [s for s in schemes if s not in SCHEMES]
        if bad:
            raise table.fail(key, f"unsupported scheme {bad[0]!r}; use 'http' or 'https'")
        return tuple(schemes)
    if key in _LIMIT_KEYS:
        return _limit(table, key)
    if key == "mode":
        return table.choice(key, ("enforce", "report"))
    if key == "allow_private":
        networks = []
        for i, text in enumerate(table.strings(key)):
            try:
                networks.append(parse_network(text))
            except ValueError as exc:
                raise table.fail(f"{key}[{i}]", f"{text!r}: {exc}") from None
        return tuple(networks)
    if key == "follow_redirects":
        return table.boolean(key)
    raise AssertionError(key)


def _settings(table: Table) -> dict[str, Any]:
    return {key: _setting(table, key) for key in _SETTING_KEYS if key in table}


def _moment(table: Table, key: str) -> float:
    value = table.value(key)
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise table.fail(key, "give a time zone, e.g. 2026-12-01T00:00:00Z")
        return value.timestamp()
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC).timestamp()
    raise table.wrong(key, "a TOML date or date-time (e.g. 2026-12-01T00:00:00Z)", value)


def _bundle(table: Table, name: str) -> PublicBundle:
    if "bundle" not in table:
        raise table.fail("bundle", "missing: every client needs its public bundle")
    value = table.value("bundle")
    try:
        if isinstance(value, str):
            bundle = load_public_bundle(table.path("bundle"))
        elif isinstance(value, dict):
            inline = f"{table.dotted('bundle')} (inline)"
            bundle = parse_public_bundle(json.dumps(value).encode(), inline)
        else:
            raise table.wrong("bundle", "a path to a .pub file or an inline table", value)
    except KeyFileError as exc:
        raise table.fail("bundle", str(exc)) from None
    if bundle.name != name:
        raise table.fail("bundle", f"the bundle is for {bundle.name!r}, not {name!r}")
    return bundle


def _client(table: Table, name: str, defaults: dict[str, Any]) -> ClientPolicy:
    values: dict[str, Any] = dict(defaults)
    values["bundle"] = _bundle(table, name)
    for key in ("allow", "deny"):
        if key in table:
            values[key] = _entries(table, key)
    for key in ("not_before", "not_after"):
        if key in table:
            values[key] = _moment(table, key)
    values.update(_settings(table))
    return ClientPolicy(name=name, **values)


def parse_policy(text: str, *, source: str = "<policy>", base: Path | None = None) -> Policy:
    """Parse policy TOML; bundle paths are relative to ``base`` (the file's directory)."""
    doc = Table.parse(text, keys=_TOP_KEYS, source=source, base=base or Path("."),
                      error=PolicyError)
    allow, deny = _entries(doc, "allow"), _entries(doc, "deny")
    defaults = _settings(doc.table("defaults", keys=_SETTING_KEYS))
    clients: dict[str, ClientPolicy] = {}
    kids: dict[str, str] = {}
    table = doc.table("clients", keys=None)
    for name in table:
        try:
            check_name(name)
        except ValueError as exc:
            raise table.fail(name, str(exc)) from None
        entry = _client(table.table(name, keys=_CLIENT_KEYS), name, defaults)
        kid = entry.bundle.kid
        if kid in kids:
            raise table.fail(f"{name}.bundle", f"same key as clients.{kids[kid]}")
        kids[kid] = name
        clients[name] = entry
    doc.finish()
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Policy(clients, allow, deny, source, digest)


def load_policy(path: str | Path) -> Policy:
    """Load a policy file (see docs/policy.md for its keys)."""
    p = Path(path)
    text = read_file(p, what="policy file", error=PolicyError)
    return parse_policy(text, source=str(p), base=p.parent)
