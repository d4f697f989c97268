"""The resident-facing pages (docs/web-routes.md) through Werkzeug's test client, on the real app,
the real registration service and a real SQLite file; time is a FakeClock."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select, text
from werkzeug.test import Client, TestResponse

from maild.common.clock import FakeClock
from maild.residents.categories import CATEGORY_IDS, categories_from_mask
from maild.residents.links import CSRF
from maild.service import wsgi
from maild.service.services import Services, build_services
from maild.store.models import ACTIVE, PENDING, OutboxMail, Subscriber
from maild.web.app import CONTENT_SECURITY_POLICY, MAX_BODY_BYTES, WebApp, create_app
from maild.web.health import health_status
from maild.web.page import safe_path
from tests.configs import ClosingClient, make_config, run_now, write_config

CSRF_FIELD = re.compile(r'name="csrf" value="([^"]+)"')


@dataclass
class Web:
    """The app, a browser-like client (keeps cookies) and the services behind it."""

    app: WebApp
    client: Client
    services: Services
    clock: FakeClock

    def csrf(self, path: str) -> str:
        """GET ``path`` like a browser and return the form's CSRF field."""
        page = self.client.get(path)
        assert page.status_code == 200, page.text
        match = CSRF_FIELD.search(page.text)
        assert match, page.text
        return match[1]

    def post_form(self, path: str, data: Mapping[str, Any]) -> TestResponse:
        return self.client.post(path, data={"csrf": self.csrf(path), **data})

    def outbox(self) -> list[tuple[str, str, str]]:
        """(purpose, recipient, plain-text body) of every queued mail, oldest first."""
        with self.services.db.transaction() as session:
            rows = session.scalars(select(OutboxMail).order_by(OutboxMail.id)).all()
            mails = [(r.purpose, r.recipient, r.data) for r in rows]
        out = []
        for purpose, recipient, data in mails:
            msg = email.message_from_bytes(data, policy=email.policy.default)
            body = msg.get_body(("plain",))
            assert body is not None
            out.append((purpose, recipient, body.get_content()))
        return out

    def link_in_last_mail(self, route: str) -> str:
        body = self.outbox()[-1][2]
        match = re.search(rf"https?://[^/\s]+/{route}/(\S+)", body)
        assert match, body
        return match[1]

    def subscriber(self, address: str) -> Subscriber | None:
        with self.services.db.transaction() as session:
            return session.scalars(
                select(Subscriber).where(Subscriber.address == address)
            ).one_or_none()

    def pending(self, address: str) -> str:
        """A pending subscriber made the PC way; returns their register token from the mail."""
        self.services.registrations.request_signup(address)
        return self.link_in_last_mail("register")

    def active(
        self, address: str, areas: tuple[str, ...] = ("aoba",), categories: tuple[str, ...] = ()
    ) -> tuple[str, str]:
        """An active subscriber; returns their (manage, unsubscribe) tokens."""
        token = self.pending(address)
        view = self.services.registrations.complete_register(
            token, areas, categories or CATEGORY_IDS
        )
        return view.manage_token, view.unsubscribe_token


def make_web(
    folder: Path, health: Callable[[], Mapping[str, Any]] | None = None, **over: Any
) -> Web:
    config = make_config(folder, **over)
    clock = FakeClock()
    services = build_services(config, clock)
    app = create_app(
        config,
        services.registrations,
        services.areas,
        services.links,
        clock,
        health,
        answer_signup=run_now,
    )
    return Web(app, ClosingClient(app), services, clock)


@pytest.fixture
def web(tmp_path: Path) -> Web:
    return make_web(tmp_path)


def checked(html: str, name: str) -> set[str]:
    return set(re.findall(rf'name="{name}" value="([^"]+)" checked', html))


# --- the whole way: /signup → mail → /register → completion mail --------------------------


