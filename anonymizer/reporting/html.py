"""The report page: one self-contained HTML document.

Every value from STATS is escaped (page paths and campaign names come from URLs anyone
can type). Charts are ``data:`` URIs, the style sheet is inline and names only local
fonts, and a Content-Security-Policy forbids the page from loading anything else, so
opening the report makes no request of any kind. The only links are relative ones to the
CSV files written beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, datetime
from html import escape
from typing import Any
from urllib.parse import quote

from anonymizer.reporting.data import OTHER, ColumnKind, ReportData, ReportTable
from anonymizer.reporting.texts import Lang, text, value_label

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
ROW_LIMITS = {"pages": 20, "sources": 20, "campaigns": 20, "browsers": 10, "os": 10}
"""Rows shown in the page; the CSV always has all of them."""
COLLAPSED = frozenset({"traffic", "hourly"})
"""Sections whose table is folded under its chart (one row per day or hour)."""
TRANSLATED_COLUMNS = frozenset({"channel", "device_type", "purpose"})
LOWER_IS_BETTER = frozenset({"bounce_rate"})
"""Headline figures whose rise is shown in red."""

STYLE = """
:root { color-scheme: light; --fg: #111827; --muted: #6b7280; --line: #e5e7eb; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 960px; padding: 24px; color: var(--fg);
  font: 14px/1.5 system-ui, -apple-system, "Segoe UI", "Hiragino Sans", "Noto Sans CJK JP",
  "Yu Gothic", Meiryo, sans-serif; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 18px; margin: 32px 0 8px; border-bottom: 2px solid var(--line); }
.meta { color: var(--muted); margin: 0; }
.note { background: #fffbeb; border-left: 4px solid #f59e0b; padding: 8px 12px; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(200px, 1fr));
  gap: 12px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 12px; }
