"""Turning parsed log lines into raw events (design section 5), a batch at a time.

Everything identifying is reduced here, once per distinct value: the request target to a
scrubbed path plus ``utm_*``, the referrer to its host, Accept-Language to its primary tag,
and the client IP to the day's ``visitor_hash``. The IP is held only while its batch is
built and is never written.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from consent_middleware.raw.salts import SaltStore
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA, UTM_FIELDS
from consent_middleware.scrub import extract_utm, primary_language, referrer_host, scrub_path

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_US_PER_DAY: Final = 86_400_000_000
_SEP: Final = "\x1f"  # cannot occur in a field: lines with control characters are rejected
_CACHE_LIMIT: Final = 200_000
"""Entries kept per lookup cache before it is cleared (bounds memory on adversarial logs)."""

_CODE_LIMIT: Final = 1 << 62
"""Largest integer key of a (day, IP, agent, host) combination before keys are renumbered."""

Target = tuple[str | None, ...] | None
"""Scrubbed path followed by the five ``utm_*`` values; None for an unparseable target."""

T = TypeVar("T")


def split_target(target: str) -> Target:
    """Scrubbed path and ``utm_*`` values of a request target; None if it cannot be parsed."""
    try:
        path = scrub_path(target)
    except ValueError:  # e.g. "http://[::1/x": an absolute target with a broken host
        return None
    query = target.partition("?")[2].partition("#")[0]
    if "utm_" not in query:
        return (path, *(None,) * len(UTM_FIELDS))
    utm = extract_utm(query)
    return (path, *(utm[name] for name in UTM_FIELDS))


def _encode(column: pa.Array | pa.ChunkedArray) -> pa.DictionaryArray:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    return pc.dictionary_encode(column)


def _lookup(values: list[str], cache: dict[str, T], make: Callable[[str], T]) -> list[T]:
    """``make`` of each value, remembered across batches (up to a bound)."""
    if len(cache) > _CACHE_LIMIT:
        cache.clear()
    out: list[T] = []
    missing = object()
    for value in values:
        found = cache.get(value, missing)  # one lookup: another thread may clear the cache
        if found is missing:
            found = cache.setdefault(value, make(value))
        out.append(found)  # type: ignore[arg-type]
    return out


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after the HMAC inner and outer key blocks (RFC 2104), to be copied.

    HMAC of many short messages under one key costs half as much this way as through
    :func:`hmac.digest`, which redoes the key blocks on every call.
    """
    block = (
        key.ljust(64, b"\0") if len(key) <= 64 else hashlib.sha256(key).digest().ljust(64, b"\0")
    )
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def _hmacs(inner_pad: Any, outer_pad: Any, messages: list[bytes]) -> list[bytes]:
    """HMAC-SHA256 digest of each message, from the key's pads (see :func:`_hmac_pads`)."""
    inner_copy, outer_copy = inner_pad.copy, outer_pad.copy
    out: list[bytes] = []
    for message in messages:
        inner = inner_copy()
        inner.update(message)
        outer = outer_copy()
        outer.update(inner.digest())
        out.append(outer.digest())
    return out


_HEX_DIGITS: Final = np.frombuffer(b"0123456789abcdef", np.uint8)


def _hex_strings(rows: np.ndarray) -> pa.Array:
    """Each row of bytes (n x k uint8) as a string of 2k lower-case hex digits."""
    count, width = rows.shape
    text = np.empty((count, 2 * width), np.uint8)
    text[:, 0::2] = _HEX_DIGITS[rows >> 4]
    text[:, 1::2] = _HEX_DIGITS[rows & 15]
    offsets = np.arange(count + 1, dtype=np.int32) * (2 * width)
    return pa.Array.from_buffers(
        pa.string(), count, [None, pa.py_buffer(offsets), pa.py_buffer(text)]
    )


