"""What the privacy check found in an alert, as the console shows it (issue 17): the
findings in a list and marked in the text, and the approver's acknowledgement."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from maild.alerts.privacy import KINDS

ACK_FIELD = "ack_privacy"  # the confirmation form's checkbox


@dataclass(frozen=True)
class ShownFinding:
    kind_ja: str
    kind_en: str
    line: int
    column: int
    text: str
    suggestion: str | None

    def kind(self, lang: str) -> str:
        return self.kind_ja if lang == "ja" else self.kind_en


def shown(findings: Sequence[Mapping[str, Any]]) -> list[ShownFinding]:
    """``alerts.show``'s findings with their kinds' names."""
    return [
        ShownFinding(
            kind_ja=KINDS.get(f["kind"], (f["kind"], f["kind"]))[0],
            kind_en=KINDS.get(f["kind"], (f["kind"], f["kind"]))[1],
            line=f["line"],
            column=f["column"],
            text=f["text"],
            suggestion=f.get("suggestion"),
        )
        for f in findings
    ]


def marked(body: str, findings: Sequence[ShownFinding]) -> list[tuple[str, bool]]:
    """``body`` cut into pieces, True for a piece a finding names.

    A finding's line and column count from the alert file's first line, which the console
    does not have; each finding's text is marked where it first stands after the one
    before, the order the check reports them in.
    """
    pieces: list[tuple[str, bool]] = []
    at = 0
    for finding in findings:
        start = body.find(finding.text, at) if finding.text else -1
        if start < 0:
            continue
        if start > at:
            pieces.append((body[at:start], False))
        pieces.append((finding.text, True))
        at = start + len(finding.text)
    if at < len(body):
        pieces.append((body[at:], False))
    return pieces
