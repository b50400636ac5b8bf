"""Reliability under load: the example shop under uvicorn with several workers, driven by a
bounded async client, then stopped gracefully and checked against its RAW store.

What it measures and checks:

- every response's status (no 5xx expected) and transport errors (none expected);
- latency p50/p99 and requests per second over the measured run (warm-up excluded);
- events in RAW after a graceful stop against responses served on recorded routes
  (``/consent`` is the middleware's own endpoint and is not recorded);
- resident memory (VmRSS) of each uvicorn worker after warm-up and after the run.

The request mix is fixed: product pages (some unknown: 404), the home page, the cart and
the marketing widget, with or without a consent cookie, plus consent decisions (POST).
Every request carries a Cookie header (an unrelated cookie when it has no consent cookie)
so the client's cookie jar never changes what is sent. Loopback only; the run is bounded by
a request count and by time.

uvicorn ``--workers N`` leaves Nagle's algorithm on for accepted connections on Linux
(https://github.com/Kludex/uvicorn/issues/3149: the pre-bound listener has ``proto`` 0, so
asyncio never sets TCP_NODELAY) and every keep-alive response then waits ~40 ms for the
client's delayed ACK. The server here is started through :func:`serve`, which applies the
fix proposed upstream (the listener re-wrapped with IPPROTO_TCP); ``--stock-uvicorn``
measures uvicorn as released.

    python -m benchmarks.load                       # 60 s, writes benchmarks/results/load.json
    python -m benchmarks.load --requests 3000 --output /tmp/load.json --raw /tmp/raw
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import httpx

from consent_middleware.raw.layout import RawLayout

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "load.json"
SECRET = "load-benchmark-secret-key-0123456789"
UNRECORDED_PREFIX = "/consent"  # the middleware's own endpoint: never an event
HARD_LIMIT_S = 900.0  # no run goes on longer than this, whatever the arguments say


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # the process went away meanwhile
        # The command name (field 2) may hold spaces; the parent id follows its ")".
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def serve(argv: list[str]) -> None:
    """Run the uvicorn CLI with ``argv``, its listener marked as TCP (see the module doc)."""
    import uvicorn.config
    import uvicorn.main

    bind_socket = uvicorn.config.Config.bind_socket

    def bind_tcp_socket(self: uvicorn.config.Config) -> socket.socket:
        sock = bind_socket(self)
        if sock.family in (socket.AF_INET, socket.AF_INET6) and sock.proto == 0:
            # Same descriptor, now known as TCP: accepted sockets inherit the protocol and
            # asyncio turns TCP_NODELAY on for them.
            sock = socket.socket(sock.family, sock.type, socket.IPPROTO_TCP, sock.detach())
        return sock

    uvicorn.config.Config.bind_socket = bind_tcp_socket  # type: ignore[method-assign]
    uvicorn.main.main(argv)


class Server:
    """``uvicorn examples.shop_app:app`` with ``workers`` processes on 127.0.0.1."""

    def __init__(self, raw_dir: Path, workers: int, *, stock: bool = False) -> None:
        self.raw_dir = raw_dir
        self.workers = workers
        self.stock = stock
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start uvicorn and wait until every worker answers (bounded: about 60 s)."""
        env = {**os.environ, "CONSENT_RAW_DIR": str(self.raw_dir), "CONSENT_SECRET_KEY": SECRET}
        args = ["examples.shop_app:app", "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(self.workers), "--log-level", "warning"]  # fmt: skip
        launcher = (
            ["-m", "uvicorn"]
            if self.stock
            else ["-c", "import sys, benchmarks.load as m; m.serve(sys.argv[1:])"]
        )
        self.process = subprocess.Popen([sys.executable, *launcher, *args], cwd=ROOT, env=env)
        for _ in range(1200):
            if self.process.poll() is not None:
                raise RuntimeError("uvicorn exited during start-up")
            if len(self.worker_pids()) >= self.workers:
                try:
                    # GET /consent is not recorded, so probes do not change the counts.
                    httpx.get(f"{self.base}{UNRECORDED_PREFIX}", timeout=1.0)
                    return
                except httpx.TransportError:
                    pass
            time.sleep(0.05)
        raise RuntimeError("uvicorn did not start")

    def worker_pids(self) -> list[int]:
        """The worker processes (uvicorn spawns them through multiprocessing)."""
        assert self.process is not None
        if self.workers == 1:  # uvicorn serves from the process itself
            return [self.process.pid]
        pids = []
        for pid in children(self.process.pid):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"spawn_main" in cmdline:  # not the resource tracker
                pids.append(pid)
        return pids

    def stop(self) -> int:
        """Graceful stop (SIGTERM: lifespan shutdown flushes the recorders); exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise


@contextmanager
def running(raw_dir: Path, workers: int, *, stock: bool = False) -> Iterator[Server]:
    """A started :class:`Server`, always stopped on the way out."""
    server = Server(raw_dir, workers, stock=stock)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def request_mix(consent_cookie: str) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """The fixed cycle of (method, path, headers, body) the clients go through."""
    with_consent = {"cookie": f"consent={consent_cookie}"}
    without = {"cookie": "lang=en"}
    json_body = {**without, "content-type": "application/json"}
    mix: list[tuple[str, str, dict[str, str], bytes | None]] = []
    for i in range(1, 41):
        mix.append(("GET", f"/products/{i}", without if i % 3 else with_consent, None))
    mix += [
        ("GET", "/", without, None),
        ("GET", "/", with_consent, None),
        ("GET", "/cart", with_consent, None),
        ("GET", "/products/999", without, None),  # 404, still an event
        ("GET", "/widgets/recommendations", with_consent, None),  # 200 with marketing
        ("GET", "/widgets/recommendations", without, None),  # refused without consent
        ("POST", "/consent", json_body, b'{"accept": "all"}'),
        ("POST", "/consent", json_body, b'{"purposes": {"statistics": true}}'),
    ]
    return mix


class Tally:
    """What the clients saw."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.errors: Counter[str] = Counter()
        self.recorded_responses = 0
        self.latencies: list[float] = []


async def drive(
    base: str,
    cookie: str,
    *,
    requests: int | None,
    duration: float | None,
    concurrency: int,
    tally: Tally,
) -> float:
    """Send the mix over ``concurrency`` connections until ``requests`` were sent or
    ``duration`` seconds passed (whichever is given; both bounded by ``HARD_LIMIT_S``).
    Returns the elapsed wall time in seconds.

    Each connection is its own client, like one browser: one shared pool of 64 connections
    spends more time in its own bookkeeping than the server spends answering."""
    mix = request_mix(cookie)
    sent = 0
    started = time.perf_counter()
    stop_at = started + min(duration if duration is not None else HARD_LIMIT_S, HARD_LIMIT_S)
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)

    async def client_loop(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while time.perf_counter() < stop_at and (requests is None or sent < requests):
            method, path, headers, body = mix[sent % len(mix)]
            sent += 1
            t0 = time.perf_counter()
            try:
                response = await client.request(method, path, headers=headers, content=body)
            except httpx.HTTPError as exc:
                tally.errors[type(exc).__name__] += 1
                continue
            tally.latencies.append(time.perf_counter() - t0)
            tally.statuses[response.status_code] += 1
            if not path.startswith(UNRECORDED_PREFIX):
                tally.recorded_responses += 1

    clients = [
        httpx.AsyncClient(base_url=base, limits=limits, timeout=60.0) for _ in range(concurrency)
    ]
    try:
        await asyncio.gather(*(client_loop(client) for client in clients))
    finally:
        for client in clients:
            await client.aclose()
    return time.perf_counter() - started


def consent_cookie(base: str) -> str:
    """A valid consent cookie granting everything (one POST /consent, not recorded)."""
    response = httpx.post(f"{base}/consent", json={"accept": "all"}, timeout=30.0)
    response.raise_for_status()
    header = response.headers["set-cookie"]
    return header.split(";", 1)[0].split("=", 1)[1]


def events_by_path(raw_dir: Path) -> dict[str, int]:
    """Raw events per recorded path template."""
    glob = RawLayout.at(raw_dir).events_glob()
    rows = duckdb.execute(
        f"SELECT path, count(*) FROM read_parquet('{glob}') GROUP BY path"
    ).fetchall()
    return {str(path): int(n) for path, n in rows}


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


def run_load(
    raw_dir: Path,
    *,
    requests: int | None = None,
    duration: float | None = None,
    warmup: int = 1500,
    concurrency: int = 64,
    workers: int = 2,
    settle: float = 2.0,
    stock_uvicorn: bool = False,
) -> dict[str, Any]:
    """Start the server, warm up, measure, stop gracefully, count RAW; return the figures.

    ``settle`` seconds are waited before each memory reading, so a flush interval has
    passed and the buffers are empty.
    """
    warm, measured = Tally(), Tally()
    with running(raw_dir, workers, stock=stock_uvicorn) as server:
        cookie = consent_cookie(server.base)
        asyncio.run(
            drive(server.base, cookie, requests=warmup, duration=None,
                  concurrency=concurrency, tally=warm)
        )  # fmt: skip
        time.sleep(settle)
        pids = server.worker_pids()
        rss_before = {pid: rss_kib(pid) for pid in pids}
        elapsed = asyncio.run(
            drive(server.base, cookie, requests=requests, duration=duration,
                  concurrency=concurrency, tally=measured)
        )  # fmt: skip
        time.sleep(settle)
        rss_after = {pid: rss_kib(pid) for pid in pids if Path(f"/proc/{pid}").exists()}
        workers_alive = sorted(server.worker_pids()) == sorted(pids)
    exit_status = server.process.returncode if server.process else None
    events = events_by_path(raw_dir)
    served = warm.recorded_responses + measured.recorded_responses
    stored = sum(events.values())
    total = sum(measured.statuses.values())
    growth = {
        str(pid): round(rss_after[pid] / rss_before[pid] - 1.0, 4)
        for pid in rss_before
        if pid in rss_after
    }
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": list(os.getloadavg()),  # other work on the machine, if any
        },
        "workers": workers,
        "uvicorn_nodelay_fix": not stock_uvicorn,
        "concurrency": concurrency,
        "warmup_requests": warmup,
        "requests": total,
        "duration_s": round(elapsed, 3),
        "requests_per_s": round(total / elapsed, 1) if elapsed else 0.0,
        "latency_ms": {
            "p50": round(percentile(measured.latencies, 0.50) * 1000, 2),
            "p99": round(percentile(measured.latencies, 0.99) * 1000, 2),
            "max": round(max(measured.latencies) * 1000, 2),
        }
        if measured.latencies
        else {},
        "statuses": {str(k): v for k, v in sorted((warm.statuses + measured.statuses).items())},
        "server_errors_5xx": sum(
            n for s, n in (warm.statuses + measured.statuses).items() if s >= 500
        ),
        "connection_errors": sum((warm.errors + measured.errors).values()),
        "connection_error_kinds": dict(warm.errors + measured.errors),
        "recorded_responses": served,
        "events_in_raw": stored,
        "events_lost": served - stored,
        "events_by_path": events,
        "rss_kib_after_warmup": {str(p): v for p, v in rss_before.items()},
        "rss_kib_after_run": {str(p): v for p, v in rss_after.items()},
        "rss_growth": growth,
        "workers_survived": workers_alive,
        "server_exit_status": exit_status,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command line entry point; prints a summary and writes the JSON figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of measured load")
    parser.add_argument("--requests", type=int, help="a request count instead of a duration")
    parser.add_argument("--warmup", type=int, default=3000, help="requests before measuring")
    parser.add_argument("--concurrency", type=int, default=64, help="open connections")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--raw", type=Path, help="RAW directory (default: a temporary one)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where the JSON goes")
    parser.add_argument(
        "--stock-uvicorn", action="store_true", help="without the TCP_NODELAY fix (see above)"
    )
    args = parser.parse_args(argv)
    duration = None if args.requests is not None else args.duration
    with tempfile.TemporaryDirectory(prefix="load-raw-") as tmp:
        raw = args.raw or Path(tmp)
        result = run_load(
            raw,
            requests=args.requests,
            duration=duration,
            warmup=args.warmup,
            concurrency=args.concurrency,
            workers=args.workers,
            stock_uvicorn=args.stock_uvicorn,
        )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(
        f"{result['requests']} requests in {result['duration_s']} s: "
        f"{result['requests_per_s']} req/s, p50 {result['latency_ms'].get('p50')} ms, "
        f"p99 {result['latency_ms'].get('p99')} ms; 5xx {result['server_errors_5xx']}, "
        f"connection errors {result['connection_errors']}, events lost "
        f"{result['events_lost']}; RSS growth {result['rss_growth']}"
    )
    return result


if __name__ == "__main__":
    main()
