"""Apache/NGINX "combined" log format, parsed a batch of lines at a time with Arrow kernels.

``%h %l %u [%d/%b/%Y:%H:%M:%S %z] "%r" %>s %b "%{Referer}i" "%{User-Agent}i"``. Quoted
fields may hold backslash escapes (``\\"``); fields after the user agent (as some servers
append) are ignored. The "common" format is the same without the last two fields
(:mod:`anonymizer.importers.common`).

Python never loops over the lines. The double quotes of the usual line are found with
NumPy on the block's bytes and its pieces are taken as string views of them, each checked
with a short regular expression; lines that do not fit that shape (escaped quotes, a
quoted user name) go through one full regular expression instead. Request lines are split
once per distinct request (a log repeats the same few thousand).
"""

from __future__ import annotations

import re
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anonymizer.importers.fields import (
    MAX_TS_US,
    MIN_TS_US,
    MONTHS,
    PARSED_SCHEMA,
    REASON_REQUEST,
    REASON_STATUS,
    REASON_SYNTAX,
    REASON_TIMESTAMP,
    REQUEST_PATTERN,
    null_where,
    rows_with_bytes,
)


def quoted(name: str) -> str:
    """A double-quoted field with backslash escapes, captured as group ``name``."""
    return rf'"(?P<{name}>[^"\\]*(?:\\.[^"\\]*)*)"'


PREFIX: Final = (
    r"^(?P<ip>\S+) \S+ (?:\S+|\"[^\"]*\") \[(?P<time>[^\]]*)\] "
    + quoted("request")
    + r" (?P<status>\S+) \S+"
)
"""Host, identity, user, timestamp, request line, status and size: the common format."""

COMBINED_PATTERN: Final = (
    PREFIX + " " + quoted("referrer") + " " + quoted("user_agent") + r"(?:\s.*)?$"
)
COMMON_PATTERN: Final = PREFIX + r"(?:\s.*)?$"

# The pieces of a line cut at its double quotes, when no field holds an escaped quote.
_HEAD: Final = r"^\S+ \S+ \S+ \[[^\]]*\] $"
_CLF_TIME: Final = (
    r"^[0-9]{2}/(?:" + "|".join(MONTHS) + r")/[0-9]{4}:(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r" [+-][0-9]{2}[0-5][0-9]$"
)
_EPOCH_TEXT: Final = "01/Jan/1970:00:00:00 +0000"
_TIME_WIDTH: Final = len(_EPOCH_TEXT)

_MONTH_CODES: Final = np.array(
    sorted((ord(m[0]) << 16) | (ord(m[1]) << 8) | ord(m[2]) for m in MONTHS), np.int64
)
_MONTH_OF_CODE: Final = np.array(
    [MONTHS[chr(c >> 16) + chr((c >> 8) & 0xFF) + chr(c & 0xFF)] for c in _MONTH_CODES.tolist()],
    np.int64,
)
_DAYS_IN_MONTH: Final = np.array([0, 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], np.int64)


def _number(digits: np.ndarray) -> np.ndarray:
    """ASCII digit columns (n x k uint8) as integers."""
    out = np.zeros(digits.shape[0], np.int64)
    for k in range(digits.shape[1]):
        out = out * 10 + (digits[:, k].astype(np.int64) - 48)
    return out


