"""Turning one served HTTP request into one raw event (the raw-event contract, design §5).

Work is split in two so the request path stays cheap:

- :func:`capture` runs on the event loop right after the response: it only copies a few
  references out of the ASGI scope into a tuple (no parsing, no hashing, no I/O);
- :class:`EventBuilder` runs on the recorder's background thread: it reduces each captured
  request to exactly the contract's fields (route template or scrubbed path, the five
  ``utm_*`` values, referrer host, primary language, ``visitor_hash``) and builds an Arrow
  table. The IP address, the query string and the referrer's path exist only in memory
  until the batch is built; none of them is ever part of an event.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

import pyarrow as pa

from consent_middleware.raw.salts import SaltStore, visitor_hash
from consent_middleware.raw.schema import RAW_EVENT_SCHEMA, UTM_FIELDS
from consent_middleware.scrub import extract_utm, primary_language, referrer_host, scrub_path
from consent_middleware.state import ConsentState

SOURCE = "middleware"
"""The ``source`` of every event the middleware records."""

MAX_USER_AGENT = 1024
"""Longer user-agent strings are cut: no browser sends one that long."""

_NO_UTM_ROW: tuple[str | None, ...] = (None,) * len(UTM_FIELDS)
_US_PER_DAY = 86_400_000_000


CapturedRequest = tuple[Any, ...]
"""What the request path keeps of one request until the background thread builds it:
``(end, duration_ms, status, method, path, root_path, app_root_path, route, query_string,
headers, client, consent)``, where ``end`` is ``time.time()`` when the response finished.

