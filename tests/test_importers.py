"""``import_log``: access logs into RAW events, on the real sample log and small fixtures."""

from __future__ import annotations

import gzip
import io
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from anonymizer.importers import LOG_FORMATS, ImportLogError, ImportReport, import_log
from anonymizer.importers.lines import MAX_LINE_BYTES, BufferPool, block_lines, read_blocks
from consent_middleware.raw.salts import SaltStore
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import list_segments

# The shared data folder sits beside the checkout (../shared), in CI as here.
SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "apache_combined_sample.log"
SITE = "semicomplete.com"
DOTTED_QUAD = re.compile(rb"(?<![\d.])\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?![\d.])")
TRUNCATED_LINE = 8899  # the sample's one line whose user agent lost its closing quote


def sample_lines(n: int | None = None) -> list[str]:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    return lines if n is None else lines[:n]


def raw_table(raw: Path) -> pa.Table:
    segments = list_segments(raw)
    assert segments
    return pa.concat_tables(pq.read_table(p, schema=RAW_EVENT_SCHEMA) for p in segments)


@pytest.fixture(scope="module")
def sample_import(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ImportReport]:
    raw = tmp_path_factory.mktemp("raw")
    report = import_log(raw, [SAMPLE], "combined", site_host=SITE, progress=False)
    return raw, report


# --------------------------------------------------------------------------- the real sample


def test_sample_counts_and_the_one_malformed_line(
    sample_import: tuple[Path, ImportReport],
) -> None:
    raw, report = sample_import
    assert (report.lines, report.imported, report.rejected, report.blank) == (10000, 9999, 1, 0)
    assert [tuple(r) for r in report.rejects] == [(str(SAMPLE), TRUNCATED_LINE, "syntax")]
    assert dict(report.by_reason) == {"syntax": 1}
    assert report.files == [str(SAMPLE)]
    assert raw_table(raw).num_rows == 9999
    assert f"{SAMPLE}:{TRUNCATED_LINE}: syntax" in report.summary()


def test_sample_events_follow_the_raw_contract(sample_import: tuple[Path, ImportReport]) -> None:
    raw, report = sample_import
    table = raw_table(raw)
    assert table.schema.names == RAW_EVENT_SCHEMA.names
    rows = table.to_pylist()
    assert {p.parent.name for p in report.segments} == {
        "date=2015-05-17",
        "date=2015-05-18",
        "date=2015-05-19",
        "date=2015-05-20",
    }
    assert all(p.name.startswith("import-combined-") for p in report.segments)
    for row in rows:
        ts = row["ts"]
        assert datetime(2015, 5, 17, tzinfo=UTC) <= ts < datetime(2015, 5, 21, tzinfo=UTC)
        assert row["path"].startswith("/") and "?" not in row["path"]
        assert row["source"] == "combined"
        assert row["aid"] is None and row["purposes"] is None
        assert row["policy_version"] is None and row["gpc"] is None
        assert row["language"] is None and row["duration_ms"] is None
        assert row["visitor_hash"] is not None and len(row["visitor_hash"]) == 32
        host = row["referrer_host"]
        assert host is None or re.fullmatch(r"[a-z0-9._-]+", host), host
    assert {r["method"] for r in rows} >= {"GET", "HEAD"}
    assert {r["status"] for r in rows} >= {200, 304, 404}


def test_sample_query_strings_are_reduced_to_utm(sample_import: tuple[Path, ImportReport]) -> None:
    raw, _ = sample_import
    rows = raw_table(raw).to_pylist()
    tagged = [r for r in rows if r["utm_source"] is not None]
    assert tagged
    assert {r["utm_source"] for r in tagged} == {"feedburner"}
    assert {r["utm_medium"] for r in tagged} == {"feed"}
    assert any(r["utm_campaign"].startswith("feed: semicomplete") for r in tagged)
    assert all("utm_" not in r["path"] for r in rows)


