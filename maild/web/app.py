"""The resident-facing web pages (SPEC §8): sign-up, the registration form, change and
cancel, unsubscribe (RFC 8058 one-click) and a health check.

A small Werkzeug application. The rules live in :mod:`maild.residents.registration`; this
module turns requests into calls and results into pages, and owns what is
particular to the web: CSRF (double-submit cookie plus a signed hidden field),
security headers, the language switch and the area picker, which works without
JavaScript on a small phone (a ``<details>`` group per block).

Tokens sit in URL paths, so pages send ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``, and the request log masks them.

``/signup`` spends from the same :class:`~maild.residents.limits.AnswerBudget` as blank
mails when the daemon passes its own; past a limit it answers 429 with
``Retry-After`` and queues nothing. The client is ``REMOTE_ADDR``: behind a
reverse proxy every request comes from the proxy, so put the proxy's address in
``[limits] trusted_networks`` (the hourly cap still holds). ``X-Forwarded-For``
is not read: anyone can send it.
"""

from __future__ import annotations

import base64
import functools
import hmac
import json
import logging
import math
import re
import secrets
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from sqlalchemy import text as sql_text
from werkzeug.datastructures import ImmutableMultiDict
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.http import dump_cookie, parse_cookie
from werkzeug.routing import Map, MapAdapter, RequestRedirect, Rule
from werkzeug.utils import cached_property, redirect, send_from_directory
from werkzeug.wrappers import Request, Response
from werkzeug.wsgi import get_path_info

from maild.common.addresses import InvalidAddress, mask_token, normalize
from maild.common.clock import Clock
from maild.common.config import Config
from maild.residents.areas import Area, AreaMap, UnknownArea, shared_area_map
from maild.residents.categories import CATEGORIES
from maild.residents.limits import AnswerBudget, OverBudget
from maild.residents.links import (
    CSRF,
    CSRF_MAX_AGE,
    MANAGE,
    REGISTER,
    UNSUBSCRIBE,
    LinkError,
    Links,
)
from maild.residents.registration import (
    SENT_MANAGE,
    SENT_REGISTER,
    ChoiceError,
    PendingView,
    Registrations,
    SubscriberView,
)
from maild.store.db import Database
from maild.web.i18n import DEFAULT_LANG, pick_lang, text
from maild.web.routes import Shortcuts

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("maild.web")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

CSRF_COOKIE = "maild_csrf"
BAD_REQUEST_TEXT = "リクエストを読み取れませんでした。\nThe request could not be read.\n"
PICKER_CACHE_SIZE = 512
KEPT_PAGES = 128  # form pages kept with holes (WebApp._form): every new resident's is one
KEPT_ADAPTERS = 16  # URL map bindings kept per host, script root and scheme (WebApp._adapter)
HTML_CONTENT_TYPE = "text/html; charset=utf-8"  # what Werkzeug writes for mimetype="text/html"
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"  # Prometheus text format
CSRF_FIELD = "csrf"
COOKIE_BYTES = 32
_COOKIE_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")  # secrets.token_urlsafe(COOKIE_BYTES)

# RFC 8058 §3.1: the body a mail client POSTs for one-click unsubscription.
ONE_CLICK_KEY = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"

# Parts of a health report that count as healthy (a listener says "listening").
HEALTHY = frozenset({"ok", "listening"})

# No scripts, no frames, styles and forms only from here (SPEC §8: no JavaScript needed).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# Sent with every answer, after its own headers; none of our answers sets one of these itself.
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # tokens are in our URLs
)
# Every answer but a static file (which keeps send_file's Cache-Control) is not to be stored.
NOT_STORED = (*SECURITY_HEADERS, ("Cache-Control", "no-store"))

_TOKEN_PATH = re.compile(r"^(.*/(?:register|manage|unsubscribe)/)([^/]+)")

Health = Callable[[], Mapping[str, Any]]
K = TypeVar("K")
V = TypeVar("V")
# A kept piece of form HTML: (which piece, the area map's id or 0, language, ticked boxes).
_PieceKey = tuple[str, int, str, frozenset[str]]


class _Request(Request):
    # The forms hold a few dozen short fields; anything bigger is not ours.
    max_content_length = 64 * 1024
    max_form_memory_size = 64 * 1024
    max_form_parts = 500

    @cached_property
    def cookies(self) -> ImmutableMultiDict[str, str]:
        # What Werkzeug's own gives, without walking the whole environ for "Cookie" headers:
        # a WSGI server hands them all over in the one HTTP_COOKIE (PEP 3333).
        return parse_cookie(self.environ, cls=self.dict_storage_class)  # type: ignore[return-value]


# --- the area picker and the category boxes: pure ---------------------------------------


