"""Turning one served HTTP request into one raw event (the raw-event contract, design §5).

Work is split in two so the request path stays cheap:

- :meth:`EventBuilder.capture` runs on the event loop right after the response: it only
  copies a few values out of the ASGI scope into a tuple (no parsing, no hashing, no I/O);
- :class:`EventBuilder` runs on the recorder's background thread: it reduces each captured
  request to exactly the contract's fields (route template or scrubbed path, the five
  ``utm_*`` values, referrer host, primary language, ``visitor_hash``) and builds an Arrow
  table. The IP address, the query string and the referrer's path exist only in memory
  until the batch is built; none of them is ever part of an event.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc

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
user_agent, referer, accept_language, host, ip, *consent)``, where ``end`` is
``time.time()`` when the response finished, ``route`` the matched route (or a number
standing for it, see :meth:`EventBuilder.capture`), the four headers raw bytes (or None),
``ip`` the client's address (or None) and ``consent`` the five fields of a
:data:`ConsentSummary`.

A flat tuple, cheap to build; the scope itself is not kept, so nothing an app put in it
(``state``, sessions, connections) outlives the request, nor do the other headers
(cookies, credentials). It holds only strings, bytes, numbers and None, so the garbage
collector stops tracking it at its first pass: a buffer of thousands of events waiting
for the next flush is never promoted to an older generation nor traversed again.
"""

ConsentSummary = tuple[bool, str | None, str | tuple[str, ...], str, bool]
"""What an event keeps of a :class:`ConsentState`: ``(statistics granted, aid while
statistics is granted, granted purposes, policy version, gpc)``. The purposes are joined
with commas (a flat string; registered names never hold one), else kept as a tuple."""


def consent_summary(consent: ConsentState) -> ConsentSummary:
    """The event fields that ``consent`` decides (see :data:`ConsentSummary`)."""
    statistics = consent.granted("statistics")
    names = consent.granted_purposes
    purposes = names if any("," in name for name in names) else ",".join(names)
    return (
        statistics,
        consent.aid if statistics else None,
        purposes,
        consent.policy_version,
        consent.gpc,
    )


def _purposes(value: str | tuple[str, ...]) -> list[str]:
    """The purpose names of a :data:`ConsentSummary`."""
    if isinstance(value, tuple):
        return list(value)
    return value.split(",") if value else []


_ROUTES_SIZE = 1024  # routes an EventBuilder stands in for by number (apps have a few)
_SUMMARIES_SIZE = 4096  # consent states whose summary is remembered (bounded)


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