.card .label { color: var(--muted); font-size: 12px; }
.card .value { font-size: 22px; font-weight: 600; }
.card .delta { font-size: 12px; }
.up { color: #047857; } .down { color: #b91c1c; }
img.chart { display: block; width: 100%; height: auto; margin: 8px 0; }
table { border-collapse: collapse; width: 100%; margin: 8px 0; font-size: 13px; }
th, td { padding: 4px 8px; border-bottom: 1px solid var(--line); text-align: left; }
th { background: #f9fafb; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.other td { color: var(--muted); font-style: italic; }
.csv { font-size: 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 12px; }
"""


def format_value(value: Any, kind: ColumnKind, lang: Lang) -> str:
    """A value as shown in the page (the CSV keeps it unformatted)."""
    if value is None:
        return "—"
    if kind == "int":
        return f"{int(value):,}"
    if kind == "float":
        return f"{float(value):,.2f}" if abs(float(value)) < 10 else f"{float(value):,.1f}"
    if kind == "rate":
        return f"{float(value) * 100:.1f}%"
    if kind == "change":
        return f"{float(value) * 100:+.1f}%"
    if kind == "points":
        return f"{float(value) * 100:+.1f}{text('points_suffix', lang)}"
    if kind == "seconds":
        return f"{float(value):,.1f} {'秒' if lang == 'ja' else 's'}"
    if kind == "date":
        return value.isoformat() if isinstance(value, date) else str(value)
    return str(value)


def _sign_class(value: Any) -> str:
    if value is None or value == 0:
        return ""
    return "up" if value > 0 else "down"


def _period(start: date, end: date) -> str:
    return start.isoformat() if start == end else f"{start.isoformat()} – {end.isoformat()}"


def _cards(table: ReportTable, lang: Lang, compare: bool) -> str:
    cards = []
    for metric, kind, current, previous, difference, change in table.rows:
        # A rate changes in percentage points; a count or duration in per cent.
        delta = difference if kind == "rate" else change
        delta_kind: ColumnKind = "points" if kind == "rate" else "change"
        line = ""
        if compare and previous is not None:
            shown = format_value(delta, delta_kind, lang)
            better = -delta if delta is not None and metric in LOWER_IS_BETTER else delta
            line = (
                f'<div class="delta {_sign_class(better)}">{escape(shown)} '
                f"({escape(text('previous_short', lang))}: "
                f"{escape(format_value(previous, kind, lang))})"
                "</div>"
            )
        cards.append(
            f'<div class="card" data-metric="{escape(metric)}">'
            f'<div class="label">{escape(text(metric, lang))}</div>'
            f'<div class="value">{escape(format_value(current, kind, lang))}</div>{line}</div>'
        )
    return '<div class="cards">' + "".join(cards) + "</div>"


def _cell(value: Any, key: str, kind: ColumnKind, lang: Lang) -> str:
    shown = format_value(value, kind, lang)
    if key in TRANSLATED_COLUMNS and isinstance(value, str):
        shown = value_label(value, lang)
    elif key == "hour" and value is None:
        shown = OTHER  # the folded hours (design section 7: a NULL numeric dimension)
    classes = []
    if kind not in ("text", "date"):
        classes.append("num")
    if kind in ("change", "points"):
        classes.append(_sign_class(value))
    attr = f' class="{" ".join(c for c in classes if c)}"' if classes else ""
    return f"<td{attr}>{escape(shown)}</td>"


def _folded(table: ReportTable, row: Sequence[Any]) -> bool:
    if table.columns[0].key == "hour":
        return row[0] is None
    return OTHER in row


def render_table(table: ReportTable, lang: Lang, limit: int | None = None) -> str:
    """``table`` as an HTML table (at most ``limit`` named rows plus the folded row)."""
    if not table.rows:
        return f"<p>{escape(text('empty_table', lang))}</p>"
    named = [r for r in table.rows if not _folded(table, r)]
    folded = [r for r in table.rows if _folded(table, r)]
    rows = (named[:limit] if limit else named) + folded
    head = "".join(
        ("<th>" if c.kind in ("text", "date") else '<th class="num">')
        + f"{escape(text(c.key, lang))}</th>"
        for c in table.columns
    )
    body = []
    for row in rows:
        cls = ' class="other"' if _folded(table, row) else ""
        cells = "".join(
            _cell(v, c.key, c.kind, lang) for v, c in zip(row, table.columns, strict=True)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    note = ""
    if limit and len(named) > limit:
        shown = text("shown", lang).format(shown=limit, total=len(table.rows))
        note = f'<p class="meta">{escape(shown)}</p>'
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}"


def _csv_link(csv_href: str, name: str, lang: Lang) -> str:
    # Percent-encoded: the folder is named after the output file, which may hold any text.
    link = f"{quote(csv_href)}/{quote(name)}.csv"
    label = f"{text('csv', lang)}: {name}.csv"
    return f'<p class="csv"><a href="{escape(link)}">{escape(label)}</a></p>'


def _section(name: str, data: ReportData, charts: dict[str, str], csv_href: str, lang: Lang) -> str:
    title = text(name, lang)
    parts = [f'<section id="{name}"><h2>{escape(title)}</h2>']
    if name in charts:
        parts.append(f'<img class="chart" alt="{escape(title)}" src="{charts[name]}">')
    table = render_table(data.table(name), lang, ROW_LIMITS.get(name))
    if name in COLLAPSED:
        table = f"<details><summary>{escape(title)}</summary>{table}</details>"
    parts.append(table)
    parts.append(_csv_link(csv_href, name, lang) + "</section>")
    return "".join(parts)


SECTIONS: Sequence[str] = (
    "traffic",
    "hourly",
    "pages",
    "channels",
    "sources",
    "campaigns",
    "devices",
    "browsers",
    "os",
    "consent",
)
"""The sections after the summary, in page order; each has a table of the same name."""


def render_html(
    data: ReportData, charts: dict[str, str], csv_href: str, lang: Lang, generated: datetime
) -> str:
    """The whole report page. ``csv_href`` is the relative folder the CSV files are in."""
    period, previous = data.period, data.previous
    days = text("days_with_data", lang)
    meta = [
        f"{text('period', lang)}: {_period(period.start, period.end)} "
        f"({data.days_with_data} {days})",
        f"{text('previous', lang)}: {_period(previous.start, previous.end)} "
        f"({data.previous_days_with_data} {days})",
    ]
    if data.published_first and data.published_last:
        meta.append(
            f"{text('published', lang)}: {_period(data.published_first, data.published_last)}"
            + (f" ({data.timezone})" if data.timezone else "")
        )
    meta.append(f"{text('generated', lang)}: {generated.strftime('%Y-%m-%d %H:%M UTC')}")
    notes = []
    if not data.days_with_data:
        notes.append(text("no_data", lang))
    elif not data.previous_days_with_data:
        notes.append(text("no_previous", lang))
    elif data.previous_days_with_data < data.days_with_data:
        notes.append(
            text("partial_previous", lang).format(
                prev=data.previous_days_with_data, days=data.days_with_data
            )
        )
    privacy = text("privacy_note", lang) + (f" (k = {data.k})" if data.k else "")
    body = [
        f"<header><h1>{escape(text('title', lang))}</h1>",
        *(f'<p class="meta">{escape(m)}</p>' for m in meta),
        "</header>",
        *(f'<p class="note">{escape(n)}</p>' for n in notes),
        f'<section id="summary"><h2>{escape(text("summary", lang))}</h2>',
        _cards(data.table("summary"), lang, compare=bool(data.previous_days_with_data)),
        _csv_link(csv_href, "summary", lang) + "</section>",
        *(_section(name, data, charts, csv_href, lang) for name in SECTIONS),
        f"<footer><p>{escape(privacy)}</p></footer>",
    ]
    title = f"{text('title', lang)} {_period(period.start, period.end)}"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{lang}"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head>\n<body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )
