"""The consent ledger: signed, hash-chained decision records (design §6).

Each writer process appends to its own stream, ``ledger/<stream>.jsonl``, where the stream
name starts with the UTC start time so that file names sort chronologically. Each line is
the canonical JSON (sorted keys, no spaces, ASCII) of one record::

    {"action": ..., "gpc": ..., "granted": [...], "kid": ..., "notice_hash": ...,
     "policy_version": ..., "prev": ..., "receipt_id": ..., "refused": [...],
     "seq": 0, "sig": ..., "source": ..., "ts": "2026-11-25T22:13:25.123456+00:00"}

- ``seq`` counts from 0 in each file;
- ``prev`` is the SHA-256 of the previous line's bytes (for ``seq`` 0, of the stream's
  genesis string, which binds the chain to the file name);
- ``sig`` is HMAC-SHA256 over the canonical JSON of the record without ``sig``, under a
  key derived from the newest secret; ``kid`` names that key so that records signed
  before a key rotation still verify when the old secret is passed too.

A gracefully closed stream also gets a signed seal, ``ledger/<stream>.seal``, naming the
number of records and the hash of the last line, so that records removed from the end of
a closed file are detected as well. :func:`verify_ledger` checks every file.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets as _secrets
import socket
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from consent_middleware.decision import Decision
from consent_middleware.raw.layout import RawLayout

LEDGER_SUFFIX = ".jsonl"
SEAL_SUFFIX = ".seal"
_KEY_CONTEXT = b"consent-ledger"
_KID_CONTEXT = b"consent-ledger-kid"
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:32] or "host"


def canonical(obj: Mapping[str, Any]) -> bytes:
    """The canonical JSON bytes of a record: sorted keys, no whitespace, ASCII only."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def line_hash(line: bytes) -> str:
    """SHA-256 (hex) of one ledger line's bytes, without its newline."""
    return hashlib.sha256(line).hexdigest()


