"""The example shop in FastAPI: ``app.add_middleware(ConsentMiddleware, ...)`` and the
``consent_dependency`` for the marketing widget. ``/`` answers browsers (``Accept:
text/html``) with a page carrying the consent banner and API clients with JSON.

    CONSENT_SECRET_KEY=... .venv/bin/uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import html
import os
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from consent_middleware import ConsentMiddleware, ConsentState, consent_dependency, get_consent
from consent_middleware.banner import banner_tags, negotiate_language

# WARNING: the default key is for local development only; set CONSENT_SECRET_KEY in production.
SECRET_KEY = os.environ.get("CONSENT_SECRET_KEY", "dev-only-insecure-key-change-me")
RAW_DIR = os.environ.get("CONSENT_RAW_DIR", "./demo-output/raw")

PRODUCTS = {i: f"Product {i}" for i in range(1, 41)}
# The contact point the banner shows (policy section 13); use your own office.
CONTACT = "Complaint Consultation Office (example): privacy@shop.example, +81-6-0000-0000"
SETTINGS_LABEL = {"en": "Cookie settings", "ja": "クッキー設定"}

app = FastAPI(title="Example shop")
app.add_middleware(
    ConsentMiddleware,
    secret_key=SECRET_KEY,
    policy_version="2026-04",
    raw_dir=RAW_DIR,
    cookie_purposes={"ad_seen": "marketing"},
    contact=CONTACT,
)


@app.get("/", response_model=None)
def home(request: Request) -> dict[str, object] | HTMLResponse:
    """JSON for API clients; an HTML page with the consent banner for browsers."""
    state = get_consent(request)
    if "text/html" not in request.headers.get("accept", ""):
        return {"products": PRODUCTS, "consent": dict(state.purposes), "ask": state.needs_prompt}
    lang = negotiate_language(request.headers.get("accept-language"))
    links = "".join(f'<li><a href="/products/{i}">{n}</a></li>' for i, n in PRODUCTS.items())
    settings = f"/consent/settings?{urlencode({'lang': lang, 'next': '/'})}"
    return HTMLResponse(
        f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8"><title>Shop</title>'
        f"</head><body>{banner_tags(request, lang=lang)}<h1>Shop</h1><ul>{links}</ul>"
        f'<footer><a href="{html.escape(settings)}" data-consent-settings>'
        f"{SETTINGS_LABEL[lang]}</a></footer></body></html>"
    )


@app.get("/products/{product_id}")
def product(product_id: int) -> dict[str, object]:
    if product_id not in PRODUCTS:
        raise HTTPException(status_code=404, detail="no such product")
    return {"id": product_id, "name": PRODUCTS[product_id]}


@app.get("/cart")
def cart() -> dict[str, object]:
    return {"items": []}


@app.get("/widgets/recommendations")
def recommendations(
    consent: Annotated[ConsentState, Depends(consent_dependency("marketing"))],
) -> dict[str, object]:
    return {"recommended": [3, 7, 12], "receipt_id": consent.receipt_id}
