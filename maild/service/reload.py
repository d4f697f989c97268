"""SIGHUP: take a changed config, area file and DKIM key without a restart.

One path for every process: the daemon and each delivery worker call
:func:`reload_config`, which reads and checks the new files in full, keeps the
running value of every key in :data:`RESTART_KEYS` (logging a warning that names
each one that changed), and hands the result to :func:`reconfigure_all`: one
``reconfigure(config)`` call on each long-lived component. A broken file is
refused with a logged reason and nothing changes.

A component swaps what it holds by reference, so an SMTP session or a fan-out
batch under way finishes with the values it started with.

Every key of the schema is either in :data:`RESTART_KEYS` or applied by
``reconfigure``; tests/test_reload.py walks the schema and fails on a key that is
neither, and shows each applied key taking effect.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

from maild.alerts.privacy_allow import read_allow_file
from maild.alerts.window import WindowRules
from maild.common.config import Config, ConfigError, load_config
from maild.mail.dkim import signer_for
from maild.residents.areas import AreaFileError, shared_area_map
from maild.service.services import Reconfigurable

log = logging.getLogger("maild")

# Keys bound when the process starts: a change is logged and takes effect at the
# next restart. Everything else is applied by SIGHUP.
RESTART_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("service", "state_dir"),  # the database file and the secret key live there
        ("service", "timezone"),  # the spool's dates and the bounce days are read in it
        ("service", "old_secret_key_files"),  # links are checked with the keys read at start
        ("service", "control_socket"),  # bound once, like the SMTP listener
        ("service", "node_name"),  # the node's row and its claims carry the name it started with
        ("database", "url"),
        ("smtp", "listen"),
        ("smtp", "hostname"),  # the listener's greeting and the relay's EHLO
        ("smtp", "max_message_size"),
        ("smtp", "tls_cert_file"),
        ("smtp", "tls_key_file"),
        ("web", "listen"),
        ("web", "operators_listen"),
        ("console", "listen"),
        # The relay connections, their rate and the worker processes are built at start.
        ("relay", "url"),
        ("relay", "username"),
        ("relay", "password_file"),
        ("relay", "connections"),
        ("relay", "max_per_second"),
        ("relay", "verify_tls"),
        ("relay", "workers"),
        ("spool", "dir"),
    }
)


class ReloadRefused(Exception):
    """The new files are broken; the running configuration stays."""


def reload_config(running: Config) -> Config:
    """Read ``running.path`` again and check it with its area file, DKIM key and the
    privacy check's file of allowed words.

    Returns the config to apply: the new one, with the running value of every key in
    :data:`RESTART_KEYS` (a warning names each that changed). Raises ReloadRefused.
    Blocking: reads files.
    """
    try:
        new = load_config(running.path)
        shared_area_map(new.areas.file)
        signer_for(new)
        WindowRules.from_config(new.window, new.service.timezone)
        if new.alerts.privacy_allow is not None:
            read_allow_file(new.alerts.privacy_allow)
    except (ConfigError, AreaFileError, ValueError, OSError) as e:
        raise ReloadRefused(str(e)) from None
    return keep_restart_keys(running, new)


def keep_restart_keys(running: Config, new: Config) -> Config:
    """``new`` with the running value of each restart-only key; warns for each change."""
    sections: dict[str, object] = {}
    for section, key in sorted(RESTART_KEYS):
        before = getattr(getattr(running, section), key)
        if getattr(getattr(new, section), key) != before:
            log.warning("reload: [%s] %s changed; it needs a restart to take effect", section, key)
            current = sections.get(section, getattr(new, section))
            sections[section] = dataclasses.replace(current, **{key: before})  # type: ignore[type-var]
    return dataclasses.replace(new, **sections)  # type: ignore[arg-type]


def reconfigure_all(components: Iterable[Reconfigurable], config: Config) -> None:
    """Give ``config`` to every component: the one call a reload makes on each."""
    for component in components:
        component.reconfigure(config)
