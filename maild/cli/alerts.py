"""``maild submit``, ``maild alerts …`` and ``maild window``: the operators' commands
for alerts (docs/roles.md). ``submit`` itself is :mod:`maild.cli.submit`; these print what it
and the alert workflow answer."""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from maild.alerts import window
from maild.alerts.privacy import Finding
from maild.alerts.privacy_gate import PrivacyGate, finding_lines
from maild.alerts.workflow import AlertActionError
from maild.cli.common import (
    EXIT_FAILURE,
    CommandError,
    invoker,
    opened_services,
    print_json,
)
from maild.cli.submit import Checked, CountRecipients, Submitter
from maild.common.clock import clock_from_environment, local_text
from maild.common.config import Config
from maild.common.text import counted
from maild.residents.areas import AreaMap
from maild.service.services import Services, window_rules


def cmd_submit(config: Config, args: argparse.Namespace) -> int:
    with ExitStack() as stack:
        try:
            # Operators run this as themselves; the database may well not be theirs to read.
            services = stack.enter_context(opened_services(config))
            count: CountRecipients | None = services.alerts.count_recipients
        except CommandError:
            count = None
        return _submit(config, args, count)


def _submit(config: Config, args: argparse.Namespace, count: CountRecipients | None) -> int:
    areas = AreaMap.load(config.areas.file)
    clock = clock_from_environment()
    privacy = PrivacyGate(config, areas)
    submitter = Submitter(
        config, areas, window_rules(config), clock.now(), invoker(config), count, privacy
    )
    results = [submitter.check(Path(f)) for f in args.files]
    all_valid = all(r.valid for r in results)
    sent_problems: list[str] = []
    if all_valid and not args.check:
        for result in results:
            assert result.draft is not None
            if args.test:
                try:
                    sent_problems += submitter.test_send(result.draft)
                except ValueError as e:
                    raise CommandError(str(e)) from None
            else:
                submitter.place(result)
    if args.json:
        print_json([r.as_json() for r in results])
    else:
        print_submitted(results, args, len(config.approval.test_recipients))
    for problem in sent_problems:
        print(f"maild: test send failed: {problem}", file=sys.stderr)
    return 0 if all_valid and not sent_problems else EXIT_FAILURE


def print_submitted(results: list[Checked], args: argparse.Namespace, testers: int | None) -> None:
    for r in results:
        if not r.valid:
            print(f"{r.file}: 不備があります / invalid")
            for error in r.errors:
                print(f"  {error}")
            continue
        if args.check and r.privacy:
            what = "形式は正しいですが、下の記載を確認してください / valid, but see below (--check)"
        elif args.check:
            what = "問題ありません / valid (not placed: --check)"
        elif args.test:
            if testers is None:  # through the daemon: the config is not the caller's to read
                what = "テスト送信しました / test-sent to the test recipients"
            else:
                to = counted(testers, "test recipient")
                what = f"テスト送信しました（{testers} 件） / test-sent to {to}"
        else:
            what = "受け付けました / placed in the spool"
        print(f"{r.file}: {what}")
        print(f"  配信エリア / areas: {'、'.join(r.areas)}")
        if r.privacy:
            _print_findings(r.privacy, "  ")
        if r.pending_approval:
            print("  送信 / release: 承認待ちになります / waits for an approver")
        else:
            print(f"  送信 / release: {r.release_at or '-'}")
        shown = (
            "不明（データベースを読めません） / unknown"
            if r.recipients is None
            else f"{r.recipients} 人 / {counted(r.recipients, 'resident')}"
        )
        print(f"  現在の対象者数 / recipients now: {shown}")
    if not all(r.valid for r in results):
        print(
            "不備のあるファイルがあるため、何も送信・投入していません。"
            " / Nothing was sent or placed because a file is invalid."
        )


def _print_findings(findings: list[Finding], indent: str) -> None:
    print(
        f"{indent}個人が特定されるおそれのある記載 / privacy findings"
        f" (運用要領 7): {len(findings)} 件"
    )
    print(
        f"{indent}  承認者が --ack-privacy で確認するまで送信されません"
        " / not sent until an approver acknowledges them (--ack-privacy)"
    )
    for line in finding_lines(findings, indent + "  "):
        print(line)


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    with opened_services(config) as services:
        alerts = services.alerts.listing(args.status)
    if args.json:
        print_json(alerts)
        return 0
    if not alerts:
        print("警報はありません / no alerts")
    for a in alerts:
        c = a["counts"]
        print(
            f"{a['id']:>5}  {a['status']:<16} {'URGENT ' if a['urgent'] else ''}"
            f"release {a['release_at'] or '-'}  sent {c['sent']}/"
            f"{sum(c.values())}{held_note(c)}  {a['subject']}"
        )
    return 0


