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

from wonders.crypto import check_name
from wonders.errors import ConfigError
from wonders.relay.forwarder import ForwarderSettings

__all__ = ["ForwarderConfig", "load_forwarder_config"]

_KEYS = ("id", "key", "policy", "mailbox", "endpoint", "path_style", "upstream_ca", "tuning")
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
    return ForwarderConfig(source, key, policy, mailbox, string("endpoint"), path_style,
                           file("upstream_ca"), settings)
