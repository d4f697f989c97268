"""The register and manage pages' own hours (issue 18 item 5), through Werkzeug's test client
on the real app and a real SQLite file (as tests/test_web.py)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from maild.store.models import PENDING
from tests.test_web import Web, make_web


@pytest.fixture
def web(tmp_path: Path) -> Web:
    return make_web(tmp_path)


def selected(html: str, name: str) -> str:
    """The chosen option of the ``<select name=NAME>`` ("" for 指定しない)."""
    select = re.search(rf'<select name="{name}">(.*?)</select>', html, re.S)
    assert select, html
    chosen = re.findall(r"<option(?: value=\"([^\"]*)\")? selected>([^<]*)<", select[1])
    assert len(chosen) == 1, chosen
    value, label = chosen[0]
    return value or ("" if label in ("指定しない", "Not set") else label)


def test_register_with_hours_says_so_on_the_page_and_in_the_mail(web: Web) -> None:
    token = web.pending("taro@docomo.ne.jp")
    form = web.client.get(f"/register/{token}")
    assert "受け取る時間帯" in form.text
    assert selected(form.text, "hours_start") == selected(form.text, "hours_end") == ""
    assert 'name="hours_urgent" value="1" checked' not in form.text
    done = web.post_form(
        f"/register/{token}",
        {"area": ["aoba"], "category": ["other"], "hours_start": "07:00", "hours_end": "21:00"},
    )
    assert done.status_code == 200, done.text
    assert "07:00〜21:00（緊急の情報は時間外でもすぐ届きます）" in done.text
    subscriber = web.subscriber("taro@docomo.ne.jp")
    assert subscriber is not None
    assert (subscriber.hours_start, subscriber.hours_end, subscriber.hours_urgent) == (
        420,
        1260,
        False,
    )
    _, _, body = web.outbox()[-1]
    assert "受け取る時間帯: 07:00〜21:00（緊急の情報は時間外でもすぐ届きます）" in body
    assert "receiving hours: 07:00–21:00" in body


def test_register_without_hours_is_any_time(web: Web) -> None:
    token = web.pending("hanako@example.jp")
    done = web.post_form(f"/register/{token}", {"area": ["aoba"], "category": ["other"]})
    assert done.status_code == 200, done.text
    subscriber = web.subscriber("hanako@example.jp")
    assert subscriber is not None and subscriber.hours_start is None
    assert "受け取る時間帯: いつでも" in web.outbox()[-1][2]


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("07:00", "07:00", "始まりと終わりが同じです"),
        ("07:00", "", "両方を選んでください"),
        ("07:10", "21:00", "時刻が正しくありません"),
        ("<b>", "21:00", "時刻が正しくありません"),
        ("07:00xyz", "21:00", "時刻が正しくありません"),
    ],
)
def test_register_refuses_bad_hours_and_keeps_the_choices(
    web: Web, start: str, end: str, message: str
) -> None:
    token = web.pending("jiro@example.jp")
    answer = web.post_form(
        f"/register/{token}",
        {"area": ["aoba"], "category": ["other"], "hours_start": start, "hours_end": end},
    )
    assert answer.status_code == 400
    assert message in answer.text
    assert "<b>" not in answer.text
    if start == "07:00":
        assert selected(answer.text, "hours_start") == "07:00"
    assert web.subscriber("jiro@example.jp").status == PENDING  # type: ignore[union-attr]


def test_manage_shows_and_changes_the_hours(web: Web) -> None:
    manage, _ = web.active("ichiro@example.jp")
    form = web.client.get(f"/manage/{manage}")
    assert selected(form.text, "hours_start") == ""
    saved = web.post_form(
        f"/manage/{manage}",
        {
            "action": "update",
            "area": ["aoba"],
            "category": ["other"],
            "hours_start": "22:00",
            "hours_end": "06:00",
            "hours_urgent": "1",
        },
    )
    assert saved.status_code == 200, saved.text
    assert "22:00〜06:00（緊急の情報も時間帯を守る）" in saved.text
    form = web.client.get(f"/manage/{manage}")
    assert selected(form.text, "hours_start") == "22:00"
    assert selected(form.text, "hours_end") == "06:00"
    assert 'name="hours_urgent" value="1" checked' in form.text
    english = web.client.get(f"/manage/{manage}?lang=en")
    assert "Receiving hours" in english.text

    # Back to any time: both empty.
    saved = web.post_form(
        f"/manage/{manage}",
        {"action": "update", "area": ["aoba"], "category": ["other"]},
    )
    assert saved.status_code == 200
    subscriber = web.subscriber("ichiro@example.jp")
    assert subscriber is not None
    assert (subscriber.hours_start, subscriber.hours_end, subscriber.hours_urgent) == (
        None,
        None,
        False,
    )
    refused = web.post_form(
        f"/manage/{manage}",
        {"action": "update", "area": ["aoba"], "category": ["other"], "hours_start": "09:00"},
    )
    assert refused.status_code == 400
    assert web.subscriber("ichiro@example.jp").hours_start is None  # type: ignore[union-attr]
