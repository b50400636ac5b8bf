"""From cookie and signals to a ConsentState, and from a visitor's choice to a Decision.

Pure functions over the middleware's configuration: no I/O, so the rules of design
section 3 (modes, GPC, policy versions) are tested directly and reused by the endpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from consent_middleware.cookies import (
    ConsentPayload,
    CookieCodec,
    CookiePolicy,
    new_aid,
    new_receipt_id,
)
from consent_middleware.decision import Decision, DecisionAction, DecisionSource
from consent_middleware.purposes import Mode, PurposeRegistry
from consent_middleware.state import ConsentState


@dataclass(frozen=True, slots=True)
class ConsentConfig:
    """Everything the middleware decided at start-up; shared by all requests."""

    registry: PurposeRegistry
    policy_version: str
    mode: Mode
    codec: CookieCodec
    cookie: CookiePolicy
    notice_hash: str
    clock: Callable[[], float] = time.time


@dataclass(slots=True)
class ConsentContext:
    """Per-request consent facts: the verified cookie, the GPC signal and the state."""

    payload: ConsentPayload | None
    gpc: bool
    secure: bool
    state: ConsentState
    # A Set-Cookie value to add to the response (the GPC override rewrites the cookie).
    set_cookie: str | None = None
    decisions: list[Decision] = field(default_factory=list)


def _state(
    config: ConsentConfig,
    purposes: Mapping[str, bool],
    *,
    payload: ConsentPayload | None,
    gpc: bool,
    needs_prompt: bool,
    current: bool,
) -> ConsentState:
    statistics = purposes.get("statistics", False)
    return ConsentState(
        purposes=purposes,
        policy_version=config.policy_version,
        needs_prompt=needs_prompt,
        gpc=gpc,
        receipt_id=payload.receipt_id if payload else None,
        aid=payload.aid if payload and current and statistics else None,
        decided_at=datetime.fromtimestamp(payload.decided_at, UTC) if payload else None,
        has_decision=current,
    )


def resolve(
    config: ConsentConfig, payload: ConsentPayload | None, *, gpc: bool, secure: bool
) -> ConsentContext:
    """The consent context of a request with the verified ``payload`` and GPC signal.

    - no decision: the mode's defaults, GPC purposes off under a signal, ``needs_prompt``;
    - a decision under an older policy version: only required purposes, ``needs_prompt``;
    - a current decision: what was granted; a GPC signal turns the GPC purposes off unless
      they were granted while the signal was present. Such an override is written back to
      the cookie and recorded once as a ``gpc`` decision.
    """
    registry = config.registry
    if payload is None:
        purposes = registry.defaults(config.mode)
        if gpc:
            purposes = {n: on and not registry[n].gpc for n, on in purposes.items()}
        state = _state(config, purposes, payload=None, gpc=gpc, needs_prompt=True, current=False)
        return ConsentContext(payload=None, gpc=gpc, secure=secure, state=state)
    if payload.policy_version != config.policy_version:
        state = _state(
            config,
            registry.only_required(),
            payload=payload,
            gpc=gpc,
            needs_prompt=True,
            current=False,
        )
        return ConsentContext(payload=payload, gpc=gpc, secure=secure, state=state)
    purposes = {p.name: p.required or p.name in payload.granted for p in registry}
    overridden = (
        gpc
        and not payload.granted_under_gpc
        and any(on and registry[n].gpc for n, on in purposes.items())
    )
    state = _state(config, purposes, payload=payload, gpc=gpc, needs_prompt=False, current=True)
    ctx = ConsentContext(payload=payload, gpc=gpc, secure=secure, state=state)
    if not overridden:
        return ctx
    purposes = {n: on and not registry[n].gpc for n, on in purposes.items()}
    apply_choice(config, ctx, purposes, action="gpc", source="gpc")
    return ctx


def apply_choice(
    config: ConsentConfig,
    ctx: ConsentContext,
    purposes: Mapping[str, bool],
    *,
    action: DecisionAction | None = None,
    source: DecisionSource,
) -> Decision:
    """Record the visitor's choice ``purposes`` in ``ctx``: new payload, cookie, decision.

    The receipt id of an earlier decision is kept (also one from an older policy version);
    the anonymous id is kept while ``statistics`` stays granted and is new after a re-grant.
    ``action`` defaults to ``grant`` for a first decision and ``change`` afterwards.
    """
    registry = config.registry
    chosen = {p.name: p.required or bool(purposes.get(p.name, False)) for p in registry}
    granted = frozenset(n for n, on in chosen.items() if on)
    previous = ctx.payload
    now = config.clock()
    aid: str | None = None
    if "statistics" in granted:
        kept = previous is not None and "statistics" in previous.granted and previous.aid
        aid = previous.aid if kept and previous is not None else new_aid()
    payload = ConsentPayload(
        policy_version=config.policy_version,
        decided_at=int(now),
        receipt_id=previous.receipt_id if previous else new_receipt_id(),
        granted=granted,
        granted_under_gpc=ctx.gpc and any(registry[n].gpc for n in granted),
        aid=aid,
    )
    if previous is not None and action == "gpc":
        # Overriding an earlier grant keeps the earlier decision time: the visitor did not decide.
        payload = replace(payload, decided_at=previous.decided_at)
    decision = Decision(
        ts=datetime.fromtimestamp(now, UTC),
        receipt_id=payload.receipt_id,
        action=action or ("grant" if previous is None else "change"),
        source=source,
        granted=tuple(n for n in registry.names if n in granted),
        refused=tuple(n for n in registry.names if n not in granted),
        policy_version=config.policy_version,
        notice_hash=config.notice_hash,
        gpc=ctx.gpc,
    )
    ctx.payload = payload
    ctx.set_cookie = config.cookie.set_cookie(config.codec.encode(payload), secure=ctx.secure)
    ctx.state = _state(
        config, chosen, payload=payload, gpc=ctx.gpc, needs_prompt=False, current=True
    )
    ctx.decisions.append(decision)
    return decision
