"""The consent banner: its script and style sheet, the tags a page includes, and a settings
page that works without JavaScript (design section 6, policy sections 4, 12 and 13).

Served by :class:`~consent_middleware.middleware.ConsentMiddleware` under its ``prefix``:

- ``{prefix}/banner.js`` and ``{prefix}/banner.css``: static, gzip when the browser accepts
  it, an ``ETag`` for revalidation; with ``?v=<version>`` (what :func:`banner_tags` links)
  they are cacheable for a year, as the version changes with the content.
- ``{prefix}/settings``: an HTML page with plain forms that post to ``{prefix}`` (the
  endpoint's form support), in English or Japanese (``?lang=`` or ``Accept-Language``).

Every text a visitor sees comes from ``static/texts.json`` (the banner's own wording) and
the purpose registry (labels and descriptions); all of it is escaped, never parsed as HTML.
"""

from __future__ import annotations

import gzip
import hashlib
import html
import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.types import Receive, Scope, Send

from consent_middleware.enforcement import get_consent
from consent_middleware.purposes import PurposeRegistry
from consent_middleware.resolve import ConsentConfig, ConsentContext
from consent_middleware.state import ConsentState

BANNER_SCOPE_KEY = "consent.banner"
"""Where the middleware puts its :class:`Banner` in the ASGI scope (for :func:`banner_tags`)."""

SUPPORTED_LANGUAGES = ("en", "ja")
"""Languages of the banner's texts; the first is the fallback."""

_STATIC = resources.files("consent_middleware") / "static"
TEXTS: Mapping[str, Mapping[str, str]] = json.loads(
    (_STATIC / "texts.json").read_text(encoding="utf-8")
)
"""The banner's wording, ``TEXTS[lang][key]``, for every language in SUPPORTED_LANGUAGES."""

_CONFIG_MARK = "/*@config*/ {}"  # replaced in banner.js by the server's configuration
_IMMUTABLE = "public, max-age=31536000, immutable"  # a versioned URL never changes content
_REVALIDATE = "no-cache"  # an unversioned URL may be cached, but is checked with its ETag
_PAGE_CSP = (
    "default-src 'none'; style-src 'self'; form-action 'self'; base-uri 'none'; "
    "frame-ancestors 'none'"
)


def negotiate_language(accept_language: str | None) -> str:
    """The supported language the visitor prefers most, from an ``Accept-Language`` value.

    Only primary subtags count (``ja-JP`` is ``ja``); ``q=0`` means "not this one"; ties keep
    the header's order; anything unparsable is skipped; the fallback is English.
    """
    best, best_q = SUPPORTED_LANGUAGES[0], 0.0
    for item in (accept_language or "")[:1000].split(","):
        tag, _, params = item.partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in SUPPORTED_LANGUAGES:
            continue
        q = 1.0
        name, _, value = params.strip().partition("=")
        if name.strip().lower() == "q":
            try:
                q = float(value)
            except ValueError:
                continue
            if not 0.0 <= q <= 1.0:  # also rejects nan
                continue
        if q > best_q:
            best, best_q = primary, q
    return best


@dataclass(frozen=True, slots=True)
class StaticAsset:
    """One file the banner serves: its bytes, their gzip form and a content version."""

    media_type: str
    body: bytes
    gzipped: bytes
    version: str  # 16 hex digits of SHA-256 of the body

    @classmethod
    def of(cls, body: bytes, media_type: str) -> StaticAsset:
        """The asset for ``body``, compressed once (``mtime=0``: the same bytes every time)."""
        version = hashlib.sha256(body).hexdigest()[:16]
        return cls(media_type, body, gzip.compress(body, compresslevel=9, mtime=0), version)

    def respond(self, scope: Scope) -> Response:
        """The answer to a GET or HEAD of this asset: 200 or 304, gzip when accepted."""
        headers = Headers(scope=scope)
        zipped = _accepts_gzip(headers.get("accept-encoding", ""))
        etag = f'"{self.version}-gz"' if zipped else f'"{self.version}"'
        versioned = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("v")
        response_headers = {
            "etag": etag,
            "cache-control": _IMMUTABLE if versioned == [self.version] else _REVALIDATE,
            "vary": "Accept-Encoding",
            "x-content-type-options": "nosniff",
        }
        if _etag_matches(headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=response_headers)
        body = self.gzipped if zipped else self.body
        if zipped:
            response_headers["content-encoding"] = "gzip"
        if scope["method"] == "HEAD":
            response_headers["content-length"] = str(len(body))
            body = b""
        return Response(body, media_type=self.media_type, headers=response_headers)