def _days_from_civil(year: np.ndarray, month: np.ndarray, day: np.ndarray) -> np.ndarray:
    """Days since 1970-01-01 of proleptic Gregorian dates (H. Hinnant's algorithm)."""
    y = year - (month <= 2)
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + np.where(month > 2, -3, 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    result: np.ndarray = era * 146097 + doe - 719468
    return result


def clf_timestamps(text: pa.Array) -> tuple[pa.Array, pa.Array]:
    """``17/May/2015:10:05:03 +0200`` texts as UTC microseconds, and whether each is valid.

    The text is checked by a regular expression, then read as fixed-width digits in NumPy;
    impossible dates (31 April, 29 February 2015) and dates outside 1970-2099 are invalid.
    """
    strict = pc.fill_null(pc.match_substring_regex(text, _CLF_TIME), False)
    safe = pc.if_else(strict, text, _EPOCH_TEXT)
    n = len(safe)
    if n == 0:
        return pa.array([], pa.int64()), pa.array([], pa.bool_())
    offsets = np.frombuffer(safe.buffers()[1], np.int32)[safe.offset : safe.offset + n + 1]
    data = np.frombuffer(safe.buffers()[2], np.uint8)
    chars = data[offsets[0] : offsets[0] + n * _TIME_WIDTH].reshape(n, _TIME_WIDTH)
    day = _number(chars[:, 0:2])
    code = (
        (chars[:, 3].astype(np.int64) << 16)
        | (chars[:, 4].astype(np.int64) << 8)
        | chars[:, 5].astype(np.int64)
    )
    month = _MONTH_OF_CODE[np.searchsorted(_MONTH_CODES, code)]
    year = _number(chars[:, 7:11])
    leap = ((year % 4 == 0) & (year % 100 != 0)) | (year % 400 == 0)
    last_day = _DAYS_IN_MONTH[month] + ((month == 2) & leap)
    offset = _number(chars[:, 22:24]) * 3600 + _number(chars[:, 24:26]) * 60
    offset = np.where(chars[:, 21] == ord("-"), -offset, offset)
    seconds = (
        _days_from_civil(year, month, day) * 86400
        + _number(chars[:, 12:14]) * 3600
        + _number(chars[:, 15:17]) * 60
        + _number(chars[:, 18:20])
        - offset
    )
    ts = seconds * 1_000_000
    valid = (
        strict.to_numpy(zero_copy_only=False)
        & (day >= 1)
        & (day <= last_day)
        & (ts >= MIN_TS_US)
        & (ts < MAX_TS_US)
    )
    return pa.array(ts, pa.int64()), pa.array(valid, pa.bool_())


def _spans(lines: pa.Array, starts: np.ndarray, ends: np.ndarray) -> pa.Array:
    """Byte ranges ``[start, end)`` of the lines' data buffer, one per line, as strings.

    The ranges are in line order and within their lines, so interleaved with the gaps
    between them they are valid string offsets over the same buffer; one ``take`` keeps
    the ranges. Each range starts and ends next to an ASCII byte (or a line boundary), so
    it is whole UTF-8.
    """
    n = len(starts)
    bounds = np.empty(2 * n + 1, np.int32)
    bounds[0 : 2 * n : 2] = starts
    bounds[1 : 2 * n : 2] = ends
    bounds[2 * n] = ends[-1] if n else 0
    data = lines.buffers()[2] or pa.py_buffer(b"")  # no data buffer: every line is empty
    both = pa.StringArray.from_buffers(2 * n, pa.py_buffer(bounds), data)
    return both.take(pa.array(np.arange(0, 2 * n, 2, dtype=np.int32)))


def _matches(values: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(values, pattern), False)


def _unescape(field: pa.Array) -> pa.Array:
    """Null for ``-`` or empty; ``\\"`` and ``\\\\`` escapes undone (in the rare rows with any)."""
    missing = pc.fill_null(pc.or_(pc.equal(field, "-"), pc.equal(field, "")), False)
    field = null_where(field, missing)
    escaped = pa.array(rows_with_bytes(field, byte=ord("\\")), pa.bool_())
    if not pc.any(escaped).as_py():
        return field
    fixed = pc.replace_substring(field.filter(escaped), '\\"', '"')
    return pc.replace_with_mask(field, escaped, pc.replace_substring(fixed, "\\\\", "\\"))


def _fields(lines: pa.Array, with_agent: bool) -> tuple[dict[str, pa.Array], pa.Array]:
    """Raw text fields of each line, and which lines have the format's shape at all.

    A line of the usual shape has exactly 6 double quotes (2 in the common format); its
    pieces between them are located with NumPy on the data buffer and checked as they
    would be if the line were split at its quotes. Other lines are matched against the
    full regular expression. Fields of lines of neither shape are meaningless.
    """
    names = ["ip", "time", "request", "status"] + (["referrer", "user_agent"] if with_agent else [])
    quotes = 6 if with_agent else 2
    n = len(lines)
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + n + 1]
    valid = lines.is_valid().to_numpy(zero_copy_only=False)
    buffer = lines.buffers()[2]
    data = np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    found = np.flatnonzero(data[offsets[0] : offsets[-1]] == ord('"')) + offsets[0]
    per_line = np.bincount(np.searchsorted(offsets, found, side="right") - 1, minlength=n)
    candidate = valid & (per_line[:n] == quotes)
    rows = np.flatnonzero(candidate)
    first = np.searchsorted(found, offsets[rows])
    at = found[first[:, None] + np.arange(quotes)] if len(rows) else np.zeros((0, quotes), np.int32)
    # Piece k of a candidate line: bytes between quote k-1 and quote k (line start, end).
    line_start, line_end = offsets[:-1], offsets[1:]
    piece_start = [line_start[rows]] + [at[:, k] + 1 for k in range(quotes)]
    piece_end = [at[:, k] for k in range(quotes)] + [line_end[rows]]

    def piece(k: int) -> pa.Array:
        starts, ends = line_start.copy(), line_start.copy()  # empty for other lines
        starts[rows], ends[rows] = piece_start[k], piece_end[k]
        return _spans(lines, starts, ends)

    def byte_at(where: np.ndarray) -> np.ndarray:
        return data[np.minimum(where, len(data) - 1)] if len(data) else where

    head, status_words = piece(0), piece(2)
    ok = np.zeros(n, np.bool_)
    if with_agent:
        # piece 4 is " "; piece 6 is empty or starts with a space (fields after the agent)
        ok[rows] = (piece_end[4] - piece_start[4] == 1) & (byte_at(piece_start[4]) == 32)
        ok[rows] &= (piece_start[6] == piece_end[6]) | (byte_at(piece_start[6]) == 32)
        words = r"^ \S+ \S+ $"
    else:
        ok[rows] = True
        words = r"^ \S+ \S+(?:\s.*)?$"
    shape = pc.and_(pa.array(ok), _matches(status_words, words))
    simple = pc.and_(shape, _matches(head, _HEAD))
    # "ip ident user [time] ": the IP ends at the first space, the time starts after the
    # first " [" and ends before the closing "] ".
    starts, ends = line_start.copy(), line_start.copy()
    space = pc.find_substring(head, " ").to_numpy(zero_copy_only=False)
    has = candidate & (space >= 0)
    ends[has] = line_start[has] + space[has]
    ip = _spans(lines, starts, ends)
    starts, ends = line_start.copy(), line_start.copy()
    bracket = pc.find_substring(head, " [").to_numpy(zero_copy_only=False)
    head_end = line_start.copy()
    head_end[rows] = piece_end[0]
    has = candidate & (bracket >= 0) & (line_start + bracket + 2 <= head_end - 2)
    starts[has] = line_start[has] + bracket[has] + 2
    ends[has] = head_end[has] - 2
    time_text = _spans(lines, starts, ends)
    # " 200 1234 ": a valid status is the first word, of three bytes.
    starts, ends = line_start.copy(), line_start.copy()
    word = np.zeros(n, np.bool_)
    word[rows] = (piece_end[2] - piece_start[2] >= 5) & (byte_at(piece_start[2] + 4) == 32)
    status_at = np.zeros(n, np.int32)
    status_at[rows] = piece_start[2] + 1
    starts[word] = status_at[word]
    ends[word] = status_at[word] + 3
    fields = {
        "ip": ip,
        "time": time_text,
        "request": piece(1),
        "status": _spans(lines, starts, ends),
    }
    if with_agent:
        fields["referrer"], fields["user_agent"] = piece(3), piece(5)
    complex_rows = pc.and_(pc.is_valid(lines), pc.invert(simple))
    matched = simple
    if pc.any(complex_rows).as_py():
        pattern = COMBINED_PATTERN if with_agent else COMMON_PATTERN
        slow = pc.extract_regex(lines.filter(complex_rows), pattern)
        slow_ok = pc.is_valid(slow)
        # Most complex rows are junk that the full pattern rejects too: their fields are
        # never read (the line is rejected as a syntax error), so copy fields in only
        # when some complex row did match.
        if pc.any(slow_ok).as_py():
            for name in names:
                fields[name] = pc.replace_with_mask(
                    fields[name], complex_rows, pc.struct_field(slow, name)
                )
        matched = pc.replace_with_mask(simple, complex_rows, slow_ok)
    return fields, matched


