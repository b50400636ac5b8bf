"""Apache/NGINX "combined" log format, parsed a batch of lines at a time with Arrow kernels.

``%h %l %u [%d/%b/%Y:%H:%M:%S %z] "%r" %>s %b "%{Referer}i" "%{User-Agent}i"``. Quoted
fields may hold backslash escapes (``\\"``); fields after the user agent (as some servers
append) are ignored. The "common" format is the same without the last two fields
(:mod:`anonymizer.importers.common`).

Python never loops over the lines. The usual line is cut at its double quotes and each
piece is checked with a short regular expression; lines that do not fit that shape
(escaped quotes, a quoted user name) go through one full regular expression instead.
"""

from __future__ import annotations

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


def _element(lists: pa.ListArray, k: int) -> pa.Array:
    """Element ``k`` of each list, for rows known to have more than ``k`` elements
    (other rows get an arbitrary value: the caller masks them)."""
    flat = lists.flatten()
    if len(flat) == 0:
        return pa.nulls(len(lists), flat.type)
    starts = lists.offsets.to_numpy()[:-1] + k
    return flat.take(pa.array(np.minimum(starts, len(flat) - 1)))


def _matches(values: pa.Array, pattern: str) -> pa.Array:
    return pc.fill_null(pc.match_substring_regex(values, pattern), False)


def _unescape(field: pa.Array) -> pa.Array:
    """Null for ``-`` or empty; ``\\"`` and ``\\\\`` escapes undone (in the rare rows with any)."""
    missing = pc.fill_null(pc.or_(pc.equal(field, "-"), pc.equal(field, "")), False)
    field = pc.if_else(missing, pa.scalar(None, pa.string()), field)
    escaped = pa.array(rows_with_bytes(field, byte=ord("\\")), pa.bool_())
    if not pc.any(escaped).as_py():
        return field
    fixed = pc.replace_substring(field.filter(escaped), '\\"', '"')
    return pc.replace_with_mask(field, escaped, pc.replace_substring(fixed, "\\\\", "\\"))


def _fields(lines: pa.Array, with_agent: bool) -> tuple[dict[str, pa.Array], pa.Array]:
    """Raw text fields of each line, and which lines have the format's shape at all."""
    names = ["ip", "time", "request", "status"] + (["referrer", "user_agent"] if with_agent else [])
    parts = pc.split_pattern(lines, '"')
    count = pc.fill_null(pc.list_value_length(parts), 0)
    piece = [_element(parts, k) for k in range(7 if with_agent else 3)]
    # "ip ident user [time] " -> "ip ident user" and "time] "
    host_time = pc.split_pattern(piece[0], " [", max_splits=1)
    ip = _element(pc.split_pattern(_element(host_time, 0), " ", max_splits=1), 0)
    time_text = pc.utf8_slice_codeunits(_element(host_time, 1), 0, -2)
    if with_agent:
        shape = pc.and_(
            pc.and_(pc.equal(count, 7), _matches(piece[2], r"^ \S+ \S+ $")),
            pc.and_(
                pc.fill_null(pc.equal(piece[4], " "), False),
                # nothing after the user agent, or more fields after a space
                pc.fill_null(pc.or_(pc.equal(piece[6], ""), pc.starts_with(piece[6], " ")), False),
            ),
        )
    else:
        shape = pc.and_(pc.equal(count, 3), _matches(piece[2], r"^ \S+ \S+(?:\s.*)?$"))
    simple = pc.and_(shape, _matches(piece[0], _HEAD))
    fields = {
        "ip": ip,
        "time": time_text,
        "request": piece[1],
        # " 200 1234 ": the status is the first word (its shape is checked by the caller)
        "status": _element(pc.split_pattern(piece[2], " ", max_splits=2), 1),
    }
    if with_agent:
        fields["referrer"], fields["user_agent"] = piece[3], piece[5]
    complex_rows = pc.and_(pc.is_valid(lines), pc.invert(simple))
    matched = simple
    if pc.any(complex_rows).as_py():
        pattern = COMBINED_PATTERN if with_agent else COMMON_PATTERN
        slow = pc.extract_regex(lines.filter(complex_rows), pattern)
        for name in names:
            fields[name] = pc.replace_with_mask(
                fields[name], complex_rows, pc.struct_field(slow, name)
            )
        matched = pc.replace_with_mask(simple, complex_rows, pc.is_valid(slow))
    return fields, matched


def parse_clf_batch(lines: pa.Array, *, with_agent: bool) -> tuple[pa.Table, pa.Array]:
    """Parse lines of the combined (``with_agent``) or common format.

    Returns a :data:`PARSED_SCHEMA` table with one row per line and, per line, the reason it
    is rejected (null when accepted, and for null lines, which the caller has handled).
    """
    fields, matched = _fields(lines, with_agent)
    ts, time_ok = clf_timestamps(fields["time"])
    status_ok = _matches(fields["status"], r"^[1-5][0-9][0-9]$")
    status = pc.cast(pc.if_else(status_ok, fields["status"], "0"), pa.int32())
    request = pc.extract_regex(fields["request"], "^" + REQUEST_PATTERN + "$")
    checks = pc.case_when(
        pc.make_struct(
            pc.invert(time_ok),
            pc.invert(status_ok),
            pc.invert(pc.is_valid(request)),
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
        pc.struct_field(request, "method"),
        pc.struct_field(request, "target"),
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
