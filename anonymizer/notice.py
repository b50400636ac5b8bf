"""The public notice about the anonymized data (APPI Art. 43(3); policy sections 6-4 and 10).

Whoever produces anonymously processed information must publish the categories of
information it contains, and the outline of how it was processed. The notice is rendered
from the published tables themselves, in English and Japanese, and written into STATS on
every run; ``anonymizer notice`` prints it.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from anonymizer.tables import TABLES

MECHANISM_EN = "discrete Laplace noise (the OpenDP library)"
MECHANISM_JA = "離散ラプラス分布に従うノイズ（OpenDP ライブラリ）"

Language = Literal["en", "ja"]
LANGUAGES: tuple[Language, ...] = ("en", "ja")


@dataclass(frozen=True, slots=True)
class Contact:
    """Where to send questions about the anonymized data (policy section 13)."""

    office: str = "Complaint Consultation Office, Smaregi, Inc."
    office_ja: str = "株式会社スマレジ 苦情相談窓口"
    email: str = "info[@]smaregi.jp"
    address: str = "3F 4-2-12 Hommachi, Chuo-ku, Osaka 541-0053, Japan"
    address_ja: str = "〒541-0053 大阪府大阪市中央区本町4-2-12 3F"
    phone: str = "+81-6-7777-1772"


DEFAULT_CONTACT = Contact()


@dataclass(frozen=True, slots=True)
class PrivacyStatement:
    """What the notice states about differential privacy when a run adds noise."""

    epsilon: float
    """Epsilon per day and release, over every table."""
    delta: float
    """Delta per day and release."""
    budget_per_day: float
    """The most epsilon all releases of one day may spend together."""
    max_rows: int
    """Rows of one table one visitor contributes to per day, at most."""
    max_pageviews: int
    """What one visitor adds to one figure per day, at most."""
    withheld_tables: tuple[str, ...] = ()
    """Tables not published under differential privacy."""

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> PrivacyStatement | None:
        """The statement of the last run recorded in ``manifest`` (None: no noise)."""
        block = manifest.get("differential_privacy")
        if not isinstance(block, Mapping):
            return None
        bounds = block["contribution_bounds"]
        return cls(
            epsilon=float(block["epsilon_per_day"]),
            delta=float(block["delta_per_day"]),
            budget_per_day=float(block["budget_per_day"]),
            max_rows=int(bounds["max_rows_per_visitor"]),
            max_pageviews=int(bounds["max_count_per_visitor_and_row"]),
            withheld_tables=tuple(block.get("withheld_tables", ())),
        )


_CATEGORIES_EN = {
    "traffic_daily": "daily totals of page views, visits and visitors, bounce rate, visit length",
    "pages_daily": "page views, visitors and entries per page (page addresses without ids)",
    "sources_daily": "visits per referring site category and channel",
    "campaigns_daily": "visits per advertising campaign tag (utm_source, medium, campaign)",
    "technology_daily": "visitors per device type, browser family and operating system family",
    "hourly_traffic": "page views and visitors per hour of the day",
    "languages_daily": "visitors per browser language",
    "consent_daily": "numbers of consent decisions granting or refusing each purpose",
    "performance_daily": "request counts and response times per page and status class",
    "retention_weekly": "how many consenting visitors return in later weeks (weekly cohorts)",
}
_CATEGORIES_JA = {
    "traffic_daily": "日別のページビュー数・訪問数・訪問者数、直帰率、平均滞在時間",
    "pages_daily": "ページ（識別子を除いたアドレス）別のページビュー数・訪問者数・入口数",
    "sources_daily": "参照元の種類とチャネル別の訪問数",
    "campaigns_daily": "広告キャンペーンのタグ（utm_source・medium・campaign）別の訪問数",
    "technology_daily": "端末の種類・ブラウザの系統・OS の系統別の訪問者数",
    "hourly_traffic": "時間帯別のページビュー数・訪問者数",
    "languages_daily": "ブラウザの言語別の訪問者数",
    "consent_daily": "利用目的ごとの同意・拒否の件数",
    "performance_daily": "ページと応答状態の区分別のリクエスト数と応答時間",
    "retention_weekly": "統計目的に同意した訪問者が後の週に再訪した数（週単位の集計）",
}


def render_notice(
    lang: Language,
    *,
    k: int,
    timezone: str,
    contact: Contact = DEFAULT_CONTACT,
    privacy: PrivacyStatement | None = None,
) -> str:
    """The notice text (Markdown) in ``lang``; ``privacy`` adds the differential privacy
    statement (mechanism, epsilon, delta, contribution bounds, budget)."""
    if lang == "ja":
        return _render_ja(k=k, timezone=timezone, contact=contact, privacy=privacy)
    return _render_en(k=k, timezone=timezone, contact=contact, privacy=privacy)


def _number(value: float) -> str:
    return f"{value:.6g}"


def _privacy_en(k: int, privacy: PrivacyStatement | None) -> tuple[str, str]:
    """Steps 4 and 5 of the outline in English."""
    if privacy is None:
        return (
            "4. Each visitor's contribution to any figure is limited.",
            f"5. Figures are published only where at least {k} distinct visitors support them;"
            ' smaller\n   groups are combined into an "(other)" row or not published at all.',
        )
    withheld = ", ".join(f"`{t}`" for t in privacy.withheld_tables) or "none"
    bound = (
        f"4. Each visitor's contribution is limited per day: at most {privacy.max_rows} rows of"
        f" each table, and at most {privacy.max_pageviews} to any one figure."
    )
    noise = (
        f"5. Differential privacy: random {MECHANISM_EN} is added to every figure, with"
        f" epsilon = {_number(privacy.epsilon)} and delta = {_number(privacy.delta)} per day"
        " and release (the unit protected is the records of one visitor on one day). A value"
        " (a page, source, browser ...) is published only when its noisy number of visitors"
        f" reaches a threshold set from epsilon and delta (and at least {k}), so that a value"
        " seen by a single visitor appears with probability at most delta. All releases of"
        f" one day together spend at most epsilon = {_number(privacy.budget_per_day)}; every"
        f" re-publication of a day counts again. Not published in this mode: {withheld}."
        " Response-time percentiles and the average visit length are left empty."
    )
    return _wrap(bound), _wrap(noise)


def _wrap(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=90, subsequent_indent="   ", break_on_hyphens=False)


def _privacy_ja(k: int, privacy: PrivacyStatement | None) -> tuple[str, str]:
    """Steps 4 and 5 of the outline in Japanese (lines broken by hand: no spaces to wrap)."""
    if privacy is None:
        return (
            "4. 一人の訪問者が各数値に与える影響に上限を設けます。",
            f"5. 異なる訪問者が {k} 人以上いる数値のみを公表し、それ未満の区分は「(other)」に"
            "まとめるか\n   公表しません。",
        )
    withheld = "、".join(f"`{t}`" for t in privacy.withheld_tables) or "なし"
    bound = (
        f"4. 一人の訪問者が一日に与える影響に上限を設けます（各表につき {privacy.max_rows} 行"
        f"まで、\n   一つの数値につき {privacy.max_pageviews} まで）。"
    )
    lines = (
        f"5. 差分プライバシー：すべての数値に{MECHANISM_JA}を加えます。",
        f"一日・一回の公表あたり ε（イプシロン）= {_number(privacy.epsilon)}、"
        f"δ（デルタ）= {_number(privacy.delta)} です",
        "（保護の単位は一人の訪問者の一日分の記録です）。",
        "ページ・参照元・ブラウザなどの値は、ノイズを加えた訪問者数が ε と δ から定めた",
        f"しきい値（{k} 以上）に達した場合にのみ公表し、一人の訪問者だけが持つ値が公表される",
        "確率は δ 以下です。同じ日のすべての公表を合わせた ε は"
        f" {_number(privacy.budget_per_day)} 以下とし、",
        "同じ日を再び公表するたびにその分も数えます。",
        f"この方式で公表しない表：{withheld}。",
        "応答時間の分位数と平均滞在時間は空欄とします。",
    )
    return bound, "\n   ".join(lines)


def _render_en(*, k: int, timezone: str, contact: Contact, privacy: PrivacyStatement | None) -> str:
    tables = "\n".join(f"- `{name}`: {_CATEGORIES_EN[name]}" for name in TABLES)
    bound, threshold = _privacy_en(k, privacy)
    return f"""# Public notice on anonymously processed information