_REQUEST: Final = re.compile(REQUEST_PATTERN, re.ASCII)  # RE2's \d and \s are ASCII-only
_CACHE_LIMIT: Final = 200_000
_requests: dict[str, tuple[str, str] | None] = {}
"""Request line to (method, target), or None when it is not one: shared by every import
(a pure function of the text), cleared when it grows past :data:`_CACHE_LIMIT`."""


def split_requests(requests: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Method and target of each HTTP request line (both null when it is not one).

    The same as Arrow's ``extract_regex`` with :data:`REQUEST_PATTERN`, but run once per
    distinct request line: a log repeats the same few thousand requests.
    """
    encoded = pc.dictionary_encode(requests)
    if len(_requests) > _CACHE_LIMIT:
        _requests.clear()
    methods: list[str | None] = []
    targets: list[str | None] = []
    missing = (None, None)
    for text in encoded.dictionary.to_pylist():
        found = _requests.get(text, missing)  # one lookup: another thread may clear it
        if found is missing:
            match = _REQUEST.fullmatch(text)
            found = _requests[text] = None if match is None else (match[1], match[2])
        method, target = found or missing
        methods.append(method)
        targets.append(target)
    return (
        pc.take(pa.array(methods, pa.string()), encoded.indices),
        pc.take(pa.array(targets, pa.string()), encoded.indices),
    )


def parse_clf_batch(lines: pa.Array, *, with_agent: bool) -> tuple[pa.Table, pa.Array]:
    """Parse lines of the combined (``with_agent``) or common format.

    Returns a :data:`PARSED_SCHEMA` table with one row per line and, per line, the reason it
    is rejected (null when accepted, and for null lines, which the caller has handled).
    """
    fields, matched = _fields(lines, with_agent)
    ts, time_ok = clf_timestamps(fields["time"])
    status_ok = _matches(fields["status"], r"^[1-5][0-9][0-9]$")
    status = pc.cast(pc.if_else(status_ok, fields["status"], "0"), pa.int32())
    method, target = split_requests(fields["request"])
    checks = pc.case_when(
        pc.make_struct(
            pc.invert(time_ok),
            pc.invert(status_ok),
            pc.is_null(method),
            field_names=["time", "status", "request"],
        ),
        REASON_TIMESTAMP,
        REASON_STATUS,
        REASON_REQUEST,
    )
    syntax = pc.if_else(pc.is_valid(lines), REASON_SYNTAX, pa.scalar(None, pa.string()))
    reasons = pc.if_else(matched, checks, syntax)
    n = len(lines)
    nulls = pa.nulls(n, pa.string())
    columns = [
        ts,
        method,
        target,
        status,
        pa.nulls(n, pa.float64()),
        _unescape(fields["referrer"]) if with_agent else nulls,
        _unescape(fields["user_agent"]) if with_agent else nulls,
        nulls,
        fields["ip"],
        nulls,
    ]
    return pa.Table.from_arrays(columns, schema=PARSED_SCHEMA), reasons


def parse_combined(lines: pa.Array) -> tuple[pa.Table, pa.Array]:
    """A batch of combined-format lines (see :func:`parse_clf_batch`)."""
    return parse_clf_batch(lines, with_agent=True)
