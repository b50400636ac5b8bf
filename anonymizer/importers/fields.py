"""The parsed-line columns every format produces, and the checks they share.

A format parser turns a batch of lines into a table of :data:`PARSED_SCHEMA` plus, per line,
the reason it was rejected (one of the ``REASON_*`` strings, null when accepted), so that
bad lines are counted and reported, never raised.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import date
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

ParsedLine = tuple[
    int,  # ts: microseconds since the Unix epoch, UTC
    str,  # method
    str,  # request target (path and query, as sent)
    int,  # status
    float | None,  # duration_ms
    str | None,  # referrer URL
    str | None,  # user agent
    str | None,  # Accept-Language
    str | None,  # client IP (used for visitor_hash only, never stored)
    str | None,  # site host, when the log records it
]
"""One accepted log line, before scrubbing (the row form of :data:`PARSED_SCHEMA`)."""

PARSED_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", pa.int64()),
        pa.field("method", pa.string()),
        pa.field("target", pa.string()),
        pa.field("status", pa.int32()),
        pa.field("duration_ms", pa.float64()),
        pa.field("referrer", pa.string()),
        pa.field("user_agent", pa.string()),
        pa.field("accept_language", pa.string()),
        pa.field("ip", pa.string()),
        pa.field("host", pa.string()),
    ]
)
"""Columns of parsed lines: what a log line says, before anything is reduced."""

REASON_SYNTAX: Final = "syntax"
REASON_REQUEST: Final = "bad request line"
REASON_TIMESTAMP: Final = "bad timestamp"
REASON_STATUS: Final = "bad status"
REASON_TOO_LONG: Final = "line too long"
REASON_BINARY: Final = "binary data"
REASON_JSON: Final = "invalid JSON"
REASON_MISSING: Final = "missing field"
REASON_FIELD: Final = "bad field value"

MIN_TS_US: Final = 0
"""Earliest accepted timestamp (1970-01-01): older dates are corrupt, not traffic."""

MAX_TS_US: Final = 4102444800 * 1_000_000
"""Latest accepted timestamp (2100-01-01, exclusive)."""

MAX_DURATION_MS: Final = 7 * 24 * 3600 * 1000.0
"""Request durations beyond a week are corrupt values, not measurements."""

REQUEST_PATTERN: Final = (
    r"(?P<method>[A-Z][A-Z_-]{0,19}) (?P<target>(?:/|https?://|\*)[^\s\"]*)(?: HTTP/\d(?:\.\d)?)?"
)
"""An HTTP request line; the same pattern for Python ``re`` and Arrow's RE2."""

_REQUEST: Final = re.compile(REQUEST_PATTERN)
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")

MONTHS: Final[dict[str, int]] = {
    name: number
    for number, name in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"),
        start=1,
    )
}

_CLF_TIME: Final = re.compile(
    r"(\d{2})/([A-Z][a-z]{2})/(\d{4}):([01]\d|2[0-3]):([0-5]\d):([0-5]\d) ([+-])(\d{2})([0-5]\d)"
)
_EPOCH_ORDINAL: Final = date(1970, 1, 1).toordinal()


def rows_with_bytes(
    lines: pa.Array, *, control: bool = False, byte: int | None = None
) -> np.ndarray:
    """Per row of a string array, whether it holds a control character (``control``, tab
    included: no field of a log line holds one) or the byte ``byte``.

    One pass of NumPy over the array's data buffer instead of a regular expression per row.
    """
    n = len(lines)
    rows = np.zeros(n, np.bool_)
    if n == 0 or lines.buffers()[2] is None:
        return rows
    offsets = np.frombuffer(lines.buffers()[1], np.int32)[lines.offset : lines.offset + n + 1]
    data = np.frombuffer(lines.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    if len(data) == 0:
        return rows
    # Almost no log holds any: first a cheap test over the whole buffer (a minimum and one
    # comparison instead of three passes and an index scan).
    if control:
        if data.min() >= 32 and not np.count_nonzero(data == 127):
            return rows
        hits = (data < 32) | (data == 127)
    else:
        hits = data == byte
        if not hits.any():
            return rows
    where = np.flatnonzero(hits)
    if len(where):
        rows[np.searchsorted(offsets, where + offsets[0], side="right") - 1] = True
    return rows


def null_where(values: pa.Array | pa.ChunkedArray, mask: pa.Array) -> pa.Array:
    """``values`` (strings) with the rows where ``mask`` is true set to null.

    The result shares the offsets and data of ``values`` and only gets a new validity
    bitmap, instead of copying every string as ``if_else`` does.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not pc.any(mask).as_py():
        return values
    if values.offset or values.type != pa.string():  # not worth the bit shuffling
        return pc.if_else(mask, pa.scalar(None, values.type), values)
    keep = pc.and_(pc.is_valid(values), pc.invert(mask)).to_numpy(zero_copy_only=False)
    validity = pa.py_buffer(np.packbits(keep, bitorder="little"))
    buffers = values.buffers()
    return pa.StringArray.from_buffers(len(values), buffers[1], buffers[2], validity)


def has_control_chars(text: str) -> bool:
    """True when ``text`` holds control characters or lone surrogates (binary junk)."""
    return _CONTROL.search(text) is not None


def split_request(request: str) -> tuple[str, str] | None:
    """``(method, target)`` of an HTTP request line, or None if it is not one."""
    match = _REQUEST.fullmatch(request)
    if match is None:
        return None
    return match.group("method"), match.group("target")


def parse_clf_time(text: str) -> int | None:
    """``17/May/2015:10:05:03 +0200`` as UTC microseconds since the epoch, or None."""
    match = _CLF_TIME.fullmatch(text)
    if match is None:
        return None
    day, mon, year, hour, minute, second, sign, off_h, off_m = match.groups()
    month = MONTHS.get(mon)
    if month is None:
        return None
    try:
        days = date(int(year), month, int(day)).toordinal() - _EPOCH_ORDINAL
    except ValueError:
        return None
    offset = (int(off_h) * 3600 + int(off_m) * 60) * (-1 if sign == "-" else 1)
    seconds = days * 86400 + int(hour) * 3600 + int(minute) * 60 + int(second) - offset
    us = seconds * 1_000_000
    return us if MIN_TS_US <= us < MAX_TS_US else None


def parse_status(text: str) -> int | None:
    """An HTTP status code 100-599, or None."""
    if len(text) != 3 or not text.isdigit():
        return None
    status = int(text)
    return status if 100 <= status <= 599 else None


def parse_duration_seconds(value: object) -> float | None:
    """``request_time`` (seconds, number or text) in milliseconds; None when absent or bad."""
    if value is None or value == "-" or value == "" or isinstance(value, bool):
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    ms = seconds * 1000.0
    return ms if 0.0 <= ms <= MAX_DURATION_MS else None


def parsed_table(rows: Sequence[ParsedLine | None]) -> pa.Table:
    """A :data:`PARSED_SCHEMA` table from row tuples; None rows (rejected) become all-null."""
    empty = (None,) * len(PARSED_SCHEMA)
    columns = list(zip(*(empty if row is None else row for row in rows), strict=True))
    if not columns:
        return PARSED_SCHEMA.empty_table()
    return pa.Table.from_arrays(
        [pa.array(col, f.type) for col, f in zip(columns, PARSED_SCHEMA, strict=True)],
        schema=PARSED_SCHEMA,
    )
