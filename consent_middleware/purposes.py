"""Purposes a visitor can consent to, and the registry that holds them (design section 3)."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

Mode = Literal["opt_in", "opt_out"]
"""``opt_in``: nothing non-necessary before a choice; ``opt_out``: on until refused."""

_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")
# Codes go into the cookie joined by ",", so they must never contain one.
_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def _frozen(mapping: Mapping[str, str]) -> Mapping[str, str]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class Purpose:
    """One purpose of processing, with its texts in English and Japanese.

    ``required`` purposes (``necessary``) are always granted and cannot be refused.
    ``default_opt_out`` is the value before any choice in ``opt_out`` mode. ``gpc`` marks the
    purposes a ``Sec-GPC: 1`` signal turns off (selling or sharing data: ``marketing``,
    ``third_party``). ``code`` is the short name stored in the cookie (defaults to ``name``).
    """

    name: str
    labels: Mapping[str, str]
    descriptions: Mapping[str, str] = field(default_factory=dict)
    required: bool = False
    default_opt_out: bool = True
    gpc: bool = False
    code: str = ""

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(
                f"purpose name {self.name!r} must be 1-32 characters of a-z, 0-9 and '_', "
                "starting with a letter"
            )
        if "en" not in self.labels:
            raise ValueError(f"purpose {self.name!r} needs an English label (labels['en'])")
        code = self.code or self.name
        if not _CODE.fullmatch(code):
            raise ValueError(f"purpose code {code!r} must be 1-32 characters of A-Z a-z 0-9 _ -")
        object.__setattr__(self, "code", code)
        object.__setattr__(self, "labels", _frozen(self.labels))
        object.__setattr__(self, "descriptions", _frozen(self.descriptions))

    def label(self, lang: str = "en") -> str:
        """The label in ``lang``, falling back to English."""
        return self.labels.get(lang) or self.labels["en"]

    def description(self, lang: str = "en") -> str:
        """The description in ``lang``, falling back to English, then to ''."""
        return self.descriptions.get(lang) or self.descriptions.get("en", "")

    def as_json(self) -> dict[str, object]:
        """The purpose as shown to a banner: name, texts and flags."""
        return {
            "name": self.name,
            "required": self.required,
            "labels": dict(self.labels),
            "descriptions": dict(self.descriptions),
        }


DEFAULT_PURPOSES: tuple[Purpose, ...] = (
    Purpose(
        name="necessary",
        code="n",
        required=True,
        labels={"en": "Strictly necessary", "ja": "必須"},
        descriptions={
            "en": "The consent cookie itself, security, and the service working at all.",
            "ja": "同意クッキー自体、セキュリティ、サービスの提供に不可欠な処理。",
        },
    ),
    Purpose(
        name="statistics",
        code="s",
        labels={"en": "Statistics", "ja": "統計"},
        descriptions={
            "en": "Anonymous access statistics; a stable anonymous id may be recorded.",
            "ja": "匿名のアクセス統計。匿名の識別子を記録することがあります。",
        },
    ),
    Purpose(
        name="marketing",
        code="m",
        gpc=True,
        labels={"en": "Marketing", "ja": "マーケティング"},
        descriptions={
            "en": "Advertising by category, device type and location.",
            "ja": "カテゴリ、端末の種類、地域に基づく広告配信。",
        },
    ),
    Purpose(
        name="third_party",
        code="t",
        gpc=True,
        labels={"en": "Third parties", "ja": "第三者提供"},
        descriptions={
            "en": "Providing data to third parties.",
            "ja": "第三者へのデータの提供。",
        },
    ),
)
"""The default registry: ``necessary``, ``statistics``, ``marketing``, ``third_party``."""


class PurposeRegistry:
    """An ordered set of purposes; starts with :data:`DEFAULT_PURPOSES` unless told otherwise.

    >>> registry = PurposeRegistry()
    >>> registry.add(Purpose("personalization", labels={"en": "Personalization", "ja": "個人化"}))
    """

    def __init__(self, purposes: Iterable[Purpose] = DEFAULT_PURPOSES) -> None:
        self._purposes: dict[str, Purpose] = {}
        for purpose in purposes:
            self.add(purpose)

    def add(self, purpose: Purpose) -> None:
        """Register ``purpose``; names and cookie codes must be unique."""
        if purpose.name in self._purposes:
            raise ValueError(f"purpose {purpose.name!r} is already registered")
        if any(p.code == purpose.code for p in self._purposes.values()):
            raise ValueError(f"purpose code {purpose.code!r} is already used by another purpose")
        self._purposes[purpose.name] = purpose

    def __iter__(self) -> Iterator[Purpose]:
        return iter(self._purposes.values())

    def __len__(self) -> int:
        return len(self._purposes)

    def __contains__(self, name: object) -> bool:
        return name in self._purposes

    def __getitem__(self, name: str) -> Purpose:
        return self._purposes[name]

    def __repr__(self) -> str:
        return f"PurposeRegistry({list(self._purposes)!r})"

    @property
    def names(self) -> tuple[str, ...]:
        """Purpose names in registration order."""
        return tuple(self._purposes)

    def by_code(self, code: str) -> Purpose | None:
        """The purpose stored in cookies as ``code``, if any."""
        for purpose in self._purposes.values():
            if purpose.code == code:
                return purpose
        return None

    def only_required(self) -> dict[str, bool]:
        """Every purpose mapped to whether it is required (the 'necessary only' choice)."""
        return {p.name: p.required for p in self}

    def all_granted(self) -> dict[str, bool]:
        """Every purpose granted (the 'accept all' choice)."""
        return {p.name: True for p in self}

    def defaults(self, mode: Mode) -> dict[str, bool]:
        """The purposes before any choice in ``mode``."""
        if mode == "opt_in":
            return self.only_required()
        return {p.name: p.required or p.default_opt_out for p in self}

    def notice_hash(self, policy_version: str, notice_text: str = "", contact: str = "") -> str:
        """SHA-256 (hex) of the canonical notice a visitor is shown.

        The canonical form is compact, key-sorted JSON of the policy version, every purpose's
        texts and flags, and the optional notice text and contact, so any wording change
        changes the hash recorded with each decision.
        """
        canonical = json.dumps(
            {
                "policy_version": policy_version,
                "purposes": [p.as_json() for p in self],
                "notice_text": notice_text,
                "contact": contact,
            },
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()
