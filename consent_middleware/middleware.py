"""``ConsentMiddleware``: a pure ASGI middleware that gives every visitor a signed consent
cookie, exposes the consent state to the app, serves the consent endpoints, strips
``Set-Cookie`` headers the visitor did not consent to, and hands requests and decisions to
the recorder."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeAlias

from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consent_middleware.banner import BANNER_SCOPE_KEY, Banner
from consent_middleware.cookies import (
    DEFAULT_MAX_AGE,
    ConsentPayload,
    CookieCodec,
    CookiePolicy,
    SecretKey,
    Secrets,
    cookie_values,
)
from consent_middleware.decision import Decision
from consent_middleware.endpoints import GPC_PATH, ConsentEndpoints
from consent_middleware.enforcement import ENDPOINT_SCOPE_KEY, SCOPE_KEY, strip_set_cookies
from consent_middleware.privacy_endpoints import PrivacyEndpoints
from consent_middleware.purposes import Mode, Purpose, PurposeRegistry
from consent_middleware.ratelimit import RateLimiter
from consent_middleware.receipt_links import add_link
from consent_middleware.resolve import ConsentConfig, ConsentContext, resolve
from consent_middleware.state import ConsentState
from consent_middleware.stats import ConsentStats
from consent_middleware.tombstones import ErasedIds

if TYPE_CHECKING:
    from consent_middleware.recorder import Recorder, RecordingOptions

logger = logging.getLogger("consent_middleware")


def gpc_signal(scope: Scope) -> bool:
    """Whether the request carries ``Sec-GPC: 1`` (exactly "1" after stripping; the first
    header counts). Any other value is no signal."""
    return _cookie_and_gpc(scope.get("headers", ()))[1]


def _cookie_and_gpc(headers: Iterable[tuple[bytes, bytes]]) -> tuple[bytes, bool]:
    """The ``Cookie`` header (several are joined with "; ") and the GPC signal, in one pass."""
    raw: bytes | None = None
    more: list[bytes] | None = None
    gpc: bool | None = None
    for key, value in headers:
        name = key.lower()
        if name == b"cookie":
            if raw is None:
                raw = value
            else:  # rare (HTTP/2 may split the header): joined as a single one would be
                more = [raw, value] if more is None else [*more, value]
        elif name == b"sec-gpc" and gpc is None:
            gpc = value.strip() == b"1"
    if more is not None:
        try:
            raw = b"; ".join(more)
        except TypeError:  # not bytes (against the ASGI spec): no readable cookie
            raw = None
    if type(raw) is not bytes:  # None, or not bytes: no readable cookie, as before
        raw = bytes(raw) if isinstance(raw, bytearray | memoryview) else b""
    return raw, gpc is True


# Who answers a request (ConsentMiddleware._target): the app, or the middleware itself.
_APP, _ASSET, _SETTINGS, _PRIVACY, _ENDPOINTS = range(5)
_TARGETS_SIZE = 4096

RESOLVED_CACHE_SIZE = 4096
"""Resolved cookie headers remembered per middleware (bounded; the oldest is forgotten)."""

RESOLVED_CACHE_MAX_HEADER = 4096
"""Longer cookie headers are resolved every time (bounds the cache's memory)."""

_Resolved: TypeAlias = tuple[ConsentPayload | None, ConsentState, bool, float, float]
"""A remembered resolution: payload, state, whether the cookie was invalid, and the epoch
seconds between which it holds (the cookie's validity window)."""


class ConsentMiddleware:
    """Cookie-consent middleware for any ASGI app (Starlette, FastAPI, …).

    ``secret_key`` is one key or a list, oldest to newest (newest signs, all verify).
    ``policy_version`` changes when the notice changes: older decisions then keep only
    ``necessary`` and the visitor is asked again. ``cookie_purposes`` maps the app's own
    cookie names to the purpose each serves; their ``Set-Cookie`` headers are dropped unless
    that purpose is granted. ``raw_dir`` (or ``recorder``) turns recording on.
    With ``raw_dir`` the middleware also serves ``/privacy/data`` (the visitor's disclosure
    and erasure, rate-limited per client by ``privacy_rate_limit``) and never records
    under an anonymous id that has been erased, even when an old cookie is replayed.
    ``on_decision`` is called with every :class:`Decision` (e.g. to log or to test).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        secret_key: SecretKey,
        policy_version: str,
        raw_dir: str | Path | None = None,
        purposes: PurposeRegistry | Iterable[Purpose] | None = None,
        mode: Literal["opt_in", "opt_out"] = "opt_in",
        cookie_name: str = "consent",
        max_age: int | timedelta = DEFAULT_MAX_AGE,  # 180 days, in seconds
        secure: Literal["auto"] | bool = "auto",
        prefix: str = "/consent",
        cookie_purposes: Mapping[str, str] | None = None,
        recording: RecordingOptions | None = None,
        recorder: Recorder | None = None,
        notice_text: str = "",
        contact: str = "",
        gpc_last_update: date | str | None = None,
        trusted_origins: Sequence[str] = (),
        on_decision: Callable[[Decision], None] | None = None,
        stats: ConsentStats | None = None,
        privacy_rate_limit: RateLimiter | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        if not policy_version or len(policy_version) > 64:
            raise ValueError("policy_version must be a non-empty string of at most 64 characters")
        if mode not in ("opt_in", "opt_out"):
            raise ValueError(f"mode must be 'opt_in' or 'opt_out', got {mode!r}")
        if not prefix.startswith("/") or prefix.endswith("/") or prefix == GPC_PATH:
            raise ValueError(f"prefix must start with '/' and not end with one, got {prefix!r}")
        registry = (
            purposes
            if isinstance(purposes, PurposeRegistry)
            else PurposeRegistry()
            if purposes is None
            else PurposeRegistry(purposes)
        )
        cookie_purposes = dict(cookie_purposes or {})
        for cookie, purpose in cookie_purposes.items():
            if purpose not in registry:
                raise ValueError(f"cookie_purposes[{cookie!r}]: unknown purpose {purpose!r}")
        self.secrets = Secrets(secret_key)
        self.cookie = CookiePolicy(name=cookie_name, max_age=_seconds(max_age), secure=secure)
        if cookie_purposes.keys() & set(self.cookie.read_names()):
            raise ValueError("cookie_purposes must not name the consent cookie itself")
        self.config = ConsentConfig(
            registry=registry,
            policy_version=policy_version,
            mode=mode,
            codec=CookieCodec(self.secrets, registry, max_age=self.cookie.max_age, clock=clock),
            cookie=self.cookie,
            notice_hash=registry.notice_hash(policy_version, notice_text, contact),
            clock=clock,
        )
        self.prefix = prefix
        self.cookie_purposes = cookie_purposes
        self.stats = stats if stats is not None else ConsentStats()
        self.on_decision = on_decision
        self.recorder = recorder
        if recorder is None and raw_dir is not None:
            from consent_middleware.recorder import Recorder

            self.recorder = Recorder.to_raw_dir(
                raw_dir,
                options=recording,
                ledger_keys=self.secrets.keys,
                excluded_prefixes=(prefix, "/.well-known/"),
            )
        last_update = gpc_last_update or datetime.now(UTC).date()
        self.endpoints = ConsentEndpoints(
            self.config,
            prefix=prefix,
            cookie_purposes=cookie_purposes,
            emit=self._emit,
            refused=self.stats.count_refused,
            gpc_last_update=str(last_update),
            trusted_origins=trusted_origins,
            on_new_aid=self._link_aid if raw_dir is not None else None,
        )
        # Visitors' rights (design section 6) need the RAW store: /privacy/data, and the
        # erased ids a replayed cookie must never be recorded under again.
        self.raw_dir = Path(raw_dir) if raw_dir is not None else None
        self.erased = ErasedIds(raw_dir) if raw_dir is not None else None
        self.privacy = (
            PrivacyEndpoints(
                self.config,
                raw_dir=self.raw_dir,
                check_origin=self.endpoints.check_origin,
                emit=self._emit,
                erased=self.erased,
                refused=self.stats.count_refused,
                flush=self.recorder.flush if self.recorder is not None else None,
                limiter=privacy_rate_limit,
            )
            if self.raw_dir is not None and self.erased is not None
            else None
        )
        self.banner = Banner(self.config, prefix=prefix, contact=contact)
        self._clock = clock
        self._resolved: dict[tuple[bytes, bool, bool], _Resolved] = {}
        self._targets: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"ConsentMiddleware(app={self.app!r}, secret_key={self.secrets!r}, "
            f"policy_version={self.config.policy_version!r}, mode={self.config.mode!r})"
        )

    @property
    def mode(self) -> Mode:
        """``opt_in`` or ``opt_out``."""
        return self.config.mode

    @property
    def registry(self) -> PurposeRegistry:
        """The purposes visitors can consent to."""
        return self.config.registry

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self._lifespan(scope, receive, send)
            else:  # websockets pass through untouched
                await self.app(scope, receive, send)
            return
        path = scope["path"]
        target = self._targets.get(path)
        if target is None:
            target = self._target(path)
        if target == _ASSET:  # static: no cookie read, none set
            await self.banner.asset(scope, receive, send)
            return
        key = self._key(scope)
        hit = self._remembered(key) if target == _APP else None
        if hit is not None:  # the common case: no context object, nothing to write back
            state, set_cookie = hit[1], None
        else:
            ctx = self._read(key)
            if ctx.decisions:
                for decision in ctx.decisions:  # a GPC override made while reading
                    self._emit(decision)
                ctx.decisions.clear()
            state, set_cookie = ctx.state, ctx.set_cookie
        if target == _APP:
            scope[SCOPE_KEY] = state
            scope[ENDPOINT_SCOPE_KEY] = self.prefix
            scope[BANNER_SCOPE_KEY] = self.banner
            await self._call_app(scope, receive, send, state, set_cookie)
        elif target == _SETTINGS:
            await self.banner(scope, receive, send, ctx)
        elif target == _PRIVACY and self.privacy is not None:
            await self.privacy(scope, receive, send, ctx)
        else:
            await self.endpoints(scope, receive, send, ctx)

    def _target(self, path: str) -> int:
        """Who answers a request for ``path`` (remembered per path, bounded)."""
        if self.banner.serves_asset(path):
            target = _ASSET
        elif self.banner.handles(path):
            target = _SETTINGS
        elif self.privacy is not None and self.privacy.handles(path):
            target = _PRIVACY
        elif self.endpoints.handles(path):
            target = _ENDPOINTS
        else:
            target = _APP
        if len(self._targets) >= _TARGETS_SIZE:
            self._targets.clear()
        self._targets[path] = target
        return target

    def read(self, scope: Scope) -> ConsentContext:
        """The consent context of an HTTP request; bad input means "no decision", never an error.

        A visitor sends the same cookie header on every request, so the outcome of resolving
        it is remembered (bounded, per cookie header, GPC signal and scheme) when resolving
        it wrote nothing back and did not depend on the time except through the cookie's
        validity window, which is checked again on every use, as is the erased-id list.
        """
        key = self._key(scope)
        hit = self._remembered(key)
        if hit is not None:
            return ConsentContext(payload=hit[0], gpc=key[1], secure=key[2], state=hit[1])
        return self._read(key)

    def _key(self, scope: Scope) -> tuple[bytes, bool, bool]:
        """What the consent of a request depends on: cookie header, GPC signal, scheme."""
        raw, gpc = _cookie_and_gpc(scope.get("headers", ()))
        return raw, gpc, self.cookie.is_secure(scope.get("scheme", "http"))

    def _remembered(self, key: tuple[bytes, bool, bool]) -> _Resolved | None:
        """The remembered resolution of ``key`` while it still holds, else None."""
        hit = self._resolved.get(key)
        if hit is None:
            return None
        payload, _, invalid, not_before, not_after = hit
        aid = payload.aid if payload is not None else None
        erased = self.erased
        if not_before <= self._clock() <= not_after and (
            aid is None or erased is None or not erased.contains(aid)
        ):
            if invalid:
                self.stats.count_invalid_cookie()
            return hit
        self._resolved.pop(key, None)  # expired or erased: resolve it afresh
        return None

    def _read(self, key: tuple[bytes, bool, bool]) -> ConsentContext:
        try:
            return self._resolve(key)
        except Exception:  # a bug here must not take the site down: fall back to defaults
            logger.exception("could not read the consent cookie; treating it as no decision")
            return resolve(self.config, None, gpc=key[1], secure=key[2])

    def _resolve(self, key: tuple[bytes, bool, bool]) -> ConsentContext:
        """Verify the cookie header ``key[0]`` and resolve the state (the uncached path)."""
        raw, gpc, secure = key
        codec = self.config.codec
        now = self._clock()
        payload: ConsentPayload | None = None
        not_before, not_after = -math.inf, math.inf
        timeless = True  # does the outcome hold at any time (apart from the window)?
        candidates = cookie_values(raw, self.cookie.read_names())
        for value in candidates:  # duplicates: the first one that verifies and is fresh wins
            verified = codec.verify(value)
            if verified is None:
                continue
            window = codec.fresh_window(*verified)
            if window[0] <= now <= window[1]:
                payload = verified[0]
                not_before, not_after = window
                break
            timeless = False  # expired, or not valid yet: another time may decide otherwise
        invalid = bool(candidates) and payload is None
        if invalid:
            self.stats.count_invalid_cookie()
        erased = self.erased
        if payload and payload.aid and erased is not None and erased.contains(payload.aid):
            payload = None  # a replayed cookie of an erased id counts as no decision
            timeless = False  # never remembered: each request asks the erased-id list again
        ctx = resolve(self.config, payload, gpc=gpc, secure=secure)
        if (
            timeless
            and ctx.set_cookie is None
            and not ctx.decisions
            and len(raw) <= RESOLVED_CACHE_MAX_HEADER
        ):
            cache = self._resolved
            if len(cache) >= RESOLVED_CACHE_SIZE:  # bounded: forget the oldest entry
                cache.pop(next(iter(cache)), None)
            cache[key] = (ctx.payload, ctx.state, invalid, not_before, not_after)
        return ctx

    async def _call_app(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: ConsentState,
        set_cookie: str | None,
    ) -> None:
        recorder = self.recorder
        strip = self.cookie_purposes
        if recorder is None and set_cookie is None and not strip:
            await self.app(scope, receive, send)  # nothing to change on the way out
            return
        status = 500  # stays 500 when the app raises before answering
        started = time.perf_counter()

        # A plain function returning send's awaitable: no coroutine of its own per message.
        def send_wrapper(message: Message) -> Awaitable[None]:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if strip or set_cookie is not None:
                    self._rewrite_headers(message, state, set_cookie)
            return send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if recorder is not None:
                duration_ms = (time.perf_counter() - started) * 1000.0
                recorder.record_request(
                    scope, status=status, duration_ms=duration_ms, consent=state
                )

    def _rewrite_headers(
        self, message: Message, state: ConsentState, set_cookie: str | None
    ) -> None:
        """Drop the app's ``Set-Cookie`` headers for purposes not granted; add ours."""
        headers = list(message.get("headers", ()))
        if self.cookie_purposes and any(k.lower() == b"set-cookie" for k, _ in headers):
            headers = strip_set_cookies(headers, self.cookie_purposes, state, self.stats)
        if set_cookie is not None:
            headers.append((b"set-cookie", set_cookie.encode("latin-1")))
        message["headers"] = headers

    async def _link_aid(self, receipt_id: str, aid: str) -> None:
        """Remember that ``aid`` belongs to ``receipt_id`` (for requests by post)."""
        assert self.raw_dir is not None
        try:
            await run_in_threadpool(add_link, self.raw_dir, receipt_id, aid)
        except Exception:  # the visitor's choice must still be honoured
            logger.exception("could not write the receipt link; a postal request may miss it")

    def _emit(self, decision: Decision) -> None:
        self.stats.count_decision(decision.action)
        if self.recorder is not None:
            self.recorder.record_decision(decision)
        if self.on_decision is not None:
            self.on_decision(decision)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the lifespan through; start the recorder at start-up and close it (flushing
        everything) just before the server hears that shutdown is complete.

        The counters go into the lifespan state, which the server copies into every
        request: handlers read ``request.state.consent_stats`` and
        ``request.state.consent_recorder`` even when the app built this middleware itself
        (``app.add_middleware``) and holds no reference to it.
        """
        recorder = self.recorder
        state = scope.get("state")
        if isinstance(state, dict):  # servers without lifespan state pass none
            state.setdefault("consent_stats", self.stats)
            state.setdefault("consent_recorder", recorder)
        if recorder is None:
            await self.app(scope, receive, send)
            return

        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                recorder.start()
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                await run_in_threadpool(recorder.close)
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)


def _seconds(max_age: int | timedelta) -> int:
    return int(max_age.total_seconds()) if isinstance(max_age, timedelta) else max_age
