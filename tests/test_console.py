"""The approvers' console in-process (issue 16): sign-in, cookies, CSRF, the queue, one
alert, adjusting with an audited diff, the confirmation texts, the role rules and the
escaping of what operators and area files write. The browser walk with the real daemon
is tests/test_console_browser.py."""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyotp
import pytest
from sqlalchemy import select, update
from werkzeug.test import TestResponse

from maild.alerts.alertfile import AlertDraft
from maild.alerts.workflow import Source
from maild.common.clock import FakeClock
from maild.common.config import ConfigError
from maild.console.accounts import Accounts
from maild.console.app import ConsoleApp
from maild.service.services import Services, build_services
from maild.store.models import AuditEntry, Subscriber
from tests.configs import AREAS_FILE, ClosingClient, make_config
from tests.subscribers import add_active

SATURDAY = dt.datetime(2026, 12, 5, 1, 0, tzinfo=dt.UTC)  # 10:00 in Tokyo, closed


@dataclass
class Person:
    name: str
    password: str
    secret: str | None

    def code(self, clock: FakeClock) -> str:
        return pyotp.TOTP(self.secret).at(clock.now()) if self.secret else ""


@dataclass
class Console:
    services: Services
    clock: FakeClock
    app: ConsoleApp
    people: dict[str, Person]

    def client(self) -> ClosingClient:
        return ClosingClient(self.app)

    def signed_in(self, name: str) -> ClosingClient:
        client = self.client()
        response = sign_in(client, self.people[name], self.clock)
        assert response.status_code == 303, response.text
        return client

    def audit(self) -> list[tuple[int | None, str, str, str | None]]:
        with self.services.db.transaction() as session:
            rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
            return [(e.alert_id, e.action, e.user, e.detail) for e in rows]


def csrf_of(page: TestResponse) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match, page.text
    return html.unescape(match[1])


def sign_in(client: ClosingClient, person: Person, clock: FakeClock, **form: str) -> TestResponse:
    page = client.get("/sign-in")
    data = {"csrf": csrf_of(page), "name": person.name, "password": person.password}
    data["code"] = person.code(clock)
    data.update(form)
    return client.post("/sign-in", data=data)


def draft(
    subject: str = "不審者情報",
    areas: tuple[str, ...] = ("aoba",),
    urgent: bool = False,
    body: str = "本文です。",
) -> AlertDraft:
    return AlertDraft(subject, areas, "child-women", urgent, None, "仙台北警察署", body, "utf-8")


@pytest.fixture
def console(tmp_path: Path) -> Iterator[Console]:
    clock = FakeClock(SATURDAY)
    services = build_services(make_config(tmp_path, approval={"required": True}), clock)
    accounts = Accounts(services.db, clock)
    people = {}
    for name, role in (
        ("kacho", "approver"),
        ("bucho", "approver"),
        ("tanto", "operator"),
        ("kanri", "admin"),
    ):
        made = accounts.add(name, role)
        secret = pyotp.parse_uri(made.otpauth).secret if made.otpauth else None
        people[name] = Person(name, made.password, secret)
    add_active(services, 3, SATURDAY, area="aoba", prefix="aoba")
    add_active(services, 2, SATURDAY, area="izumi", prefix="izumi")
    with services.db.transaction() as session:  # one of them takes alerts 07:00–21:00 only
        session.execute(
            update(Subscriber)
            .where(Subscriber.address == "izumi0@example.jp")
            .values(hours_start=7 * 60, hours_end=21 * 60)
        )
    app = ConsoleApp(services.config, services.alerts, services.links, clock)
    yield Console(services, clock, app, people)
    services.db.dispose()


def test_sign_in_sets_a_strict_http_only_session_cookie(console: Console) -> None:
    client = console.client()
    assert client.get("/").headers["Location"].endswith("/sign-in")
    response = sign_in(client, console.people["kacho"], console.clock)
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert "maild_console=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # [console] base_url is http here
    queue = client.get("/")
    assert queue.status_code == 200 and "承認・送信待ちの警報" in queue.text
    assert "kacho（運用責任者）" in queue.text
    assert client.get("/?lang=en").text.count("Alerts waiting") >= 1
    # Sign out: the session is gone on the server, not only in the browser.
    token = client.get_cookie("maild_console")
    assert token is not None
    out = client.post("/sign-out", data={"csrf": csrf_of(queue)})
    assert out.status_code == 303
    other = console.client()
    other.set_cookie("maild_console", token.value)
    assert other.get("/").status_code == 303
    actions = [a[1] for a in console.audit() if not a[1].startswith("account-")]
    assert actions == ["sign-in", "sign-out"]


