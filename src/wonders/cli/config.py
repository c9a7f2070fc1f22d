"""The two configuration files, read with the one strict reader
(:class:`wonders.tomlconfig.Table`). No I/O beyond reading the file (and, for the client
config, looking for it).

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

The GPU side's file (``wonder-run``, ``wonders status``, ``wonders ping``; found by
:func:`find_client_config`)::

    key = "gpu01.key"                 # the client's private key
    forwarder = "fw1.pub"             # the forwarder's public bundle (pinned)
    mailbox = "s3://wonders/cluster-a"
    endpoint = "http://minio:9000"    # (optional)
    path_style = false                # (optional)
    timeout = 300                     # seconds to wait for an answer (optional)
    notifications = "none"            # or "minio" (optional)
    isolate = false                   # wonder-run --isolate by default (optional)

Relative paths are relative to the file's directory. Loading is strict: unknown keys and
wrong types are errors naming the key (exit status 2).

Importing this module loads neither the forwarder nor the audit writer (they are imported
when a forwarder config is read), so ``wonder-run`` reads its config through it.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from wonders.crypto import check_name
from wonders.errors import ConfigError
from wonders.tomlconfig import Table

if TYPE_CHECKING:
    from wonders.relay.forwarder import ForwarderSettings

__all__ = [
    "AuditConfig",
    "ClientConfig",
    "ForwarderConfig",
    "find_client_config",
    "load_client_config",
    "load_forwarder_config",
]

NOTIFICATIONS = ("none", "minio")
_KEYS = ("id", "key", "policy", "mailbox", "endpoint", "path_style", "notifications",
         "upstream_ca", "tuning", "audit")
_AUDIT = ("mailbox", "endpoint", "path_style", "keep_query", "spool")
_CLIENT_KEYS = ("key", "forwarder", "mailbox", "endpoint", "path_style", "timeout",
                "notifications", "isolate")


# --------------------------------------------------------------------------- forwarder


@dataclass(frozen=True, slots=True)
class AuditConfig:
    """Where the audit log goes (the mailbox's store unless ``mailbox`` is set)."""

    mailbox: str
    endpoint: str | None
    path_style: bool
    keep_query: bool
    spool: Path


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


def _default_id() -> str:
    name = "".join(c if c.isalnum() or c in "._-" else "-" for c in socket.gethostname())
    return name.strip(".-_")[:64] or "forwarder"


def _notifications(doc: Table, endpoint: str | None) -> str:
    notifications = doc.choice("notifications", NOTIFICATIONS, "none")
    if notifications == "minio" and not endpoint:
        raise doc.fail("notifications", "MinIO notifications need the MinIO 'endpoint'")
    return notifications


def _settings(table: Table, forwarder_id: str) -> ForwarderSettings:
    from wonders.relay.forwarder import ForwarderSettings

    defaults = ForwarderSettings()
    values: dict[str, Any] = {}
    for field in dataclasses.fields(ForwarderSettings):
        if field.name == "id" or field.name not in table:
            continue
        if isinstance(getattr(defaults, field.name), int):
            values[field.name] = table.integer(field.name, above=0)
        else:
            values[field.name] = table.number(field.name, above=0)
    return dataclasses.replace(defaults, id=forwarder_id, **values)


def load_forwarder_config(path: str | Path) -> ForwarderConfig:
    from wonders.audit import default_spool
    from wonders.relay.forwarder import ForwarderSettings

    source = Path(path)
    tuning_keys = [f.name for f in dataclasses.fields(ForwarderSettings) if f.name != "id"]
    doc = Table.load(source, keys=_KEYS,
                     hint=" (see docs/forwarder.md for a forwarder config)")
    forwarder_id = doc.string("id", None) or _default_id()
    try:
        check_name(forwarder_id)
    except ValueError as exc:
        raise doc.fail("id", str(exc)) from None
    path_style = doc.boolean("path_style", False)
    settings = _settings(doc.table("tuning", keys=tuning_keys), forwarder_id)
    key, policy = doc.path("key"), doc.path("policy")
    mailbox = doc.string("mailbox")
    endpoint = doc.string("endpoint", None)
    notifications = _notifications(doc, endpoint)
    table = doc.table("audit", keys=_AUDIT)
    spool = table.path("spool", None)
    audit_mailbox = table.string("mailbox", mailbox)
    audit = AuditConfig(
        mailbox=audit_mailbox,
        endpoint=table.string("endpoint", endpoint if audit_mailbox.startswith("s3:") else None),
        path_style=table.boolean("path_style", path_style),
        keep_query=table.boolean("keep_query", False),
        spool=spool or default_spool(forwarder_id),
    )
    upstream_ca = doc.path("upstream_ca", None)
    doc.finish()
    return ForwarderConfig(source, key, policy, mailbox, endpoint, path_style,
                           upstream_ca, settings, audit, notifications)


# ------------------------------------------------------------------------------ client


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """The GPU side's config file (see the module docstring)."""

    source: Path
    key: Path
    forwarder: Path
    mailbox: str
    endpoint: str | None = None
    path_style: bool = False
    timeout: float = 300.0
    notifications: str = "none"
    isolate: bool = False


def _candidates(explicit: Path | None) -> list[tuple[str, Path]]:
    if explicit is not None:
        return [("--config", explicit)]
    found = []
    if os.environ.get("WONDERS_CONFIG"):
        found.append(("$WONDERS_CONFIG", Path(os.environ["WONDERS_CONFIG"])))
    found.append(("./wonders.toml", Path("wonders.toml")))
    found.append(("~/.config/wonders/client.toml",
                  Path.home() / ".config" / "wonders" / "client.toml"))
    return found


def find_client_config(explicit: Path | None) -> Path:
    """The config to use: ``--config``, ``$WONDERS_CONFIG``, ``./wonders.toml`` or
    ``~/.config/wonders/client.toml``, the first that exists."""
    candidates = _candidates(explicit)
    for how, path in candidates:
        if path.is_file():
            return path
        if how in ("--config", "$WONDERS_CONFIG"):
            raise ConfigError(f"{path}: no such config file (given by {how})")
    looked = ", ".join(how for how, _ in candidates)
    raise ConfigError(
        f"no client config found (looked at {looked}); write one as the README shows "
        "('key', 'forwarder', 'mailbox'), or try 'wonder-run --local'"
    )


def load_client_config(path: Path) -> ClientConfig:
    doc = Table.load(path, keys=_CLIENT_KEYS)
    key, forwarder = doc.path("key"), doc.path("forwarder")
    mailbox = doc.string("mailbox")
    endpoint = doc.string("endpoint", None)
    config = ClientConfig(
        path, key, forwarder, mailbox, endpoint,
        path_style=doc.boolean("path_style", False),
        timeout=doc.number("timeout", 300.0, above=0, expected="seconds above 0"),
        notifications=_notifications(doc, endpoint),
        isolate=doc.boolean("isolate", False),
    )
    doc.finish()
    return config
