"""The consent banner in a real headless Chromium against the example shop under uvicorn:
what a visitor sees, what each choice does to the cookie and to recording, keyboard-only
use, GPC, Japanese, pages without JavaScript, and hostile purpose texts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import pytest
from browser_support import ROOT, WAIT_MS, Server, serve
from PIL import Image
from playwright.sync_api import Browser, BrowserContext, Page, expect

from consent_middleware.raw.layout import RawLayout

pytestmark = pytest.mark.slow

UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/156.0 Safari/537.36"
)
GPC_PROPERTY = (
    "Object.defineProperty(Navigator.prototype, 'globalPrivacyControl',"
    " {get: () => true, configurable: true});"
)
ACTIVE_IN_DIALOG = "!!document.querySelector('[role=dialog]')?.contains(document.activeElement)"


@contextmanager
def browse(browser: Browser, **options: Any) -> Iterator[tuple[BrowserContext, Page]]:
    """A fresh browser profile (no cookies) and one page in it."""
    context = browser.new_context(**options)
    context.set_default_timeout(WAIT_MS)
    try:
        yield context, context.new_page()
    finally:
        context.close()


def consent_of(context: BrowserContext, server: Server) -> dict[str, Any]:
    """GET /consent with this browser's cookies."""
    response = context.request.get(f"{server.url}/consent")
    assert response.ok
    state: dict[str, Any] = response.json()
    return state


def decide(page: Page, button: str) -> None:
    """Click a banner button and wait until the dialog is gone (the choice is saved)."""
    page.get_by_role("dialog").get_by_role("button", name=button, exact=True).click()
    expect(page.get_by_role("dialog")).to_have_count(0)


def active(page: Page) -> str:
    """The focused element's accessible text (button text, or the input's name)."""
    text: str = page.evaluate(
        "(() => { const e = document.activeElement;"
        " return e.getAttribute('name') || e.textContent.trim(); })()"
    )
    return text