def test_the_cookie_is_secure_behind_https(tmp_path: Path) -> None:
    clock = FakeClock(SATURDAY)
    config = make_config(tmp_path, console={"base_url": "https://console.example.jp"})
    services = build_services(config, clock)
    try:
        made = Accounts(services.db, clock).add("tanto", "operator")
        client = ClosingClient(ConsoleApp(config, services.alerts, services.links, clock))
        response = sign_in(client, Person("tanto", made.password, None), clock)
        assert "Secure" in response.headers["Set-Cookie"]
    finally:
        services.db.dispose()


def test_sign_in_needs_the_code_and_a_csrf_token(console: Console) -> None:
    client = console.client()
    kacho = console.people["kacho"]
    assert sign_in(client, kacho, console.clock, code="000000").status_code == 401
    no_token = client.post(
        "/sign-in",
        data={"name": "kacho", "password": kacho.password, "code": kacho.code(console.clock)},
    )
    assert no_token.status_code == 400
    assert "maild_console" not in no_token.headers.get("Set-Cookie", "")


def test_the_sixth_wrong_password_is_refused_unchecked_in_the_page(console: Console) -> None:
    client = console.client()
    tanto = console.people["tanto"]
    for _ in range(5):
        assert sign_in(client, tanto, console.clock, password="wrong").status_code == 401
    locked = sign_in(client, tanto, console.clock)  # the right password, 6th attempt
    assert locked.status_code == 429 and "15分間" in locked.text
    console.clock.advance(minutes=15)
    assert sign_in(client, tanto, console.clock).status_code == 303


def test_an_idle_session_ends_after_30_minutes(console: Console) -> None:
    client = console.signed_in("tanto")
    console.clock.advance(minutes=29)
    assert client.get("/").status_code == 200
    console.clock.advance(minutes=30)
    ended = client.get("/")
    assert ended.status_code == 303 and "ended=1" in ended.headers["Location"]
    assert "有効期限" in client.get(ended.headers["Location"]).text


def test_queue_and_alert_show_recipients_and_the_confirmation_says_when(console: Console) -> None:
    alerts = console.services.alerts
    held = alerts.intake(draft(), Source(None, "tanto"))
    urgent = alerts.intake(draft("至急", ("aoba", "izumi"), urgent=True), Source(None, "tanto"))
    client = console.signed_in("kacho")
    queue = client.get("/").text
    assert "不審者情報" in queue and "至急" in queue and "tanto" in queue
    assert "5 件" in queue and "3 件" in queue
    one = client.get(f"/alerts/{urgent}").text
    assert "青葉区" in one and "泉区" in one and "承認する" in one
    confirm = client.get(f"/alerts/{held}/approve").text
    assert "送信先 3 件、12月7日 8:30 に送信されます。" in confirm
    confirm = client.get(f"/alerts/{urgent}/approve").text
    assert "送信先 5 件、今すぐ送信されます。" in confirm
    done = client.post(f"/alerts/{urgent}/approve", data={"csrf": csrf_of(client.get("/"))})
    assert done.status_code == 303
    shown = alerts.show(urgent)
    assert shown["status"] == "scheduled" and shown["approved_by"] == "kacho"
    assert "送信先 5 件、今すぐ送信されます。" in client.get(f"/alerts/{urgent}/send-now").text


def test_an_operator_cannot_approve_and_a_forged_post_is_refused_and_audited(
    console: Console,
) -> None:
    alert_id = console.services.alerts.intake(draft(), Source(None, "suzuki"))
    client = console.signed_in("tanto")
    page = client.get(f"/alerts/{alert_id}")
    assert "承認する" not in page.text and "/approve" not in page.text
    forged = client.post(f"/alerts/{alert_id}/approve", data={"csrf": csrf_of(page)})
    assert forged.status_code == 403
    assert console.services.alerts.show(alert_id)["status"] == "pending_approval"
    assert (alert_id, "refused", "tanto", "console: approve (needs the approver role)") in (
        console.audit()
    )
    assert client.post(f"/alerts/{alert_id}/send-now", data={}).status_code == 403


def test_an_approver_cannot_approve_their_own_request(console: Console) -> None:
    alert_id = console.services.alerts.intake(draft(), Source(None, "kacho"))
    client = console.signed_in("kacho")
    assert "ご自身の依頼は承認できません" in client.get(f"/alerts/{alert_id}/approve").text
    refused = client.post(f"/alerts/{alert_id}/approve", data={"csrf": csrf_of(client.get("/"))})
    assert refused.status_code == 409 and "依頼者本人は承認できません" in refused.text
    assert console.services.alerts.show(alert_id)["status"] == "pending_approval"