def test_first_line_matches_the_contract_field_by_field(
    sample_import: tuple[Path, ImportReport],
) -> None:
    raw, _ = sample_import
    table = raw_table(raw)
    first = table.filter(
        pa.compute.equal(
            table["ts"],
            pa.scalar(datetime(2015, 5, 17, 10, 5, 3, tzinfo=UTC), pa.timestamp("us", tz="UTC")),
        )
    ).to_pylist()
    ua = (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_9_1) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/32.0.1700.77 Safari/537.36"
    )
    expected_hash = SaltStore(raw).hash_for(first[0]["ts"], "83.149.9.216", ua, SITE)
    assert {
        "method": "GET",
        "status": 200,
        "path": "/presentations/logstash-monitorama-2013/images/kibana-search.png",
        "referrer_host": "semicomplete.com",
        "user_agent": ua,
        "visitor_hash": expected_hash,
    }.items() <= first[0].items()


def test_no_ip_address_of_the_log_reaches_raw(sample_import: tuple[Path, ImportReport]) -> None:
    raw, _ = sample_import
    # The client addresses: the first field of every line (other dotted quads in the log are
    # version numbers inside user agents, such as "rv:1.9.0.19", and rightly stay).
    source_ips = {line.split(b" ", 1)[0] for line in SAMPLE.read_bytes().splitlines()}
    assert all(DOTTED_QUAD.fullmatch(ip) for ip in source_ips)
    assert b"83.149.9.216" in source_ips and len(source_ips) > 1000
    # Every byte of every file under RAW (segments are compressed, so also every value).
    for path in raw.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"83.149.9.216" not in data
            assert not source_ips & set(DOTTED_QUAD.findall(data)), path
    table = raw_table(raw)
    text = "\n".join(
        str(value) for column in table.columns for value in column.to_pylist() if value is not None
    ).encode()
    assert not source_ips & set(DOTTED_QUAD.findall(text))


def test_salt_files_exist_per_imported_day(sample_import: tuple[Path, ImportReport]) -> None:
    raw, _ = sample_import
    names = sorted(p.name for p in (raw / "salts").glob("*.salt"))
    assert names == [f"2015-05-{d}.salt" for d in (17, 18, 19, 20)]


# --------------------------------------------------------------------------- gzip


def test_gzip_is_recognised_by_content_not_name(tmp_path: Path) -> None:
    lines = sample_lines(500)
    packed = tmp_path / "access.log"  # no .gz on purpose
    packed.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    report = import_log(tmp_path / "raw", [packed], "combined", site_host=SITE)
    assert (report.lines, report.imported, report.rejected) == (500, 500, 0)
    assert raw_table(tmp_path / "raw").num_rows == 500


