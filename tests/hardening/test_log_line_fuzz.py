"""Access-log lines at volume: tens of thousands of hostile lines per CI run through
``import_log``; none raises, every line is accounted for, no malformed row reaches RAW.

``tests/test_import_fuzz.py`` lets Hypothesis build each line (thorough shrinking, about
2 ms a line, so a few thousand lines). Here Hypothesis draws a seed and a mutation rate per
example and a fast seeded mutator turns the real sample log into a batch of
:data:`LINES_PER_EXAMPLE` damaged lines (field swaps, cut and spliced fields, quoting and
escaping breakage, control and non-UTF-8 bytes, absurd dates, statuses and targets), so the
same CI time covers about 30,000 lines per format. ``derandomize=True`` makes every CI run
try the same cases; ``LOG_FUZZ_EXAMPLES=2000`` runs a longer campaign. A failure prints the
seed, which reproduces the batch exactly.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_import_fuzz import SAMPLE, check_row

from anonymizer.importers import import_log
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import list_segments

LINES_PER_EXAMPLE = 1_000
EXAMPLES = int(os.environ.get("LOG_FUZZ_EXAMPLES", "30"))
SEEDS = SAMPLE.read_text(encoding="utf-8").splitlines()

volume = settings(
    max_examples=EXAMPLES,
    derandomize=True,  # the same cases on every CI run
    database=None,
    deadline=None,  # each example imports a thousand lines; time is not under test
    suppress_health_check=[HealthCheck.too_slow],
)

NASTY = [
    '"',
    '\\"',
    "\\",
    "[",
    "]",
    " ",
    "\t",
    "-",
    "%",
    "%00",
    "%ff",
    "%2F..%2F",
    "?",
    "&",
    "#",
    "\x00",
    "\x1b[31m",
    "\r",
    "\u2028",
    "\ufeff",
    "é",
    "日本語",
    "\U0001f600",
    "\udcff",
    "' OR 1=1 --",
    "<script>",
    "${jndi:ldap://x}",
    "../../etc/passwd",
    "A" * 300,
    "9" * 40,
    "utm_source=",
    "utm_campaign=%E3%81%82",
    "@",
    "user:pw@",
]
DATES = [
    "00/Jan/0000:00:00:00 +0000",
    "31/Feb/2026:25:61:61 +0000",
    "01/Jan/1969:23:59:59 +0000",
    "01/Jan/2100:00:00:00 +0000",
    "31/Dec/2099:23:59:59 -1200",
    "17/May/2015:10:05:03 +9999",
    "17/may/2015:10:05:03 +0000",
    "17/May/2015:10:05:03",
    "",
    "17/May/2015:10:05:03 +0000] [x",
]
TARGETS = ["*", "", "http://h/x?y", "//x", "/a b", "/%", "/?utm_source=a&utm_source=b", "/\x7f"]
STATUSES = ["0", "99", "600", "-1", "2000", "20", "abc", "", "200 200"]


def mutate_clf(line: str, rng: random.Random, rate: int) -> str:
    """A combined-format line damaged by ``rate`` random edits."""
    for _ in range(rng.randint(1, rate)):
        op = rng.randrange(9)
        at = rng.randrange(len(line) + 1)
        if op == 0:
            line = line[:at] + rng.choice(NASTY) + line[at:]
        elif op == 1:
            line = line[:at] + line[at + rng.randint(1, 30) :]
        elif op == 2:
            line = line[:at]
        elif op == 3:  # splice with another real line
            other = rng.choice(SEEDS)
            line = line[:at] + other[rng.randrange(len(other) + 1) :]
        elif op == 4 and "[" in line and "]" in line:
            start, end = line.index("["), line.index("]")
            line = line[: start + 1] + rng.choice(DATES) + line[end:]
        elif op == 5 and line.count('"') >= 2:
            first = line.index('"')
            second = line.index('"', first + 1)
            method = rng.choice(["GET", "POST", "get", "", "X" * 30, "GET GET"])
            request = f"{method} {rng.choice(TARGETS)} HTTP/1.1"
            line = line[: first + 1] + request + line[second:]
        elif op == 6:
            parts = line.split(" ")
            if len(parts) > 8:
                parts[8] = rng.choice(STATUSES)
            line = " ".join(parts)
        elif op == 7:
            parts = line.split(" ")
            rng.shuffle(parts)
            line = " ".join(parts)
        else:
            line = "".join(chr(rng.randrange(0x20, 0x7F)) for _ in range(rng.randint(0, 200)))
    return line


def nginx_record(line: str, rng: random.Random, rate: int) -> str:
    """The sample line as an NGINX JSON record, then damaged: wrong types, missing or
    duplicated keys, absurd times, or the JSON text itself cut or edited."""
    parts = line.split('"')
    record: dict[str, object] = {
        "time_iso8601": "2015-05-17T10:05:03+00:00",
        "remote_addr": line.split(" ", 1)[0],
        "request": parts[1] if len(parts) > 1 else "",
        "status": parts[2].split()[0] if len(parts) > 2 and parts[2].split() else "200",
        "http_referer": parts[3] if len(parts) > 3 else "-",
        "http_user_agent": parts[5] if len(parts) > 5 else "",
        "request_time": "0.012",
    }
    junk: list[object] = [None, True, -1, 1e308, float("nan"), "", [], {}, {"a": [1]}, "x" * 500]
    for _ in range(rng.randint(1, rate)):
        key = rng.choice([*record, "msec", "@timestamp", "uri", "args", "host", "time_local"])
        op = rng.randrange(5)
        if op == 0:
            record[key] = rng.choice(junk)
        elif op == 1:
            record.pop(key, None)
        elif op == 2:
            record[key] = rng.choice([*NASTY, *DATES, *TARGETS, *STATUSES])
        elif op == 3:
            record["time_iso8601"] = rng.choice(
                ["1969-12-31T23:59:59Z", "2100-01-01T00:00:00Z", "2015-02-30T00:00:00", "now"]
            )
        else:
            record["msec"] = rng.choice(["1431857103.123", "-5", "1e30", "abc", 1e20])
    text = json.dumps(record, ensure_ascii=rng.random() < 0.5, allow_nan=True)
    if rng.random() < 0.2:
        text = mutate_clf(text, rng, 2)
    return text


def batch(seed: int, rate: int, make: str) -> bytes:
    rng = random.Random(seed)
    lines = []
    for _ in range(LINES_PER_EXAMPLE):
        seed_line = rng.choice(SEEDS)
        if make == "nginx":
            lines.append(nginx_record(seed_line, rng, rate))
        elif rng.random() < 0.1:
            lines.append(seed_line)  # some lines stay valid, so rows do reach RAW
        else:
            lines.append(mutate_clf(seed_line, rng, rate))
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    if rng.random() < 0.3:  # raw bytes: invalid UTF-8, NULs, lone CRs
        blob = bytearray(data)
        for _ in range(rng.randint(1, 20)):
            blob[rng.randrange(len(blob))] = rng.choice([0x00, 0x0D, 0x80, 0xC3, 0xFF, 0x22])
        data = bytes(blob)
    return data + b"\n"


def import_and_check(data: bytes, fmt: str) -> int:
    """Import ``data`` as one log file; returns the rows imported, all checked."""
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fuzz.log"
        log.write_bytes(data)
        report = import_log(Path(tmp) / "raw", [log], fmt)  # type: ignore[arg-type]
        assert report.imported + report.rejected + report.blank == report.lines
        assert report.lines == data.count(b"\n")
        assert report.rejected == sum(report.by_reason.values())
        rows = [
            row
            for segment in list_segments(Path(tmp) / "raw")
            for row in pq.read_table(segment, schema=RAW_EVENT_SCHEMA).to_pylist()
        ]
        assert len(rows) == report.imported
        for row in rows:
            check_row(row)
        return report.imported


@volume
@given(seed=st.integers(0, 2**32 - 1), rate=st.integers(1, 6))
def test_damaged_clf_lines_at_volume(seed: int, rate: int) -> None:
    data = batch(seed, rate, "clf")
    imported = import_and_check(data, "combined")
    assert imported > 0  # the valid lines in the batch got through
    import_and_check(data, "common")


@volume
@given(seed=st.integers(0, 2**32 - 1), rate=st.integers(1, 6))
def test_damaged_nginx_json_at_volume(seed: int, rate: int) -> None:
    import_and_check(batch(seed, rate, "nginx"), "nginx-json")