def test_a_post_without_the_session_token_changes_nothing(console: Console) -> None:
    alert_id = console.services.alerts.intake(draft(), Source(None, "tanto"))
    client = console.signed_in("kacho")
    assert client.post(f"/alerts/{alert_id}/approve", data={"csrf": "x"}).status_code == 400
    assert client.post(f"/alerts/{alert_id}/cancel", data={}).status_code == 400
    assert console.services.alerts.show(alert_id)["status"] == "pending_approval"


def test_adjusting_the_area_is_audited_with_a_diff_for_the_approver(console: Console) -> None:
    alerts = console.services.alerts
    alert_id = alerts.intake(draft(body="一行目\n二行目"), Source(None, "tanto"))
    client = console.signed_in("kacho")
    form = client.get(f"/alerts/{alert_id}/adjust")
    assert 'value="aoba" checked' in form.text
    data = {
        "csrf": csrf_of(form),
        "subject": "不審者情報（修正）",
        "body": "一行目\n二行目を直した",
        "area": ["izumi"],
        "category": "child-women",
        "send_after": "",
    }
    assert client.post(f"/alerts/{alert_id}/adjust", data=data).status_code == 303
    shown = alerts.show(alert_id)
    assert shown["areas"] == ["izumi"] and shown["subject"] == "不審者情報（修正）"
    (changed,) = [a for a in shown["audit"] if a["action"] == "changed"]
    assert changed["user"] == "kacho"
    assert "areas: 青葉区 → 泉区" in changed["detail"]
    assert "-二行目" in changed["detail"] and "+二行目を直した" in changed["detail"]
    page = client.get(f"/alerts/{alert_id}").text
    assert "areas: 青葉区 → 泉区" in page and '<span class="add">+二行目を直した</span>' in page
    # Unknown areas and an empty subject: refused, nothing written.
    data.update(area=["atlantis"], subject=" ")
    refused = client.post(f"/alerts/{alert_id}/adjust", data=data)
    assert refused.status_code == 400 and "unknown area: atlantis" in refused.text
    assert alerts.show(alert_id)["areas"] == ["izumi"]


def test_alert_fields_and_area_names_are_escaped(console: Console) -> None:
    script = "<script>alert(1)</script>"
    alert_id = console.services.alerts.intake(
        draft(f"件名{script}", body=f"本文{script}\n<img src=x onerror=alert(2)>"),
        Source(None, "tanto"),
    )
    client = console.signed_in("kacho")
    form = client.get(f"/alerts/{alert_id}/adjust")
    client.post(
        f"/alerts/{alert_id}/adjust",
        data={
            "csrf": csrf_of(form),
            "subject": f"件名{script}",
            "body": f"本文{script}\n\"'><b>x</b>",
            "area": ["aoba"],
            "category": "child-women",
        },
    )
    for path in (
        "/",
        f"/alerts/{alert_id}",
        f"/alerts/{alert_id}/adjust",
        f"/alerts/{alert_id}/approve",
        "/history",
    ):
        text = client.get(path).text
        assert "<script>" not in text and "<img" not in text and "<b>x" not in text, path
    assert "&lt;script&gt;" in client.get(f"/alerts/{alert_id}").text
    assert "Content-Security-Policy" in client.get("/").headers


def test_a_request_composed_in_the_browser_enters_the_same_intake(console: Console) -> None:
    client = console.signed_in("tanto")
    form = client.get("/compose")
    assert form.status_code == 200 and 'name="area"' in form.text
    data = {
        "csrf": csrf_of(form),
        "subject": "声かけ事案\nBcc: x@example.jp",  # a line break must not make a header
        "body": "本文\r\n二行目",
        "area": ["aoba", "izumi"],
        "category": "street-crime",
        "urgent": "yes",
        "sender": "仙台北警察署",
    }
    done = client.post("/compose", data=data)
    assert done.status_code == 303, done.text
    (alert,) = console.services.alerts.listing()
    assert alert["requester"] == "tanto" and alert["status"] == "pending_approval"
    assert alert["subject"] == "声かけ事案 Bcc: x@example.jp"
    assert alert["areas"] == ["aoba", "izumi"] and alert["urgent"]
    assert console.services.alerts.show(alert["id"])["body"] == "本文\n二行目"
    # The parser's problems come back in the page; nothing is taken.
    data.update(subject="", area=[], category="nonsense")
    refused = client.post("/compose", data=data)
    assert refused.status_code == 400
    assert "Category" in refused.text or "category" in refused.text
    assert len(console.services.alerts.listing()) == 1


