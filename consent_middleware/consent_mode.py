"""Google Consent Mode v2 defaults rendered from the server-side consent state.

Rendering the defaults into the page (before any tag loads) means tags start in the right
state: no flash of "granted" before a script reads the cookie, no flicker.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from typing import Literal

from consent_middleware.state import ConsentState

ConsentValue = Literal["granted", "denied"]

DEFAULT_MAPPING: Mapping[str, Sequence[str]] = {
    # Consent Mode signal → every purpose it needs.
    "ad_storage": ("marketing",),
    "analytics_storage": ("statistics",),
    # Sending user data to Google for ads, and personalised ads, are both a provision of
    # data to a third party for marketing (policy §6-5 and §8).
    "ad_user_data": ("marketing", "third_party"),
    "ad_personalization": ("marketing", "third_party"),
}
"""How the four Consent Mode v2 signals follow the default purposes."""


def consent_mode_defaults(
    state: ConsentState, mapping: Mapping[str, Sequence[str]] = DEFAULT_MAPPING
) -> dict[str, ConsentValue]:
    """``{"ad_storage": "granted"|"denied", ...}``: a signal is granted only when every
    purpose it maps to is granted."""
    return {
        signal: "granted" if all(state.granted(p) for p in purposes) else "denied"
        for signal, purposes in mapping.items()
    }


def _script_json(value: object) -> str:
    """JSON that is safe inside an inline ``<script>`` (no ``</script>``, no ``<!--``)."""
    text = json.dumps(value, separators=(",", ":"), sort_keys=True)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def render_consent_mode(
    state: ConsentState,
    *,
    nonce: str | None = None,
    wait_for_update: int | None = None,
    mapping: Mapping[str, Sequence[str]] = DEFAULT_MAPPING,
) -> str:
    """An inline ``<script>`` that sets the Consent Mode defaults; put it before any tag.

    ``nonce`` is the page's CSP nonce; ``wait_for_update`` (milliseconds) lets tags wait
    for a banner's update when the visitor has not decided yet.
    """
    defaults: dict[str, object] = dict(consent_mode_defaults(state, mapping))
    if wait_for_update is not None:
        defaults["wait_for_update"] = int(wait_for_update)
    nonce_attr = f' nonce="{html.escape(nonce, quote=True)}"' if nonce else ""
    return (
        f"<script{nonce_attr}>window.dataLayer=window.dataLayer||[];"
        "function gtag(){dataLayer.push(arguments);}"
        f"gtag('consent','default',{_script_json(defaults)});</script>"
    )
