"""The report's charts: matplotlib figures rendered to SVG ``data:`` URIs.

Figures are built with :class:`matplotlib.figure.Figure` directly (no pyplot, so no global
state and no GUI backend). Text is drawn as paths (``svg.fonttype = path``), so a chart
looks the same in any browser without any font: Japanese labels need a CJK font only
here, at rendering time. Noto Sans CJK JP is preferred; without it the charts still render
(CJK glyphs missing) and a warning is logged once.
"""

from __future__ import annotations

import base64
import functools
import io
import logging
import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib
import numpy as np

matplotlib.use("Agg")  # never a GUI backend, even if pyplot gets imported elsewhere

from matplotlib import dates as mdates
from matplotlib import font_manager, rc_context
from matplotlib.figure import Figure

from anonymizer.reporting.data import OTHER, ReportData, ReportTable
from anonymizer.reporting.texts import Lang, text, value_label

log = logging.getLogger(__name__)

CJK_FAMILY = "Noto Sans CJK JP"
COLORS = ("#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#64748b")
PREVIOUS_COLOR = "#cbd5e1"
WIDTH = 9.0  # inches; SVG has 72 units per inch, so 648 CSS pixels before scaling
SHORT_PERIOD = 7  # days; up to this many, daily traffic is drawn as bars
MAX_LABEL = 38  # characters of a bar label before it is shortened


@functools.cache
def find_font(family: str) -> str | None:
    """``family`` if matplotlib can find it, else None (with a warning logged once)."""
    try:
        font_manager.findfont(font_manager.FontProperties(family=family), fallback_to_default=False)
    except ValueError:
        log.warning(
            "font %r not found: Japanese text in charts will not render "
            "(install fonts-noto-cjk); charts are drawn with the default font",
            family,
        )
        return None
    return family


def cjk_font() -> str | None:
    """The CJK font family for chart text (:data:`CJK_FAMILY`), or None when not installed."""
    return find_font(CJK_FAMILY)


@contextmanager
def chart_style(family: str | None) -> Iterator[None]:
    """Matplotlib settings of every chart, with ``family`` (None: the default font) first."""
    params: dict[Any, Any] = {
        "font.family": "sans-serif",
        "font.sans-serif": [family, "DejaVu Sans"] if family else ["DejaVu Sans"],
        "font.size": 9,
        "svg.fonttype": "path",
        "svg.hashsalt": "anonymizer-report",  # stable element ids: same data, same file
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#e5e7eb",
        "axes.axisbelow": True,
    }
    with rc_context(params), warnings.catch_warnings():
        if family is None:
            # Already logged once; one warning per missing glyph would drown the output.
            warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        yield


def _data_uri(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="svg", bbox_inches="tight", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _short(label: str) -> str:
    return label if len(label) <= MAX_LABEL else label[: MAX_LABEL - 1] + "…"


def traffic_chart(data: ReportData, lang: Lang) -> str:
    """Daily pageviews, visits and visitors over the period: grouped bars for a short
    period, lines with gaps (days not published) for a longer one."""
    by_date = {row[0]: row for row in data.table("traffic").rows}
    dates = data.period.dates()
    series = [
        (
            text(key, lang),
            COLORS[n],
            [by_date[d][n + 1] if d in by_date else math.nan for d in dates],
        )
        for n, key in enumerate(("pageviews", "visits", "visitors"))
    ]
    fig = Figure(figsize=(WIDTH, 3.0))
    ax = fig.add_subplot()
    if len(dates) <= SHORT_PERIOD:
        width = 0.8 / len(series)
        for n, (label, color, values) in enumerate(series):
            offsets = [i + (n - 1) * width for i in range(len(dates))]
            ax.bar(offsets, values, width=width, color=color, label=label)
        ax.set_xticks(range(len(dates)), [d.isoformat() for d in dates])
        pad = max(0.0, (3 - len(dates)) / 2)  # a day or two: bars as wide as for three days
        ax.set_xlim(-0.6 - pad, len(dates) - 0.4 + pad)
        ax.grid(axis="x", visible=False)
    else:
        days = np.array(dates, dtype="datetime64[D]")
        for label, color, values in series:
            ax.plot(days, values, marker="o", markersize=3, linewidth=1.8, color=color, label=label)
        locator = mdates.AutoDateLocator(maxticks=10)  # type: ignore[no-untyped-call]
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]
        ax.set_xlim(days[0] - np.timedelta64(1, "D"), days[-1] + np.timedelta64(1, "D"))
    peak = max((v for _, _, values in series for v in values if not math.isnan(v)), default=0)
    ax.set_ylim(0, max(peak * 1.1, 1))
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False, ncols=3)
    return _data_uri(fig)


