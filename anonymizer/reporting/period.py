"""The reporting period and the previous period of equal length it is compared with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

DEFAULT_DAYS = 28
"""Without ``--from``, a report covers the last four weeks that have published data."""
MAX_DAYS = 3 * 366
"""The longest period one report covers (its charts and tables have a point per day)."""


@dataclass(frozen=True, slots=True)
class Period:
    """An inclusive range of local dates."""

    start: date
    end: date

    @property
    def days(self) -> int:
        """Number of days in the period (at least 1)."""
        return (self.end - self.start).days + 1

    def previous(self) -> Period:
        """The period of the same length that ends the day before this one starts."""
        end = self.start - timedelta(days=1)
        return Period(end - timedelta(days=self.days - 1), end)

    def dates(self) -> list[date]:
        """Every date of the period, oldest first."""
        return [self.start + timedelta(days=i) for i in range(self.days)]


class PeriodError(ValueError):
    """The requested period is unusable (e.g. it ends before it starts)."""


def resolve_period(
    start: date | None, end: date | None, first: date | None, last: date | None
) -> Period:
    """The period to report on, from the requested bounds and the published date range.

    A missing end is the last published day (or ``start``, if later); a missing start is
    :data:`DEFAULT_DAYS` days before the end, but not before the first published day (so the
    default report has no empty days in front). With no published day at all, today stands
    in for the range.
    """
    if end is None:
        end = last or date.today()
        if start is not None and start > end:
            end = start  # a period after the published data: an empty report, not an error
    if start is None:
        start = end - timedelta(days=DEFAULT_DAYS - 1)
        if first is not None and first <= end:
            start = max(start, first)
    if start > end:
        raise PeriodError(
            f"the period starts after it ends ({start} > {end}): pass --from on or before --to"
        )
    period = Period(start, end)
    if period.days > MAX_DAYS:
        raise PeriodError(
            f"the period {start} .. {end} is {period.days} days long: a report covers at most "
            f"{MAX_DAYS} days"
        )
    try:
        period.previous()
    except OverflowError:
        raise PeriodError(f"no previous period before {start}: pass a later --from") from None
    return period
