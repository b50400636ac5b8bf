"""Import history: ``import-log`` never imports the same lines twice (re-imports, rotated
gzip copies, grown logs, crashes, concurrent imports), on the real sample log."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

import anonymizer
from anonymizer.cli import anonymizer_cli
from anonymizer.importers import ImportReport, import_log
from anonymizer.importers.history import (
    FINISHED,
    IDENTITY_BYTES,
    LOCK_NAME,
    ImportRecord,
    load_records,
)
from anonymizer.journal import FAULT_ENV
from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA
from consent_middleware.raw.segments import list_segments

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "apache_combined_sample.log"
SITE = "semicomplete.com"
TRUNCATED_LINE = 8899  # the sample's one malformed line (user agent lost its closing quote)
SAMPLE_IMPORTED = 9999
_FIRST_OCTET = re.compile(r"^(\d+)\.", re.MULTILINE)


def sample_text(lines: int | None = None) -> str:
    text = SAMPLE.read_text(encoding="utf-8")
    if lines is None:
        return text
    return "".join(text.splitlines(keepends=True)[:lines])


def shifted(text: str, k: int) -> str:
    """The same lines from other visitors (first IP octet moved by ``k``): new lines."""
    return _FIRST_OCTET.sub(lambda m: f"{(int(m[1]) + k) % 256}.", text)


def write(path: Path, text: str, *, packed: bool = False) -> Path:
    data = text.encode()
    path.write_bytes(gzip.compress(data) if packed else data)
    return path


def raw_rows(raw: Path) -> pa.Table:
    segments = list_segments(raw)
    if not segments:
        return RAW_EVENT_SCHEMA.empty_table()
    return pa.concat_tables(pq.read_table(p, schema=RAW_EVENT_SCHEMA) for p in segments)


def sorted_rows(table: pa.Table) -> list[tuple[object, ...]]:
    return sorted(tuple(map(repr, row.values())) for row in table.to_pylist())


def run(raw: Path, files: list[Path]) -> ImportReport:
    return import_log(raw, files, "combined", site_host=SITE, progress=False)


# --------------------------------------------------------------------------- re-imports


def test_reimporting_the_same_log_imports_nothing(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    first = run(raw, [SAMPLE])
    assert first.imported == SAMPLE_IMPORTED and first.already_imported == 0
    again = run(raw, [SAMPLE])
    assert (again.lines, again.imported, again.rejected, again.segments) == (0, 0, 0, [])
    assert again.already_imported == 10000
    [skipped] = again.skipped
    assert (skipped.file, skipped.lines, skipped.new_lines) == (str(SAMPLE), 10000, 0)
    assert "all 10,000 lines already imported on" in again.summary()
    assert raw_rows(raw).num_rows == SAMPLE_IMPORTED
    # Nothing new read: no new record either.
    assert len(load_records(raw)) == 1


def test_a_gzip_rotated_copy_is_the_same_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    run(raw, [SAMPLE])
    rotated = write(tmp_path / "access.log.1.gz", sample_text(), packed=True)
    report = run(raw, [rotated])
    assert (report.lines, report.imported, report.already_imported) == (0, 0, 10000)
    assert raw_rows(raw).num_rows == SAMPLE_IMPORTED
    # ...and the other way round: a gzip import first, then the plain file.
    other = tmp_path / "raw2"
    run(other, [rotated])
    assert run(other, [SAMPLE]).imported == 0


def test_a_grown_log_imports_only_its_new_lines_with_real_line_numbers(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(5000))
    first = run(raw, [log])
    assert (first.lines, first.imported) == (5000, 5000)
    # The web server appends: the rest of the sample (with its malformed line).
    write(log, sample_text())
    grown = run(raw, [log])
    assert (grown.lines, grown.imported, grown.rejected) == (5000, 4999, 1)
    assert grown.already_imported == 5000
    assert [(r.file, r.line_number) for r in grown.rejects] == [(str(log), TRUNCATED_LINE)]
    assert f"{log}: 5,000 lines already imported on" in grown.summary()
    assert "4,999 new lines imported (of 5,000 read)" in grown.summary()
    # Exactly the events of one import of the whole file.
    reference = tmp_path / "reference"
    shutil.copytree(RawLayout.at(raw).salts, RawLayout.at(reference).salts)
    run(reference, [SAMPLE])
    assert sorted_rows(raw_rows(raw)) == sorted_rows(raw_rows(reference))
    # Rotated and compressed later: nothing left to import.
    rotated = write(tmp_path / "access.log.1.gz", sample_text(), packed=True)
    assert run(raw, [rotated]).imported == 0


def test_a_small_log_that_grows_past_its_first_identity(tmp_path: Path) -> None:
    # Under 64 KiB the identity covers the whole file; it must still match once it grew.
    raw = tmp_path / "raw"
    small = sample_text(40)
    assert len(small.encode()) < IDENTITY_BYTES
    log = write(tmp_path / "access.log", small)
    assert run(raw, [log]).imported == 40
    write(log, sample_text(1000))
    report = run(raw, [log])
    assert (report.already_imported, report.lines, report.imported) == (40, 960, 960)
    assert raw_rows(raw).num_rows == 1000


def test_a_rewritten_log_imports_fully(tmp_path: Path) -> None:
    # logrotate copytruncate: same name, new content from the start.
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(3000))
    run(raw, [log])
    write(log, shifted(sample_text(2000), 7))
    report = run(raw, [log])
    assert (report.already_imported, report.lines, report.imported) == (0, 2000, 2000)
    assert report.skipped == []
    assert raw_rows(raw).num_rows == 5000


def test_a_log_whose_head_matches_but_whose_middle_differs(tmp_path: Path) -> None:
    # Imports of 5,000 then 8,000 lines; then a file with the same first 6,000 lines but
    # other ones after: the 5,000-line prefix is known, the 8,000-line one is not.
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(5000))
    run(raw, [log])
    write(log, sample_text(8000))
    assert run(raw, [log]).imported == 3000
    lines = sample_text().splitlines(keepends=True)
    other = write(tmp_path / "other.log", "".join(lines[:6000]) + shifted("".join(lines[6000:]), 3))
    report = run(raw, [other])
    assert (report.already_imported, report.lines, report.rejected) == (5000, 5000, 1)
    assert report.rejects[0].line_number == TRUNCATED_LINE
    assert raw_rows(raw).num_rows == 8000 + 4999


def test_the_same_file_twice_in_one_import(tmp_path: Path) -> None:
    report = run(tmp_path / "raw", [SAMPLE, SAMPLE])
    assert (report.imported, report.already_imported) == (SAMPLE_IMPORTED, 10000)
    assert raw_rows(tmp_path / "raw").num_rows == SAMPLE_IMPORTED


def test_force_imports_again(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    run(raw, [SAMPLE])
    report = anonymizer.import_log(raw, [SAMPLE], "combined", site_host=SITE, force=True)
    assert (report.imported, report.already_imported) == (SAMPLE_IMPORTED, 0)
    assert raw_rows(raw).num_rows == 2 * SAMPLE_IMPORTED


def test_the_cli_reports_skipped_lines_and_takes_force(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(1200))
    base = ["import-log", "--raw", str(raw), "--format", "combined"]
    runner = CliRunner()
    assert runner.invoke(anonymizer_cli, [*base, str(log)]).exit_code == 0
    write(log, sample_text(1500))
    grown = runner.invoke(anonymizer_cli, [*base, str(log)])
    assert grown.exit_code == 0, grown.output
    day = load_records(raw)[0].when
    assert f"{log}: 1,200 lines already imported on {day}, 300 new lines imported" in grown.output
    again = runner.invoke(anonymizer_cli, [*base, str(log)])
    assert f"all 1,500 lines already imported on {day}; nothing new" in again.output
    forced = runner.invoke(anonymizer_cli, [*base, "--force", str(log)])
    assert forced.exit_code == 0 and "1500 lines: 1500 imported" in forced.output
    assert raw_rows(raw).num_rows == 3000


# --------------------------------------------------------------------------- the records


def test_records_hold_hashes_and_counts_only(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(2000))
    run(raw, [log])
    rotated = write(tmp_path / "access.log.1.gz", sample_text(), packed=True)
    run(raw, [rotated])
    first, second = sorted(load_records(raw), key=lambda r: r.consumed)
    assert first.status == second.status == FINISHED
    assert first.identity == second.identity  # the same log, compressed or not
    assert first.consumed == len(sample_text(2000).encode())
    assert second.consumed == SAMPLE.stat().st_size
    assert (second.skipped_bytes, second.skipped_lines) == (first.consumed, 2000)
    assert (second.lines, second.imported, second.rejected, second.blank) == (8000, 7999, 1, 0)
    assert (second.format, second.site_host, second.file) == ("combined", SITE, str(rotated))
    folder = RawLayout.at(raw).imports
    stored = b"".join(p.read_bytes() for p in sorted(folder.glob("*.json")))
    for line in sample_text().splitlines()[:2000:97]:
        ip, _, rest = line.partition(" ")
        assert ip.encode() not in stored
        assert rest[rest.index('"') : rest.index('"') + 30].encode() not in stored
    assert (folder / LOCK_NAME).exists()
    assert {json.loads(p.read_bytes())["status"] for p in folder.glob("*.json")} == {FINISHED}


def test_concurrent_imports_of_one_file_take_turns(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    reports: list[ImportReport] = []
    barrier = threading.Barrier(2)

    def worker() -> None:
        barrier.wait()
        reports.append(run(raw, [SAMPLE]))

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(r.imported for r in reports) == [0, SAMPLE_IMPORTED]
    assert sorted(r.already_imported for r in reports) == [0, 10000]
    assert raw_rows(raw).num_rows == SAMPLE_IMPORTED


# --------------------------------------------------------------------------- crashes

CRASHING_IMPORT = """
import sys
from anonymizer.importers import import_log
import_log(sys.argv[1], sys.argv[2:], "combined", site_host="semicomplete.com",
           progress=False, batch_rows=1000)
