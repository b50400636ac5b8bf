"""The consent banner through HTTP: assets, caching, size, languages, escaping, and the
settings page's plain forms (the path a browser without JavaScript takes)."""

from __future__ import annotations

import gzip
import importlib
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import duckdb
import pytest
from consent_support import ORIGIN, TestClient, make_app
from hypothesis import example, given, settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from consent_middleware import Purpose
from consent_middleware.banner import (
    SUPPORTED_LANGUAGES,
    TEXTS,
    banner_tags,
    negotiate_language,
)
from consent_middleware.purposes import DEFAULT_PURPOSES

# Gzipped bytes the banner may cost a page (script + style sheet). The best peers ship about
# 10 KB; this budget keeps the banner well under that.
BUDGET_JS_GZIP = 6 * 1024
BUDGET_CSS_GZIP = 2 * 1024
HOSTILE = '<script>window.pwned=1</script><img src=x onerror="window.pwned=1">'


class Forms(HTMLParser):
    """The forms of a page: action, hidden fields, checkboxes and submit buttons."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self._button: dict[str, str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append({"action": a["action"], "method": a["method"], "fields": []})
            self.forms[-1].update(checkboxes=[], buttons=[])
        elif tag == "input" and a.get("type") == "hidden":
            self.forms[-1]["fields"].append((a["name"], a["value"]))
        elif tag == "input" and a.get("type") == "checkbox":
            box = (a["value"], "checked" in a, "disabled" in a)
            self.forms[-1]["checkboxes"].append(box)
        elif tag == "button":
            self._button = {"type": a.get("type", ""), "class": a.get("class", ""), "text": ""}

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button["text"] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "button" and self._button is not None:
            self.forms[-1]["buttons"].append(self._button)
            self._button = None


def forms_of(page: str) -> list[dict[str, Any]]:
    parser = Forms()
    parser.feed(page)
    return parser.forms


def form_with(forms: list[dict[str, Any]], text: str) -> dict[str, Any]:
    (form,) = [f for f in forms if any(b["text"] == text for b in f["buttons"])]
    return form


async def page(request: Request) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html><body>{banner_tags(request)}</body></html>")


def banner_app(**options: Any) -> TestClient:
    return TestClient(make_app(routes=[Route("/page", page)], **options), follow_redirects=False)


def test_script_and_style_sheet_are_served_with_types_and_validators() -> None:
    client = banner_app()
    for path, media_type in (
        ("/consent/banner.js", "text/javascript; charset=utf-8"),
        ("/consent/banner.css", "text/css; charset=utf-8"),
    ):
        zipped = client.get(path, headers={"accept-encoding": "gzip"})
        assert zipped.status_code == 200 and zipped.headers["content-type"] == media_type
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["cache-control"] == "no-cache"  # unversioned: revalidate
        assert zipped.headers["vary"] == "Accept-Encoding"
        assert "set-cookie" not in zipped.headers
        plain = client.get(path, headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.content == zipped.content
        assert plain.headers["etag"] != zipped.headers["etag"]
        for response in (plain, zipped):
            etag = response.headers["etag"]
            again = client.get(
                path, headers={"if-none-match": f"W/{etag}", **response.request.headers}
            )
            assert again.status_code == 304 and again.content == b""
            assert again.headers["etag"] == etag
        head = client.head(path, headers={"accept-encoding": "identity"})
        assert head.content == b"" and int(head.headers["content-length"]) == len(plain.content)
        assert client.post(path, headers=ORIGIN).status_code == 405


@pytest.mark.parametrize(
    ("accept_encoding", "zipped"),
    [
        ("gzip, deflate, br", True),
        ("br;q=1.0, gzip;q=0.5", True),
        ("*", True),
        ("gzip;q=0", False),
        ("*;q=0.5, gzip;q=0", False),
        ("gzip;q=0.000, *", False),
        ("identity", False),
        ("gzip;q=nan-ish", False),
        ("", False),
    ],
)
def test_gzip_only_when_accepted(accept_encoding: str, zipped: bool) -> None:
    response = banner_app().get("/consent/banner.css", headers={"accept-encoding": accept_encoding})
    assert response.status_code == 200
    assert (response.headers.get("content-encoding") == "gzip") is zipped


def test_versioned_urls_from_banner_tags_are_immutable() -> None:
    client = banner_app()
    tags = client.get("/page").text
    urls = re.findall(r'(?:href|src)="(/consent/banner\.(?:js|css)\?v=[0-9a-f]{16})"', tags)
    assert len(urls) == 2
    for url in urls:
        assert client.get(url).headers["cache-control"] == "public, max-age=31536000, immutable"
    stale = client.get("/consent/banner.js?v=0000000000000000")
    assert stale.headers["cache-control"] == "no-cache"


def test_gzipped_size_is_within_budget() -> None:
    client = banner_app(contact="Complaint Consultation Office, info@example.com")
    gz = {"accept-encoding": "gzip"}
    js = client.get("/consent/banner.js", headers=gz)
    css = client.get("/consent/banner.css", headers=gz)
    js_bytes, css_bytes = int(js.headers["content-length"]), int(css.headers["content-length"])
    assert js_bytes < BUDGET_JS_GZIP, js_bytes
    assert css_bytes < BUDGET_CSS_GZIP, css_bytes
    # The header counts the bytes on the wire: compare with compressing the plain body here.
    plain = client.get("/consent/banner.js", headers={"accept-encoding": "identity"}).content
    assert js_bytes <= len(gzip.compress(plain, compresslevel=9)) < len(plain)


def test_assets_make_no_external_requests() -> None:
    client = banner_app()
    js = client.get("/consent/banner.js").text
    css = client.get("/consent/banner.css").text
    for text in (js, css):
        assert not re.search(r"https?:|//[a-z0-9.-]+\.[a-z]{2,}/", text, re.IGNORECASE)
    assert "url(" not in css and "@import" not in css
    assert "import(" not in js and "XMLHttpRequest" not in js and "sendBeacon" not in js


def test_script_carries_texts_purposes_config_and_contact() -> None:
    client = banner_app(contact="Office\nTEL 06-0000-0000")
    js = client.get("/consent/banner.js").text
    assert '"gpc":["marketing","third_party"]' in js
    assert '"prefix":"/consent"' in js
    assert '"contact":"Office\\nTEL 06-0000-0000"' in js
    for lang in SUPPORTED_LANGUAGES:
        assert TEXTS[lang]["accept_all"] in js and TEXTS[lang]["reject_all"] in js
    # Accept and reject share one element type and one class: equally prominent.
    assert 'button("all", t.accept_all)' in js and 'button("none", t.reject_all)' in js


def test_assets_and_settings_page_are_not_recorded(tmp_path: Path) -> None:
    with TestClient(make_app(raw_dir=tmp_path)) as client:
        client.get("/consent/banner.js")
        client.get("/consent/banner.css")
        client.get("/consent/settings")
        client.get("/")  # one real page, so an empty RAW store is not a vacuous pass
    rows = duckdb.execute(
        f"SELECT path FROM read_parquet('{tmp_path}/events/date=*/*.parquet')"
    ).fetchall()
    assert rows == [("/",)]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, "en"),
        ("", "en"),
        ("ja", "ja"),
        ("ja-JP,ja;q=0.9,en-US;q=0.8", "ja"),
        ("en-US,en;q=0.9,ja;q=0.8", "en"),
        ("fr-FR,ja;q=0.5,en;q=0.4", "ja"),
        ("ja;q=0, en;q=0.1", "en"),
        ("ja;q=abc,en;q=0.2", "en"),
        ("de,fr", "en"),
        ("JA-jp", "ja"),
    ],
)
def test_language_negotiation(header: str | None, expected: str) -> None:
    assert negotiate_language(header) == expected


@settings(deadline=None)  # no wall-clock limits in tests
@given(st.text(max_size=300))
def test_language_negotiation_never_fails(header: str) -> None:
    assert negotiate_language(header) in SUPPORTED_LANGUAGES


def test_settings_page_language_from_header_and_query() -> None:
    client = banner_app()
    ja = client.get("/consent/settings", headers={"accept-language": "ja-JP,ja;q=0.9"})
    assert '<html lang="ja">' in ja.text and TEXTS["ja"]["settings_title"] in ja.text
    assert "マーケティング" in ja.text  # the registry's Japanese label
    en = client.get("/consent/settings?lang=en", headers={"accept-language": "ja"})
    assert '<html lang="en">' in en.text and "Marketing" in en.text
    assert '<html lang="en">' in client.get("/consent/settings?lang=xx").text


def test_settings_page_headers_and_no_script() -> None:
    response = banner_app().get("/consent/settings")
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    assert response.headers["cache-control"] == "no-store"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "<script" not in response.text
    assert banner_app().post("/consent/settings", headers=ORIGIN).status_code == 405


def test_hostile_labels_and_contact_are_inert() -> None:
    evil = Purpose(
        "evil",
        labels={"en": HOSTILE, "ja": HOSTILE},
        descriptions={"en": HOSTILE},
        code="e",
    )
    client = banner_app(purposes=[*DEFAULT_PURPOSES, evil], contact=HOSTILE)
    settings = client.get("/consent/settings").text
    assert "<script" not in settings and "<img" not in settings
    assert (
        settings.count("&lt;script&gt;window.pwned=1&lt;/script&gt;") == 3
    )  # label, text, contact
    noscript = client.get("/page").text
    assert "<img" not in noscript and "window.pwned=1</script>" not in noscript
    js = client.get("/consent/banner.js").text  # the contact is inlined as escaped JSON
    assert "<script" not in js and "\\u003cscript\\u003e" in js


def test_settings_form_post_sets_the_cookie_and_get_consent_shows_it() -> None:
    client = banner_app()
    first = client.get("/consent/settings?next=/products/3", headers={"accept-language": "en"})
    forms = forms_of(first.text)
    save = form_with(forms, TEXTS["en"]["save"])
    assert save["action"] == "/consent" and save["method"] == "post"
    assert ("necessary", True, True) in save["checkboxes"]  # locked on
    assert ("marketing", False, False) in save["checkboxes"]
    data = [*save["fields"], ("purposes", "statistics")]
    posted = client.post("/consent", content=urlencode(data), headers=_form_headers())
    assert posted.status_code == 303 and "consent=" in posted.headers["set-cookie"]
    state = client.get("/consent").json()
    assert state["purposes"] == {
        "necessary": True,
        "statistics": True,
        "marketing": False,
        "third_party": False,
    }
    # Back on the settings page: saved, the receipt id, and a way back to the product page.
    after = client.get(posted.headers["location"])
    assert TEXTS["en"]["saved"] in after.text and state["receipt_id"] in after.text
    assert '<a href="/products/3">' in after.text
    assert ("statistics", True, False) in form_with(forms_of(after.text), "Save choices")[
        "checkboxes"
    ]


def test_accept_and_reject_forms_are_equal_and_work() -> None:
    client = banner_app()
    forms = forms_of(client.get("/consent/settings").text)
    accept, reject = form_with(forms, "Accept all"), form_with(forms, "Reject all")
    assert accept["buttons"][0]["class"] == reject["buttons"][0]["class"] == "cb-btn"
    assert accept["buttons"][0]["type"] == reject["buttons"][0]["type"] == "submit"
    client.post("/consent", content=urlencode(accept["fields"]), headers=_form_headers())
    assert all(client.get("/consent").json()["purposes"].values())
    client.post("/consent", content=urlencode(reject["fields"]), headers=_form_headers())
    purposes = client.get("/consent").json()["purposes"]
    assert purposes == {
        "necessary": True,
        "statistics": False,
        "marketing": False,
        "third_party": False,
    }


def test_gpc_note_and_accept_all_leaves_sale_and_sharing_off() -> None:
    client = banner_app()
    gpc = {"sec-gpc": "1"}
    page = client.get("/consent/settings", headers=gpc).text
    assert 'class="cb-gpc"' in page and "Marketing, Third parties" in page
    accept = form_with(forms_of(page), "Accept all")
    client.post("/consent", content=urlencode(accept["fields"]), headers={**_form_headers(), **gpc})
    purposes = client.get("/consent", headers=gpc).json()["purposes"]
    assert purposes == {
        "necessary": True,
        "statistics": True,
        "marketing": False,
        "third_party": False,
    }
    assert 'class="cb-gpc"' not in client.get("/consent/settings").text


def test_receipt_id_shown_after_a_decision() -> None:
    client = banner_app()
    assert "Receipt id" not in client.get("/consent/settings").text
    receipt = client.post("/consent", json={"accept": "all", "source": "banner"}).json()
    page = client.get("/consent/settings").text
    assert f"<code>{receipt['receipt_id']}</code>" in page


def test_unsafe_next_falls_back_to_the_home_page() -> None:
    client = banner_app()
    for target in ("//evil.example/", "https://evil.example/", "/\\evil", "/a\nb"):
        page = client.get("/consent/settings", params={"next": target}).text
        assert '<a href="/">' in page and "evil" not in page


SETTINGS_CLIENT = banner_app()


@settings(deadline=None, max_examples=60)
@given(st.text(max_size=200) | st.text(max_size=900).map(lambda t: "/" + t))
@example("/" + "é" * 499)
def test_settings_page_back_link_is_always_a_local_path(target: str) -> None:
    page = SETTINGS_CLIENT.get("/consent/settings", params={"next": target})
    assert page.status_code == 200
    (back,) = re.findall(r'<p><a href="([^"]*)">Back to the site</a>', page.text)
    assert back.startswith("/") and not back.startswith("//") and "\\" not in back
    for form in forms_of(page.text):
        (next_path,) = [v for k, v in form["fields"] if k == "next"]
        assert next_path.startswith("/consent/settings?")
    # The page's own forms are always accepted by the endpoint.
    reject = form_with(forms_of(page.text), "Reject all")
    posted = SETTINGS_CLIENT.post(
        "/consent", content=urlencode(reject["fields"]), headers=_form_headers()
    )
    assert posted.status_code == 303


def test_noscript_fallback_only_until_a_decision() -> None:
    client = banner_app()
    first = client.get("/page").text
    assert "<noscript>" in first
    forms = forms_of(first)
    assert {f["action"] for f in forms} == {"/consent"}
    assert ("next", "/page") in form_with(forms, "Reject all")["fields"]
    client.post("/consent", json={"accept": "necessary"})
    later = client.get("/page").text
    assert "<noscript>" not in later and "/consent/banner.js?v=" in later


def test_banner_tags_needs_the_middleware() -> None:
    with pytest.raises(RuntimeError, match="ConsentMiddleware"):
        banner_tags({"type": "http", "path": "/"})


def test_examples_include_the_banner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CONSENT_RAW_DIR", str(tmp_path))
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))  # examples/
    for module in ("examples.shop_app", "examples.fastapi_app"):
        example = importlib.reload(importlib.import_module(module))
        with TestClient(example.app) as client:
            html = client.get("/", headers={"accept": "text/html", "accept-language": "ja"})
            assert '<html lang="ja">' in html.text
            assert "/consent/banner.js?v=" in html.text and "/consent/banner.css?v=" in html.text
            assert "data-consent-settings" in html.text and "クッキー設定" in html.text
            assert client.get("/consent/banner.js").status_code == 200


def _form_headers() -> dict[str, str]:
    return {"content-type": "application/x-www-form-urlencoded", **ORIGIN}


def test_custom_prefix_moves_every_banner_route() -> None:
    client = banner_app(prefix="/privacy/consent")
    assert client.get("/consent/banner.js").status_code == 404  # the app's, not the banner's
    assert '"prefix":"/privacy/consent"' in client.get("/privacy/consent/banner.js").text
    page = client.get("/privacy/consent/settings").text
    assert {f["action"] for f in forms_of(page)} == {"/privacy/consent"}
    assert "/privacy/consent/banner.css?v=" in client.get("/page").text
