"""``consent-admin``: the operator's commands on a RAW store (a thin layer over the API).

consent-admin verify  --raw DIR [--key SECRET ...]      check the consent ledger
consent-admin receipt --raw DIR RECEIPT_ID [--json]     proof of consent for one receipt
consent-admin purge   --raw DIR [--retention-days 30]   delete what retention and erasures require
consent-admin compact --raw DIR [--min-age 1h]         merge small raw segments
consent-admin stats   --raw DIR [--json]                what the store holds
consent-admin export  --raw DIR --receipt ID [--out F]  disclosure for a request by post
consent-admin erase   --raw DIR --receipt ID --key K    erasure for a request by post
consent-admin requests --raw DIR [--open] [--json]      visitors' requests and their status
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from consent_middleware.erasure import purge_raw
from consent_middleware.ledger import LedgerWriter, ledger_files, receipt_history, verify_ledger
from consent_middleware.purposes import PurposeRegistry
from consent_middleware.raw.compaction import compact_raw
from consent_middleware.raw.segments import list_segments
from consent_middleware.receipt_links import linked_aids
from consent_middleware.request_log import load_requests
from consent_middleware.retention import DEFAULT_RETENTION_DAYS
from consent_middleware.rights import disclose, erase, erase_decision
from consent_middleware.sink import FileSink
from consent_middleware.tombstones import digest

EXIT_PROBLEMS = 1
"""``verify`` found altered, inserted, removed or reordered records (or unknown keys)."""

EXIT_TORN = 3
"""``verify`` found nothing but torn last lines (a crash lost the record being written)."""

_raw_option = click.option(
    "--raw",
    "raw_dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="The RAW store's folder (the middleware's raw_dir).",
)
_key_option = click.option(
    "--key",
    "keys",
    multiple=True,
    envvar="CONSENT_SECRET_KEY",
    help="A server secret that signed ledger records; repeat for rotated keys (oldest "
    "first). Default: $CONSENT_SECRET_KEY (several separated by spaces).",
)
_json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON.")


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Operate the consent middleware's RAW store: ledger, receipts, retention."""


@cli.command()
@_raw_option
@_key_option
@_json_option
def verify(raw_dir: Path, keys: Sequence[str], as_json: bool) -> None:
    """Check every consent-ledger record's signature and every file's hash chain.

    Reports each altered, inserted, removed or reordered record with its file and line,
    and torn last lines (a crash mid-write) separately. Exit status: 0 all good, 1
    problems found, 3 only torn lines.

    Example: CONSENT_SECRET_KEY=... consent-admin verify --raw /var/lib/shop/raw
    """
    if not keys:
        raise click.UsageError("no key: pass --key SECRET or set CONSENT_SECRET_KEY")
    report = verify_ledger(raw_dir, list(keys))
    if as_json:
        _echo_json(
            {
                "files": report.files,
                "records": report.records,
                "sealed": report.sealed,
                "problems": [
                    {"file": p.file, "line": p.line, "kind": p.kind, "message": p.message}
                    for p in report.problems
                ],
            }
        )
    else:
        for problem in report.problems:
            click.echo(str(problem), err=True)
        verdict = "OK" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(
            f"{report.files} ledger file(s), {report.records} record(s), "
            f"{report.sealed} sealed: {verdict}"
        )
    if report.tampering:
        sys.exit(EXIT_PROBLEMS)
    if report.torn:
        sys.exit(EXIT_TORN)


@cli.command()
@_raw_option
@click.argument("receipt_id")
@_key_option
@_json_option
def receipt(raw_dir: Path, receipt_id: str, keys: Sequence[str], as_json: bool) -> None:
    """Print the consent history of one receipt (proof of consent), oldest first.

    With --key each record's signature is checked (column "verified").

    Example: consent-admin receipt --raw /var/lib/shop/raw 3f2a9c... --json
    """
    history = receipt_history(raw_dir, receipt_id, list(keys))
    if as_json:
        _echo_json(history)
    else:
        _print_history(receipt_id, history)
    if not history:
        click.echo(f"no ledger record for receipt {receipt_id!r}", err=True)
        sys.exit(1)