"""


def import_in_process(raw: Path, files: list[Path], fault: str | None) -> int:
    env = {k: v for k, v in os.environ.items() if k != FAULT_ENV}
    if fault is not None:
        env[FAULT_ENV] = fault
    done = subprocess.run(
        [sys.executable, "-c", CRASHING_IMPORT, str(raw), *map(str, files)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        check=False,
    )
    return done.returncode


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "import-started",  # the grown log's record is written, no segment yet
        "import-segment-1",
        "import-segment-5",
        "import-before-finish",  # every segment of the grown log is written
        "import-segment-11",  # the grown log is finished (10 segments); the other halfway
    ],
)
def test_a_killed_import_is_undone_and_redone_once(tmp_path: Path, fault: str) -> None:
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(2000))
    other = write(tmp_path / "other.log", shifted(sample_text(1500), 11))
    assert import_in_process(raw, [log], None) == 0
    write(log, sample_text())  # the log grew: 8,000 new lines to import
    assert import_in_process(raw, [log, other], fault) == -9  # SIGKILL
    # The killed import's segments are in RAW until the next import undoes them.
    records = load_records(raw)
    assert any(r.status != FINISHED for r in records)
    report = run(raw, [log, other])
    assert report.recovered
    assert "interrupted earlier import" in report.summary()
    assert all(r.status == FINISHED for r in load_records(raw))
    # Exactly one copy of every line: the same rows as one clean import of both files.
    reference = tmp_path / "reference"
    shutil.copytree(RawLayout.at(raw).salts, RawLayout.at(reference).salts)
    run(reference, [SAMPLE, other])
    assert sorted_rows(raw_rows(raw)) == sorted_rows(raw_rows(reference))
    # ...and a further import finds nothing new.
    assert run(raw, [log, other]).imported == 0


def test_a_failed_segment_write_undoes_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments are written on a writer thread while parsing goes on: a write that fails
    must stop the import, and no segment of it may stay behind (nor be written later)."""
    import anonymizer.importers.importer as importer

    raw = tmp_path / "raw"
    real_write = importer.write_segment
    calls = 0

    def failing_write(*args: object, **kwargs: object) -> list[Path]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise OSError(28, "No space left on device")
        return real_write(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(importer, "write_segment", failing_write)
    with pytest.raises(OSError, match="No space left"):
        import_log(raw, [SAMPLE], "combined", site_host=SITE, progress=False, batch_rows=1000)
    assert list_segments(raw) == []
    monkeypatch.setattr(importer, "write_segment", real_write)
    report = run(raw, [SAMPLE])
    assert report.imported == SAMPLE_IMPORTED
    assert raw_rows(raw).num_rows == SAMPLE_IMPORTED


# --------------------------------------------------------------------------- stray records

RECORD_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@given(
    fields=st.dictionaries(
        st.sampled_from(ImportRecord.__slots__) | st.text(max_size=6), RECORD_VALUES
    ),
)
def test_a_damaged_or_foreign_record_is_ignored_never_trusted(fields: dict[str, object]) -> None:
    valid = ImportRecord("0a1b", FINISHED, "ab", 5, "nginx-json", "h", "f", "2026-11-25")
    assert ImportRecord.from_json(asdict(valid)) == valid
    assert ImportRecord.from_json(fields) is None or fields.keys() >= {"import_id", "status"}
    # A valid record with some fields damaged: read only if every field still makes sense.
    record = ImportRecord.from_json({**asdict(valid), **fields})
    if record is not None:
        assert record.status in ("started", FINISHED)
        assert re.fullmatch(r"[0-9a-z]+", record.import_id)
        assert min(record.consumed, record.lines, record.identity_bytes) >= 0


def test_stray_files_in_the_history_folder_are_ignored(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    run(raw, [SAMPLE])
    folder = RawLayout.at(raw).imports
    (folder / "junk.json").write_text("{not json")
    (folder / "list.json").write_text("[1, 2]")
    [record] = load_records(raw)
    renamed = json.loads((folder / f"{record.import_id}.json").read_text())
    (folder / "other.json").write_text(json.dumps(renamed))  # name and id disagree
    assert load_records(raw) == [record]
    assert run(raw, [SAMPLE]).imported == 0


def test_worker_processes_resume_the_same_way(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(4000))
    assert import_log(raw, [log], "combined", processes=2).imported == 4000
    write(log, sample_text())
    report = import_log(raw, [log], "combined", processes=2)
    assert (report.already_imported, report.lines, report.imported) == (4000, 6000, 5999)
    assert report.rejects[0].line_number == TRUNCATED_LINE
    assert raw_rows(raw).num_rows == SAMPLE_IMPORTED


@pytest.mark.slow
def test_compaction_leaves_a_killed_imports_segments_for_its_undo(tmp_path: Path) -> None:
    # A killed import's segments are found by name and removed by the next import; merged
    # by compaction in between, they would escape that and their lines count twice.
    from anonymizer.importers.history import LOCK_NAME
    from consent_middleware.raw.compaction import IMPORT_LOCK, compact_raw

    assert IMPORT_LOCK == LOCK_NAME  # both sides lock the same file
    raw = tmp_path / "raw"
    log = write(tmp_path / "access.log", sample_text(2000))
    assert import_in_process(raw, [log], None) == 0  # finished: its segments may be merged
    write(log, sample_text())
    assert import_in_process(raw, [log], "import-segment-5") == -9
    killed = [r for r in load_records(raw) if r.status != FINISHED]
    assert len(killed) == 1
    mine = f"import-combined-{killed[0].import_id}-"
    before = [s.name for s in list_segments(raw) if s.name.startswith(mine)]
    assert len(before) >= 5
    report = compact_raw(raw, min_age_s=0)
    assert report.merged_files >= 1  # the finished import's segments were merged
    assert sorted(s.name for s in list_segments(raw) if s.name.startswith(mine)) == sorted(before)
    run(raw, [log])
    reference = tmp_path / "reference"
    shutil.copytree(RawLayout.at(raw).salts, RawLayout.at(reference).salts)
    run(reference, [SAMPLE])
    assert sorted_rows(raw_rows(raw)) == sorted_rows(raw_rows(reference))
