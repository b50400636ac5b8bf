"""Untrusted log lines: whatever a log holds, ``import_log`` never crashes and never writes an
event that breaks the raw-event contract."""

from __future__ import annotations

import json
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anonymizer.importers import LOG_FORMATS, import_log
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import list_segments
from consent_middleware.scrub import MAX_FIELD_LENGTH, MAX_PATH_LENGTH

# The shared data folder sits beside the checkout (../shared), in CI as here.
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "apache_combined_sample.log"
SEEDS = SAMPLE.read_text(encoding="utf-8").splitlines()[:200]
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
METHOD = re.compile(r"[A-Z][A-Z_-]{0,19}")
# referrer_host() keeps any letters and digits (IDN hosts), never URL punctuation or spaces.
HOST = re.compile(r"[^\s/?#:@A-Z\x00-\x1f\x7f]+")
LANGUAGE = re.compile(r"[a-z]{1,8}")
HASH = re.compile(r"[0-9a-f]{32}")
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2100, 1, 1, tzinfo=UTC)

fuzz = settings(
    max_examples=60,
    deadline=None,  # each example writes Parquet; timing is not what is tested here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_row(row: dict[str, Any]) -> None:
    """Every field of an imported event is within the contract."""
    assert EARLIEST <= row["ts"] < LATEST
    assert METHOD.fullmatch(row["method"])
    assert 100 <= row["status"] <= 599
    duration = row["duration_ms"]
    assert duration is None or 0.0 <= duration <= 7 * 24 * 3600 * 1000.0
    path = row["path"]
    assert path.startswith("/") and len(path) <= MAX_PATH_LENGTH
    assert not CONTROL.search(path)
    for name in ("utm_source", "utm_medium", "utm_campaign", "utm_term", "utm_content"):
        value = row[name]
        assert value is None or (len(value) <= MAX_FIELD_LENGTH and not CONTROL.search(value))
    host = row["referrer_host"]
    assert host is None or (HOST.fullmatch(host) and len(host) <= MAX_FIELD_LENGTH)
    ua = row["user_agent"]
    assert ua is None or (ua and not CONTROL.search(ua))
    assert row["language"] is None or LANGUAGE.fullmatch(row["language"])
    assert row["visitor_hash"] is None or HASH.fullmatch(row["visitor_hash"])
    assert row["aid"] is None and row["purposes"] is None
    assert row["policy_version"] is None and row["gpc"] is None
    assert row["source"] in LOG_FORMATS


def import_and_check(data: bytes, fmt: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "fuzz.log"
        log.write_bytes(data)
        report = import_log(Path(tmp) / "raw", [log], fmt)  # type: ignore[arg-type]
        assert report.imported + report.rejected + report.blank >= report.lines
        assert report.rejected == sum(report.by_reason.values())
        assert all(1 <= r.line_number <= report.lines + 1 for r in report.rejects)
        rows = [
            row
            for segment in list_segments(Path(tmp) / "raw")
            for row in pq.read_table(segment, schema=RAW_EVENT_SCHEMA).to_pylist()
        ]
        assert len(rows) == report.imported
        for row in rows:
            check_row(row)


@st.composite
def mutated_line(draw: st.DrawFn) -> str:
    """A real log line with a few characters replaced, inserted or deleted."""
    line = draw(st.sampled_from(SEEDS))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(line)))
        op = draw(st.sampled_from(["replace", "insert", "delete"]))
        piece = draw(st.text(max_size=3))
        if op == "replace":
            line = line[:at] + piece + line[at + len(piece) :]
        elif op == "insert":
            line = line[:at] + piece + line[at:]
        else:
            line = line[:at] + line[at + draw(st.integers(1, 5)) :]
    return line


