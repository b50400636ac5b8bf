"""The end-to-end demo behind ``make demo``: shop app → traffic → RAW → pipeline → STATS.

It starts the example shop under uvicorn on a free loopback port, drives simulated
browsers through it, stops it gracefully (so the recorder flushes everything), checks the
ledger, purges and compacts RAW, runs the anonymization pipeline, prints the top statistics,
writes the marketing report, imports a real web server log (twice: nothing doubles) into a
second store and publishes it too, and says where everything is. It leaves
nothing running, even when interrupted.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from examples.traffic import drive

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-output"
RAW = OUT / "raw"
STATS = OUT / "stats"
REPORT = OUT / "report.html"
# Real traffic from a web server log (beside the repository, as in CI); a separate RAW store:
# its days (May 2015) are not the shop's.
SAMPLE_LOG = ROOT.parent / "shared" / "data" / "apache_combined_sample.log"
LOG_RAW = OUT / "log-raw"
LOG_STATS = OUT / "log-stats"
BIN = Path(sys.executable).parent
# The demo signs cookies and the ledger with its own throwaway key, passed to every process.
DEMO_KEY = os.environ.get("CONSENT_SECRET_KEY", "make-demo-throwaway-key")
ENV = dict(os.environ, CONSENT_SECRET_KEY=DEMO_KEY, CONSENT_RAW_DIR=str(RAW))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _step(message: str) -> None:
    print(f"\n\033[1m==> {message}\033[0m" if sys.stdout.isatty() else f"\n==> {message}")


def _wait_ready(url: str, server: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the shop app exited early with code {server.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.2)
    raise SystemExit(f"the shop app did not answer on {url} within {timeout:.0f} s")


def _run(*args: str) -> None:
    print("$ " + " ".join(args[:1] + tuple(str(a) for a in args[1:])).replace(str(ROOT) + "/", ""))
    subprocess.run([str(BIN / args[0]), *args[1:]], check=True, cwd=ROOT, env=ENV)


def serve_and_drive(browsers: int, seconds: float) -> None:
    """Start the shop app, send traffic, stop it gracefully."""
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    _step(f"Starting the example shop on {url} (uvicorn examples.shop_app:app)")
    server = subprocess.Popen(
        [
            str(BIN / "uvicorn"),
            "examples.shop_app:app",
            "--port",
            str(port),
            "--log-level",
            "warning",
            # The simulated browsers send their (made-up) address as X-Forwarded-For, as a
            # reverse proxy would; the visitor hash is computed from it.
            "--proxy-headers",
            "--forwarded-allow-ips",
            "127.0.0.1",
        ],
        cwd=ROOT,
        env=ENV,
    )
    try:
        _wait_ready(url + "/", server)
        _step(f"Driving {browsers} simulated browsers and 5 crawlers for at most {seconds:.0f} s")
        report = asyncio.run(drive(url, browsers=browsers, bots=5, seconds=seconds, concurrency=16))
        print(report.summary())
    finally:
        _step("Stopping the app gracefully (the recorder flushes its buffer on shutdown)")
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def import_sample_log() -> None:
    """Web server logs: import a real access log (bad lines reported, IPs never stored),
    import it again (nothing is imported twice), publish its statistics."""
    _step("Importing a real Apache access log (bots, a broken line, real user agents)")
    log = ("--raw", str(LOG_RAW), "--format", "combined", "--site-host", "semicomplete.com")
    _run("anonymizer", "import-log", *log, str(SAMPLE_LOG))
    _step("Importing the same log again: nothing is imported twice")
    _run("anonymizer", "import-log", *log, str(SAMPLE_LOG))
    _run("anonymizer", "run", "--raw", str(LOG_RAW), "--stats", str(LOG_STATS), "--k", "10")
    _run(
        "anonymizer",
        "query",
        "--stats",
        str(LOG_STATS),
        "SELECT date, pageviews, visitors, visits FROM traffic_daily ORDER BY date",
    )


def main() -> None:
    """Run the whole demo."""
    browsers = int(os.environ.get("DEMO_BROWSERS", "400"))
    seconds = float(os.environ.get("DEMO_SECONDS", "45"))
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    started = time.monotonic()
    serve_and_drive(browsers, seconds)
    segments = sorted(RAW.glob("events/date=*/*.parquet"))
    print(f"RAW store: {len(segments)} segment file(s) under {RAW.relative_to(ROOT)}/events")

    _step("Checking the consent ledger")
    _run("consent-admin", "verify", "--raw", str(RAW))

    _step("Visitors' rights requests received (disclosures and erasures)")
    _run("consent-admin", "requests", "--raw", str(RAW))

    _step("Purge: retention, and the erased visitors' raw events removed for good")
    _run("consent-admin", "purge", "--raw", str(RAW))

    # The demo's segments are seconds old; a real schedule keeps the default --min-age 1h.
    _step("Compaction: the many small per-flush segments merged into one per day")
    _run("consent-admin", "compact", "--raw", str(RAW), "--min-age", "0")
    segments = sorted(RAW.glob("events/date=*/*.parquet"))
    print(f"RAW store: {len(segments)} segment file(s) after compaction")

    _step("Running the anonymization pipeline (RAW → STATS, k = 10)")
    _run(
        "anonymizer",
        "run",
        "--raw",
        str(RAW),
        "--stats",
        str(STATS),
        "--k",
        "10",
        "--timezone",
        "Asia/Tokyo",
    )

    _step("Published tables")
    _run("anonymizer", "tables", "--stats", str(STATS))

    _step("Traffic, top pages, sources, devices and consent")
    for sql in (
        "SELECT * FROM traffic_daily ORDER BY date",
        "SELECT page, SUM(pageviews) AS pageviews, SUM(visitors) AS visitors FROM pages_daily "
        "GROUP BY page ORDER BY pageviews DESC LIMIT 8",
        "SELECT channel, source, SUM(visits) AS visits FROM sources_daily "
        "GROUP BY ALL ORDER BY visits DESC LIMIT 8",
        "SELECT device_type, browser, SUM(visitors) AS visitors FROM technology_daily "
        "GROUP BY ALL ORDER BY visitors DESC LIMIT 8",
        "SELECT purpose, SUM(granted) AS granted, SUM(refused) AS refused FROM consent_daily "
        "GROUP BY purpose ORDER BY purpose",
    ):
        _run("anonymizer", "query", "--stats", str(STATS), sql)

    _step("Writing the marketing report (one self-contained HTML file, tables as CSV beside it)")
    _run("anonymizer", "report", "--stats", str(STATS), "--out", str(REPORT))

    if SAMPLE_LOG.is_file():
        import_sample_log()

    elapsed = time.monotonic() - started
    rel_raw, rel_stats = RAW.relative_to(ROOT), STATS.relative_to(ROOT)
    rel_report = REPORT.relative_to(ROOT)
    _step(f"Done in {elapsed:.0f} s. Everything is under {OUT.relative_to(ROOT)}/")
    print(
        f"""
  RAW store (operator only, short retention): {rel_raw}/
  STATS store (anonymous, shareable):          {rel_stats}/
  Public notice (APPI Art. 43(3)):             {rel_stats}/notice.en.md, notice.ja.md
  Marketing report (open in a browser):        {rel_report}
  Imported web server log (if found):          {OUT.relative_to(ROOT)}/log-raw/ -> log-stats/

Next commands to try:
  .venv/bin/anonymizer query --stats {rel_stats} "SELECT * FROM hourly_traffic LIMIT 10"
  .venv/bin/anonymizer notice --stats {rel_stats} --lang ja
  .venv/bin/anonymizer report --stats {rel_stats} --out report.ja.html --lang ja
  .venv/bin/consent-admin verify --raw {rel_raw}
  .venv/bin/consent-admin requests --raw {rel_raw}
  (more queries to copy and paste: examples/analyst.sql)
  .venv/bin/uvicorn examples.shop_app:app   # then open http://127.0.0.1:8000/
"""
    )


if __name__ == "__main__":
    main()
