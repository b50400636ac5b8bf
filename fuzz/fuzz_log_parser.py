"""Coverage-guided fuzzing of the access-log importer with atheris (libFuzzer for Python).

Each input is one log file: the first byte picks the format (combined, common, nginx-json),
the rest is the file's bytes (gzip included: the importer recognises it by content). The
target runs the real ``import_log`` into a scratch RAW folder and checks what the hardening
tests check: no exception escapes, every line is counted once (imported, rejected or blank)
and every row written is inside the raw-event contract.

Run (not part of CI; ``make fuzz`` runs it for a bounded time)::

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_log_parser.py -max_total_time=300

The corpus (``test-artifacts/fuzz-corpus/log_parser`` unless a folder is named) is created
and seeded with lines of the sample log on the first run; any
further libFuzzer flag is passed through (``-runs=N``, ``-jobs=2``, ``-dict=...``). A crash
leaves ``crash-<sha1>`` beside you; replay it with
``python fuzz/fuzz_log_parser.py crash-<sha1>``.

Without atheris, ``--random N`` runs N inputs made by a plain seeded mutator (no coverage
guidance) so the harness itself can be checked anywhere.
"""

from __future__ import annotations

import math
import random
import re
import shutil
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import harness  # fuzz/harness.py: the shared command line

try:
    import atheris
except ImportError:  # the plain mutator below still works
    atheris = None

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "apache_combined_sample.log"
CORPUS = ROOT / "test-artifacts" / "fuzz-corpus" / "log_parser"
"""The default corpus (under the gitignored ``test-artifacts/``)."""
FORMATS = ("combined", "common", "nginx-json")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)


def _imports() -> tuple[Callable[..., Any], Any, Callable[..., list[Path]], Any]:
    # Imported inside atheris' instrumentation when it is present (coverage feedback).
    import pyarrow.parquet as pq

    from anonymizer.importers import import_log
    from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
    from consent_middleware.raw.segments import list_segments

    return import_log, RAW_EVENT_SCHEMA, list_segments, pq


if atheris is not None:
    with atheris.instrument_imports(include=["anonymizer", "consent_middleware"]):
        import_log, RAW_EVENT_SCHEMA, list_segments, pq = _imports()
else:
    import_log, RAW_EVENT_SCHEMA, list_segments, pq = _imports()

SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-log-parser-"))


def check_row(row: dict[str, Any], fmt: str) -> None:
    """The raw-event contract for an imported row (the same rules as the hardening tests)."""
    assert EARLIEST <= row["ts"] < LATEST, row["ts"]
    assert re.fullmatch(r"[A-Z][A-Z_-]{0,19}", row["method"]), row["method"]
    assert 100 <= row["status"] <= 599, row["status"]
    duration = row["duration_ms"]
    assert duration is None or (math.isfinite(duration) and duration >= 0), duration
    assert row["path"].startswith("/") and not CONTROL.search(row["path"]), row["path"]
    for name in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
        assert row[name] is None or not CONTROL.search(row[name]), row[name]
    host = row["referrer_host"]
    assert host is None or re.fullmatch(r"[^\s/?#:@A-Z\x00-\x1f\x7f]+", host), host
    assert row["user_agent"] is None or not CONTROL.search(row["user_agent"])
    assert row["language"] is None or re.fullmatch(r"[a-z]{1,8}", row["language"])
    assert row["visitor_hash"] is None or re.fullmatch(r"[0-9a-f]{32}", row["visitor_hash"])
    assert row["aid"] is None and row["purposes"] is None and row["gpc"] is None
    assert row["source"] == fmt


def test_one_input(data: bytes) -> None:
    """The fuzz target: one log file, first byte the format."""
    if not data:
        return
    fmt = FORMATS[data[0] % len(FORMATS)]
    raw = SCRATCH / "raw"
    log = SCRATCH / "input.log"
    log.write_bytes(data[1:])
    try:
        report = import_log(raw, [log], fmt, progress=False)
        assert report.imported + report.rejected + report.blank == report.lines
        rows = [
            row
            for segment in list_segments(raw)
            for row in pq.read_table(segment, schema=RAW_EVENT_SCHEMA).to_pylist()
        ]
        assert len(rows) == report.imported, (len(rows), report.imported)
        for row in rows:
            check_row(row, fmt)
    finally:
        shutil.rmtree(raw, ignore_errors=True)


def seed_corpus(folder: Path) -> None:
    """A few dozen real inputs to start from (first byte: the format)."""
    if folder.is_dir() and any(folder.iterdir()):
        return
    folder.mkdir(parents=True, exist_ok=True)
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()[:300]
    for index in range(0, 300, 10):
        body = "\n".join(lines[index : index + 10]).encode() + b"\n"
        for code, _ in enumerate(FORMATS[:2]):
            (folder / f"seed-{code}-{index}").write_bytes(bytes([code]) + body)
    nginx = (
        b'{"time_iso8601":"2026-03-02T10:00:00+09:00","remote_addr":"192.0.2.1",'
        b'"request":"GET /a?utm_source=x HTTP/1.1","status":"200","request_time":"0.010",'
        b'"http_referer":"https://www.google.com/","http_user_agent":"Mozilla/5.0"}\n'
    )
    (folder / "seed-2-nginx").write_bytes(bytes([2]) + nginx * 3)


def random_inputs(count: int, seed: int = 0) -> None:
    """Without atheris: ``count`` inputs from a plain byte mutator over the seed corpus."""
    rng = random.Random(seed)
    seed_corpus(CORPUS)
    seeds = [p.read_bytes() for p in sorted(CORPUS.iterdir())]
    for _ in range(count):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 16)):
            at = rng.randrange(len(data))
            choice = rng.randrange(4)
            if choice == 0:
                data[at] = rng.randrange(256)
            elif choice == 1:
                del data[at : at + rng.randint(1, 20)]
            elif choice == 2:
                data[at:at] = rng.choice([b'"', b"[", b"]", b"\\", b"\x00", b"\n", b"%", b" "])
            else:
                other = rng.choice(seeds)
                data[at:] = other[rng.randrange(len(other)) :]
        test_one_input(bytes(data))
    print(f"{count} random inputs: no failure")


def main() -> None:
    """libFuzzer with atheris; ``--random N`` without it."""
    harness.run(
        script="fuzz_log_parser.py",
        atheris=atheris,
        test_one_input=test_one_input,
        random_inputs=random_inputs,
        seed_corpus=seed_corpus,
        corpus=CORPUS,
    )


if __name__ == "__main__":
    main()
