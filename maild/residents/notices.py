"""Texts of the mails a resident receives about their subscription (not alerts).

Pure: each function returns ``(subject, body)``; ``maild.residents.registration`` puts
them in the outbox. Japanese first, English second, plain text for phones.
"""

from __future__ import annotations

from collections.abc import Sequence

from maild.residents.terms import AREAS, CATEGORIES, MANAGE, listing

RULE = "――――――――――"


def register_notice(service: str, url: str) -> tuple[str, str]:
    body = f"""{service}への登録のお申し込みを受け付けました（仮登録）。

24時間以内に次のURLを開き、{AREAS.ja}と{CATEGORIES.ja}を選んで
「登録」を押すと、登録が完了します。

{url}

このメールに心当たりがない場合は、このまま削除してください。
登録はされません。

{RULE}
We received a request to subscribe to {service}.
Open the URL above within 24 hours, choose the {AREAS.en} and the
{CATEGORIES.en} you want, and press "登録" (Register) to finish.
If you did not ask for this, delete this mail; nothing will be registered.
"""
    return "仮登録のお知らせ", body


def complete_notice(
    service: str, manage_url: str, areas: Sequence[str], categories: Sequence[str]
) -> tuple[str, str]:
    body = f"""{service}への登録が完了しました。

{AREAS.ja}: {listing(areas)}
{CATEGORIES.ja}: {listing(categories)}

{MANAGE.ja}は、次のURLからできます。
このメールは大切に保管してください。

{RULE}
{MANAGE.ja}はこちら
{manage_url}

{RULE}
Your subscription to {service} is complete. Use the URL above to change
your {AREAS.en} or {CATEGORIES.en}, or to cancel the subscription.
"""
    return "登録完了のお知らせ", body


def manage_notice(service: str, manage_url: str) -> tuple[str, str]:
    body = f"""このメールアドレスは{service}に登録済みです。

{MANAGE.ja}は、次のURLからできます。

{RULE}
{MANAGE.ja}はこちら
{manage_url}

このメールに心当たりがない場合は、このまま削除してください。
登録内容は変わりません。

{RULE}
This address is already subscribed to {service}. Use the URL above to
change your {AREAS.en} or {CATEGORIES.en}, or to cancel. If you did not
ask for this mail, delete it; nothing has changed.
"""
    return "登録内容の確認", body
