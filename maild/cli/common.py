"""What the ``maild`` commands share: the error a user can fix, the daemon's objects
opened for one operator's command, the person running it, and JSON output."""

from __future__ import annotations

import argparse
import json
import os
import pwd
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from maild.common.clock import clock_from_environment
from maild.common.config import Config
from maild.residents.keyring import KeyMismatch
from maild.service.control import CALLER_ENV
from maild.service.services import Services, build_services
from maild.store.db import SchemaError

EXIT_USAGE = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """A problem the user can fix; printed as one sentence."""


Handler = Callable[[Config, argparse.Namespace], int]


@contextmanager
def opened_services(config: Config) -> Iterator[Services]:
    """The daemon's objects for an operator's command: no migration, no new files; the
    database's connections are closed when the command is done."""
    try:
        services = build_services(config, clock_from_environment(), migrate=False)
    except (SchemaError, KeyMismatch) as e:
        raise CommandError(str(e)) from None
    except PermissionError as e:
        raise CommandError(
            f"{e.filename}: 読む権限がありません / permission denied (only the service user "
            "may open it; others use the daemon's control socket)"
        ) from None
    try:
        yield services
    finally:
        services.db.dispose()


def invoker(config: Config) -> str:
    """The Unix user for the audit log (docs/roles.md).

    A command the daemon runs for a caller of its control socket names the caller in
    ``MAILD_CALLER`` (learnt from the kernel, maild.service.control); one run through
    sudo, in ``SUDO_USER``. Either is trusted only when the command runs as root or as
    the owner of the state folder, which only the daemon or sudo can make it.
    """
    uid = os.getuid()
    sudo_user = os.environ.get(CALLER_ENV) or os.environ.get("SUDO_USER")
    if sudo_user:
        try:
            owner = config.service.state_dir.stat().st_uid
        except OSError:
            owner = 0
        if uid in (0, owner):
            return sudo_user
    return user_name(uid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def print_json(value: Any) -> None:
    json.dump(value, sys.stdout, ensure_ascii=False, indent=2, default=str)
    sys.stdout.write("\n")
