"""Reducing request details to what the raw-event contract allows (design section 5).

Shared by the recorder and by ``anonymizer import-log`` so that both write the same thing.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, unquote, urlsplit

from consent_middleware.raw.schema import UTM_FIELDS

MAX_PATH_LENGTH = 512
"""Longer paths are cut: a path that long is not a page name but data."""

MAX_FIELD_LENGTH = 200
"""Longest ``utm_*`` value, referrer host or language tag kept."""

_EMAIL = re.compile(r"[^/@\s]+@[^/@\s]+\.[^/@\s]+")
_UUID = re.compile(
    r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$"
)
_HEX = re.compile(r"^[0-9a-fA-F]{16,}$")
_NUMBER = re.compile(r"^[0-9][0-9_.,:-]*$")
_TOKEN_CHARS = re.compile(r"^[A-Za-z0-9_\-=+.~]{20,}$")
_LANG = re.compile(r"^[A-Za-z]{1,8}$")
_WORD_SPLIT = re.compile(r"[-_.~+=]")


def _looks_like_token(segment: str) -> bool:
    """A long run of mixed letters and digits (session ids, JWTs, base64) is a token.

    Word-like slugs (``logstash-monitorama-2013``) are kept: each dash-separated word is
    all letters or all digits. Tokens mix digits and letters densely within one word.
    """
    if not _TOKEN_CHARS.match(segment):
        return False
    for word in _WORD_SPLIT.split(segment):
        digits = sum(c.isdigit() for c in word)
        letters = sum(c.isalpha() for c in word)
        if len(word) >= 16 and digits >= 2 and letters >= 2:
            return True
    return False


def scrub_segment(segment: str) -> str:
    """Replace one path segment that identifies something with a placeholder."""
    if not segment:
        return segment
    if _EMAIL.search(segment):
        return "{email}"
    if _UUID.match(segment):
        return "{uuid}"
    if _HEX.match(segment):
        return "{hex}"
    if _NUMBER.match(segment):
        return "{id}"
    if _looks_like_token(segment):
        return "{token}"
    return segment


def scrub_path(raw_path: str) -> str:
    """The path without query, fragment or identifiers; always starts with ``/``.

    Digits-only segments, UUIDs, long hex strings, e-mail addresses and token-like
    segments become ``{id}``, ``{uuid}``, ``{hex}``, ``{email}`` and ``{token}``.
    """
    path = raw_path.split("?", 1)[0].split("#", 1)[0]
    if "://" in path[:16]:  # absolute-form request target ("GET http://host/path")
        path = urlsplit(path).path
    path = unquote(path, errors="replace")
    # Control characters never reach RAW. They go before the segments are scrubbed: dropped
    # afterwards, "/1234%00567" would join into the number 1234567 after the check.
    path = "".join(c for c in path if c.isprintable())
    if not path.startswith("/"):
        path = "/" + path
    scrubbed = "/".join(scrub_segment(seg) for seg in path.split("/"))
    return scrubbed[:MAX_PATH_LENGTH] or "/"


def extract_utm(query_string: str) -> dict[str, str | None]:
    """The five ``utm_*`` values of a query string; every other parameter is dropped."""
    found: dict[str, str | None] = dict.fromkeys(UTM_FIELDS)
    if not query_string or "utm_" not in query_string:
        return found
    for key, value in parse_qsl(query_string, keep_blank_values=False, errors="replace"):
        key = key.lower()
        if key in found and found[key] is None:
            clean = "".join(c for c in value.strip() if c.isprintable())[:MAX_FIELD_LENGTH]
            if _EMAIL.search(clean):
                clean = "{email}"
            found[key] = clean.lower() or None
    return found


def referrer_host(referrer: str | None) -> str | None:
    """Only the host of a referrer URL (lower case, no port, path or query), or None."""
    if not referrer or referrer == "-":
        return None
    try:
        host = urlsplit(referrer.strip()).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.lower().rstrip(".")
    if not all(c.isalnum() or c in ".-_" for c in host):
        return None
    return host[:MAX_FIELD_LENGTH]


def primary_language(accept_language: str | None) -> str | None:
    """The primary subtag of the first language in Accept-Language (``ja``, ``en``)."""
    if not accept_language:
        return None
    first = accept_language.split(",", 1)[0].split(";", 1)[0].strip()
    primary = first.split("-", 1)[0].split("_", 1)[0].lower()
    if primary == "*" or not _LANG.match(primary):
        return None
    return primary
