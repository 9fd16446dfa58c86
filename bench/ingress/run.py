"""Ingress benchmark: sustained accepted webhooks/s and latency at 32 connections.

Measured in one run, on one machine, next to the raw limits:
  * bare ASGI echo of the same bodies under the same uvicorn settings (HTTP limit),
  * JetStream acked publishes/s from Python (32 in flight),
  * PostgreSQL single-row inserts/s (32 connections).
The load is a realistic mix of pre-signed requests: GHL marketplace bodies with Ed25519
signatures, GHL workflow bodies with the token, Aloware bodies with Basic auth; all unique.

Usage: python bench/ingress/run.py [--duration 20] [--workers 1] [--record]
Needs `wrk` (Debian package `wrk`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import nats

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from services.infra.broker import prepare_topology
from services.infra.db import migrate
from services.infra.settings import Settings
from services.infra.signing import basic_auth, generate_ed25519, ghl_ed25519_signature
from services.tooling.embedded import EmbeddedNats, EmbeddedPostgres, free_port

FIXTURES = ROOT / "tests" / "fixtures" / "webhooks"
CONNECTIONS = 32
ALOWARE_PASS = "bench:pass"
WF_TOKEN = "bench-token"


def make_requests(path: Path, count: int) -> str:
    """Write ``count`` unique signed requests; returns the Ed25519 public key PEM."""
    key, public = generate_ed25519()
    ghl_a = json.loads((FIXTURES / "ghl/ContactUpdate.json").read_text())
    ghl_b = json.loads((FIXTURES / "ghl/workflow-contact-webhook.json").read_text())
    alo = json.loads((FIXTURES / "aloware/call-disposed.json").read_text())
    now = datetime.now(UTC).isoformat()
    auth = basic_auth("aloware", ALOWARE_PASS)
    with path.open("w") as out:
        for n in range(count):
            kind = n % 5
            if kind in (0, 1):  # 40 % signed marketplace
                body = json.dumps(
                    {**ghl_a, "webhookId": str(uuid.uuid4()), "timestamp": now, "id": f"c{n}"}, separators=(",", ":")
                ).encode()
                line = ("/api/webhooks/ghl", "x-ghl-signature", ghl_ed25519_signature(key, body), body)
            elif kind == 2:  # 20 % workflow body with token
                body = json.dumps({**ghl_b, "contact_id": f"w{n}"}, separators=(",", ":")).encode()
                line = (f"/api/webhooks/ghl?token={WF_TOKEN}", "x-bench", "1", body)
            else:  # 40 % Aloware
                body = json.dumps(
                    {"event": alo["event"], "body": {**alo["body"], "id": str(n)}}, separators=(",", ":")
                ).encode()
                line = ("/api/webhooks/aloware", "authorization", auth, body)
            out.write(f"{line[0]}\t{line[1]}\t{line[2]}\t{line[3].decode()}\n")
    return public


def wrk(url: str, script: Path, requests_file: Path, duration: int, threads: int = 2) -> dict[str, float]:
    """Run wrk and parse its summary (rate, p50/p90/p99, non-2xx)."""
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{CONNECTIONS}",
        f"-d{duration}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        str(requests_file),
        str(threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout

    def ms(label: str) -> float:
        m = re.search(rf"^\s+{label}%\s+([\d.]+)(us|ms|s)\s*$", out, re.MULTILINE)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    total = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rate": rate,
        "p50": ms("50"),
        "p90": ms("90"),
        "p99": ms("99"),
        "total": total,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (uvicorn workers)."""
    out = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.extend(_tree(int(child)))
    return out


