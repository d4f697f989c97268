"""The console as one Werkzeug application: the routes, who is signed in, the one
``try`` at the request boundary, the security headers. The pages are
:mod:`maild.console.views`; accounts and sessions :mod:`maild.console.accounts` and
:mod:`maild.console.sessions`.

Served by the daemon on ``[console] listen``, a listener of its own (never the
residents'). The session cookie is ``HttpOnly``, ``SameSite=Strict`` and, when
``[console] base_url`` is https, ``Secure``; every form carries the session's CSRF token.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.utils import redirect, send_from_directory
from werkzeug.wrappers import Request, Response

from maild.alerts.workflow import Alerts
from maild.common.clock import Clock
from maild.common.config import Config
from maild.console.accounts import Accounts
from maild.console.compose import ComposePages
from maild.console.page import ConsolePage
from maild.console.sessions import COOKIE, Sessions
from maild.console.subscribers import SubscriberPages
from maild.console.views import Views, set_session_cookie
from maild.residents.links import Links
from maild.web.app import SECURITY_HEADERS, STATIC, TEMPLATES, PageRequest
from maild.web.page import safe_path

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("maild.console")

HERE = Path(__file__).parent

URL_MAP = Map(
    [
        Rule("/", endpoint="queue", methods=["GET"]),
        Rule("/sign-in", endpoint="sign_in", methods=["GET", "POST"]),
        Rule("/sign-out", endpoint="sign_out", methods=["POST"]),
        Rule("/history", endpoint="history", methods=["GET"]),
        Rule("/compose", endpoint="compose", methods=["GET", "POST"]),
        Rule("/subscribers", endpoint="subscribers", methods=["GET", "POST"]),
        Rule("/subscribers/remove", endpoint="remove_subscriber", methods=["POST"]),
        Rule("/alerts/<int:alert_id>", endpoint="alert", methods=["GET"]),
        Rule("/alerts/<int:alert_id>/adjust", endpoint="adjust", methods=["GET", "POST"]),
        Rule(
            '/alerts/<int:alert_id>/<any(approve, "send-now", cancel):action>',
            endpoint="act",
            methods=["GET", "POST"],
        ),
        Rule("/static/<path:filename>", endpoint="static", methods=["GET"]),
        Rule("/favicon.ico", endpoint="favicon", methods=["GET"]),
    ]
)
OPEN = frozenset({"sign_in", "static", "favicon"})  # answered without a session


class ConsoleApp:
    def __init__(
        self,
        config: Config,
        alerts: Alerts,
        links: Links,
        clock: Clock,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.links = links
        self.accounts = Accounts(alerts.db, clock)
        self.sessions = Sessions(alerts.db, clock)
        self.jinja = Environment(
            auto_reload=False,
            loader=ChoiceLoader(
                [FileSystemLoader(HERE / "templates"), FileSystemLoader(TEMPLATES)]
            ),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.views = Views(alerts, self.accounts, self.sessions, clock, on_change)
        compose = ComposePages(alerts, on_change)
        figures = SubscriberPages(alerts)
        self._routes: dict[str, Callable[..., Response]] = {
            "queue": self.views.queue,
            "sign_in": self.views.sign_in,
            "sign_out": self.views.sign_out,
            "history": self.views.history,
            "compose": compose.compose,
            "subscribers": figures.subscribers,
            "remove_subscriber": figures.remove_subscriber,
            "alert": self.views.alert,
            "adjust": self.views.adjust,
            "act": self.views.act,
            "static": self.static,
            "favicon": lambda page: Response(status=204),
        }

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: the cookies' ``Secure`` and the pages from the next request."""
        self.config = config

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        return self.respond(PageRequest(environ))(environ, start_response)

    def respond(self, request: Request) -> Response:
        config = self.config
        try:
            urls = URL_MAP.bind_to_environ(request.environ)
            endpoint, args = urls.match()
        except RequestRedirect as e:
            return _harden(redirect(e.new_url, e.code))
        except HTTPException as e:
            return _harden(e.get_response())
        token = request.cookies.get(COOKIE, "")
        page: ConsolePage | None = None
        new_token = ""
        try:
            user = self.sessions.find(token) if token else None
            vouched = vouched_name(config, request)
            if vouched is not None and (user is None or user.name != vouched):
                # The proxy signed this person in: their own session, not whoever's before.
                if token:
                    self.sessions.end(token)
                user = None
                if self.accounts.vouched(vouched, request.remote_addr or "?") is not None:
                    new_token = self.sessions.start(vouched)
                    user = self.sessions.find(new_token)
            page = ConsolePage(config, self.jinja, self.links, request, urls, endpoint, args, user)
            if vouched is not None and user is None:
                response = page.message(403, "refused_title", page.t("no_account"))
            elif user is None and endpoint not in OPEN:
                response = redirect(page.url("sign_in", ended=1 if token else None), 303)
                if token:
                    response.delete_cookie(COOKIE, path=request.script_root + "/")
            else:
                response = self._routes[endpoint](page, **args)
            if new_token:
                set_session_cookie(page, response, new_token)
        except HTTPException as e:  # no such alert, 413 from reading a form, …
            response = _http_error(page, e)
        except Exception:
            log.exception("console %s %s failed", request.method, safe_path(request.path))
            response = Response("500 Internal Server Error", 500, mimetype="text/plain")
        return _harden(response)

    def static(self, page: ConsolePage, filename: str) -> Response:
        # The console's stylesheet, then the resident pages' (maild.css) it builds on.
        folder = HERE / "static" if (HERE / "static" / filename).is_file() else STATIC
        response = send_from_directory(folder, filename, page.request.environ, max_age=3600)
        assert isinstance(response, Response)
        return response


def vouched_name(config: Config, request: Request) -> str | None:
    """The account the reverse proxy names (``[console] user_header``), believed only from
    ``trusted_proxies``; None when there is none to believe."""
    console = config.console
    if not console.user_header or not request.remote_addr:
        return None
    try:
        client = ipaddress.ip_address(request.remote_addr)
    except ValueError:
        return None
    if not any(client in network for network in console.trusted_proxies):
        return None  # anyone can send the header; only the proxy's word counts
    return request.headers.get(console.user_header, "").strip() or None


def _http_error(page: ConsolePage | None, e: HTTPException) -> Response:
    """A 4xx as a page of the console, in the person's language."""
    code = e.code or 400
    if page is None or code >= 500:
        return e.get_response()
    key = {404: "not_found", 413: "too_large"}.get(code, "bad_request")
    try:
        return page.message(code, f"{key}_title", page.t(f"{key}_body"))
    except Exception:  # a form too large to read even for the language: the plain answer
        return e.get_response()


def _harden(response: Response) -> Response:
    for name, value in SECURITY_HEADERS:
        response.headers[name] = value
    if "Cache-Control" not in response.headers or response.mimetype == "text/html":
        response.headers["Cache-Control"] = "no-store"
    return response
