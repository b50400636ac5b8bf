"""Per-request cost of ConsentMiddleware (recording on) next to its peers, in one run.

Three variants of the same Starlette app:

- ``bare``: no middleware;
- ``session``: Starlette's ``SessionMiddleware``, with a session cookie present (it verifies
  the cookie and re-signs it on every response);
- ``consent``: ``ConsentMiddleware`` recording to a temporary RAW store, with a consent
  cookie present (it verifies the cookie, exposes the state and records the request).

Measured two ways: in-process (the ASGI app called directly with a minimal receive/send,
best of several rounds) and through uvicorn (one worker on 127.0.0.1, a fixed number of
pipelined requests on a raw keep-alive socket). Also the cost of ``Recorder.record_request``
alone. Writes ``benchmarks/results/middleware.json`` and prints a summary.

    python -m benchmarks.middleware [--iterations 4000] [--rounds 7] [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import socket
import subprocess
import sys
import tempfile
import time
from base64 import b64encode
from collections.abc import Callable
from pathlib import Path
from typing import Any

from itsdangerous import TimestampSigner
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message

from consent_middleware import ConsentMiddleware
from consent_middleware.recorder import Recorder
from consent_middleware.state import ConsentState

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "middleware.json"
SECRET = "benchmark-secret-key-0123456789abcdef"
POLICY = "2026-04"
HOST = "bench.local"
PATH = "/products/17"
UA = b"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/124.0 Safari/537.36"
VARIANTS = ("bare", "session", "consent")


async def product(request: Request) -> Response:
    return PlainTextResponse(f"product {request.path_params['product_id']}")


def make_app(variant: str, raw_dir: str | None = None) -> Starlette:
    """The benchmark app with the middleware of ``variant``."""
    middleware: list[Middleware] = []
    if variant == "session":
        middleware.append(Middleware(SessionMiddleware, secret_key=SECRET))
    elif variant == "consent":
        raw = raw_dir or os.environ["BENCH_RAW_DIR"]
        middleware.append(
            Middleware(ConsentMiddleware, secret_key=SECRET, policy_version=POLICY, raw_dir=raw)
        )
    elif variant == "consent_no_recording":  # diagnostic: the middleware without raw_dir
        middleware.append(Middleware(ConsentMiddleware, secret_key=SECRET, policy_version=POLICY))
    return Starlette(routes=[Route("/products/{product_id:int}", product)], middleware=middleware)


def bench_app() -> Starlette:
    """uvicorn factory: the variant named by ``BENCH_VARIANT``."""
    return make_app(os.environ["BENCH_VARIANT"])


def session_cookie() -> str:
    """A cookie as SessionMiddleware itself writes it, with a little session data."""
    data = b64encode(json.dumps({"user": "u-1234", "cart": [1, 2, 3]}).encode())
    return "session=" + TimestampSigner(SECRET).sign(data).decode()


def headers_for(cookie: str | None) -> list[tuple[bytes, bytes]]:
    headers = [
        (b"host", HOST.encode()),
        (b"user-agent", UA),
        (b"accept", b"text/html"),
        (b"accept-language", b"ja-JP,ja;q=0.9,en;q=0.8"),
        (b"referer", b"https://www.google.com/"),
    ]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return headers


def scope_for(
    headers: list[tuple[bytes, bytes]], method: str = "GET", path: str = PATH
) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"utm_source=newsletter",
        "headers": headers,
        "client": ("192.0.2.10", 50000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: ASGIApp, scope: dict[str, Any], body: bytes = b"") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def consent_cookie(app: ASGIApp) -> str:
    """Accept all purposes once, through the middleware's own endpoint."""
    headers = [
        (b"host", HOST.encode()),
        (b"origin", f"http://{HOST}".encode()),
        (b"content-type", b"application/json"),
    ]
    sent = await call(app, scope_for(headers, "POST", "/consent"), b'{"accept": "all"}')
    for name, value in sent[0].get("headers", []):
        if name.lower() == b"set-cookie":
            return str(value.decode()).split(";", 1)[0]
    raise RuntimeError(f"no consent cookie in {sent[0]}")


