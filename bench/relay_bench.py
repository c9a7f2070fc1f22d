"""Benchmark the relay against direct requests to the same loopback upstream.

    python bench/relay_bench.py [--quick] [--json FILE]

In one run on one machine it starts a loopback HTTPS upstream (its own process), then
measures, with the same client program run directly and through ``wonder-run`` with a
``wonders forward`` process (directory mailbox, and S3 on moto's server):

- small-GET latency p50 / p90 / p99 (sequential requests);
- throughput with 1, 16 and 64 concurrent clients (requests per second);
- a large download (1 GiB, 128 MiB with --quick): MB/s and the peak RSS of the proxy
  (wonder-run) and of the forwarder;
- SSE at 400, 100, 30 and 10 ms between events (an LLM's token stream): the lag from the
  upstream writing an event to the client reading it, median and max, and whether every
  event arrived.

It prints a table and, with --json, writes the figures. Figures depend on the machine and
what else runs on it; compare the relay with the direct column from the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent

# ----------------------------------------------------------------------- the upstream

UPSTREAM = r'''
import asyncio, ssl, sys, time, trustme
from aiohttp import web

async def small(request):
    return web.Response(body=b"x" * 100)

async def blob(request):
    size = int(request.match_info["size"])
    response = web.StreamResponse()
    response.content_length = size
    await response.prepare(request)
    block = bytes(range(256)) * 4096
    sent = 0
    while sent < size:
        piece = block[: min(len(block), size - sent)]
        await response.write(piece)
        sent += len(piece)
    return response

async def sse(request):
    count, gap = int(request.query.get("n", "10")), float(request.query.get("gap", "0.2"))
    response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await response.prepare(request)
    for _ in range(count):
        await asyncio.sleep(gap)  # the benchmark's event cadence, not synchronisation
        await response.write(f"data: {time.time():.6f}\n\n".encode())
    return response

async def main():
    ca = trustme.CA()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.2").configure_cert(ctx)
    ca.cert_pem.write_to_path(sys.argv[1])
    app = web.Application()
    app.router.add_get("/small", small)
    app.router.add_get("/bytes/{size}", blob)
    app.router.add_get("/sse", sse)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0, ssl_context=ctx)
    await site.start()
    print(site._server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
'''

# ------------------------------------------------------------------------ the client

CLIENT = r'''
import asyncio, json, os, statistics, sys, time, aiohttp

base, plan = sys.argv[1], json.loads(sys.argv[2])

async def main():
    out = {}
    async with aiohttp.ClientSession(trust_env=True) as s:
        async def get(path):
            async with s.get(base + path) as r:
                await r.read()
                assert r.status == 200, r.status
        for _ in range(5):
            await get("/small")  # warm up: connections, TLS, the proxy's certificates
        samples = []
        for _ in range(plan["latency"]):
            t0 = time.perf_counter()
            await get("/small")
            samples.append((time.perf_counter() - t0) * 1000)
        if len(samples) >= 2:
            q = statistics.quantiles(samples, n=100)
            out["latency_ms"] = {"p50": q[49], "p90": q[89], "p99": q[98]}
        out["throughput_rps"] = {}
        for workers in plan["concurrency"]:
            count = plan["requests"]
            queue = iter(range(count))
            async def worker():
                for _ in queue:
                    await get("/small")
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(workers)))
            out["throughput_rps"][str(workers)] = count / (time.perf_counter() - t0)
        if plan["download"]:
            t0, total = time.perf_counter(), 0
            async with s.get(f"{base}/bytes/{plan['download']}") as r:
                async for chunk in r.content.iter_chunked(1 << 20):
                    total += len(chunk)
            assert total == plan["download"], total
            out["download_mb_s"] = total / (time.perf_counter() - t0) / 1e6
        out["sse"] = {}
        for gap in plan.get("sse", []):  # events this far apart, for about sse_seconds
            count, delays = max(10, round(plan["sse_seconds"] / gap)), []
            async with s.get(f"{base}/sse?n={count}&gap={gap}") as r:
                async for line in r.content:
                    if line.startswith(b"data: "):
                        delays.append((time.time() - float(line[6:])) * 1000)
            out["sse"][str(gap)] = {"median": statistics.median(delays), "max": max(delays),
                                    "events": len(delays), "sent": count}
        if plan.get("after_idle"):
            await asyncio.sleep(plan["after_idle"])  # the quiet time being measured
            t0 = time.perf_counter()
            await get("/small")
            out["after_idle_ms"] = (time.perf_counter() - t0) * 1000
    status = open(f"/proc/{os.getppid()}/status").read()
    out["parent_peak_mib"] = int(next(l for l in status.splitlines()
                                      if l.startswith("VmHWM:")).split()[1]) / 1024
    print(json.dumps(out))

asyncio.run(main())
'''


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _peak_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(x for x in status.splitlines() if x.startswith("VmHWM:")).split()[1]) / 1024


@contextlib.contextmanager
def _process(args: list[str], **kwargs: Any) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(args, text=True, **kwargs)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


#: moto's server behind a WSGI middleware that counts S3 calls by type; a line on stdin
#: asks for the counts so far, EOF stops it.
MOTO = r'''
import json, sys, threading
from collections import Counter
from urllib.parse import parse_qs
from werkzeug.serving import make_server
from moto.server import DomainDispatcherApplication, create_backend_app

counts, lock = Counter(), threading.Lock()
inner = DomainDispatcherApplication(create_backend_app)

def kind(environ):
    method, query = environ["REQUEST_METHOD"], parse_qs(environ.get("QUERY_STRING", ""))
    path = environ.get("PATH_INFO", "/").strip("/")
    if method == "GET" and "/" not in path:
        return "LIST"
    if method == "POST" and "delete" in query:
        return "DELETE (batch)"
    return method

def app(environ, start_response):
    with lock:
        counts[kind(environ)] += 1
    return inner(environ, start_response)

server = make_server("127.0.0.1", 0, app, threaded=True)
threading.Thread(target=server.serve_forever, daemon=True).start()
print(server.server_address[1], flush=True)
for _ in sys.stdin:
    with lock:
        print(json.dumps(counts), flush=True)
server.shutdown()
'''


def _moto() -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", MOTO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    return proc, f"http://127.0.0.1:{int(proc.stdout.readline())}"


def _s3_calls(moto: subprocess.Popen[str]) -> dict[str, int]:
    """S3 calls moto has answered so far, by type."""
    assert moto.stdin is not None
    assert moto.stdout is not None
    moto.stdin.write("\n")
    moto.stdin.flush()
    counts: dict[str, int] = json.loads(moto.stdout.readline())
    return counts


#: AWS list prices, dollars per 1,000 calls (DELETE is free).
PRICES = {"PUT": 0.005, "POST": 0.005, "LIST": 0.005, "DELETE (batch)": 0.005, "GET": 0.0004,
          "HEAD": 0.0004}


def _s3_costs(prefix: list[str], base: str, env: dict[str, str],
              moto: subprocess.Popen[str], quick: bool) -> dict[str, Any]:
    """S3 calls per request one at a time and under load (16 concurrent), and per second
    while a forwarder and a wonder-run wait idle, from moto's own count."""
    out: dict[str, Any] = {}
    n = 50 if quick else 100
    for label, sequential, concurrent in (("sequential", n, 0), ("concurrent", 0, 4 * n)):
        plan = {"latency": sequential, "requests": concurrent,
                "concurrency": [16] if concurrent else [], "download": 0}
        before = _s3_calls(moto)
        _run_client(prefix, base, plan, env)
        after = _s3_calls(moto)
        requests = 5 + sequential + concurrent  # with the client's warm-up
        per = {k: (after.get(k, 0) - before.get(k, 0)) / requests for k in after}
        out[label] = {"per_request": per, "total": sum(per.values()),
                      "dollars_per_million": sum(v * PRICES.get(k, 0) for k, v in per.items())
                      * 1000}
    # idle: a wonder-run waiting in a command that makes no request, counted from 5 s after
    # the last request (once both sides' polling has backed off) for 10 s
    waiting = subprocess.Popen([*prefix, "sleep", "20"], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    time.sleep(5)  # the quiet time before counting, part of what is measured
    before, t0 = _s3_calls(moto), time.monotonic()
    time.sleep(10)
    after, spent = _s3_calls(moto), time.monotonic() - t0
    waiting.wait(60)
    calls = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    out["idle_per_second"] = sum(calls.values()) / spent
    out["idle_dollars_per_month"] = sum(v * PRICES.get(k, 0) for k, v in calls.items()) / 1000 \
        / spent * 30 * 86400
    return out


def _run_client(prefix: list[str], base: str, plan: dict[str, Any], env: dict[str, str]) -> (
    dict[str, Any]
):
    done = subprocess.run([*prefix, sys.executable, "-c", CLIENT, base, json.dumps(plan)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise SystemExit(f"client failed:\n{done.stdout}\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _deployment(work: Path, port: int, ca: Path, mailbox: str, endpoint: str | None) -> Path:
    wonders = str(BIN / "wonders")
    for name in ("fw1", "gpu01"):
        subprocess.run([wonders, "keygen", name, "--out", str(work), "--force"], check=True,
                       capture_output=True)
    (work / "policy.toml").write_text(
        '[clients.gpu01]\nbundle = "gpu01.pub"\nallow = ["127.0.0.2"]\n'
        f'allow_private = ["127.0.0.2/32"]\nports = [{port}]\nrate_per_minute = "unlimited"\n'
        'max_concurrent = 64\negress_bytes_per_day = "unlimited"\n'
        'max_response_bytes = "unlimited"\n')
    extra = f'endpoint = "{endpoint}"\n' if endpoint else ""
    (work / "forwarder.toml").write_text(
        f'id = "fw1"\nkey = "fw1.key"\npolicy = "policy.toml"\nmailbox = "{mailbox}"\n{extra}'
        f'upstream_ca = "{ca}"\n')
    (work / "client.toml").write_text(
        f'key = "gpu01.key"\nforwarder = "fw1.pub"\nmailbox = "{mailbox}"\n{extra}')
    return work


def _wait_serving(work: Path, forwarder: subprocess.Popen[str]) -> None:
    """Deadline-bounded: the forwarder says 'serving' once its first heartbeat is stored."""
    deadline = time.monotonic() + 60
    log = work / "forwarder.log"
    while time.monotonic() < deadline:
        if "serving" in log.read_text():
            return
        if forwarder.poll() is not None:
            raise SystemExit(f"forwarder exited:\n{log.read_text()}")
        time.sleep(0.05)
    raise SystemExit("forwarder did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests, 128 MiB download")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--only", choices=["directory", "s3"],
                        help="measure only this mailbox (and the direct column)")
    args = parser.parse_args()
    plan = {"latency": 100 if args.quick else 300, "requests": 200 if args.quick else 600,
            "concurrency": [1, 16, 64], "download": (128 if args.quick else 1024) << 20,
            "sse": [0.4, 0.1, 0.03, 0.01], "sse_seconds": 2.0 if args.quick else 4.0,
            "after_idle": 10.0}
    s3_plan = {**plan, "latency": 60 if args.quick else 150, "requests": 100,
               "concurrency": [1, 16], "download": 0}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as tmp:
        work = Path(tmp)
        env = dict(os.environ, WONDERS_HOME=str(work / "home"))
        ca = work / "upstream-ca.pem"
        with _process([sys.executable, "-c", UPSTREAM, str(ca)], stdout=subprocess.PIPE) as up:
            assert up.stdout is not None
            port = int(up.stdout.readline())
            base = f"https://127.0.0.2:{port}"
            direct_env = dict(env, SSL_CERT_FILE=str(ca))
            print("direct …", flush=True)
            results["direct"] = _run_client([], base, plan, direct_env)
            stores: list[tuple[str, str | None, dict[str, Any]]] = []
            (work / "mailbox").mkdir()
            if args.only != "s3":
                stores.append(((work / "mailbox").as_uri(), None, plan))
            moto, endpoint = _moto()
            try:
                import boto3

                boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                             aws_access_key_id="bench", aws_secret_access_key="bench",
                             ).create_bucket(Bucket="relay-bench")
                env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                           AWS_DEFAULT_REGION="us-east-1")
                if args.only != "directory":
                    stores.append(("s3://relay-bench/m", endpoint, s3_plan))
                for mailbox, s3, store_plan in stores:
                    name = "relay-s3" if s3 else "relay-directory"
                    site = work / name
                    site.mkdir()
                    _deployment(site, port, ca, mailbox, s3)
                    log = (site / "forwarder.log").open("w")
                    with _process([str(BIN / "wonders"), "forward", "--config",
                                   str(site / "forwarder.toml")], stdout=log, stderr=log,
                                  env=env) as fw:
                        _wait_serving(site, fw)
                        print(f"{name} …", flush=True)
                        prefix = [str(BIN / "wonder-run"), "--config",
                                  str(site / "client.toml"), "--"]
                        busy = _cpu_seconds(moto.pid), time.monotonic()
                        results[name] = _run_client(prefix, base, store_plan, env)
                        results[name]["forwarder_peak_mib"] = _peak_mib(fw.pid)
                        if s3:  # how much of the two cores the S3 server itself took
                            results[name]["moto_cores"] = (
                                (_cpu_seconds(moto.pid) - busy[0]) / (time.monotonic() - busy[1]))
                            print("S3 calls …", flush=True)
                            results[name]["s3"] = _s3_costs(prefix, base, env, moto, args.quick)
            finally:
                assert moto.stdin is not None
                moto.stdin.close()
                moto.wait(30)
    _report(results, plan)
    if args.json:
        Path(args.json).write_text(json.dumps({"plan": plan, "results": results}, indent=2))
    return 0


def _report(results: dict[str, dict[str, Any]], plan: dict[str, Any]) -> None:
    columns = list(results)
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, pick: Any, fmt: str) -> None:
        cells = []
        for c in columns:
            try:
                cells.append(format(pick(results[c]), fmt))
            except (KeyError, TypeError):
                cells.append("-")
        rows.append((label, cells))

    for q in ("p50", "p90", "p99"):
        row(f"small GET {q} (ms)", lambda r, q=q: r["latency_ms"][q], ".1f")
    for w in plan["concurrency"]:
        row(f"{w} concurrent (req/s)", lambda r, w=w: r["throughput_rps"][str(w)], ".0f")
    row(f"download {plan['download'] >> 20} MiB (MB/s)", lambda r: r["download_mb_s"], ".0f")
    for gap in plan["sse"]:
        g = str(gap)
        row(f"SSE every {gap * 1000:.0f} ms: lag median (ms)",
            lambda r, g=g: r["sse"][g]["median"], ".1f")
        row(f"SSE every {gap * 1000:.0f} ms: lag max (ms)", lambda r, g=g: r["sse"][g]["max"],
            ".1f")
        row(f"SSE every {gap * 1000:.0f} ms: events arrived",
            lambda r, g=g: f"{r['sse'][g]['events']}/{r['sse'][g]['sent']}", "")
    row("proxy peak RSS (MiB)",
        lambda r: r["parent_peak_mib"] if "forwarder_peak_mib" in r else None, ".0f")
    row("forwarder peak RSS (MiB)", lambda r: r["forwarder_peak_mib"], ".0f")
    row("S3 server CPU (cores)", lambda r: r["moto_cores"], ".2f")
    row("first GET after 10 s idle (ms)", lambda r: r["after_idle_ms"], ".1f")
    for label in ("sequential", "concurrent"):
        row(f"S3 calls/request, {label}", lambda r, x=label: r["s3"][x]["total"], ".1f")
        for kind in ("PUT", "GET", "HEAD", "LIST", "DELETE", "DELETE (batch)"):
            row(f"  {kind}", lambda r, x=label, k=kind: r["s3"][x]["per_request"][k], ".2f")
        row(f"  $ per million requests, {label}",
            lambda r, x=label: r["s3"][x]["dollars_per_million"], ".2f")
    row("S3 calls/s while idle", lambda r: r["s3"]["idle_per_second"], ".2f")
    row("  $ per month while idle", lambda r: r["s3"]["idle_dollars_per_month"], ".2f")
    width = max(len(label) for label, _ in rows)
    print()
    print(" " * width + "".join(f"{c:>18}" for c in columns))
    for label, cells in rows:
        print(label.ljust(width) + "".join(f"{cell:>18}" for cell in cells))


if __name__ == "__main__":
    raise SystemExit(main())
