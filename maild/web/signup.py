"""``/signup``: a resident on a computer asks for the registration mail (SPEC §8).

The answer is the same page for a new, a registered and a throttled address, so the
page tells no one who is registered. It spends from the same
:class:`~maild.residents.limits.AnswerBudget` as blank mails when the daemon passes its
own; past a limit it answers 429 with ``Retry-After`` and queues nothing. The client
is ``REMOTE_ADDR``: behind a reverse proxy every request comes from the proxy, so put
the proxy's address in ``[limits] trusted_networks`` (the hourly cap still holds).
``X-Forwarded-For`` is not read: anyone can send it.
"""

from __future__ import annotations

import logging
import math

from werkzeug.wrappers import Response

from maild.common.addresses import InvalidAddress, normalize
from maild.common.throttle import LogThrottle
from maild.residents.limits import AnswerBudget, OverBudget
from maild.residents.registration import SENT_MANAGE, SENT_REGISTER, Registrations
from maild.web.page import Block, Page, csrf_refused, not_arrived

log = logging.getLogger("maild.web")
# A flood past a limit is one line a minute; /metrics counts every refusal.
refusals_log = LogThrottle(log)


class SignupPages:
    """The sign-up form and what posting it answers."""

    def __init__(self, registrations: Registrations, budget: AnswerBudget) -> None:
        self.registrations = registrations
        self.budget = budget

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
            not_arrived(page),
        )


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
