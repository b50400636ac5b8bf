"""``ConsentMiddleware``: a pure ASGI middleware that gives every visitor a signed consent
cookie, exposes the consent state to the app, serves the consent endpoints, strips
``Set-Cookie`` headers the visitor did not consent to, and hands requests and decisions to
the recorder."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from consent_middleware.banner import BANNER_SCOPE_KEY, Banner
from consent_middleware.cookies import (
    DEFAULT_MAX_AGE,
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
from consent_middleware.stats import ConsentStats
from consent_middleware.tombstones import ErasedIds

if TYPE_CHECKING:
    from consent_middleware.recorder import Recorder, RecordingOptions

logger = logging.getLogger("consent_middleware")


def gpc_signal(scope: Scope) -> bool:
    """Whether the request carries ``Sec-GPC: 1`` (exactly "1" after stripping; the first
    header counts). Any other value is no signal."""
    for key, value in scope.get("headers", ()):
        if key.lower() == b"sec-gpc":
            return bool(value.strip() == b"1")
    return False


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
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":  # websockets pass through untouched
            await self.app(scope, receive, send)
            return
        if self.banner.serves_asset(scope["path"]):  # static: no cookie read, none set
            await self.banner.asset(scope, receive, send)
            return
        ctx = self.read(scope)
        for decision in ctx.decisions:  # a GPC override made while reading
            self._emit(decision)
        ctx.decisions.clear()
        if self.banner.handles(scope["path"]):
            await self.banner(scope, receive, send, ctx)
            return
        if self.privacy is not None and self.privacy.handles(scope["path"]):
            await self.privacy(scope, receive, send, ctx)
            return
        if self.endpoints.handles(scope["path"]):
            await self.endpoints(scope, receive, send, ctx)
            return
        scope[SCOPE_KEY] = ctx.state
        scope[ENDPOINT_SCOPE_KEY] = self.prefix
        scope[BANNER_SCOPE_KEY] = self.banner
        await self._call_app(scope, receive, send, ctx)

    def read(self, scope: Scope) -> ConsentContext:
        """The consent context of an HTTP request; bad input means "no decision", never an error."""
        gpc = gpc_signal(scope)
        secure = self.cookie.is_secure(scope.get("scheme", "http"))
        try:
            raw = b"; ".join(v for k, v in scope.get("headers", ()) if k.lower() == b"cookie")
            payload = None
            candidates = cookie_values(raw, self.cookie.read_names())
            for value in candidates:  # duplicates: the first one that verifies wins
                payload = self.config.codec.decode(value)
                if payload is not None:
                    break
            if candidates and payload is None:
                self.stats.count_invalid_cookie()
            erased = self.erased
            if payload and payload.aid and erased is not None and erased.contains(payload.aid):
                payload = None  # a replayed cookie of an erased id counts as no decision
            return resolve(self.config, payload, gpc=gpc, secure=secure)
        except Exception:  # a bug here must not take the site down: fall back to defaults
            logger.exception("could not read the consent cookie; treating it as no decision")
            return resolve(self.config, None, gpc=gpc, secure=secure)

    async def _call_app(
        self, scope: Scope, receive: Receive, send: Send, ctx: ConsentContext
    ) -> None:
        status = 500  # stays 500 when the app raises before answering
        started = time.perf_counter()
        recorder = self.recorder
        if recorder is not None:
            recorder.start()  # idempotent; covers servers without a lifespan

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.setdefault("headers", [])
                message["headers"] = strip_set_cookies(
                    list(headers), self.cookie_purposes, ctx.state, self.stats
                )
                if ctx.set_cookie is not None:
                    MutableHeaders(scope=message).append("set-cookie", ctx.set_cookie)
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if recorder is not None:
                duration_ms = (time.perf_counter() - started) * 1000.0
                recorder.record_request(
                    scope, status=status, duration_ms=duration_ms, consent=ctx.state
                )

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
        everything) just before the server hears that shutdown is complete."""
        recorder = self.recorder
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
