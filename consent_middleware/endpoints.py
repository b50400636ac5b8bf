"""The middleware's own endpoints: ``{prefix}`` (GET, POST, DELETE) and
``/.well-known/gpc.json``.

Same-origin rule for POST and DELETE (state changes):

1. an ``Origin`` header must name this site (``null`` never does);
2. without ``Origin``, a ``Referer`` header must point into this site;
3. without both, POST is accepted only with ``Content-Type: application/json`` (a page on
   another site cannot send that without a CORS preflight, which this endpoint never
   grants) and DELETE is accepted (no cross-site form or simple request can use DELETE).

Everything a visitor sends gets a clear answer: 400 with a ``reason`` for malformed JSON,
unknown purposes, wrong types or a body over 8 KiB (read incrementally, stopped early),
403 for another origin, 405 for other methods, 415 for other content types.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.types import Receive, Scope, Send

from consent_middleware.cookies import cookie_values
from consent_middleware.decision import Decision, DecisionSource
from consent_middleware.resolve import ConsentConfig, ConsentContext, apply_choice
from consent_middleware.state import ConsentState

MAX_BODY_BYTES = 8 * 1024  # 8 KiB: a consent choice is a few dozen bytes
GPC_PATH = "/.well-known/gpc.json"
_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


class BadChoice(Exception):
    """A request to change consent that cannot be honoured; ``status`` and ``reason`` say why."""

    def __init__(self, reason: str, status: int = 400) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status


def _origin(scheme: str, netloc: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) with the default port filled in, or None when unparsable."""
    try:
        parts = urlsplit(f"{scheme}://{netloc}")
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host:
        return None
    return scheme, host.lower(), port or _DEFAULT_PORTS.get(scheme, 0)


def _url_origin(url: str) -> tuple[str, str, int] | None:
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.netloc:
        return None
    return _origin(scheme, parts.netloc)


def state_body(config: ConsentConfig, state: ConsentState) -> dict[str, Any]:
    """The JSON answer of ``GET {prefix}``: the state plus what a banner needs to show."""
    return {
        "purposes": dict(state.purposes),
        "policy_version": state.policy_version,
        "needs_prompt": state.needs_prompt,
        "gpc": state.gpc,
        "receipt_id": state.receipt_id,
        "mode": config.mode,
        "decided_at": state.decided_at.isoformat() if state.decided_at else None,
        "notice_hash": config.notice_hash,
        "available": [p.as_json() for p in config.registry],
    }


