"""Requests by post: ``consent-admin export|erase|requests|purge`` with the quoted receipt id,
and erasure reaching the statistics pipeline."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from click.testing import CliRunner
from consent_support import TestClient, make_app
from rights_support import ORIGIN, SECRET, Site, all_events

import anonymizer
from anonymizer.pipeline import RunOptions
from consent_middleware.admin import cli
from consent_middleware.ledger import receipt_history

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
)


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


@dataclass
class Shop:
    """A site with visitor E (to be erased) and K (kept), who browsed interleaved."""

    site: Site
    e: TestClient
    k: TestClient
    e_ids: dict[str, str]
    k_ids: dict[str, str]


def _two_visitors(raw: Path) -> Shop:
    site = Site(raw)
    e = site.visitor(FIREFOX, pages=0)
    k = site.visitor(CHROME, pages=0, host="198.51.100.20")
    for page in ("one", "two", "three"):
        e.get(f"/shop/{page}")
        k.get(f"/shop/{page}")
    shop = Shop(site, e, k, e.get("/").json(), k.get("/").json())
    site.flush()
    return shop


def test_postal_export_is_the_online_disclosure(tmp_path: Path) -> None:
    shop = _two_visitors(tmp_path)
    e = shop.e_ids
    online = shop.e.get("/privacy/data").json()
    out = tmp_path / "reply.json"
    code, _, err = run(
        "export", "--raw", str(tmp_path), "--receipt", e["receipt_id"], "--out", str(out)
    )
    assert code == 0 and "4 event(s)" in err
    postal = json.loads(out.read_text())
    assert postal["events"] == online["events"] and len(postal["events"]) == 4
    assert postal["consent_history"] == online["consent_history"]
    assert {ev["aid"] for ev in postal["events"]} == {e["aid"]}

    code, text, _ = run(
        "export", "--raw", str(tmp_path), "--receipt", e["receipt_id"], "--format", "csv"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert code == 0 and [r["record"] for r in rows].count("event") == 4

    code, listing, _ = run("requests", "--raw", str(tmp_path), "--json")
    kinds = [(r["kind"], r["channel"], r["status"]) for r in json.loads(listing)]
    assert (
        kinds == [("disclosure", "online", "completed")] + [("disclosure", "post", "completed")] * 2
    )


def test_unknown_receipt_is_an_error(tmp_path: Path) -> None:
    _two_visitors(tmp_path)
    code, _, err = run("export", "--raw", str(tmp_path), "--receipt", "no-such-receipt")
    assert code == 1 and "no ledger record" in err
    code, _, err = run("erase", "--raw", str(tmp_path), "--receipt", "nope", "--key", SECRET)
    assert code == 1 and "no ledger record" in err


def test_postal_erasure_then_purge_completes_the_request(tmp_path: Path) -> None:
    shop = _two_visitors(tmp_path)
    site, e, k = shop.site, shop.e_ids, shop.k_ids
    kept = [ev for ev in all_events(tmp_path) if ev["user_agent"] == CHROME]
    code, _, err = run("erase", "--raw", str(tmp_path), "--receipt", e["receipt_id"])
    assert code == 2 and "no key" in err

    code, out, _ = run(
        "erase", "--raw", str(tmp_path), "--receipt", e["receipt_id"], "--key", SECRET
    )
    assert code == 0 and "1 anonymous id(s) erased" in out and "purge" in out
    code, out, _ = run("requests", "--raw", str(tmp_path), "--open")
    assert code == 0 and "erasure" in out and "OPEN for 0 day(s)" in out and "1 open" in out
    code, out, _ = run("requests", "--raw", str(tmp_path), "--open", "--json")
    (request,) = json.loads(out)
    assert (request["kind"], request["channel"], request["status"]) == ("erasure", "post", "open")
    # A worker (re)started after the erasure never records under E's id, even with its cookie.
    cookie = shop.e.cookies["consent"]
    worker = TestClient(make_app(raw_dir=tmp_path), cookies={"consent": cookie})
    assert worker.get("/").json()["aid"] is None

    code, out, _ = run("purge", "--raw", str(tmp_path))
    assert code == 0 and "erasure: deleted 5 event(s)" in out and "1 request(s) completed" in out
    code, out, _ = run("requests", "--raw", str(tmp_path), "--receipt", e["receipt_id"], "--json")
    (done,) = json.loads(out)
    assert done["status"] == "completed" and done["removed_events"] == 5
    assert done["completed"] >= done["received"]
    code, out, _ = run("requests", "--raw", str(tmp_path), "--receipt", k["receipt_id"], "--json")
    assert json.loads(out) == []

    site.flush()
    events = all_events(tmp_path)
    assert not any(ev["user_agent"] == FIREFOX and ev["aid"] for ev in events)
    assert [ev for ev in events if ev["user_agent"] == CHROME][: len(kept)] == kept
    code, _, _ = run("verify", "--raw", str(tmp_path), "--key", SECRET)
    assert code == 0
    history = receipt_history(tmp_path, e["receipt_id"])
    assert [(r["action"], r["source"]) for r in history][-1] == ("erase", "admin")
    assert history[-1]["granted"] == ["necessary"]

    code, out, _ = run("requests", "--raw", str(tmp_path))
    assert code == 0 and "erasure" in out and "completed" in out


def _pageviews(stats: Path) -> tuple[int, int]:
    con = anonymizer.connect(stats)
    row = con.execute("SELECT sum(pageviews), sum(visitors) FROM traffic_daily").fetchall()[0]
    return int(row[0]), int(row[1])


def test_erasure_is_reflected_in_the_next_pipeline_run(tmp_path: Path) -> None:
    raw, stats = tmp_path / "raw", tmp_path / "stats"
    shop = _two_visitors(raw)
    options = RunOptions(now=datetime.now(UTC) + timedelta(hours=1))
    anonymizer.run(raw, stats, options)
    both, visitors = _pageviews(stats)
    assert visitors == 2
    assert shop.e.delete("/privacy/data", headers=ORIGIN).status_code == 202
    shop.site.flush()
    anonymizer.run(raw, stats, options)  # before any purge: the tombstone is enough
    kept = [e for e in all_events(raw) if e["user_agent"] == CHROME and e["status"] == 200]
    assert _pageviews(stats) == (len(kept), 1) and len(kept) < both


def test_every_anonymous_id_of_a_receipt_is_covered(tmp_path: Path) -> None:
    """Withdrawing and granting again gives a new anonymous id under the same receipt: the
    disclosure and the postal erasure cover both, through the receipt links."""
    site = Site(tmp_path)
    e = site.visitor(FIREFOX, pages=2)
    first = e.get("/").json()
    e.delete("/consent", headers=ORIGIN)
    e.post("/consent", json={"accept": "all"}, headers=ORIGIN)
    e.get("/again")
    second = e.get("/").json()
    assert second["receipt_id"] == first["receipt_id"] and second["aid"] != first["aid"]
    site.visitor(CHROME, pages=2, host="198.51.100.30")
    site.flush()

    online = e.get("/privacy/data").json()
    assert {ev["aid"] for ev in online["events"]} == {first["aid"], second["aid"]}
    code, _, _ = run(
        "erase", "--raw", str(tmp_path), "--receipt", first["receipt_id"], "--key", SECRET
    )
    assert code == 0
    run("purge", "--raw", str(tmp_path))
    left = {ev["aid"] for ev in all_events(tmp_path)}
    assert first["aid"] not in left and second["aid"] not in left and len(left - {None}) == 1