We produce anonymously processed information (Act on the Protection of Personal
Information, Article 43) from the access records of our websites and services, and
publish this notice under Article 43(3).

## Categories of information contained

{tables}

No table contains a name, an e-mail address, an IP address, a user agent string, a
cookie or any other identifier, a query string, or the address of a referring page.

## How the information was processed (outline)

1. Records of people who asked for erasure are removed.
2. Cross-day statistics use only visits recorded with consent to statistics.
3. Identifiers (anonymous ids, daily hashed visitor keys, raw browser strings, referring
   addresses) are deleted; times become a local date and hour ({timezone}); browsers become
   a browser family, OS family and device type; automated clients (bots) are excluded;
   referring sites become a source category and channel; ids in page addresses are removed.
{bound}
{threshold}

## Contact

{contact.office}
E-mail: {contact.email}
Address: {contact.address}
{"Tel: " + contact.phone if contact.phone else ""}
"""


def _render_ja(*, k: int, timezone: str, contact: Contact, privacy: PrivacyStatement | None) -> str:
    tables = "\n".join(f"- `{name}`：{_CATEGORIES_JA[name]}" for name in TABLES)
    bound, threshold = _privacy_ja(k, privacy)
    return f"""# 匿名加工情報の作成に関する公表

当社は、ウェブサイトおよびサービスのアクセス記録から匿名加工情報（個人情報の保護に関する
法律第43条）を作成しており、同条第3項に基づき以下のとおり公表します。

## 匿名加工情報に含まれる個人に関する情報の項目

{tables}

いずれの表にも、氏名、メールアドレス、IP アドレス、ユーザーエージェント文字列、Cookie
その他の識別子、クエリ文字列、参照元ページのアドレスは含まれません。

## 加工の方法（概要）

1. 削除を求められた方の記録を除きます。
2. 日をまたぐ集計には、統計目的への同意がある記録のみを用います。
3. 識別子（匿名 ID、日ごとにハッシュ化した訪問者キー、ブラウザ文字列、参照元アドレス）を
   削除し、日時は地域の日付と時間帯（{timezone}）に、ブラウザは系統・OS・端末の種類に、
   参照元は種類とチャネルに置き換え、自動アクセス（ボット）を除き、ページのアドレスから
   ID を除きます。
{bound}
{threshold}

## お問い合わせ窓口

{contact.office_ja}
E-mail：{contact.email}
住所：{contact.address_ja}
{"電話：" + contact.phone if contact.phone else ""}
"""


def notice_filename(lang: Language) -> str:
    """File name of the notice in STATS."""
    return f"notice.{lang}.md"
