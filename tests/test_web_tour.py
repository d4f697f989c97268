"""A resident's tour of the pages (issue 15 item 8): a cancel asks once more but the
mail's one-click stays one click, the "link already used" page tells how long to wait,
every page (error pages too) has the language switch, no page says "try again" without
saying what to try, and mails and pages use the same words for the choices.

Werkzeug's test client on the real app and a real SQLite file, as tests/test_web.py."""

from __future__ import annotations

import datetime as dt
import html
import re
from pathlib import Path

import pytest
from sqlalchemy import text as sql
from werkzeug.test import Client, TestResponse

from maild.residents import notices
from maild.residents.categories import CATEGORIES as CATEGORY_LIST
from maild.residents.registration import ANSWER_INTERVAL
from maild.residents.terms import AREAS, CATEGORIES, HOURS, MANAGE
from maild.web import page as page_module
from maild.web.app import MAX_BODY_BYTES
from maild.web.i18n import TEXTS, plain
from tests.test_web import Web, make_web, signup_from

SWITCH = re.compile(r'<a class="lang" href="([^"]*)" hreflang="(ja|en)"')
HTML_LANG = re.compile(r'<html lang="(ja|en)">')
MINUTES = int(ANSWER_INTERVAL.total_seconds() // 60)


@pytest.fixture
def web(tmp_path: Path) -> Web:
    return make_web(tmp_path)


# --- a cancel asks once more; the one-click POST does not -----------------------------------


def test_manage_cancel_asks_and_keeping_changes_nothing(web: Web) -> None:
    manage, _ = web.active("ume@example.jp")
    asked = web.post_form(f"/manage/{manage}", {"action": "cancel"})
    assert asked.status_code == 200
    assert "<title>本当に解除しますか" in asked.text
    # The confirm button is a plain form (no JavaScript); the way back is a link.
    assert re.search(r'<form method="post" action="/manage/[^"]+">', asked.text)
    assert 'type="submit" class="danger" name="action" value="cancel-confirmed"' in asked.text
    assert f'href="/manage/{manage}">解除しないで' in asked.text
    assert web.subscriber("ume@example.jp") is not None
    english = web.post_form(f"/manage/{manage}?lang=en", {"action": "cancel"})
    assert "Do you really want to cancel?" in english.text
    # Confirming needs the CSRF field like any form post.
    refused = Client(web.app).post(f"/manage/{manage}", data={"action": "cancel-confirmed"})
    assert refused.status_code == 400
    assert web.subscriber("ume@example.jp") is not None


def test_unsubscribe_link_asks_the_same_question(web: Web) -> None:
    _, unsubscribe = web.active("momo@example.jp")
    page = web.client.get(f"/unsubscribe/{unsubscribe}")
    assert "<title>本当に解除しますか" in page.text
    assert web.subscriber("momo@example.jp") is not None


def test_one_click_unsubscribe_stays_one_click(web: Web) -> None:
    _, unsubscribe = web.active("sakura@example.jp")
    mail_client = Client(web.app, use_cookies=False)  # RFC 8058: no cookie, no CSRF field
    answer = mail_client.post(
        f"/unsubscribe/{unsubscribe}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code == 200
    assert "登録を解除しました" in answer.text and "本当に" not in answer.text
    assert web.subscriber("sakura@example.jp") is None


# --- the used link says how long a new blank mail waits -------------------------------------


def test_used_link_page_tells_the_wait_before_a_new_answer(
    web: Web, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = web.pending("kiku@example.jp")
    web.post_form(f"/register/{token}", {"area": ["aoba"], "category": ["other"]})
    used = web.client.get(f"/register/{token}")
    assert used.status_code == 410
    assert f"前回の返信から{MINUTES}分たつまで" in used.text
    assert (
        f"at most once every {MINUTES} minutes" in web.client.get(f"/register/{token}?lang=en").text
    )
    # The figure is the registration rules', not a number written into the text.
    monkeypatch.setattr(page_module, "ANSWER_INTERVAL", dt.timedelta(minutes=15))
    assert "前回の返信から15分たつまで" in web.client.get(f"/register/{token}").text


# --- every page has the language switch ------------------------------------------------------


def _pages(tmp_path: Path) -> dict[str, TestResponse]:
    """Every resident page and error page, by a name for the failure message."""
    web = make_web(tmp_path, limits={"answers_per_ip_per_minute": 2})
    get, pages = web.client.get, {}
    pages["signup"] = get("/signup")
    pages["signup invalid"] = web.post_form("/signup", {"address": "not an address"})
    pages["signup sent"] = signup_from(web, "a@example.jp")
    signup_from(web, "b@example.jp")
    pages["signup 429"] = signup_from(web, "c@example.jp")
    pages["csrf refused"] = Client(web.app).post("/signup", data={"address": "d@example.jp"})
    token = web.link_in_last_mail("register")
    pages["register form"] = get(f"/register/{token}")
    pages["register no area"] = web.post_form(f"/register/{token}", {"category": ["other"]})
    pages["registered"] = web.post_form(f"/register/{token}", {"area": ["aoba"]})
    pages["register used"] = get(f"/register/{token}")
    pages["register bad token"] = get(f"/register/{token[:-3]}xyz")
    expiring = web.pending("e@example.jp")
    web.clock.advance(hours=25)
    pages["register expired"] = get(f"/register/{expiring}")
    manage, unsubscribe = web.active("f@example.jp")
    pages["manage form"] = get(f"/manage/{manage}")
    choices = {"action": "update", "area": "aoba", "category": "other"}
    pages["manage updated"] = web.post_form(f"/manage/{manage}", choices)
    pages["manage bad action"] = web.post_form(f"/manage/{manage}", {"action": "x"})
    pages["manage confirm"] = web.post_form(f"/manage/{manage}", {"action": "cancel"})
    pages["unsubscribe confirm"] = get(f"/unsubscribe/{unsubscribe}")
    pages["one-click"] = Client(web.app, use_cookies=False).post(
        f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "One-Click"}
    )
    pages["manage gone"] = get(f"/manage/{manage}")
    pages["manage bad token"] = get(f"/manage/{manage[:-3]}xyz")
    manage2, _ = web.active("g@example.jp")
    pages["cancelled"] = web.post_form(f"/manage/{manage2}", {"action": "cancel-confirmed"})
    pages["404"] = get("/no/such/page")
    pages["405"] = web.client.put("/signup")
    pages["413"] = web.client.post("/signup", data={"address": "x" * (MAX_BODY_BYTES + 1)})
    manage3, _ = web.active("h@example.jp")
    with web.services.db.transaction() as session:
        session.execute(sql("DROP TABLE subscriber_areas"))
    pages["500"] = get(f"/manage/{manage3}")
    pages["en 404"] = get("/no/such/page?lang=en")
    return pages


def test_every_page_has_the_language_switch(tmp_path: Path) -> None:
    pages = _pages(tmp_path)
    statuses = {answer.status_code for answer in pages.values()}
    assert {200, 400, 404, 405, 410, 413, 429, 500} <= statuses  # the error pages are in
    checker = make_web(tmp_path / "other")  # follows the switch without changing anything
    for name, answer in pages.items():
        assert answer.mimetype == "text/html", name
        lang = HTML_LANG.search(answer.text)
        switch = SWITCH.search(answer.text)
        assert lang and switch, f"{name}: no language switch"
        href, other = html.unescape(switch[1]), switch[2]
        assert other != lang[1], name
        # The switch opens a page in the other language, on the same path.
        followed = checker.client.get(href)
        followed_lang = HTML_LANG.search(followed.text)
        assert followed_lang and followed_lang[1] == other, f"{name}: {href}"
        assert href.split("?")[0] == answer.request.path, name


def test_the_switch_of_a_404_keeps_the_path_quoted(web: Web) -> None:
    answer = web.client.get('/a"<b>?lang=en')
    assert answer.status_code == 404
    switch = SWITCH.search(answer.text)
    assert switch and switch[1] == "/a%22%3Cb%3E", answer.text


# --- "try again" says what to try ------------------------------------------------------------


def test_no_text_says_try_again_without_what_to_try() -> None:
    for key, (ja, en) in TEXTS.items():
        assert "お試しください" not in ja, key
        assert "try again" not in en.lower(), key


def test_not_arrived_says_what_to_send_and_when(web: Web) -> None:
    sent = web.post_form("/signup", {"address": "nashi@example.jp"})
    assert f"{MINUTES}分たったあとで、このページでもう一度アドレスを送信して" in sent.text
    token = web.link_in_last_mail("register")
    done = web.post_form(f"/register/{token}", {"area": ["aoba"], "category": ["other"]})
    assert f"{MINUTES}分たったあとで、次のアドレスに空メールを送って" in done.text
    assert 'href="mailto:entry@mail.example.jp"' in done.text


# --- mails and pages use the same words ------------------------------------------------------


def _page_summary(answer: TestResponse) -> dict[str, str]:
    pairs = re.findall(r"<dt>([^<]*)</dt>\s*<dd>([^<]*)</dd>", answer.text)
    return {html.unescape(k): html.unescape(v) for k, v in pairs}


def test_completion_mail_and_page_list_the_choices_in_the_same_words(web: Web) -> None:
    token = web.pending("take@example.jp")
    chosen = {"area": ["aoba", "block-sennan"], "category": ["street-crime", "other"]}
    page = web.post_form(f"/register/{token}", chosen)
    mail = web.outbox()[-1][2].splitlines()
    on_page = _page_summary(page)
    assert list(on_page) == [AREAS.ja, CATEGORIES.ja, HOURS.ja]  # hours: issue 18
    for label, value in on_page.items():
        assert f"{label}: {value}" in mail, (label, value, mail)
    # The form's headings are the same words.
    form = web.client.get(f"/manage/{web.link_in_last_mail('manage')}")
    assert f"<legend>{AREAS.ja}</legend>" in form.text
    assert f"<legend>{CATEGORIES.ja}</legend>" in form.text
    assert f"<legend>{HOURS.ja}</legend>" in form.text
    english = web.client.get(f"/manage/{web.link_in_last_mail('manage')}?lang=en")
    assert f"<legend>{CATEGORIES.en_heading}</legend>" in english.text


def test_no_other_words_for_areas_and_categories() -> None:
    """Words a resident reads, mails and pages: one name for each of the two choices."""
    mails = [
        notices.register_notice("S", "https://x/register/T")[1],
        notices.complete_notice("S", "https://x/manage/T", ["青葉区"], ["その他"])[1],
        notices.manage_notice("S", "https://x/manage/T")[1],
    ]
    ja = [t[0] for t in TEXTS.values()] + mails
    en = [t[1] for t in TEXTS.values()] + mails
    for other in ("受信する地域", "受信する情報", "情報種別", "受け取りたい地域"):
        assert not [t for t in ja if other in t], other
    assert not [t for t in en if "categor" in t.lower()]
    assert CATEGORIES.en in mails[1] and AREAS.en in mails[1]
    # The manage page is called what every mail's last link calls it (operating rules 5(5)).
    assert plain(TEXTS["manage_title"][0]) == MANAGE.ja
    assert f"{MANAGE.ja}はこちら" in mails[1] and f"{MANAGE.ja}はこちら" in mails[2]
    assert not [t for t in ja if "登録内容の変更" in t]
    assert {c.ja for c in CATEGORY_LIST} >= {"その他"}
