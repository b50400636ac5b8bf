"""NGINX access logs written as one JSON object per line (``log_format ... escape=json``).

Key names vary between setups; the first present of each group is used:

========================  ===================================================================
timestamp                 ``time_iso8601``, ``@timestamp``, ``time``, ``timestamp``,
                          ``time_local`` (ISO-8601 with offset, ``17/May/2015:10:05:03 +0000``,
                          or Unix seconds such as ``$msec``), ``msec``
client IP                 ``remote_addr``, ``client``, ``client_ip``, ``clientip``, ``ip``
request                   ``request`` (``GET /p?q HTTP/1.1``) or ``request_method``/``method``
                          with ``request_uri``/``uri`` (+ ``args``/``query_string``)
status                    ``status``
duration                  ``request_time`` (seconds)
referrer, user agent      ``http_referer``/``referer``/``referrer``,
                          ``http_user_agent``/``user_agent``/``agent``
site host                 ``host``, ``server_name``, ``http_host``
language                  ``http_accept_language``
========================  ===================================================================

Lines written with NGINX's default escaping (``\\x22``) are not valid JSON; they are read
after turning each ``\\xHH`` into ``\\u00HH``.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any, Final

import pyarrow as pa

from anonymizer.importers.fields import (
    MAX_TS_US,
    MIN_TS_US,
    REASON_FIELD,
    REASON_JSON,
    REASON_MISSING,
    REASON_REQUEST,
    REASON_STATUS,
    REASON_TIMESTAMP,
    ParsedLine,
    has_control_chars,
    parse_clf_time,
    parse_duration_seconds,
    parse_status,
    parsed_table,
    split_request,
)

TIME_KEYS: Final = ("time_iso8601", "@timestamp", "time", "timestamp", "time_local", "msec")
IP_KEYS: Final = ("remote_addr", "client", "client_ip", "clientip", "ip")
METHOD_KEYS: Final = ("request_method", "method")
URI_KEYS: Final = ("request_uri", "uri")
ARGS_KEYS: Final = ("args", "query_string")
REFERRER_KEYS: Final = ("http_referer", "referer", "referrer")
USER_AGENT_KEYS: Final = ("http_user_agent", "user_agent", "agent")
HOST_KEYS: Final = ("host", "server_name", "http_host")

_HEX_ESCAPE: Final = re.compile(r"\\x([0-9A-Fa-f]{2})")
_decoder: Final = json.JSONDecoder()


def _first(obj: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None and value != "" and value != "-":
            return value
    return None


def _text(value: Any) -> str | None:
    """A string field, or None if absent; raises ValueError on non-strings and junk."""
    if value is None:
        return None
    if not isinstance(value, str) or has_control_chars(value):
        raise ValueError("not a clean string")
    return value


def parse_time(value: Any) -> int | None:
    """A timestamp field as UTC microseconds since the epoch, or None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text[:1].isdigit() and "/" in text[:6]:
            return parse_clf_time(text)
        try:
            seconds = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text)
            except ValueError:
                return None
            if parsed.tzinfo is None:  # no offset: the UTC time is unknowable
                return None
            seconds = parsed.timestamp()
    else:
        return None
    if not -1.0 < seconds < MAX_TS_US / 1e6:  # also rejects nan and inf
        return None
    us = round(seconds * 1_000_000)
    return us if MIN_TS_US <= us < MAX_TS_US else None


def _load(line: str) -> Any:
    try:
        return _decoder.decode(line)
    except ValueError:
        if "\\x" not in line:
            raise
        return _decoder.decode(_HEX_ESCAPE.sub(r"\\u00\1", line))


def _request(obj: dict[str, Any]) -> tuple[str, str] | None:
    request = _text(_first(obj, ("request",)))
    if request is not None:
        return split_request(request)
    method = _text(_first(obj, METHOD_KEYS))
    uri = _text(_first(obj, URI_KEYS))
    if method is None or uri is None:
        return None
    args = _text(_first(obj, ARGS_KEYS))
    if args and "?" not in uri:
        uri = f"{uri}?{args}"
    return split_request(f"{method} {uri}")


def parse_nginx_json(line: str) -> ParsedLine | str:
    """One JSON log line, or the reason it is rejected."""
    try:
        obj = _load(line)
    except (ValueError, RecursionError):
        return REASON_JSON
    if not isinstance(obj, dict):
        return REASON_JSON
    try:
        time_value = _first(obj, TIME_KEYS)
        if time_value is None:
            return f"{REASON_MISSING}: time"
        ts = parse_time(time_value)
        if ts is None:
            return REASON_TIMESTAMP
        status_value = obj.get("status")
        if status_value is None:
            return f"{REASON_MISSING}: status"
        status = parse_status(str(status_value)) if not isinstance(status_value, bool) else None
        if status is None:
            return REASON_STATUS
        parts = _request(obj)
        if parts is None:
            return REASON_REQUEST
        ip = _first(obj, IP_KEYS)
        ip = None if ip is None else _text(str(ip))
        host = _text(_first(obj, HOST_KEYS))
        return (
            ts,
            parts[0],
            parts[1],
            status,
            parse_duration_seconds(obj.get("request_time")),
            _text(_first(obj, REFERRER_KEYS)),
            _text(_first(obj, USER_AGENT_KEYS)),
            _text(_first(obj, ("http_accept_language",))),
            ip,
            None if host is None else host.lower(),
        )
    except ValueError:
        return REASON_FIELD


def parse_nginx_json_batch(lines: pa.Array) -> tuple[pa.Table, pa.Array]:
    """A batch of JSON lines: a :data:`PARSED_SCHEMA` table and per-line reject reasons.

    JSON has no vectorised parser that tolerates bad lines, so each line is decoded alone.
    """
    rows: list[ParsedLine | None] = []
    reasons: list[str | None] = []
    for line in lines.to_pylist():
        parsed = None if line is None else parse_nginx_json(line)
        if isinstance(parsed, str):
            rows.append(None)
            reasons.append(parsed)
        else:
            rows.append(parsed)
            reasons.append(None)
    return parsed_table(rows), pa.array(reasons, pa.string())