def cpu_seconds(pids: list[int]) -> float:
    """User+system CPU seconds used so far by ``pids``."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


async def js_publish_rate(url: str, seconds: float) -> float:
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="BENCHRAW", subjects=["benchraw.>"])
    body = (FIXTURES / "ghl/ContactUpdate.json").read_bytes() * 2
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(w: int) -> None:
        nonlocal done
        n = 0
        while time.perf_counter() < deadline:
            await js.publish(f"benchraw.{w}", body, headers={"Nats-Msg-Id": f"{w}-{n}"})
            n += 1
            done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(CONNECTIONS)))
    elapsed = time.perf_counter() - start
    await js.delete_stream("BENCHRAW")
    await nc.close()
    return done / elapsed


async def pg_insert_rate(url: str, seconds: float) -> float:
    from services.infra.db.session import sync_url

    dsn = sync_url(url)
    setup = await asyncpg.connect(dsn)
    await setup.execute("CREATE TABLE IF NOT EXISTS bench_raw (id uuid primary key, body jsonb)")
    await setup.close()
    pool = await asyncpg.create_pool(dsn, min_size=CONNECTIONS, max_size=CONNECTIONS)
    body = (FIXTURES / "ghl/ContactUpdate.json").read_text()
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        async with pool.acquire() as conn:
            while time.perf_counter() < deadline:
                await conn.execute("INSERT INTO bench_raw VALUES ($1, $2::jsonb)", uuid.uuid4(), body)
                done += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONNECTIONS)))
    elapsed = time.perf_counter() - start
    await pool.close()
    return done / elapsed


async def stream_last_seq(url: str) -> int:
    nc = await nats.connect(url)
    try:
        return int((await nc.jetstream().stream_info("WEBHOOKS")).state.last_seq)
    finally:
        await nc.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    parser.add_argument("--record", action="store_true", help="append the result to bench/RESULTS.md")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install wrk", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="dfm-bench-"))
    requests_file = work / "requests.tsv"
    count = max(args.duration * 12_000, 50_000)
    print(f"generating {count} signed requests ...", flush=True)
    public = make_requests(requests_file, count)

    nats_server = EmbeddedNats(store_dir=work / "nats").start()
    pg = EmbeddedPostgres(work / "pg", delete_on_stop=True).start()
    db_url = pg.url()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate.upgrade(db_url)
        settings = Settings(nats_url=nats_server.url, database_url=db_url)
        asyncio.run(prepare_topology(settings))
        script = Path(__file__).with_name("mix.lua")

        # 1. raw HTTP limit: bare ASGI echo under the same server settings
        echo_port = free_port()
        echo = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.ingress.echo:app",
                "--port",
                str(echo_port),
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
                "--workers",
                str(args.workers),
            ],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(echo)
        wait_http(f"http://127.0.0.1:{echo_port}/", echo)
        echo_res = wrk(f"http://127.0.0.1:{echo_port}", script, requests_file, args.duration)
        echo.terminate()
        echo.wait()

        # 2./3. raw JetStream and PostgreSQL limits
        js_rate = asyncio.run(js_publish_rate(nats_server.url, 5))
        pg_rate = asyncio.run(pg_insert_rate(db_url, 5))

        # 4. the ingress itself
        port = free_port()
        env = {
            **os.environ,
            "NATS_URL": nats_server.url,
            "DATABASE_URL": db_url,
            "INGRESS_PORT": str(port),
            "DFM_INGRESS_WORKERS": str(args.workers),
            "GHL_WEBHOOK_ED25519_PUBLIC_KEY": public,
            "GHL_WORKFLOW_WEBHOOK_TOKEN": WF_TOKEN,
            "ALOWARE_WEBHOOK_BASIC_USER": "aloware",
            "ALOWARE_WEBHOOK_BASIC_PASS": ALOWARE_PASS,
            "DF_ADMIN_SECRET": "bench",
            "X_DF_JOBS_SECRET": "bench",
            "LOG_LEVEL": "warning",
            "GHL_LOCATION_ID": "ghlLocationDemo00001",
        }
        ingress = subprocess.Popen(
            [sys.executable, "-m", "services.cli", "run", "ingress"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        procs.append(ingress)
        wait_http(f"http://127.0.0.1:{port}/api/health", ingress)
        before = asyncio.run(stream_last_seq(nats_server.url))
        ingress_pids = _tree(ingress.pid)
        nats_pids = [nats_server.process.pid] if nats_server.process else []
        cpu_before = (cpu_seconds(ingress_pids), cpu_seconds(nats_pids))
        res = wrk(f"http://127.0.0.1:{port}", script, requests_file, args.duration)
        cpu_ingress = cpu_seconds(ingress_pids) - cpu_before[0]
        cpu_nats = cpu_seconds(nats_pids) - cpu_before[1]
        on_stream = asyncio.run(stream_last_seq(nats_server.url)) - before
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=30)
        nats_server.stop()
        pg.stop()
        shutil.rmtree(work, ignore_errors=True)

    accepted_rate = on_stream / args.duration
    ratio = res["rate"] / echo_res["rate"]
    report = "\n".join(
        [
            f"### ingress — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"- command: `python bench/ingress/run.py --duration {args.duration} --workers {args.workers}`",
            f"- machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
            f"Python {platform.python_version()}; wrk, ingress, nats-server and PostgreSQL on the same host",
            f"- load: {CONNECTIONS} connections, 2 wrk threads, mix 40 % GHL Ed25519-signed, "
            f"20 % GHL workflow token, 40 % Aloware Basic; every request unique",
            "",
            "| measurement | rate /s | p50 ms | p90 ms | p99 ms | notes |",
            "| --- | ---: | ---: | ---: | ---: | --- |",
            f"| ingress (accepted, new on stream) | {accepted_rate:,.0f} | {res['p50']:.2f} | {res['p90']:.2f} | "
            f"{res['p99']:.2f} | {res['total']:,} requests, {res['non2xx']} non-2xx, {on_stream:,} on stream |",
            f"| raw: bare ASGI echo, same bodies | {echo_res['rate']:,.0f} | {echo_res['p50']:.2f} | "
            f"{echo_res['p90']:.2f} | {echo_res['p99']:.2f} | ingress/echo = {ratio:.2f} |",
            f"| raw: JetStream acked publish (Python, 32 in flight) | {js_rate:,.0f} | | | | |",
            f"| raw: PostgreSQL single-row insert (32 connections) | {pg_rate:,.0f} | | | | |",
            "",
            f"CPU during the ingress run: ingress {cpu_ingress / args.duration:.2f} cores "
            f"({1e6 * cpu_ingress / max(on_stream, 1):.0f} µs per accepted webhook), "
            f"nats-server {cpu_nats / args.duration:.2f} cores; the rest of the 2 cores is wrk.",
            "",
        ]
    )
    print(report)
    if args.record:
        with (ROOT / "bench" / "RESULTS.md").open("a") as out:
            out.write("\n" + report)
    return 0 if res["non2xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
