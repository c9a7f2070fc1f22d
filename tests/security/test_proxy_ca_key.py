"""Hardening 13: the CA key check covers every file that holds the key.

mitmproxy writes the proxy CA's private key twice: ``mitmproxy-ca.pem`` and
``mitmproxy-ca.p12``. Only the PEM was checked, so a world-readable PKCS#12 let any local
user read the key and impersonate any host to the owner's jobs. Both are checked now, and
the directory that holds them must be the owner's alone.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.proxy.test_wonder_run import local, wonder_run
from tests.relay.harness import Upstream, serve_upstream
from wonders.errors import ConfigError
from wonders.proxy.ca import check_ca_key

#: the files mitmproxy writes the CA's private key to
CA_KEY_FILES = ("mitmproxy-ca.pem", "mitmproxy-ca.p12")


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A CA of this test's own: these tests change its modes."""
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path / "home"))


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


def _ca() -> Path:
    return Path(os.environ["WONDERS_HOME"]) / "proxy-ca"


@pytest.mark.slow  # wonder-run as a process
async def test_a_readable_p12_stops_wonder_run_before_the_command(
    upstream: Upstream, tmp_path: Path
) -> None:
    made = await wonder_run(*local(upstream), "true")
    assert made.code == 0, made.err
    p12 = _ca() / "mitmproxy-ca.p12"
    assert p12.stat().st_mode & 0o777 == 0o600  # as mitmproxy made it
    assert (_ca() / "mitmproxy-ca.pem").stat().st_mode & 0o777 == 0o600
    p12.chmod(0o644)
    marker = tmp_path / "ran"
    done = await wonder_run(*local(upstream), "touch", str(marker))
    assert done.code == 2, done.err
    assert f"chmod 600 {p12}" in done.err
    assert not marker.exists()


@pytest.mark.parametrize("name", CA_KEY_FILES)
@pytest.mark.parametrize("mode", [0o640, 0o604, 0o660, 0o602, 0o704, 0o440], ids=oct)
def test_every_key_file_and_every_lax_mode_is_refused(
    tmp_path: Path, name: str, mode: int
) -> None:
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o700)
    for other in CA_KEY_FILES:
        (directory / other).write_bytes(b"key")
        (directory / other).chmod(0o600)
    check_ca_key(directory)  # as made: accepted
    (directory / name).chmod(mode)
    with pytest.raises(ConfigError, match=f"chmod 600 {directory / name}"):
        check_ca_key(directory)


def test_the_public_certificates_may_be_readable_while_the_keys_may_not(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o700)
    for key in CA_KEY_FILES:
        (directory / key).write_bytes(b"key")
        (directory / key).chmod(0o600)
    for public in ("mitmproxy-ca-cert.pem", "mitmproxy-ca-cert.p12", "mitmproxy-ca-cert.cer"):
        (directory / public).write_bytes(b"cert")
        (directory / public).chmod(0o644)
    check_ca_key(directory)  # accepted, as wonder-run makes it
    (directory / CA_KEY_FILES[0]).chmod(0o644)  # the same mode on a key is refused
    with pytest.raises(ConfigError, match="readable by group or others"):
        check_ca_key(directory)


@pytest.mark.parametrize("mode", [0o770, 0o702, 0o777], ids=oct)
def test_a_directory_others_can_write_is_refused(tmp_path: Path, mode: int) -> None:
    """Whoever can write there can swap the key for one they know."""
    directory = tmp_path / "ca"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(ConfigError, match="chmod 700"):
        check_ca_key(directory)


def test_a_key_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    directory.mkdir(mode=0o700)
    (directory / "mitmproxy-ca.p12").mkdir()
    with pytest.raises(ConfigError, match="not a regular file"):
        check_ca_key(directory)