class EventBuilder:
    """Reduces captured requests to raw events; used by one thread at a time.

    ``hash_unconsented=False`` leaves ``visitor_hash`` empty unless ``statistics`` is
    granted (see the README for the trade-off). Without ``salts`` no hash is computed.
    """

    def __init__(self, salts: SaltStore | None, *, hash_unconsented: bool = True) -> None:
        self._salts = salts
        self._hash_unconsented = hash_unconsented
        self._templates: dict[tuple[int, str, str | None], tuple[object, str]] = {}
        # Written on the request path by capture(), read by the building thread. Routes are
        # only ever added, so a number handed out always finds its route.
        self._routes: dict[int, object] = {}
        self._summaries: dict[int, tuple[ConsentState, ConsentSummary]] = {}
        self._kept_routes = False  # has a route been kept as an object (past the bound)?

    def capture(
        self,
        scope: Mapping[str, Any],
        status: int,
        duration_ms: float,
        consent: ConsentState,
        end: float | None = None,
    ) -> CapturedRequest:
        """What an event needs, captured cheaply enough for the request path (positional
        arguments: this runs once per request). See :data:`CapturedRequest`."""
        get = scope.get
        # ASGI header names are lower-case bytes; a later duplicate wins.
        header = dict(get("headers", ())).get
        client = get("client")
        route = get("route")
        if route is not None:
            # The route is replaced by its id (an int the GC does not track) once this
            # builder holds the route itself; past the bound the object is kept as is.
            number = id(route)
            routes = self._routes
            if number not in routes and len(routes) < _ROUTES_SIZE:
                routes[number] = route  # held here, so no other object gets this id
            if number in routes:
                route = number
            else:
                self._kept_routes = True
        known = self._summaries.get(id(consent))
        if known is not None and known[0] is consent:
            summary = known[1]
        else:
            summary = self._summarise(consent)
        return (
            time.time() if end is None else end,
            duration_ms,
            status,
            get("method", "GET"),
            get("path", "/"),
            get("root_path", ""),
            get("app_root_path"),
            route,
            get("query_string", b""),
            header(b"user-agent"),
            header(b"referer"),
            header(b"accept-language"),
            header(b"host"),
            client[0] if client else None,
            *summary,
        )

    def _summarise(self, consent: ConsentState) -> ConsentSummary:
        summary = consent_summary(consent)
        summaries = self._summaries
        if len(summaries) >= _SUMMARIES_SIZE:
            summaries.clear()
        # Keeping the state itself stops its id() being reused by another one.
        summaries[id(consent)] = (consent, summary)
        return summary

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
        batch = self._batch(items)
        out: dict[str, list[Any]] = {}
        for name in RAW_EVENT_SCHEMA.names:
            if name == "status":
                out[name] = batch.statuses
            elif name in ("ts", "duration_ms"):
                out[name] = (batch.starts if name == "ts" else batch.durations).to_pylist()
            else:
                column = batch.columns[_PER_GROUP[name]]
                out[name] = [column[i] for i in batch.group]
        return out

    def table(self, items: Sequence[CapturedRequest]) -> pa.Table:
        """An Arrow table in :data:`RAW_EVENT_SCHEMA` holding one event per item."""
        batch = self._batch(items)
        # Each distinct group's values are converted once, then repeated by Arrow's take.
        index = None if len(batch.columns[0]) == len(items) else pa.array(batch.group, pa.int32())
        arrays = []
        for f in RAW_EVENT_SCHEMA:
            if f.name == "ts":  # microseconds since the epoch: a zero-copy cast to UTC time
                arrays.append(batch.starts.cast(f.type))
            elif f.name == "duration_ms":
                arrays.append(batch.durations)
            elif f.name == "status":
                arrays.append(pa.array(batch.statuses, type=f.type))
            else:
                array = pa.array(batch.columns[_PER_GROUP[f.name]], type=f.type)
                arrays.append(array if index is None else array.take(index))
        return pa.Table.from_arrays(arrays, schema=RAW_EVENT_SCHEMA)

    def _batch(self, items: Sequence[CapturedRequest]) -> _Batch:
        """Split ``items`` into per-event values and groups of identical derived values.

        Requests of one visitor for one page (same method, path, route, query string,
        user agent, referrer, language, host, IP address, consent state and day) give the
        same event apart from time, status and duration: the expensive part (scrubbing,
        parsing, hashing) runs once per such group, not once per request.
        """
        durations = pa.array([item[1] for item in items], pa.float64())
        # ts = int(end * 1e6 - duration_ms * 1000), the request's start in microseconds:
        # the same float operations and the same truncation, done by Arrow for the batch.
        ends_us = pc.multiply(pa.array([item[0] for item in items], pa.float64()), 1e6)
        starts = pc.subtract(ends_us, pc.multiply(durations, 1000.0)).cast(pa.int64(), safe=False)
        statuses = [item[2] for item in items]
        first, last = (value.as_py() for value in pc.min_max(starts).values())
        if first is None or (first // _US_PER_DAY == last // _US_PER_DAY and not self._kept_routes):
            day = 0 if first is None else first // _US_PER_DAY
            group, firsts = self._one_day(items, day)
        else:
            group, firsts = self._by_day(items, starts.to_pylist())
        return _Batch(starts, durations, statuses, group, self._group_columns(firsts))

    @staticmethod
    def _one_day(
        items: Sequence[CapturedRequest], day: int
    ) -> tuple[list[int], list[tuple[CapturedRequest, int]]]:
        """Group numbers and each group's first item, when all requests started on ``day``."""
        groups: dict[tuple[Any, ...], int] = {}
        # setdefault: a request's group is numbered in order of first appearance.
        group = [groups.setdefault(item[3:], len(groups)) for item in items]
        firsts = [(items[index], day) for index in _first_indexes(group, len(groups))]
        return group, firsts

    @staticmethod
    def _by_day(
        items: Sequence[CapturedRequest], starts: Sequence[int]
    ) -> tuple[list[int], list[tuple[CapturedRequest, int]]]:
        """Group numbers and each group's first item, for requests of several days (each
        day has its own salt) or with routes kept as objects."""
        group: list[int] = []
        groups: dict[tuple[Any, ...], int] = {}
        firsts: list[tuple[CapturedRequest, int]] = []
        for item, start_us in zip(items, starts, strict=True):
            day = start_us // _US_PER_DAY
            route = item[7]
            if route is None or type(route) is int:
                key: tuple[Any, ...] = (day, item[3:])
            else:  # a route kept as an object: its identity (held by the item) stands for it
                key = (day, item[3:7], id(route), item[8:])
            number = groups.get(key)
            if number is None:
                number = groups[key] = len(firsts)
                firsts.append((item, day))
            group.append(number)
        return group, firsts

    def _group_columns(self, firsts: Sequence[tuple[CapturedRequest, int]]) -> list[list[Any]]:
        """The derived values of each group, as columns in :data:`_GROUP_FIELDS` order."""
        out: list[tuple[Any, ...]] = []
        salts: dict[int, bytes] = {}
        # Per-batch caches only: query strings and IPs must not linger past the batch.
        utms: dict[bytes, tuple[str | None, ...]] = {}
        hashes: dict[tuple[bytes, str, str, str], str] = {}
        hash_all = self._hash_unconsented
        store = self._salts
        routes = self._routes
        for item, day in firsts:
            (
                _,
                _,
                _,
                method,
                path,
                root,
                app_root,
                route,
                qs,
                ua_raw,
                referer,
                language,
                host_raw,
                client_ip,
                statistics,
                aid,
                purposes,
                policy_version,
                gpc,
            ) = item
            if type(route) is int:
                route = routes[route]
            utm = _NO_UTM_ROW
            if b"utm_" in qs:
                utm = utms.get(qs) or utms.setdefault(qs, _utm_row(qs))
            ua = "" if ua_raw is None else _user_agent(ua_raw[:MAX_USER_AGENT])
            host = "" if host_raw is None else host_raw.decode("latin-1")
            digest = None
            if (statistics or hash_all) and store is not None:
                salt = salts.get(day) or self._salt(day, salts)
                if salt is not None:
                    ip = "" if client_ip is None else str(client_ip)
                    hash_key = (salt, ip, ua, host)  # one visitor sends many requests
                    digest = hashes.get(hash_key)
                    if digest is None:
                        digest = hashes[hash_key] = visitor_hash(salt, ip, ua, host)
            out.append(
                (
                    method,
                    self._template(path, root, app_root, route),
                    *utm,
                    None if referer is None else _referrer_host(referer.decode("latin-1")),
                    ua,
                    None if language is None else _language(language.decode("latin-1")),
                    digest,
                    aid,
                    _purposes(purposes),
                    policy_version,
                    gpc,
                    SOURCE,
                )
            )
        if not out:
            return [[] for _ in _GROUP_FIELDS]
        return [list(column) for column in zip(*out, strict=True)]


class _Batch(NamedTuple):
    """A batch split by :meth:`EventBuilder._batch`: the per-event columns (``starts`` in
    epoch microseconds), each event's group number, and the groups' columns in
    :data:`_GROUP_FIELDS` order."""

    starts: pa.Int64Array
    durations: pa.DoubleArray
    statuses: list[int]
    group: list[int]
    columns: list[list[Any]]


_PER_EVENT = ("ts", "duration_ms", "status")
_GROUP_FIELDS = tuple(name for name in RAW_EVENT_SCHEMA.names if name not in _PER_EVENT)
_PER_GROUP = {name: i for i, name in enumerate(_GROUP_FIELDS)}


def _first_indexes(group: Sequence[int], count: int) -> list[int]:
    """For each of ``count`` groups numbered in order of appearance, where it first appears."""
    firsts: list[int] = []
    for index, number in enumerate(group):
        if number == len(firsts):
            firsts.append(index)
            if len(firsts) == count:
                break
    return firsts


@lru_cache(maxsize=1024)
def _user_agent(value: bytes) -> str:
    return value.decode("utf-8", "replace")


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
    builder = EventBuilder(salts, hash_unconsented=hash_unconsented)
    cols = builder.rows([builder.capture(scope, status, duration_ms, consent, end)])
    event = {name: values[0] for name, values in cols.items()}
    start_us: int = event["ts"]
    event["ts"] = datetime.fromtimestamp(start_us // 1_000_000, UTC).replace(
        microsecond=start_us % 1_000_000
    )
    return event
