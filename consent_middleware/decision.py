"""A consent decision: what the ledger records each time a visitor's choice changes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

DecisionSource = Literal["banner", "api", "form", "gpc", "admin"]
"""Where a decision came from (design section 6)."""

DecisionAction = Literal["grant", "change", "withdraw", "gpc", "renewal", "erase"]
"""What kind of decision it was."""


@dataclass(frozen=True, slots=True)
class Decision:
    """One consent decision, as written to the consent ledger.

    ``granted`` and ``refused`` together name every registered purpose. ``notice_hash`` is
    the SHA-256 (hex) of the notice text the visitor was shown when deciding.
    """

    ts: datetime
    receipt_id: str
    action: DecisionAction
    source: DecisionSource
    granted: tuple[str, ...]
    refused: tuple[str, ...]
    policy_version: str
    notice_hash: str
    gpc: bool = False
