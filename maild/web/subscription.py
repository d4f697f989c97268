"""The pages opened from mails (docs/web-routes.md): ``/register/TOKEN`` (the form a new resident
completes), ``/manage/TOKEN`` (change or cancel) and ``/unsubscribe/TOKEN`` (with
RFC 8058 one-click). The rules live in :mod:`maild.residents.registration`; these views
turn requests into its calls and its answers and refusals into pages.

A refused link gets a page that says what happened and what to do next; reading a
page (GET, HEAD) never changes anything, and every form post needs its CSRF field,
except the one-click POST, whose token is the proof. A cancel asks once more
(「本当に解除しますか」) whether it comes from the manage page or a mail's unsubscribe
link; the one-click POST stays one click.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from werkzeug.wrappers import Response

from maild.common.addresses import mask_token
from maild.residents.areas import UnknownArea
from maild.residents.categories import CATEGORIES
from maild.residents.links import MANAGE, REGISTER, UNSUBSCRIBE, LinkError, Links
from maild.residents.registration import ChoiceError, PendingView, Registrations, SubscriberView
from maild.web.page import Block, Page, answer_minutes, csrf_refused, not_arrived
from maild.web.picker import area_picker, category_boxes, summary

log = logging.getLogger("maild.web")

# RFC 8058 §3.1: the body a mail client POSTs for one-click unsubscription.
ONE_CLICK_KEY = "List-Unsubscribe"
ONE_CLICK_VALUE = "One-Click"
# The manage form's actions: its cancel button asks; the confirm page's button cancels.
UPDATE, CANCEL, CANCEL_CONFIRMED = "update", "cancel", "cancel-confirmed"


class SubscriptionPages:
    """Register, manage and unsubscribe, by the token in the link."""

    def __init__(self, registrations: Registrations, links: Links) -> None:
        self.registrations = registrations
        self.links = links

    def register(self, page: Page, token: str) -> Response:
        try:
            view = self.registrations.view_register(token)
        except LinkError as e:
            return self._link_problem(page, REGISTER, token, e)
        if page.reading:
            return self._form(page, "register", view, (), [c.id for c in CATEGORIES])
        if not page.csrf_ok():
            return csrf_refused(page)
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
                not_arrived(page, "complete_not_arrived"),
                Block(page.config.smtp.registration_address, mailto=True),
            ],
            summary=summary(page.areas, done, page.lang),
        )

    def manage(self, page: Page, token: str) -> Response:
        try:
            view = self.registrations.view_manage(token)
        except LinkError as e:
            return self._link_problem(page, MANAGE, token, e)
        if page.reading:
            return self._form(page, "manage", view, view.area_ids, view.categories)
        if not page.csrf_ok():
            return csrf_refused(page)
        form = page.request.form
        action = form.get("action", "")
        try:
            if action == CANCEL:
                return _confirm_cancel(page, view, page.here(), CANCEL_CONFIRMED, page.here())
            if action == CANCEL_CONFIRMED:
                self.registrations.cancel(token)
                return page.message(200, "cancelled_title", Block(page.t("cancelled_body")))
            if action != UPDATE:
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
            summary=summary(page.areas, saved, page.lang),
        )

    def unsubscribe(self, page: Page, token: str) -> Response:
        request = page.request
        if request.method == "POST" and request.form.get(ONE_CLICK_KEY) == ONE_CLICK_VALUE:
            return self._one_click(page, token)
        try:
            view = self.registrations.view_manage(token, UNSUBSCRIBE)
            if page.reading:
                manage_url = page.url("manage", token=view.manage_token)
                return _confirm_cancel(page, view, page.here(), "", manage_url)
            if not page.csrf_ok():
                return csrf_refused(page)
            self.registrations.cancel(token, UNSUBSCRIBE)
        except LinkError as e:
            return self._link_problem(page, UNSUBSCRIBE, token, e)
        return page.message(200, "cancelled_title", Block(page.t("cancelled_body")))

    def _one_click(self, page: Page, token: str) -> Response:
        """RFC 8058: the mail client POSTs without cookie or CSRF field; the token is the proof."""
        try:
            self.registrations.cancel(token, UNSUBSCRIBE)
        except LinkError as e:
            if not self._signed(UNSUBSCRIBE, token):
                return self._link_problem(page, UNSUBSCRIBE, token, e)
            # Already erased: the address gets no more mail, which is what was asked for.
            log.info("one-click unsubscribe %s: already cancelled", mask_token(token))
        return page.message(200, "cancelled_title", Block(page.t("cancelled_body")))

    def _form(
        self,
        page: Page,
        kind: str,
        view: SubscriberView | PendingView,
        area_ids: Iterable[str],
        categories: Iterable[str],
        error: Exception | None = None,
    ) -> Response:
        """The register or manage form, pre-filled; with ``error`` a 400 that keeps the choices."""
        message = ""
        if isinstance(error, ChoiceError):
            message = error.en if page.lang == "en" else error.ja
        elif error is not None:
            message = page.t("unknown_area")
        root, groups = area_picker(page.areas, area_ids, page.lang)
        return page.render(
            f"{kind}.html",
            page.t(f"{kind}_title"),
            400 if error else 200,
            view=view,
            error=message,
            root=root,
            groups=groups,
            categories=category_boxes(categories, page.lang),
            action=page.here(),
        )

    def _link_problem(self, page: Page, purpose: str, token: str, error: LinkError) -> Response:
        reason = error.reason
        if reason == "invalid" and purpose != REGISTER and self._signed(purpose, token):
            # Our own, untampered link whose subscriber is gone: they cancelled (or were erased).
            reason = "gone"
        log.info("%s link %s refused: %s", purpose, mask_token(token), reason)
        t = page.t
        registration = page.config.smtp.registration_address
        again = [
            Block(t("register_again")),
            Block(registration, mailto=True),
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
                Block(registration, mailto=True),
                Block(t("used_wait", minutes=answer_minutes())),
            )
        return page.message(410, "gone_title", Block(t("gone_body")), *again[1:])

    def _signed(self, purpose: str, token: str) -> bool:
        try:
            self.links.check_subscriber_link(purpose, token)
        except LinkError:
            return False
        return True


def _confirm_cancel(
    page: Page, view: SubscriberView, action: str, confirm: str, back_url: str
) -> Response:
    """「本当に解除しますか」: the button posts ``confirm`` as the form's action (the manage
    page's) or nothing (the unsubscribe link's); the way back changes nothing."""
    back_key = "cancel_keep" if confirm else "unsubscribe_manage_instead"
    return page.render(
        "confirm_cancel.html",
        page.t("cancel_confirm_title"),
        view=view,
        action=action,
        confirm=confirm,
        back_url=back_url,
        back_key=back_key,
    )
