"""A small shop built with Starlette, with ConsentMiddleware in front.

    CONSENT_SECRET_KEY=... .venv/bin/uvicorn examples.shop_app:app   # http://127.0.0.1:8000/

Pages: ``/`` (with a consent form that works without JavaScript), ``/products/{product_id}``,
``/cart``, and ``/widgets/recommendations``, a marketing widget served only with consent.
Requests and decisions are recorded under ``CONSENT_RAW_DIR`` (default ./demo-output/raw).
"""

from __future__ import annotations

import html
import os

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from consent_middleware import (
    ConsentMiddleware,
    get_consent,
    render_consent_mode,
    requires_consent,
)

# WARNING: the default key is for local development only. Anyone who knows it can forge
# consent cookies. In production set CONSENT_SECRET_KEY to a long random value (for key
# rotation, pass a list to secret_key, oldest first).
SECRET_KEY = os.environ.get("CONSENT_SECRET_KEY", "dev-only-insecure-key-change-me")
RAW_DIR = os.environ.get("CONSENT_RAW_DIR", "./demo-output/raw")
POLICY_VERSION = "2026-04"

PRODUCTS = {i: f"Product {i}" for i in range(1, 41)}


def _page(request: Request, title: str, body: str) -> HTMLResponse:
    state = get_consent(request)
    choices = "".join(
        f'<label><input type="checkbox" name="purposes" value="{name}"'
        f"{' checked' if on else ''}> {html.escape(name)}</label> "
        for name, on in state.purposes.items()
        if name != "necessary"
    )
    path = html.escape(request.url.path, quote=True)
    banner = (
        f'<form method="post" action="/consent"><input type="hidden" name="next" value="{path}">'
        f'{choices}<button>Save</button> <button name="accept" value="all">Accept all</button> '
        '<button name="accept" value="necessary">Necessary only</button></form>'
    )
    return HTMLResponse(
        f"<!doctype html><html><head><title>{html.escape(title)}</title>"
        f"{render_consent_mode(state)}</head><body><h1>{html.escape(title)}</h1>{body}"
        f"{banner if state.needs_prompt else ''}<p>Receipt: {state.receipt_id or '-'}</p>"
        "</body></html>"
    )


async def home(request: Request) -> Response:
    links = "".join(f'<li><a href="/products/{i}">{n}</a></li>' for i, n in PRODUCTS.items())
    response = _page(request, "Shop", f"<ul>{links}</ul><a href='/cart'>Cart</a>")
    # Declared as a marketing cookie below: the middleware drops it unless marketing is granted.
    response.set_cookie("ad_seen", "home", max_age=3600, httponly=True, samesite="lax")
    return response


async def product(request: Request) -> Response:
    product_id = request.path_params["product_id"]
    name = PRODUCTS.get(product_id)
    if name is None:
        return HTMLResponse("<h1>Not found</h1>", status_code=404)
    return _page(request, name, f"<p>{name}: a fine product.</p><a href='/cart'>Add to cart</a>")


async def cart(request: Request) -> Response:
    return _page(request, "Cart", "<p>Your cart is empty.</p>")


@requires_consent("marketing")
async def recommendations(request: Request) -> Response:
    return JSONResponse({"recommended": [3, 7, 12]})


app = Starlette(
    routes=[
        Route("/", home),
        Route("/products/{product_id:int}", product),
        Route("/cart", cart),
        Route("/widgets/recommendations", recommendations),
    ],
    middleware=[
        Middleware(
            ConsentMiddleware,
            secret_key=SECRET_KEY,
            policy_version=POLICY_VERSION,
            raw_dir=RAW_DIR,
            cookie_purposes={"ad_seen": "marketing"},
        )
    ],
)
