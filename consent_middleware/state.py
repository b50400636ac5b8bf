"""The consent state an application sees for one request."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType


def _frozen(mapping: Mapping[str, bool]) -> Mapping[str, bool]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True, slots=True)
class ConsentState:
    """Immutable view of what this visitor has consented to, for this request.

    ``purposes`` maps every registered purpose name to whether it is granted right now
    (after GPC and policy-version rules were applied). ``aid`` is the anonymous id and is
    set only while ``statistics`` is granted.
    """

    purposes: Mapping[str, bool]
    policy_version: str
    needs_prompt: bool
    gpc: bool
    receipt_id: str | None = None
    aid: str | None = None
    decided_at: datetime | None = None
    has_decision: bool = field(default=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "purposes", _frozen(self.purposes))

    def granted(self, purpose: str) -> bool:
        """Whether ``purpose`` is granted; unknown purposes are never granted."""
        return bool(self.purposes.get(purpose, False))

    @property
    def granted_purposes(self) -> tuple[str, ...]:
        """Names of the granted purposes, in registry order."""
        return tuple(name for name, on in self.purposes.items() if on)