@st.composite
def assembled_line(draw: st.DrawFn) -> str:
    """A combined line built from arbitrary parts in the right places."""
    part = st.text(max_size=40)
    ip = draw(st.one_of(st.ip_addresses().map(str), part))
    day = draw(st.integers(0, 40))
    mon = draw(st.sampled_from(["Jan", "May", "Dec", "Foo", "may"]))
    year = draw(st.integers(0, 99999))
    clock = draw(st.tuples(*(st.integers(0, 99),) * 3))
    offset = draw(st.sampled_from(["+0000", "-1200", "+1400", "+9999", "0000", "+09:00"]))
    when = f"{day:02d}/{mon}/{year}:{clock[0]:02d}:{clock[1]:02d}:{clock[2]:02d} {offset}"
    method = draw(st.sampled_from(["GET", "POST", "get", "", "PROPFIND", "X" * 30]))
    target = draw(
        st.one_of(
            st.sampled_from(
                ["/", "/a?utm_source=x&utm_medium=Email", "http://[::1/x", "*", "/%00%ff?q=1"]
            ),
            part.map(lambda s: "/" + s),
        )
    )
    status = draw(st.one_of(st.integers(0, 1000).map(str), part))
    referrer = draw(st.one_of(st.just("-"), part, part.map(lambda s: "https://" + s + "/p?q")))
    ua = draw(part)
    return f'{ip} - - [{when}] "{method} {target} HTTP/1.1" {status} 12 "{referrer}" "{ua}"'


json_scalar = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=30)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(), inner)),
    max_leaves=6,
)
NGINX_KEYS = [
    "time_iso8601",
    "time_local",
    "@timestamp",
    "time",
    "msec",
    "remote_addr",
    "request",
    "request_method",
    "uri",
    "request_uri",
    "args",
    "status",
    "request_time",
    "http_referer",
    "http_user_agent",
    "http_accept_language",
    "host",
]


@st.composite
def nginx_line(draw: st.DrawFn) -> str:
    """A JSON object with the keys the NGINX importer reads, mostly plausible, sometimes not."""

    def mostly(plausible: st.SearchStrategy[Any]) -> Any:
        return draw(plausible if draw(st.integers(0, 3)) else json_value)

    obj: dict[str, Any] = {
        "time_iso8601": mostly(
            st.datetimes(
                min_value=datetime(1960, 1, 1),
                max_value=datetime(2110, 1, 1),
                timezones=st.just(UTC),
            ).map(lambda d: d.isoformat())
        ),
        "request": mostly(
            st.sampled_from(["GET /x?utm_campaign=a HTTP/1.1", "POST /%41/b HTTP/2.0", "GET *"])
        ),
        "status": mostly(st.one_of(st.integers(90, 610), st.integers(90, 610).map(str))),
    }
    for key in draw(st.lists(st.sampled_from(NGINX_KEYS), max_size=6)):
        obj.setdefault(key, draw(json_value))
    return json.dumps(obj, ensure_ascii=draw(st.booleans()))


def lines_to_bytes(lines: list[str]) -> bytes:
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


@fuzz
@given(lines=st.lists(st.binary(max_size=300), max_size=20))
def test_arbitrary_bytes_never_crash(lines: list[bytes]) -> None:
    for fmt in LOG_FORMATS:
        import_and_check(b"\n".join(lines), fmt)


@fuzz
@given(lines=st.lists(st.text(max_size=200), max_size=20))
def test_arbitrary_text_never_crashes(lines: list[str]) -> None:
    for fmt in LOG_FORMATS:
        import_and_check(lines_to_bytes(lines), fmt)


@fuzz
@given(lines=st.lists(st.one_of(mutated_line(), assembled_line()), min_size=1, max_size=20))
def test_damaged_combined_lines_never_produce_invalid_events(lines: list[str]) -> None:
    import_and_check(lines_to_bytes(lines), "combined")
    import_and_check(lines_to_bytes(lines), "common")


@fuzz
@given(lines=st.lists(nginx_line(), min_size=1, max_size=20))
def test_arbitrary_json_never_produces_invalid_events(lines: list[str]) -> None:
    import_and_check(lines_to_bytes(lines), "nginx-json")
