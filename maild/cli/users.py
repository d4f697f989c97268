"""``maild users``: the console's accounts (admin role). The password and the TOTP secret
are printed once, when they are made, and kept only as a hash and in the database."""

from __future__ import annotations

import argparse

from maild.cli.common import CommandError, invoker, opened_services, print_json
from maild.common.config import Config
from maild.common.roles import ROLE_NAMES
from maild.console.accounts import ROLES, AccountError, Accounts, Credentials


def _accounts(action: str, config: Config, args: argparse.Namespace) -> Credentials | None:
    with opened_services(config) as services:
        accounts = Accounts(services.db, services.clock)
        by = invoker(config)  # the audit log names who changed the accounts
        try:
            if action == "add":
                return accounts.add(args.name, args.role, by)
            if action == "reset":
                return accounts.reset(args.name, by)
            accounts.remove(args.name, by)
            return None
        except AccountError as e:
            raise CommandError(str(e)) from None


def _print(credentials: Credentials, what: str) -> None:
    print(f"{what}: {credentials.name}")
    print(f"パスワード / password: {credentials.password}")
    if credentials.otpauth:
        print(
            "認証アプリ（Google Authenticator など）に次のURIを登録してください"
            " / add this URI to the authenticator app:"
        )
        print(credentials.otpauth)
    print(
        "この表示は一度だけです。本人に安全な方法で渡してください。"
        " / Shown this once only: hand it to the person safely."
    )


def cmd_add(config: Config, args: argparse.Namespace) -> int:
    credentials = _accounts("add", config, args)
    assert credentials is not None
    role = ROLE_NAMES[args.role]
    _print(credentials, f"アカウントを作りました（{role}）/ account added ({role})")
    return 0


def cmd_reset(config: Config, args: argparse.Namespace) -> int:
    credentials = _accounts("reset", config, args)
    assert credentials is not None
    _print(credentials, "パスワードと認証コードを作り直しました / new password and TOTP secret")
    return 0


def cmd_remove(config: Config, args: argparse.Namespace) -> int:
    _accounts("remove", config, args)
    print(f"アカウントを削除しました / account removed: {args.name}")
    return 0


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    users = commands.add_parser("users", help="accounts of the web console (docs/console.md)")
    user_commands = users.add_subparsers(dest="users_command", metavar="COMMAND", required=True)
    sub = user_commands.add_parser("add", help="a new account; prints its password and TOTP URI")
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("--role", required=True, choices=ROLES)
    sub.set_defaults(handler=cmd_add)
    sub = user_commands.add_parser("reset", help="a new password and TOTP secret; ends sessions")
    sub.add_argument("name", metavar="NAME")
    sub.set_defaults(handler=cmd_reset)
    sub = user_commands.add_parser("remove", help="delete an account and its sessions")
    sub.add_argument("name", metavar="NAME")
    sub.set_defaults(handler=cmd_remove)
    sub = user_commands.add_parser("list", help="the accounts and their roles")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(handler=cmd_list)


def cmd_list(config: Config, args: argparse.Namespace) -> int:
    with opened_services(config) as services:
        rows = Accounts(services.db, services.clock).listing()
    if args.json:
        print_json([{"name": a.name, "role": a.role} for a in rows])
    else:
        for account in rows:
            print(f"{account.name}\t{account.role}")
    return 0
