"""``consent_daily``: consent decisions per purpose, from the consent ledger.

There is no visitor id in a decision, so the threshold counts decisions: a (date, purpose)
row is published when at least k decisions named the purpose; smaller rows fold into
``(other)``, itself published only with k decisions. Days are not gated on pageviews.
"""

from __future__ import annotations

import pyarrow as pa

from anonymizer.tables.base import TableDef

CONSENT_DAILY = TableDef(
    name="consent_daily",
    columns=(
        ("date", pa.date32()),
        ("purpose", pa.string()),
        ("granted", pa.int64()),
        ("refused", pa.int64()),
    ),
    partition="date",
    dimensions=("purpose",),
    source="SELECT date, purpose, granted, refused FROM consent_decisions",
    measures=(("granted", "SUM(granted)"), ("refused", "SUM(refused)")),
    grain="decision",
    gated=False,
)
"""Granted and refused count decisions (grant, change, withdraw, gpc, renewal)."""