def test_register_from_signup_to_completion(web: Web) -> None:
    answer = web.post_form("/signup", {"address": "taro..yamada.@docomo.ne.jp"})
    assert answer.status_code == 200
    assert "メールを確認してください" in answer.text
    token = web.link_in_last_mail("register")

    form = web.client.get(f"/register/{token}")
    assert form.status_code == 200
    assert "t***@docomo.ne.jp" in form.text
    assert "taro..yamada." not in form.text
    assert checked(form.text, "category") == set(CATEGORY_IDS)  # all ticked by default
    assert checked(form.text, "area") == set()
    assert form.text.count("<details") == 4  # one per block

    done = web.client.post(
        f"/register/{token}",
        data={
            "csrf": CSRF_FIELD.search(form.text)[1],  # type: ignore[index]
            "area": ["aoba", "st-sendai-kita"],
            "category": ["child-women", "street-crime"],
        },
    )
    assert done.status_code == 200, done.text
    assert "登録が完了しました" in done.text
    assert "青葉区" in done.text and "仙台北警察署" in done.text

    subscriber = web.subscriber("taro..yamada.@docomo.ne.jp")
    assert subscriber is not None and subscriber.status == ACTIVE
    assert subscriber.area_ids == ["aoba", "st-sendai-kita"]
    assert categories_from_mask(subscriber.category_mask) == ("child-women", "street-crime")
    purpose, recipient, body = web.outbox()[-1]
    assert (purpose, recipient) == ("complete", "taro..yamada.@docomo.ne.jp")
    manage = web.link_in_last_mail("manage")
    assert web.client.get(f"/manage/{manage}").status_code == 200

    # The link is spent: reopening it says so and changes nothing.
    again = web.client.get(f"/register/{token}")
    assert again.status_code == 410
    assert "すでに使われています" in again.text


def test_register_form_needs_an_area_and_keeps_choices(web: Web) -> None:
    token = web.pending("hanako@example.jp")
    answer = web.post_form(f"/register/{token}", {"category": ["other"]})
    assert answer.status_code == 400
    assert "地域を1つ以上選んでください" in answer.text
    assert checked(answer.text, "category") == {"other"}
    assert web.subscriber("hanako@example.jp").status == PENDING  # type: ignore[union-attr]


def test_signup_answer_is_the_same_for_new_registered_and_throttled(web: Web) -> None:
    web.active("known@example.jp")
    web.clock.advance(minutes=11)  # past the 10-minute guard for the registered address
    new = web.post_form("/signup", {"address": "fresh@example.jp"})
    registered = web.post_form("/signup", {"address": "known@example.jp"})
    throttled = web.post_form("/signup", {"address": "fresh@example.jp"})
    assert new.status_code == registered.status_code == throttled.status_code == 200
    assert new.text == registered.text == throttled.text
    assert [p for p, _, _ in web.outbox()][-2:] == ["register", "manage"]


def test_signup_rejects_an_invalid_address_and_escapes_it(web: Web) -> None:
    answer = web.post_form("/signup", {"address": "<script>alert(1)</script>"})
    assert answer.status_code == 400
    assert "メールアドレスの形式が正しくありません" in answer.text
    assert "<script>" not in answer.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in answer.text
    assert web.outbox() == []


# --- the answer budget ([limits]) ------------------------------------------------------------


def signup_from(web: Web, address: str, ip: str = "127.0.0.1", lang: str = "") -> TestResponse:
    path = "/signup" + (f"?lang={lang}" if lang else "")
    return web.client.post(
        path,
        data={"csrf": web.csrf(path), "address": address},
        environ_overrides={"REMOTE_ADDR": ip},
    )


def test_signup_past_the_per_ip_limit_is_429_and_queues_nothing(tmp_path: Path) -> None:
    web = make_web(tmp_path, limits={"answers_per_ip_per_minute": 2})
    assert signup_from(web, "a1@example.jp").status_code == 200
    web.clock.advance(seconds=20)
    assert signup_from(web, "a2@example.jp").status_code == 200
    over = signup_from(web, "a3@example.jp")
    assert over.status_code == 429
    assert over.headers["Retry-After"] == "40"  # the first answer leaves the minute then
    assert "もう一度送信してください" in over.text and "1分ほど" in over.text
    assert "entry@mail.example.jp" in over.text  # the blank-mail way in
    assert [r for _, r, _ in web.outbox()] == ["a1@example.jp", "a2@example.jp"]
    assert web.subscriber("a3@example.jp") is None  # nothing else changed
    # Another IP has a budget of its own; in English the page says the same.
    assert signup_from(web, "a3@example.jp", ip="192.0.2.7").status_code == 200
    english = signup_from(web, "a4@example.jp", lang="en")
    assert english.status_code == 429 and "send the form again" in english.text
    web.clock.advance(seconds=41)
    assert signup_from(web, "a4@example.jp").status_code == 200
    assert len(web.outbox()) == 4


