"""Loading a policy file: :func:`load_policy` and :func:`parse_policy`.

Strict: unknown keys, wrong types, bad patterns or CIDRs and unreadable bundles are errors
naming the key path (:class:`~wonders.errors.PolicyError`, exit status 2). The result is a
new immutable :class:`~wonders.policy.rules.Policy`, so a reload can swap it in whole. No
I/O except reading the policy file and the bundles it names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from wonders.crypto import PublicBundle, check_name, load_public_bundle, parse_public_bundle
from wonders.errors import KeyFileError, PolicyError
from wonders.policy.rules import SCHEMES, ClientPolicy, Entry, Policy, parse_entry, parse_network

__all__ = ["load_policy", "parse_policy"]

_LIMIT_KEYS = ("max_request_bytes", "max_response_bytes", "rate_per_minute", "max_concurrent",
               "egress_bytes_per_day", "max_header_bytes", "max_url_length")
_SETTING_KEYS = ("methods", "ports", "schemes", *_LIMIT_KEYS, "mode", "allow_private",
                 "follow_redirects")
_CLIENT_KEYS = ("bundle", "allow", "deny", "not_before", "not_after", *_SETTING_KEYS)
_TOP_KEYS = ("allow", "deny", "defaults", "clients")
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([KMGT]i?B|B)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class _Loader:
    def __init__(self, source: str, base: Path) -> None:
        self.source = source
        self.base = base

    def fail(self, path: str, problem: str) -> PolicyError:
        return PolicyError(f"{self.source}: {path}: {problem}")

    def keys(self, table: Mapping[str, Any], allowed: Sequence[str], path: str) -> None:
        for key in table:
            if key not in allowed:
                close = difflib.get_close_matches(key, allowed, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                where = f"{path}.{key}" if path else key
                raise self.fail(where, f"unknown key{hint}; known keys: {', '.join(allowed)}")

    def table(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a table, not {_kind(value)}")
        return value

    def strings(self, value: Any, path: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(path, "expected a list of strings")
        return value

    def entries(self, value: Any, path: str) -> tuple[Entry, ...]:
        out = []
        for i, text in enumerate(self.strings(value, path)):
            try:
                out.append(parse_entry(text))
            except ValueError as exc:
                raise self.fail(f"{path}[{i}]", str(exc)) from None
        return tuple(out)

    def limit(self, value: Any, path: str, *, sizes: bool) -> int | None:
        if value == "unlimited":
            return None
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        if sizes and isinstance(value, str):
            match = _SIZE.fullmatch(value)
            if match:
                unit = (match.group(2) or "B").lower()
                return int(float(match.group(1)) * _UNITS[unit])
        what = "a byte count (e.g. 10485760 or \"10 MiB\")" if sizes else "a whole number"
        raise self.fail(path, f"expected {what} or \"unlimited\", not {value!r}")

    def setting(self, key: str, value: Any, path: str) -> Any:
        if key == "methods":
            methods = self.strings(value, path)
            for m in methods:
                if not re.fullmatch(r"[A-Z][A-Z0-9_-]*", m):
                    raise self.fail(path, f"{m!r} is not an upper-case HTTP method")
            return tuple(methods)
        if key == "ports":
            if not isinstance(value, list) or not all(
                isinstance(p, int) and not isinstance(p, bool) and 0 < p < 65536 for p in value
            ):
                raise self.fail(path, "expected a list of port numbers (1-65535)")
            return tuple(value)
        if key == "schemes":
            schemes = self.strings(value, path)
            bad = [s for s in schemes if s not in SCHEMES]
            if bad:
                raise self.fail(path, f"unsupported scheme {bad[0]!r}; use 'http' or 'https'")
            return tuple(schemes)
        if key in _LIMIT_KEYS:
            return self.limit(value, path, sizes=key.endswith("bytes") or key.endswith("day"))
        if key == "mode":
            if value not in ("enforce", "report"):
                raise self.fail(path, f"expected \"enforce\" or \"report\", not {value!r}")
            return value
        if key == "allow_private":
            networks = []
            for i, text in enumerate(self.strings(value, path)):
                try:
                    networks.append(parse_network(text))
                except ValueError as exc:
                    raise self.fail(f"{path}[{i}]", f"{text!r}: {exc}") from None
            return tuple(networks)
        if key == "follow_redirects":
            if not isinstance(value, bool):
                raise self.fail(path, "expected true or false")
            return value
        raise AssertionError(key)

    def moment(self, value: Any, path: str) -> float:
        if isinstance(value, datetime):
            if value.tzinfo is None:
                raise self.fail(path, "give a time zone, e.g. 2026-12-01T00:00:00Z")
            return value.timestamp()
        if isinstance(value, date):
            return datetime.combine(value, time(), UTC).timestamp()
        raise self.fail(path, "expected a TOML date or date-time, e.g. 2026-12-01T00:00:00Z")

    def bundle(self, value: Any, path: str, name: str) -> PublicBundle:
        try:
            if isinstance(value, str):
                bundle = load_public_bundle(self.base / value)
            elif isinstance(value, dict):
                bundle = parse_public_bundle(json.dumps(value).encode(), f"{path} (inline)")
            else:
                raise self.fail(path, "expected a path to a .pub file or an inline table")
        except KeyFileError as exc:
            raise self.fail(path, str(exc)) from None
        if bundle.name != name:
            raise self.fail(path, f"the bundle is for {bundle.name!r}, not {name!r}")
        return bundle


def _kind(value: Any) -> str:
    return {str: "a string", int: "a number", float: "a number", bool: "a boolean",
            list: "a list"}.get(type(value), type(value).__name__)


def parse_policy(text: str, *, source: str = "<policy>", base: Path | None = None) -> Policy:
    """Parse policy TOML; bundle paths are relative to ``base`` (the file's directory)."""
    loader = _Loader(source, base or Path("."))
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{source}: not valid TOML: {exc}") from None
    loader.keys(doc, _TOP_KEYS, "")
    allow = loader.entries(doc.get("allow", []), "allow")
    deny = loader.entries(doc.get("deny", []), "deny")
    defaults_table = loader.table(doc.get("defaults", {}), "defaults")
    loader.keys(defaults_table, _SETTING_KEYS, "defaults")
    defaults = {k: loader.setting(k, v, f"defaults.{k}") for k, v in defaults_table.items()}
    clients: dict[str, ClientPolicy] = {}
    kids: dict[str, str] = {}
    for name, raw in loader.table(doc.get("clients", {}), "clients").items():
        path = f"clients.{name}"
        try:
            check_name(name)
        except ValueError as exc:
            raise loader.fail(path, str(exc)) from None
        table = loader.table(raw, path)
        loader.keys(table, _CLIENT_KEYS, path)
        if "bundle" not in table:
            raise loader.fail(f"{path}.bundle", "missing: every client needs its public bundle")
        values: dict[str, Any] = dict(defaults)
        for key, value in table.items():
            where = f"{path}.{key}"
            if key == "bundle":
                values[key] = loader.bundle(value, where, name)
            elif key in ("allow", "deny"):
                values[key] = loader.entries(value, where)
            elif key in ("not_before", "not_after"):
                values[key] = loader.moment(value, where)
            else:
                values[key] = loader.setting(key, value, where)
        kid = values["bundle"].kid
        if kid in kids:
            raise loader.fail(f"{path}.bundle", f"same key as clients.{kids[kid]}")
        kids[kid] = name
        clients[name] = ClientPolicy(name=name, **values)
    digest = hashlib.sha256(text.encode()).hexdigest()
    return Policy(clients, allow, deny, source, digest)


def load_policy(path: str | Path) -> Policy:
    """Load a policy file (see the README for its keys)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{p}: no such policy file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"{p}: cannot read policy file: {exc}") from None
    return parse_policy(text, source=str(p), base=p.parent)