async def time_in_process(
    app: ASGIApp,
    cookie: str | None,
    iterations: int,
    rounds: int,
    drain: Callable[[], None] | None = None,
) -> float:
    """Best-of-``rounds`` mean time of one request, in microseconds.

    ``drain`` runs after each timed round: for the recording variant it flushes the
    round's events, and the CPU time it takes (building the Arrow table, encoding and
    writing Parquet) is added, so the flush thread's work is counted too. Its I/O wait
    (fsync) is not: in a server it happens on the flush thread, off the event loop, with
    the GIL released.
    """
    headers = headers_for(cookie)
    template = scope_for(headers)

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    for _ in range(200):  # warm-up: build the middleware stack, fill caches
        await app(dict(template), receive, send)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(iterations):
            await app(dict(template), receive, send)
        elapsed = time.perf_counter() - start
        if drain is not None:
            cpu = time.process_time()
            drain()
            elapsed += time.process_time() - cpu
        best = min(best, elapsed / iterations)
    return best * 1e6


def find_consent(app: Starlette) -> ConsentMiddleware:
    layer: Any = app.middleware_stack
    while layer is not None and not isinstance(layer, ConsentMiddleware):
        layer = getattr(layer, "app", None)
    if layer is None:
        raise RuntimeError("ConsentMiddleware not found in the stack")
    return layer


def record_request_cost(raw_dir: str, iterations: int, rounds: int) -> float:
    """Microseconds per ``Recorder.record_request`` call (the request-path part alone).

    The buffer is flushed between rounds, outside the timing, and a round stays below a
    full batch: this figure is the hand-off alone, not the flush (which the in-process
    ``consent`` figure counts) nor a flush thread woken to compete for the GIL.
    """
    recorder = Recorder.to_raw_dir(raw_dir, ledger_keys=[SECRET])
    consent = ConsentState({"necessary": True, "statistics": True}, POLICY, False, False, aid="a")
    scope = scope_for(headers_for(None))
    per_round = min(iterations, recorder.options.max_batch - 1)
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(per_round):
            recorder.record_request(scope, status=200, duration_ms=0.5, consent=consent)
        best = min(best, (time.perf_counter() - start) / per_round)
        recorder.flush()
    recorder.close()
    return best * 1e6


def in_process(raw_dir: str, iterations: int, rounds: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        variants = (*VARIANTS, "consent_no_recording")
        apps = {v: make_app(v, raw_dir) for v in variants}
        cookie = await consent_cookie(apps["consent"])
        cookies: dict[str, str | None] = {
            "bare": None,
            "session": session_cookie(),
            "consent": cookie,
            "consent_no_recording": cookie,
        }
        results: dict[str, float] = {}
        await call(apps["consent"], scope_for(headers_for(cookie)))  # builds the stack
        recorder = find_consent(apps["consent"]).recorder
        assert recorder is not None
        drains = {"consent": recorder.flush}
        # Interleave variants round by round so that machine noise hits all of them alike.
        for _ in range(3):
            for variant in variants:
                cost = await time_in_process(
                    apps[variant], cookies[variant], iterations, rounds, drains.get(variant)
                )
                results[variant] = min(results.get(variant, float("inf")), cost)
        recorder.close()
        stats = recorder.stats
        results["consent_recorded"] = float(stats.recorded)
        results["consent_dropped"] = float(stats.dropped)
        return results

    return asyncio.run(run())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_LENGTH = re.compile(rb"content-length:\s*(\d+)", re.IGNORECASE)


def pipelined_load(port: int, cookie: str | None, total: int, depth: int = 32) -> float:
    """Send ``total`` GETs on one keep-alive connection, ``depth`` at a time; requests/s."""
    lines = [
        f"GET {PATH}?utm_source=newsletter HTTP/1.1",
        f"Host: {HOST}",
        f"User-Agent: {UA.decode()}",
        "Accept-Language: ja-JP,ja;q=0.9",
    ]
    if cookie:
        lines.append(f"Cookie: {cookie}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        done = 0
        start = time.perf_counter()
        while done < total:
            batch = min(depth, total - done)
            sock.sendall(request * batch)
            answered = 0
            while answered < batch:
                end = buffer.find(b"\r\n\r\n")
                if end >= 0:
                    match = _LENGTH.search(buffer, 0, end)
                    size = end + 4 + (int(match.group(1)) if match else 0)
                    if len(buffer) >= size:
                        if not buffer.startswith(b"HTTP/1.1 200"):
                            raise RuntimeError(buffer[:200].decode(errors="replace"))
                        buffer = buffer[size:]
                        answered += 1
                        continue
                chunk = sock.recv(1 << 16)
                if not chunk:
                    raise RuntimeError("the server closed the connection")
                buffer += chunk
            done += batch
        return total / (time.perf_counter() - start)


def through_uvicorn(raw_dir: str, total: int, rounds: int) -> dict[str, float]:
    results: dict[str, float] = {}
    for variant in (*VARIANTS, "consent_no_recording"):
        port = free_port()
        env = {**os.environ, "BENCH_VARIANT": variant, "BENCH_RAW_DIR": raw_dir}
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "benchmarks.middleware:bench_app",
             "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
             "--no-access-log"],
            cwd=ROOT, env=env,
        )  # fmt: skip
        try:
            _wait_port(port, server)
            cookie = _server_cookie(variant, port)
            pipelined_load(port, cookie, min(2000, total))  # warm-up
            results[variant] = max(pipelined_load(port, cookie, total) for _ in range(rounds))
        finally:
            server.terminate()
            server.wait(timeout=60)
    return results


