"""``maild subscribers …``: the data owner's commands (docs/csv.md): import from an older
system, counts, export, erasure. The rules are :mod:`maild.residents.roster` and
:mod:`maild.residents.subscribers`; these open the database and print."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TextIO

from maild.cli.common import EXIT_FAILURE, CommandError, opened_services, print_json
from maild.common.addresses import InvalidAddress, mask
from maild.common.config import Config
from maild.common.text import counted
from maild.residents import roster, roster_read, subscribers
from maild.residents.categories import CATEGORIES
from maild.store.models import ACTIVE, PENDING, SUSPENDED

# The statuses as the operator guide names them (pending, active, suspended).
STATUS_JA = {PENDING: "仮登録", ACTIVE: "登録済み", SUSPENDED: "一時停止"}
EXPORT_WARNING = (
    "maild: 注意: 出力には個人情報（メールアドレス）が含まれます。取り扱いに注意してください。"
    " / warning: the output holds personal data (mail addresses); handle it with care."
)


def cmd_import(config: Config, args: argparse.Namespace) -> int:
    with opened_services(config) as services:
        try:
            with roster_read.open_csv(Path(args.csv)) as lines:
                report = roster.import_csv(services.db, services.areas, services.clock, lines)
        except roster_read.ImportFileError as e:
            raise CommandError(f"{e.ja} / {e.en}") from None
        except OSError as e:
            raise CommandError(f"{args.csv}: {e.strerror}") from None
    if args.json:
        print_json(
            {
                "imported": report.imported,
                "skipped": report.skipped,
                "problems": [{"line": p.line, "ja": p.ja, "en": p.en} for p in report.problems],
            }
        )
    else:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(
            f"{report.imported} 件登録、{report.skipped} 件スキップしました"
            f" / {report.imported} imported, {report.skipped} skipped"
        )
    # A skipped row is a resident the old system mailed and this one will not: a script
    # must not take that for success unless the operator said so (--partial).
    if report.skipped and not args.partial:
        print(
            f"maild: {report.skipped} 行をスキップしました（--partial で受け入れます）"
            f" / {counted(report.skipped, 'row was', 'rows were')} skipped"
            " (--partial accepts that)",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return 0


def cmd_stats(config: Config, args: argparse.Namespace) -> int:
    with opened_services(config) as services:
        numbers = roster.stats(services.db, services.areas)
    if args.json:
        print_json(numbers)
        return 0
    areas = services.areas
    status = numbers["by_status"]
    print(
        "登録者 / subscribers: "
        + "、".join(f"{STATUS_JA.get(k, k)} {v} 人" for k, v in status.items())
        + " / "
        + ", ".join(f"{v} {k}" for k, v in status.items())
    )
    print("分類ごと（登録済みで受け取る人数） / by category (active subscribers who receive each):")
    for category in CATEGORIES:
        count = numbers["by_category"][category.id]
        print(f"  {category.ja} ({category.id}): {count} 人 / {counted(count, 'subscriber')}")
    print("地域ごと（登録済みで選んだ人数） / by area (active subscribers who chose each):")
    for area_id, count in numbers["by_area"].items():
        name = areas.get(area_id).name_ja if area_id in areas else area_id
        print(f"  {name} ({area_id}): {count} 人 / {counted(count, 'subscriber')}")
    hours = numbers["by_hours"]
    anytime, own, urgent = hours["any_time"], hours["own_hours"], hours["urgent_too"]
    print(
        f"受信時間帯（登録済み） / receiving hours (active subscribers): いつでも {anytime} 人、"
        f"時間帯あり {own} 人（うち緊急の情報も待つ {urgent} 人） / any time {anytime},"
        f" own hours {own} (urgent alerts wait too: {urgent})"
    )
    return 0


def cmd_export(config: Config, args: argparse.Namespace) -> int:
    with opened_services(config) as services:
        print(EXPORT_WARNING, file=sys.stderr)
        if args.output is None:
            count = roster.export_csv(services.db, services.areas, sys.stdout)
        else:
            with _private_file(Path(args.output)) as out:
                count = roster.export_csv(services.db, services.areas, out)
    print(
        f"maild: {count} 件出力しました / {counted(count, 'subscriber')} exported", file=sys.stderr
    )
    return 0


def _private_file(path: Path) -> TextIO:
    """``path`` opened for writing, readable by its owner only (0600) from the first byte:
    the file holds every resident's address. An existing file is truncated and made 0600."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    except OSError as e:
        raise CommandError(f"{path}: {e.strerror}") from None
    os.fchmod(fd, 0o600)  # O_CREAT's mode is not applied to a file that exists
    return os.fdopen(fd, "w", encoding="utf-8", newline="")


def cmd_remove(config: Config, args: argparse.Namespace) -> int:
    with opened_services(config) as services:
        try:
            removed = subscribers.remove(services.db, args.address)
        except InvalidAddress as e:
            raise CommandError(str(e)) from None
    if not removed:
        raise CommandError(f"{mask(args.address)} is not registered")
    print(f"{mask(args.address)} を削除しました / erased")
    return 0
