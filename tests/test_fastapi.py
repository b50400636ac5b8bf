"""ConsentMiddleware in FastAPI: app.add_middleware and the consent dependency."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest
from consent_support import ORIGIN, POLICY, SECRET, TestClient, set_cookies
from fastapi import Depends, FastAPI, Request

from consent_middleware import (
    ConsentMiddleware,
    ConsentState,
    RequiresConsent,
    consent_dependency,
    get_consent,
)


def make_fastapi_app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(
        ConsentMiddleware,
        secret_key=SECRET,
        policy_version=POLICY,
        cookie_purposes={"ad_id": "marketing"},
    )

    @app.get("/")
    def home(request: Request) -> dict[str, object]:
        return {"purposes": dict(get_consent(request).purposes)}

    @app.get("/ads")
    def ads(
        consent: Annotated[ConsentState, Depends(consent_dependency("marketing"))],
    ) -> dict[str, object]:
        return {"receipt_id": consent.receipt_id}

    @app.get("/stats", dependencies=[Depends(RequiresConsent("statistics"))])
    def stats() -> dict[str, str]:
        return {"ok": "yes"}

    return app


def test_add_middleware_and_endpoints() -> None:
    client = TestClient(make_fastapi_app())
    assert client.get("/").json()["purposes"]["marketing"] is False
    response = client.post("/consent", json={"accept": "all"}, headers=ORIGIN)
    assert response.status_code == 200 and set_cookies(response)[0].startswith("consent=")
    assert client.get("/").json()["purposes"]["marketing"] is True
    assert client.get("/.well-known/gpc.json").json()["gpc"] is True


def test_dependency_refuses_then_allows() -> None:
    client = TestClient(make_fastapi_app())
    refused = client.get("/ads")
    assert refused.status_code == 403
    assert refused.json() == {
        "detail": {
            "error": "consent_required",
            "purpose": "marketing",
            "detail": "This needs your consent to 'marketing'. You can grant it at /consent.",
        }
    }
    assert client.get("/stats").status_code == 403
    receipt = client.post("/consent", json={"accept": "all"}).json()["receipt_id"]
    assert client.get("/ads").json() == {"receipt_id": receipt}
    assert client.get("/stats").json() == {"ok": "yes"}


def test_dependency_is_not_in_the_openapi_parameters() -> None:
    schema = make_fastapi_app().openapi()
    assert "parameters" not in schema["paths"]["/ads"]["get"]


def test_package_imports_without_fastapi() -> None:
    """The package must work for plain Starlette users: block fastapi and import it."""
    code = (
        "import sys; sys.modules['fastapi'] = None\n"
        "import consent_middleware\n"
        "from consent_middleware import consent_dependency\n"
        "consent_dependency('marketing')\n"
        "assert 'fastapi' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_fastapi_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_RAW_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # examples/
    example = importlib.reload(importlib.import_module("examples.fastapi_app"))
    with TestClient(example.app) as client:
        assert client.get("/").json()["ask"] is True
        assert client.get("/widgets/recommendations").status_code == 403
        assert client.get("/products/41").status_code == 404
        client.post("/consent", json={"purposes": {"marketing": True}}, headers=ORIGIN)
        widget = client.get("/widgets/recommendations").json()
        assert widget["recommended"] == [3, 7, 12] and widget["receipt_id"]
    assert list(tmp_path.glob("events/date=*/*.parquet"))
    assert list(tmp_path.glob("ledger/*.jsonl"))