class ConsentEndpoints:
    """Serves ``{prefix}`` and ``/.well-known/gpc.json`` for :class:`ConsentMiddleware`."""

    def __init__(
        self,
        config: ConsentConfig,
        *,
        prefix: str,
        cookie_purposes: Mapping[str, str],
        emit: Callable[[Decision], None],
        refused: Callable[[str], None],
        gpc_last_update: str,
        trusted_origins: Iterable[str] = (),
        on_new_aid: Callable[[str, str], Awaitable[None]] | None = None,
    ) -> None:
        self.config = config
        # Called with (receipt_id, aid) before the answer of a decision that carries an
        # anonymous id, so that a postal request quoting the receipt can find its events.
        self.on_new_aid = on_new_aid
        self.prefix = prefix
        self.cookie_purposes = dict(cookie_purposes)
        self.emit = emit
        self.refused = refused
        self.gpc_last_update = gpc_last_update
        self.trusted = {o for o in map(_url_origin, trusted_origins) if o is not None}

    def handles(self, path: str) -> bool:
        """Whether ``path`` is one of these endpoints."""
        return path in (self.prefix, self.prefix + "/", GPC_PATH)

    async def __call__(
        self, scope: Scope, receive: Receive, send: Send, ctx: ConsentContext
    ) -> None:
        response = await self._respond(scope, receive, ctx)
        payload = ctx.payload
        if self.on_new_aid is not None and ctx.decisions and payload and payload.aid:
            await self.on_new_aid(payload.receipt_id, payload.aid)
        response.headers["cache-control"] = "no-store"
        # Answers carry visitor data: never let a browser sniff them into another type.
        response.headers["x-content-type-options"] = "nosniff"
        if ctx.set_cookie is not None:
            response.raw_headers.append((b"set-cookie", ctx.set_cookie.encode("latin-1")))
        for decision in ctx.decisions:
            self.emit(decision)
        await response(scope, receive, send)

    async def _respond(self, scope: Scope, receive: Receive, ctx: ConsentContext) -> Response:
        method = scope["method"]
        if scope["path"] == GPC_PATH:
            if method not in ("GET", "HEAD"):
                return _error(405, "method not allowed", allow="GET, HEAD")
            return JSONResponse({"gpc": True, "lastUpdate": self.gpc_last_update})
        if method in ("GET", "HEAD"):
            return JSONResponse(state_body(self.config, ctx.state))
        if method not in ("POST", "DELETE"):
            return _error(405, "method not allowed", allow="GET, HEAD, POST, DELETE")
        headers = Headers(scope=scope)
        try:
            self.check_origin(scope, headers, method)
            if method == "DELETE":
                return self._decide(
                    scope, headers, ctx, self.config.registry.only_required(), "api"
                )
            body = await _read_body(receive, headers)
            content_type = headers.get("content-type", "").split(";")[0].strip().lower()
            if content_type == "application/json":
                purposes, source = self._parse_json(body, ctx.state)
                return self._decide(scope, headers, ctx, purposes, source)
            if content_type == "application/x-www-form-urlencoded":
                purposes, target = self._parse_form(body)
                self._decide(scope, headers, ctx, purposes, "form")
                return RedirectResponse(target, status_code=303)
            raise BadChoice(
                "send application/json or an application/x-www-form-urlencoded form", 415
            )
        except BadChoice as error:
            self.refused("cross_origin" if error.status == 403 else "bad_request")
            return _error(error.status, error.reason)

    def _decide(
        self,
        scope: Scope,
        headers: Headers,
        ctx: ConsentContext,
        purposes: Mapping[str, bool],
        source: DecisionSource,
    ) -> Response:
        withdraw = scope["method"] == "DELETE"
        apply_choice(
            self.config, ctx, purposes, action="withdraw" if withdraw else None, source=source
        )
        response = JSONResponse(state_body(self.config, ctx.state))
        self._delete_refused_cookies(headers, ctx.state, response)
        return response

    def _delete_refused_cookies(
        self, headers: Headers, state: ConsentState, response: Response
    ) -> None:
        """Expire the app's declared cookies whose purpose is no longer granted."""
        raw = headers.get("cookie", "").encode("latin-1", "replace")
        for name, purpose in self.cookie_purposes.items():
            if not state.granted(purpose) and cookie_values(raw, [name]):
                response.raw_headers.append(
                    (b"set-cookie", f"{name}=; Max-Age=0; Path=/".encode("latin-1"))
                )

    def check_origin(self, scope: Scope, headers: Headers, method: str) -> None:
        """Raise :class:`BadChoice` (403) unless a ``method`` request comes from this site
        (the rule in the module docstring); shared by every state-changing endpoint."""
        host = headers.get("host") or _server_netloc(scope)
        expected = {_origin(scope["scheme"], host)} | self.trusted
        if self.config.cookie.secure is True:  # behind a TLS-terminating proxy
            expected.add(_origin("https", host))
        expected.discard(None)  # an unparsable Host matches nothing, not an unparsable Origin
        origin = headers.get("origin")
        if origin is not None:
            if _url_origin(origin) not in expected or origin.strip() == "null":
                raise BadChoice(f"cross-origin request refused (Origin: {origin[:100]})", 403)
            return
        referer = headers.get("referer")
        if referer is not None:
            if _url_origin(referer) not in expected:
                raise BadChoice("cross-origin request refused (Referer is another site)", 403)
            return
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if method == "POST" and content_type != "application/json":
            raise BadChoice(
                "a form post needs an Origin or Referer header from this site", status=403
            )

    def _parse_json(
        self, body: bytes, current: ConsentState
    ) -> tuple[dict[str, bool], DecisionSource]:
        try:
            data = json.loads(body)
        except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
            raise BadChoice(f"malformed JSON: {str(error)[:200]}") from error
        if not isinstance(data, dict):
            raise BadChoice(
                'the body must be a JSON object: {"purposes": {...}} or {"accept": ...}'
            )
        unknown = sorted(set(data) - {"purposes", "accept", "source"})
        if unknown:
            raise BadChoice(f"unknown field(s): {', '.join(map(repr, unknown))[:200]}")
        source = data.get("source", "api")
        if source not in ("api", "banner"):
            raise BadChoice("source must be 'api' or 'banner'")
        if ("purposes" in data) == ("accept" in data):
            raise BadChoice("send exactly one of 'purposes' and 'accept'")
        if "accept" in data:
            return self._accept(data["accept"]), source
        choice = data["purposes"]
        if not isinstance(choice, dict):
            raise BadChoice("'purposes' must be an object mapping purpose names to true/false")
        for name, value in choice.items():
            self._check_purpose(name)
            if not isinstance(value, bool):
                raise BadChoice(
                    f"purpose {name!r} must be true or false, got {json.dumps(value)[:50]}"
                )
            if not value and self.config.registry[name].required:
                raise BadChoice(f"purpose {name!r} is required and cannot be refused")
        # Purposes the visitor did not mention keep their current value.
        return {**dict(current.purposes), **choice}, source

    def _parse_form(self, body: bytes) -> tuple[dict[str, bool], str]:
        try:
            text = body.decode("utf-8")
            fields = parse_qsl(text, keep_blank_values=True, errors="strict", max_num_fields=64)
        except (UnicodeDecodeError, ValueError) as error:
            raise BadChoice(f"malformed form: {str(error)[:200]}") from error
        accept = [v for k, v in fields if k == "accept"]
        targets = [v for k, v in fields if k == "next"]
        target = _safe_next(targets[-1]) if targets else "/"
        if accept:
            return self._accept(accept[-1]), target
        # A checkbox form: checked purposes are granted, the others refused.
        checked = [v for k, v in fields if k == "purposes"]
        for name in checked:
            self._check_purpose(name)
        return {name: name in checked for name in self.config.registry.names}, target

    def _accept(self, value: object) -> dict[str, bool]:
        if value == "all":
            return self.config.registry.all_granted()
        if value == "necessary":
            return self.config.registry.only_required()
        raise BadChoice("'accept' must be 'all' or 'necessary'")

    def _check_purpose(self, name: object) -> None:
        if not isinstance(name, str) or name not in self.config.registry:
            known = ", ".join(self.config.registry.names)
            raise BadChoice(f"unknown purpose {str(name)[:64]!r}; known purposes: {known}")


