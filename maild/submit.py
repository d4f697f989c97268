"""``maild submit``: check alert files before they go, place them in the spool, or test-send.

An operator sees, per file, what it will do (areas, how many recipients now,
when it will be released) before anything is sent; ``--test`` sends the alert
at once, marked 【テスト】, only to ``approval.test_recipients``, so it can be read
on a phone first (運用要領 2(4)イ: 誤操作の防止). A test send creates no alert.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maild.addresses import mask
from maild.alertfile import AlertDraft, AlertFileInvalid, parse_alert
from maild.alertmail import AlertContent, AlertTemplate, Personal, charset_for, template_for
from maild.compose import Charset
from maild.dkim import DkimSigner, signing
from maild.relay import DeliveryError, open_relay
from maild.services import Services
from maild.spool import place_in_spool
from maild.window import release_time


@dataclass
class Checked:
    """The outcome of checking one file, as ``submit --json`` prints it."""

    file: str
    valid: bool
    errors: list[str] = field(default_factory=list)
    areas: list[str] = field(default_factory=list)
    recipients: int | None = None
    release_at: str | None = None
    draft: AlertDraft | None = None
    data: bytes = b""

    def as_json(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "valid": self.valid,
            "errors": self.errors,
            "areas": self.areas,
            "recipients": self.recipients,
            "release_at": self.release_at,
        }


def check_file(services: Services, path: Path) -> Checked:
    try:
        data = path.read_bytes()
    except OSError as e:
        return Checked(str(path), False, [f"読めません / cannot read: {e.strerror}"])
    try:
        draft = parse_alert(
            data,
            resolve_area=lambda text: services.areas.resolve(text).id,
            tz=services.config.service.tz,
        )
        services.alerts.check_draft(draft)
    except AlertFileInvalid as e:
        errors = [
            (f"{p.line}行目: " if p.line else "")
            + p.ja
            + " / "
            + (f"line {p.line}: " if p.line else "")
            + p.en
            for p in e.problems
        ]
        return Checked(str(path), False, errors)
    release = release_time(
        services.rules, services.clock.now(), urgent=draft.urgent, send_after=draft.send_after
    )
    return Checked(
        str(path),
        True,
        areas=[services.areas.get(a).name_ja for a in draft.area_ids],
        recipients=services.alerts.count_recipients(draft.area_ids, draft.category),
        release_at=release.isoformat() if release else None,
        draft=draft,
        data=data,
    )


def place(services: Services, checked: Checked) -> Path:
    """Write a checked file into ``SPOOL/incoming`` atomically; the daemon takes it from there."""
    return place_in_spool(services.config.spool.dir, Path(checked.file).name, checked.data)


def test_send(services: Services, draft: AlertDraft) -> list[str]:
    """Send ``draft`` now to the test recipients; returns one problem per failed address."""
    config = services.config
    recipients = config.approval.test_recipients
    if not recipients:
        raise ValueError(
            "[approval] test_recipients が空です / no test recipients: set [approval] "
            "test_recipients in the config"
        )
    content = AlertContent(
        alert_id=0,
        subject=draft.subject,
        area_label=services.areas.describe(draft.area_ids),
        body=draft.body,
        sender=draft.sender,
    )
    now = services.clock.now()
    templates = {
        charset: template_for(config, content, now, charset, test=True)
        for charset in {charset_for(config, address) for address in recipients}
    }
    placeholder = f"{config.service.base_url}/manage/TEST"
    return asyncio.run(_send_all(services, templates, recipients, placeholder))


async def _send_all(
    services: Services,
    templates: dict[Charset, AlertTemplate],
    recipients: tuple[str, ...],
    url: str,
) -> list[str]:
    config = services.config
    relay = signing(
        open_relay(config.relay, config.smtp.hostname), DkimSigner.from_config(config.dkim)
    )
    problems = []
    try:
        for number, address in enumerate(recipients, start=1):
            personal = Personal(
                address=address,
                subscriber_id=-number,
                manage_url=url,
                unsubscribe_url=url.replace("/manage/", "/unsubscribe/"),
                envelope_from=config.smtp.bounce_address,
            )
            try:
                template = templates[charset_for(config, address)]
                await relay.send(personal.envelope_from, address, template.personalise(personal))
            except DeliveryError as e:
                problems.append(f"{mask(address)}: {e}")
    finally:
        await relay.close()
    return problems