def hourly_chart(data: ReportData, lang: Lang) -> str:
    """Pageviews per local hour of day, summed over the period."""
    rows = [r for r in data.table("hourly").rows if r[0] is not None]
    fig = Figure(figsize=(WIDTH, 2.4))
    ax = fig.add_subplot()
    ax.bar([r[0] for r in rows], [r[1] for r in rows], color=COLORS[0], width=0.8)
    ax.set_xticks(range(0, 24, 2))
    ax.set_xlim(-0.7, 23.7)
    ax.set_xlabel(text("hour", lang))
    ax.set_ylabel(text("pageviews", lang))
    return _data_uri(fig)


def bar_chart(
    labels: Sequence[str],
    values: Sequence[float],
    lang: Lang,
    *,
    metric: str,
    previous: Sequence[float | None] | None = None,
) -> str:
    """Horizontal bars, largest on top, with the previous period as thin grey bars."""
    count = len(labels)
    fig = Figure(figsize=(WIDTH, 0.6 + 0.3 * max(count, 1)))
    ax = fig.add_subplot()
    positions = list(range(count))[::-1]
    height = 0.7 if previous is None else 0.42
    ax.barh(
        [p + (0.2 if previous else 0) for p in positions],
        values,
        height=height,
        color=COLORS[0],
        label=text("current", lang),
    )
    if previous is not None:
        ax.barh(
            [p - 0.2 for p in positions],
            [v or 0 for v in previous],
            height=height,
            color=PREVIOUS_COLOR,
            label=text("previous_period", lang),
        )
        ax.legend(loc="lower right", frameon=False)
    ax.set_yticks(positions, [_short(label) for label in labels])
    ax.set_xlabel(text(metric, lang))
    ax.grid(axis="y", visible=False)
    return _data_uri(fig)


def consent_chart(table: ReportTable, lang: Lang) -> str:
    """Granted and refused shares per purpose, as stacked horizontal bars."""
    purposes = [value_label(p, lang) for p in table.values("purpose")[::-1]]
    granted = [(r or 0.0) * 100 for r in table.values("rate")[::-1]]
    fig = Figure(figsize=(WIDTH, 0.6 + 0.35 * max(len(purposes), 1)))
    ax = fig.add_subplot()
    ax.barh(purposes, granted, color=COLORS[2], label=text("granted", lang))
    ax.barh(
        purposes,
        [100 - g for g in granted],
        left=granted,
        color=COLORS[3],
        label=text("refused", lang),
    )
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.25), frameon=False, ncols=2)
    ax.grid(axis="y", visible=False)
    return _data_uri(fig)


def _label(row: Sequence[Any], dims: int, lang: Lang) -> str:
    return " / ".join(OTHER if v is None else value_label(str(v), lang) for v in row[:dims])


def _top(table: ReportTable, dims: int, limit: int) -> list[tuple[Any, ...]]:
    # The folded row is left out of bar charts: its size says nothing about one value.
    return [r for r in table.rows if OTHER not in r[:dims]][:limit]


def render_charts(data: ReportData, lang: Lang) -> dict[str, str]:
    """Every chart of the report as a ``data:`` URI, keyed by section; sections without
    rows get no chart."""
    charts: dict[str, str] = {}
    specs = {
        # section: (dimension columns, measure column, previous column or None, bars)
        "pages": (1, "pageviews", "previous_pageviews", 10),
        "channels": (1, "visits", "previous_visits", 10),
        "campaigns": (3, "visits", "previous_visits", 10),
        "devices": (1, "visitors", None, 8),
        "browsers": (1, "visitors", None, 8),
    }
    with chart_style(cjk_font()):
        if data.table("traffic").rows:
            charts["traffic"] = traffic_chart(data, lang)
        if any(r[0] is not None for r in data.table("hourly").rows):
            charts["hourly"] = hourly_chart(data, lang)
        for section, (dims, metric, prev, limit) in specs.items():
            table = data.table(section)
            rows = _top(table, dims, limit)
            if not rows:
                continue
            index = [c.key for c in table.columns].index(metric)
            before = None
            if prev is not None and data.previous_days_with_data:
                previous_index = [c.key for c in table.columns].index(prev)
                before = [r[previous_index] for r in rows]
            charts[section] = bar_chart(
                [_label(r, dims, lang) for r in rows],
                [r[index] or 0 for r in rows],
                lang,
                metric=metric,
                previous=before,
            )
        if data.table("consent").rows:
            charts["consent"] = consent_chart(data.table("consent"), lang)
    return charts
