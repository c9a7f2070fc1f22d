"""Key pairs, key ids and public bundles, and their files.

A party (a GPU node's client, a forwarder) holds an Ed25519 key for signing and an X25519
key for receiving sealed objects. Its key id (``kid``) is derived from both public keys;
loaders always recompute it and never trust a stored one.

Files (both JSON, UTF-8):

- ``NAME.key`` — private: ``{"type": "wonders-private-key", "version": 1, "name", "ed25519",
  "x25519"}`` with base64 raw 32-byte private keys. Created 0600 with O_EXCL; refused at
  load time if group or others have any access (as ssh does).
- ``NAME.pub`` — public bundle: ``{"type": "wonders-public-key", "version": 1, "name", "kid",
  "ed25519", "x25519"}`` with base64 raw 32-byte public keys.

The only I/O here is reading and writing those two files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from wonders.errors import KeyFileError

PRIVATE_TYPE = "wonders-private-key"
PUBLIC_TYPE = "wonders-public-key"
_KID_DOMAIN = b"wonders1 kid\x00"
#: Names appear in object keys (``requests/<name>/…``) and file names, so they are plain.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
KID_PATTERN = re.compile(r"[0-9a-f]{32}")


def key_id(ed25519_public: bytes, x25519_public: bytes) -> str:
    """The key id of a party: hex of the first 16 bytes of a domain-separated SHA-256."""
    return hashlib.sha256(_KID_DOMAIN + ed25519_public + x25519_public).digest()[:16].hex()


def check_name(name: str) -> str:
    """Return ``name`` if it is usable as a party name, else raise ValueError saying why."""
    if not NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"invalid name {name!r}: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def _raw_public(key: Ed25519PublicKey | X25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class PublicBundle:
    """A party's public keys.

    Attributes:
        name: the party's name (a client name is also its mailbox prefix).
        signing: Ed25519 public key that verifies what the party signs.
        encryption: X25519 public key that the party's sealed objects are encrypted to.
        kid: key id, always computed from the two keys.
    """

    name: str
    signing: Ed25519PublicKey
    encryption: X25519PublicKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        check_name(self.name)
        object.__setattr__(self, "kid", key_id(self.signing_bytes, self.encryption_bytes))

    @property
    def signing_bytes(self) -> bytes:
        return _raw_public(self.signing)

    @property
    def encryption_bytes(self) -> bytes:
        return _raw_public(self.encryption)

    def to_json(self) -> bytes:
        """The bundle file's content."""
        doc = {
            "type": PUBLIC_TYPE,
            "version": 1,
            "name": self.name,
            "kid": self.kid,
            "ed25519": base64.b64encode(self.signing_bytes).decode(),
            "x25519": base64.b64encode(self.encryption_bytes).decode(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """A party's private keys and the public bundle that goes with them."""

    name: str
    signing: Ed25519PrivateKey
    encryption: X25519PrivateKey
    public: PublicBundle = field(init=False)

    def __post_init__(self) -> None:
        bundle = PublicBundle(self.name, self.signing.public_key(), self.encryption.public_key())
        object.__setattr__(self, "public", bundle)

    @property
    def kid(self) -> str:
        return self.public.kid

    @classmethod
    def generate(cls, name: str) -> PrivateKey:
        return cls(check_name(name), Ed25519PrivateKey.generate(), X25519PrivateKey.generate())

    @classmethod
    def from_raw(cls, name: str, ed25519: bytes, x25519: bytes) -> PrivateKey:
        """Build from raw 32-byte private keys (test vectors use this)."""
        return cls(
            check_name(name),
            Ed25519PrivateKey.from_private_bytes(ed25519),
            X25519PrivateKey.from_private_bytes(x25519),
        )

    def to_json(self) -> bytes:
        """The private key file's content."""
        ed = self.signing.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        x = self.encryption.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        doc = {
            "type": PRIVATE_TYPE,
            "version": 1,
            "name": self.name,
            "ed25519": base64.b64encode(ed).decode(),
            "x25519": base64.b64encode(x).decode(),
        }
        return (json.dumps(doc, indent=2) + "\n").encode()


# ---------------------------------------------------------------------------- parsing


def _field(doc: dict[str, Any], name: str, source: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str):
        raise KeyFileError(f"{source}: missing or non-string field {name!r}")
    return value


def _raw32(doc: dict[str, Any], name: str, source: str) -> bytes:
    text = _field(doc, name, source)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KeyFileError(f"{source}: field {name!r} is not valid base64") from None
    if len(raw) != 32:
        raise KeyFileError(f"{source}: field {name!r} must hold 32 bytes, not {len(raw)}")
    return raw


def _document(data: bytes, source: str, expected_type: str) -> dict[str, Any]:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise KeyFileError(f"{source}: not a wonders key file (not JSON)") from None
    if not isinstance(doc, dict):
        raise KeyFileError(f"{source}: not a wonders key file (not a JSON object)")
    if doc.get("type") != expected_type:
        hint = ""
        if doc.get("type") in (PRIVATE_TYPE, PUBLIC_TYPE):
            hint = f" (it is a {doc['type']}; did you swap the .key and .pub files?)"
        raise KeyFileError(f"{source}: expected a {expected_type}{hint}")
    if doc.get("version") != 1:
        raise KeyFileError(f"{source}: unsupported key file version {doc.get('version')!r}")
    try:
        check_name(_field(doc, "name", source))
    except ValueError as exc:
        raise KeyFileError(f"{source}: {exc}") from None
    return doc


def parse_public_bundle(data: bytes, source: str = "<bundle>") -> PublicBundle:
    """Parse a public bundle, recomputing the key id; a mismatching stored kid is refused."""
    doc = _document(data, source, PUBLIC_TYPE)
    try:
        bundle = PublicBundle(
            doc["name"],
            Ed25519PublicKey.from_public_bytes(_raw32(doc, "ed25519", source)),
            X25519PublicKey.from_public_bytes(_raw32(doc, "x25519", source)),
        )
    except ValueError as exc:
        raise KeyFileError(f"{source}: invalid public key: {exc}") from None
    stored = _field(doc, "kid", source)
    if stored != bundle.kid:
        raise KeyFileError(
            f"{source}: key id {stored!r} does not match the keys in the file "
            f"(they give {bundle.kid!r}); the bundle was altered or assembled by hand"
        )
    return bundle


def parse_private_key(data: bytes, source: str = "<key>") -> PrivateKey:
    doc = _document(data, source, PRIVATE_TYPE)
    try:
        return PrivateKey.from_raw(
            doc["name"], _raw32(doc, "ed25519", source), _raw32(doc, "x25519", source)
        )
    except ValueError as exc:
        raise KeyFileError(f"{source}: invalid private key: {exc}") from None


# ------------------------------------------------------------------------------ files


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such {what} file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a {what} file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read {what} file: {exc.strerror}") from None


def load_public_bundle(path: str | os.PathLike[str]) -> PublicBundle:
    p = Path(path)
    return parse_public_bundle(_read(p, "public bundle"), str(p))


def load_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Load a private key file, refusing one that group or others can access."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
    except FileNotFoundError:
        raise KeyFileError(f"{p}: no such private key file") from None
    except OSError as exc:
        raise KeyFileError(f"{p}: cannot read private key file: {exc.strerror}") from None
    if stat.S_ISREG(mode) and mode & 0o077:
        raise KeyFileError(
            f"{p}: private key is accessible by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); fix it with: chmod 600 {p}"
        )
    return parse_private_key(_read(p, "private key"), str(p))


def _create(path: Path, data: bytes, mode: int) -> None:
    """Write a new file with ``mode`` (O_EXCL: never an existing one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_new(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``data`` to a new file with ``mode``; with ``force``, replace atomically."""
    if not force:
        _create(path, data, mode)
        return
    tmp = path.with_name(f".{path.name}.{os.urandom(6).hex()}.tmp")
    _create(tmp, data, mode)
    os.replace(tmp, path)


def write_key_files(
    key: PrivateKey, out_dir: str | os.PathLike[str], *, force: bool = False
) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0600) and ``NAME.pub`` into ``out_dir``; return their paths.

    Without ``force`` nothing is written if either file exists.
    """
    directory = Path(out_dir)
    key_path = directory / f"{key.name}.key"
    pub_path = directory / f"{key.name}.pub"
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: no such directory")
    if not force:
        for existing in (key_path, pub_path):
            if existing.exists():
                raise KeyFileError(
                    f"{existing}: already exists; refusing to overwrite a key "
                    "(use --force to replace it, which makes the old key useless)"
                )
    try:
        _write_new(key_path, key.to_json(), 0o600, force)
        _write_new(pub_path, key.public.to_json(), 0o644, force)
    except FileExistsError as exc:
        raise KeyFileError(f"{exc.filename}: already exists; refusing to overwrite") from None
    except OSError as exc:
        raise KeyFileError(f"{exc.filename or directory}: cannot write: {exc.strerror}") from None
    return key_path, pub_path