class EventBuilder:
    """Builds RAW event tables from parsed-line tables of one import."""

    def __init__(self, raw_dir: str | Path, *, source: str, site_host: str) -> None:
        self._salts = SaltStore(raw_dir)
        self._source = source
        self._site_host = site_host
        self._salt_by_day: dict[int, bytes] = {}
        self._targets: dict[str, Target] = {}
        self._referrers: dict[str, str | None] = {}
        self._languages: dict[str, str | None] = {}

    def targets_ok(self, targets: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Per row, whether the request target can be parsed (null targets count as fine)."""
        encoded = _encode(targets)
        split = _lookup(encoded.dictionary.to_pylist(), self._targets, split_target)
        ok = pa.array([s is not None for s in split], pa.bool_())
        return pc.fill_null(pc.take(ok, encoded.indices), True)

    def _salt(self, day: int) -> bytes:
        salt = self._salt_by_day.get(day)
        if salt is None:
            salt = self._salts.salt_for((_EPOCH + timedelta(days=day)).date())
            self._salt_by_day[day] = salt
        return salt

    def _visitor_hashes(self, parsed: pa.Table) -> pa.Array:
        """``visitor_hash`` per row, computed once per distinct (day, IP, user agent, host).

        Bit for bit :func:`consent_middleware.raw.salts.visitor_hash` (a test holds them
        together). The distinct keys are found on integer codes (each text column encoded
        once), so only one HMAC per distinct key runs in Python; rows without an IP get none.
        """
        ips = _encode(parsed["ip"])
        agents = _encode(pc.fill_null(parsed["user_agent"], ""))
        if parsed["host"].null_count == len(parsed):  # the usual case: no host in the log
            hosts = pa.DictionaryArray.from_arrays(
                pa.array(np.zeros(len(parsed), np.int32)), pa.array([self._site_host])
            )
        else:
            hosts = _encode(pc.utf8_lower(pc.fill_null(parsed["host"], self._site_host)))
        days = parsed["ts"].to_numpy() // _US_PER_DAY
        day_base = int(days.min())
        # One integer per row for (day, IP, agent, host): mixed radix, each digit shifted
        # by one so that a missing IP is 0; renumbered densely before it could overflow.
        codes = days - day_base
        size = int(codes.max()) + 1
        radixes: list[int] = []
        renumbered = False
        for encoded in (ips, agents, hosts):
            radix = len(encoded.dictionary) + 1
            if size * radix >= _CODE_LIMIT:
                codes = pc.dictionary_encode(pa.array(codes)).indices.to_numpy().astype(np.int64)
                size, renumbered = int(codes.max()) + 1, True
            digit = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False) + 1
            codes = codes * radix + digit
            size *= radix
            radixes.append(radix)
        keys = pc.dictionary_encode(pa.array(codes))
        distinct = keys.dictionary.to_numpy()
        if renumbered:  # read each key's parts back from its first row
            first = np.full(len(distinct), len(codes), np.int64)
            np.minimum.at(first, keys.indices.to_numpy(), np.arange(len(codes)))
            digits = [days[first] - day_base] + [
                e.indices.fill_null(-1).to_numpy(zero_copy_only=False)[first] + 1
                for e in (ips, agents, hosts)
            ]
        else:
            digits = []
            for radix in reversed(radixes):
                distinct, digit = np.divmod(distinct, radix)
                digits.insert(0, digit)
            digits.insert(0, distinct)
        day_of, ip_of, agent_of, host_of = digits
        named = np.flatnonzero(ip_of)  # keys with an IP (digit 0: none, no hash)
        digests = np.zeros((len(distinct), 32), np.uint8)
        for day in np.unique(day_of[named]).tolist():
            keys_of_day = named[day_of[named] == day]
            # The messages (IP, agent and host joined) are built by Arrow; what is left
            # for Python is the two SHA-256 calls of each HMAC.
            messages = pc.binary_join_element_wise(
                ips.dictionary.take(ip_of[keys_of_day] - 1),
                agents.dictionary.take(agent_of[keys_of_day] - 1),
                hosts.dictionary.take(host_of[keys_of_day] - 1),
                _SEP,
            )
            inner_pad, outer_pad = _hmac_pads(self._salt(day + day_base))
            digests[keys_of_day] = np.frombuffer(
                b"".join(_hmacs(inner_pad, outer_pad, messages.cast(pa.binary()).to_pylist())),
                np.uint8,
            ).reshape(-1, 32)
        hashes = _hex_strings(digests[:, :16])
        if len(named) < len(distinct):
            hashes = pc.if_else(pa.array(ip_of > 0), hashes, pa.scalar(None, pa.string()))
        return pc.take(hashes, keys.indices)

    @staticmethod
    def _reduce(
        column: pa.ChunkedArray, cache: dict[str, str | None], make: Callable[[str], str | None]
    ) -> pa.Array:
        """``make`` of each value of a text column, once per distinct value; nulls stay null."""
        if column.null_count == len(column):  # e.g. no Accept-Language in the log format
            return pa.nulls(len(column), pa.string())
        encoded = _encode(column)
        reduced = _lookup(encoded.dictionary.to_pylist(), cache, make)
        return pc.take(pa.array(reduced, pa.string()), encoded.indices)

    def build(self, parsed: pa.Table) -> pa.Table:
        """Raw events in :data:`RAW_EVENT_SCHEMA` from accepted parsed lines.

        Every target must have passed :meth:`targets_ok`.
        """
        n = parsed.num_rows
        if n == 0:
            return RAW_EVENT_SCHEMA.empty_table()
        parsed = pa.Table.from_arrays(
            [c.combine_chunks() for c in parsed.columns], schema=parsed.schema
        )
        targets = _encode(parsed["target"])
        split = [self._targets.get(t) or split_target(t) for t in targets.dictionary.to_pylist()]
        parts = list(zip(*split, strict=True)) if split else [()] * (1 + len(UTM_FIELDS))
        by_part = [pc.take(pa.array(p, pa.string()), targets.indices) for p in parts]
        referrer = self._reduce(parsed["referrer"], self._referrers, referrer_host)
        language = self._reduce(parsed["accept_language"], self._languages, primary_language)
        columns: dict[str, pa.Array] = {
            "ts": pc.cast(parsed["ts"].chunk(0), RAW_EVENT_SCHEMA.field("ts").type),
            "method": parsed["method"].chunk(0),
            "status": parsed["status"].chunk(0),
            "duration_ms": parsed["duration_ms"].chunk(0),
            "path": by_part[0],
            **dict(zip(UTM_FIELDS, by_part[1:], strict=True)),
            "referrer_host": referrer,
            "user_agent": parsed["user_agent"].chunk(0),
            "language": language,
            "visitor_hash": self._visitor_hashes(parsed),
            "source": pa.array([self._source], pa.string()).take(np.zeros(n, np.int32)),
        }
        arrays = [columns.get(f.name, pa.nulls(n, f.type)) for f in RAW_EVENT_SCHEMA]
        return pa.Table.from_arrays(arrays, schema=RAW_EVENT_SCHEMA)
