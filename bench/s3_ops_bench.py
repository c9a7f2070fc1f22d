"""What one S3 call costs on moto's server: the floor under the relay's S3 latency.

    python bench/s3_ops_bench.py

Starts moto's server (its own process, free loopback port) and times 60 sequential calls
of each kind through wonders' S3Store (aiobotocore): PUT, create-only PUT, GET, DELETE,
and LIST of a prefix holding 60 keys and 0 keys. A relayed small GET makes six calls in
sequence (client PUT; forwarder LIST, GET head with PUT claim, PUT response; client
LIST, GET), plus the two polling waits.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time

import boto3

from wonders.mailbox import S3Store

MOTO = ("import sys\nfrom moto.server import ThreadedMotoServer\n"
        "s = ThreadedMotoServer(ip_address='127.0.0.1', port=0, verbose=False)\n"
        "s.start(); print(s.get_host_and_port()[1], flush=True); sys.stdin.read()")


async def measure(endpoint: str) -> dict[str, float]:
    medians: dict[str, float] = {}
    async with S3Store("ops-bench", "m", endpoint_url=endpoint) as store:

        async def timed(name: str, call: object) -> None:
            samples = []
            for n in range(60):
                started = time.perf_counter()
                await call(n)  # type: ignore[operator]
                samples.append((time.perf_counter() - started) * 1000)
            medians[name] = statistics.median(samples)

        async def listing(n: int) -> None:
            [k async for k in store.list("k/")]

        await timed("PUT", lambda n: store.put(f"k/{n}", b"x" * 2000))
        await timed("PUT create-only", lambda n: store.put(f"c/{n}", b"x" * 2000,
                                                          create_only=True))
        await timed("GET", lambda n: store.get(f"k/{n}"))
        await timed("LIST, 60 keys", listing)
        await timed("DELETE", lambda n: store.delete(f"k/{n}"))
        await timed("LIST, 0 keys", listing)
    return medians


def main() -> int:
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    moto = subprocess.Popen([sys.executable, "-c", MOTO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert moto.stdout is not None
    assert moto.stdin is not None
    try:
        endpoint = f"http://127.0.0.1:{int(moto.stdout.readline())}"
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="ops-bench")
        for name, ms in asyncio.run(measure(endpoint)).items():
            print(f"{name:<18} {ms:6.1f} ms (median of 60)")
    finally:
        moto.stdin.close()
        moto.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
