"""Clock skew between the GPU side and the forwarder: ±4 minutes works, more is a clear
error. The forwarder's clock is injected; everything else is real (store, upstream, TLS)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.relay.harness import FAST, Keys, Upstream, client_for, make_keys, running_forwarder
from wonders.crypto import write_key_files
from wonders.errors import NoForwarder
from wonders.mailbox import DirectoryStore
from wonders.relay.records import Heartbeat, Liveness

# heartbeats every 0.5 s: a skewed heartbeat is believed once it is seen to move
SETTINGS = dataclasses.replace(FAST, heartbeat_interval=0.5)


@pytest.fixture
def keys(tmp_path: Path, upstream: Upstream) -> Keys:
    return make_keys(tmp_path, int(upstream.url.rsplit(":", 1)[1]))


def _off_by(offset: float) -> Callable[[], float]:
    return lambda: time.time() + offset


@pytest.mark.parametrize("offset", [-240.0, 240.0])
async def test_four_minutes_either_way_works(
    tmp_path: Path, keys: Keys, upstream: Upstream, offset: float
) -> None:
    store = DirectoryStore(tmp_path)
    async with running_forwarder(store, keys, upstream, SETTINGS, clock=_off_by(offset)), \
            client_for(store, keys) as client:
        for method, body in (("GET", b""), ("POST", b"x" * 1000), ("PUT", b"y" * 400_000)):
            async with await client.request(method, f"{upstream.url}/echo",
                                            body=body) as response:
                assert response.status == 200
                await response.read()
        async with await client.request("GET", f"{upstream.url}/bytes/300000") as response:
            assert len(await response.read()) == 300000
    assert upstream.hits["/echo"] == 3


async def test_a_forwarder_clock_far_behind_is_named(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    store = DirectoryStore(tmp_path)
    async with running_forwarder(store, keys, upstream, SETTINGS, clock=_off_by(-400)), \
            client_for(store, keys) as client:
        with pytest.raises(NoForwarder) as raised:
            await client.request("GET", f"{upstream.url}/echo")
    assert "is 400 s behind this machine's clock, more than the 300 s allowed" in str(
        raised.value)
    assert "check the clocks" in str(raised.value)
    assert upstream.hits["/echo"] == 0


async def test_a_forwarder_clock_far_ahead_is_named(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    store = DirectoryStore(tmp_path)
    async with running_forwarder(store, keys, upstream, SETTINGS, clock=_off_by(400)), \
            client_for(store, keys) as client:
        with pytest.raises(NoForwarder) as raised:
            await client.request("GET", f"{upstream.url}/echo")
    assert "is 400 s ahead of this machine's clock, more than the 300 s allowed" in str(
        raised.value)
    assert upstream.hits["/echo"] == 0


# --------------------------------------------------------------------- the judgement


def _beat(at: float, instance: str = "i1") -> Heartbeat:
    return Heartbeat("fw1", instance, "k", "0", 0.0, at, 5.0)


class _Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_liveness_believes_movement_not_clocks() -> None:
    mono = _Monotonic()
    live = Liveness(stale_after=30, skew=300, monotonic=mono)
    now = 1_800_000_000.0
    assert live.judge(_beat(now - 5), now) == "alive"  # clocks agree
    assert live.judge(_beat(now - 240, "i2"), now) == "pending"  # 4 min off: watch it
    mono.now += 5
    assert live.judge(_beat(now - 235, "i2"), now + 5) == "alive"  # it moved
    mono.now += 31
    assert live.judge(_beat(now - 235, "i2"), now + 36) == "dead"  # then stopped
    assert live.judge(_beat(now - 5), now + 36) == "dead"  # the first one never moved
    assert live.judge(_beat(now - 400, "i3"), now + 36) == "dead"  # beyond the skew
    assert live.judge(_beat(now + 200, "i4"), now + 36) == "pending"  # ahead, within it
    mono.now += 31
    assert live.judge(_beat(now + 200, "i4"), now + 67) == "dead"  # never moved


@pytest.mark.slow  # `wonders status` as a process
async def test_status_judges_a_skewed_heartbeat_as_the_clients_do(
    tmp_path: Path, keys: Keys, upstream: Upstream
) -> None:
    """A forwarder whose clock is 100 s behind is alive for the clients (its heartbeat
    moves); ``wonders status`` used its own 30 s rule and called it stale."""
    import asyncio
    import json
    import sys

    store = DirectoryStore(tmp_path / "mailbox")
    store.root.mkdir()
    write_key_files(keys.forwarder, tmp_path / "keys", force=True)
    config = tmp_path / "client.toml"
    config.write_text(f'key = "keys/gpu01.key"\nforwarder = "keys/fw.pub"\n'
                      f'mailbox = "{store.url}"\n')
    wonders = str(Path(sys.executable).parent / "wonders")
    async with running_forwarder(store, keys, upstream, SETTINGS, clock=_off_by(-100)):
        done = await asyncio.create_subprocess_exec(
            wonders, "status", "--config", str(config), "--json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(done.communicate(), 60)
    assert done.returncode == 0, out.decode() + err.decode()
    report = json.loads(out)
    assert [(f["id"], f["state"]) for f in report["forwarders"]] == [("fw-test", "alive")]