def _print_history(receipt_id: str, history: Sequence[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"receipt {receipt_id}")
    for column in ("ts", "action", "source", "granted", "refused", "policy", "gpc", "verified"):
        table.add_column(column, overflow="fold")
    for r in history:
        table.add_row(
            str(r.get("ts")),
            str(r.get("action")),
            str(r.get("source")),
            ", ".join(r.get("granted") or []),
            ", ".join(r.get("refused") or []),
            str(r.get("policy_version")),
            "yes" if r.get("gpc") else "no",
            {True: "yes", False: "NO", None: "-"}[r.get("verified")],
        )
    Console().print(table)


@cli.command(name="purge")
@_raw_option
@click.option(
    "--retention-days",
    type=click.IntRange(min=0),
    default=DEFAULT_RETENTION_DAYS,
    show_default=True,
    help="Keep raw events this many whole UTC days.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be deleted, delete nothing.")
@_json_option
def purge_command(raw_dir: Path, retention_days: int, dry_run: bool, as_json: bool) -> None:
    """Delete expired raw events, crashed writers' temporary files and finished salts,
    and physically remove the raw events of erased visitors (completing their requests).

    Safe while apps are recording, idempotent, and safe to rerun after a crash. Schedule
    it daily (cron or a systemd timer).

    Example: consent-admin purge --raw /var/lib/shop/raw --retention-days 30
    """
    report = purge_raw(raw_dir, retention_days=retention_days, dry_run=dry_run)
    if as_json:
        _echo_json(report.as_dict())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{verb}: {len(report.expired_partitions)} event partition(s) "
        f"({report.expired_files} file(s)), {len(report.temporaries)} temporary file(s), "
        f"{len(report.destroyed_salts)} salt(s)"
    )
    click.echo(
        f"erasure: {verb} {report.erased_events} event(s) of erased visitors in "
        f"{len(report.rewritten_segments)} segment(s), {report.removed_links} receipt "
        f"link(s); {len(report.completed_requests)} request(s) completed"
    )
    for path in report.unchecked_files:
        click.echo(f"warning: unreadable quarantined file not checked: {path}", err=True)


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _seconds(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """``3600``, ``90s``, ``30m``, ``1h`` or ``2d`` as seconds (a click option callback)."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0)
    try:
        seconds = float(text[:-1]) * unit if unit else float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also rejects NaN
        raise click.BadParameter(f"{value!r}: give seconds (3600) or 90s, 30m, 1h, 2d")
    return seconds


@cli.command(name="compact")
@_raw_option
@click.option(
    "--min-age",
    default="1h",
    show_default=True,
    callback=_seconds,
    help="Merge only segments older than this (3600, 30m, 1h, 2d): live writers are never raced.",
)
@click.option(
    "--target-rows",
    type=click.IntRange(min=1),
    default=1_000_000,
    show_default=True,
    help="Rows per merged segment at most.",
)
@click.option("--dry-run", is_flag=True, help="Say what would be merged, change nothing.")
@_json_option
def compact_command(
    raw_dir: Path, min_age: float, target_rows: int, dry_run: bool, as_json: bool
) -> None:
    """Merge the many small raw segments of each UTC date into a few large ones, so every
    reader (anonymizer run, purge, disclosure) opens far fewer files.

    Safe while apps are recording and while `anonymizer run` runs; waits for a running
    purge; safe to rerun after a crash (it finishes or undoes the interrupted merge).
    Schedule it daily, next to purge.

    Example: consent-admin compact --raw /var/lib/shop/raw --min-age 1h
    """
    report = compact_raw(raw_dir, min_age_s=min_age, target_rows=target_rows, dry_run=dry_run)
    if as_json:
        _echo_json(report.as_dict())
        return
    verb = "would merge" if dry_run else "merged"
    after = "" if report.bytes_after is None else f" -> {report.bytes_after:,}"
    click.echo(
        f"{verb} {report.merged_sources} segment(s) into {report.merged_files} in "
        f"{len(report.partitions)} partition(s): {report.segments_before} -> "
        f"{report.segments_after} segment(s), {report.rows:,} row(s), "
        f"{report.bytes_before:,}{after} bytes, {report.seconds:.1f} s"
    )
    if report.rolled_forward or report.rolled_back:
        click.echo(
            f"recovered an interrupted compaction: {report.rolled_forward} finished, "
            f"{report.rolled_back} undone"
        )


@cli.command()
@_raw_option
@_json_option
def stats(raw_dir: Path, as_json: bool) -> None:
    """Count what the RAW store holds: events per UTC date, segments, ledger records.

    Example: consent-admin stats --raw /var/lib/shop/raw
    """
    segments = list_segments(raw_dir)
    per_day: dict[str, int] = {}
    if segments:
        import duckdb

        with duckdb.connect() as con:
            rows = con.execute(
                "SELECT strftime(ts AT TIME ZONE 'UTC', '%Y-%m-%d') AS day, count(*) "
                "FROM read_parquet(?) GROUP BY day ORDER BY day",
                [[str(p) for p in segments]],
            ).fetchall()
        per_day = {str(day): int(n) for day, n in rows}
    files = ledger_files(raw_dir)
    records = sum(p.read_bytes().count(b"\n") for p in files)
    summary = {
        "segments": len(segments),
        "events": sum(per_day.values()),
        "events_per_day": per_day,
        "ledger_files": len(files),
        "ledger_records": records,
    }
    if as_json:
        _echo_json(summary)
        return
    click.echo(f"{summary['events']} event(s) in {len(segments)} segment(s)")
    for day, count in per_day.items():
        click.echo(f"  {day}  {count}")
    click.echo(f"{records} ledger record(s) in {len(files)} file(s)")


_receipt_option = click.option(
    "--receipt",
    "receipt_id",
    required=True,
    help="The receipt id the visitor quoted (shown in the banner's settings).",
)


def _known_receipt(raw_dir: Path, receipt_id: str) -> list[dict[str, Any]]:
    history = receipt_history(raw_dir, receipt_id)
    if not history and not linked_aids(raw_dir, receipt_id):
        click.echo(
            f"no ledger record for receipt {receipt_id!r}: check the id the visitor quoted",
            err=True,
        )
        sys.exit(1)
    return history


@cli.command()
@_raw_option
@_receipt_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Write to this file instead of standard output.",
)
@click.option(
    "--format", "fmt", type=click.Choice(["json", "csv"]), default="json", show_default=True
)
def export(raw_dir: Path, receipt_id: str, out: Path | None, fmt: str) -> None:
    """Disclose everything held about a receipt (a request by post): its consent
    history and the raw events of its anonymous ids, each field explained.

    The same content as GET /privacy/data; the request is logged (see `requests`).

    Example: consent-admin export --raw /var/lib/shop/raw --receipt 3f2a9c... --out reply.json
    """
    _known_receipt(raw_dir, receipt_id)
    disclosure = disclose(raw_dir, receipt_id, channel="post")
    text = (
        disclosure.to_csv()
        if fmt == "csv"
        else json.dumps(disclosure.as_json(), indent=2, ensure_ascii=False) + "\n"
    )
    if out is None:
        click.echo(text, nl=False)
        return
    out.write_text(text, encoding="utf-8", newline="")
    click.echo(
        f"wrote {out}: {len(disclosure.consent_history)} consent record(s), "
        f"{len(disclosure.events)} event(s); request {disclosure.request_id}",
        err=True,
    )


@cli.command(name="erase")
@_raw_option
@_receipt_option
@_key_option
@_json_option
def erase_command(raw_dir: Path, receipt_id: str, keys: Sequence[str], as_json: bool) -> None:
    """Erase a receipt's data (a request by post): tombstones at once, an `erase` record in
    the consent ledger, raw events physically removed at the next purge.

    Needs the server secret to sign the ledger record (--key or $CONSENT_SECRET_KEY).
    This also serves a request to terminate use by post: nothing more is recorded or used.

    Example: CONSENT_SECRET_KEY=... consent-admin erase --raw /var/lib/shop/raw --receipt 3f2a9c...
    """
    if not keys:
        raise click.UsageError("no key: pass --key SECRET or set CONSENT_SECRET_KEY")
    history = _known_receipt(raw_dir, receipt_id)
    request = erase(raw_dir, receipt_id, channel="post")
    last = history[-1] if history else {}
    named = [*(last.get("granted") or []), *(last.get("refused") or [])]
    required = [p.name for p in PurposeRegistry() if p.required and p.name in named]
    decision = erase_decision(
        receipt_id,
        source="admin",
        required=required,
        others=named,
        policy_version=str(last.get("policy_version") or "unknown"),
        notice_hash=str(last.get("notice_hash") or ""),
    )
    writer = LedgerWriter(list(keys))
    sink = FileSink(raw_dir)
    try:
        sink.write_decisions([writer.encode(decision), writer.seal()])
    finally:
        sink.close()
    if as_json:
        _echo_json(request.as_dict())
        return
    click.echo(
        f"request {request.request_id}: {len(request.aid_sha256)} anonymous id(s) erased, "
        f"status {request.status}"
        + (
            "; run `consent-admin purge` to remove the raw events"
            if request.status == "open"
            else "; no anonymous id is linked to this receipt, so no raw event is attributable"
        )
    )


@cli.command(name="requests")
@_raw_option
@click.option("--open", "only_open", is_flag=True, help="Only requests not yet completed.")
@click.option("--receipt", "receipt_id", help="Only the requests of this receipt id.")
@_json_option
def requests_command(raw_dir: Path, only_open: bool, receipt_id: str | None, as_json: bool) -> None:
    """List visitors' requests (disclosure, erasure) with their dates and status, oldest
    first. An erasure is completed once a purge has removed its data.

    Example: consent-admin requests --raw /var/lib/shop/raw --open
    """
    found = load_requests(raw_dir)
    if only_open:
        found = [r for r in found if r.status == "open"]
    if receipt_id is not None:
        found = [r for r in found if r.receipt_sha256 == digest(receipt_id)]
    if as_json:
        _echo_json([r.as_dict() for r in found])
        return
    now = datetime.now(UTC)
    for r in found:
        when = f"received {r.received[:16].replace('T', ' ')}"
        if r.completed:
            state = f"completed {r.completed[:16].replace('T', ' ')}"
        else:
            age = (now - datetime.fromisoformat(r.received)).days
            state = f"OPEN for {age} day(s)"
        removed = f"  {r.removed_events} event(s) removed" if r.kind == "erasure" else ""
        click.echo(f"{r.request_id}  {r.kind:<10}  {r.channel:<6}  {when}  {state}{removed}")
    click.echo(f"{len(found)} request(s), {sum(r.status == 'open' for r in found)} open")


def main() -> None:
    """Entry point of the ``consent-admin`` command."""
    cli()
