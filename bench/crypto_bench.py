"""Seal and open a large body as a segment stream, and report throughput and peak memory.

    python bench/crypto_bench.py [--size-mib 256] [--segment-mib 8] [--repeat 3] [--json FILE]

One process, one thread (one core). The body is produced segment by segment and each
sealed segment is opened as soon as it is made, as the relay does, so memory should stay
at a few segments whatever the body size. Figures: seal and open rates alone, the combined
rate (body bytes / (seal time + open time)), the best of --repeat runs, and the peak
resident memory of the process over its baseline before the first segment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import time
from dataclasses import asdict, dataclass

from wonders.crypto import (
    PrivateKey,
    RequestHead,
    new_request_id,
    open_request,
    seal_request,
)

MIB = 1024 * 1024


@dataclass
class Run:
    seal_s: float
    open_s: float
    body_bytes: int


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def one_run(size: int, segment: int) -> Run:
    client, forwarder = PrivateKey.generate("gpu01"), PrivateKey.generate("fw1")
    now = time.time()
    sealed = seal_request(RequestHead("PUT", "https://hf.co/upload"),
                          request_id=new_request_id(now), sender=client,
                          recipient=forwarder.public, now=now, body=None)
    assert sealed.body is not None
    opened = open_request(sealed.data, recipient=forwarder, senders={client.kid: client.public},
                          now=now)
    opener = opened.body_opener()
    block = os.urandom(segment)
    check = hashlib.sha256()
    seal_s = open_s = 0.0
    done = 0
    while done < size:
        chunk = block[: min(segment, size - done)]
        t0 = time.perf_counter()
        stored = sealed.body.seal(chunk)
        t1 = time.perf_counter()
        plain = opener.feed(stored)
        t2 = time.perf_counter()
        seal_s, open_s = seal_s + (t1 - t0), open_s + (t2 - t1)
        check.update(plain)
        done += len(chunk)
    t0 = time.perf_counter()
    trailer_segment = sealed.body.finish()
    t1 = time.perf_counter()
    opener.feed(trailer_segment)
    trailer = opener.close()
    t2 = time.perf_counter()
    seal_s, open_s = seal_s + (t1 - t0), open_s + (t2 - t1)
    if trailer.length != size or trailer.sha256 != check.digest():
        raise SystemExit("benchmark body did not round-trip")
    return Run(seal_s, open_s, size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--segment-mib", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if not 1 <= args.segment_mib <= 8:
        parser.error("--segment-mib must be 1 to 8 (the protocol's segment limit)")

    size, segment = args.size_mib * MIB, args.segment_mib * MIB
    baseline = peak_rss_mib()
    runs = [one_run(size, segment) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r.seal_s + r.open_s)
    mb = size / 1e6
    figures = {
        "body_mib": args.size_mib,
        "segment_mib": args.segment_mib,
        "repeat": args.repeat,
        "seal_mb_s": round(mb / best.seal_s, 1),
        "open_mb_s": round(mb / best.open_s, 1),
        "seal_plus_open_mb_s": round(mb / (best.seal_s + best.open_s), 1),
        "baseline_rss_mib": round(baseline, 1),
        "peak_rss_mib": round(peak_rss_mib(), 1),
        "peak_over_baseline_mib": round(peak_rss_mib() - baseline, 1),
        "python": sys.version.split()[0],
        "runs": [asdict(r) for r in runs],
    }
    print(f"body {args.size_mib} MiB in {args.segment_mib} MiB segments, best of {args.repeat}")
    print(f"  seal          {figures['seal_mb_s']:>8} MB/s")
    print(f"  open          {figures['open_mb_s']:>8} MB/s")
    print(f"  seal + open   {figures['seal_plus_open_mb_s']:>8} MB/s   (target >= 300)")
    print(f"  peak RSS      {figures['peak_rss_mib']:>8} MiB  "
          f"({figures['peak_over_baseline_mib']} MiB over the {figures['baseline_rss_mib']} MiB "
          "baseline; the body is "
          f"{args.size_mib} MiB)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
