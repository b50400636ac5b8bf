"""The ten published tables (design section 7), each defined once in its own module."""

from __future__ import annotations

from anonymizer.tables.base import TableDef
from anonymizer.tables.campaigns_daily import CAMPAIGNS_DAILY
from anonymizer.tables.consent_daily import CONSENT_DAILY
from anonymizer.tables.hourly_traffic import HOURLY_TRAFFIC
from anonymizer.tables.languages_daily import LANGUAGES_DAILY
from anonymizer.tables.pages_daily import PAGES_DAILY
from anonymizer.tables.performance_daily import PERFORMANCE_DAILY
from anonymizer.tables.retention_weekly import RETENTION_WEEKLY
from anonymizer.tables.sources_daily import SOURCES_DAILY
from anonymizer.tables.technology_daily import TECHNOLOGY_DAILY
from anonymizer.tables.traffic_daily import TRAFFIC_DAILY

TABLES: dict[str, TableDef] = {
    t.name: t
    for t in (
        TRAFFIC_DAILY,
        PAGES_DAILY,
        SOURCES_DAILY,
        CAMPAIGNS_DAILY,
        TECHNOLOGY_DAILY,
        HOURLY_TRAFFIC,
        LANGUAGES_DAILY,
        CONSENT_DAILY,
        PERFORMANCE_DAILY,
        RETENTION_WEEKLY,
    )
}
"""Every published table by name, in the order of design section 7."""

DAILY_TABLES: tuple[str, ...] = tuple(n for n, t in TABLES.items() if t.partition == "date")
"""Tables partitioned by local date."""

__all__ = ["DAILY_TABLES", "TABLES", "TableDef"]