def tab_to(page: Page, text: str, limit: int = 20) -> None:
    """Press Tab until ``text`` has the focus (at most ``limit`` times)."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        if active(page) == text:
            return
    raise AssertionError(f"Tab never reached {text!r}")


def events(raw: Path) -> list[dict[str, Any]]:
    glob = RawLayout.at(raw).events_glob()
    cursor = duckdb.execute(
        f"SELECT ts, path, aid, user_agent, purposes FROM read_parquet('{glob}') ORDER BY ts"
    )
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def ledger(raw: Path) -> list[dict[str, Any]]:
    lines = [
        line
        for path in sorted(RawLayout.at(raw).ledger.glob("*.jsonl"))
        for line in path.read_text().splitlines()
    ]
    return [json.loads(line) for line in lines if line.strip()]


def test_first_visit_shows_an_accessible_banner(
    chromium_browser: Browser, shared_shop: Server, artifacts: Path
) -> None:
    with browse(chromium_browser, viewport={"width": 1000, "height": 700}) as (context, page):
        page.goto(f"{shared_shop.url}/")
        dialog = page.get_by_role("dialog", name="Cookies and your privacy")
        expect(dialog).to_be_visible()
        expect(dialog).to_have_attribute("aria-modal", "true")
        expect(dialog).to_contain_text("withdraw your choice at any time")
        expect(dialog).to_contain_text("Purposes: Statistics, Marketing, Third parties")
        expect(dialog).to_contain_text("Contact: Complaint Consultation Office (example)")
        assert page.evaluate(ACTIVE_IN_DIALOG)
        accept = dialog.get_by_role("button", name="Accept all", exact=True)
        reject = dialog.get_by_role("button", name="Reject all", exact=True)
        style = "e => { const s = getComputedStyle(e); return [e.tagName, e.className,"
        style += " s.fontSize, s.fontWeight, s.backgroundColor, s.color, s.borderStyle]; }"
        assert accept.evaluate(style) == reject.evaluate(style)  # equally prominent
        a, r = accept.bounding_box(), reject.bounding_box()
        assert a is not None and r is not None
        assert (round(a["width"]), round(a["height"])) == (round(r["width"]), round(r["height"]))
        # The rest of the page is inert while the dialog is open.
        assert page.evaluate("document.querySelector('h1').closest('[inert]') !== null")
        shot = artifacts / "banner.png"
        page.screenshot(path=str(shot))
        with Image.open(shot) as image:
            colors = image.convert("RGB").getcolors(maxcolors=1_000_000)
        assert colors is not None and len(colors) > 50, "the screenshot looks blank"
        assert consent_of(context, shared_shop)["needs_prompt"] is True
        assert not [c for c in context.cookies() if c["name"] == "consent"]


def test_reject_keeps_analytics_off_and_accept_starts_recording(
    chromium_browser: Browser, shop: Server
) -> None:
    for choice in ("Reject all", "Accept all"):
        with browse(chromium_browser, user_agent=f"{UA} BannerTest/{choice}") as (context, page):
            page.goto(f"{shop.url}/")
            decide(page, choice)
            assert [c for c in context.cookies() if c["name"] == "consent"]
            assert consent_of(context, shop)["needs_prompt"] is False
            page.goto(f"{shop.url}/products/7")
            page.goto(f"{shop.url}/cart")
    shop.stop()  # graceful: the recorder flushes everything
    rows = events(shop.raw)
    rejected = [e for e in rows if e["user_agent"].endswith("BannerTest/Reject all")]
    accepted = [e for e in rows if e["user_agent"].endswith("BannerTest/Accept all")]
    assert [e["path"] for e in rejected] == ["/", "/products/{product_id}", "/cart"]
    assert all(e["aid"] is None and e["purposes"] == ["necessary"] for e in rejected)
    assert accepted[0]["path"] == "/" and accepted[0]["aid"] is None  # before the choice
    later = accepted[1:]
    assert {"/products/{product_id}", "/cart"} <= {e["path"] for e in later}
    assert len({e["aid"] for e in later}) == 1 and later[0]["aid"] is not None
    assert all("statistics" in e["purposes"] for e in later)
    banner = [(r["action"], r["source"], r["granted"]) for r in ledger(shop.raw)]
    assert banner == [
        ("grant", "banner", ["necessary"]),
        ("grant", "banner", ["necessary", "statistics", "marketing", "third_party"]),
    ]


def test_settings_change_is_reflected_by_get_consent(
    chromium_browser: Browser, shared_shop: Server
) -> None:
    with browse(chromium_browser) as (context, page):
        page.goto(f"{shared_shop.url}/cart")
        decide(page, "Accept all")
        receipt = consent_of(context, shared_shop)["receipt_id"]
        page.evaluate(
            "document.addEventListener('consent:change', e => { window.changed = e.detail; })"
        )
        page.get_by_role("link", name="Cookie settings").click()  # data-consent-settings
        dialog = page.get_by_role("dialog")
        expect(dialog).to_contain_text(receipt)  # the receipt id, to quote in requests
        marketing = dialog.get_by_role("switch", name="Marketing")
        expect(marketing).to_be_checked()
        expect(dialog.get_by_role("switch", name="Strictly necessary")).to_be_disabled()
        marketing.uncheck()
        decide(page, "Save choices")
        state = consent_of(context, shared_shop)
        assert state["purposes"] == {
            "necessary": True,
            "statistics": True,
            "marketing": False,
            "third_party": True,
        }
        assert state["receipt_id"] == receipt
        assert page.evaluate("window.changed.purposes.marketing") is False
        # Withdraw everything from the same link.
        page.get_by_role("link", name="Cookie settings").click()
        decide(page, "Reject all")
        assert sum(consent_of(context, shared_shop)["purposes"].values()) == 1


def test_keyboard_only(chromium_browser: Browser, shared_shop: Server) -> None:
    with browse(chromium_browser) as (context, page):
        page.goto(f"{shared_shop.url}/cart")
        expect(page.get_by_role("dialog")).to_be_visible()
        cycle = []
        for _ in range(7):  # three buttons: Tab goes round twice and stays in the dialog
            page.keyboard.press("Tab")
            assert page.evaluate(ACTIVE_IN_DIALOG)
            cycle.append(active(page))
        assert cycle == ["Accept all", "Reject all", "Settings"] * 2 + ["Accept all"]
        page.keyboard.press("Shift+Tab")
        assert active(page) == "Settings"  # backwards from the first wraps to the last
        outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
        assert outline == "solid"  # visible focus
        page.keyboard.press("Enter")
        assert active(page) == "statistics"  # the settings open on the first switch
        page.keyboard.press("Space")
        tab_to(page, "Save choices")
        page.keyboard.press("Enter")
        expect(page.get_by_role("dialog")).to_have_count(0)
        state = consent_of(context, shared_shop)
        assert state["purposes"]["statistics"] is True
        assert state["purposes"]["marketing"] is False


def test_escape_closes_without_granting_and_returns_focus(
    chromium_browser: Browser, shared_shop: Server
) -> None:
    with browse(chromium_browser) as (context, page):
        page.goto(f"{shared_shop.url}/cart")
        expect(page.get_by_role("dialog")).to_be_visible()
        page.keyboard.press("Escape")
        expect(page.get_by_role("dialog")).to_have_count(0)
        state = consent_of(context, shared_shop)
        assert state["needs_prompt"] is True and sum(state["purposes"].values()) == 1
        assert not [c for c in context.cookies() if c["name"] == "consent"]
        tab_to(page, "Cookie settings")  # the link reopens the settings from the keyboard
        page.keyboard.press("Enter")
        expect(page.get_by_role("dialog")).to_be_visible()
        page.keyboard.press("Escape")
        assert active(page) == "Cookie settings"


@pytest.mark.parametrize("signal", ["property", "property and header"])
def test_gpc_refuses_sale_and_sharing(
    chromium_browser: Browser, shared_shop: Server, signal: str
) -> None:
    headers = {"Sec-GPC": "1"} if "header" in signal else {}
    with browse(chromium_browser, extra_http_headers=headers) as (context, page):
        context.add_init_script(GPC_PROPERTY)
        page.goto(f"{shared_shop.url}/cart")
        dialog = page.get_by_role("dialog")
        expect(dialog.get_by_role("note")).to_contain_text("Global Privacy Control")
        expect(dialog.get_by_role("note")).to_contain_text("Marketing, Third parties")
        decide(page, "Accept all")
        purposes = consent_of(context, shared_shop)["purposes"]
        assert purposes == {
            "necessary": True,
            "statistics": True,
            "marketing": False,
            "third_party": False,
        }
        # Switching marketing on in the settings is an explicit choice that overrides GPC.
        page.get_by_role("link", name="Cookie settings").click()
        expect(dialog.get_by_role("switch", name="Marketing")).not_to_be_checked()
        dialog.get_by_role("switch", name="Marketing").check()
        decide(page, "Save choices")
        page.reload()
        assert consent_of(context, shared_shop)["purposes"]["marketing"] is True


def test_japanese_page_shows_japanese_text(
    chromium_browser: Browser, shared_shop: Server, artifacts: Path
) -> None:
    with browse(chromium_browser, locale="ja-JP") as (_, page):
        page.goto(f"{shared_shop.url}/")
        assert page.get_attribute("html", "lang") == "ja"
        dialog = page.get_by_role("dialog", name="クッキーとプライバシー")
        expect(dialog.get_by_role("button", name="すべて同意する")).to_be_visible()
        expect(dialog.get_by_role("button", name="すべて拒否する")).to_be_visible()
        dialog.get_by_role("button", name="設定").click()
        expect(
            page.get_by_role("dialog").get_by_role("switch", name="マーケティング")
        ).to_be_visible()
        page.screenshot(path=str(artifacts / "banner-ja.png"))


def test_without_javascript_the_forms_work(
    chromium_browser: Browser, shared_shop: Server, artifacts: Path
) -> None:
    with browse(chromium_browser, java_script_enabled=False) as (context, page):
        page.goto(f"{shared_shop.url}/products/3")
        page.get_by_role("button", name="Reject all").click()
        page.wait_for_url(f"{shared_shop.url}/products/3")
        assert consent_of(context, shared_shop)["needs_prompt"] is False
        page.get_by_role("link", name="Cookie settings").click()
        page.get_by_role("switch", name="Statistics").check()
        page.get_by_role("button", name="Save choices").click()
        expect(page.get_by_role("status")).to_have_text("Your choice has been saved.")
        page.screenshot(path=str(artifacts / "banner-settings-nojs.png"), full_page=True)
        assert consent_of(context, shared_shop)["purposes"]["statistics"] is True
        page.get_by_role("link", name="Back to the site").click()
        page.wait_for_url(f"{shared_shop.url}/products/3")


def test_hostile_purpose_texts_are_shown_as_text(chromium_browser: Browser, tmp_path: Path) -> None:
    with (
        serve("hostile_app:app", tmp_path, app_dir=ROOT / "tests" / "browser") as server,
        browse(chromium_browser) as (_, page),
    ):
        page.goto(f"{server.url}/")
        dialog = page.get_by_role("dialog")
        dialog.get_by_role("button", name="Settings").click()
        expect(dialog.get_by_role("switch", name="window.pwned=1", exact=False)).to_be_visible()
        assert dialog.locator("script, img").count() == 0
        assert "<script>window.pwned=1</script>" in dialog.inner_text()
        assert page.evaluate("window.pwned") is None