def test_signup_from_a_trusted_proxy_skips_the_per_ip_limit_not_the_hourly_one(
    tmp_path: Path,
) -> None:
    web = make_web(
        tmp_path,
        limits={
            "answers_per_ip_per_minute": 1,
            "answers_per_hour": 3,
            "trusted_networks": ["10.0.0.0/8"],
        },
    )
    for n in range(3):
        assert signup_from(web, f"p{n}@example.jp", ip="10.1.2.3").status_code == 200
    over = signup_from(web, "p3@example.jp", ip="10.1.2.3")
    assert over.status_code == 429
    assert over.headers["Retry-After"] == "3600"
    assert len(web.outbox()) == 3


def test_throttled_and_invalid_signups_cost_nothing(tmp_path: Path) -> None:
    web = make_web(tmp_path, limits={"answers_per_ip_per_minute": 2})
    assert signup_from(web, "same@example.jp").status_code == 200
    # The address's own 10-minute guard answers the same page and sends nothing ...
    assert signup_from(web, "same@example.jp").status_code == 200
    assert signup_from(web, "not an address").status_code == 400
    # ... so the second answer of the minute is still there.
    assert signup_from(web, "other@example.jp").status_code == 200
    assert len(web.outbox()) == 2
    # Past the limit a typing mistake is still told as such.
    assert signup_from(web, "not an address").status_code == 400
    assert signup_from(web, "third@example.jp").status_code == 429


# --- change and cancel ----------------------------------------------------------------------


def test_manage_update_sticks(web: Web) -> None:
    manage, _ = web.active("ichiro@example.jp", ("aoba",), ("child-women",))
    form = web.client.get(f"/manage/{manage}")
    assert form.status_code == 200
    assert checked(form.text, "area") == {"aoba"}
    assert checked(form.text, "category") == {"child-women"}
    assert '<details class="block" open>' in form.text  # the block holding a choice is open

    saved = web.post_form(
        f"/manage/{manage}",
        {"action": "update", "area": ["block-sennan", "all"], "category": ["other"]},
    )
    assert saved.status_code == 200, saved.text
    assert "変更しました" in saved.text
    subscriber = web.subscriber("ichiro@example.jp")
    assert subscriber is not None
    assert subscriber.area_ids == ["all", "block-sennan"]
    assert categories_from_mask(subscriber.category_mask) == ("other",)
    assert checked(web.client.get(f"/manage/{manage}").text, "area") == {"all", "block-sennan"}


def test_manage_update_with_an_unknown_area_changes_nothing(web: Web) -> None:
    manage, _ = web.active("jiro@example.jp")
    answer = web.post_form(
        f"/manage/{manage}",
        {"action": "update", "area": ['"><script>x</script>'], "category": ["other"]},
    )
    assert answer.status_code == 400
    assert "<script>x" not in answer.text
    assert web.subscriber("jiro@example.jp").area_ids == ["aoba"]  # type: ignore[union-attr]


def test_manage_cancel_asks_once_more_then_erases(web: Web) -> None:
    manage, _ = web.active("saburo@example.jp")
    asked = web.post_form(f"/manage/{manage}", {"action": "cancel"})
    assert asked.status_code == 200
    assert "本当に解除しますか" in asked.text
    assert 'name="action" value="cancel-confirmed"' in asked.text
    assert web.subscriber("saburo@example.jp") is not None  # the first press changes nothing
    answer = web.post_form(f"/manage/{manage}", {"action": "cancel-confirmed"})
    assert answer.status_code == 200
    assert "登録を解除しました" in answer.text
    assert web.subscriber("saburo@example.jp") is None
    gone = web.client.get(f"/manage/{manage}")
    assert gone.status_code == 410
    assert "すでに解除されています" in gone.text