def test_truncated_gzip_keeps_what_was_read_and_reports_it(tmp_path: Path) -> None:
    data = gzip.compress(("\n".join(sample_lines(2000)) + "\n").encode())
    broken = tmp_path / "access.log.gz"
    broken.write_bytes(data[: len(data) // 2])
    report = import_log(tmp_path / "raw", [broken], "combined", site_host=SITE)
    assert 0 < report.imported < 2000
    assert report.rejected == 1
    # The line cut by the damage is counted, and rejected, as the last line of the file.
    assert report.rejects[0].line_number == report.lines == report.imported + 1
    assert "compressed data" in report.rejects[0].reason
    assert raw_table(tmp_path / "raw").num_rows == report.imported


# --------------------------------------------------------------------------- malformed lines


def test_malformed_lines_are_rejected_with_their_line_numbers(tmp_path: Path) -> None:
    good = sample_lines(3)
    bad_lines: list[tuple[bytes, str | None]] = [
        (good[0].encode(), None),
        (b"this is not a log line", "syntax"),
        (good[1].replace("17/May/2015", "32/May/2015").encode(), "bad timestamp"),
        (good[1].replace("17/May/2015", "17/Mai/2015").encode(), "bad timestamp"),
        (good[1].replace('" 200 ', '" 999 ').encode(), "bad status"),
        (good[1].replace('" 200 ', '" 2x0 ').encode(), "bad status"),
        (good[1].replace('"GET /', '"\\x16\\x03\\x01 /').encode(), "bad request line"),
        (good[1].replace('"GET /', '"-').encode(), "bad request line"),
        (b"\x00\x01\x02binary\xff\xfe junk", "binary data"),
        (good[1].encode()[:-20] + b"\x00" + good[1].encode()[-20:], "binary data"),
        (b"x" * (17 * 1024), "line too long"),
        (b"", None),  # blank lines are skipped, not rejected
        (good[2].replace("Mozilla", "Mo\xe9zilla").encode("latin-1"), None),  # kept
    ]
    log = tmp_path / "access.log"
    log.write_bytes(b"\n".join(line for line, _ in bad_lines) + b"\n")
    report = import_log(tmp_path / "raw", [log], "combined", site_host=SITE)
    expected = [
        (str(log), number, reason)
        for number, (_, reason) in enumerate(bad_lines, start=1)
        if reason is not None
    ]
    assert [tuple(r) for r in report.rejects] == expected
    assert (report.lines, report.imported, report.rejected, report.blank) == (13, 2, 10, 1)
    user_agents = raw_table(tmp_path / "raw")["user_agent"].to_pylist()
    assert any("Mo\ufffdzilla" in ua for ua in user_agents)


def test_crlf_line_endings_empty_files_and_a_missing_final_newline(tmp_path: Path) -> None:
    crlf = tmp_path / "crlf.log"
    crlf.write_bytes(("\r\n".join(sample_lines(100)) + "\r\n").encode())
    no_newline = tmp_path / "last.log"
    no_newline.write_text("\n".join(sample_lines(5)))
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    report = import_log(tmp_path / "raw", [crlf, no_newline, empty], "combined")
    assert (report.lines, report.imported, report.rejected) == (105, 105, 0)
    agents = raw_table(tmp_path / "raw")["user_agent"].to_pylist()
    assert not any(ua.endswith("\r") for ua in agents if ua)


def test_an_over_long_line_is_skipped_across_reads_without_being_kept() -> None:
    long_line = b"x" * (MAX_LINE_BYTES * 3)
    data = b"a\n" + long_line + b"\nb\n" + long_line + b"\n" + long_line
    blocks = list(read_blocks(io.BufferedReader(io.BytesIO(data)), pool=BufferPool(1000)))
    lines: list[str | None] = []
    for block in blocks:
        lines.extend(block_lines(block).to_pylist())
    assert lines == ["a", None, "b", None, None]
    assert all(block is None or len(block) < 1000 for block in blocks)


def test_read_buffers_handed_back_are_reused_without_mixing_lines() -> None:
    """Each block's lines are copied out before its buffer is read into again."""
    data = b"".join(f"line {i} {'y' * (i % 97)}\n".encode() for i in range(5000))
    pool = BufferPool(4096)
    buffers: set[int] = set()
    lines: list[str | None] = []
    for block in read_blocks(io.BufferedReader(io.BytesIO(data)), pool=pool):
        assert isinstance(block, memoryview)
        buffers.add(id(block.obj))
        lines.extend(block_lines(block).to_pylist())
        pool.give_back(block)
    assert lines == data.decode().splitlines()
    assert len(buffers) == 1  # one buffer, read into again and again


def test_only_the_first_twenty_rejects_are_listed_but_all_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "junk.log"
    log.write_text("garbage\n" * 50)
    report = import_log(tmp_path / "raw", [log], "combined")
    assert report.rejected == 50 and report.by_reason["syntax"] == 50
    assert [r.line_number for r in report.rejects] == list(range(1, 21))
    assert "... and 30 more" in report.summary()
    assert list_segments(tmp_path / "raw") == []


def test_timestamps_are_converted_to_utc_from_the_log_offset(tmp_path: Path) -> None:
    line = sample_lines(1)[0].replace("17/May/2015:10:05:03 +0000", "18/May/2015:01:30:00 +0900")
    log = tmp_path / "tokyo.log"
    log.write_text(line + "\n")
    report = import_log(tmp_path / "raw", [log], "combined")
    assert report.segments[0].parent.name == "date=2015-05-17"
    ts = raw_table(tmp_path / "raw")["ts"].to_pylist()
    assert ts == [datetime(2015, 5, 17, 16, 30, tzinfo=UTC)]


def test_big_imports_are_written_in_bounded_batches(tmp_path: Path) -> None:
    log = tmp_path / "triple.log"
    log.write_text("\n".join(sample_lines() * 3) + "\n")
    whole = import_log(tmp_path / "raw", [log], "combined")
    assert len(whole.segments) == 4  # one write, one segment per UTC day
    report = import_log(tmp_path / "raw2", [log], "combined", batch_rows=1000)
    assert report.imported == whole.imported == 3 * 9999
    assert len(report.segments) > 4  # written as it went, not held until the end
    assert max(pq.read_metadata(p).num_rows for p in report.segments) < 9999
    assert raw_table(tmp_path / "raw2").num_rows == 3 * 9999


# --------------------------------------------------------------------------- common format


def test_common_log_format(tmp_path: Path) -> None:
    combined = sample_lines(300)
    common = [re.sub(r' "[^"]*" "[^"]*"$', "", line) for line in combined]
    log = tmp_path / "common.log"
    log.write_text("\n".join(common) + "\n")
    report = import_log(tmp_path / "raw", [log], "common", site_host=SITE)
    assert (report.imported, report.rejected) == (300, 0)
    table = raw_table(tmp_path / "raw")
    assert set(table["source"].to_pylist()) == {"common"}
    assert set(table["user_agent"].to_pylist()) == {None}
    assert set(table["referrer_host"].to_pylist()) == {None}
    assert None not in table["visitor_hash"].to_pylist()
    reference = tmp_path / "combined.log"
    reference.write_text("\n".join(combined) + "\n")
    import_log(tmp_path / "raw2", [reference], "combined", site_host=SITE)
    other = raw_table(tmp_path / "raw2")
    for column in ("ts", "method", "status", "path"):
        assert sorted(table[column].to_pylist()) == sorted(other[column].to_pylist())


# --------------------------------------------------------------------------- nginx JSON

_COMBINED = re.compile(
    r'(?P<ip>\S+) \S+ \S+ \[(?P<time>[^\]]+)\] "(?P<request>[^"]*)" (?P<status>\d+) (?P<bytes>\S+)'
    r' "(?P<referer>[^"]*)" "(?P<ua>[^"]*)"'
)


def to_nginx_json(line: str, variant: int) -> str:
    m = _COMBINED.fullmatch(line)
    assert m is not None
    when = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z")
    obj: dict[str, object] = {
        "remote_addr": m["ip"],
        "status": m["status"] if variant % 2 else int(m["status"]),
        "body_bytes_sent": m["bytes"],
        "http_referer": m["referer"],
        "http_user_agent": m["ua"],
        "request_time": "0.250" if variant % 2 else 0.25,
        "host": "www.example.org",
        "http_accept_language": "ja,en-US;q=0.8",
    }
    if variant % 3 == 0:
        obj["time_iso8601"] = when.astimezone().isoformat()
        obj["request"] = m["request"]
    elif variant % 3 == 1:
        obj["time_local"] = m["time"]
        method, target, _ = m["request"].split(" ")
        path, _, args = target.partition("?")
        obj.update(request_method=method, uri=path, args=args)
    else:
        obj["@timestamp"] = when.timestamp()
        method, target, _ = m["request"].split(" ")
        obj.update(method=method, request_uri=target)
    return json.dumps(obj)


def test_nginx_json_matches_the_combined_import_of_the_same_lines(tmp_path: Path) -> None:
    combined = [line for line in sample_lines(400) if _COMBINED.fullmatch(line)]
    log = tmp_path / "access.json"
    log.write_text("".join(to_nginx_json(line, i) + "\n" for i, line in enumerate(combined)))
    report = import_log(tmp_path / "raw", [log], "nginx-json", site_host=SITE)
    assert (report.imported, report.rejected) == (len(combined), 0)
    table = raw_table(tmp_path / "raw")
    assert set(table["source"].to_pylist()) == {"nginx-json"}
    assert set(table["language"].to_pylist()) == {"ja"}
    assert set(table["duration_ms"].to_pylist()) == {250.0}
    reference = tmp_path / "combined.log"
    reference.write_text("\n".join(combined) + "\n")
    import_log(tmp_path / "raw2", [reference], "combined", site_host=SITE)
    other = raw_table(tmp_path / "raw2")
    keys = ("ts", "method", "status", "path", "utm_source", "referrer_host", "user_agent")

    def rows(t: pa.Table) -> list[tuple[object, ...]]:
        return sorted(zip(*(t[k].to_pylist() for k in keys), strict=True), key=repr)

    assert rows(table) == rows(other)
    # The host the log records keys the visitor hash, so it differs from the site_host one.
    assert set(table["visitor_hash"].to_pylist()).isdisjoint(other["visitor_hash"].to_pylist())


def test_nginx_json_rejects_and_repairs(tmp_path: Path) -> None:
    base = {"time_iso8601": "2024-03-01T09:00:00+09:00", "remote_addr": "192.0.2.1"}
    lines = [
        json.dumps({**base, "request": "GET /a?utm_source=x HTTP/1.1", "status": 200}),
        '{"time_iso8601": "2024-03-01T09:00:00+09:00", "remote_addr": "192.0.2.1", '
        '"request": "GET /b HTTP/1.1", "status": 200, "http_user_agent": "say \\x22hi\\x22"}',
        "{not json",
        json.dumps([1, 2, 3]),
        json.dumps({**base, "request": "GET /c HTTP/1.1"}),
        json.dumps(
            {
                **base,
                "time_iso8601": "2024-03-01T09:00:00",
                "request": "GET / HTTP/1.1",
                "status": 200,
            }
        ),
        json.dumps({"remote_addr": "192.0.2.1", "request": "GET / HTTP/1.1", "status": 200}),
        json.dumps({**base, "request": "\u0016\u0003", "status": 400}),
        json.dumps({**base, "request": "GET / HTTP/1.1", "status": True}),
        json.dumps({**base, "request": "GET /\u0000x HTTP/1.1", "status": 200}),
    ]
    log = tmp_path / "access.json"
    log.write_text("\n".join(lines) + "\n")
    report = import_log(tmp_path / "raw", [log], "nginx-json")
    assert [(r.line_number, r.reason) for r in report.rejects] == [
        (3, "invalid JSON"),
        (4, "invalid JSON"),
        (5, "missing field: status"),
        (6, "bad timestamp"),
        (7, "missing field: time"),
        (8, "bad field value"),
        (9, "bad status"),
        (10, "bad field value"),
    ]
    table = raw_table(tmp_path / "raw")
    assert table["path"].to_pylist() == ["/a", "/b"]
    assert table["utm_source"].to_pylist() == ["x", None]
    assert table["user_agent"].to_pylist() == [None, 'say "hi"']
    assert table["ts"].to_pylist() == [datetime(2024, 3, 1, 0, 0, tzinfo=UTC)] * 2


# --------------------------------------------------------------------------- errors and output


def test_missing_file_names_the_file_and_writes_nothing(tmp_path: Path) -> None:
    log = tmp_path / "ok.log"
    log.write_text("\n".join(sample_lines(10)) + "\n")
    missing = tmp_path / "nope.log"
    with pytest.raises(ImportLogError, match=r"nope\.log.*does not exist") as info:
        import_log(tmp_path / "raw", [log, missing], "combined")
    assert info.value.path == missing
    assert not (tmp_path / "raw").exists()


def test_directory_and_unknown_format_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ImportLogError, match="is a directory"):
        import_log(tmp_path / "raw", [tmp_path], "combined")
    with pytest.raises(ImportLogError, match="combined, common, nginx-json"):
        import_log(tmp_path / "raw", [SAMPLE], "apache")  # type: ignore[arg-type]
    with pytest.raises(ImportLogError, match="no log files"):
        import_log(tmp_path / "raw", [], "combined")
    assert LOG_FORMATS == ("combined", "common", "nginx-json")


def test_progress_bar_only_when_asked_or_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "a.log"
    log.write_text("\n".join(sample_lines(50)) + "\n")
    import_log(tmp_path / "raw", [log], "combined")  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    import_log(tmp_path / "raw2", [log], "combined", progress=True)
    assert "a.log" in capsys.readouterr().err


def test_the_import_log_command_reports_counts_and_rejected_lines(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from anonymizer.cli import anonymizer_cli

    log = tmp_path / "access.log"
    log.write_text("\n".join([*sample_lines(20), "garbage"]) + "\n")
    runner = CliRunner()
    result = runner.invoke(
        anonymizer_cli,
        ["import-log", "--raw", str(tmp_path / "raw"), "--format", "combined", str(log)],
    )
    assert result.exit_code == 0, result.output
    assert "21 lines: 20 imported, 1 rejected" in result.output
    assert f"{log}:21: syntax" in result.output
    missing = runner.invoke(
        anonymizer_cli,
        ["import-log", "--raw", str(tmp_path / "raw"), "--format", "combined", "nope.log"],
    )
    assert missing.exit_code != 0
    assert "nope.log" in missing.output and "does not exist" in missing.output