def held_note(counts: dict[str, int]) -> str:
    """Issue 18: rows waiting for residents' own hours, in the list only when there are some."""
    held = counts.get("held", 0)
    return f" (held {held})" if held else ""


# `alerts show`: each field as operators read it, Japanese first.
SHOW_LABELS = (
    ("id", "番号 / id"),
    ("subject", "件名 / subject"),
    ("status", "状態 / status"),
    ("urgent", "緊急 / urgent"),
    ("category", "種類 / category"),
    ("area_names", "地域 / areas"),
    ("sender", "発信者 / sender"),
    ("place", "場所 / place"),
    ("requester", "依頼者 / requester"),
    ("approved_by", "承認者 / approved by"),
    ("send_after", "送信指定 / send after"),
    ("release_at", "送信予定 / release at"),
    ("released_at", "送信開始 / released at"),
    ("finished_at", "完了 / finished at"),
)


def cmd_show(config: Config, args: argparse.Namespace) -> int:
    alert = _alert_action(lambda s: s.alerts.show(args.id), config)
    if args.json:
        print_json(alert)
        return 0
    c = alert["counts"]
    for key, label in SHOW_LABELS:
        print(f"{label}: {alert[key] if alert[key] is not None else '-'}")
    print(
        f"件数 / counts: 待ち queued {c['queued']}、送信済み sent {c['sent']}、"
        f"再試行待ち deferred {c['deferred']}、失敗 failed {c['failed']}、"
        f"時間帯待ち held {c.get('held', 0)}"
    )
    if alert["privacy"]:
        print("個人情報の確認 / privacy:")
        _print_findings([Finding.from_dict(f) for f in alert["privacy"]], "  ")
    print("記録 / audit:")
    for entry in alert["audit"]:
        detail = f" ({entry['detail']})" if entry["detail"] else ""
        print(f"  {entry['at']}  {entry['action']} by {entry['user']}{detail}")
    return 0


def _alert_action(action: Callable[[Services], Any], config: Config) -> Any:
    try:
        with opened_services(config) as services:
            return action(services)
    except AlertActionError as e:
        raise CommandError(str(e)) from None


def cmd_approve(config: Config, args: argparse.Namespace) -> int:
    user = invoker(config)
    _alert_action(lambda s: s.alerts.approve(args.id, user, ack_privacy=args.ack_privacy), config)
    print(f"警報 {args.id} を承認しました / alert {args.id} approved")
    return 0


def cmd_cancel(config: Config, args: argparse.Namespace) -> int:
    _alert_action(lambda s: s.alerts.cancel(args.id, invoker(config)), config)
    print(f"警報 {args.id} を取り消しました / alert {args.id} cancelled")
    return 0


def cmd_send_now(config: Config, args: argparse.Namespace) -> int:
    _alert_action(lambda s: s.alerts.send_now(args.id, invoker(config)), config)
    print(f"警報 {args.id} を今すぐ送信します / alert {args.id} will be released now")
    return 0


def cmd_window(config: Config, args: argparse.Namespace) -> int:
    rules = window_rules(config)
    if args.at:
        try:
            at = dt.datetime.fromisoformat(args.at)
        except ValueError:
            raise CommandError(f"--at {args.at!r} is not an ISO date and time") from None
        if at.tzinfo is None:
            at = at.replace(tzinfo=config.service.tz)
    else:
        at = clock_from_environment().now()
    tz = config.service.tz
    at = at.astimezone(tz)
    is_open = window.is_open(rules, at)
    upcoming = None if is_open else window.next_open(rules, at)
    closes = window.closes_at(rules, at)
    reason = window.is_closed_day(rules, at.date())
    if args.json:
        print_json(
            {
                "at": local_text(at, tz),
                "open": is_open,
                "next_open": local_text(upcoming, tz) if upcoming else None,
                "closes_at": local_text(closes, tz) if closes else None,
                "closed_reason": reason,
            }
        )
    elif is_open:
        until = local_text(closes, tz) if closes else "?"
        print(f"{local_text(at, tz)}: 送信可 / open until {until}")
    else:
        why = f" ({reason})" if reason else ""
        print(
            f"{local_text(at, tz)}: 送信時間外 / closed{why}; next opening "
            f"{local_text(upcoming, tz) if upcoming else 'never (check [window])'}"
        )
    return 0
