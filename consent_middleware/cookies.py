"""The consent cookie: compact payload codec, signing with key rotation, and attributes.

The payload is a compact JSON array (design section 4)::

    [1, policy_version, decided_at, receipt_id, "n,s,m", flags, aid?]

``1`` is the payload format, ``decided_at`` epoch seconds, the purpose codes are those
granted, ``flags`` bit 0 means "granted while a Sec-GPC signal was present", and ``aid``
(the anonymous id) is present only while ``statistics`` is granted. Signed with
itsdangerous (timestamped, HMAC-SHA256): the newest key signs, every key verifies.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import lru_cache
from typing import Any, Literal

from itsdangerous import URLSafeTimedSerializer
from itsdangerous.timed import TimestampSigner

from consent_middleware.purposes import PurposeRegistry

DEFAULT_MAX_AGE = 180 * 24 * 3600  # 180 days, in seconds
MAX_MAX_AGE = 395 * 24 * 3600  # 13 months (395 days), in seconds: the policy's cap
MAX_COOKIE_BYTES = 4096  # browsers drop larger cookies; anything bigger is not ours
PAYLOAD_FORMAT = 1
FLAG_GRANTED_UNDER_GPC = 1

_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,64}")
_SALT = "consent_middleware.cookie"

SecretKey = str | bytes | Sequence[str | bytes]
"""One key, or a list of keys from oldest to newest."""


VERIFY_CACHE_SIZE = 4096
"""Recently verified cookie values remembered per codec (bounded)."""


def new_receipt_id() -> str:
    """A short random receipt id (16 URL-safe characters, 96 bits)."""
    return secrets.token_urlsafe(12)


def new_aid() -> str:
    """A fresh anonymous id (16 random bytes, URL-safe: 22 characters)."""
    return secrets.token_urlsafe(16)


def validate_max_age(max_age: int | timedelta) -> int:
    """``max_age`` in whole seconds; ``ValueError`` unless 0 < max_age <= 13 months."""
    seconds = int(max_age.total_seconds()) if isinstance(max_age, timedelta) else max_age
    if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds <= 0:
        raise ValueError(f"max_age must be a positive number of seconds, got {max_age!r}")
    if seconds > MAX_MAX_AGE:
        raise ValueError(
            f"max_age {seconds} s is above 13 months ({MAX_MAX_AGE} s); the privacy policy "
            "caps how long a consent decision is kept"
        )
    return seconds


class Secrets:
    """Signing keys, oldest to newest, whose ``repr`` never shows them."""

    __slots__ = ("_keys",)

    def __init__(self, secret_key: SecretKey) -> None:
        raw = [secret_key] if isinstance(secret_key, str | bytes) else list(secret_key)
        keys = [k.encode("utf-8") if isinstance(k, str) else bytes(k) for k in raw]
        if not keys:
            raise ValueError("secret_key must hold at least one key")
        if any(not k for k in keys):
            raise ValueError("secret_key must not contain an empty key")
        self._keys: tuple[bytes, ...] = tuple(keys)

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys as bytes, oldest to newest."""
        return self._keys

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"Secrets(<{len(self._keys)} key(s) masked>)"


@dataclass(frozen=True, slots=True)
class ConsentPayload:
    """What the cookie holds: the visitor's last decision."""

    policy_version: str
    decided_at: int
    receipt_id: str
    granted: frozenset[str]
    granted_under_gpc: bool = False
    aid: str | None = field(default=None)


def _signer_with_clock(clock: Callable[[], float]) -> type[TimestampSigner]:
    """A TimestampSigner class whose clock is ``clock`` (injectable for tests)."""

    class _ClockSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(clock())

    return _ClockSigner


