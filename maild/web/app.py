"""The resident-facing web pages (docs/web-routes.md) as one Werkzeug application: sign-up, the
registration form, change and cancel, unsubscribe (RFC 8058 one-click) and a health
check. ``/metrics`` is not here: it is the operators' listener's
(:class:`~maild.web.health.OperatorsApp`), so the residents' one answers 404 for it.

This module holds the routes (Werkzeug's ``Map``), the one ``try`` at the request
boundary, the error pages, the security headers and the static files. The pages are
in modules of their own: :mod:`~maild.web.signup`, :mod:`~maild.web.subscription`
(the pages opened from mails) and :mod:`~maild.web.health`; :mod:`~maild.web.page`
is one request as they see it, :mod:`~maild.web.csrf` the CSRF cookie and
:mod:`~maild.web.picker` the area picker.

Tokens sit in URL paths, so pages send ``Referrer-Policy: no-referrer`` and
``Cache-Control: no-store``, and the request log masks them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from werkzeug.exceptions import BadHost, HTTPException, MethodNotAllowed
from werkzeug.routing import Map, RequestRedirect, Rule
from werkzeug.utils import redirect, send_from_directory
from werkzeug.wrappers import Request, Response

from maild.common.clock import Clock
from maild.common.config import Config
from maild.residents.areas import AreaMap, shared_area_map
from maild.residents.limits import AnswerBudget
from maild.residents.links import Links
from maild.residents.registration import Registrations
from maild.web.health import Health, HealthPages, database_health
from maild.web.page import Block, Page, Site, safe_path
from maild.web.signup import Runner, SignupPages
from maild.web.subscription import SubscriptionPages

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

log = logging.getLogger("maild.web")

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"

# The forms hold a few dozen short fields; a bigger body is not ours. The web server
# refuses one before reading it (maild.web.server), the app if it gets one all the same.
MAX_BODY_BYTES = 64 * 1024
BAD_REQUEST_TEXT = "リクエストを読み取れませんでした。\nThe request could not be read.\n"

# No scripts, no frames, styles and forms only from here (docs/web-routes.md: no JavaScript needed).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = (
    ("Content-Security-Policy", CONTENT_SECURITY_POLICY),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),  # tokens are in our URLs
)


class PageRequest(Request):
    max_content_length = MAX_BODY_BYTES
    max_form_memory_size = MAX_BODY_BYTES
    max_form_parts = 500


URL_MAP = Map(
    [
        Rule("/", endpoint="index", methods=["GET"]),
        Rule("/signup", endpoint="signup", methods=["GET", "POST"]),
        Rule("/register/<token>", endpoint="register", methods=["GET", "POST"]),
        Rule("/manage/<token>", endpoint="manage", methods=["GET", "POST"]),
        Rule("/unsubscribe/<token>", endpoint="unsubscribe", methods=["GET", "POST"]),
        Rule("/healthz", endpoint="healthz", methods=["GET"]),
        Rule("/favicon.ico", endpoint="favicon", methods=["GET"]),
        Rule("/static/<path:filename>", endpoint="static", methods=["GET"]),
    ]
)


class WebApp:
    """The WSGI application: routes, views, and the one ``try`` at the request boundary.

    ``config`` and ``areas`` are swapped by a reload (:mod:`maild.service.reload`); each
    request takes the ones in force when it begins.
    """

    def __init__(
        self,
        config: Config,
        registrations: Registrations,
        areas: AreaMap,
        links: Links,
        clock: Clock,
        health: Health | None = None,
        budget: AnswerBudget | None = None,
        answer_signup: Runner | None = None,
    ) -> None:
        # Without the daemon's shared budget (the separate WSGI entry point) the web keeps
        # its own; set before config, whose setter keeps the budget's limits in step.
        self.budget = budget or AnswerBudget(config.limits, clock)
        self.config = config
        self.areas = areas
        self.links = links
        self.url_map = URL_MAP
        self.jinja = Environment(
            auto_reload=False,  # templates ship with the package
            loader=FileSystemLoader(TEMPLATES),
            autoescape=True,
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.signup = SignupPages(registrations, self.budget, answer_signup)
        signup = self.signup
        subscription = SubscriptionPages(registrations, links)
        operators = HealthPages(health or database_health(registrations.db), None)
        self._views: dict[str, Callable[..., Response]] = {
            "index": self.index,
            "signup": signup.signup,
            "register": subscription.register,
            "manage": subscription.manage,
            "unsubscribe": subscription.unsubscribe,
            "healthz": operators.healthz,
            "static": self.static,
            "favicon": self.favicon,
        }

    @property
    def config(self) -> Config:
        return self._config

    @config.setter
    def config(self, config: Config) -> None:
        # A reload assigns the new config here (maild.service.reload); the limits go with it.
        self._config = config
        self.budget.reconfigure(config.limits)

    def close(self) -> None:
        """Answer the /signup requests still queued; call after the server has stopped."""
        self.signup.close()

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP, :mod:`maild.service.reload`): pages, limits, areas and
        the cookie's ``Secure`` (set per request when ``base_url`` is https) from the next
        request on."""
        self.config = config
        self.areas = shared_area_map(config.areas.file)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        response = self.respond(PageRequest(environ))
        return response(environ, start_response)

    def respond(self, request: Request) -> Response:
        """The answer to ``request``, security headers included."""
        try:
            urls = self.url_map.bind_to_environ(request.environ)
        except BadHost:
            # A Host header that is no host name: no URL can be built for it, so no page
            # either. The client's doing: a 400 and one line, with the path masked.
            log.info("%s %s refused: bad Host", request.method, safe_path(request.path))
            return _harden(Response(BAD_REQUEST_TEXT, 400, mimetype="text/plain"), "")
        site = Site(self.config, self.areas, self.jinja, self.links)
        try:
            endpoint, args = urls.match()
        except RequestRedirect as e:
            return _harden(redirect(e.new_url, e.code), "")
        except HTTPException as e:
            return _harden(self._http_error(Page(site, request, urls), e), "")
        page = Page(site, request, urls, endpoint, args)
        try:
            response = self._views[endpoint](page, **args)
        except HTTPException as e:  # 413 from reading the form, …
            response = self._http_error(page, e)
        except Exception:
            # STYLE §6: catch once, here. The path is masked; the traceback names no token.
            log.exception("%s %s failed", request.method, safe_path(request.path))
            response = self._server_error(page)
        return _harden(response, endpoint)

    def _http_error(self, page: Page, e: HTTPException) -> Response:
        code = e.code or 500
        if code >= 500:
            return self._server_error(page)
        key = {404: "not_found", 405: "method", 413: "too_large"}.get(code, "bad_request")
        response = page.message(code, f"{key}_title", Block(page.t(f"{key}_body")))
        if isinstance(e, MethodNotAllowed) and e.valid_methods:
            response.headers["Allow"] = ", ".join(e.valid_methods)
        return response

    def _server_error(self, page: Page) -> Response:
        try:
            return page.message(500, "server_error_title", Block(page.t("server_error_body")))
        except Exception:
            log.exception("rendering the error page failed")
            return Response("500 Internal Server Error", status=500, mimetype="text/plain")

    # --- the views that are no page of their own

    def index(self, page: Page) -> Response:
        return redirect(page.url("signup"), 303)

    def static(self, page: Page, filename: str) -> Response:
        response = send_from_directory(STATIC, filename, page.request.environ, max_age=3600)
        assert isinstance(response, Response)
        return response

    def favicon(self, page: Page) -> Response:
        # Browsers ask for it on every site; "no content" keeps their consoles and our logs quiet.
        return Response(status=204)


def _harden(response: Response, endpoint: str) -> Response:
    """The security headers on every answer; every answer but a static file (which keeps
    send_file's Cache-Control) is not to be stored."""
    for name, value in SECURITY_HEADERS:
        response.headers[name] = value
    if endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


def create_app(
    config: Config,
    registrations: Registrations,
    areas: AreaMap,
    links: Links,
    clock: Clock,
    health: Health | None = None,
    budget: AnswerBudget | None = None,
    answer_signup: Runner | None = None,
) -> WebApp:
    """The WSGI callable for the daemon's waitress server or any other WSGI server.

    ``budget``: the answer budget the SMTP listener spends from too (the daemon
    builds one and passes it to both); without it the app keeps its own.
    ``answer_signup``: runs a /signup's answer (see :mod:`maild.web.signup`); by default
    one background thread, so the page takes as long whoever the address is.
    """
    return WebApp(config, registrations, areas, links, clock, health, budget, answer_signup)