def _accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` allows gzip: an explicit ``gzip`` entry wins over ``*``."""
    weights: dict[str, float] = {}
    for item in accept_encoding[:1000].split(","):
        coding, _, params = item.partition(";")
        name, _, value = params.strip().partition("=")
        try:
            q = float(value) if name.strip().lower() == "q" else 1.0
        except ValueError:
            continue
        weights.setdefault(coding.strip().lower(), q)
    return weights.get("gzip", weights.get("*", 0.0)) > 0.0


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    if if_none_match is None:
        return False
    candidates = {c.strip().removeprefix("W/") for c in if_none_match.split(",")}
    return "*" in candidates or etag in candidates


def _script_json(value: object) -> str:
    """JSON to embed in a script: no ``</script>``, no line separators older engines reject."""
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _local_path(target: str | None, default: str = "/") -> str:
    """``target`` when it is a path on this site (the endpoint's ``next`` rule), else default."""
    if (
        not target
        or not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target)
        # Percent-encoded inside the settings page's own URL it must stay under the
        # endpoint's 2000-character limit for ``next``.
        or len(quote(target, safe="")) > 1500
    ):
        return default
    return target


class Banner:
    """Serves the banner's assets and the no-JavaScript settings page under ``prefix``.

    ``contact`` is the contact point shown to visitors (policy section 13): free text such
    as an office name, e-mail address and telephone number; line breaks are kept.
    """

    def __init__(self, config: ConsentConfig, *, prefix: str, contact: str = "") -> None:
        self.registry: PurposeRegistry = config.registry
        self.prefix = prefix
        self.contact = contact
        self.settings_path = f"{prefix}/settings"
        static_config = {
            "prefix": prefix,
            "contact": contact,
            "gpc": [p.name for p in self.registry if p.gpc],
            "texts": TEXTS,
        }
        script = (_STATIC / "banner.js").read_text(encoding="utf-8")
        if _CONFIG_MARK not in script:
            raise RuntimeError("banner.js lost its configuration mark; reinstall the package")
        script = script.replace(_CONFIG_MARK, _script_json(static_config), 1)
        self.script = StaticAsset.of(script.encode("utf-8"), "text/javascript")
        self.style = StaticAsset.of((_STATIC / "banner.css").read_bytes(), "text/css")
        self._assets = {f"{prefix}/banner.js": self.script, f"{prefix}/banner.css": self.style}

    def serves_asset(self, path: str) -> bool:
        """Whether ``path`` is the banner's script or style sheet."""
        return path in self._assets

    def handles(self, path: str) -> bool:
        """Whether ``path`` is the settings page."""
        return path == self.settings_path

    async def asset(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request for the script or the style sheet (no cookie is read or set)."""
        if scope["method"] not in ("GET", "HEAD"):
            response: Response = PlainTextResponse(
                "method not allowed", status_code=405, headers={"allow": "GET, HEAD"}
            )
        else:
            response = self._assets[scope["path"]].respond(scope)
        await response(scope, receive, send)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, ctx: ConsentContext
    ) -> None:
        """Answer a request for the settings page with the visitor's current state."""
        if scope["method"] not in ("GET", "HEAD"):
            response: Response = PlainTextResponse(
                "method not allowed", status_code=405, headers={"allow": "GET, HEAD"}
            )
        else:
            query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
            asked = query.get("lang", [""])[-1]
            lang = asked if asked in SUPPORTED_LANGUAGES else _header_language(scope)
            back = _local_path(query.get("next", ["/"])[-1])
            page = self.settings_page(ctx.state, lang=lang, back=back, saved="saved" in query)
            response = HTMLResponse(page)
            response.headers["content-security-policy"] = _PAGE_CSP
            response.headers["x-content-type-options"] = "nosniff"
        response.headers["cache-control"] = "no-store"  # shows this visitor's receipt id
        if ctx.set_cookie is not None:
            response.raw_headers.append((b"set-cookie", ctx.set_cookie.encode("latin-1")))
        await response(scope, receive, send)

    def tags(
        self, state: ConsentState, *, lang: str = "en", path: str = "/", nonce: str | None = None
    ) -> str:
        """The ``<link>`` and ``<script>`` tags for a page, plus a ``<noscript>`` notice with
        accept / reject forms while the visitor has not decided (``path`` is where the forms
        return to)."""
        nonce_attr = f' nonce="{html.escape(nonce, quote=True)}"' if nonce else ""
        css = f"{self.prefix}/banner.css?v={self.style.version}"
        js = f"{self.prefix}/banner.js?v={self.script.version}"
        tags = (
            f'<link rel="stylesheet" href="{css}"{nonce_attr}>'
            f'<script src="{js}" defer{nonce_attr}></script>'
        )
        if not state.needs_prompt:
            return tags
        lang = lang if lang in SUPPORTED_LANGUAGES else SUPPORTED_LANGUAGES[0]
        t, e = TEXTS[lang], html.escape
        back = _local_path(quote(path, safe="/-._~!$&'()*+,;=:@%"))
        settings = f"{self.settings_path}?{urlencode({'lang': lang, 'next': back})}"
        return (
            f'{tags}<noscript><div class="cb" role="region" aria-label="{e(t["title"])}" '
            f'lang="{lang}"><p>{e(t["intro"])}</p>{self._gpc_note(state, lang)}'
            f"{self._choice_forms(state, lang, back)}"
            f'<p><a href="{e(settings)}">{e(t["settings_title"])}</a></p></div></noscript>'
        )

    def settings_page(
        self, state: ConsentState, *, lang: str, back: str = "/", saved: bool = False
    ) -> str:
        """The settings page: current choice, receipt id, contact and forms for every choice."""
        t, e = TEXTS[lang], html.escape
        here = f"{self.settings_path}?{urlencode({'lang': lang, 'saved': '1', 'next': back})}"
        if saved:
            status = t["saved"]
        elif state.decided_at is None or state.needs_prompt:
            status = t["no_decision"]
        else:
            status = f"{t['decided_at']}: {state.decided_at:%Y-%m-%d %H:%M} UTC"
        receipt = (
            f'<p class="cb-receipt">{e(t["receipt"])}: <code>{e(state.receipt_id)}</code> '
            f"{e(t['receipt_help'])}</p>"
            if state.receipt_id
            else ""
        )
        contact = (
            f'<p class="cb-contact">{e(t["contact"])}: {e(self.contact)}</p>'
            if self.contact
            else ""
        )
        rows = "".join(self._purpose_row(name, on, lang) for name, on in state.purposes.items())
        return (
            f'<!doctype html><html lang="{lang}"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{e(t['settings_title'])}</title>"
            f'<link rel="stylesheet" href="{self.prefix}/banner.css?v={self.style.version}">'
            f'</head><body class="cb-page"><main class="cb" aria-labelledby="cb-title">'
            f'<h1 id="cb-title" class="cb-title">{e(t["settings_title"])}</h1>'
            f"<p>{e(t['intro'])}</p>{self._gpc_note(state, lang)}"
            f'<p class="cb-status" role="status">{e(status)}</p>{receipt}{contact}'
            f"{self._choice_forms(state, lang, here)}"
            f'<form method="post" action="{self.prefix}" class="cb-purposes-form">'
            f'<input type="hidden" name="next" value="{e(here)}">'
            f'<fieldset class="cb-purposes"><legend>{e(t["purposes"])}</legend>{rows}'
            f'</fieldset><div class="cb-actions"><button type="submit" class="cb-btn">'
            f"{e(t['save'])}</button></div></form>"
            f'<p><a href="{e(back)}">{e(t["back"])}</a></p></main></body></html>'
        )

    def _purpose_row(self, name: str, on: bool, lang: str) -> str:
        e = html.escape
        purpose = self.registry[name]
        ident = f"cb-p-{name}"
        # A disabled checkbox is not submitted; the endpoint grants required purposes anyway.
        flags = (" checked" if on or purpose.required else "") + (
            " disabled" if purpose.required else ""
        )
        always = (
            f'<span class="cb-on">{e(TEXTS[lang]["always_on"])}</span>' if purpose.required else ""
        )
        description = purpose.description(lang)
        return (
            f'<div class="cb-purpose"><label for="{ident}"><input type="checkbox" role="switch" '
            f'id="{ident}" name="purposes" value="{name}"{flags}>'
            f'<span class="cb-label">{e(purpose.label(lang))}</span></label>{always}'
            + (f'<p class="cb-desc">{e(description)}</p>' if description else "")
            + "</div>"
        )

    def _gpc_note(self, state: ConsentState, lang: str) -> str:
        if not state.gpc:
            return ""
        separator = "、" if lang == "ja" else ", "
        labels = separator.join(p.label(lang) for p in self.registry if p.gpc)
        note = TEXTS[lang]["gpc_note"].replace("{purposes}", labels)
        return f'<p class="cb-gpc" role="note">{html.escape(note)}</p>'

    def _choice_forms(self, state: ConsentState, lang: str, next_path: str) -> str:
        """The "Accept all" and "Reject all" forms, with identical buttons.

        Under GPC, "Accept all" leaves the sale/sharing purposes off (like the script does);
        switching them on in the per-purpose form is the explicit choice that overrides it.
        """
        t, e = TEXTS[lang], html.escape
        if state.gpc:
            accept = "".join(
                f'<input type="hidden" name="purposes" value="{p.name}">'
                for p in self.registry
                if not p.gpc
            )
        else:
            accept = '<input type="hidden" name="accept" value="all">'
        hidden_next = f'<input type="hidden" name="next" value="{e(next_path)}">'
        return (
            '<div class="cb-actions">'
            f'<form method="post" action="{self.prefix}">{hidden_next}{accept}'
            f'<button type="submit" class="cb-btn">{e(t["accept_all"])}</button></form>'
            f'<form method="post" action="{self.prefix}">{hidden_next}'
            '<input type="hidden" name="accept" value="necessary">'
            f'<button type="submit" class="cb-btn">{e(t["reject_all"])}</button></form></div>'
        )


def _header_language(scope: Scope) -> str:
    return negotiate_language(Headers(scope=scope).get("accept-language"))


def banner_tags(
    request: HTTPConnection | MutableMapping[str, Any],
    *,
    lang: str | None = None,
    nonce: str | None = None,
) -> str:
    """The banner's tags for the page answering ``request`` (a Request or an ASGI scope).

    Put the result at the start of the page's ``<body>`` (the no-JavaScript fallback is a
    ``<noscript>`` block, which is not valid in ``<head>``). ``lang`` is the page's language
    (default: negotiated from ``Accept-Language``); ``nonce`` is the page's CSP nonce.
    Raises ``RuntimeError`` when ``ConsentMiddleware`` is not in front of the app.
    """
    scope = request.scope if isinstance(request, HTTPConnection) else request
    banner = scope.get(BANNER_SCOPE_KEY)
    if not isinstance(banner, Banner):
        raise RuntimeError("no consent banner in this request: add ConsentMiddleware to the app")
    if lang is None:
        lang = _header_language(scope)
    return banner.tags(get_consent(scope), lang=lang, path=scope.get("path", "/"), nonce=nonce)