class CookieCodec:
    """Turns a :class:`ConsentPayload` into a signed cookie value and back.

    ``decode`` never raises: a tampered, truncated, wrong-key, expired, oversized, non-ASCII
    or otherwise unparsable value is ``None`` ("no decision").
    """

    def __init__(
        self,
        secret_key: SecretKey | Secrets,
        registry: PurposeRegistry,
        *,
        max_age: int | timedelta = DEFAULT_MAX_AGE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secrets = secret_key if isinstance(secret_key, Secrets) else Secrets(secret_key)
        self.registry = registry
        self.max_age = validate_max_age(max_age)
        self.clock = clock
        self._serializer = URLSafeTimedSerializer(
            list(self.secrets.keys),
            salt=_SALT,
            signer=_signer_with_clock(clock),
            signer_kwargs={"digest_method": hashlib.sha256},
        )
        # A visitor sends the same cookie on every request: remember the outcome of the
        # signature check (not of the freshness check, which depends on the clock) for
        # recently seen values. Bounded, keyed by the exact value, so it cannot be poisoned.
        self._verify = lru_cache(maxsize=VERIFY_CACHE_SIZE)(self._verify_signature)

    def __repr__(self) -> str:
        return f"CookieCodec({self.secrets!r}, max_age={self.max_age})"

    def encode(self, payload: ConsentPayload) -> str:
        """The signed cookie value for ``payload`` (signed with the newest key)."""
        codes = ",".join(p.code for p in self.registry if p.name in payload.granted)
        flags = FLAG_GRANTED_UNDER_GPC if payload.granted_under_gpc else 0
        data: list[Any] = [
            PAYLOAD_FORMAT,
            payload.policy_version,
            payload.decided_at,
            payload.receipt_id,
            codes,
            flags,
        ]
        if payload.aid is not None and "statistics" in payload.granted:
            data.append(payload.aid)
        value = self._serializer.dumps(data)
        return value if isinstance(value, str) else value.decode("ascii")

    def decode(self, value: str) -> ConsentPayload | None:
        """The payload in ``value``, or ``None`` when it is not a valid, fresh cookie of ours."""
        verified = self.verify(value)
        if verified is None:
            return None
        payload, signed_at = verified
        not_before, not_after = self.fresh_window(payload, signed_at)
        if not not_before <= self.clock() <= not_after:
            return None  # expired, or decided in the future
        return payload

    def verify(self, value: str) -> tuple[ConsentPayload, int] | None:
        """The payload in ``value`` and when it was signed (epoch seconds), or ``None`` when
        ``value`` is not a cookie of ours. Freshness is not checked (see :meth:`fresh_window`):
        the answer does not depend on the time, so callers may remember it."""
        if len(value) > MAX_COOKIE_BYTES or not value.isascii():
            return None
        return self._verify(value)

    def fresh_window(self, payload: ConsentPayload, signed_at: int) -> tuple[int, int]:
        """The epoch seconds ``(not_before, not_after)`` between which a cookie holding
        ``payload``, signed at ``signed_at``, is accepted (both ends included).

        It expires ``max_age`` seconds after it was signed or after the decision was made,
        whichever is earlier; a decision more than 5 minutes in the future (clock skew
        between workers) is not accepted yet.
        """
        decided_at = payload.decided_at
        return decided_at - 300, min(signed_at, decided_at) + self.max_age

    def _verify_signature(self, value: str) -> tuple[ConsentPayload, int] | None:
        """Signature check and parsing: everything about a value that does not depend on time."""
        try:
            data, signed_at = self._serializer.loads(value, return_timestamp=True)
        except Exception:
            # itsdangerous raises BadSignature, BadPayload… and a crafted value could still
            # reach a decoder error: every failure means "no decision".
            return None
        payload = self._parse(data)
        return None if payload is None else (payload, int(signed_at.timestamp()))

    def _parse(self, data: object) -> ConsentPayload | None:
        if not isinstance(data, list) or len(data) not in (6, 7):
            return None
        fmt, version, decided_at, receipt_id, codes, flags, *rest = data
        if fmt != PAYLOAD_FORMAT or not isinstance(version, str) or len(version) > 64:
            return None
        if not _is_int(decided_at) or decided_at < 0 or not _is_int(flags):
            return None
        if not isinstance(receipt_id, str) or not _TOKEN.fullmatch(receipt_id):
            return None
        if not isinstance(codes, str):
            return None
        granted = set()
        for code in filter(None, codes.split(",")):
            purpose = self.registry.by_code(code)
            if purpose is not None:  # a purpose removed from the registry is simply gone
                granted.add(purpose.name)
        aid: str | None = None
        if rest:
            if not isinstance(rest[0], str) or not _TOKEN.fullmatch(rest[0]):
                return None
            aid = rest[0] if "statistics" in granted else None
        return ConsentPayload(
            policy_version=version,
            decided_at=decided_at,
            receipt_id=receipt_id,
            granted=frozenset(granted),
            granted_under_gpc=bool(flags & FLAG_GRANTED_UNDER_GPC),
            aid=aid,
        )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


SecureMode = Literal["auto"] | bool
"""``"auto"``: Secure when the request came over HTTPS; ``True``/``False``: always/never."""


@dataclass(frozen=True, slots=True)
class CookiePolicy:
    """Name and attributes of the consent cookie (HttpOnly, SameSite=Lax, Path=/).

    When the cookie is Secure it is named ``__Host-<name>``, which browsers accept only
    from HTTPS, with Path=/ and without Domain: no subdomain can overwrite it.
    """

    name: str = "consent"
    max_age: int = DEFAULT_MAX_AGE
    secure: SecureMode = "auto"

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", self.name) or self.name.startswith("__"):
            raise ValueError(f"cookie_name {self.name!r} must be 1-64 of A-Z a-z 0-9 _ . -")
        object.__setattr__(self, "max_age", validate_max_age(self.max_age))
        if self.secure not in ("auto", True, False):
            raise ValueError(f"secure must be 'auto', True or False, got {self.secure!r}")

    def is_secure(self, scheme: str) -> bool:
        """Whether the cookie gets the Secure attribute for a request with ``scheme``."""
        if self.secure == "auto":
            return scheme in ("https", "wss")
        return bool(self.secure)

    def read_names(self) -> tuple[str, str]:
        """Names to read, preferred first: the ``__Host-`` one, then the plain one."""
        return (f"__Host-{self.name}", self.name)

    def set_cookie(self, value: str, *, secure: bool) -> str:
        """The ``Set-Cookie`` header value that stores ``value``."""
        name = f"__Host-{self.name}" if secure else self.name
        header = f"{name}={value}; Max-Age={self.max_age}; Path=/; SameSite=Lax; HttpOnly"
        return header + "; Secure" if secure else header


def cookie_values(header: bytes, names: Sequence[str]) -> list[str]:
    """Values of every cookie named in ``names``, in ``names`` order then header order.

    Browsers may send the same name twice (different paths or domains); the caller takes the
    first one that verifies. The header is decoded as Latin-1 so no byte sequence can fail.
    """
    found: dict[str, list[str]] = {name: [] for name in names}
    for chunk in header.decode("latin-1").split(";"):
        key, sep, value = chunk.partition("=")
        key = key.strip()
        if sep and key in found:
            found[key].append(value.strip().strip('"'))
    return [value for name in names for value in found[name]]


def set_cookie_name(header_value: bytes) -> str:
    """The cookie name of a ``Set-Cookie`` header value (Latin-1, never raises)."""
    return header_value.decode("latin-1").partition("=")[0].strip()