def test_unsubscribe_get_changes_nothing_and_post_cancels(web: Web) -> None:
    manage, unsubscribe = web.active("shiro@example.jp")
    page = web.client.get(f"/unsubscribe/{unsubscribe}")
    assert page.status_code == 200
    assert "登録を解除する" in page.text
    assert f"/manage/{manage}" in page.text
    assert web.subscriber("shiro@example.jp") is not None
    answer = web.post_form(f"/unsubscribe/{unsubscribe}", {})
    assert answer.status_code == 200
    assert "登録を解除しました" in answer.text
    assert web.subscriber("shiro@example.jp") is None


def test_head_is_answered_as_get_without_the_body(web: Web) -> None:
    # Link checkers and mail previews ask HEAD first: no CSRF refusal, nothing changed.
    token = web.pending("hanako@docomo.ne.jp")
    manage, unsubscribe = web.active("jiro@example.jp")
    for path in (f"/register/{token}", f"/manage/{manage}", f"/unsubscribe/{unsubscribe}"):
        head = web.client.head(path)
        assert (head.status_code, head.data) == (200, b""), path
        assert head.headers["Content-Type"] == "text/html; charset=utf-8"
    assert web.client.head("/signup").status_code == 200
    subscriber = web.subscriber("jiro@example.jp")
    assert subscriber is not None and subscriber.status == ACTIVE
    assert web.client.get(f"/register/{token}").status_code == 200  # still pending


def test_one_click_unsubscribe_needs_no_cookie_or_csrf(web: Web) -> None:
    _, unsubscribe = web.active("goro@example.jp")
    mail_client = Client(web.app, use_cookies=False)  # as Gmail's servers POST it (RFC 8058)
    answer = mail_client.post(
        f"/unsubscribe/{unsubscribe}",
        data="List-Unsubscribe=One-Click",
        content_type="application/x-www-form-urlencoded",
    )
    assert answer.status_code == 200
    assert web.subscriber("goro@example.jp") is None
    # A retry by the mail client still succeeds: the address gets no more mail.
    again = mail_client.post(f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "One-Click"})
    assert again.status_code == 200
    # A forged token does not.
    forged = mail_client.post(
        f"/unsubscribe/{unsubscribe[:-2]}xx", data={"List-Unsubscribe": "One-Click"}
    )
    assert forged.status_code == 400


def test_unsubscribe_post_without_one_click_body_needs_csrf(web: Web) -> None:
    _, unsubscribe = web.active("rokuro@example.jp")
    answer = Client(web.app).post(f"/unsubscribe/{unsubscribe}", data={"List-Unsubscribe": "x"})
    assert answer.status_code == 400
    assert web.subscriber("rokuro@example.jp") is not None


def test_unsubscribe_and_manage_links_do_not_mix(web: Web) -> None:
    manage, unsubscribe = web.active("nana@example.jp")
    assert web.client.get(f"/manage/{unsubscribe}").status_code == 400
    assert web.client.get(f"/unsubscribe/{manage}").status_code == 400
    assert web.subscriber("nana@example.jp") is not None


# --- the same page for every request ------------------------------------------------------

A_COOKIE = "maild_csrf=q3Vd8_RmT0aZk-1YbNw2Xc5LhPj7Ue4Gs9Ko6If0Eiw"


def without_csrf(response: TestResponse) -> tuple[int, list[tuple[str, str]], str]:
    """Status, headers and page with the per-request random parts (new cookie) blanked."""
    headers = [
        (k, re.sub(r"maild_csrf=[^;]+", "maild_csrf=*", v) if k == "Set-Cookie" else v)
        for k, v in response.headers.items()
    ]
    return response.status_code, headers, CSRF_FIELD.sub('name="csrf" value="*"', response.text)


