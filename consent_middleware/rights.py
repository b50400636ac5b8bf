"""Visitors' rights (policy section 11, procedure (f)): disclosure and erasure.

Both work from a receipt id plus, online, the anonymous id in the visitor's cookie; by
post the operator has only the receipt id and the receipt links
(:mod:`consent_middleware.receipt_links`) give the anonymous ids issued under it.

- :func:`disclose` collects the receipt's consent history (ledger) and the raw events
  recorded under its anonymous ids that RAW still holds, with a short explanation of every
  field; :class:`Disclosure` renders JSON and CSV.
- :func:`erase` writes the tombstones at once and logs the request; the pipeline skips
  the ids from then on and the next purge (:mod:`consent_middleware.erasure`) removes their
  events. The caller records the ``erase`` decision in the ledger (:func:`erase_decision`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from consent_middleware.decision import Decision, DecisionSource
from consent_middleware.ledger import receipt_history
from consent_middleware.raw.schema import RAW_EVENT_FIELDS
from consent_middleware.raw.segments import list_segments
from consent_middleware.receipt_links import linked_aids
from consent_middleware.request_log import (
    Channel,
    RightsRequest,
    new_request_id,
    save_request,
)
from consent_middleware.tombstones import digest, read_tombstones, write_tombstone

CONSENT_FIELDS: dict[str, str] = {
    "ts": "When the decision was made (UTC).",
    "action": "grant (first choice), change, withdraw, gpc (your browser's Global Privacy "
    "Control signal turned purposes off), renewal, or erase (you asked for erasure).",
    "source": "Where the decision came from: banner, api, form, gpc, or admin (a request by post).",
    "granted": "Purposes you allowed.",
    "refused": "Purposes you did not allow.",
    "policy_version": "The version of the privacy policy in force when you decided.",
    "notice_hash": "Fingerprint (SHA-256) of the notice text you were shown.",
    "gpc": "Whether your browser sent the Global Privacy Control signal (Sec-GPC: 1).",
}
"""What each consent-history field means, in plain words."""

EVENT_FIELDS: dict[str, str] = {
    "ts": "When the page was served (UTC, microseconds).",
    "method": "HTTP method of the request (GET, POST, ...).",
    "status": "HTTP status of the answer (200 = OK, 404 = not found, ...).",
    "duration_ms": "How long the server took to answer, in milliseconds.",
    "path": "The page, with identifiers such as numbers or e-mail addresses removed; never "
    "the query string.",
    "utm_source": "Campaign parameter utm_source of the link you followed, if any.",
    "utm_medium": "Campaign parameter utm_medium, if any.",
    "utm_campaign": "Campaign parameter utm_campaign, if any.",
    "utm_term": "Campaign parameter utm_term, if any.",
    "utm_content": "Campaign parameter utm_content, if any.",
    "referrer_host": "The site you came from (host name only).",
    "user_agent": "Your browser's self-description (User-Agent header).",
    "language": "Your browser's preferred language (primary tag).",
    "visitor_hash": "A keyed hash of IP address, browser and site under a key that exists for "
    "one day and is then destroyed; your IP address itself is never stored.",
    "aid": "The random anonymous id stored in your consent cookie while statistics is allowed.",
    "purposes": "The purposes you had allowed at that moment.",
    "policy_version": "The privacy policy version in force at that moment.",
    "gpc": "Whether your browser sent the Global Privacy Control signal.",
    "source": "How the event was recorded (middleware = by this site's server).",
}
"""What each raw-event field means, in plain words."""

NOTES: tuple[str, ...] = (
    "This is everything held about this browser: its consent history and the page "
    "requests recorded under its anonymous id that have not yet reached the end of their "
    "retention period.",
    "Published statistics are anonymous: no row of them relates to you.",
    "To have this data erased, ask from this browser (DELETE /privacy/data, e.g. from the "
    "site's privacy settings) or write to us quoting your receipt id.",
    "erasure_requested is true once erasure was asked for: what is listed here is then "
    "no longer used and is deleted at the next purge.",
)

_LEDGER_KEEP = tuple(CONSENT_FIELDS)


@dataclass(frozen=True, slots=True)
class Disclosure:
    """Everything held about one receipt (and its anonymous ids), ready to hand over."""

    receipt_id: str
    generated_at: datetime
    consent_history: list[dict[str, Any]]
    events: list[dict[str, Any]]
    erasure_requested: bool = False
    request_id: str | None = None
    notes: tuple[str, ...] = field(default=NOTES)

    def as_json(self) -> dict[str, Any]:
        """The JSON document (``GET /privacy/data``, ``consent-admin export``)."""
        return {
            "receipt_id": self.receipt_id,
            "generated_at": self.generated_at.astimezone(UTC).isoformat(timespec="seconds"),
            "request_id": self.request_id,
            "erasure_requested": self.erasure_requested,
            "notes": list(self.notes),
            "fields": {"consent_history": CONSENT_FIELDS, "events": EVENT_FIELDS},
            "consent_history": self.consent_history,
            "events": self.events,
        }

    def to_csv(self) -> str:
        """One CSV table: a ``record`` column (``consent`` for a consent decision, ``event``
        for a page request), then every field.

        The first data row (``record`` = ``explanation``) explains each column; lists are
        joined with ``|``.
        """
        columns = ["record", *dict.fromkeys([*CONSENT_FIELDS, *EVENT_FIELDS])]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\r\n")
        writer.writeheader()
        explain: dict[str, str] = {}
        for name in columns[1:]:
            texts = [t for t in (CONSENT_FIELDS.get(name), EVENT_FIELDS.get(name)) if t]
            explain[name] = " / ".join(dict.fromkeys(texts))
        writer.writerow({"record": "explanation", **explain})
        for kind, rows in (("consent", self.consent_history), ("event", self.events)):
            for row in rows:
                writer.writerow({"record": kind, **{k: _cell(v) for k, v in row.items()}})
        return out.getvalue()


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        text = "|".join(str(v) for v in value)
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, int | float):
        return str(value)
    else:
        text = str(value)
    # A user agent or campaign value is sent by the browser: a spreadsheet must not run it.
    return "'" + text if text.startswith(_FORMULA_START) else text


def aid_hashes(raw_dir: str | Path, receipt_id: str, aids: Iterable[str] = ()) -> set[str]:
    """``aid_sha256`` of the ids in ``aids`` and of every id linked to ``receipt_id``."""
    return {digest(a) for a in aids if a} | linked_aids(raw_dir, receipt_id)


def consent_history(raw_dir: str | Path, receipt_id: str) -> list[dict[str, Any]]:
    """The receipt's ledger records, oldest first, without the chain fields."""
    return [{k: r.get(k) for k in _LEDGER_KEEP} for r in receipt_history(raw_dir, receipt_id)]


