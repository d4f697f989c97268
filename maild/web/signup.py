"""``/signup``: a resident on a computer asks for the registration mail (docs/web-routes.md).

The answer is the same page for a new, a registered and a throttled address, so the
page tells no one who is registered. It spends from the same
:class:`~maild.residents.limits.AnswerBudget` as blank mails when the daemon passes its
own; past a limit it answers 429 with ``Retry-After`` and queues nothing. The client
is ``REMOTE_ADDR``: behind a reverse proxy every request comes from the proxy, so put
the proxy's address in ``[limits] trusted_networks`` (the hourly cap still holds).
``X-Forwarded-For`` is not read: anyone can send it.

The answer itself (a pending subscriber and a register mail for a new address, the
manage link for a registered one) is written after the page has gone, by ``run``
(one background thread by default): the two take different work, and a page that came
back a millisecond later for registered addresses would tell, over enough tries, who is
registered (operating rules §7). The page depends only on the address's syntax and
the budget, which are the same work for everyone.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from werkzeug.wrappers import Response

from maild.common.addresses import InvalidAddress, normalize
from maild.common.throttle import LogThrottle
from maild.residents.limits import AnswerBudget, Charge, OverBudget
from maild.residents.registration import SENT_MANAGE, SENT_REGISTER, Registrations
from maild.web.page import Block, Page, answer_minutes, csrf_refused, not_arrived

log = logging.getLogger("maild.web")
# A flood past a limit is one line a minute; /metrics counts every refusal.
refusals_log = LogThrottle(log)


Runner = Callable[[Callable[[], None]], None]


class SignupPages:
    """The sign-up form and what posting it answers."""

    def __init__(
        self, registrations: Registrations, budget: AnswerBudget, run: Runner | None = None
    ) -> None:
        self.registrations = registrations
        self.budget = budget
        self._executor: ThreadPoolExecutor | None = None
        if run is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signup")
            run = self._submit
        self._run = run

    def _submit(self, job: Callable[[], None]) -> None:
        assert self._executor is not None
        self._executor.submit(job)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)

    def _answer(self, address: str, charge: Charge) -> None:
        sent = False
        try:
            sent = self.registrations.request_signup(address) in (SENT_REGISTER, SENT_MANAGE)
        except Exception:
            # After the page: nobody to show a 500 to. The resident may try again.
            log.exception("signup answer failed")
        finally:
            if not sent:  # throttled, refused or failed: no mail went out
                self.budget.refund(charge)

    def signup(self, page: Page) -> Response:
        title = page.t("signup_title")
        registration = page.config.smtp.registration_address
        if page.reading:
            return page.render(
                "signup.html", title, address="", error="", registration=registration
            )
        if not page.csrf_ok():
            return csrf_refused(page)
        address = page.request.form.get("address", "")

        def invalid() -> Response:
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
            refusals_log.warning(
                f"signup:{e.reason}", "signup from %s deferred: %s limit", ip, e.reason
            )
            return too_many(page, e.retry_after)
        # The same page for a new, a registered and a throttled address (docs/web-routes.md).
        response = page.message(
            200,
            "signup_sent_title",
            Block(page.t("signup_sent_body")),
            Block(page.t("signup_sent_registered", minutes=answer_minutes())),
            not_arrived(page),
        )
        # Started once the page has gone (WSGI close), so that its work, which differs
        # between a new and a registered address, never shares the CPU with the page.
        response.call_on_close(lambda: self._run(lambda: self._answer(address, charge)))
        return response


def too_many(page: Page, retry_after: int) -> Response:
    """429 (RFC 6585 §4): nothing was queued; say when to come back, and the other way in."""
    response = page.message(
        429,
        "too_many_title",
        Block(page.t("too_many_body")),
        Block(page.t("too_many_wait", minutes=max(1, math.ceil(retry_after / 60)))),
        Block(page.t("too_many_blank_mail")),
        Block(page.config.smtp.registration_address, mailto=True),
        Block(page.t("back_to_signup"), href=page.url("signup")),
    )
    response.headers["Retry-After"] = str(retry_after)
    return response
