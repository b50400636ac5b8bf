"""Cookie-consent ASGI middleware: signed consent cookie, purposes, GPC, enforcement.

Public names only; each lives in the module named after its concept.
"""

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