@pytest.mark.parametrize("root", ["", "/maild"])
def test_pages_do_not_depend_on_the_requests_before_them(tmp_path: Path, root: str) -> None:
    """An app that has answered all sorts of requests (other hosts, roots, languages,
    methods) answers each page as a new app does; the headers are these, in this order,
    and the URLs in a page are Werkzeug's."""
    web = make_web(tmp_path)
    services = web.services
    register = web.pending("&kept@example.jp")
    manage, unsubscribe = web.active("kept2@example.jp", ("aoba",), ("other",))
    routes = {
        "signup": ("/signup", {}),
        "register": (f"/register/{register}", {"token": register}),
        "manage": (f"/manage/{manage}", {"token": manage}),
        "unsubscribe": (f"/unsubscribe/{unsubscribe}", {"token": unsubscribe}),
    }
    requests = [
        (endpoint, lang, headers)
        for endpoint in routes
        for lang in ("ja", "en")
        for headers in ({"Cookie": A_COOKIE}, {})
    ]

    def path(endpoint: str, lang: str) -> str:
        return routes[endpoint][0] + ("?lang=en" if lang == "en" else "")

    def get(app: WebApp, endpoint: str, lang: str, headers: dict[str, str]) -> TestResponse:
        client = Client(app, use_cookies=False)
        return client.get(
            path(endpoint, lang), base_url=f"http://localhost{root}/", headers=headers
        )

    used = Client(web.app, use_cookies=False)
    for host, other_root in [("localhost", ""), ("example.jp:8080", "/other"), ("[::1]", root)]:
        for endpoint, lang, headers in requests:
            for method in ("GET", "HEAD", "POST"):
                base = f"http://{host}{other_root}/"
                used.open(path(endpoint, lang), method=method, base_url=base, headers=headers)
    urls = web.app.url_map.bind("localhost", root or "/")
    for endpoint, lang, headers in requests:
        new_app = create_app(
            web.app.config, services.registrations, services.areas, services.links, web.clock
        )
        expected = get(new_app, endpoint, lang, headers)
        answer = get(web.app, endpoint, lang, headers)
        assert without_csrf(answer) == without_csrf(expected)
        cookie = (
            []
            if headers
            else [("Set-Cookie", f"maild_csrf=*; HttpOnly; Path={root}/; SameSite=Lax")]
        )
        assert without_csrf(answer)[:2] == (
            200,
            [
                ("Content-Type", "text/html; charset=utf-8"),
                ("Content-Length", str(len(answer.data))),
                *cookie,
                ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
                ("X-Frame-Options", "DENY"),
                ("X-Content-Type-Options", "nosniff"),
                ("Referrer-Policy", "no-referrer"),
                ("Cache-Control", "no-store"),
            ],
        )
        values, in_lang = routes[endpoint][1], ({"lang": "en"} if lang == "en" else {})
        page = {  # the form's action and the language switch
            urls.build(endpoint, {**values, **in_lang}),
            urls.build(endpoint, {**values, **({} if in_lang else {"lang": "en"})}),
        }
        static = urls.build("static", {"filename": "maild.css"})
        others = {
            "mailto:entry@mail.example.jp",
            urls.build("manage", {"token": manage, **in_lang}),
            urls.build("alerts", in_lang),  # the footer's link to the archive
        }
        links = set(re.findall(r'(?:href|action)="([^"]*)"', answer.text))
        assert {static, *page} <= links <= {static, *page, *others}


def test_register_form_refuses_links_of_erased_and_revoked_subscribers(web: Web) -> None:
    erased, revoked = web.pending("gone@example.jp"), web.pending("revoked@example.jp")
    with web.services.db.transaction() as session:
        session.execute(text("DELETE FROM subscribers WHERE address = 'gone@example.jp'"))
        session.execute(
            text("UPDATE subscribers SET link_key = 'new' WHERE address = 'revoked@example.jp'")
        )
    for token in (erased, revoked):
        page = web.client.get(f"/register/{token}")
        assert page.status_code == 410
        assert "すでに使われています" in page.text


# --- bad links change nothing ---------------------------------------------------------------


def test_tampered_register_token_changes_nothing(web: Web) -> None:
    token = web.pending("hachi@example.jp")
    tampered = token[:-3] + ("AAA" if not token.endswith("AAA") else "BBB")
    csrf = web.csrf("/signup")
    for response in (
        web.client.get(f"/register/{tampered}"),
        web.client.post(f"/register/{tampered}", data={"csrf": csrf, "area": "all"}),
    ):
        assert response.status_code == 400
        assert "リンクが正しくありません" in response.text
        assert "entry@mail.example.jp" in response.text  # what to do next
        assert 'href="/signup"' in response.text
    assert web.subscriber("hachi@example.jp").status == PENDING  # type: ignore[union-attr]
    assert len(web.outbox()) == 1


