"""A page whose purpose label, description and contact are HTML and script: the banner must
show them as text. Run by the browser tests under uvicorn (``hostile_app:app``)."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from consent_middleware import DEFAULT_PURPOSES, ConsentMiddleware, Purpose
from consent_middleware.banner import banner_tags

HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'

EVIL = Purpose("evil", labels={"en": HOSTILE}, descriptions={"en": HOSTILE}, code="e")


async def home(request: Request) -> HTMLResponse:
    return HTMLResponse(
        f'<!doctype html><html lang="en"><body>{banner_tags(request)}<h1>Hostile</h1>'
        "<a href='/consent/settings' data-consent-settings>Cookie settings</a></body></html>"
    )


app = Starlette(
    routes=[Route("/", home)],
    middleware=[
        Middleware(
            ConsentMiddleware,
            secret_key="hostile-test-key",
            policy_version="1",
            purposes=[*DEFAULT_PURPOSES, EVIL],
            contact=HOSTILE,
        )
    ],
)