def test_subscriber_figures_show_counts_and_no_address(console: Console) -> None:
    client = console.signed_in("tanto")
    page = client.get("/subscribers").text
    assert "登録済み: <strong>5 件</strong>" in page
    hours = page[page.index("<h2>受信時間帯</h2>") :]
    assert re.search(r"いつでも</th><td class=\"num\">4 件", hours)
    assert re.search(r"時間帯を決めている</th><td class=\"num\">1 件", hours)
    assert re.search(r"待つ</th><td class=\"num\">0 件", hours)
    assert "青葉区" in page and "@" not in page.replace("@example", "")
    assert "example.jp" not in page


def test_a_sending_alert_refreshes_only_when_asked(console: Console) -> None:
    alerts = console.services.alerts
    alert_id = alerts.intake(draft(urgent=True), Source(None, "tanto"))
    alerts.approve(alert_id, "kacho", approver=True)
    assert alerts.release(alert_id) is not None
    client = console.signed_in("kacho")
    plain = client.get(f"/alerts/{alert_id}").text
    assert 'http-equiv="refresh"' not in plain and "自動で更新" in plain
    assert "未送信 3 件" in plain
    assert 'http-equiv="refresh" content="10"' in client.get(f"/alerts/{alert_id}?auto=1").text


def test_the_alert_page_shows_what_an_old_phone_gets(console: Console) -> None:
    alert_id = console.services.alerts.intake(
        draft(body="①髙橋さん宅付近～駅"), Source(None, "tanto")
    )
    client = console.signed_in("kacho")
    page = client.get(f"/alerts/{alert_id}").text
    assert "古い携帯電話（ISO-2022-JP）での表示" in page
    assert "① → (1)" in page and "(1)高橋さん宅付近〜駅" in page
    plain = console.services.alerts.intake(draft(body="通常の本文"), Source(None, "tanto"))
    assert "置き換える文字はありません" in client.get(f"/alerts/{plain}").text


def test_only_an_admin_finds_and_removes_one_address(console: Console) -> None:
    operator = console.signed_in("tanto")
    page = operator.get("/subscribers")
    assert "登録者を探して削除する" not in page.text
    token = csrf_of(page)
    search = {"csrf": token, "address": "aoba0@example.jp"}
    assert operator.post("/subscribers", data=search).status_code == 403
    assert operator.post("/subscribers/remove", data=search).status_code == 403
    admin = console.signed_in("kanri")
    token = csrf_of(admin.get("/subscribers"))

    def find(address: str) -> str:
        return admin.post("/subscribers", data={"csrf": token, "address": address}).text

    found = find("aoba0@EXAMPLE.JP")
    assert "登録されています（登録済み、配信エリア: 青葉区）" in found
    assert "このアドレスは登録されていません" in find("x@example.jp")
    assert "形式ではありません" in find("nonsense")
    assert admin.post("/subscribers", data={"address": "aoba0@example.jp"}).status_code == 400
    removed = admin.post("/subscribers/remove", data={"csrf": token, "address": "aoba0@example.jp"})
    assert removed.status_code == 200 and "aoba0@example.jp" not in removed.text
    assert "登録済み: <strong>4 件</strong>" in admin.get("/subscribers").text
    (entry,) = [a for a in console.audit() if a[1] == "subscriber-removed"]
    assert entry[2] == "kanri" and "aoba0@example.jp" not in (entry[3] or "")
    assert admin.get("/compose").status_code == 403  # requests are not the admin's


def test_area_names_from_the_area_file_are_escaped(tmp_path: Path) -> None:
    evil = "青葉区<script>alert(3)</script>"
    areas = tmp_path / "areas.toml"
    areas.write_text(
        AREAS_FILE.read_text(encoding="utf-8")
        .replace('name_ja = "青葉区"', f'name_ja = "{evil}"')
        .replace('name_en = "Aoba Ward"', 'name_en = "Aoba<img src=x onerror=alert(4)>"'),
        encoding="utf-8",
    )
    clock = FakeClock(SATURDAY)
    config = make_config(tmp_path, areas={"file": str(areas)}, approval={"required": True})
    services = build_services(config, clock)
    try:
        made = Accounts(services.db, clock).add("tanto", "operator")
        alert_id = services.alerts.intake(draft(), Source(None, "tanto"))
        client = ClosingClient(ConsoleApp(config, services.alerts, services.links, clock))
        assert sign_in(client, Person("tanto", made.password, None), clock).status_code == 303
        pages = (
            "/",
            f"/alerts/{alert_id}",
            f"/alerts/{alert_id}/adjust",
            "/history",
            "/compose",
            "/subscribers",
        )
        for lang in ("", "&lang=en"):
            for path in pages:
                text = client.get(f"{path}?x=1{lang}").text
                assert "<script>alert(3)" not in text and "<img src=x" not in text, path
        assert "青葉区&lt;script&gt;" in client.get(f"/alerts/{alert_id}").text
    finally:
        services.db.dispose()