@dataclass(frozen=True)
class Choice:
    """One checkbox: the value sent, its label, and how it is drawn."""

    value: str
    label: str
    checked: bool
    kind: str = ""  # "city": a city with wards (a row of its own); "ward": one of its wards


@dataclass(frozen=True)
class BlockGroup:
    """One block's ``<details>``: the whole block, then its stations and municipalities."""

    name: str
    whole: Choice
    stations: tuple[Choice, ...]
    municipalities: tuple[Choice, ...]
    chosen: int  # ticked boxes inside: shown on the closed summary, and it opens the group

    @property
    def open(self) -> bool:
        return self.chosen > 0


def area_picker(
    areas: AreaMap, chosen: Iterable[str], lang: str
) -> tuple[Choice, tuple[BlockGroup, ...]]:
    """The 県内全域 box and one group per block, with ``chosen`` ids ticked."""
    picked = set(chosen)

    def box(area: Area, label: str | None = None, kind: str = "") -> Choice:
        return Choice(area.id, label or area.name(lang), area.id in picked, kind)

    def muni_kind(area: Area) -> str:
        return "city" if area.wards else "ward" if area.parent else ""

    groups = []
    for block in areas.blocks():
        name = block.name(lang)
        whole = box(block, text(lang, "whole_block", name=name))
        stations = tuple(box(s) for s in areas.stations_in(block.id))
        munis = tuple(box(m, kind=muni_kind(m)) for m in areas.municipalities_in(block.id))
        count = sum(c.checked for c in (whole, *stations, *munis))
        groups.append(BlockGroup(name, whole, stations, munis, count))
    return box(areas.root()), tuple(groups)


def category_boxes(chosen: Iterable[str], lang: str) -> tuple[Choice, ...]:
    picked = set(chosen)
    return tuple(Choice(c.id, c.label(lang), c.id in picked) for c in CATEGORIES)


def summary(areas: AreaMap, view: SubscriberView, lang: str) -> dict[str, str]:
    """What a result page lists: the saved areas and categories, in the page's language."""
    known = [a for a in view.area_ids if a in areas]
    sep = ", " if lang == "en" else "、"
    labels = [c.label(lang) for c in CATEGORIES if c.id in view.categories]
    return {"areas": areas.describe(known, lang), "categories": sep.join(labels)}