def test_expired_register_token_changes_nothing(web: Web) -> None:
    token = web.pending("kyu@example.jp")
    csrf = web.csrf(f"/register/{token}")
    web.clock.advance(hours=25)
    page = web.client.get(f"/register/{token}")
    assert page.status_code == 410
    assert "有効期限が切れました" in page.text
    assert "もう一度空メールを" in page.text
    assert "entry@mail.example.jp" in page.text
    post = web.client.post(
        f"/register/{token}", data={"csrf": csrf, "area": "all", "category": "other"}
    )
    assert post.status_code == 410
    subscriber = web.subscriber("kyu@example.jp")
    assert subscriber is not None and subscriber.status == PENDING and subscriber.area_ids == []


def test_a_form_over_the_limit_gets_a_413_page_and_changes_nothing(web: Web) -> None:
    token = web.pending("big@example.jp")
    data = {"csrf": web.csrf(f"/register/{token}"), "area": "all", "category": "other"}
    answer = web.client.post(f"/register/{token}", data={**data, "pad": "x" * MAX_BODY_BYTES})
    assert answer.status_code == 413
    assert "送信内容が大きすぎます" in answer.text
    assert web.subscriber("big@example.jp").status == PENDING  # type: ignore[union-attr]


def test_unknown_route_gets_a_404_page(web: Web) -> None:
    answer = web.client.get("/nowhere")
    assert answer.status_code == 404
    assert "ページが見つかりません" in answer.text
    assert answer.headers["Content-Type"].startswith("text/html")
    assert web.client.delete("/signup").status_code == 405