def _wait_port(port: int, server: subprocess.Popen[bytes]) -> None:
    for _ in range(400):
        if server.poll() is not None:
            raise RuntimeError("uvicorn exited early")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("uvicorn did not start")


def _server_cookie(variant: str, port: int) -> str | None:
    if variant == "session":
        return session_cookie()
    if not variant.startswith("consent"):
        return None
    import httpx

    response = httpx.post(
        f"http://127.0.0.1:{port}/consent",
        json={"accept": "all"},
        headers={"host": HOST, "origin": f"http://{HOST}"},
    )
    response.raise_for_status()
    return response.headers["set-cookie"].split(";", 1)[0]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=4000, help="requests per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best counts")
    parser.add_argument("--requests", type=int, default=20000, help="requests per uvicorn run")
    parser.add_argument("--skip-uvicorn", action="store_true", help="in-process only")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()  # the machine may be shared: say how busy it was
    with tempfile.TemporaryDirectory(prefix="bench-raw-") as raw_dir:
        proc = in_process(raw_dir, args.iterations, args.rounds)
        recorder_us = record_request_cost(raw_dir, args.iterations * 5, args.rounds)
        served = {} if args.skip_uvicorn else through_uvicorn(raw_dir, args.requests, 3)
    added_session = proc["session"] - proc["bare"]
    added_consent = proc["consent"] - proc["bare"]
    result: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1min_before_after": [
                round(load_before[0], 2),
                round(os.getloadavg()[0], 2),
            ],
        },
        "in_process_us_per_request": {v: round(proc[v], 2) for v in VARIANTS},
        "in_process_consent_without_recording_us": round(proc["consent_no_recording"], 2),
        "added_us": {"session": round(added_session, 2), "consent": round(added_consent, 2)},
        "consent_over_session_added": round(added_consent / added_session, 3),
        "target_consent_over_session_added": 0.5,
        "record_request_us": round(recorder_us, 3),
        "consent_events_recorded": int(proc["consent_recorded"]),
        "consent_events_dropped": int(proc["consent_dropped"]),
        "iterations": args.iterations,
        "rounds": args.rounds,
    }
    if served:
        result["uvicorn_requests_per_s"] = {v: round(served[v]) for v in VARIANTS}
        result["uvicorn_consent_without_recording_per_s"] = round(served["consent_no_recording"])
        result["uvicorn_consent_over_bare"] = round(served["consent"] / served["bare"], 3)
        result["target_uvicorn_consent_over_bare"] = 0.9
        result["uvicorn_requests"] = args.requests
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    _summary(result)
    return result


def _summary(result: dict[str, Any]) -> None:
    us = result["in_process_us_per_request"]
    added = result["added_us"]
    ratio = result["consent_over_session_added"]
    print(f"in-process µs/request: bare {us['bare']}, session {us['session']}, ", end="")
    print(f"consent {us['consent']}")
    print(f"added: session +{added['session']} µs, consent +{added['consent']} µs", end=" ")
    print(f"-> consent/session = {ratio} (target <= 0.5: {'OK' if ratio <= 0.5 else 'MISSED'})")
    print(
        f"Recorder.record_request alone: {result['record_request_us']} µs; ConsentMiddleware "
        f"without recording: {result['in_process_consent_without_recording_us']} µs/request"
    )
    if "uvicorn_requests_per_s" in result:
        rps = result["uvicorn_requests_per_s"]
        share = result["uvicorn_consent_over_bare"]
        print(f"uvicorn requests/s: bare {rps['bare']}, session {rps['session']}, ", end="")
        print(f"consent {rps['consent']}")
        print(f"consent/bare throughput = {share} (target >= 0.9: ", end="")
        print("OK)" if share >= 0.9 else "MISSED)")
    before, after = result["machine"]["load_average_1min_before_after"]
    print(
        f"load average (1 min) before/after: {before}/{after} on {result['machine']['cpus']} CPUs"
    )
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
