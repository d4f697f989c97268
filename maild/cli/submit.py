"""``maild submit``: check alert files before they go, place them in the spool, or test-send.

An operator sees, per file, what it will do (areas, how many recipients now,
when it will be released) before anything is sent; ``--test`` sends the alert
at once, marked 【テスト】, only to ``approval.test_recipients``, so it can be read
on a phone first (運用要領 2(4)イ: 誤操作の防止). A test send creates no alert.

Operators run it as themselves, not as the service user: the file it places is
theirs, and its owner is the requester that approval and the audit log rely
on. It therefore needs no database; the recipient count is shown only when
the database happens to be readable.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from maild.alerts.alertfile import AlertDraft, AlertFileInvalid, parse_alert
from maild.alerts.legacy_check import check_configured
from maild.alerts.privacy import Finding
from maild.alerts.privacy_gate import PrivacyGate
from maild.alerts.spool_files import place_in_spool
from maild.alerts.window import WindowRules, release_time
from maild.alerts.workflow import needs_approval
from maild.common.addresses import mask
from maild.common.clock import local_text
from maild.common.config import Config
from maild.delivery.alertmail import (
    AlertContent,
    AlertTemplate,
    Personal,
    date_header,
    new_message_key,
    template_for,
)
from maild.mail.compose import Charset, charset_for
from maild.mail.dkim import signer_for, signing
from maild.mail.errors import DeliveryError
from maild.mail.relay import open_relay
from maild.residents.areas import AreaMap

CountRecipients = Callable[[tuple[str, ...], str], int]


@dataclass
class Checked:
    """The outcome of checking one file, as ``submit --json`` prints it."""

    file: str
    valid: bool
    errors: list[str] = field(default_factory=list)
    areas: list[str] = field(default_factory=list)
    recipients: int | None = None
    release_at: str | None = None
    pending_approval: bool = False
    # What the privacy check found (issue 17): such an alert waits for an approver.
    privacy: list[Finding] = field(default_factory=list)
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
            "pending_approval": self.pending_approval,
            "privacy": [f.to_dict() for f in self.privacy],
        }


@dataclass(frozen=True)
class Submitter:
    config: Config
    areas: AreaMap
    rules: WindowRules
    now: dt.datetime
    requester: str
    count_recipients: CountRecipients | None = None  # None: the database is not readable
    privacy: PrivacyGate | None = None

    def check(self, path: Path) -> Checked:
        try:
            data = path.read_bytes()
        except OSError as e:
            return Checked(str(path), False, [f"読めません / cannot read: {e.strerror}"])
        try:
            draft = parse_alert(
                data,
                resolve_area=lambda text: self.areas.resolve(text).id,
                tz=self.config.service.tz,
            )
            check_configured(self.config, draft)
        except AlertFileInvalid as e:
            return Checked(
                str(path), False, [_problem_text(p.line, p.ja, p.en) for p in e.problems]
            )
        findings = self.privacy.check_draft(draft) if self.privacy else []
        pending = needs_approval(self.config, self.requester) or bool(findings)
        release = release_time(
            self.rules, self.now, urgent=draft.urgent, send_after=draft.send_after
        )
        count = self.count_recipients
        return Checked(
            str(path),
            True,
            areas=[self.areas.get(a).name_ja for a in draft.area_ids],
            recipients=count(draft.area_ids, draft.category) if count else None,
            # An alert waiting for approval gets its release time when it is approved.
            release_at=local_text(release, self.config.service.tz)
            if release and not pending
            else None,
            pending_approval=pending,
            privacy=findings,
            draft=draft,
            data=data,
        )

    def place(self, checked: Checked) -> Path:
        """Write a checked file into ``SPOOL/incoming`` atomically; the daemon takes it."""
        return place_in_spool(self.config.spool.dir, Path(checked.file).name, checked.data)

    def test_send(self, draft: AlertDraft) -> list[str]:
        """Send ``draft`` now to the test recipients; returns one problem per failed address."""
        config = self.config
        recipients = config.approval.test_recipients
        if not recipients:
            raise ValueError(
                "テスト送信先がありません。設定の [approval] test_recipients に"
                "アドレスを書いてください。 / No test recipients: set [approval] "
                "test_recipients in the config."
            )
        content = AlertContent(
            alert_id=0,
            subject=draft.subject,
            area_label=self.areas.describe(draft.area_ids),
            body=draft.body,
            sender=draft.sender,
            message_key=new_message_key(),
            place=draft.place,
            map_url=config.alerts.map_url,
        )
        templates = {
            charset: template_for(config, content, charset, test=True)
            for charset in {charset_for(config, address) for address in recipients}
        }
        return asyncio.run(self._send_all(templates, recipients))

    async def _send_all(
        self, templates: dict[Charset, AlertTemplate], recipients: tuple[str, ...]
    ) -> list[str]:
        config = self.config
        relay = signing(open_relay(config.relay, config.smtp.hostname), signer_for(config))
        problems = []
        try:
            for number, address in enumerate(recipients, start=1):
                personal = Personal(
                    address=address,
                    subscriber_id=-number,
                    manage_url="",  # a test send has no links (AlertTemplate(test=True))
                    unsubscribe_url="",
                    envelope_from=config.smtp.bounce_address,
                )
                template = templates[charset_for(config, address)]
                try:
                    await relay.send(
                        personal.envelope_from,
                        address,
                        template.personalise(personal, date_header(self.now, config)),
                    )
                except DeliveryError as e:
                    problems.append(f"{mask(address)}: {e}")
        finally:
            await relay.close()
        return problems


def _problem_text(line: int | None, ja: str, en: str) -> str:
    if line is None:
        return f"{ja} / {en}"
    return f"{line}行目: {ja} / line {line}: {en}"
