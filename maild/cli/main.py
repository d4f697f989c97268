"""The ``maild`` command line (SPEC §2).

User mistakes end with one clear sentence on stderr and a non-zero exit
status, never a traceback. Listing commands take ``--json``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from maild import __version__
from maild.alerts import window
from maild.alerts.workflow import AlertActionError
from maild.cli.submit import Checked, CountRecipients, Submitter
from maild.common.addresses import InvalidAddress, mask
from maild.common.clock import clock_from_environment
from maild.common.config import Config, ConfigError, load_config
from maild.mail.dkim import signer_for
from maild.mail.legacy import legacy_problems, problem_texts
from maild.residents import roster, roster_read, subscribers
from maild.residents.areas import AreaFileError, AreaMap
from maild.residents.qr import write_qr
from maild.service.logs import setup_logging
from maild.service.services import Services, build_services, window_rules
from maild.store.db import SchemaError
from maild.store.models import ALERT_STATUSES

DEFAULT_CONFIG = "/etc/maild/maild.toml"

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """A problem the user can fix; printed as one sentence."""


Handler = Callable[[Config, argparse.Namespace], int]


def _cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from maild.service.serve import ServiceFailure, StartupError, serve

    try:
        serve(config, args.log_level)
    except (StartupError, ServiceFailure) as e:
        raise CommandError(str(e)) from None
    return 0


def _cmd_deliver(config: Config, args: argparse.Namespace) -> int:
    from maild.service.workers import run_worker

    try:
        run_worker(config)
    except SchemaError as e:
        raise CommandError(str(e)) from None
    return 0


def _cmd_check_config(config: Config, args: argparse.Namespace) -> int:
    areas = AreaMap.load(config.areas.file)
    try:
        signer_for(config)
    except ValueError as e:
        raise ConfigError(f"{config.path}: [dkim] key_file: {e}") from None
    if config.mail.legacy_charset_domains:
        _check_legacy_texts(config, areas)
    summary = {
        "config": str(config.path),
        "areas": len(areas.areas()),
        "database": _safe_url(config.database_url),
        "relay": config.relay.url,
    }
    if args.json:
        _print_json({"valid": True, **summary})
    else:
        print(f"{config.path}: OK ({summary['areas']} areas, database {summary['database']})")
    return 0


def _check_legacy_texts(config: Config, areas: AreaMap) -> None:
    """What every mail to an old phone carries must exist in ISO-2022-JP."""
    texts = [
        ("[service] name", config.service.name),
        ("[mail] from_name", config.mail.from_name),
        ("[mail] subject_prefix", config.mail.subject_prefix),
    ] + [(f"{config.areas.file}: {area.id}", area.name_ja) for area in areas.areas()]
    for where, text in texts:
        problems = legacy_problems(text)
        if problems:
            ja, en = problem_texts(problems[0])
            raise ConfigError(f"{config.path}: {where}: {en} ({ja})")


def _cmd_db_upgrade(config: Config, args: argparse.Namespace) -> int:
    from maild.store.db import upgrade

    upgrade(config.database_url)
    print(f"database {_safe_url(config.database_url)} is up to date")
    return 0


def _services(config: Config) -> Services:
    """The daemon's objects for an operator's command: no migration, no new files."""
    try:
        return build_services(config, clock_from_environment(), migrate=False)
    except SchemaError as e:
        raise CommandError(str(e)) from None
    except PermissionError as e:
        raise CommandError(
            f"{e.filename}: permission denied; run the command as the service user "
            "(e.g. sudo -u maild maild …)"
        ) from None


def _invoker(config: Config) -> str:
    """The Unix user for the audit log (SPEC §2).

    Operators run commands as the service user through sudo, so the person is
    ``SUDO_USER``; it is trusted only when the command runs as root or as the
    owner of the state folder, which only sudo can make it.
    """
    uid = os.getuid()
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            owner = config.service.state_dir.stat().st_uid
        except OSError:
            owner = 0
        if uid in (0, owner):
            return sudo_user
    return _user_name(uid)


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


# --- alerts ---------------------------------------------------------------------------


def _cmd_submit(config: Config, args: argparse.Namespace) -> int:
    areas = AreaMap.load(config.areas.file)
    clock = clock_from_environment()
    try:
        # Operators run this as themselves; the database may well not be theirs to read.
        count: CountRecipients | None = _services(config).alerts.count_recipients
    except CommandError:
        count = None
    submitter = Submitter(
        config, areas, window_rules(config), clock.now(), _user_name(os.getuid()), count
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
        _print_json([r.as_json() for r in results])
    else:
        _print_submitted(results, args, len(config.approval.test_recipients))
    for problem in sent_problems:
        print(f"maild: test send failed: {problem}", file=sys.stderr)
    return 0 if all_valid and not sent_problems else EXIT_FAILURE


def _print_submitted(results: list[Checked], args: argparse.Namespace, testers: int) -> None:
    for r in results:
        if not r.valid:
            print(f"{r.file}: 不備があります / invalid")
            for error in r.errors:
                print(f"  {error}")
            continue
        if args.check:
            what = "問題ありません / valid (not placed: --check)"
        elif args.test:
            what = f"テスト送信しました / test-sent to {testers} test recipient(s)"
        else:
            what = "受け付けました / placed in the spool"
        print(f"{r.file}: {what}")
        print(f"  配信エリア / areas: {'、'.join(r.areas)}")
        if r.pending_approval:
            print("  送信 / release: 承認待ちになります / waits for an approver")
        else:
            print(f"  送信 / release: {r.release_at or '-'}")
        shown = (
            "不明（データベースを読めません） / unknown" if r.recipients is None else r.recipients
        )
        print(f"  現在の対象者数 / recipients now: {shown}")
    if not all(r.valid for r in results):
        print(
            "不備のあるファイルがあるため、何も送信・投入していません。"
            " / Nothing was sent or placed because a file is invalid."
        )


def _cmd_alerts_list(config: Config, args: argparse.Namespace) -> int:
    alerts = _services(config).alerts.listing(args.status)
    if args.json:
        _print_json(alerts)
        return 0
    if not alerts:
        print("no alerts")
    for a in alerts:
        c = a["counts"]
        print(
            f"{a['id']:>5}  {a['status']:<16} {'URGENT ' if a['urgent'] else ''}"
            f"release {a['release_at'] or '-'}  sent {c['sent']}/"
            f"{sum(c.values())}  {a['subject']}"
        )
    return 0


def _cmd_alerts_show(config: Config, args: argparse.Namespace) -> int:
    alert = _alert_action(lambda s: s.alerts.show(args.id), config)
    if args.json:
        _print_json(alert)
        return 0
    c = alert["counts"]
    for key in (
        "id",
        "subject",
        "status",
        "urgent",
        "category",
        "area_names",
        "sender",
        "requester",
        "approved_by",
        "send_after",
        "release_at",
        "released_at",
        "finished_at",
    ):
        print(f"{key:>12}: {alert[key] if alert[key] is not None else '-'}")
    print(
        f"{'counts':>12}: queued {c['queued']}, sent {c['sent']}, deferred {c['deferred']}, "
        f"failed {c['failed']}"
    )
    print("       audit:")
    for entry in alert["audit"]:
        detail = f" ({entry['detail']})" if entry["detail"] else ""
        print(f"              {entry['at']}  {entry['action']} by {entry['user']}{detail}")
    return 0


def _alert_action(action: Callable[[Services], Any], config: Config) -> Any:
    try:
        return action(_services(config))
    except AlertActionError as e:
        raise CommandError(str(e)) from None


def _cmd_alerts_approve(config: Config, args: argparse.Namespace) -> int:
    _alert_action(lambda s: s.alerts.approve(args.id, _invoker(config)), config)
    print(f"alert {args.id} approved")
    return 0


def _cmd_alerts_cancel(config: Config, args: argparse.Namespace) -> int:
    _alert_action(lambda s: s.alerts.cancel(args.id, _invoker(config)), config)
    print(f"alert {args.id} cancelled")
    return 0


def _cmd_alerts_send_now(config: Config, args: argparse.Namespace) -> int:
    _alert_action(lambda s: s.alerts.send_now(args.id, _invoker(config)), config)
    print(f"alert {args.id} will be released now")
    return 0


def _cmd_window(config: Config, args: argparse.Namespace) -> int:
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
    at = at.astimezone(config.service.tz)
    is_open = window.is_open(rules, at)
    upcoming = None if is_open else window.next_open(rules, at)
    closes = window.closes_at(rules, at)
    reason = window.is_closed_day(rules, at.date())
    if args.json:
        _print_json(
            {
                "at": at.isoformat(),
                "open": is_open,
                "next_open": upcoming.isoformat() if upcoming else None,
                "closes_at": closes.isoformat() if closes else None,
                "closed_reason": reason,
            }
        )
    elif is_open:
        print(f"{at.isoformat()}: 送信可 / open until {closes.isoformat() if closes else '?'}")
    else:
        why = f" ({reason})" if reason else ""
        print(
            f"{at.isoformat()}: 送信時間外 / closed{why}; next opening "
            f"{upcoming.isoformat() if upcoming else 'never (check [window])'}"
        )
    return 0


# --- subscribers ------------------------------------------------------------------------


def _cmd_subscribers_import(config: Config, args: argparse.Namespace) -> int:
    services = _services(config)
    try:
        with roster_read.open_csv(Path(args.csv)) as lines:
            report = roster.import_csv(services.db, services.areas, services.clock, lines)
    except roster_read.ImportFileError as e:
        raise CommandError(f"{e.ja} / {e.en}") from None
    except OSError as e:
        raise CommandError(f"{args.csv}: {e.strerror}") from None
    if args.json:
        _print_json(
            {
                "imported": report.imported,
                "skipped": report.skipped,
                "problems": [{"line": p.line, "ja": p.ja, "en": p.en} for p in report.problems],
            }
        )
    else:
        for problem in report.problems:
            print(problem, file=sys.stderr)
        print(f"{report.imported} 件登録しました / imported, {report.skipped} skipped")
    return 0


def _cmd_subscribers_stats(config: Config, args: argparse.Namespace) -> int:
    services = _services(config)
    numbers = roster.stats(services.db, services.areas)
    if args.json:
        _print_json(numbers)
        return 0
    print("status:   " + ", ".join(f"{k} {v}" for k, v in numbers["by_status"].items()))
    print("category: " + ", ".join(f"{k} {v}" for k, v in numbers["by_category"].items()))
    print("areas (active subscribers who chose each):")
    for area_id, count in numbers["by_area"].items():
        print(
            f"  {services.areas.get(area_id).name_ja if area_id in services.areas else area_id}"
            f" ({area_id}): {count}"
        )
    return 0


def _cmd_subscribers_export(config: Config, args: argparse.Namespace) -> int:
    services = _services(config)
    print(
        "maild: 注意: 出力には個人情報（メールアドレス）が含まれます。取り扱いに注意してください。"
        " / warning: the output holds personal data (mail addresses); handle it with care.",
        file=sys.stderr,
    )
    count = roster.export_csv(services.db, services.areas, sys.stdout)
    print(f"maild: {count} subscribers exported", file=sys.stderr)
    return 0


def _cmd_subscribers_remove(config: Config, args: argparse.Namespace) -> int:
    services = _services(config)
    try:
        removed = subscribers.remove(services.db, args.address)
    except InvalidAddress as e:
        raise CommandError(str(e)) from None
    if not removed:
        raise CommandError(f"{mask(args.address)} is not registered")
    print(f"{mask(args.address)} を削除しました / erased")
    return 0


def _cmd_qr(config: Config, args: argparse.Namespace) -> int:
    try:
        write_qr(config.smtp.registration_address, Path(args.output))
    except ValueError as e:
        raise CommandError(str(e)) from None
    except OSError as e:
        raise CommandError(f"{args.output}: {e.strerror}") from None
    print(f"{args.output}: mailto:{config.smtp.registration_address}")
    return 0


def _safe_url(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="maild",
        description="Mail daemon for a safety-alert service (みやぎSecurityメール).",
    )
    parser.add_argument("--version", action="version", version=f"maild {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help=f"config file (default: $MAILD_CONFIG or {DEFAULT_CONFIG})",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MAILD_LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, **kw)
        sub.set_defaults(handler=handler)
        return sub

    add("serve", _cmd_serve, "run the daemon (SMTP, web, delivery); migrates the database")
    add("deliver", _cmd_deliver, "a delivery worker process (started by serve)")

    submit = add("submit", _cmd_submit, "check alert files and place them in the spool")
    submit.add_argument("files", nargs="+", metavar="FILE")
    submit.add_argument(
        "--test", action="store_true", help="send now to [approval] test_recipients only"
    )
    submit.add_argument(
        "--check", action="store_true", help="only check the files; place and send nothing"
    )
    submit.add_argument("--json", action="store_true", help="print JSON")

    alerts = commands.add_parser("alerts", help="list, show, approve, cancel or release alerts")
    alert_commands = alerts.add_subparsers(dest="alerts_command", metavar="COMMAND", required=True)
    listing = alert_commands.add_parser("list", help="alerts, newest first")
    listing.add_argument("--status", choices=ALERT_STATUSES)
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_cmd_alerts_list)
    for name, handler, text in (
        ("show", _cmd_alerts_show, "one alert with its counts and audit log"),
        ("approve", _cmd_alerts_approve, "approve a pending alert (approvers only)"),
        ("cancel", _cmd_alerts_cancel, "cancel an alert, also while it is being sent"),
        ("send-now", _cmd_alerts_send_now, "release a scheduled alert now, ignoring the window"),
    ):
        sub = alert_commands.add_parser(name, help=text, description=text)
        sub.add_argument("id", type=int, metavar="ID")
        sub.set_defaults(handler=handler)
        if name == "show":
            sub.add_argument("--json", action="store_true", help="print JSON")

    people = commands.add_parser("subscribers", help="import, export, count or erase subscribers")
    people_commands = people.add_subparsers(dest="people_command", metavar="COMMAND", required=True)
    sub = people_commands.add_parser(
        "import", help="import CSV (address,areas,categories) from an older system"
    )
    sub.add_argument("csv", metavar="CSV")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=_cmd_subscribers_import)
    sub = people_commands.add_parser("stats", help="counts by status, area and category")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=_cmd_subscribers_stats)
    sub = people_commands.add_parser("export", help="CSV of all subscribers on stdout")
    sub.set_defaults(handler=_cmd_subscribers_export)
    sub = people_commands.add_parser("remove", help="erase one subscriber")
    sub.add_argument("address", metavar="ADDRESS")
    sub.set_defaults(handler=_cmd_subscribers_remove)

    qr = add("qr", _cmd_qr, "a QR code of mailto: the registration address, for posters")
    qr.add_argument("--output", required=True, metavar="FILE", help="poster.svg or poster.png")

    win = add("window", _cmd_window, "is sending allowed at a moment, and when it next opens")
    win.add_argument("--at", metavar="ISO-DATETIME", help="the moment (default: now)")
    win.add_argument("--json", action="store_true", help="print JSON")
    check = add("check-config", _cmd_check_config, "validate the config and the area file")
    check.add_argument("--json", action="store_true", help="print JSON")

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    up = db_commands.add_parser("upgrade", help="migrate the database schema to the newest")
    up.set_defaults(handler=_cmd_db_upgrade)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    config_path = args.config or os.environ.get("MAILD_CONFIG") or DEFAULT_CONFIG
    handler: Handler = args.handler
    try:
        config = load_config(Path(config_path))
        return handler(config, args)
    except (ConfigError, AreaFileError, CommandError) as e:
        print(f"maild: {e}", file=sys.stderr)
        return EXIT_FAILURE if isinstance(e, CommandError) else EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `maild subscribers export | head`: the reader has gone; that is not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
