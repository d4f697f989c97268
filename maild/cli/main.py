"""The ``maild`` command line (docs/roles.md): the parser, the dispatch, and the service's own
commands (serve, deliver, check-config, db, qr). The operators' commands are in
:mod:`maild.cli.alerts` and :mod:`maild.cli.subscribers`.

User mistakes end with one clear sentence on stderr and a non-zero exit
status, never a traceback. Listing commands take ``--json``.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from maild import __version__
from maild.cli import alerts as alerts_cli
from maild.cli import nodes as nodes_cli
from maild.cli import remote
from maild.cli import subscribers as subscribers_cli
from maild.cli import users as users_cli
from maild.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    CommandError,
    Handler,
    print_json,
)
from maild.common.config import Config, ConfigError, ConfigUnreadable, load_config
from maild.mail.dkim import signer_for, zone_records
from maild.mail.legacy import legacy_problems, problem_texts
from maild.residents.areas import AreaFileError, AreaMap
from maild.residents.qr import write_qr
from maild.service.logs import setup_logging
from maild.service.production import is_development, production_problems, refusal
from maild.store.db import SchemaError, safe_url
from maild.store.models import ALERT_STATUSES

DEFAULT_CONFIG = "/etc/maild/maild.toml"


def _cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from maild.service.serve import ServiceFailure, StartupError, serve

    # A config that mails real residents starts only if it would pass --production.
    if not is_development(config) and (problems := production_problems(config)):
        raise ConfigError(refusal(config, problems))
    try:
        serve(config, args.log_level or "INFO")
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
        raise ConfigError(f"{config.path}: {e}") from None
    if config.mail.legacy_charset_domains:
        _check_legacy_texts(config, areas)
    if args.production and (problems := production_problems(config)):
        raise ConfigError(refusal(config, problems))
    summary = {
        "config": str(config.path),
        "areas": len(areas.areas()),
        "database": safe_url(config.database_url),
        "relay": config.relay.url,
        "node": config.service.node_name,
        "secret_key": nodes_cli.key_state(config),
    }
    if args.json:
        print_json({"valid": True, **summary})
    else:
        print(
            f"{config.path}: OK ({summary['areas']} areas, database {summary['database']},"
            f" node {summary['node']}, secret key {summary['secret_key']})"
        )
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


def _cmd_dkim_record(config: Config, args: argparse.Namespace) -> int:
    if not config.dkim.enabled:
        raise CommandError("[dkim] is not set up: set domain, selector and key_file first")
    try:
        signer_for(config)  # the same checks as at start: readable, usable, not Ed25519 alone
        records = zone_records(config.dkim)
    except ValueError as e:
        raise CommandError(str(e)) from None
    for record in records:
        print(record)
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
        "--socket",
        metavar="PATH",
        help="ask the running daemon over this control socket (default when the config is "
        f"not readable: $MAILD_SOCKET or {remote.DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("MAILD_LOG_LEVEL"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="log level (default INFO for serve, deliver and db; WARNING for the commands "
        "people run, which print their own outcome)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help: str, **kw: Any) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help, **kw)
        sub.set_defaults(handler=handler)
        return sub

    add("serve", _cmd_serve, "run the daemon (SMTP, web, delivery); migrates the database")
    add("deliver", _cmd_deliver, "a delivery worker process (started by serve)")

    submit = add("submit", alerts_cli.cmd_submit, "check alert files and place them in the spool")
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
    listing.set_defaults(handler=alerts_cli.cmd_list)
    for name, handler, text in (
        ("show", alerts_cli.cmd_show, "one alert with its counts and audit log"),
        ("approve", alerts_cli.cmd_approve, "approve a pending alert (approvers only)"),
        ("cancel", alerts_cli.cmd_cancel, "cancel an alert, also while it is being sent"),
        ("send-now", alerts_cli.cmd_send_now, "release a scheduled alert now, ignoring the window"),
    ):
        sub = alert_commands.add_parser(name, help=text, description=text)
        sub.add_argument("id", type=int, metavar="ID")
        sub.set_defaults(handler=handler)
        if name == "show":
            sub.add_argument("--json", action="store_true", help="print JSON")
        if name == "approve":
            sub.add_argument(
                "--ack-privacy",
                action="store_true",
                help="acknowledge the privacy check's findings (alerts show lists them)",
            )

    people = commands.add_parser("subscribers", help="import, export, count or erase subscribers")
    people_commands = people.add_subparsers(dest="people_command", metavar="COMMAND", required=True)
    sub = people_commands.add_parser(
        "import", help="import CSV (address,areas,categories) from an older system"
    )
    sub.add_argument("csv", metavar="CSV")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.add_argument("--partial", action="store_true", help="exit 0 even when rows were skipped")
    sub.set_defaults(handler=subscribers_cli.cmd_import)
    sub = people_commands.add_parser("stats", help="counts by status, area and category")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=subscribers_cli.cmd_stats)
    sub = people_commands.add_parser("export", help="CSV of all subscribers on stdout")
    sub.add_argument("--output", metavar="FILE", help="write to FILE (mode 0600), not stdout")
    sub.set_defaults(handler=subscribers_cli.cmd_export)
    sub = people_commands.add_parser("remove", help="erase one subscriber")
    sub.add_argument("address", metavar="ADDRESS")
    sub.set_defaults(handler=subscribers_cli.cmd_remove)

    users_cli.add_parser(commands)

    qr = add("qr", _cmd_qr, "a QR code of mailto: the registration address, for posters")
    qr.add_argument("--output", required=True, metavar="FILE", help="poster.svg or poster.png")

    win = add(
        "window", alerts_cli.cmd_window, "is sending allowed at a moment, and when it next opens"
    )
    win.add_argument("--at", metavar="ISO-DATETIME", help="the moment (default: now)")
    win.add_argument("--json", action="store_true", help="print JSON")
    check = add("check-config", _cmd_check_config, "validate the config and the area file")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.add_argument(
        "--production",
        action="store_true",
        help="also refuse what only a development config may have (placeholders, http, no DKIM, …)",
    )

    dkim = commands.add_parser("dkim", help="DKIM keys")
    dkim_commands = dkim.add_subparsers(dest="dkim_command", metavar="COMMAND", required=True)
    record = dkim_commands.add_parser("record", help="the DNS TXT record of each [dkim] key")
    record.set_defaults(handler=_cmd_dkim_record)

    db = commands.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    up = db_commands.add_parser("upgrade", help="migrate the database schema to the newest")
    up.add_argument(
        "--force",
        action="store_true",
        help="migrate even while other nodes seem to run another schema (they were killed)",
    )
    up.set_defaults(handler=nodes_cli.cmd_db_upgrade)

    nodes = add("nodes", nodes_cli.cmd_nodes, "the nodes on this database and when each was seen")
    nodes.add_argument("--json", action="store_true", help="print JSON")
    return parser


# The service user's own commands: never asked of the daemon.
LOCAL_ONLY = ("serve", "deliver", "db")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    words = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(words)
    # An operator reads the command's own sentences, Japanese first; the daemon's journal
    # and the audit log keep the record.
    setup_logging(args.log_level or ("INFO" if args.command in LOCAL_ONLY else "WARNING"))
    config_path = args.config or os.environ.get("MAILD_CONFIG") or DEFAULT_CONFIG
    handler: Handler = args.handler
    try:
        if args.socket and args.command not in LOCAL_ONLY:
            return remote.run_remote(words, args)
        try:
            config = load_config(Path(config_path))
        except ConfigUnreadable:
            # Issue 15: people other than the service user keep out of the config, the
            # database and the keys; the daemon does what their role allows.
            if args.command in LOCAL_ONLY:
                raise
            return remote.run_remote(words, args)
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