def genesis(stream: str) -> str:
    """The ``prev`` of a stream's first record: binds the chain to the file's name."""
    return hashlib.sha256(b"consent-ledger-genesis:" + stream.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class LedgerKey:
    """A signing key derived from one server secret; ``kid`` identifies it in records."""

    kid: str
    key: bytes

    def __repr__(self) -> str:
        return f"LedgerKey(kid={self.kid!r}, key=***)"

    @classmethod
    def derive(cls, secret: str | bytes) -> LedgerKey:
        """Derive the ledger key of ``secret`` (never the secret itself, so a leaked
        ledger key does not let anyone sign consent cookies)."""
        raw = secret.encode() if isinstance(secret, str) else bytes(secret)
        if not raw:
            raise ValueError("a ledger secret must not be empty")
        key = hmac.digest(raw, _KEY_CONTEXT, "sha256")
        kid = hmac.digest(raw, _KID_CONTEXT, "sha256").hex()[:16]
        return cls(kid=kid, key=key)

    def sign(self, payload: bytes) -> str:
        """HMAC-SHA256 (hex) of ``payload``."""
        return hmac.digest(self.key, payload, "sha256").hex()


def keyring(secrets: Sequence[str | bytes]) -> dict[str, LedgerKey]:
    """Ledger keys by ``kid`` for every secret (oldest to newest)."""
    keys = [LedgerKey.derive(s) for s in secrets]
    return {k.kid: k for k in keys}


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One signed line (``kind="record"``) or a stream's seal (``kind="seal"``), ready for a
    sink. ``line`` is canonical JSON without the trailing newline."""

    stream: str
    seq: int
    line: bytes
    kind: Literal["record", "seal"] = "record"


def new_stream_name(now: datetime | None = None) -> str:
    """A sortable, unique stream name: UTC start time, host, process id, random suffix."""
    now = now or datetime.now(UTC)
    stamp = now.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{_HOST}-{os.getpid()}-{_secrets.token_hex(3)}"


def decision_fields(decision: Decision) -> dict[str, Any]:
    """The ledger fields of a decision (without the chain fields)."""
    return {
        "ts": decision.ts.astimezone(UTC).isoformat(timespec="microseconds"),
        "receipt_id": decision.receipt_id,
        "action": decision.action,
        "source": decision.source,
        "granted": list(decision.granted),
        "refused": list(decision.refused),
        "policy_version": decision.policy_version,
        "notice_hash": decision.notice_hash,
        "gpc": bool(decision.gpc),
    }


class LedgerWriter:
    """Signs and chains the decisions of one stream; not thread-safe (one flush thread).

    ``secrets`` are the server secrets, oldest to newest; the newest signs.
    """

    def __init__(self, secrets: Sequence[str | bytes], *, stream: str | None = None) -> None:
        if not secrets:
            raise ValueError("the ledger needs at least one secret key to sign with")
        self._secrets = tuple(secrets)
        self._key = LedgerKey.derive(self._secrets[-1])
        self.stream = stream or new_stream_name()
        self._seq = 0
        self._prev = genesis(self.stream)

    def __repr__(self) -> str:
        return f"LedgerWriter(stream={self.stream!r}, kid={self._key.kid!r}, seq={self._seq})"

    @property
    def kid(self) -> str:
        """The id of the key this writer signs with."""
        return self._key.kid

    @property
    def count(self) -> int:
        """Records encoded so far in this stream."""
        return self._seq

    def fresh(self) -> LedgerWriter:
        """A writer with the same keys on a new stream (after a fork: one stream per process)."""
        return LedgerWriter(self._secrets)

    def encode(self, decision: Decision) -> LedgerRecord:
        """Sign and chain ``decision`` as the next record of this stream."""
        record = decision_fields(decision)
        record.update(seq=self._seq, prev=self._prev, kid=self._key.kid)
        record["sig"] = self._key.sign(canonical(record))
        line = canonical(record)
        out = LedgerRecord(self.stream, self._seq, line)
        self._seq += 1
        self._prev = line_hash(line)
        return out

    def seal(self) -> LedgerRecord:
        """The signed seal of this stream as it stands (count and hash of the last line)."""
        seal = {"stream": self.stream, "count": self._seq, "last": self._prev}
        seal["kid"] = self._key.kid
        seal["sig"] = self._key.sign(canonical(seal))
        return LedgerRecord(self.stream, self._seq, canonical(seal), kind="seal")


@dataclass(frozen=True, slots=True)
class LedgerLine:
    """One complete line read back from a ledger file (``line`` is 1-based)."""

    path: Path
    line: int
    raw: bytes
    record: dict[str, Any] | None  # None when the line is not a JSON object


def ledger_files(raw_dir: str | Path) -> list[Path]:
    """Every ledger file of the RAW store, in chronological (name) order."""
    folder = RawLayout.at(raw_dir).ledger
    if not folder.is_dir():
        return []
    return sorted(folder.glob(f"*{LEDGER_SUFFIX}"))


def split_lines(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines of a ledger file and its torn tail (``b""`` when the file is whole)."""
    *lines, tail = data.split(b"\n")
    return lines, tail


def _parse(raw: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, dict) else None


def read_lines(path: Path) -> tuple[list[LedgerLine], bytes]:
    """The complete lines of one ledger file, parsed, and its torn tail."""
    lines, tail = split_lines(path.read_bytes())
    return [LedgerLine(path, n, raw, _parse(raw)) for n, raw in enumerate(lines, 1)], tail


def read_ledger(raw_dir: str | Path) -> Iterator[LedgerLine]:
    """Every complete line of every ledger file, in file then line order (torn tails skipped)."""
    for path in ledger_files(raw_dir):
        yield from read_lines(path)[0]


def signature_ok(record: Mapping[str, Any], keys: Mapping[str, LedgerKey]) -> bool | None:
    """Whether ``record``'s signature verifies; None when its ``kid`` is not among ``keys``."""
    key = keys.get(str(record.get("kid")))
    if key is None:
        return None
    unsigned = {k: v for k, v in record.items() if k != "sig"}
    sig = record.get("sig")
    return isinstance(sig, str) and hmac.compare_digest(key.sign(canonical(unsigned)), sig)


def receipt_history(
    raw_dir: str | Path, receipt_id: str, secrets: Sequence[str | bytes] = ()
) -> list[dict[str, Any]]:
    """Every ledger record of one receipt, oldest first, each with where it was found
    (``file``, ``line``) and ``verified`` (True/False, or None when no key was given)."""
    keys = keyring(secrets)
    found: list[dict[str, Any]] = []
    needle = json.dumps(receipt_id).encode()
    for entry in read_ledger(raw_dir):
        # Cheap byte test first: most lines belong to other receipts.
        if needle not in entry.raw or entry.record is None:
            continue
        if entry.record.get("receipt_id") != receipt_id:
            continue
        item = dict(entry.record)
        item["file"] = entry.path.name
        item["line"] = entry.line
        item["verified"] = signature_ok(entry.record, keys) if keys else None
        found.append(item)
    found.sort(key=lambda r: (str(r.get("ts")), r["file"], r["line"]))
    return found


ProblemKind = Literal["altered", "inserted", "removed", "reordered", "unknown-key", "torn"]
"""What :func:`verify_ledger` can find; ``torn`` is a crash's half-written last line."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One finding of :func:`verify_ledger`, with the file and 1-based line it is about."""

    file: str
    line: int | None
    kind: ProblemKind
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.kind}: {self.message}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify_ledger` over a whole RAW store."""

    files: int
    records: int
    sealed: int
    problems: tuple[Problem, ...]

    @property
    def tampering(self) -> tuple[Problem, ...]:
        """Every problem except torn last lines."""
        return tuple(p for p in self.problems if p.kind != "torn")

    @property
    def torn(self) -> tuple[Problem, ...]:
        """Files whose last line was cut short by a crash (the record on it is lost)."""
        return tuple(p for p in self.problems if p.kind == "torn")

    @property
    def ok(self) -> bool:
        """True when nothing at all was found."""
        return not self.problems


@dataclass(slots=True)
class _Entry:
    line: int
    seq: int
    prev: object
    digest: str
    trusted: bool  # signature verified and the bytes are canonical


def _check_lines(
    name: str, lines: Sequence[LedgerLine], keys: Mapping[str, LedgerKey], out: list[Problem]
) -> list[_Entry]:
    """Signature and form of each line; returns the lines that carry a sequence number."""
    entries: list[_Entry] = []
    for entry in lines:
        rec = entry.record
        if rec is None:
            out.append(Problem(name, entry.line, "altered", "not a JSON object"))
            continue
        ok = signature_ok(rec, keys)
        if ok is None:
            kid = rec.get("kid")
            msg = f"signed with unknown key kid={kid!r}; pass its secret with --key"
            out.append(Problem(name, entry.line, "unknown-key", msg))
        elif not ok:
            msg = "signature does not match the content (record altered or forged)"
            out.append(Problem(name, entry.line, "altered", msg))
        elif entry.raw != canonical(rec):
            out.append(Problem(name, entry.line, "altered", "bytes are not in canonical form"))
        seq = rec.get("seq")
        if isinstance(seq, int) and not isinstance(seq, bool) and seq >= 0:
            trusted = bool(ok) and entry.raw == canonical(rec)
            entries.append(_Entry(entry.line, seq, rec.get("prev"), line_hash(entry.raw), trusted))
        elif ok:
            out.append(Problem(name, entry.line, "altered", "no valid seq"))
    return entries


def _check_chain(name: str, stream: str, entries: list[_Entry], out: list[Problem]) -> list[_Entry]:
    """Walk the chain by ``seq``; returns the genuine record of each sequence number."""
    by_seq: dict[int, list[_Entry]] = {}
    for e in entries:
        by_seq.setdefault(e.seq, []).append(e)
    top = max(by_seq, default=-1)
    genuine: list[_Entry] = []
    expected: str | None = genesis(stream)
    missing_from: int | None = None
    for seq in range(top + 1):
        candidates = by_seq.get(seq, [])
        if not candidates:
            missing_from = seq if missing_from is None else missing_from
            expected = None
            continue
        if missing_from is not None:
            span = (
                f"seq {missing_from}"
                if missing_from == seq - 1
                else f"seq {missing_from}-{seq - 1}"
            )
            out.append(
                Problem(name, candidates[0].line, "removed", f"{span} missing before this record")
            )
            missing_from = None
        trusted = [c for c in candidates if c.trusted]
        chained = [c for c in trusted if expected is None or c.prev == expected]
        chosen = chained[0] if chained else None
        for c in trusted:
            if c is chosen:
                continue
            if expected is not None and c.prev != expected:
                msg = f"seq {seq} does not chain to seq {seq - 1} (inserted or replaced record)"
            else:
                msg = f"duplicate seq {seq} (inserted copy of a record)"
            out.append(Problem(name, c.line, "inserted", msg))
        if chosen is not None:
            genuine.append(chosen)
            expected = chosen.digest
        else:
            expected = None  # the record at this seq was altered: already reported
    return genuine


def _check_order(name: str, genuine: list[_Entry], out: list[Problem]) -> None:
    by_line = sorted(genuine, key=lambda e: e.line)
    highest = -1
    for e in by_line:
        if e.seq < highest:
            msg = f"seq {e.seq} comes after seq {highest} (records reordered)"
            out.append(Problem(name, e.line, "reordered", msg))
        highest = max(highest, e.seq)


def _check_seal(
    path: Path, lines: int, genuine: list[_Entry], keys: Mapping[str, LedgerKey], out: list[Problem]
) -> bool:
    seal_path = path.with_suffix(SEAL_SUFFIX)
    if not seal_path.exists():
        return False
    name = path.name
    seal = _parse(seal_path.read_bytes().strip())
    ok = signature_ok(seal, keys) if seal is not None else False
    if seal is None or not ok:
        msg = f"seal {seal_path.name} is unreadable or its signature does not match"
        out.append(Problem(name, None, "unknown-key" if ok is None else "altered", msg))
        return True
    count = seal.get("count")
    last = genuine[-1] if genuine else None
    if isinstance(count, int) and (last.seq + 1 if last else 0) < count:
        have = last.seq if last else -1
        msg = f"the seal counts {count} records but the chain ends at seq {have}"
        out.append(Problem(name, lines, "removed", msg + " (records removed from the end)"))
    elif isinstance(count, int) and lines > count:
        msg = f"{lines - count} line(s) after the {count} records the seal counts"
        out.append(Problem(name, count + 1, "inserted", msg))
    elif last is not None and seal.get("last") != last.digest:
        out.append(Problem(name, last.line, "altered", "last record does not match the seal"))
    return True


def verify_file(path: Path, keys: Mapping[str, LedgerKey]) -> tuple[int, bool, list[Problem]]:
    """Check one ledger file: (records, sealed, problems)."""
    lines, tail = read_lines(path)
    problems: list[Problem] = []
    entries = _check_lines(path.name, lines, keys, problems)
    stream = path.name[: -len(LEDGER_SUFFIX)]
    genuine = _check_chain(path.name, stream, entries, problems)
    _check_order(path.name, genuine, problems)
    sealed = _check_seal(path, len(lines), genuine, keys, problems)
    if tail:
        msg = f"last line is incomplete ({len(tail)} bytes; a crash cut the write short)"
        problems.append(Problem(path.name, len(lines) + 1, "torn", msg))
    return len(lines), sealed, problems


def verify_ledger(raw_dir: str | Path, secrets: Sequence[str | bytes]) -> VerifyReport:
    """Check every record and chain of the RAW store's ledger.

    ``secrets`` are every server secret that may have signed records (oldest to newest).
    Finds altered, inserted, removed and reordered records, records signed with a key not
    given, and torn last lines, each with its file and line.
    """
    keys = keyring(secrets)
    problems: list[Problem] = []
    files = records = sealed = 0
    for path in ledger_files(raw_dir):
        count, is_sealed, found = verify_file(path, keys)
        files += 1
        records += count
        sealed += is_sealed
        problems.extend(found)
    return VerifyReport(files, records, sealed, tuple(problems))
