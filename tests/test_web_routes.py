"""The routing shortcuts (maild.web.routes) give Werkzeug's own answers: for the app's
URL map over a broad set of paths, methods, script roots and hosts, and they stand aside
for maps where the path alone does not decide."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.routing import Map, MapAdapter, PathConverter, RequestRedirect, Rule
from werkzeug.test import EnvironBuilder

from maild.common.clock import FakeClock
from maild.service.services import build_services
from maild.web.app import create_app
from maild.web.routes import Shortcuts
from tests.configs import make_config

TOKEN = "WzEsImFiYzEyMyJd.aGJjZA.q3Vd8_RmT0aZk-1YbNw2Xc5LhPj"  # the shape of ours
FIRST = ["register", "manage", "unsubscribe", "signup", "static", "Register", "", "nowhere"]
REST = [
    "",
    "/",
    f"/{TOKEN}",
    f"/{TOKEN}/",
    "/a/b",
    "/a b",
    "/é",
    "/%41",
    "/..",
    "/a~b'c&d=e;f!$()*+,:@",
    "/x\n",
    "/x?y#z",
    "/<x>",
    "/style.css",
]
PATHS = [
    lead + first + rest for lead in ("/", "//", "", "x") for first in FIRST for rest in REST
] + [
    "/",
    "",
    "/signup/",
    "/favicon.ico",
    "/static/a/b.css",
    "/register//x",
]
METHODS = ["GET", "HEAD", "POST", "PUT", "get", "OPTIONS"]
ROOTS = ["", "/", "/maild", "/maild/", "/m&x", "/メール"]


@pytest.fixture(scope="module")
def url_map(tmp_path_factory: pytest.TempPathFactory) -> Map:
    folder = tmp_path_factory.mktemp("routes")
    config = make_config(folder)
    clock = FakeClock()
    services = build_services(config, clock)
    app = create_app(config, services.registrations, services.areas, services.links, clock)
    return app.url_map


def bound(url_map: Map, root: str, **headers: str) -> MapAdapter:
    """The map bound as the app binds it (bind_to_environ), for a request under ``root``."""
    environ = EnvironBuilder(base_url="http://localhost:8080/", headers=headers).get_environ()
    environ["SCRIPT_NAME"] = root.encode().decode("latin-1")  # WSGI: bytes as latin-1
    return url_map.bind_to_environ(environ)


def werkzeug_match(adapter: MapAdapter, path: str, method: str) -> Any:
    try:
        return adapter.match(path, method, query_args="")
    except (HTTPException, RequestRedirect) as e:
        return type(e)


def test_the_token_routes_have_shortcuts(url_map: Map) -> None:
    assert Shortcuts.of(url_map).words == {"register", "manage", "unsubscribe"}


def test_matches_are_werkzeugs(url_map: Map) -> None:
    shortcuts = Shortcuts.of(url_map)
    taken = 0
    for root in ROOTS:
        adapter = bound(url_map, root)
        for path in PATHS:
            for method in METHODS:
                got = shortcuts.match(adapter, path, method)
                if got is not None:
                    taken += 1
                    assert got == werkzeug_match(adapter, path, method), (root, path, method)
    # Per root: the 3 routes, each with the 10 rests of one segment, by GET, HEAD and POST.
    assert taken == len(ROOTS) * 3 * 3 * 10


def test_a_websocket_request_is_left_to_werkzeug(url_map: Map) -> None:
    adapter = bound(url_map, "", Connection="Upgrade", Upgrade="websocket")
    path = f"/register/{TOKEN}"
    assert Shortcuts.of(url_map).match(adapter, path, "GET") is None
    assert werkzeug_match(adapter, path, "GET") is not None  # a 400 of Werkzeug's


def test_a_request_for_another_subdomain_is_left_to_werkzeug() -> None:
    url_map = Map([rule("/register/<token>")])
    adapter = url_map.bind("example.jp", subdomain="www")
    assert Shortcuts.of(url_map).match(adapter, "/register/x", "GET") is None
    assert werkzeug_match(adapter, "/register/x", "GET") is NotFound


def test_no_shortcut_with_another_default_converter() -> None:
    url_map = Map([rule("/register/<token>")], converters={"default": PathConverter})
    assert Shortcuts.of(url_map).words == frozenset()
    assert werkzeug_match(url_map.bind("localhost"), "/register/a/b", "GET")[1] == {"token": "a/b"}


def test_own_urls_are_werkzeugs(url_map: Map) -> None:
    shortcuts = Shortcuts.of(url_map)
    taken = matched = 0
    for root in ROOTS:
        adapter = bound(url_map, root)
        for path in PATHS:
            try:
                endpoint, values = adapter.match(path, "GET", query_args="")
            except (HTTPException, RequestRedirect):
                continue
            matched += 1
            url = shortcuts.url(adapter, path)
            if url is not None:
                taken += 1
                assert url == adapter.build(endpoint, values), (root, path)
    assert matched > taken > len(ROOTS) * 10


def rule(string: str, endpoint: str = "register", **options: Any) -> Rule:
    return Rule(string, endpoint=endpoint, methods=["GET", "POST"], **options)


def test_a_plain_rule_has_a_shortcut() -> None:
    url_map = Map([rule("/register/<token>"), rule("/signup", "signup")])
    assert Shortcuts.of(url_map).words == {"register"}


@pytest.mark.parametrize(
    "rules",
    [
        [rule("/register/help", "help")],  # matched first for /register/help
        [rule("/<lang>/signup", "signup")],  # any first segment
        [rule("/register/<token>/", "register_slash")],  # /register/x redirects there
        [rule("/manage/<token>"), rule("/manage", "manage")],  # two rules for the endpoint
        [rule("/<path:rest>", "catch_all")],
    ],
)
def test_no_shortcut_where_another_rule_may_match(rules: list[Rule]) -> None:
    url_map = Map([rule("/register/<token>"), *rules])
    assert "register" not in Shortcuts.of(url_map).words


@pytest.mark.parametrize(
    "plain",
    [
        Rule("/register/<token>", endpoint="register"),  # any method
        rule("/register/<int:token>"),
        rule("/register/<string(length=8):token>"),
        rule("/register/<token>", defaults={"lang": "ja"}),
        rule("/register/<token>", redirect_to="/signup"),
        Rule("/register/<token>", endpoint="register", methods=["GET"], websocket=True),
        rule("/register/<token>", build_only=True),
        rule("/register/<token>", subdomain="www"),
        rule("/register/<token>/"),
        rule("/register/<token>", endpoint=("register", 2)),
    ],
)
def test_no_shortcut_for_rules_that_are_not_one_plain_segment(plain: Rule) -> None:
    assert Shortcuts.of(Map([plain, rule("/signup", "signup")])).words == frozenset()


def test_no_url_shortcut_when_a_rule_builds_absolute_urls() -> None:
    url_map = Map(
        [
            rule("/register/<token>"),
            Rule("/live", endpoint="live", methods=["GET"], websocket=True),
        ]
    )
    adapter = url_map.bind("localhost")
    assert Shortcuts.of(url_map).url(adapter, f"/register/{TOKEN}") is None
    url_map = Map([rule("/register/<token>"), rule("/x", "x", subdomain="www")])
    adapter = url_map.bind("localhost")
    assert Shortcuts.of(url_map).url(adapter, f"/register/{TOKEN}") is None
    assert Shortcuts.of(Map([rule("/register/<token>")])).url(adapter, "/register/x") == (
        "/register/x"
    )
    host_map = Map([rule("/register/<token>", host="a.jp")], host_matching=True)
    shortcuts = Shortcuts.of(host_map)
    assert shortcuts.words == frozenset()
    assert shortcuts.url(host_map.bind("a.jp"), f"/register/{TOKEN}") is None
