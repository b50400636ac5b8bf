"""The log of visitors' rights requests, so the operator can answer "without delay".

One file per request, ``requests/<request_id>.json``, replaced atomically when its status
changes. A disclosure is answered at once (``completed`` when logged); an erasure stays
``open`` until a purge has physically removed its events from RAW. The log names the
receipt only by its SHA-256 digest: the operator who holds the receipt id quoted in a
letter can find its requests (``consent-admin requests --receipt ID``), nobody else can.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from consent_middleware.raw.layout import RawLayout
from consent_middleware.raw.segments import replace_atomically

RequestKind = Literal["disclosure", "erasure"]
"""What the visitor asked for."""

Channel = Literal["online", "post"]
"""How the request arrived: the visitor's browser (cookie) or a letter (receipt id)."""

Status = Literal["open", "completed"]


def new_request_id(now: datetime | None = None) -> str:
    """A sortable, unguessable request id: ``rq-YYYYmmddTHHMMSSffffffZ-<random>``."""
    stamp = (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"rq-{stamp}-{secrets.token_hex(6)}"


def _iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class RightsRequest:
    """One request as logged. ``aid_sha256`` are the anonymous ids an open erasure covers
    (forgotten once it is completed: only their number stays, in ``erased_ids``);
    ``removed_events`` is what the purge that completed it removed."""

    request_id: str
    kind: RequestKind
    channel: Channel
    received: str
    status: Status
    receipt_sha256: str
    completed: str | None = None
    aid_sha256: tuple[str, ...] = field(default_factory=tuple)
    removed_events: int = 0
    erased_ids: int = 0
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable form."""
        data = asdict(self)
        data["aid_sha256"] = list(self.aid_sha256)
        return data

    def completed_at(self, ts: datetime, *, removed_events: int = 0) -> RightsRequest:
        """This request, completed at ``ts``."""
        return replace(
            self,
            status="completed",
            completed=_iso(ts),
            removed_events=removed_events,
            erased_ids=len(self.aid_sha256) or self.erased_ids,
            aid_sha256=(),
        )


def _path(raw_dir: str | Path, request_id: str) -> Path:
    if not request_id.replace("-", "").isalnum():
        raise ValueError(f"not a request id: {request_id!r}")
    return RawLayout.at(raw_dir).requests / f"{request_id}.json"


def save_request(raw_dir: str | Path, request: RightsRequest) -> Path:
    """Write (or replace) ``request``'s file atomically."""
    data = json.dumps(request.as_dict(), sort_keys=True, indent=1).encode() + b"\n"
    return replace_atomically(_path(raw_dir, request.request_id), lambda handle: handle.write(data))


def open_request(
    raw_dir: str | Path,
    *,
    kind: RequestKind,
    channel: Channel,
    receipt_sha256: str,
    now: datetime,
    aid_sha256: tuple[str, ...] = (),
    note: str = "",
) -> RightsRequest:
    """Log a new request as received at ``now`` (status ``open``) and return it."""
    request = RightsRequest(
        request_id=new_request_id(now),
        kind=kind,
        channel=channel,
        received=_iso(now),
        status="open",
        receipt_sha256=receipt_sha256,
        aid_sha256=aid_sha256,
        note=note,
    )
    save_request(raw_dir, request)
    return request


def _parse(data: Any) -> RightsRequest | None:
    if not isinstance(data, dict):
        return None
    try:
        return RightsRequest(
            request_id=str(data["request_id"]),
            kind=data["kind"],
            channel=data["channel"],
            received=str(data["received"]),
            status=data["status"],
            receipt_sha256=str(data.get("receipt_sha256", "")),
            completed=data.get("completed"),
            aid_sha256=tuple(str(h) for h in data.get("aid_sha256") or ()),
            removed_events=int(data.get("removed_events", 0)),
            erased_ids=int(data.get("erased_ids", 0)),
            note=str(data.get("note", "")),
        )
    except (KeyError, TypeError, ValueError):
        return None


def load_requests(raw_dir: str | Path) -> list[RightsRequest]:
    """Every readable request, oldest first."""
    folder = RawLayout.at(raw_dir).requests
    found: list[RightsRequest] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            request = _parse(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        if request is not None:
            found.append(request)
    found.sort(key=lambda r: (r.received, r.request_id))
    return found
