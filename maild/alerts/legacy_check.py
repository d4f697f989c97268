"""What in an alert file cannot go to old phones in ISO-2022-JP, as the file's problems
with its line numbers (the mapping itself is :mod:`maild.mail.legacy`)."""

from __future__ import annotations

from maild.alerts.alertfile import AlertDraft, AlertFileInvalid
from maild.alerts.filetext import FileProblem
from maild.common.config import Config
from maild.mail.legacy import legacy_problems, problem_texts


def check_alert_for_legacy(
    subject: str,
    body: str,
    *,
    subject_line: int,
    body_first_line: int,
    sender: str | None = None,
    sender_line: int | None = None,
) -> list[FileProblem]:
    """What in an alert cannot be sent to ``mail.legacy_charset_domains``, as alert-file
    problems with the file's line numbers.

    ``subject_line`` is the line of the ``Subject:`` header, ``sender_line`` that of
    ``Sender:``, ``body_first_line`` the file line of the body's first line (the
    body as :class:`~maild.alerts.alertfile.AlertDraft` keeps it, leading blank lines
    dropped). The subject prefix, the area label and the footer come from the
    configuration, not the operator: check those once at start instead.
    """
    found: list[FileProblem] = []
    parts: list[tuple[str, int | None, bool]] = [(subject, subject_line, False)]
    if sender:
        parts.append((sender, sender_line, False))
    parts.append((body, body_first_line, True))
    for text, first_line, multiline in parts:
        for problem in legacy_problems(text):
            ja, en = problem_texts(problem)
            line = first_line + problem.line - 1 if multiline and first_line else first_line
            found.append(FileProblem(line, ja, en))
    return found


def check_draft(draft: AlertDraft) -> list[FileProblem]:
    """:func:`check_alert_for_legacy` for a parsed alert file, with the file's lines; the
    Place's description too, which the mail shows."""
    place = draft.place.description if draft.place else ""
    found = [FileProblem(draft.place_line, *problem_texts(p)) for p in legacy_problems(place)]
    return found + check_alert_for_legacy(
        draft.subject,
        draft.body,
        subject_line=draft.subject_line or 1,
        body_first_line=draft.body_first_line or 1,
        sender=draft.sender,
        sender_line=draft.sender_line,
    )


def check_configured(config: Config, draft: AlertDraft) -> None:
    """Checks that need the configuration, after the file itself parsed: raises
    :class:`AlertFileInvalid` so the file is rejected with its lines named."""
    if config.mail.legacy_charset_domains:
        problems = check_draft(draft)
        if problems:
            raise AlertFileInvalid(problems)
