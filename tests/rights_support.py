"""Shared helpers for the visitors'-rights tests: an app recording into RAW, browsers, RAW reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from consent_support import ORIGIN, SECRET, TestClient, make_app
from starlette.applications import Starlette

from consent_middleware import Decision, Recorder, RecordingOptions
from consent_middleware.raw.segments import list_segments

__all__ = ["ORIGIN", "SECRET", "Site", "all_events", "scan_bytes"]


class Site:
    """An app behind ConsentMiddleware recording into ``raw`` (uncompressed segments, so a
    byte scan of RAW sees every stored value), with its recorder and decisions."""

    def __init__(self, raw: Path, **options: Any) -> None:
        self.raw = raw
        self.recorder = Recorder.to_raw_dir(
            raw,
            options=RecordingOptions(compression="none", flush_interval=60.0),
            ledger_keys=[SECRET],
        )
        self.decisions: list[Decision] = []
        self.app: Starlette = make_app(
            self.decisions, raw_dir=raw, recorder=self.recorder, **options
        )

    def browser(self, user_agent: str, host: str = "203.0.113.1") -> TestClient:
        """A browser with its own cookie jar, user agent and client address."""
        return TestClient(self.app, headers={"user-agent": user_agent}, client=(host, 50000))

    def visitor(self, user_agent: str, pages: int, host: str = "203.0.113.1") -> TestClient:
        """A browser that views one page, accepts everything, then views ``pages`` pages."""
        client = self.browser(user_agent, host)
        client.get("/?before=consent")
        assert client.post("/consent", json={"accept": "all"}, headers=ORIGIN).status_code == 200
        for i in range(pages):
            client.get(f"/?page={i}")
        return client

    def flush(self) -> None:
        """Write what the recorder buffers (events and ledger records)."""
        self.recorder.flush()


def all_events(raw: Path) -> list[dict[str, Any]]:
    """Every raw event in RAW, as dicts."""
    segments = list_segments(raw)
    if not segments:
        return []
    return pa.concat_tables([pq.read_table(p) for p in segments]).to_pylist()


def scan_bytes(raw: Path, needle: str) -> list[str]:
    """Every file under ``raw`` whose bytes contain ``needle`` (relative paths)."""
    data = needle.encode()
    return sorted(
        str(p.relative_to(raw)) for p in raw.rglob("*") if p.is_file() and data in p.read_bytes()
    )
