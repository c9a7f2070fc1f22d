"""Fixtures for the proxy tests: one proxy CA per session, and a loopback upstream on
127.0.0.2 (outside NO_PROXY's loopback names) whose CA only the forwarder is given."""

from __future__ import annotations

import hashlib
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.relay.harness import Upstream, serve_upstream


@pytest.fixture(autouse=True)
def _home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """One proxy CA for the session, as one user would have."""
    monkeypatch.setenv("WONDERS_HOME", str(tmp_path_factory.getbasetemp() / "wonders-home"))


@pytest.fixture
async def upstream(tmp_path: Path) -> AsyncIterator[Upstream]:
    async with serve_upstream(tmp_path, host="127.0.0.2") as server:
        yield server


def download_child(size: int) -> str:
    """A child program that downloads /bytes/<size>, checks nothing itself, and prints
    the byte count, the SHA-256 and its parent's (the proxy's) peak RSS in MiB."""
    return textwrap.dedent(f"""
        import hashlib, os, requests, sys
        digest, total = hashlib.sha256(), 0
        with requests.get(sys.argv[1] + "/bytes/{size}", stream=True) as r:
            for chunk in r.iter_content(1024 * 1024):
                digest.update(chunk)
                total += len(chunk)
        status = open(f"/proc/{{os.getppid()}}/status").read()
        peak = next(l for l in status.splitlines() if l.startswith("VmHWM:")).split()[1]
        print(total, digest.hexdigest(), int(peak) // 1024)
    """)


def pattern_sha256(size: int) -> str:
    """The SHA-256 of what the upstream's /bytes/<size> sends (a repeated 1 MiB block)."""
    digest = hashlib.sha256()
    block = bytes(range(256)) * 4096
    for _ in range(size // len(block)):
        digest.update(block)
    digest.update(block[: size % len(block)])
    return digest.hexdigest()
