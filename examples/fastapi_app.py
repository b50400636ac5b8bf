"""The example shop in FastAPI: ``app.add_middleware(ConsentMiddleware, ...)`` and the
``consent_dependency`` for the marketing widget.

    CONSENT_SECRET_KEY=... .venv/bin/uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import os
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request

from consent_middleware import ConsentMiddleware, ConsentState, consent_dependency, get_consent

# WARNING: the default key is for local development only; set CONSENT_SECRET_KEY in production.
SECRET_KEY = os.environ.get("CONSENT_SECRET_KEY", "dev-only-insecure-key-change-me")
RAW_DIR = os.environ.get("CONSENT_RAW_DIR", "./demo-output/raw")

PRODUCTS = {i: f"Product {i}" for i in range(1, 41)}

app = FastAPI(title="Example shop")
app.add_middleware(
    ConsentMiddleware,
    secret_key=SECRET_KEY,
    policy_version="2026-04",
    raw_dir=RAW_DIR,
    cookie_purposes={"ad_seen": "marketing"},
)


@app.get("/")
def home(request: Request) -> dict[str, object]:
    state = get_consent(request)
    return {"products": PRODUCTS, "consent": dict(state.purposes), "ask": state.needs_prompt}


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
