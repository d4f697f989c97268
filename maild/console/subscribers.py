"""The subscriber figures: counts by area and category, no address. Admins alone may
look one address up and erase it (as ``maild subscribers remove`` does), audited."""

from __future__ import annotations

import logging

from sqlalchemy import select
from werkzeug.wrappers import Response

from maild.alerts.workflow import Alerts
from maild.common import addresses
from maild.common.roles import ADMIN
from maild.console.page import ConsolePage
from maild.residents import roster, subscribers
from maild.residents.categories import CATEGORIES
from maild.store.models import AuditEntry, Subscriber

log = logging.getLogger("maild.console")


class SubscriberPages:
    def __init__(self, alerts: Alerts) -> None:
        self.alerts = alerts

    def subscribers(self, page: ConsolePage) -> Response:
        numbers = roster.stats(self.alerts.db, self.alerts.areas)
        areas = self.alerts.areas
        by_area = [
            (areas.get(a).name(page.lang) if a in areas else a, n)
            for a, n in numbers["by_area"].items()
        ]
        labels = {c.id: c.label(page.lang) for c in CATEGORIES}
        by_category = [(labels.get(c, c), n) for c, n in numbers["by_category"].items()]
        hours = numbers["by_hours"]
        by_hours = [
            (page.t("hours_any_time"), hours["any_time"]),
            (page.t("hours_own"), hours["own_hours"]),
            (page.t("hours_urgent_too"), hours["urgent_too"]),
        ]
        top = max([n for _, n in by_area + by_category + by_hours] or [0]) or 1
        found = None
        if page.request.method == "POST":  # an admin's search: the address is in no URL
            if page.user is None or page.user.role != ADMIN:
                return page.message(403, "refused_title", page.t("refused_admin"))
            if not page.csrf_ok():
                return page.message(400, "csrf_title", page.t("csrf_body"))
            found = self._find(page)
        return page.render(
            "subscribers.html",
            page.t("subscribers_title"),
            by_status=numbers["by_status"],
            by_area=by_area,
            by_category=by_category,
            by_hours=by_hours,
            top=top,
            found=found,
        )

    def _find(self, page: ConsolePage) -> dict[str, object] | None:
        """An admin's search for one address: whether it is there, and its choices."""
        text = page.request.form.get("address", "").strip()
        if not text:
            return None
        try:
            address = addresses.normalize(text)
        except addresses.InvalidAddress:
            return {"address": text, "invalid": True}
        with self.alerts.db.transaction() as session:
            row = session.scalar(select(Subscriber).where(Subscriber.address == address))
            if row is None:
                return {"address": address, "missing": True}
            known = [a for a in row.area_ids if a in self.alerts.areas]
            return {
                "address": address,
                "status": row.status,
                "areas": self.alerts.areas.describe(known, page.lang),
            }

    def remove_subscriber(self, page: ConsolePage) -> Response:
        """Admins only: erase one subscriber (as ``maild subscribers remove`` does)."""
        user = page.user
        assert user is not None
        if user.role != ADMIN:
            return page.message(403, "refused_title", page.t("refused_admin"))
        if not page.csrf_ok():
            return page.message(400, "csrf_title", page.t("csrf_body"))
        text = page.request.form.get("address", "")
        try:
            removed = subscribers.remove(self.alerts.db, text)
        except addresses.InvalidAddress:
            removed = False
        masked = addresses.mask(text) if "@" in text else "?"
        if removed:
            with self.alerts.db.transaction() as session:
                session.add(
                    AuditEntry(
                        alert_id=None,
                        at=self.alerts.clock.now(),
                        action="subscriber-removed",
                        user=user.name,
                        detail=masked,
                    )
                )
            log.info("console: %s erased subscriber %s", user.name, masked)
        key = "subscriber_removed" if removed else "subscriber_missing"
        return page.message(200 if removed else 404, key, page.t(key + "_body", address=masked))
