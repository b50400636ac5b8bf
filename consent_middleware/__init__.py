"""Cookie-consent ASGI middleware: signed consent cookie, purposes, GPC, enforcement.

Public names only; each lives in the module named after its concept. They are imported on
first use: the anonymizer reuses a few small modules of this package (path scrubbing, the
RAW layout) and should not pay for Starlette and the banner on every run.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from consent_middleware.banner import Banner, banner_tags, negotiate_language
    from consent_middleware.consent_mode import consent_mode_defaults, render_consent_mode
    from consent_middleware.cookies import ConsentPayload, CookieCodec, CookiePolicy
    from consent_middleware.decision import Decision
    from consent_middleware.enforcement import (
        RequiresConsent,
        consent_dependency,
        get_consent,
        requires_consent,
    )
    from consent_middleware.middleware import ConsentMiddleware
    from consent_middleware.purposes import DEFAULT_PURPOSES, Purpose, PurposeRegistry
    from consent_middleware.ratelimit import RateLimiter
    from consent_middleware.recorder import Recorder, RecordingOptions
    from consent_middleware.state import ConsentState
    from consent_middleware.stats import ConsentStats

_MODULES = {
    "Banner": "consent_middleware.banner",
    "ConsentMiddleware": "consent_middleware.middleware",
    "ConsentPayload": "consent_middleware.cookies",
    "ConsentState": "consent_middleware.state",
    "ConsentStats": "consent_middleware.stats",
    "CookieCodec": "consent_middleware.cookies",
    "CookiePolicy": "consent_middleware.cookies",
    "DEFAULT_PURPOSES": "consent_middleware.purposes",
    "Decision": "consent_middleware.decision",
    "Purpose": "consent_middleware.purposes",
    "PurposeRegistry": "consent_middleware.purposes",
    "RateLimiter": "consent_middleware.ratelimit",
    "Recorder": "consent_middleware.recorder",
    "RecordingOptions": "consent_middleware.recorder",
    "RequiresConsent": "consent_middleware.enforcement",
    "banner_tags": "consent_middleware.banner",
    "consent_dependency": "consent_middleware.enforcement",
    "consent_mode_defaults": "consent_middleware.consent_mode",
    "get_consent": "consent_middleware.enforcement",
    "negotiate_language": "consent_middleware.banner",
    "render_consent_mode": "consent_middleware.consent_mode",
    "requires_consent": "consent_middleware.enforcement",
}


def __getattr__(name: str) -> Any:
    """Import a public name's module when the name is first used (PEP 562)."""
    module = _MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """Every public name, imported or not."""
    return sorted({*globals(), *_MODULES})


__all__ = [
    "DEFAULT_PURPOSES",
    "Banner",
    "ConsentMiddleware",
    "ConsentPayload",
    "ConsentState",
    "ConsentStats",
    "CookieCodec",
    "CookiePolicy",
    "Decision",
    "Purpose",
    "PurposeRegistry",
    "RateLimiter",
    "Recorder",
    "RecordingOptions",
    "RequiresConsent",
    "banner_tags",
    "consent_dependency",
    "consent_mode_defaults",
    "get_consent",
    "negotiate_language",
    "render_consent_mode",
    "requires_consent",
]
