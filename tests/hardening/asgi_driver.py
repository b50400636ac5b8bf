"""A raw ASGI client for hostile-input tests.

HTTP clients refuse to send what an attacker's socket can (CR/LF in a header, bytes that are
not Latin-1, a Content-Length that lies), and each request through them costs a thread hop.
This driver calls the ASGI app directly with exactly the bytes given, on one event loop
kept for the whole module, so tens of thousands of requests run in seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(frozen=True)
class Answer:
    """What the app sent back."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes

    def header_values(self, name: bytes) -> list[bytes]:
        """Every value of header ``name`` (lower case)."""
        return [v for k, v in self.headers if k.lower() == name]

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


def scope_for(
    method: str, path: str, headers: Headers, *, query: bytes = b"", scheme: str = "http"
) -> dict[str, Any]:
    """An HTTP scope as uvicorn builds it, with ``headers`` passed through untouched."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": scheme,
        "path": path,
        "raw_path": path.encode("utf-8", "surrogateescape"),
        "query_string": query,
        "root_path": "",
        "headers": [(k.lower(), v) for k, v in headers],
        "client": ("203.0.113.9", 50000),
        "server": ("testserver", 80),
        "state": {},
    }


async def call(app: ASGIApp, scope: dict[str, Any], body: bytes = b"") -> Answer:
    """Run one request through ``app``; the body arrives in one message."""
    sent: list[Message] = []
    delivered = False

    async def receive() -> Message:
        nonlocal delivered
        if delivered:  # the app reads again after the body: the client has gone
            return {"type": "http.disconnect"}
        delivered = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    content = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], [(bytes(k), bytes(v)) for k, v in start["headers"]], content)


class Driver:
    """Sends requests to one app on a private event loop (close it when done)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._runner = asyncio.Runner()

    def request(
        self,
        method: str,
        path: str,
        headers: Headers = (),
        body: bytes = b"",
        *,
        query: bytes = b"",
        scheme: str = "http",
    ) -> Answer:
        """One request; returns the app's answer."""
        scope = scope_for(method, path, headers, query=query, scheme=scheme)
        return self._runner.run(call(self.app, scope, body))

    def close(self) -> None:
        """Close the event loop."""
        self._runner.close()


def assert_clean_headers(answer: Answer, *forbidden: bytes) -> None:
    """No header can split the response or carry what the client injected."""
    for name, value in answer.headers:
        assert b"\r" not in value and b"\n" not in value and b"\0" not in value, (name, value)
        assert b"\r" not in name and b"\n" not in name and b":" not in name, name
        for marker in forbidden:
            assert marker not in value, (name, value, marker)
