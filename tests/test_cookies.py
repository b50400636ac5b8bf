"""The consent cookie: codec, signing, key rotation, expiry and attributes."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from consent_support import POLICY, SECRET, TestClient, cookie_value, make_app, set_cookies
from itsdangerous import URLSafeTimedSerializer

from consent_middleware import (
    ConsentMiddleware,
    ConsentPayload,
    CookieCodec,
    CookiePolicy,
    PurposeRegistry,
)
from consent_middleware.cookies import MAX_MAX_AGE, Secrets, cookie_values

NOW = 1_790_000_000.0


def codec(key: object = SECRET, now: float = NOW, **kwargs: object) -> CookieCodec:
    return CookieCodec(key, PurposeRegistry(), clock=lambda: now, **kwargs)  # type: ignore[arg-type]


def payload(**changes: object) -> ConsentPayload:
    fields: dict[str, object] = {
        "policy_version": POLICY,
        "decided_at": int(NOW),
        "receipt_id": "AbCdEfGhIjKlMnOp",
        "granted": frozenset({"necessary", "statistics", "marketing", "third_party"}),
        "aid": "x" * 22,
    }
    fields.update(changes)
    return ConsentPayload(**fields)  # type: ignore[arg-type]


def test_round_trip_and_size() -> None:
    value = codec().encode(payload())
    assert codec().decode(value) == payload()
    # The payload itself is a compact JSON array well under 200 bytes; the whole signed
    # cookie value (base64 payload + timestamp + HMAC-SHA256) stays under 200 too.
    data = URLSafeTimedSerializer(SECRET.encode()).load_payload(value.rsplit(".", 2)[0].encode())
    assert len(json.dumps(data, separators=(",", ":"))) < 100
    assert len(value) < 200


def test_aid_only_with_statistics() -> None:
    without = payload(granted=frozenset({"necessary", "marketing"}))
    decoded = codec().decode(codec().encode(without))
    assert decoded is not None and decoded.aid is None
    assert decoded.granted == {"necessary", "marketing"}


@pytest.mark.parametrize(
    "mangle",
    [
        lambda v: v[:-1] + ("A" if v[-1] != "A" else "B"),  # tampered signature
        lambda v: ("B" if v[0] != "B" else "C") + v[1:],  # tampered payload
        lambda v: v[: len(v) // 2],  # truncated
        lambda v: "",
        lambda v: "not-a-cookie",
        lambda v: v + "é",  # non-ASCII
        lambda v: "A" * 5000,  # oversized
    ],
)
def test_bad_values_are_no_decision(mangle: object) -> None:
    value = codec().encode(payload())
    assert codec().decode(mangle(value)) is None  # type: ignore[operator]


def test_wrong_key_and_expiry() -> None:
    value = codec("old-key").encode(payload())
    assert codec("other-key").decode(value) is None
    assert codec("old-key", now=NOW + 179 * 86400).decode(value) is not None
    assert codec("old-key", now=NOW + 181 * 86400).decode(value) is None  # 180 days default
    short = codec("old-key", now=NOW + 3601, max_age=3600)
    assert short.decode(value) is None


def test_key_rotation_newest_signs_all_verify() -> None:
    old_value = codec("old-key").encode(payload())
    rotated = codec(["old-key", "new-key"])
    assert rotated.decode(old_value) == payload()
    new_value = rotated.encode(payload())
    assert codec("new-key").decode(new_value) == payload()
    assert codec("old-key").decode(new_value) is None


def test_max_age_is_validated() -> None:
    assert codec(max_age=timedelta(days=395)).max_age == MAX_MAX_AGE
    with pytest.raises(ValueError, match="13 months"):
        codec(max_age=MAX_MAX_AGE + 1)
    with pytest.raises(ValueError, match="positive"):
        codec(max_age=0)
    with pytest.raises(ValueError, match="13 months"):
        ConsentMiddleware(make_app(), secret_key=SECRET, policy_version=POLICY, max_age=10**8)


def test_secrets_are_masked_and_validated() -> None:
    secrets = Secrets(["first-secret", b"second-secret"])
    assert "secret" not in repr(secrets).replace("Secrets", "")
    assert "first-secret" not in repr(codec("first-secret"))
    with pytest.raises(ValueError):
        Secrets([])
    with pytest.raises(ValueError):
        Secrets(["ok", ""])


def test_cookie_values_keeps_duplicates_in_order() -> None:
    header = b"consent=one; other=x; __Host-consent=two; consent=three"
    assert cookie_values(header, ["__Host-consent", "consent"]) == ["two", "one", "three"]
    assert cookie_values(b"\xff\xfe=\x00; consent", ["consent"]) == []


def test_cookie_policy_attributes() -> None:
    policy = CookiePolicy(name="consent", max_age=100)
    assert policy.set_cookie("v", secure=False) == (
        "consent=v; Max-Age=100; Path=/; SameSite=Lax; HttpOnly"
    )
    assert policy.set_cookie("v", secure=True) == (
        "__Host-consent=v; Max-Age=100; Path=/; SameSite=Lax; HttpOnly; Secure"
    )
    with pytest.raises(ValueError):
        CookiePolicy(name="bad name;")


# Through HTTP ---------------------------------------------------------------------------


def test_http_cookie_attributes_over_http_and_https() -> None:
    plain = TestClient(make_app()).post("/consent", json={"accept": "all"})
    [header] = set_cookies(plain)
    assert header.startswith("consent=")
    assert "; Max-Age=15552000; Path=/; SameSite=Lax; HttpOnly" in header
    assert "Secure" not in header
    secure = TestClient(make_app(), base_url="https://testserver").post(
        "/consent", json={"accept": "all"}
    )
    [header] = set_cookies(secure)
    assert header.startswith("__Host-consent=") and header.endswith("; Secure")
    forced = TestClient(make_app(secure=True)).post("/consent", json={"accept": "all"})
    assert set_cookies(forced)[0].startswith("__Host-consent=")
    never = TestClient(make_app(secure=False), base_url="https://testserver").post(
        "/consent", json={"accept": "all"}
    )
    assert set_cookies(never)[0].startswith("consent=")


def test_http_key_rotation() -> None:
    old_client = TestClient(make_app(secret_key="old-key"))
    granted = old_client.post("/consent", json={"accept": "all"})
    old_cookie = cookie_value(set_cookies(granted)[0])
    receipt = granted.json()["receipt_id"]

    rotated = make_app(secret_key=["old-key", "new-key"])
    seen = TestClient(rotated).get("/", headers={"cookie": f"consent={old_cookie}"}).json()
    assert seen["has_decision"] and seen["purposes"]["marketing"]
    assert seen["receipt_id"] == receipt

    changed = TestClient(rotated).post(
        "/consent",
        json={"purposes": {"marketing": False}},
        headers={"cookie": f"consent={old_cookie}"},
    )
    new_cookie = cookie_value(set_cookies(changed)[0])
    assert codec("new-key", now=__import__("time").time()).decode(new_cookie) is not None
    assert codec("old-key", now=__import__("time").time()).decode(new_cookie) is None
    # After the old key is retired, the new cookie still verifies, the old one no longer.
    retired = TestClient(make_app(secret_key="new-key"))
    assert retired.get("/", headers={"cookie": f"consent={new_cookie}"}).json()["has_decision"]
    assert not retired.get("/", headers={"cookie": f"consent={old_cookie}"}).json()["has_decision"]


def test_http_expired_cookie_is_no_decision() -> None:
    now = [NOW]
    app = make_app(clock=lambda: now[0], max_age=3600)
    client = TestClient(app)
    client.post("/consent", json={"accept": "all"})
    assert client.get("/").json()["has_decision"]
    now[0] += 3601
    after = client.get("/").json()
    assert not after["has_decision"] and after["needs_prompt"] and after["receipt_id"] is None