def _safe_next(target: str) -> str:
    """``target`` when it is a path on this site, else a 400 (no open redirects)."""
    if (
        not target.startswith("/")
        or target.startswith("//")
        or "\\" in target
        or any(ord(c) < 0x21 or ord(c) == 0x7F for c in target)
        or len(target) > 2000
    ):
        raise BadChoice("'next' must be a relative path on this site, such as /products/1")
    return target


def _server_netloc(scope: Scope) -> str:
    server = scope.get("server")
    if not server:
        return ""
    host, port = server[0], server[1]
    return f"{host}:{port}" if port is not None else str(host)


async def _read_body(receive: Receive, headers: Headers) -> bytes:
    """The request body, at most ``MAX_BODY_BYTES``; stops reading as soon as it is over."""
    declared = headers.get("content-length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_BODY_BYTES:
        raise BadChoice(f"body over {MAX_BODY_BYTES} bytes", 400)
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadChoice("client disconnected", 400)
        body += message.get("body", b"")
        if len(body) > MAX_BODY_BYTES:
            raise BadChoice(f"body over {MAX_BODY_BYTES} bytes", 400)
        if not message.get("more_body", False):
            return bytes(body)


def _error(status: int, reason: str, *, allow: str | None = None) -> Response:
    error = {400: "bad_request", 403: "forbidden", 405: "method_not_allowed"}.get(
        status, "unsupported_media_type"
    )
    response = JSONResponse({"error": error, "reason": reason}, status_code=status)
    if allow is not None:
        response.headers["allow"] = allow
    return response
