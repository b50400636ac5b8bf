"""Server-side enforcement: the request API, ``requires_consent``, the FastAPI dependency and
stripping of ``Set-Cookie`` headers for purposes that are not granted.

No ``from __future__ import annotations`` here: FastAPI reads the real annotation of
``RequiresConsent.__call__`` to know that it wants the ``Request``.
"""

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from consent_middleware.cookies import set_cookie_name
from consent_middleware.state import ConsentState
from consent_middleware.stats import ConsentStats

SCOPE_KEY = "consent"
ENDPOINT_SCOPE_KEY = "consent.endpoint"

Endpoint = Callable[[Request], Awaitable[Response]] | Callable[[Request], Response]
Fallback = Callable[[Request], Awaitable[Response]] | Callable[[Request], Response]


def get_consent(request: HTTPConnection | MutableMapping[str, Any]) -> ConsentState:
    """The visitor's :class:`ConsentState` for ``request`` (a Request or an ASGI scope).

    Raises ``RuntimeError`` when ``ConsentMiddleware`` is not installed in front of the app.
    """
    scope = request.scope if isinstance(request, HTTPConnection) else request
    state = scope.get(SCOPE_KEY)
    if not isinstance(state, ConsentState):
        raise RuntimeError(
            "no consent state in this request: add ConsentMiddleware to the application "
            "(Middleware(ConsentMiddleware, ...) or app.add_middleware(ConsentMiddleware, ...))"
        )
    return state


def consent_required_body(request: HTTPConnection, purpose: str) -> dict[str, str]:
    """The JSON body of a 403 answer for a missing ``purpose`` grant."""
    endpoint = request.scope.get(ENDPOINT_SCOPE_KEY, "/consent")
    return {
        "error": "consent_required",
        "purpose": purpose,
        "detail": f"This needs your consent to '{purpose}'. You can grant it at {endpoint}.",
    }


async def _call(function: Endpoint | Fallback, request: Request) -> Response:
    if inspect.iscoroutinefunction(function):
        response: Response = await function(request)
        return response
    result = await run_in_threadpool(function, request)
    if inspect.isawaitable(result):  # a callable object with an async __call__
        result = await result
    assert isinstance(result, Response)
    return result


def requires_consent(
    purpose: str, fallback: Fallback | None = None
) -> Callable[[Endpoint], Callable[[Request], Awaitable[Response]]]:
    """Decorate a Starlette endpoint so it runs only when ``purpose`` is granted.

    Otherwise the answer is ``fallback(request)`` when given (e.g. a page without the
    widget), else 403 with ``{"error": "consent_required", "purpose": ..., "detail": ...}``.
    Works for ``async def`` and plain ``def`` endpoints taking a ``Request``.
    """

    def decorate(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
        @functools.wraps(endpoint)
        async def guarded(request: Request) -> Response:
            if get_consent(request).granted(purpose):
                return await _call(endpoint, request)
            if fallback is not None:
                return await _call(fallback, request)
            return JSONResponse(consent_required_body(request, purpose), status_code=403)

        return guarded

    return decorate


class RequiresConsent:
    """FastAPI dependency: ``Depends(RequiresConsent("marketing"))``.

    Returns the :class:`ConsentState` when ``purpose`` is granted; otherwise raises
    ``fastapi.HTTPException(403)`` whose ``detail`` is the same object ``requires_consent``
    answers with, so the body is ``{"detail": {"error": "consent_required", ...}}``.
    FastAPI is imported only when a request is refused, so this module needs no FastAPI.
    """

    def __init__(self, purpose: str) -> None:
        self.purpose = purpose

    def __repr__(self) -> str:
        return f"RequiresConsent({self.purpose!r})"

    def __call__(self, request: Request) -> ConsentState:
        state = get_consent(request)
        if not state.granted(self.purpose):
            from fastapi import HTTPException

            raise HTTPException(
                status_code=403, detail=consent_required_body(request, self.purpose)
            )
        return state


def consent_dependency(purpose: str) -> RequiresConsent:
    """A FastAPI dependency requiring ``purpose``: ``Depends(consent_dependency("marketing"))``."""
    return RequiresConsent(purpose)


def _is_deletion(header_value: bytes, now: datetime) -> bool:
    """Whether a ``Set-Cookie`` value deletes its cookie (Max-Age<=0 or Expires in the past).

    Deleting a cookie is always allowed: that is what an app does after a withdrawal.
    """
    for attribute in header_value.decode("latin-1").split(";")[1:]:
        key, _, value = attribute.partition("=")
        key, value = key.strip().lower(), value.strip()
        if key == "max-age":
            try:
                return int(value) <= 0
            except ValueError:
                return False
        if key == "expires":
            try:
                expires = parsedate_to_datetime(value)
            except (TypeError, ValueError, IndexError):
                continue
            if expires.tzinfo is None:
                expires = expires.replace(tzinfo=UTC)
            if expires <= now:
                return True
    return False


def strip_set_cookies(
    headers: list[tuple[bytes, bytes]],
    cookie_purposes: Mapping[str, str],
    state: ConsentState,
    stats: ConsentStats,
) -> list[tuple[bytes, bytes]]:
    """``headers`` without the ``Set-Cookie`` lines whose declared purpose is not granted.

    Only cookies named in ``cookie_purposes`` are looked at; deletions always pass.
    Each removal is counted in ``stats.stripped_cookies`` under its purpose.
    """
    if not cookie_purposes:
        return headers
    now = datetime.now(UTC)
    kept: list[tuple[bytes, bytes]] = []
    for key, value in headers:
        if key.lower() == b"set-cookie":
            purpose = cookie_purposes.get(set_cookie_name(value))
            if purpose is not None and not state.granted(purpose) and not _is_deletion(value, now):
                stats.count_stripped(purpose)
                continue
        kept.append((key, value))
    return kept
