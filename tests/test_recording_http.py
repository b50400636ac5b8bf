"""Recording through HTTP: a real app behind ConsentMiddleware, then RAW read with DuckDB."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
from click.testing import CliRunner
from consent_support import ORIGIN, POLICY, SECRET, TestClient
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from consent_middleware import ConsentMiddleware
from consent_middleware.admin import cli
from consent_middleware.raw.layout import RawLayout
from consent_middleware.recorder import RecordingOptions

CLIENT_IP = "203.0.113.77"
UA = "Mozilla/5.0 (X11; Linux x86_64) RecordingTest/1.0"
SECRETS_IN_QUERY = ("secret-query-xyz", "alice", "example.com")
REFERRER = "https://search.example/results/private-path-abc?q=referrer-query-def"
NEVER_STORED = (CLIENT_IP, *SECRETS_IN_QUERY, "private-path-abc", "referrer-query-def")


async def item(request: Request) -> Response:
    return PlainTextResponse(f"page {dict(request.path_params)}")


async def asset(request: Request) -> Response:
    return PlainTextResponse("body{}", media_type="text/css")


def make_shop(raw: Path) -> Starlette:
    # Uncompressed Parquet, so that scanning the files' bytes below proves something.
    options = RecordingOptions(compression="none", flush_interval=3600)
    return Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/static/app.css", asset),
            Mount("/blog", routes=[Route("/{slug}", item)]),
        ],
        middleware=[
            Middleware(
                ConsentMiddleware,
                secret_key=SECRET,
                policy_version=POLICY,
                raw_dir=raw,
                recording=options,
            )
        ],
    )


def query(sql: str) -> list[tuple[Any, ...]]:
    return duckdb.execute(sql).fetchall()


def test_events_and_ledger_through_http(tmp_path: Path) -> None:
    headers = {"user-agent": UA, "referer": REFERRER, "accept-language": "ja-JP,en;q=0.8"}
    with TestClient(make_shop(tmp_path), client=(CLIENT_IP, 4321), headers=headers) as client:
        q = "utm_source=Mail&utm_campaign=spring&q=secret-query-xyz&email=alice%40example.com"
        assert client.get(f"/items/12345?{q}").status_code == 200
        assert client.post("/consent", json={"accept": "all"}, headers=ORIGIN).status_code < 400
        assert client.get("/items/777?utm_medium=email").status_code == 200
        assert client.get("/blog/hello-world").status_code == 200
        assert client.get("/static/app.css").status_code == 200  # excluded: a static asset
        assert client.get("/consent").status_code == 200  # excluded: the middleware's own
        assert client.get("/missing/alice@example.com").status_code == 404
        assert client.delete("/consent", headers=ORIGIN).status_code < 400
        receipt = client.get("/consent").json()["receipt_id"]
    # Leaving the client ran the lifespan shutdown: the recorder flushed and closed.
    glob = RawLayout.at(tmp_path).events_glob()
    events = query(
        "SELECT path, method, status, utm_source, utm_medium, utm_campaign, referrer_host, "
        "user_agent, language, visitor_hash IS NOT NULL, aid IS NOT NULL, purposes, "
        f"policy_version, gpc, source, duration_ms > 0 FROM read_parquet('{glob}') ORDER BY ts"
    )
    common = ("search.example", UA, "ja", True)
    everything = ["necessary", "statistics", "marketing", "third_party"]
    tail = (POLICY, False, "middleware", True)
    assert events == [
        ("/items/{item_id}", "GET", 200, "mail", None, "spring", *common, False,
         ["necessary"], *tail),
        ("/items/{item_id}", "GET", 200, None, "email", None, *common, True,
         everything, *tail),
        ("/blog/{slug}", "GET", 200, None, None, None, *common, True,
         everything, *tail),
        ("/missing/{email}", "GET", 404, None, None, None, *common, True,
         everything, *tail),
    ]  # fmt: skip
    ledger = str(RawLayout.at(tmp_path).ledger / "*.jsonl")
    records = query(
        "SELECT receipt_id, action, source, granted, refused, policy_version, "
        "length(notice_hash), gpc, seq, length(prev), length(sig), kid IS NOT NULL "
        f"FROM read_json('{ledger}', format='newline_delimited') ORDER BY seq"
    )
    assert [r[1] for r in records] == ["grant", "withdraw"]
    assert records[0][3] == ["necessary", "statistics", "marketing", "third_party"]
    assert records[1][3] == ["necessary"] and "statistics" in records[1][4]
    assert all(r[0] == receipt and r[5] == POLICY and r[6] == 64 for r in records)
    assert [(r[8], r[9], r[10], r[11]) for r in records] == [(0, 64, 64, True), (1, 64, 64, True)]
    result = CliRunner().invoke(cli, ["verify", "--raw", str(tmp_path), "--key", SECRET])
    assert result.exit_code == 0, result.output
    history = CliRunner().invoke(cli, ["receipt", "--raw", str(tmp_path), receipt, "--json"])
    assert history.exit_code == 0, (history.output, history.exception)
    assert [h["action"] for h in json.loads(history.stdout)] == ["grant", "withdraw"]

    # Nothing that identifies the visitor or leaks the URLs reaches RAW, in any file.
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".jsonl" for p in files)
    blobs = {p: p.read_bytes() for p in files}
    for needle in NEVER_STORED:
        for path, blob in blobs.items():
            assert needle.encode() not in blob, f"{needle!r} found in {path}"
    # Positive control: the byte scan does see what is stored (the files are uncompressed).
    assert any(UA.encode() in blob for blob in blobs.values())
    assert any(b"search.example" in blob for blob in blobs.values())


def test_fastapi_route_templates(tmp_path: Path) -> None:
    app = FastAPI()

    @app.get("/users/{user_id}/orders/{order_id}")
    async def order(user_id: int, order_id: str) -> dict[str, str]:
        return {"order": order_id}

    app.add_middleware(
        ConsentMiddleware, secret_key=SECRET, policy_version=POLICY, raw_dir=tmp_path
    )
    with TestClient(app) as client:
        for user in range(3):
            assert client.get(f"/users/{user}/orders/A-{user}x").status_code == 200
    glob = RawLayout.at(tmp_path).events_glob()
    rows = query(f"SELECT path, count(*) FROM read_parquet('{glob}') GROUP BY path")
    assert rows == [("/users/{user_id}/orders/{order_id}", 3)]


def test_handlers_read_the_counters_of_a_middleware_they_did_not_build(tmp_path: Path) -> None:
    # Middleware(...) builds the middleware and its recorder inside Starlette; the app has
    # no reference to either. The lifespan state hands both to every request.
    async def health(request: Request) -> Response:
        recorder = request.state.consent_recorder
        recorder.flush()
        stats = recorder.stats
        enforcement = request.state.consent_stats
        return Response(
            json.dumps(
                {
                    "recorded": stats.recorded,
                    "flushed": stats.flushed,
                    "dropped": stats.dropped,
                    "failing": stats.failing,
                    "decisions": dict(enforcement.decisions),
                }
            ),
            media_type="application/json",
        )

    app = make_shop(tmp_path)
    app.router.routes.append(Route("/health", health))
    with TestClient(app, headers={"user-agent": UA}) as client:
        for number in range(5):
            assert client.get(f"/items/{number}").status_code == 200
        assert client.post("/consent", json={"accept": "all"}, headers=ORIGIN).status_code < 400
        first = client.get("/health").json()
        assert first["decisions"] == {"grant": 1}
        assert first["dropped"] == 0 and first["failing"] is False
        # The five pages were recorded and written before /health itself was.
        assert first["recorded"] == first["flushed"] >= 5
        assert client.get("/items/9").status_code == 200
        second = client.get("/health").json()
        assert second["recorded"] == first["recorded"] + 2  # /health and /items/9
