"""Coverage-guided fuzzing of the consent-cookie decoder with atheris (libFuzzer for Python).

The first byte of each input picks what the rest is:

- ``0``: a whole ``Cookie`` header, split by ``cookie_values`` and every candidate decoded,
  then resolved into a consent state (what the middleware does per request);
- ``1``: the payload part of a cookie, signed with the real key, so the fuzzer reaches the
  decoder behind the signature (base64, zlib, JSON, the payload checks) as an attacker who
  stole the key, or a bug that signed something odd, would;
- ``2``: a JSON array shaped like a payload, built from the bytes and signed, so the
  field-by-field checks are exercised with well-formed JSON of every type.

Checked for every input: no exception escapes ``decode`` (its contract is "None, never an
error"); whatever decodes has a valid receipt id, only registered purposes, an anonymous
id only with ``statistics``, a decision time inside the cookie's life, and survives a
round trip through ``encode``; ``necessary`` is always granted in the resolved state.

Run (not part of CI; ``make fuzz`` runs it for a bounded time)::

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_cookie.py -max_total_time=300

The corpus (``test-artifacts/fuzz-corpus/cookie`` unless a folder is named) is created and
seeded with real cookies on the first run; other libFuzzer flags pass through (``-runs=N``,
``-jobs=2``). A crash leaves ``crash-<sha1>``; replay it with
``python fuzz/fuzz_cookie.py crash-<sha1>``. Without atheris, ``--random N`` runs N inputs
from a plain seeded mutator (no coverage guidance), so the harness can be checked anywhere.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

import harness  # fuzz/harness.py: the shared command line

try:
    import atheris  # type: ignore[import-untyped,import-not-found,unused-ignore]
except ImportError:  # the plain mutator below still works
    atheris = None

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "test-artifacts" / "fuzz-corpus" / "cookie"
"""The default corpus (under the gitignored ``test-artifacts/``)."""
KEY = "fuzzing-key-0123456789abcdef"
NOW = 1_790_000_000.0  # a fixed clock: every run sees the same "now"
TOKEN = re.compile(r"[A-Za-z0-9_-]{8,64}")

if atheris is not None:
    with atheris.instrument_imports(include=["consent_middleware", "itsdangerous"]):
        from consent_middleware.cookies import (
            ConsentPayload,
            CookieCodec,
            CookiePolicy,
            cookie_values,
        )
        from consent_middleware.purposes import PurposeRegistry
        from consent_middleware.resolve import ConsentConfig, resolve
else:
    from consent_middleware.cookies import ConsentPayload, CookieCodec, CookiePolicy, cookie_values
    from consent_middleware.purposes import PurposeRegistry
    from consent_middleware.resolve import ConsentConfig, resolve

REGISTRY = PurposeRegistry()
CODEC = CookieCodec(KEY, REGISTRY, clock=lambda: NOW)
POLICY = CookiePolicy()
CONFIG = ConsentConfig(
    registry=REGISTRY,
    policy_version="2026-04",
    mode="opt_in",
    codec=CODEC,
    cookie=POLICY,
    notice_hash="0" * 64,
    clock=lambda: NOW,
)
# The codec's own serializer signs what the fuzzer makes (the harness plays the key holder).
SERIALIZER: Any = CODEC._serializer
SIGNER: Any = SERIALIZER.make_signer()


def check_payload(payload: ConsentPayload) -> None:
    """What any payload ``decode`` returns must satisfy."""
    assert TOKEN.fullmatch(payload.receipt_id), payload
    assert payload.granted <= set(REGISTRY.names), payload
    assert payload.aid is None or ("statistics" in payload.granted and TOKEN.fullmatch(payload.aid))
    assert isinstance(payload.decided_at, int) and not isinstance(payload.decided_at, bool)
    assert NOW - CODEC.max_age <= payload.decided_at <= NOW + 300, payload
    assert isinstance(payload.policy_version, str) and len(payload.policy_version) <= 64
    again = CODEC.decode(CODEC.encode(payload))  # a round trip keeps everything
    assert again == payload, (again, payload)


def decode(value: str) -> None:
    payload = CODEC.decode(value)
    if payload is not None:
        check_payload(payload)


def fuzz_header(header: bytes, gpc: bool) -> None:
    candidates = cookie_values(header, POLICY.read_names())
    payload = None
    for value in candidates:
        payload = CODEC.decode(value)
        if payload is not None:
            check_payload(payload)
            break
    state = resolve(CONFIG, payload, gpc=gpc, secure=False).state
    assert state.granted("necessary"), state
    assert payload is not None or not state.has_decision, state


def json_value(fdp: Any, depth: int = 0) -> Any:
    """A JSON value of any type, drawn from the fuzzer's bytes."""
    kind = fdp.ConsumeIntInRange(0, 7 if depth < 3 else 4)
    if kind == 0:
        return None
    if kind == 1:
        return fdp.ConsumeBool()
    if kind == 2:
        return fdp.ConsumeIntInRange(-(2**63), 2**63)
    if kind == 3:
        return fdp.ConsumeUnicodeNoSurrogates(fdp.ConsumeIntInRange(0, 80))
    if kind == 4:
        return fdp.ConsumeRegularFloat()
    if kind == 5:
        return [json_value(fdp, depth + 1) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    if kind == 6:
        return {
            fdp.ConsumeUnicodeNoSurrogates(8): json_value(fdp, depth + 1)
            for _ in range(fdp.ConsumeIntInRange(0, 3))
        }
    # A payload-shaped array: right arity, fields drawn from plausible and odd values.
    fields: list[Any] = [
        fdp.PickValueInList([1, 0, 2, "1", True]),
        fdp.PickValueInList(["2026-04", "", "x" * 65, 7]),
        int(NOW) - fdp.ConsumeIntInRange(-1000, 400 * 24 * 3600),
        fdp.PickValueInList(["receipt00000001", "short", "bad receipt!", None]),
        fdp.PickValueInList(["n,s,m,t", "n", "", "s", "zz,,n", ",,,", 5]),
        fdp.PickValueInList([0, 1, 3, -1, True, "1"]),
    ]
    if fdp.ConsumeBool():
        fields.append(fdp.PickValueInList(["aidaidaidaidaidaid0001", "x", None, 3]))
    return fields


class _Bytes:
    """A minimal FuzzedDataProvider for the plain mutator (atheris' method names)."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def _take(self, n: int) -> bytes:
        chunk = self.data[self.at : self.at + n]
        self.at += len(chunk)
        return chunk

    def ConsumeIntInRange(self, low: int, high: int) -> int:
        return low + int.from_bytes(self._take(8) or b"\0", "little") % (high - low + 1)

    def ConsumeBool(self) -> bool:
        return bool(self.ConsumeIntInRange(0, 1))

    def ConsumeUnicodeNoSurrogates(self, count: int) -> str:
        return self._take(count).decode("utf-8", "replace")

    def ConsumeRegularFloat(self) -> float:
        return float(self.ConsumeIntInRange(-(10**6), 10**6)) / 7

    def PickValueInList(self, values: list[Any]) -> Any:
        return values[self.ConsumeIntInRange(0, len(values) - 1)]


def test_one_input(data: bytes) -> None:
    """One fuzz case (see the module doc for the three input kinds)."""
    if not data:
        return
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        fuzz_header(rest, gpc=bool(data[0] & 0x80))
    elif mode == 1:
        decode(SIGNER.sign(rest.decode("latin-1")).decode("ascii", "replace"))
    else:
        fdp = atheris.FuzzedDataProvider(rest) if atheris is not None else _Bytes(rest)
        try:
            value = SERIALIZER.dumps(json_value(fdp))
        except (ValueError, OverflowError):
            return  # not JSON-encodable (e.g. a float the encoder refuses): nothing to sign
        decode(value)


def seeds() -> list[bytes]:
    """Real cookies and payloads: the starting points of both fuzzers."""
    payload = ConsentPayload("2026-04", int(NOW) - 60, "receipt00000001", frozenset(REGISTRY.names))
    full = CODEC.encode(dataclass_replace(payload, aid="aidaidaidaidaidaid0001"))
    minimal = CODEC.encode(dataclass_replace(payload, granted=frozenset({"necessary"})))
    body = full.rsplit(".", 2)[0]  # the payload part, before timestamp and signature
    return [
        b"\x00consent=" + full.encode(),
        b"\x80__Host-consent=" + minimal.encode() + b"; consent=" + full.encode(),
        b'\x00a=1; consent="' + minimal.encode() + b'"; consent=x',
        b"\x01" + body.encode(),
        b"\x02" + json.dumps([1, "2026-04", int(NOW), "receipt00000001", "n,s"]).encode(),
    ]


def dataclass_replace(payload: ConsentPayload, **changes: Any) -> ConsentPayload:
    from dataclasses import replace

    return replace(payload, **changes)


def seed_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    if not any(folder.iterdir()):
        for i, seed in enumerate(seeds()):
            (folder / f"seed-{i}").write_bytes(seed)


def random_inputs(count: int, seed: int = 0) -> None:
    """``count`` inputs mutated from the seeds by a seeded plain mutator."""
    rng = random.Random(seed)
    pool = seeds()
    for i in range(count):
        data = bytearray(rng.choice(pool))
        for _ in range(rng.randint(1, 8)):
            op, at = rng.randrange(4), rng.randrange(len(data) + 1)
            if op == 0 and data:
                data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
            elif op == 1:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif op == 2:
                del data[at : at + rng.randint(1, 16)]
            else:
                data[at:at] = rng.choice(pool)[: rng.randint(1, 64)]
        test_one_input(bytes(data))
        if (i + 1) % 10000 == 0:
            print(f"{i + 1} inputs", flush=True)
    print(f"{count} inputs, no failure")


def main() -> None:
    """libFuzzer with atheris; ``--random N`` without it."""
    harness.run(
        script="fuzz_cookie.py",
        atheris=atheris,
        test_one_input=test_one_input,
        random_inputs=random_inputs,
        seed_corpus=seed_corpus,
        corpus=CORPUS,
    )


if __name__ == "__main__":
    main()
