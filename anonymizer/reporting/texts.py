"""Every word of the marketing report, in English and Japanese."""

from __future__ import annotations

from typing import Literal

Lang = Literal["en", "ja"]

TEXTS: dict[str, dict[Lang, str]] = {
    "title": {"en": "Marketing report", "ja": "マーケティングレポート"},
    "period": {"en": "Period", "ja": "期間"},
    "previous": {"en": "Compared with", "ja": "比較期間"},
    "previous_short": {"en": "previous", "ja": "前期"},
    "previous_period": {"en": "Previous period", "ja": "比較期間"},
    "days_with_data": {"en": "day(s) with data", "ja": "日分のデータ"},
    "published": {"en": "Published statistics", "ja": "公開統計の期間"},
    "generated": {"en": "Generated", "ja": "作成日時"},
    "no_data": {
        "en": "No statistics are published for this period.",
        "ja": "この期間に公開された統計はありません。",
    },
    "partial_previous": {
        "en": "The previous period has data on only {prev} of {days} days: changes compare "
        "unequal spans.",
        "ja": "比較期間のデータは {days} 日中 {prev} 日分のみです。増減は期間の長さが異なる"
        "数値の比較です。",
    },
    "no_previous": {
        "en": "No data for the previous period: no comparison.",
        "ja": "比較期間のデータがないため、比較はありません。",
    },
    "privacy_note": {
        "en": "Anonymous statistics: values seen by fewer than k visitors on a day are folded "
        "into “(other)”; visitors are counted per day (a person seen on several days counts "
        "once per day). Full tables are in the CSV files.",
        "ja": "匿名化された統計です。1日の訪問者数が k 人未満の値は「(other)」にまとめています。"
        "訪問者数は日ごとの数の合計です（複数日に訪れた人は日数分数えます）。"
        "全行は CSV ファイルにあります。",
    },
    "csv": {"en": "CSV", "ja": "CSV"},
    "shown": {
        "en": "Top {shown} of {total} rows shown.",
        "ja": "{total} 行中の上位 {shown} 行を表示。",
    },
    "empty_table": {"en": "No rows in this period.", "ja": "この期間の行はありません。"},
    # Sections
    "summary": {"en": "Summary", "ja": "概要"},
    "traffic": {"en": "Traffic over time", "ja": "アクセス推移"},
    "hourly": {"en": "Traffic by hour of day", "ja": "時間帯別アクセス"},
    "pages": {"en": "Top pages", "ja": "人気ページ"},
    "channels": {"en": "Channels", "ja": "チャネル"},
    "sources": {"en": "Sources", "ja": "参照元"},
    "campaigns": {"en": "Campaigns", "ja": "キャンペーン"},
    "devices": {"en": "Devices", "ja": "デバイス"},
    "browsers": {"en": "Browsers", "ja": "ブラウザ"},
    "os": {"en": "Operating systems", "ja": "OS"},
    "consent": {"en": "Consent rates", "ja": "同意率"},
    # Metrics and columns
    "metric": {"en": "Metric", "ja": "指標"},
    "current": {"en": "This period", "ja": "今期"},
    "difference": {"en": "Difference", "ja": "差"},
    "change": {"en": "Change", "ja": "増減"},
    "pageviews": {"en": "Pageviews", "ja": "ページビュー"},
    "visits": {"en": "Visits", "ja": "訪問数"},
    "visitors": {"en": "Visitors (daily, summed)", "ja": "訪問者数（日別の合計）"},
    "avg_daily_visitors": {"en": "Visitors per day", "ja": "1日あたり訪問者数"},
    "pages_per_visit": {"en": "Pages per visit", "ja": "訪問あたりページ数"},
    "bounce_rate": {"en": "Bounce rate", "ja": "直帰率"},
    "avg_visit_seconds": {"en": "Average visit length", "ja": "平均滞在時間"},
    "statistics_consent_rate": {
        "en": "Statistics consent rate",
        "ja": "統計目的の同意率",
    },
    "date": {"en": "Date", "ja": "日付"},
    "hour": {"en": "Hour", "ja": "時"},
    "page": {"en": "Page", "ja": "ページ"},
    "entries": {"en": "Entries", "ja": "入口数"},
    "previous_pageviews": {"en": "Pageviews (previous)", "ja": "ページビュー（比較期間）"},
    "previous_visits": {"en": "Visits (previous)", "ja": "訪問数（比較期間）"},
    "share": {"en": "Share", "ja": "割合"},
    "source": {"en": "Source", "ja": "参照元"},
    "channel": {"en": "Channel", "ja": "チャネル"},
    "utm_source": {"en": "utm_source", "ja": "utm_source"},
    "utm_medium": {"en": "utm_medium", "ja": "utm_medium"},
    "utm_campaign": {"en": "utm_campaign", "ja": "utm_campaign"},
    "device_type": {"en": "Device", "ja": "デバイス"},
    "browser": {"en": "Browser", "ja": "ブラウザ"},
    "purpose": {"en": "Purpose", "ja": "目的"},
    "granted": {"en": "Granted", "ja": "同意"},
    "refused": {"en": "Refused", "ja": "拒否"},
    "rate": {"en": "Consent rate", "ja": "同意率"},
    "previous_rate": {"en": "Rate (previous)", "ja": "同意率（比較期間）"},
    "points_suffix": {"en": " pt", "ja": " pt"},
    "other_hour": {"en": "(other)", "ja": "(other)"},
}

VALUES_JA: dict[str, str] = {
    # channel values (design section 7) and device types, as a Japanese reader calls them
    "direct": "直接",
    "search": "検索",
    "social": "ソーシャル",
    "email": "メール",
    "referral": "参照サイト",
    "internal": "サイト内",
    "campaign": "キャンペーン",
    "desktop": "デスクトップ",
    "mobile": "モバイル",
    "tablet": "タブレット",
    "necessary": "必須",
    "statistics": "統計",
    "marketing": "マーケティング",
    "third_party": "第三者",
}


def value_label(value: str, lang: Lang) -> str:
    """How a data value (a channel, device type or purpose) is shown in ``lang``."""
    return VALUES_JA.get(value, value) if lang == "ja" else value


def text(key: str, lang: Lang) -> str:
    """The ``lang`` text for ``key``; an unknown key (a data value) is returned unchanged."""
    entry = TEXTS.get(key)
    return entry[lang] if entry else key