A plain tuple of references, cheap to build; the scope itself is not kept, so nothing an
app put in it (``state``, sessions, connections) outlives the request.
"""


def capture(
    scope: Mapping[str, Any],
    *,
    status: int,
    duration_ms: float,
    consent: ConsentState,
    end: float | None = None,
) -> CapturedRequest:
    """What an event needs, captured cheaply enough for the hot path."""
    get = scope.get
    return (
        time.time() if end is None else end,
        duration_ms,
        status,
        get("method", "GET"),
        get("path", "/"),
        get("root_path", ""),
        get("app_root_path"),
        get("route"),
        get("query_string", b""),
        get("headers", ()),
        get("client"),
        consent,
    )


_CONVERTER = re.compile(r"\{(\w+):[^}]*\}")


def _is_endpoint_route(route: object) -> bool:
    """A route that ends routing (``Route``, FastAPI's ``APIRoute``), not a ``Mount``/``Host``."""
    # Duck-typed so this module does not depend on Starlette: a Mount has ``routes``.
    return isinstance(getattr(route, "path", None), str) and not hasattr(route, "routes")


def route_template(
    path: str, root_path: str, app_root_path: str | None, route: object | None
) -> str:
    """The path recorded for a request: the matched route template, else the scrubbed path.

    Starlette's router stores the innermost matched route in ``scope["route"]`` and, for
    each ``Mount`` it enters, appends the mount's matched prefix to ``root_path`` (the
    server's own root path stays in ``app_root_path``). The template is therefore the
    server root path, the scrubbed mount prefixes, then the route's own template. A
    ``Mount`` serving a non-router app (static files, a sub-application) has no template
    for the rest of the path, which is scrubbed.
    """
    if route is None:
        return scrub_path(path)
    base = root_path if app_root_path is None else app_root_path
    mounted = root_path[len(base) :] if root_path.startswith(base) else ""
    prefix = base + (scrub_path(mounted) if mounted else "")
    if _is_endpoint_route(route):
        # "/items/{item_id:int}" is published as "/items/{item_id}": the converter is noise.
        template = _CONVERTER.sub(r"{\1}", getattr(route, "path", ""))
        return (prefix.rstrip("/") + template) or "/"
    rest = path[len(root_path) :] if path.startswith(root_path) else path
    return (prefix.rstrip("/") + scrub_path(rest)) or "/"


def _utm_row(query_string: bytes) -> tuple[str | None, ...]:
    found = extract_utm(query_string.decode("latin-1"))
    return tuple(found[name] for name in UTM_FIELDS)


@lru_cache(maxsize=8192)
def _scrubbed(path: str) -> str:
    return scrub_path(path)


@lru_cache(maxsize=4096)
def _referrer_host(value: str) -> str | None:
    return referrer_host(value)


@lru_cache(maxsize=1024)
def _language(value: str) -> str | None:
    return primary_language(value)


_WANTED = {b"user-agent": 0, b"referer": 1, b"accept-language": 2, b"host": 3}


def _headers(headers: Iterable[tuple[bytes, bytes]]) -> tuple[str, str | None, str | None, str]:
    """(user agent, referer, accept-language, host) from raw ASGI headers."""
    found: list[bytes | None] = [None, None, None, None]
    wanted = _WANTED
    for name, value in headers:
        # ASGI header names are lower-case bytes: one dict lookup per header.
        slot = wanted.get(name)
        if slot is not None:
            found[slot] = value
    ua, referer, language, host = found
    return (
        "" if ua is None else ua[:MAX_USER_AGENT].decode("utf-8", "replace"),
        None if referer is None else referer.decode("latin-1"),
        None if language is None else language.decode("latin-1"),
        "" if host is None else host.decode("latin-1"),
    )


class EventBuilder:
    """Reduces captured requests to raw events; used by one thread at a time.

    ``hash_unconsented=False`` leaves ``visitor_hash`` empty unless ``statistics`` is
    granted (see the README for the trade-off). Without ``salts`` no hash is computed.
    """

    def __init__(self, salts: SaltStore | None, *, hash_unconsented: bool = True) -> None:
        self._salts = salts
        self._hash_unconsented = hash_unconsented
        self._templates: dict[tuple[int, str, str | None], tuple[object, str]] = {}

    def _template(
        self, path: str, root_path: str, app_root_path: str | None, route: object | None
    ) -> str:
        if route is None:
            return _scrubbed(path)
        key = (id(route), root_path, app_root_path)
        hit = self._templates.get(key)
        # Route objects are long-lived; keeping a reference also stops id() being reused.
        if hit is not None and hit[0] is route:
            return hit[1]
        template = route_template(path, root_path, app_root_path, route)
        if _is_endpoint_route(route):
            if len(self._templates) > 4096:
                self._templates.clear()
            self._templates[key] = (route, template)
        return template

    def _salt(self, day_number: int, cache: dict[int, bytes]) -> bytes | None:
        if self._salts is None:
            return None
        salt = cache.get(day_number)
        if salt is None:
            salt = self._salts.salt_for(date.fromordinal(date(1970, 1, 1).toordinal() + day_number))
            cache[day_number] = salt
        return salt

    def rows(self, items: Sequence[CapturedRequest]) -> dict[str, list[Any]]:
        """Column lists, in :data:`RAW_EVENT_SCHEMA` order, for ``items``."""
        # One tuple per event, transposed at the end: far fewer Python operations per
        # event than appending to nineteen lists.
        out: list[tuple[Any, ...]] = []
        salts: dict[int, bytes] = {}
        # Per-batch caches only: query strings and IPs must not linger past the batch.
        utms: dict[bytes, tuple[str | None, ...]] = {}
        hashes: dict[tuple[bytes, str, str, str], str] = {}
        consents: dict[int, tuple[ConsentState, bool, tuple[Any, ...]]] = {}
        hash_all = self._hash_unconsented
        store = self._salts
        for (
            end,
            duration_ms,
            status,
            method,
            path,
            root,
            app_root,
            route,
            qs,
            headers,
            client,
            consent,
        ) in items:
            start_us = int(end * 1_000_000 - duration_ms * 1000.0)
            utm = _NO_UTM_ROW
            if b"utm_" in qs:
                utm = utms.get(qs) or utms.setdefault(qs, _utm_row(qs))
            ua, referer, language, host = _headers(headers)
            known = consents.get(id(consent))
            if known is None or known[0] is not consent:
                statistics = consent.granted("statistics")
                tail = (
                    consent.aid if statistics else None,
                    list(consent.granted_purposes),
                    consent.policy_version,
                    consent.gpc,
                    SOURCE,
                )
                known = consents[id(consent)] = (consent, statistics, tail)
            digest = None
            if (known[1] or hash_all) and store is not None:
                day = start_us // _US_PER_DAY
                salt = salts.get(day) or self._salt(day, salts)
                if salt is not None:
                    ip = str(client[0]) if client else ""
                    key = (salt, ip, ua, host)  # one visitor sends many requests per batch
                    digest = hashes.get(key)
                    if digest is None:
                        digest = hashes[key] = visitor_hash(salt, ip, ua, host)
            out.append(
                (
                    start_us,
                    method,
                    status,
                    duration_ms,
                    self._template(path, root, app_root, route),
                    *utm,
                    None if referer is None else _referrer_host(referer),
                    ua,
                    None if language is None else _language(language),
                    digest,
                    *known[2],
                )
            )
        columns = zip(*out, strict=True) if out else ([] for _ in RAW_EVENT_SCHEMA.names)
        return {name: list(col) for name, col in zip(RAW_EVENT_SCHEMA.names, columns, strict=True)}

    def table(self, items: Sequence[CapturedRequest]) -> pa.Table:
        """An Arrow table in :data:`RAW_EVENT_SCHEMA` holding one event per item."""
        cols = self.rows(items)
        arrays = []
        for f in RAW_EVENT_SCHEMA:
            if f.name == "ts":
                # Microseconds since the epoch as int64, then a zero-copy cast to UTC time.
                arrays.append(pa.array(cols["ts"], type=pa.int64()).cast(f.type))
            else:
                arrays.append(pa.array(cols[f.name], type=f.type))
        return pa.Table.from_arrays(arrays, schema=RAW_EVENT_SCHEMA)


def build_event(
    scope: Mapping[str, Any],
    *,
    status: int,
    duration_ms: float,
    consent: ConsentState,
    salts: SaltStore | None = None,
    hash_unconsented: bool = True,
    end: float | None = None,
) -> dict[str, Any]:
    """One raw event, as a dict with exactly the raw-event contract's fields.

    ``end`` is the ``time.time()`` when the response finished (now by default); ``ts`` is
    the request's start, ``end - duration_ms``, as an aware UTC datetime.
    """
    item = capture(scope, status=status, duration_ms=duration_ms, consent=consent, end=end)
    cols = EventBuilder(salts, hash_unconsented=hash_unconsented).rows([item])
    event = {name: values[0] for name, values in cols.items()}
    start_us: int = event["ts"]
    event["ts"] = datetime.fromtimestamp(start_us // 1_000_000, UTC).replace(
        microsecond=start_us % 1_000_000
    )
    return event
