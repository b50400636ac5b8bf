"""A small shop built with Starlette, with ConsentMiddleware in front.

    CONSENT_SECRET_KEY=... .venv/bin/uvicorn examples.shop_app:app   # http://127.0.0.1:8000/

Pages: ``/``, ``/products/{product_id}``, ``/cart``, each with the consent banner (English or
Japanese from Accept-Language; without JavaScript it falls back to plain forms) and a
"Cookie settings" link, and ``/widgets/recommendations``, a marketing widget served only
with consent.
Requests and decisions are recorded under ``CONSENT_RAW_DIR`` (default ./demo-output/raw).
"""

from __future__ import annotations

import html
import os
from urllib.parse import urlencode

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
from consent_middleware.banner import banner_tags, negotiate_language

# WARNING: the default key is for local development only. Anyone who knows it can forge
# consent cookies. In production set CONSENT_SECRET_KEY to a long random value (for key
# rotation, pass a list to secret_key, oldest first).
SECRET_KEY = os.environ.get("CONSENT_SECRET_KEY", "dev-only-insecure-key-change-me")
RAW_DIR = os.environ.get("CONSENT_RAW_DIR", "./demo-output/raw")
POLICY_VERSION = "2026-04"

PRODUCTS = {i: f"Product {i}" for i in range(1, 41)}
# The contact point the banner shows (policy section 13); use your own office.
CONTACT = "Complaint Consultation Office (example): privacy@shop.example, +81-6-0000-0000"


SETTINGS_LABEL = {"en": "Cookie settings", "ja": "クッキー設定"}

# Pages react to a choice made in the banner without reloading: the marketing widget appears
# as soon as marketing is granted (the server still decides; the widget route checks consent).
WIDGET_SCRIPT = """<script>
function showWidget(state) {
  if (!state || !state.purposes.marketing) return;
  fetch('/widgets/recommendations').then(function (r) { return r.ok ? r.json() : null; })
    .then(function (data) {
      if (data) document.getElementById('widget').textContent = 'Recommended: ' + data.recommended;
    });
}
document.addEventListener('consent:ready', function (e) { showWidget(e.detail); });
document.addEventListener('consent:change', function (e) { showWidget(e.detail); });
</script>"""


def _page(request: Request, title: str, body: str) -> HTMLResponse:
    state = get_consent(request)
    lang = negotiate_language(request.headers.get("accept-language"))
    settings = f"/consent/settings?{urlencode({'lang': lang, 'next': request.url.path})}"
    footer = (
        f'<footer><a href="{html.escape(settings)}" data-consent-settings>'
        f"{SETTINGS_LABEL[lang]}</a> · Receipt: {html.escape(state.receipt_id or '-')}</footer>"
    )
    return HTMLResponse(
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title>{render_consent_mode(state)}</head>"
        # In <body>: the no-JavaScript fallback (<noscript> with forms) is not valid in <head>.
        f"<body>{banner_tags(request, lang=lang)}<h1>{html.escape(title)}</h1>{body}"
        f'<p id="widget"></p>{footer}{WIDGET_SCRIPT}</body></html>'
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
            contact=CONTACT,
        )
    ],
)
