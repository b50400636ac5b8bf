"""Helpers for the browser tests: example apps under a real uvicorn process on 127.0.0.1
and the shared settings (kept out of conftest.py so test modules can import them by name)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from playwright.sync_api import expect

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
# Generous bounds on every wait (the machine may be busy): a bound, not a speed check.
WAIT_MS = 60_000
expect.set_options(timeout=WAIT_MS)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """An app under uvicorn on 127.0.0.1; ``raw`` is its RAW directory."""

    url: str
    raw: Path
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        """Graceful stop (SIGTERM: lifespan shutdown flushes the recorder); idempotent."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        # A single uvicorn process re-raises the signal it handled once it has shut down.
        code = self.process.wait(timeout=60)
        assert code in (0, -signal.SIGTERM), f"uvicorn exited with {code}"


@contextmanager
def serve(app: str, raw: Path, *, app_dir: Path = ROOT) -> Iterator[Server]:
    """Run ``app`` (``module:attribute``) under uvicorn until the block ends."""
    port = free_port()
    env = {**os.environ, "CONSENT_RAW_DIR": str(raw), "CONSENT_SECRET_KEY": "b" * 32}
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", app, "--app-dir", str(app_dir),
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=ROOT, env=env,
    )  # fmt: skip
    server = Server(f"http://127.0.0.1:{port}", raw, process)
    try:
        _wait_ready(server)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_ready(server: Server) -> None:
    # The style sheet is served by the middleware and never recorded: a silent probe.
    for _ in range(600):  # bounded: about 30 s
        assert server.process.poll() is None, "uvicorn exited early"
        try:
            httpx.get(f"{server.url}/consent/banner.css", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("uvicorn did not start")
