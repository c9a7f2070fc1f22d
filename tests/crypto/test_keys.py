"""Key generation, key files and public bundles."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from wonders.crypto import (
    PrivateKey,
    key_id,
    load_private_key,
    load_public_bundle,
    parse_public_bundle,
    write_key_files,
)
from wonders.errors import KeyFileError


def test_key_files_round_trip_with_private_mode_0600(tmp_path: Path) -> None:
    key = PrivateKey.generate("gpu01")
    key_path, pub_path = write_key_files(key, tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    loaded = load_private_key(key_path)
    bundle = load_public_bundle(pub_path)
    assert loaded.kid == key.kid == bundle.kid
    assert bundle.name == "gpu01"
    assert bundle.signing_bytes == key.public.signing_bytes
    assert bundle.encryption_bytes == key.public.encryption_bytes


def test_private_key_mode_ignores_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        key_path, _ = write_key_files(PrivateKey.generate("a"), tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_existing_key_is_never_overwritten_without_force(tmp_path: Path) -> None:
    first = PrivateKey.generate("gpu01")
    key_path, pub_path = write_key_files(first, tmp_path)
    before = key_path.read_bytes(), pub_path.read_bytes()
    with pytest.raises(KeyFileError, match=r"already exists.*--force"):
        write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    assert (key_path.read_bytes(), pub_path.read_bytes()) == before


def test_existing_pub_alone_also_blocks_and_nothing_is_written(tmp_path: Path) -> None:
    (tmp_path / "gpu01.pub").write_text("something else")
    with pytest.raises(KeyFileError, match=r"gpu01\.pub: already exists"):
        write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    assert not (tmp_path / "gpu01.key").exists()


def test_force_replaces_both_files_keeping_mode_0600(tmp_path: Path) -> None:
    write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    second = PrivateKey.generate("gpu01")
    key_path, pub_path = write_key_files(second, tmp_path, force=True)
    assert load_private_key(key_path).kid == second.kid
    assert load_public_bundle(pub_path).kid == second.kid
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o601])
def test_private_key_readable_by_others_is_refused_with_the_fix(tmp_path: Path, mode: int) -> None:
    key_path, _ = write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    key_path.chmod(mode)
    with pytest.raises(KeyFileError) as info:
        load_private_key(key_path)
    message = str(info.value)
    assert str(key_path) in message
    assert f"chmod 600 {key_path}" in message
    assert "\n" not in message


def test_bundle_with_a_wrong_key_id_is_refused(tmp_path: Path) -> None:
    _, pub_path = write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    doc = json.loads(pub_path.read_text())
    doc["kid"] = key_id(b"\x00" * 32, b"\x00" * 32)
    with pytest.raises(KeyFileError, match="does not match the keys"):
        parse_public_bundle(json.dumps(doc).encode(), "gpu01.pub")


def test_bundle_with_a_swapped_key_is_refused(tmp_path: Path) -> None:
    """Replacing one public key (keeping the stored kid) changes the computed kid."""
    _, pub_path = write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    other = json.loads(PrivateKey.generate("evil").public.to_json())
    doc = json.loads(pub_path.read_text())
    doc["x25519"] = other["x25519"]
    with pytest.raises(KeyFileError, match="does not match the keys"):
        parse_public_bundle(json.dumps(doc).encode(), "gpu01.pub")


def _valid_pub() -> dict[str, object]:
    doc: dict[str, object] = json.loads(PrivateKey.generate("gpu01").public.to_json())
    return doc


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"\xff\xfe", "not JSON", id="binary"),
        pytest.param(b"[1, 2]", "not a JSON object", id="array"),
        pytest.param(b'{"type": "ssh-rsa"}', "expected a wonders-public-key", id="foreign"),
        pytest.param({**_valid_pub(), "version": 2}, "unsupported key file version", id="version"),
        pytest.param({**_valid_pub(), "ed25519": "!!"}, "not valid base64", id="base64"),
        pytest.param({**_valid_pub(), "x25519": "AAAA"}, "must hold 32 bytes", id="short-key"),
        pytest.param({**_valid_pub(), "name": "../etc"}, "invalid name", id="bad-name"),
        pytest.param({**_valid_pub(), "kid": None}, "non-string field 'kid'", id="no-kid"),
    ],
)
def test_malformed_bundle_gives_one_line(content: bytes | dict[str, object], expected: str) -> None:
    data = json.dumps(content).encode() if isinstance(content, dict) else content
    with pytest.raises(KeyFileError, match=expected) as info:
        parse_public_bundle(data, "x.pub")
    assert str(info.value).startswith("x.pub: ")
    assert "\n" not in str(info.value)


def test_swapped_key_files_are_named(tmp_path: Path) -> None:
    key_path, pub_path = write_key_files(PrivateKey.generate("gpu01"), tmp_path)
    with pytest.raises(KeyFileError, match="did you swap"):
        load_public_bundle(key_path)
    pub_path.chmod(0o600)
    with pytest.raises(KeyFileError, match="did you swap"):
        load_private_key(pub_path)


def test_a_missing_key_file_or_directory_is_named_in_the_error(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match="no such private key file"):
        load_private_key(tmp_path / "nope.key")
    with pytest.raises(KeyFileError, match="no such public bundle file"):
        load_public_bundle(tmp_path / "nope.pub")
    with pytest.raises(KeyFileError, match="no such directory"):
        write_key_files(PrivateKey.generate("a"), tmp_path / "missing")


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "x" * 65, ".hidden"])
def test_invalid_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="invalid name"):
        PrivateKey.generate(name)


def test_key_id_depends_on_both_keys() -> None:
    a, b = PrivateKey.generate("a"), PrivateKey.generate("b")
    mixed = key_id(a.public.signing_bytes, b.public.encryption_bytes)
    assert len({a.kid, b.kid, mixed}) == 3
    assert len(a.kid) == 32
