"""The S3 endpoint stops for 10 s during traffic: both sides ride it out, every request
ends (an answer, or a 504-class timeout), no process dies, no audit record is lost.

moto's server runs in this process so that it can be stopped (connections refused) and
started again on the same port with its buckets intact (moto keeps them in memory).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from tests.eventually import eventually
from tests.relay.harness import Upstream
from wonders.audit import batch_keys, read_batches
from wonders.crypto import PrivateKey, load_private_key, load_public_bundle, write_key_files
from wonders.errors import RelayError, StoreError
from wonders.mailbox import S3Store
from wonders.relay.client import RelayClient

WONDERS = str(Path(sys.executable).parent / "wonders")
OUTAGE = 10.0


class Endpoint:
    def __init__(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        self.port = self.server.get_host_and_port()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()


@pytest.fixture
def endpoint() -> Iterator[Endpoint]:
    served = Endpoint()
    yield served
    served.stop()


@pytest.mark.slow
async def test_the_endpoint_stops_for_ten_seconds_during_traffic(
    tmp_path: Path, upstream: Upstream, endpoint: Endpoint
) -> None:
    boto3.client("s3", endpoint_url=endpoint.url, region_name="us-east-1").create_bucket(
        Bucket="outage")
    port = upstream.url.rsplit(":", 1)[1]
    for name in ("fw1", "gpu01"):
        write_key_files(PrivateKey.generate(name), tmp_path)
    (tmp_path / "policy.toml").write_text(
        '[clients.gpu01]\nbundle = "gpu01.pub"\nallow = ["localhost"]\n'
        f'allow_private = ["127.0.0.0/8"]\nports = [{port}]\nrate_per_minute = "unlimited"\n')
    (tmp_path / "forwarder.toml").write_text(
        f'id = "fw1"\nkey = "fw1.key"\npolicy = "policy.toml"\nmailbox = "s3://outage"\n'
        f'endpoint = "{endpoint.url}"\nupstream_ca = "{upstream.ca_file}"\n'
        "[tuning]\npoll_fast = 0.01\npoll_slow = 0.2\nheartbeat_interval = 1.0\n"
        "stale_after = 30.0\n")
    log = (tmp_path / "forwarder.log").open("wb")
    forwarder = await asyncio.create_subprocess_exec(
        WONDERS, "forward", "--config", str(tmp_path / "forwarder.toml"), stdout=log,
        stderr=log)
    key = load_private_key(tmp_path / "gpu01.key")
    outcomes: dict[int, str] = {}
    took: dict[int, float] = {}
    try:
        async with S3Store("outage", endpoint_url=endpoint.url) as store, \
                RelayClient(store, key, load_public_bundle(tmp_path / "fw1.pub"),
                            poll_fast=0.01, poll_slow=0.2, heartbeat_check=0.5) as client:
            async def alive() -> bool:
                assert forwarder.returncode is None, (tmp_path / "forwarder.log").read_text()
                return await client.forwarder_alive(refresh=True)

            await eventually(alive, 60, what="the forwarder's first heartbeat",
                             explain=(tmp_path / "forwarder.log").read_text)

            async def one(n: int) -> None:
                started = time.monotonic()
                try:
                    async with await client.request("GET", f"{upstream.url}/echo/{n}",
                                                    timeout=90) as response:
                        await response.read()
                        outcomes[n] = str(response.status)
                except (RelayError, StoreError) as exc:
                    outcomes[n] = type(exc).__name__
                took[n] = time.monotonic() - started

            async def traffic() -> None:
                tasks = []
                for n in range(60):  # one every 0.25 s: before, during and after
                    tasks.append(asyncio.create_task(one(n)))
                    await asyncio.sleep(0.25)
                await asyncio.gather(*tasks)

            flowing = asyncio.create_task(traffic())
            await asyncio.sleep(3)
            endpoint.stop()
            stopped_at = time.monotonic()
            await asyncio.sleep(OUTAGE)  # the outage itself
            endpoint.start()
            await asyncio.wait_for(flowing, 240)
            assert time.monotonic() - stopped_at >= OUTAGE
        assert forwarder.returncode is None, "the forwarder died"
    finally:
        if forwarder.returncode is None:
            forwarder.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(forwarder.wait(), 60)
        log.close()
    output = (tmp_path / "forwarder.log").read_text()
    assert code == 0, output
    assert len(outcomes) == 60
    answered = {n for n, outcome in outcomes.items() if outcome == "200"}
    # the outage was felt: requests sent while it lasted waited it out
    assert max(took.values()) >= OUTAGE * 0.7, took
    assert set(outcomes.values()) <= {"200", "RelayTimeout"}, outcomes
    assert len(answered) >= 40, outcomes  # the ones before and after the outage at least
    # every request the forwarder executed is in the audit log, once
    async with S3Store("outage", endpoint_url=endpoint.url) as store:
        keys = await batch_keys(store, None, time.time())
        records = [r async for b in read_batches(store, keys, load_public_bundle(
            tmp_path / "fw1.pub")) for r in b.records]  # type: ignore[union-attr]
    paths = [r["path"] for r in records if r.get("status") == 200]
    assert len(paths) == len(set(paths))
    assert {int(p.rsplit("/", 1)[1]) for p in paths} >= answered
    assert upstream.hits.total() == len(paths)