def test_a_host_header_that_is_no_host_name_gets_a_400_and_one_masked_line(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    token = web.pending("hanako@docomo.ne.jp")
    with caplog.at_level(logging.INFO, logger="maild.web"):
        answer = web.client.get(f"/register/{token}", headers={"Host": "a..b"})
    assert answer.status_code == 400
    assert answer.text.startswith("リクエストを読み取れませんでした。")
    assert answer.headers["X-Content-Type-Options"] == "nosniff"
    assert "refused" in caplog.text and token[:6] in caplog.text
    assert token not in caplog.text


# --- CSRF -----------------------------------------------------------------------------------


def test_posts_without_a_valid_csrf_token_are_refused(web: Web) -> None:
    token = web.pending("ju@example.jp")
    manage, unsubscribe = web.active("juichi@example.jp")
    outbox_before = len(web.outbox())
    web.csrf("/signup")  # the client holds a cookie now
    other = web.services.links.make(CSRF, "A" * 43)  # signed, but for another cookie
    for data in ({}, {"csrf": "nonsense"}, {"csrf": other}):
        for path, form in (
            ("/signup", {"address": "x@example.jp"}),
            (f"/register/{token}", {"area": "all", "category": "other"}),
            (f"/manage/{manage}", {"action": "cancel"}),
            (f"/unsubscribe/{unsubscribe}", {}),
        ):
            answer = web.client.post(path, data={**form, **data})
            assert answer.status_code == 400, (path, data)
            assert "ページを開き直して" in answer.text
    assert len(web.outbox()) == outbox_before
    assert web.subscriber("ju@example.jp").status == PENDING  # type: ignore[union-attr]
    assert web.subscriber("juichi@example.jp") is not None


def test_csrf_with_a_strange_cookie_is_a_400_not_a_500(web: Web) -> None:
    csrf = web.csrf("/signup")
    web.client.set_cookie("maild_csrf", "ü" * 43)
    answer = web.client.post("/signup", data={"csrf": csrf, "address": "odd@example.jp"})
    assert answer.status_code == 400
    assert web.outbox() == []


def test_csrf_token_expires_with_time(web: Web) -> None:
    csrf = web.csrf("/signup")
    web.clock.advance(hours=13)
    answer = web.client.post("/signup", data={"csrf": csrf, "address": "late@example.jp"})
    assert answer.status_code == 400
    assert web.outbox() == []


def test_cookie_and_security_headers(tmp_path: Path) -> None:
    web = make_web(tmp_path, service={"base_url": "https://mail.example.jp"})
    page = web.client.get("/signup")
    cookie = page.headers["Set-Cookie"]
    for part in ("maild_csrf=", "HttpOnly", "SameSite=Lax", "Secure", "Path=/"):
        assert part in cookie
    manage, _ = web.active("sec@example.jp")
    token_page = web.client.get(f"/manage/{manage}")
    for response in (page, token_page, web.client.get("/nowhere")):
        headers = response.headers
        assert "default-src 'none'" in headers["Content-Security-Policy"]
        assert "script-src" not in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["Referrer-Policy"] == "no-referrer"
        assert headers["Cache-Control"] == "no-store"
    html = token_page.text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in html
    assert "<script" not in html and not re.search(r"\son[a-z]+=", html)


def test_plain_http_cookie_is_not_secure(web: Web) -> None:
    assert "Secure" not in web.client.get("/signup").headers["Set-Cookie"]


def test_stylesheet_is_served(web: Web) -> None:
    css = web.client.get("/static/maild.css")
    try:
        assert css.status_code == 200
        assert css.headers["Content-Type"].startswith("text/css")
        assert "label.check" in css.text
        # Kept by browsers for an hour (not "no-store"), with the same security headers.
        assert css.headers.getlist("Cache-Control") == ["public, max-age=3600"]
        assert css.headers["X-Content-Type-Options"] == "nosniff"
        assert "default-src 'none'" in css.headers["Content-Security-Policy"]
    finally:
        css.close()  # as a WSGI server does: the file is closed
    assert web.client.get("/static/../app.py").status_code == 404


# --- languages --------------------------------------------------------------------------------


def test_english_pages_keep_the_language_through_the_form(web: Web) -> None:
    page = web.client.get("/signup?lang=en")
    assert '<html lang="en">' in page.text
    assert "Sign up" in page.text
    assert 'action="/signup?lang=en"' in page.text
    answer = web.client.post(
        "/signup?lang=en",
        data={"csrf": CSRF_FIELD.search(page.text)[1], "address": "en@example.jp"},  # type: ignore[index]
    )
    assert "Please check your mail" in answer.text
    token = web.link_in_last_mail("register")
    form = web.client.get(f"/register/{token}?lang=en")
    assert "Central block" in form.text and "Register" in form.text
    assert f'action="/register/{token}?lang=en"' in form.text
    web.clock.advance(hours=25)
    assert "This sign-up link has expired" in web.client.get(f"/register/{token}?lang=en").text


def test_unknown_language_falls_back_to_japanese(web: Web) -> None:
    page = web.client.get('/signup?lang="><script>')
    assert '<html lang="ja">' in page.text
    assert "<script>" not in page.text


# --- health -----------------------------------------------------------------------------------


def test_healthz_reports_the_database(web: Web) -> None:
    answer = web.client.get("/healthz")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"] == "application/json"
    assert json.loads(answer.text) == {"status": "ok", "database": "ok"}


def test_healthz_is_503_when_a_part_is_down(tmp_path: Path) -> None:
    report = {"status": "ok", "database": "ok", "smtp": "listening"}
    web = make_web(tmp_path, health=lambda: report)
    assert web.client.get("/healthz").status_code == 200
    report["smtp"] = "stopped"
    answer = web.client.get("/healthz")
    assert answer.status_code == 503
    assert json.loads(answer.text) == {"status": "error", "database": "ok", "smtp": "stopped"}


def test_healthz_is_503_when_the_check_fails(tmp_path: Path) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("boom")

    web = make_web(tmp_path, health=broken)
    assert web.client.get("/healthz").status_code == 503


def test_health_status_is_pure() -> None:
    assert health_status({"database": "ok"}) == (200, {"status": "ok", "database": "ok"})
    assert health_status({"status": "starting"})[0] == 503
    assert health_status({"smtp": {"port": 25}})[0] == 503  # odd shapes are not "ok"


# --- failures are caught once, logged without tokens ----------------------------------------


def test_server_error_page_and_log_without_token(
    web: Web, caplog: pytest.LogCaptureFixture
) -> None:
    manage, _ = web.active("err@example.jp")
    with web.services.db.transaction() as session:
        session.execute(text("DROP TABLE subscriber_areas"))
    with caplog.at_level(logging.INFO):
        answer = web.client.get(f"/manage/{manage}")
    assert answer.status_code == 500
    assert "ただいま処理できません" in answer.text
    failures = [r for r in caplog.records if r.name == "maild.web" and r.levelno == logging.ERROR]
    assert failures
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert manage not in logged and manage[:6] in logged


def test_refused_links_are_logged_masked(web: Web, caplog: pytest.LogCaptureFixture) -> None:
    token = web.pending("mask@example.jp")
    web.clock.advance(hours=25)
    with caplog.at_level(logging.INFO, logger="maild"):
        web.client.get(f"/register/{token}")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "expired" in logged
    assert token not in logged and "mask@example.jp" not in logged


def test_safe_path_masks_tokens() -> None:
    assert safe_path("/manage/abcdefghijk") == "/manage/abcdef…"
    assert safe_path("/signup") == "/signup"


# --- the separate WSGI entry point ------------------------------------------------------------


def test_wsgi_application_from_maild_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path)
    make_web(tmp_path)  # migrates the database, as `maild db upgrade` would
    monkeypatch.setenv(wsgi.CONFIG_ENV, str(path))
    monkeypatch.setattr(wsgi, "_application", None)
    client = Client(wsgi.application)
    assert client.get("/healthz").status_code == 200
    assert client.get("/signup").status_code == 200