def health_status(report: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """HTTP status and body for ``/healthz``: 503 unless every part is ok or listening."""
    parts = {k: v for k, v in report.items() if k != "status"}
    ok = all(_healthy(v) for v in parts.values()) and _healthy(report.get("status", "ok"))
    return (200 if ok else 503), {"status": "ok" if ok else "error", **parts}


def _healthy(value: object) -> bool:
    return isinstance(value, str) and value in HEALTHY


def database_health(db: Database) -> Health:
    """The default health check: the database answers a trivial query."""

    def check() -> dict[str, str]:
        try:
            with db.engine.connect() as connection:
                connection.execute(sql_text("SELECT 1"))
        except Exception as e:  # any failure is the answer here, not an error of ours
            log.warning("health check: database unavailable: %s", type(e).__name__)
            return {"status": "error", "database": "error"}
        return {"status": "ok", "database": "ok"}

    return check


def safe_path(path: str) -> str:
    """A request path fit for the log: the token in it masked."""
    return _TOKEN_PATH.sub(lambda m: m[1] + mask_token(m[2]), path)


@dataclass(frozen=True)
class Block:
    """One piece of a message page: a paragraph, a mailto address, or a link."""

    text: str
    href: str = ""
    mailto: bool = False


class _CookieValues:
    """New CSRF cookie values, made as ``secrets.token_urlsafe(32)`` makes them, from random
    bytes fetched for many at a time per thread: each ``os.urandom`` lets go of the GIL, and
    under load each such hand-over between the web's threads costs a page tens of µs."""

    def __init__(self, batch: int = 64) -> None:
        self._size = COOKIE_BYTES * batch
        self._local = threading.local()

    def __call__(self) -> str:
        local = self._local
        pool: bytes = getattr(local, "pool", b"")
        if not pool:
            pool = secrets.token_bytes(self._size)
        local.pool = pool[COOKIE_BYTES:]
        return base64.urlsafe_b64encode(pool[:COOKIE_BYTES]).rstrip(b"=").decode("ascii")


def _keep(kept: dict[K, V], key: K, value: V, size: int) -> V:
    """Put ``value`` in ``kept``, first dropping its oldest entry if it holds ``size``.

    The web's threads do this at the same time: two may pick the same entry to drop, or
    the dict may change under the picking, and either is no error.
    """
    if len(kept) >= size:
        try:
            del kept[next(iter(kept))]
        except (KeyError, RuntimeError, StopIteration):
            pass
    kept[key] = value
    return value


# --- kept pages: rendered once with holes where each request's values go ---------------

# Private-use characters mark a hole; no text or template of ours holds them.
_HOLE = re.compile("\ue000([a-z]+)\ue001")


def _hole(name: str) -> str:
    return f"\ue000{name}\ue001"


@dataclass(frozen=True)
class _KeptPage:
    """A page rendered with holes, kept encoded: text, hole, text, …, hole, text."""

    texts: tuple[bytes, ...]  # one more than holes
    holes: tuple[str, ...]
    # What it was rendered from: holding them keeps the ids in its key from being reused.
    sources: tuple[object, ...]

    @classmethod
    def of(cls, html: str, *sources: object) -> _KeptPage:
        split = _HOLE.split(html)
        return cls(tuple(t.encode() for t in split[::2]), tuple(split[1::2]), sources)

    def fill(self, values: Mapping[str, Callable[[], str]]) -> bytes:
        """The page with each hole's value escaped, as the template would have it."""
        out = [self.texts[0]]
        for hole, after in zip(self.holes, self.texts[1:], strict=True):
            out.append(escape(values[hole]()).encode())
            out.append(after)
        return b"".join(out)


@dataclass(frozen=True)
class _HoleView:
    masked_address: str = _hole("address")


class _HolePage:
    """Stands in for a :class:`_Page` while a page is kept: its per-request values are holes."""

    def __init__(self, page: _Page) -> None:
        self._page = page

    def csrf(self) -> str:
        return _hole("csrf")

    def switch_url(self) -> str:
        return _hole("switch")

    def static_url(self, filename: str) -> str:
        return self._page.static_url(filename)  # the same for every request with this key


# --- one request --------------------------------------------------------------------------


@functools.cache
def _status_line(code: int) -> str:
    """The status line Werkzeug's Response writes for ``code`` ("410 GONE")."""
    return Response(status=code).status


class _HtmlAnswer:
    """An HTML page handed to the server directly: what ``Response(body, status,
    mimetype="text/html")`` answers, headers and all, without Werkzeug building its
    Headers, then copying and checking them again to start the answer (a sixth of the
    register page). HEAD gets the same headers, Content-Length included, and no body,
    as from Werkzeug. Only for statuses that have a body.
    """

    __slots__ = ("body", "headers", "status_code")

    def __init__(self, body: bytes, status: int, headers: list[tuple[str, str]]) -> None:
        if status < 200 or status in (204, 304):
            raise ValueError(f"an HTML page with status {status}, which has no body")
        self.body = body
        self.status_code = status
        self.headers = headers  # Content-Type, Content-Length, then any of the page's own

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        start_response(_status_line(self.status_code), self.headers)
        return [] if environ["REQUEST_METHOD"] == "HEAD" else [self.body]


# What a view answers: a page, or Werkzeug's Response for a redirect, a file, JSON and such.
Answer = Response | _HtmlAnswer


class _Page:
    """One request's language, CSRF cookie and URL building."""

    def __init__(self, app: WebApp, request: _Request, adapter: MapAdapter) -> None:
        self.app = app
        self.request = request
        self.adapter = adapter
        # Most requests have no query (links in mails): no need to parse one.
        query = request.environ.get("QUERY_STRING")
        self.lang = pick_lang(request.args.get("lang")) if query else DEFAULT_LANG
        self.endpoint = ""
        self.args: Mapping[str, Any] = {}
        self.path = "/"  # the path matched (respond)
        # Without a Cookie header (a link opened from a mail) there is nothing to parse.
        cookie = request.cookies.get(CSRF_COOKIE, "") if "HTTP_COOKIE" in request.environ else ""
        self._cookie = cookie if _COOKIE_VALUE.fullmatch(cookie) else None
        self._set_cookie = False
        self._path: str | None = None

    def t(self, key: str, **values: object) -> str:
        return text(self.lang, key, **values)

    def url(self, endpoint: str, **values: Any) -> str:
        if self.lang != DEFAULT_LANG:
            values["lang"] = self.lang
        return self.adapter.build(endpoint, values)

    def static_url(self, filename: str) -> str:
        return self.adapter.build("static", {"filename": filename})

    def here(self, lang: str | None = None) -> str:
        """This page's URL (matched routes only), in ``lang`` or the current language."""
        if self._path is None:  # made once: a form page wants it twice (action, switch)
            self._path = self._own_url()
        lang = lang or self.lang
        # What build() appends for a value that is no route variable, for our two languages.
        return self._path if lang == DEFAULT_LANG else f"{self._path}?lang={lang}"

    def switch_url(self) -> str:
        return self.here("ja" if self.lang == "en" else "en")

    def _own_url(self) -> str:
        """What ``adapter.build(endpoint, args)`` gives for the route this request matched:
        most often plain from the path itself."""
        url = self.app.shortcuts.url(self.adapter, self.path)
        return self.adapter.build(self.endpoint, self.args) if url is None else url

    def csrf(self) -> str:
        """The hidden field's value: the cookie's value, signed and timed (double submit)."""
        if self._cookie is None:
            self._cookie = self.app.new_cookie()
            self._set_cookie = True
        return self.app.links.make(CSRF, self._cookie)

    def csrf_ok(self) -> bool:
        cookie = self.request.cookies.get(CSRF_COOKIE, "")
        field = self.request.form.get(CSRF_FIELD, "")
        if not cookie or not field:
            return False
        try:
            payload = self.app.links.check(CSRF, field, CSRF_MAX_AGE)
        except LinkError:
            return False
        # Bytes: compare_digest refuses non-ASCII str, and the cookie is the client's to choose.
        return isinstance(payload, str) and hmac.compare_digest(payload.encode(), cookie.encode())

    def render(self, template: str, title: str, status: int = 200, **context: Any) -> _HtmlAnswer:
        return self.response(self.html(template, title, status, page=self, **context), status)

    def html(self, template: str, title: str, status: int, **context: Any) -> str:
        return self.app.jinja.get_template(template).render(
            lang=self.lang,
            t=functools.partial(text, self.lang),
            title=title,
            service=self.app.config.service.name,
            switch=self.switch(status),
            **context,
        )

    @property
    def reading(self) -> bool:
        """GET, or HEAD (which Werkzeug routes as GET and answers without the body)."""
        return self.request.method in ("GET", "HEAD")

    def switch(self, status: int) -> bool:
        """Whether the page links to itself in the other language."""
        return bool(self.endpoint) and status < 400 and self.reading

    def response(self, html: str | bytes, status: int) -> _HtmlAnswer:
        """The answer with page ``html``: the one place a page's headers are made (the
        security headers are added for every answer in :meth:`WebApp.__call__`)."""
        body = html.encode() if isinstance(html, str) else html
        headers = [("Content-Type", HTML_CONTENT_TYPE), ("Content-Length", str(len(body)))]
        if self._set_cookie and self._cookie:
            cookie = self.app.cookie_header(self.request.script_root, self._cookie)
            headers.append(("Set-Cookie", cookie))
        return _HtmlAnswer(body, status, headers)

    def message(self, status: int, title_key: str, *blocks: Block, **context: Any) -> _HtmlAnswer:
        return self.render(
            "message.html", self.t(title_key), status, blocks=blocks, summary=None, **context
        )


# --- the application ----------------------------------------------------------------------


class WebApp:
    """The WSGI application: routes, views, and the one ``try`` at the request boundary."""

    # Form pages rendered once with holes and filled per request (see _form); off, every
    # page is rendered whole (the tests compare the two).
    keep_pages = True

    def __init__(
        self,
        config: Config,
        registrations: Registrations,
        areas: AreaMap,
        links: Links,
        clock: Clock,
        health: Health | None = None,
        metrics: Callable[[], bytes] | None = None,
        budget: AnswerBudget | None = None,
    ) -> None:
        # Without the daemon's shared budget (the separate WSGI entry point) the web keeps
        # its own; set before config, whose setter keeps the budget's limits in step.
        self.budget = budget or AnswerBudget(config.limits, clock)
        self.config = config
        self.metrics = metrics
        self._pieces: dict[_PieceKey, Markup] = {}
        self._pages: dict[tuple[Any, ...], _KeptPage] = {}
        self._adapters: dict[tuple[Any, ...], MapAdapter] = {}
        self._cookie_attributes: dict[str, str] = {}
        self.new_cookie = _CookieValues()
        self.registrations = registrations
        self.areas = areas
        self.links = links
        self.clock = clock
        self.health = health or database_health(registrations.db)
        self.secure_cookie = config.service.base_url.startswith("https://")
        self.jinja = Environment(
            auto_reload=False,  # templates ship with the package; no stat() per render
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.url_map = Map(
            [
                Rule("/", endpoint="index", methods=["GET"]),
                Rule("/signup", endpoint="signup", methods=["GET", "POST"]),
                Rule("/register/<token>", endpoint="register", methods=["GET", "POST"]),
                Rule("/manage/<token>", endpoint="manage", methods=["GET", "POST"]),
                Rule("/unsubscribe/<token>", endpoint="unsubscribe", methods=["GET", "POST"]),
                Rule("/healthz", endpoint="healthz", methods=["GET"]),
                Rule("/metrics", endpoint="metrics", methods=["GET"]),
                Rule("/favicon.ico", endpoint="favicon", methods=["GET"]),
                Rule("/static/<path:filename>", endpoint="static", methods=["GET"]),
            ]
        )
        # Werkzeug's answers for the token routes' plain paths, without its matcher.
        self.shortcuts = Shortcuts.of(self.url_map)
        self._views: dict[str, Callable[..., Answer]] = {
            "index": self.on_index,
            "signup": self.on_signup,
            "register": self.on_register,
            "manage": self.on_manage,
            "unsubscribe": self.on_unsubscribe,
            "healthz": self.on_healthz,
            "metrics": self.on_metrics,
            "static": self.on_static,
            "favicon": self.on_favicon,
        }

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        self._config = config
        self.budget.reconfigure(config.limits)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP, maild.service.reload): pages, limits, areas and the
        cookie's ``Secure`` (set when ``base_url`` is https) from the next request on."""
        self.config = config
        self.areas = shared_area_map(config.areas.file)
        self.secure_cookie = config.service.base_url.startswith("https://")
        self._cookie_attributes = {}

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        try:
            # Not stored in the environ (populate_request): the two would hold each other, and
            # every request would be left for the garbage collector to find.
            response, endpoint = self.respond(_Request(environ, populate_request=False))
        except Exception as e:
            # A request no page can be made for: a Host header that is no host name (the
            # routes cannot be bound to it) or the like. The client's doing, so a 400 and
            # one line, not waitress's 500 and a traceback.
            path = safe_path(str(environ.get("PATH_INFO", "")))
            log.info("%s %s refused: %r", environ.get("REQUEST_METHOD"), path, type(e).__name__)
            response, endpoint = Response(BAD_REQUEST_TEXT, 400, mimetype="text/plain"), ""
        # The security headers are the same on every answer: added to the list handed to the
        # server rather than set on each Response (Headers.set checks and scans, and
        # Response.__call__ copies and checks every header again).
        extra = SECURITY_HEADERS if endpoint == "static" else NOT_STORED

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            return start_response(status, [*headers, *extra], exc_info)

        return response(environ, start)

    def respond(self, request: _Request) -> tuple[Answer, str]:
        """The answer to ``request`` and the endpoint it matched (``""`` if none)."""
        environ = request.environ
        page = _Page(self, request, self._adapter(environ))
        try:
            # The adapter may have been bound for another request: this one's path, method
            # and query, as bind_to_environ reads them.
            page.path = path = get_path_info(environ) if "PATH_INFO" in environ else "/"
            method = environ["REQUEST_METHOD"]
            matched: tuple[Any, Mapping[str, Any]] | None
            matched = self.shortcuts.match(page.adapter, path, method)
            if matched is None:
                matched = page.adapter.match(
                    path, method, query_args=request.query_string.decode(errors="replace")
                )
            page.endpoint, page.args = matched
            response = self._views[page.endpoint](page, **page.args)
        except RequestRedirect as e:
            response = redirect(e.new_url, e.code)
        except HTTPException as e:
            response = self._http_error(page, e)
        except Exception:
            # STYLE §6: catch once, here. The path is masked; the traceback names no token.
            log.exception("%s %s failed", request.method, safe_path(request.path))
            response = self._server_error(page)
        return response, page.endpoint

    def cookie_header(self, root: str, value: str) -> str:
        """The Set-Cookie header for a new CSRF cookie ``value`` under ``root``.

        Werkzeug's ``dump_cookie`` makes its attributes once per root; the value goes in
        front as dump_cookie would put it, since ours are URL-safe base64
        (``_CookieValues``), which it writes unquoted. Formatting the whole header was a
        twentieth of a page.
        """
        attributes = self._cookie_attributes.get(root)
        if attributes is None:
            header = dump_cookie(
                CSRF_COOKIE,
                "v",
                path=root + "/",
                secure=self.secure_cookie,
                httponly=True,
                samesite="Lax",
            )
            attributes = header.removeprefix(f"{CSRF_COOKIE}=v")
            _keep(self._cookie_attributes, root, attributes, KEPT_ADAPTERS)
        return f"{CSRF_COOKIE}={value}{attributes}"

    def _adapter(self, environ: WSGIEnvironment) -> MapAdapter:
        """The URL map bound to ``environ``'s host, script root and scheme.

        Binding checks and IDNA-encodes the host each time, the same for every request
        from the same place, so the adapter is kept per value of everything else
        ``bind_to_environ`` reads. It also holds the first such request's path, method and
        query: ``respond`` passes its own to ``match``, and ``build`` does not read them
        (with one rule per endpoint the method it tries first changes nothing). An
        adapter only reads its fields, so the web's threads can share one.
        """
        get = environ.get
        key = (
            get("HTTP_HOST"),
            get("SERVER_NAME"),
            get("SERVER_PORT"),
            environ["wsgi.url_scheme"],
            get("SCRIPT_NAME"),
            get("HTTP_CONNECTION"),  # with HTTP_UPGRADE: a WebSocket request, scheme ws(s)
            get("HTTP_UPGRADE"),
        )
        adapter = self._adapters.get(key)
        if adapter is None:
            adapter = self.url_map.bind_to_environ(environ)
            _keep(self._adapters, key, adapter, KEPT_ADAPTERS)
        return adapter

    def _http_error(self, page: _Page, e: HTTPException) -> Answer:
        code = e.code or 500
        if code >= 500:
            return self._server_error(page)
        key = {404: "not_found", 405: "method", 413: "too_large"}.get(code, "bad_request")
        response = page.message(code, f"{key}_title", Block(page.t(f"{key}_body")))
        if isinstance(e, MethodNotAllowed) and e.valid_methods:
            response.headers.append(("Allow", ", ".join(e.valid_methods)))
        return response

    def _server_error(self, page: _Page) -> Answer:
        try:
            return page.message(500, "server_error_title", Block(page.t("server_error_body")))
        except Exception:
            log.exception("rendering the error page failed")
            return Response("500 Internal Server Error", status=500, mimetype="text/plain")

    # --- link problems: a page that says what happened and what to do next

    def _link_problem(self, page: _Page, purpose: str, token: str, error: LinkError) -> _HtmlAnswer:
        reason = error.reason
        if reason == "invalid" and purpose != REGISTER and self._signed(purpose, token):
            # Our own, untampered link whose subscriber is gone: they cancelled (or were erased).
            reason = "gone"
        log.info("%s link %s refused: %s", purpose, mask_token(token), reason)
        t = page.t
        again = [
            Block(t("register_again")),
            Block(self.config.smtp.registration_address, mailto=True),
            Block(t("register_again_pc")),
            Block(t("back_to_signup"), href=page.url("signup")),
        ]
        if reason == "invalid":
            if purpose == REGISTER:
                return page.message(400, "invalid_title", Block(t("invalid_body")), *again)
            return page.message(
                400, "invalid_title", Block(t("invalid_body")), Block(t("invalid_manage_next"))
            )
        if reason == "expired":
            return page.message(410, "expired_title", Block(t("expired_body")), *again)
        if reason == "used":
            return page.message(
                410,
                "used_title",
                Block(t("used_body")),
                Block(t("used_lost")),
                Block(self.config.smtp.registration_address, mailto=True),
            )
        return page.message(410, "gone_title", Block(t("gone_body")), *again[1:])

    def _signed(self, purpose: str, token: str) -> bool:
        try:
            self.links.check_subscriber_link(purpose, token)
        except LinkError:
            return False
        return True

    def _csrf_failed(self, page: _Page) -> _HtmlAnswer:
        log.info(
            "%s %s: missing or bad CSRF token", page.request.method, safe_path(page.request.path)
        )
        return page.message(
            400, "csrf_title", Block(page.t("csrf_body")), Block(page.t("reload"), href=page.here())
        )

    def _not_arrived(self, page: _Page) -> Block:
        domain = self.config.mail.from_address.rpartition("@")[2]
        return Block(page.t("not_arrived", domain=domain))

    # --- views

    def on_index(self, page: _Page) -> Response:
        return redirect(page.url("signup"), 303)

    def on_signup(self, page: _Page) -> _HtmlAnswer:
        title = page.t("signup_title")
        registration = self.config.smtp.registration_address
        if page.reading:
            return page.render(
                "signup.html", title, address="", error="", registration=registration
            )
        if not page.csrf_ok():
            return self._csrf_failed(page)
        address = page.request.form.get("address", "")

        def invalid() -> _HtmlAnswer:
            return page.render(
                "signup.html",
                title,
                400,
                address=address,
                error=page.t("signup_invalid"),
                registration=registration,
            )

        try:
            normalize(address)  # a typing mistake is told as such, whatever the budget
        except InvalidAddress:
            return invalid()
        ip = page.request.remote_addr
        try:
            charge = self.budget.take(ip)
        except OverBudget as e:
            log.warning("signup from %s deferred: %s limit", ip, e.reason)
            return self._too_many(page, e.retry_after)
        sent = False
        try:
            sent = self.registrations.request_signup(address) in (SENT_REGISTER, SENT_MANAGE)
        except InvalidAddress:
            return invalid()
        finally:
            if not sent:  # throttled, refused or failed: no mail went out
                self.budget.refund(charge)
        # The same page for a new, a registered and a throttled address (SPEC §8).
        return page.message(
            200,
            "signup_sent_title",
            Block(page.t("signup_sent_body")),
            Block(page.t("signup_sent_registered")),
            self._not_arrived(page),
        )

    def _too_many(self, page: _Page, retry_after: int) -> _HtmlAnswer:
        """429 (RFC 6585 §4): nothing was queued; say when to come back, and the other way in."""
        response = page.message(
            429,
            "too_many_title",
            Block(page.t("too_many_body")),
            Block(page.t("too_many_wait", minutes=max(1, math.ceil(retry_after / 60)))),
            Block(page.t("too_many_blank_mail")),
            Block(self.config.smtp.registration_address, mailto=True),
            Block(page.t("back_to_signup"), href=page.url("signup")),
        )
        response.headers.append(("Retry-After", str(retry_after)))
        return response

    def on_register(self, page: _Page, token: str) -> _HtmlAnswer:
        try:
            view = self.registrations.view_register(token)
        except LinkError as e:
            return self._link_problem(page, REGISTER, token, e)
        if page.reading:
            return self._form(page, "register", view, (), [c.id for c in CATEGORIES])
        if not page.csrf_ok():
            return self._csrf_failed(page)
        form = page.request.form
        area_ids, categories = form.getlist("area"), form.getlist("category")
        try:
            done = self.registrations.complete_register(token, area_ids, categories)
        except LinkError as e:
            return self._link_problem(page, REGISTER, token, e)
        except (ChoiceError, UnknownArea) as e:
            return self._form(page, "register", view, area_ids, categories, e)
        return page.render(
            "message.html",
            page.t("registered_title"),
            blocks=[
                Block(page.t("registered_body", address=done.masked_address)),
                self._not_arrived(page),
            ],
            summary=summary(self.areas, done, page.lang),
        )

    def on_manage(self, page: _Page, token: str) -> _HtmlAnswer:
        try:
            view = self.registrations.view_manage(token)
        except LinkError as e:
            return self._link_problem(page, MANAGE, token, e)
        if page.reading:
            return self._form(page, "manage", view, view.area_ids, view.categories)
        if not page.csrf_ok():
            return self._csrf_failed(page)
        form = page.request.form
        action = form.get("action", "")
        try:
            if action == "cancel":
                self.registrations.cancel(token)
                return page.message(200, "cancelled_title", Block(page.t("cancelled_body")))
            if action != "update":
                return page.message(400, "bad_request_title", Block(page.t("bad_request_body")))
            area_ids, categories = form.getlist("area"), form.getlist("category")
            try:
                saved = self.registrations.update(token, area_ids, categories)
            except (ChoiceError, UnknownArea) as e:
                return self._form(page, "manage", view, area_ids, categories, e)
        except LinkError as e:
            return self._link_problem(page, MANAGE, token, e)
        return page.render(
            "message.html",
            page.t("updated_title"),
            blocks=[
                Block(page.t("updated_body")),
                Block(page.t("back_to_manage"), href=page.here()),
            ],
            summary=summary(self.areas, saved, page.lang),
        )

    def on_unsubscribe(self, page: _Page, token: str) -> _HtmlAnswer:
        request = page.request
        if request.method == "POST" and request.form.get(ONE_CLICK_KEY) == ONE_CLICK_VALUE:
            return self._one_click(page, token)
        try:
            view = self.registrations.view_manage(token, UNSUBSCRIBE)
            if page.reading:
                return page.render(
                    "unsubscribe.html",
                    page.t("unsubscribe_title"),
                    view=view,
                    manage_url=page.url("manage", token=view.manage_token),
                )
            if not page.csrf_ok():
                return self._csrf_failed(page)
            self.registrations.cancel(token, UNSUBSCRIBE)
        except LinkError as e:
            return self._link_problem(page, UNSUBSCRIBE, token, e)
        return page.message(200, "cancelled_title", Block(page.t("cancelled_body")))

    def _one_click(self, page: _Page, token: str) -> _HtmlAnswer:
        """RFC 8058: the mail client POSTs without cookie or CSRF field; the token is the proof."""
        try:
            self.registrations.cancel(token, UNSUBSCRIBE)
        except LinkError as e:
            if not self._signed(UNSUBSCRIBE, token):
                return self._link_problem(page, UNSUBSCRIBE, token, e)
            # Already erased: the address gets no more mail, which is what was asked for.
            log.info("one-click unsubscribe %s: already cancelled", mask_token(token))
        return page.message(200, "cancelled_title", Block(page.t("cancelled_body")))

    def on_healthz(self, page: _Page) -> Response:
        try:
            report: Mapping[str, Any] = self.health()
        except Exception:
            log.exception("health check failed")
            report = {"status": "error"}
        status, body = health_status(report)
        return Response(json.dumps(body, default=str), status=status, mimetype="application/json")

    def on_metrics(self, page: _Page) -> Response:
        if self.metrics is None:
            raise NotFound()
        return Response(self.metrics(), content_type=METRICS_CONTENT_TYPE)

    def on_static(self, page: _Page, filename: str) -> Response:
        response = send_from_directory(STATIC, filename, page.request.environ, max_age=3600)
        assert isinstance(response, Response)
        return response

    def on_favicon(self, page: _Page) -> Response:
        # Browsers ask for it on every site; "no content" keeps their consoles and our logs quiet.
        return Response(status=204)

    # The area picker and the category boxes are most of a form page's work, and the same
    # for everyone with the same choices (every new resident: none, and all categories), so
    # their HTML is kept per language and choice.

    def _areas_html(self, lang: str, chosen: frozenset[str]) -> Markup:
        key = ("areas", id(self.areas), lang, chosen)  # a reload brings a new AreaMap, a new key
        html = self._pieces.get(key)
        if html is None:
            root, groups = area_picker(self.areas, chosen, lang)
            html = self._keep(
                key, self._render_piece("_areas.html", lang, root=root, groups=groups)
            )
        return html

    def _categories_html(self, lang: str, chosen: frozenset[str]) -> Markup:
        key = ("categories", 0, lang, chosen)
        html = self._pieces.get(key)
        if html is None:
            boxes = category_boxes(chosen, lang)
            html = self._keep(key, self._render_piece("_categories.html", lang, boxes=boxes))
        return html

    def _render_piece(self, template: str, lang: str, **context: Any) -> Markup:
        t = functools.partial(text, lang)
        return Markup(self.jinja.get_template(template).render(t=t, **context))

    def _keep(self, key: _PieceKey, html: Markup) -> Markup:
        return _keep(self._pieces, key, html, PICKER_CACHE_SIZE)

    def _form(
        self,
        page: _Page,
        kind: str,
        view: SubscriberView | PendingView,
        area_ids: Iterable[str],
        categories: Iterable[str],
        error: Exception | None = None,
    ) -> _HtmlAnswer:
        """The register or manage form, pre-filled; with ``error`` a 400 that keeps the choices.

        Without an error the page is the same for everyone with the same choices but for a
        few values (the CSRF field, the token in the URLs, the masked address), so it is
        rendered once with holes for them (:class:`_KeptPage`) and filled per request.
        """
        template = f"{kind}.html"
        areas, chosen = frozenset(area_ids), frozenset(categories)

        def render(status: int, **context: Any) -> str:
            # Only when the page is rendered: a kept page has these pieces in it already.
            return page.html(
                template,
                page.t(f"{kind}_title"),
                status,
                areas_html=self._areas_html(page.lang, areas),
                categories_html=self._categories_html(page.lang, chosen),
                **context,
            )

        if error is not None or not self.keep_pages:
            message = ""
            if isinstance(error, ChoiceError):
                message = error.en if page.lang == "en" else error.ja
            elif error is not None:
                message = page.t("unknown_area")
            status = 400 if error else 200
            html = render(status, page=page, view=view, error=message, action=page.here())
            return page.response(html, status)
        key = (
            kind,
            page.lang,
            page.request.script_root,
            page.switch(200),
            areas,
            chosen,
            id(self.config),  # a reload brings new ones, new keys (the page holds the old)
            id(self.areas),
        )
        kept = self._pages.get(key)
        if kept is None:
            html = render(
                200, page=_HolePage(page), view=_HoleView(), error="", action=_hole("action")
            )
            kept = _keep(self._pages, key, _KeptPage.of(html, self.config, self.areas), KEPT_PAGES)
        holes: dict[str, Callable[[], str]] = {
            "csrf": page.csrf,
            "switch": page.switch_url,
            "action": page.here,
            "address": lambda: view.masked_address,
        }
        return page.response(kept.fill(holes), 200)


def create_app(
    config: Config,
    registrations: Registrations,
    areas: AreaMap,
    links: Links,
    clock: Clock,
    health: Health | None = None,
    metrics: Callable[[], bytes] | None = None,
    budget: AnswerBudget | None = None,
) -> WebApp:
    """The WSGI callable for the daemon's waitress server or any other WSGI server.

    ``budget``: the answer budget the SMTP listener spends from too (the daemon
    builds one and passes it to both); without it the app keeps its own.
    """
    return WebApp(config, registrations, areas, links, clock, health, metrics, budget)
