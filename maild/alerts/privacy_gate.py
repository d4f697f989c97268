"""Where the privacy check (:mod:`maild.alerts.privacy`) acts on an alert (issue 17).

A flagged alert never goes out on its own: the workflow holds it for an approver even
where approval is otherwise not required, and urgent ones too; the approver must
acknowledge the findings explicitly (``ack_privacy``, ``maild alerts approve
--ack-privacy``), and the acknowledgement is audited with them. The findings are stored
with the alert (``Alert.privacy_findings``, JSON) as the check made them at intake, so
what the approver acknowledges is what the requester was shown.

The hooks in :mod:`maild.alerts.workflow` call this module; the texts operators read
(Japanese, then English) are made here.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

from maild.alerts.alertfile import AlertDraft
from maild.alerts.errors import AlertActionError
from maild.alerts.privacy import KINDS, AllowList, Finding, check
from maild.alerts.privacy_allow import build_allow_list
from maild.alerts.spool_files import write_durably
from maild.common.config import Config
from maild.common.text import counted
from maild.residents.areas import AreaMap
from maild.store.db import Database
from maild.store.models import Alert

log = logging.getLogger("maild.alerts.privacy")


class PrivacyGate:
    """The check with the words it must not flag; rebuilt on SIGHUP (``reconfigure``)."""

    def __init__(self, config: Config, areas: AreaMap) -> None:
        self.allow: AllowList = build_allow_list(config, areas)

    def reconfigure(self, config: Config, areas: AreaMap) -> None:
        # reload_config has read the file already: a broken one never reaches here.
        self.allow = build_allow_list(config, areas)

    def check_draft(self, draft: AlertDraft) -> list[Finding]:
        """The findings in an alert's subject and body, with the lines of its file."""
        subject_line = draft.subject_line or 1
        body_line = draft.body_first_line or subject_line + 1
        return check(draft.subject, self.allow, subject_line) + check(
            draft.body, self.allow, body_line
        )

    def acknowledge(self, alert: Alert, ack_privacy: bool) -> str | None:
        """The audit detail of an approval's acknowledgement, None for an alert without
        findings; raises :class:`AlertActionError` when the approver did not acknowledge."""
        findings = findings_of(alert.privacy_findings)
        if not findings:
            return None
        if not ack_privacy:
            raise AlertActionError(
                f"警報 {alert.id} には個人が特定されるおそれのある記載が {len(findings)} 件"
                "あります（maild alerts show で確認）。確認した上で承認するには --ack-privacy を"
                "付けてください。"
                f" / Alert {alert.id} has {counted(len(findings), 'privacy finding')} (see "
                "maild alerts show); approve it with --ack-privacy to acknowledge that you "
                "have checked them."
            )
        return "acknowledged: " + "; ".join(_short(f, with_text=True) for f in findings)


def to_json(findings: Sequence[Finding]) -> str | None:
    if not findings:
        return None
    return json.dumps([f.to_dict() for f in findings], ensure_ascii=False)


def findings_of(stored: str | None) -> list[Finding]:
    if not stored:
        return []
    return [Finding.from_dict(item) for item in json.loads(stored)]


def _short(finding: Finding, with_text: bool) -> str:
    where = f"{finding.kind} {finding.line}:{finding.column}"
    return f"{where} {finding.text}" if with_text else where


def held_detail(findings: Sequence[Finding]) -> str:
    """The intake's audit detail: what was found where (the texts are in the alert)."""
    return f"{counted(len(findings), 'privacy finding')}: " + ", ".join(
        _short(f, with_text=False) for f in findings
    )


def finding_lines(findings: Sequence[Finding], indent: str = "  ") -> list[str]:
    """The findings as operators read them: each in Japanese, then in English."""
    lines: list[str] = []
    for f in findings:
        lines += [f"{indent}{f.describe_ja()}", f"{indent}  {f.describe_en()}"]
    return lines


def report(file_name: str, alert_id: int, findings: Sequence[Finding]) -> str:
    """The text of ``ALERTID-NAME.privacy`` beside an accepted file that was flagged."""
    kinds = "、".join(dict.fromkeys(KINDS[f.kind][0] for f in findings))
    lines = [
        f"「{file_name}」は警報 {alert_id} として受け付けましたが、被害者等が特定されるおそれの"
        f"ある記載（{kinds}）が {len(findings)} 件あります（運用要領 7(2)(3)）。",
        "承認者が確認して承認する（maild alerts approve --ack-privacy）まで送信されません。",
        "直す場合は maild alerts cancel で取り消し、書き直して提出し直してください。",
        "",
        f'The file "{file_name}" became alert {alert_id}, but it has {len(findings)} thing(s)'
        " that may identify a victim or someone involved (operating rules 7(2)(3)).",
        "It is not sent until an approver acknowledges them (maild alerts approve --ack-privacy);",
        "to fix it, cancel it (maild alerts cancel) and submit the corrected file.",
        "",
        *finding_lines(findings),
    ]
    return "\n".join(lines) + "\n"


def write_report(db: Database, alert_id: int, accepted: Path, file_name: str) -> Path | None:
    """Write the report beside an accepted file when its alert was flagged.

    After the file's move: a crash in between loses only this report; the findings are
    stored with the alert and ``maild alerts show`` prints them. Mode 0640 like the
    ``.error`` reports: it says nothing that the accepted file beside it does not.
    """
    with db.transaction() as session:
        alert = session.get(Alert, alert_id)
        findings = findings_of(alert.privacy_findings if alert else None)
    if not findings:
        return None
    path = accepted.with_name(accepted.name + ".privacy")
    write_durably(path, report(file_name, alert_id, findings).encode("utf-8"))
    log.warning(
        "alert %d held for an approver: %s", alert_id, counted(len(findings), "privacy finding")
    )
    return path