def _query_events(segments: Sequence[Path], hashes: set[str]) -> list[dict[str, Any]]:
    import duckdb

    with duckdb.connect() as con:
        con.register("wanted", pa.table({"h": pa.array(sorted(hashes), pa.string())}))
        table = con.sql(
            f"SELECT {', '.join(RAW_EVENT_FIELDS)} FROM read_parquet(?) "
            "WHERE aid IS NOT NULL AND sha256(aid) IN (SELECT h FROM wanted) ORDER BY ts",
            params=[[str(p) for p in segments]],
        ).to_arrow_table()
    rows: list[dict[str, Any]] = table.to_pylist() if table is not None else []
    for row in rows:
        row["ts"] = row["ts"].astimezone(UTC).isoformat(timespec="microseconds")
    return rows


def events_of(raw_dir: str | Path, hashes: set[str]) -> list[dict[str, Any]]:
    """Raw events whose anonymous id hashes to one of ``hashes``, oldest first."""
    import duckdb

    for attempt in range(3):
        segments = list_segments(raw_dir)
        if not segments or not hashes:
            return []
        try:
            return _query_events(segments, hashes)
        except duckdb.IOException:  # a purge replaced or deleted a segment while we read
            if attempt == 2:
                raise
    return []


def disclose(
    raw_dir: str | Path,
    receipt_id: str,
    *,
    aids: Sequence[str] = (),
    channel: Channel = "online",
    now: datetime | None = None,
    log: bool = True,
) -> Disclosure:
    """Everything RAW holds about ``receipt_id`` (and the anonymous ids in ``aids``).

    With ``log`` the request is written to the request log (completed at once).
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    hashes = aid_hashes(raw_dir, receipt_id, aids)
    request_id = None
    if log:
        request = RightsRequest(
            request_id=new_request_id(now),
            kind="disclosure",
            channel=channel,
            received=now.isoformat(timespec="seconds"),
            status="open",
            receipt_sha256=digest(receipt_id),
        )
        save_request(raw_dir, request.completed_at(now))
        request_id = request.request_id
    return Disclosure(
        receipt_id=receipt_id,
        generated_at=now,
        consent_history=consent_history(raw_dir, receipt_id),
        events=events_of(raw_dir, hashes),
        erasure_requested=bool(hashes & set(read_tombstones(raw_dir))),
        request_id=request_id,
    )


def erase(
    raw_dir: str | Path,
    receipt_id: str,
    *,
    aids: Sequence[str] = (),
    channel: Channel = "online",
    now: datetime | None = None,
) -> RightsRequest:
    """Erase the anonymous ids of ``receipt_id`` (plus ``aids``): tombstones first, then
    the request log entry, which stays open until a purge has removed the events.

    A receipt that never had an anonymous id has no attributable events: its request is
    completed at once. Returns the logged request.
    """
    now = (now or datetime.now(UTC)).astimezone(UTC)
    hashes = tuple(sorted(aid_hashes(raw_dir, receipt_id, aids)))
    request = RightsRequest(
        request_id=new_request_id(now),
        kind="erasure",
        channel=channel,
        received=now.isoformat(timespec="seconds"),
        status="open",
        receipt_sha256=digest(receipt_id),
        aid_sha256=hashes,
    )
    # Tombstones before the log: a crash in between leaves the erasure in force.
    for h in hashes:
        write_tombstone(
            raw_dir,
            h,
            request_id=request.request_id,
            receipt_sha256=request.receipt_sha256,
            now=now,
        )
    if not hashes:
        request = request.completed_at(now)
    save_request(raw_dir, request)
    return request


def erase_decision(
    receipt_id: str,
    *,
    source: DecisionSource,
    required: Sequence[str],
    others: Sequence[str],
    policy_version: str,
    notice_hash: str,
    now: datetime | None = None,
    gpc: bool = False,
) -> Decision:
    """The ledger record of an erasure: only the required purposes remain granted."""
    return Decision(
        ts=(now or datetime.now(UTC)).astimezone(UTC),
        receipt_id=receipt_id,
        action="erase",
        source=source,
        granted=tuple(required),
        refused=tuple(n for n in others if n not in required),
        policy_version=policy_version,
        notice_hash=notice_hash,
        gpc=gpc,
    )
