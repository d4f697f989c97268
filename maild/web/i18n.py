"""Texts of the resident-facing pages, Japanese first and English second (docs/web-routes.md).

Pure data and one lookup function. Texts are plain strings with ``{name}``
placeholders; the templates escape them like any other value, so no text here
may hold HTML. Japanese is the default; ``?lang=en`` picks English.

A page title (the ``*_title`` keys) marks its phrase boundaries with ``|``
(:data:`PHRASE_MARK`): a heading breaks only there on a narrow phone, never inside a
word (``<wbr>`` and ``word-break: keep-all``); :func:`plain` drops the marks.
"""

from __future__ import annotations

from maild.residents.terms import AREAS, CATEGORIES, HOURS, MANAGE

LANGS = ("ja", "en")
DEFAULT_LANG = "ja"
PHRASE_MARK = "|"

TEXTS: dict[str, tuple[str, str]] = {
    # --- frame
    "switch_lang": ("English", "日本語"),
    "back_to_signup": ("登録の申し込みページへ", "Go to the sign-up page"),
    # --- signup
    "signup_title": ("メール配信の登録|（パソコンから）", "Sign up (from a computer)"),
    "signup_intro": (
        "メールアドレスを入力して「送信」を押してください。登録用のURLを書いたメールを送ります。",
        'Enter your mail address and press "Send". We will mail you a URL to finish signing up.',
    ),
    "signup_blank_mail": (
        "携帯電話やスマートフォンからは、次のアドレスに空メール（件名・本文なし）を送っても登録できます。",
        "From a phone you can also sign up by sending an empty mail to this address:",
    ),
    "address_label": ("メールアドレス", "Mail address"),
    "send": ("送信", "Send"),
    "signup_invalid": (
        "メールアドレスの形式が正しくありません。確かめて、入力し直してください。",
        "This is not a valid mail address. Please check it and enter it again.",
    ),
    "signup_sent_title": ("メールを|確認して|ください", "Please check your mail"),
    "signup_sent_body": (
        "入力されたアドレスがメールを受け取れる場合、登録用のURLを書いたメールを送りました。"
        "24時間以内にURLを開いて登録を済ませてください。",
        "If the address you entered can receive mail, we have sent it a mail with a URL."
        " Open that URL within 24 hours to finish.",
    ),
    "signup_sent_registered": (
        f"すでに登録済みのアドレスには、{MANAGE.ja}用のURLを送ります。"
        "同じアドレスへのメールは{minutes}分に1通までです。",
        "An address that is already subscribed gets the URL for changing or cancelling"
        " instead. We send at most one such mail to an address every {minutes} minutes.",
    ),
    "too_many_title": ("ただいま|混み合って|います", "We are busy just now"),
    "too_many_body": (
        "ただいま登録の申し込みが集中しているため、受け付けられませんでした。"
        "メールは送っていません。",
        "We are receiving a great many sign-up requests just now and could not accept"
        " yours. No mail has been sent.",
    ),
    "too_many_wait": (
        "しばらく（{minutes}分ほど）たってから、もう一度送信してください。",
        "Please send the form again in a little while (about {minutes} min).",
    ),
    "too_many_blank_mail": (
        "携帯電話やスマートフォンからは、次のアドレスに空メールを送っても登録できます。",
        "From a phone you can also sign up by sending an empty mail to this address:",
    ),
    "not_arrived": (
        "メールが届かないときは、迷惑メール設定で「{domain}」からのメールを受信できるようにして"
        "（指定受信）から、{minutes}分たったあとで、このページでもう一度アドレスを送信して"
        "ください。",
        'If no mail arrives, allow mail from "{domain}" in your spam settings; then, after'
        " {minutes} minutes, send your address on this page again.",
    ),
    "complete_not_arrived": (
        "メールが届かないときは、迷惑メール設定で「{domain}」からのメールを受信できるようにして"
        "（指定受信）から、{minutes}分たったあとで、次のアドレスに空メールを送ってください。"
        "変更・解除用のURLをお送りします。",
        'If the mail does not arrive, allow mail from "{domain}" in your spam settings; then,'
        " after {minutes} minutes, send an empty mail to this address and we will send you"
        " the URL for changing or cancelling.",
    ),
    # --- register / manage form
    "register_title": ("登録内容の|入力", "Choose what you receive"),
    "register_intro": (
        "{address} で受け取る地域と情報の種類を選び、「登録」を押してください。",
        'Choose the areas and kinds of information for {address}, then press "Register".',
    ),
    "register_button": ("登録", "Register"),
    "manage_title": ("利用者情報の|変更・解除", MANAGE.en_heading),
    "manage_intro": (
        "{address} の登録内容です。変えたいところを選び直して「変更する」を押してください。",
        'This is the subscription of {address}. Change your choices and press "Save changes".',
    ),
    "update_button": ("変更する", "Save changes"),
    "areas_legend": (AREAS.ja, AREAS.en_heading),
    "areas_hint": (
        "いくつでも選べます。ブロック名を押すと、そのブロックの警察署と市区町村が表示されます。",
        "Choose as many as you like. Tap a block to show its police stations and municipalities.",
    ),
    "whole_block": ("{name}全体", "All of {name}"),
    "chosen_count": ("{count}件選択中", "{count} chosen"),
    "stations_heading": ("警察署の管轄で選ぶ", "By police station"),
    "municipalities_heading": ("市区町村で選ぶ", "By municipality"),
    "categories_legend": (CATEGORIES.ja, CATEGORIES.en_heading),
    "categories_hint": (
        "受け取りたくない種類のチェックを外してください。",
        "Untick the kinds you do not want.",
    ),
    "hours_legend": (HOURS.ja, HOURS.en_heading),
    "hours_hint": (
        "夜間などに受け取りたくないときは、受け取る時間帯を選んでください。時間帯の外に送られた"
        "情報は、時間帯の始まりに届きます。いつでも受け取るときは「指定しない」のままにします。",
        "If you do not want mail at night, choose the hours you receive it. What is sent outside"
        ' them reaches you when they start. Leave "Not set" to receive it any time.',
    ),
    "hours_start": ("開始", "From"),
    "hours_end": ("終了", "Until"),
    "hours_not_set": ("指定しない", "Not set"),
    "hours_urgent": (
        "緊急の情報も、この時間帯にだけ受け取る（選ばなければ、緊急の情報はすぐ届きます）",
        "Urgent alerts also only in these hours (otherwise urgent alerts come at once)",
    ),
    "cancel_heading": ("登録の解除", "Cancel the subscription"),
    "cancel_explain": (
        "解除すると、このアドレスの登録情報はすべて削除され、メールは届かなくなります。"
        "もう一度受け取るには、改めて登録してください。",
        "Cancelling deletes everything we hold about this address and stops all mail."
        " To receive mail again, sign up again.",
    ),
    "cancel_button": ("登録を解除する", "Cancel my subscription"),
    "cancel_confirm_title": ("本当に|解除しますか", "Do you really want to cancel?"),
    "cancel_confirm_intro": (
        "{address} の登録を解除します。よろしければ「登録を解除する」を押してください。",
        'This cancels the subscription of {address}. Press "Cancel my subscription" to go on.',
    ),
    "cancel_keep": (
        "解除しないで、変更・解除のページに戻る",
        "Keep my subscription and go back to the change page",
    ),
    # --- results
    "registered_title": ("登録が|完了しました", "You are subscribed"),
    "registered_body": (
        "{address} に「登録完了のお知らせ」メールを送りました。"
        f"{MANAGE.ja}用のURLはそのメールに書いてあります。大切に保管してください。",
        'We have sent "登録完了のお知らせ" (subscription complete) to {address}. It holds the'
        " URL for changing or cancelling your subscription: please keep it.",
    ),
    "updated_title": ("変更しました", "Your changes are saved"),
    "updated_body": (
        "これからは次の内容でメールをお送りします。",
        "From now on you will receive mail for these choices.",
    ),
    "back_to_manage": ("変更・解除のページに戻る", "Back to the change page"),
    "summary_areas": (AREAS.ja, AREAS.en_heading),
    "summary_categories": (CATEGORIES.ja, CATEGORIES.en_heading),
    "summary_hours": (HOURS.ja, HOURS.en_heading),
    "cancelled_title": ("登録を|解除しました", "Your subscription is cancelled"),
    "cancelled_body": (
        "登録情報は削除しました。今後、メールはお送りしません。ご利用ありがとうございました。",
        "We have deleted your details and will send you no more mail. Thank you for using"
        " the service.",
    ),
    "unsubscribe_manage_instead": (
        f"{AREAS.ja}や{CATEGORIES.ja}を変えるだけなら、こちら",
        f"To change your {AREAS.en} or {CATEGORIES.en} instead, go here",
    ),
    # --- choices that cannot be saved
    "unknown_area": ("不明な地域が選ばれました。", "An unknown area was chosen."),
    # --- link problems (the link changes nothing in each case)
    "invalid_title": ("リンクが|正しく|ありません", "This link is not valid"),
    "invalid_body": (
        "URLが途中で切れているか、書き換えられています。メールに書かれたURLを、最後まで"
        "そのまま開いてください。",
        "The URL is cut short or was changed. Open the URL in the mail exactly as it is,"
        " all the way to its end.",
    ),
    "invalid_manage_next": (
        f"{MANAGE.ja}は、最近届いたメールの末尾にある「{MANAGE.ja}はこちら」のURLからできます。",
        "You can change or cancel your subscription from the URL at the end of any recent"
        " mail from us.",
    ),
    "expired_title": ("登録用の|リンクの|有効期限が|切れました", "This sign-up link has expired"),
    "expired_body": (
        "登録用のURLは、メールを送ってから24時間だけ使えます。登録はまだ済んでいません。",
        "A sign-up URL works for 24 hours after we send it. You are not subscribed yet.",
    ),
    "used_title": ("このリンクは|すでに|使われています", "This link has already been used"),
    "used_body": (
        "このアドレスの登録はすでに完了しています。変更・解除は「登録完了のお知らせ」メールの"
        "URLからできます。",
        "This address is already subscribed. You can change or cancel it from the URL in the"
        ' mail "登録完了のお知らせ".',
    ),
    "used_lost": (
        "URLが見つからないときは、もう一度空メールを次のアドレスに送ってください。"
        "変更・解除用のURLをお送りします。",
        "If you cannot find it, send an empty mail to this address again and we will send you"
        " the URL for changing or cancelling.",
    ),
    "used_wait": (
        "同じアドレスへの返信は{minutes}分に1通までです。前回の返信から{minutes}分たつまでに"
        "送った空メールには返信しませんので、そのときは{minutes}分たってから送り直してください。",
        "We answer an address at most once every {minutes} minutes: an empty mail sent sooner"
        " after our last answer gets no reply, so wait {minutes} minutes before you send it.",
    ),
    "gone_title": ("この登録は|すでに|解除されています", "This subscription has been cancelled"),
    "gone_body": (
        "このリンクの登録は解除され、登録情報は削除されています。再び受け取るには、改めて"
        "登録してください。",
        "The subscription this link belongs to was cancelled and its details deleted. To"
        " receive mail again, sign up again.",
    ),
    "register_again": (
        "お手数ですが、もう一度空メールを次のアドレスに送ってください。新しいURLをお送りします。",
        "Please send an empty mail to this address again; we will send you a new URL.",
    ),
    "register_again_pc": (
        "パソコンからは、登録の申し込みページからやり直せます。",
        "From a computer, start again on the sign-up page.",
    ),
    # --- the public archive (/alerts)
    "archive_title": ("配信した|メールの|一覧", "Alerts sent"),
    "archive_link": ("これまでに配信したメール", "Alerts sent so far"),
    "archive_intro": (
        "これまでに配信した防犯メールです。新しいものから順に表示します。",
        "The safety alerts we have mailed, newest first.",
    ),
    "archive_area": ("地域", "Area"),
    "archive_any_area": ("すべての地域", "All areas"),
    "archive_category": ("情報の種類", "Kind of information"),
    "archive_any_category": ("すべての種類", "All kinds"),
    "archive_filter": ("絞り込む", "Show"),
    "archive_none": ("配信したメールはまだありません。", "No alert has been sent yet."),
    "archive_none_filtered": (
        "この条件に当てはまるメールはありません。",
        "No alert matches these choices.",
    ),
    "archive_date": ("{date} 配信", "Sent {date}"),
    "archive_sent": ("配信日時", "Sent"),
    "archive_urgent": ("緊急", "Urgent"),
    "archive_pages": ("ページ", "Pages"),
    "archive_newer": ("← 新しいメール", "← Newer"),
    "archive_older": ("以前のメール →", "Older →"),
    "archive_feed": ("Atomフィード", "Atom feed"),
    "archive_back": ("配信したメールの一覧へ", "All alerts sent"),
    "archive_place": ("場所", "Place"),
    "archive_map": ("地図で見る（おおよその位置）", "Show on a map (roughly)"),
    "archive_cap": ("CAP形式（機械可読）", "CAP (machine-readable)"),
    # --- other errors
    "csrf_title": ("ページを|開き直してください", "Please reload the page"),
    "csrf_body": (
        "ページを開いてから時間がたったか、ブラウザがクッキーを受け付けていないため、"
        "送信を受け付けられませんでした。何も変更していません。ページを開き直して、"
        "もう一度送信してください。",
        "We could not accept the form because the page was open for a long time or your"
        " browser refused our cookie. Nothing has changed. Reload the page and send it again.",
    ),
    "reload": ("ページを開き直す", "Reload the page"),
    "bad_request_title": ("送信内容が|正しく|ありません", "The request is not valid"),
    "bad_request_body": (
        "送信された内容を受け付けられませんでした。何も変更していません。",
        "We could not accept what was sent. Nothing has changed.",
    ),
    "not_found_title": ("ページが|見つかりません", "Page not found"),
    "not_found_body": (
        "お探しのページはありません。メールに書かれたURLは、最後までそのまま開いてください。",
        "There is no such page. Open URLs from our mails exactly as written, to their end.",
    ),
    "method_title": ("この操作は|できません", "This is not allowed"),
    "method_body": (
        "このページはこの方法では開けません。何も変更していません。",
        "This page cannot be used this way. Nothing has changed.",
    ),
    "too_large_title": ("送信内容が|大きすぎます", "Too much data was sent"),
    "too_large_body": (
        "送信内容が大きすぎるため受け付けられませんでした。何も変更していません。",
        "What was sent is too large to accept. Nothing has changed.",
    ),
    "server_error_title": ("ただいま|処理できません", "Something went wrong"),
    "server_error_body": (
        "申し訳ありません。一時的な問題で処理できませんでした。何も変更していません。"
        "数分たってから、このページを開き直してください（フォームを送信したときは、"
        "前のページに戻ってもう一度送信してください）。",
        "Sorry, a temporary problem stopped us; nothing has changed. In a few minutes,"
        " reload this page (if you sent a form, go back and send it again).",
    ),
}


def pick_lang(value: str | None) -> str:
    """The page language for a ``lang`` query value; anything unknown means Japanese."""
    return value if value in LANGS else DEFAULT_LANG


def text(lang: str, key: str, **values: object) -> str:
    """The text ``key`` in ``lang`` with ``{placeholders}`` filled in (still unescaped); a
    title keeps its phrase marks (:func:`phrases`, :func:`plain`)."""
    ja, en = TEXTS[key]
    template = en if lang == "en" else ja
    return template.format(**values) if values else template


def phrases(title: str) -> list[str]:
    """A title's phrases, the places its heading may break between them."""
    return title.split(PHRASE_MARK)


def plain(title: str) -> str:
    """A title without its phrase marks (for ``<title>`` and everything else)."""
    return title.replace(PHRASE_MARK, "")
