"""``/privacy/data``: the visitor's own disclosure and erasure, authenticated by the cookie.

- ``GET /privacy/data`` (``?format=csv`` for CSV): a download of everything held about
  this browser (:func:`consent_middleware.rights.disclose`).
- ``DELETE /privacy/data``: erasure. 202 with the request id; the tombstone is written
  before the answer, the consent cookie is cleared and the ledger records an ``erase``.

Without a valid consent cookie the answer is 401 with an explanation: the cookie is the
only thing that proves which browser is asking. DELETE follows the same-origin rule of
the consent endpoint. Both methods are rate-limited per client (429 with Retry-After), so
the endpoint cannot be used to probe for cookies or to load the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from consent_middleware.decision import Decision
from consent_middleware.endpoints import BadChoice
from consent_middleware.ratelimit import RateLimiter
from consent_middleware.resolve import ConsentConfig, ConsentContext
from consent_middleware.rights import disclose, erase, erase_decision
from consent_middleware.tombstones import ErasedIds

PRIVACY_PATH = "/privacy/data"

OriginCheck = Callable[[Scope, Headers, str], None]
"""Raises :class:`~consent_middleware.endpoints.BadChoice` (403) for a cross-site request."""

NO_COOKIE = (
    "This browser has no valid consent cookie, so there is nothing we can attribute to it: "
    "data is only linked to a browser through the anonymous id in that cookie. If you "
    "cleared your cookies, write to us quoting the receipt id you noted from the consent "
    "settings; we answer requests by post."
)


def _error(status: int, error: str, reason: str) -> JSONResponse:
    return JSONResponse({"error": error, "reason": reason}, status_code=status)


class PrivacyEndpoints:
    """Serves ``GET`` and ``DELETE`` on ``/privacy/data`` for :class:`ConsentMiddleware`."""

    def __init__(
        self,
        config: ConsentConfig,
        *,
        raw_dir: str | Path,
        check_origin: OriginCheck,
        emit: Callable[[Decision], None],
        erased: ErasedIds,
        refused: Callable[[str], None],
        flush: Callable[[], None] | None = None,
        limiter: RateLimiter | None = None,
        path: str = PRIVACY_PATH,
    ) -> None:
        self.config = config
        self.raw_dir = Path(raw_dir)
        self.check_origin = check_origin
        self.emit = emit
        self.erased = erased
        self.refused = refused
        self.flush = flush
        self.limiter = limiter if limiter is not None else RateLimiter()
        self.path = path

    def handles(self, path: str) -> bool:
        """Whether ``path`` is this endpoint."""
        return path == self.path or path == self.path + "/"

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, ctx: ConsentContext
    ) -> None:
        response = await self._respond(scope, ctx)
        response.headers["cache-control"] = "no-store"
        # Answers carry visitor data: never let a browser sniff them into another type.
        response.headers["x-content-type-options"] = "nosniff"
        await response(scope, receive, send)

    async def _respond(self, scope: Scope, ctx: ConsentContext) -> Response:
        method = scope["method"]
        if method not in ("GET", "HEAD", "DELETE"):
            response = _error(405, "method_not_allowed", "use GET (disclosure) or DELETE (erasure)")
            response.headers["allow"] = "GET, HEAD, DELETE"
            return response
        client = scope.get("client")
        wait = self.limiter.take(str(client[0]) if client else "")
        if wait:
            self.refused("rate_limited")
            response = _error(429, "too_many_requests", "too many requests; try again later")
            response.headers["retry-after"] = self.limiter.retry_after(wait)
            return response
        if method == "DELETE":
            try:
                self.check_origin(scope, Headers(scope=scope), method)
            except BadChoice as error:
                self.refused("cross_origin")
                return _error(error.status, "forbidden", error.reason)
        payload = ctx.payload
        if payload is None:
            response = _error(401, "unauthorized", NO_COOKIE)
            response.headers["www-authenticate"] = f'Cookie name="{self.config.cookie.name}"'
            return response
        aids = [payload.aid] if payload.aid else []
        if self.flush is not None:  # what this process still buffers belongs in the answer
            await run_in_threadpool(self.flush)
        if method == "DELETE":
            return await self._erase(ctx, payload.receipt_id, aids)
        return await self._disclose(scope, ctx, payload.receipt_id, aids)

    async def _disclose(
        self, scope: Scope, ctx: ConsentContext, receipt_id: str, aids: list[str]
    ) -> Response:
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        fmt = query.get("format", "json")
        if fmt not in ("json", "csv"):
            return _error(400, "bad_request", "format must be 'json' or 'csv'")
        disclosure = await run_in_threadpool(disclose, self.raw_dir, receipt_id, aids=aids)
        name = f"privacy-data-{receipt_id}.{fmt}"
        response: Response
        if fmt == "csv":
            response = Response(disclosure.to_csv(), media_type="text/csv; charset=utf-8")
        else:
            response = JSONResponse(disclosure.as_json())
        response.headers["content-disposition"] = f'attachment; filename="{name}"'
        if ctx.set_cookie is not None:  # a GPC override made while reading this request
            response.raw_headers.append((b"set-cookie", ctx.set_cookie.encode("latin-1")))
        return response

    async def _erase(self, ctx: ConsentContext, receipt_id: str, aids: list[str]) -> Response:
        request = await run_in_threadpool(erase, self.raw_dir, receipt_id, aids=aids)
        self.erased.add(request.aid_sha256)
        registry = self.config.registry
        self.emit(
            erase_decision(
                receipt_id,
                source="api",
                required=[p.name for p in registry if p.required],
                others=registry.names,
                policy_version=self.config.policy_version,
                notice_hash=self.config.notice_hash,
                gpc=ctx.gpc,
            )
        )
        response = JSONResponse(
            {
                "request_id": request.request_id,
                "status": request.status,
                "reason": "Erasure accepted: nothing more is recorded under this browser's "
                "anonymous id, it is left out of every statistics run from now on, and its "
                "raw events are deleted at the next purge. Keep the request id to ask "
                "about it.",
            },
            status_code=202,
        )
        for name in self.config.cookie.read_names():
            secure = name.startswith("__Host-")
            if secure and not ctx.secure:
                continue  # browsers ignore a __Host- cookie set without Secure
            clear = f"{name}=; Max-Age=0; Path=/; SameSite=Lax; HttpOnly"
            value = clear + "; Secure" if secure else clear
            response.raw_headers.append((b"set-cookie", value.encode("latin-1")))
        return response