def test_wsgi_application_without_config_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(wsgi.CONFIG_ENV, raising=False)
    monkeypatch.setattr(wsgi, "_application", None)
    with pytest.raises(Exception, match="MAILD_CONFIG is not set"):
        wsgi.build_from_env()


@pytest.mark.parametrize("extra", ["%C3%A9", "%00", "~", "%20", "!", "%2B", "=", "%E3%81%82"])
def test_a_token_with_bytes_outside_its_alphabet_is_refused_on_every_route(
    web: Web, extra: str
) -> None:
    # Issue 13.10: itsdangerous's base64 skips such bytes, so TOKEN%C3%A9 loaded as TOKEN.
    register = web.pending("ju@example.jp")
    manage, unsubscribe = web.active("juichi@example.jp")
    for route, token in (("register", register), ("manage", manage), ("unsubscribe", unsubscribe)):
        assert web.client.get(f"/{route}/{token}").status_code == 200  # the token itself works
        response = web.client.get(f"/{route}/{token}{extra}")
        assert response.status_code in (400, 404), (route, extra)
        assert "リンクが正しくありません" in response.text or response.status_code == 404


def test_signup_page_does_the_same_database_work_for_a_registered_and_a_new_address(
    tmp_path: Path,
) -> None:
    # Issue 13.12: the answer differs (manage link or register link), so it is written
    # after the page has gone; the page itself must not touch the database differently.
    config = make_config(tmp_path)
    clock = FakeClock()
    services = build_services(config, clock)
    queued: list[Callable[[], None]] = []
    app = create_app(
        config,
        services.registrations,
        services.areas,
        services.links,
        clock,
        answer_signup=queued.append,
    )
    web = Web(app, ClosingClient(app), services, clock)
    web.active("registered@example.jp")
    clock.advance(minutes=11)  # past the one-answer-per-10-minutes rule
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement.split()[0])

    def post(address: str) -> list[str]:
        csrf = web.csrf("/signup")
        statements.clear()
        event.listen(services.db.engine, "before_cursor_execute", record)
        try:
            response = web.client.post("/signup", data={"csrf": csrf, "address": address})
        finally:
            event.remove(services.db.engine, "before_cursor_execute", record)
        assert response.status_code == 200
        return list(statements)

    mails_before = len(web.outbox())
    assert post("registered@example.jp") == post("new@example.jp") == []
    assert len(queued) == 2 and len(web.outbox()) == mails_before  # nothing answered yet
    for job in queued:
        job()
    kinds = [purpose for purpose, _, _ in web.outbox()[mails_before:]]
    assert len(kinds) == 2 and kinds[0] != kinds[1]  # a manage and a register mail
