"""Shared helpers for the consent middleware tests: tiny apps and a TestClient import."""

from __future__ import annotations

import warnings
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import StarletteDeprecationWarning
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from consent_middleware import ConsentMiddleware, Decision, get_consent

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 and warns when its test client falls back to httpx;
    # both work the same for these tests.
    warnings.filterwarnings(
        "ignore",
        message="Using `httpx` with `starlette.testclient`",
        category=StarletteDeprecationWarning,
    )
    from starlette.testclient import TestClient

SECRET = "test-secret-key"
POLICY = "2026-04"
ORIGIN = {"origin": "http://testserver"}

__all__ = ["ORIGIN", "POLICY", "SECRET", "TestClient", "cookie_value", "make_app", "set_cookies"]


async def state_endpoint(request: Request) -> Response:
    state = get_consent(request)
    return JSONResponse(
        {
            "purposes": dict(state.purposes),
            "needs_prompt": state.needs_prompt,
            "gpc": state.gpc,
            "receipt_id": state.receipt_id,
            "aid": state.aid,
            "has_decision": state.has_decision,
            "policy_version": state.policy_version,
        }
    )


async def set_app_cookies(request: Request) -> Response:
    response = PlainTextResponse("cookies")
    response.set_cookie("ad_id", "a1")
    response.set_cookie("stats_id", "s1")
    response.set_cookie("session", "x")
    return response


async def boom(request: Request) -> Response:
    raise RuntimeError("the app failed")


async def echo_ws(websocket: WebSocket) -> None:
    await websocket.accept()
    text = await websocket.receive_text()
    await websocket.send_json({"echo": text, "consent_in_scope": "consent" in websocket.scope})
    await websocket.close()


def make_app(
    decisions: list[Decision] | None = None, routes: list[Any] | None = None, **options: Any
) -> Starlette:
    """A tiny Starlette app behind ConsentMiddleware; ``decisions`` collects every Decision."""
    options.setdefault("secret_key", SECRET)
    options.setdefault("policy_version", POLICY)
    if decisions is not None:
        options["on_decision"] = decisions.append
    return Starlette(
        routes=[
            Route("/", state_endpoint),
            Route("/cookies", set_app_cookies),
            Route("/boom", boom),
            WebSocketRoute("/ws", echo_ws),
            *(routes or []),
        ],
        middleware=[Middleware(ConsentMiddleware, **options)],
    )


def set_cookies(response: Any) -> list[str]:
    """Every raw ``Set-Cookie`` header of an httpx response."""
    return list(response.headers.get_list("set-cookie"))


def cookie_value(header: str) -> str:
    """The value part of a raw ``Set-Cookie`` header."""
    return header.split(";", 1)[0].split("=", 1)[1]