def test_a_missing_alert_and_a_bad_cookie_get_a_page_not_a_crash(console: Console) -> None:
    client = console.signed_in("tanto")
    missing = client.get("/alerts/999")
    assert missing.status_code == 404 and "ページが見つかりません" in missing.text
    assert client.get("/alerts/999/approve").status_code in (403, 404)
    assert client.get("/alerts/abc").status_code == 404
    stranger = console.client()
    stranger.set_cookie("maild_console", "\x01\\" * 500)
    assert stranger.get("/").status_code == 303
    big = client.post("/compose", data={"body": "あ" * 70_000})
    assert big.status_code == 413


def test_an_alert_held_by_the_privacy_check_is_approved_only_with_its_acknowledgment(
    console: Console,
) -> None:
    alerts = console.services.alerts
    alert_id = alerts.intake(
        draft(body="青葉区の佐藤花子さん（12歳）が声をかけられました。"), Source(None, "tanto")
    )
    assert alerts.show(alert_id)["privacy"], "the privacy check found nothing to hold"
    client = console.signed_in("kacho")
    shown = client.get(f"/alerts/{alert_id}").text
    assert "<mark>佐藤花子さん</mark>" in shown and "人名" in shown
    confirm = client.get(f"/alerts/{alert_id}/approve").text
    assert 'name="ack_privacy" value="yes" required' in confirm
    refused = client.post(f"/alerts/{alert_id}/approve", data={"csrf": csrf_of(client.get("/"))})
    assert refused.status_code == 409 and "ack-privacy" in refused.text
    assert alerts.show(alert_id)["status"] == "pending_approval"
    # Ticked: approved, and the acknowledgement is audited with who gave it.
    acked = client.post(
        f"/alerts/{alert_id}/approve",
        data={"csrf": csrf_of(client.get("/")), "ack_privacy": "yes"},
    )
    assert acked.status_code == 303
    shown_after = alerts.show(alert_id)
    assert shown_after["status"] == "scheduled"
    audit = {e["action"]: e for e in shown_after["audit"]}
    assert audit["privacy-acknowledged"]["user"] == "kacho"
    assert "佐藤花子さん" in audit["privacy-acknowledged"]["detail"]


def test_the_proxys_user_header_is_believed_from_the_proxy_only(tmp_path: Path) -> None:
    clock = FakeClock(SATURDAY)
    config = make_config(
        tmp_path, console={"user_header": "X-Remote-User", "trusted_proxies": ["10.0.0.0/8"]}
    )
    services = build_services(config, clock)
    try:
        Accounts(services.db, clock).add("kacho", "approver")
        app = ConsoleApp(config, services.alerts, services.links, clock)
        proxy = ClosingClient(app)
        header = {"X-Remote-User": "kacho"}
        page = proxy.get("/", headers=header, environ_base={"REMOTE_ADDR": "10.1.2.3"})
        assert page.status_code == 200 and "kacho（運用責任者）" in page.text
        assert "SameSite=Strict" in page.headers["Set-Cookie"]
        again = proxy.get("/", headers=header, environ_base={"REMOTE_ADDR": "10.1.2.3"})
        assert again.status_code == 200 and "Set-Cookie" not in again.headers  # same session
        # From anywhere else the header is anyone's to send: ignored.
        stranger = ClosingClient(app)
        faked = stranger.get("/", headers=header, environ_base={"REMOTE_ADDR": "192.0.2.9"})
        assert faked.status_code == 303 and faked.headers["Location"].endswith("/sign-in")
        unknown = stranger.get(
            "/", headers={"X-Remote-User": "nobody"}, environ_base={"REMOTE_ADDR": "10.1.2.3"}
        )
        assert unknown.status_code == 403 and "アカウントがありません" in unknown.text
        with services.db.transaction() as session:
            rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
            trail = [(e.action, e.user) for e in rows if not e.action.startswith("account-")]
        assert trail == [("sign-in", "kacho"), ("sign-in-failed", "nobody")]
    finally:
        services.db.dispose()


def test_a_user_header_without_trusted_proxies_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs trusted_proxies"):
        make_config(tmp_path, console={"user_header": "X-Remote-User"})
    with pytest.raises(ConfigError, match="not a network"):
        make_config(tmp_path, console={"trusted_proxies": ["proxy.example.jp"]})
