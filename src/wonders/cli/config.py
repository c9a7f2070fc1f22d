"""Configuration files. No I/O beyond reading the file.

The forwarder's file (``wonders forward --config forwarder.toml``)::

    id = "fw1"                        # this instance's id (default: the host name)
    key = "fw1.key"                   # the forwarder's private key
    policy = "policy.toml"            # the egress policy
    mailbox = "s3://wonders/cluster-a"
    endpoint = "http://minio:9000"    # S3 endpoint for MinIO and others (optional)
    path_style = false                # path-style S3 addressing (optional)
    upstream_ca = "internal-ca.pem"   # extra CAs to trust upstream (optional)

    [tuning]                          # optional; see ForwarderSettings
    max_in_flight = 64

    [audit]                           # optional
    mailbox = "s3://wonders-audit/a"  # a separate (object-locked) bucket; default: mailbox
    endpoint = "http://minio:9000"    # its endpoint (default: endpoint above)
    path_style = false                # (default: path_style above)
    keep_query = false                # record query values (credentials stay redacted)
    spool = "/var/lib/wonders/audit-spool.jsonl"   # records unstored at shutdown

Relative paths are relative to the file's directory. Loading is strict: unknown keys and
wrong types are errors naming the key (exit status 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import socket
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wonders.audit import default_spool
from wonders.crypto import check_name
from wonders.errors import ConfigError
from wonders.relay.forwarder import ForwarderSettings

__all__ = ["AuditConfig", "ForwarderConfig", "load_forwarder_config"]


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Where the audit log goes (the mailbox's store unless ``mailbox`` is set)."""

    mailbox: str
    endpoint: str | None
    path_style: bool
    keep_query: bool
    spool: Path

_KEYS = ("id", "key", "policy", "mailbox", "endpoint", "path_style", "notifications",
         "upstream_ca", "tuning", "audit")
NOTIFICATIONS = ("none", "minio")
_AUDIT = ("mailbox", "endpoint", "path_style", "keep_query", "spool")
_TUNING = tuple(f.name for f in dataclasses.fields(ForwarderSettings) if f.name != "id")


@dataclass(frozen=True, slots=True)
class ForwarderConfig:
    source: Path
    key: Path
    policy: Path
    mailbox: str
    endpoint: str | None
    path_style: bool
    upstream_ca: Path | None
    settings: ForwarderSettings
    audit: AuditConfig
    notifications: str = "none"


def _fail(source: Path, key: str, problem: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: {problem}")


def _unknown(source: Path, table: dict[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise _fail(source, f"{where}{key}", f"unknown key{hint}")


def _default_id() -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return name.strip(".-_")[:64] or "forwarder"


def load_forwarder_config(path: str | Path) -> ForwarderConfig:
    source = Path(path)
    try:
        doc = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"{source}: no such config file (see the README for a forwarder config)"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    _unknown(source, doc, _KEYS, "")
    base = source.parent

    def string(key: str, required: bool = False) -> str | None:
        value = doc.get(key)
        if value is None:
            if required:
                raise _fail(source, key, "missing")
            return None
        if not isinstance(value, str) or not value:
            raise _fail(source, key, "expected a non-empty string")
        return value

    def file(key: str, required: bool = False) -> Path | None:
        value = string(key, required)
        return None if value is None else base / Path(value).expanduser()

    forwarder_id = string("id") or _default_id()
    try:
        check_name(forwarder_id)
    except ValueError as exc:
        raise _fail(source, "id", str(exc)) from None
    path_style = doc.get("path_style", False)
    if not isinstance(path_style, bool):
        raise _fail(source, "path_style", "expected true or false")
    tuning = doc.get("tuning", {})
    if not isinstance(tuning, dict):
        raise _fail(source, "tuning", "expected a table")
    _unknown(source, tuning, _TUNING, "tuning.")
    defaults = ForwarderSettings()
    for key, value in tuning.items():
        expected = type(getattr(defaults, key))
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if expected is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        if not ok or value <= 0:
            kind = "a whole number" if expected is int else "a number"
            raise _fail(source, f"tuning.{key}", f"expected {kind} above 0, not {value!r}")
    settings = dataclasses.replace(
        defaults, id=forwarder_id, **{k: type(getattr(defaults, k))(v) for k, v in tuning.items()}
    )
    key, policy = file("key", True), file("policy", True)
    mailbox = string("mailbox", True)
    assert key is not None
    assert policy is not None
    assert mailbox is not None
    endpoint = string("endpoint")
    notifications = string("notifications") or "none"
    if notifications not in NOTIFICATIONS:
        raise _fail(source, "notifications", f'expected "none" or "minio", not {notifications!r}')
    if notifications == "minio" and not endpoint:
        raise _fail(source, "notifications", "MinIO notifications need the MinIO 'endpoint'")
    table = doc.get("audit", {})
    if not isinstance(table, dict):
        raise _fail(source, "audit", "expected a table")
    _unknown(source, table, _AUDIT, "audit.")
    for flag in ("path_style", "keep_query"):
        if not isinstance(table.get(flag, False), bool):
            raise _fail(source, f"audit.{flag}", "expected true or false")
    for text in ("mailbox", "endpoint", "spool"):
        value = table.get(text)
        if value is not None and (not isinstance(value, str) or not value):
            raise _fail(source, f"audit.{text}", "expected a non-empty string")
    audit_mailbox = table.get("mailbox", mailbox)
    audit = AuditConfig(
        mailbox=audit_mailbox,
        endpoint=table.get("endpoint", endpoint if audit_mailbox.startswith("s3:") else None),
        path_style=table.get("path_style", path_style),
        keep_query=table.get("keep_query", False),
        spool=(base / Path(table["spool"]).expanduser() if "spool" in table
               else default_spool(forwarder_id)),
    )
    return ForwarderConfig(source, key, policy, mailbox, endpoint, path_style,
                           file("upstream_ca"), settings, audit, notifications)
