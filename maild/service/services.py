"""Builds the long-lived objects every entry point shares, in one place.

The daemon, the separate WSGI entry point and the command line all need the
same database, signing keys, area map and registration service; building them
here keeps them from drifting apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from maild.alerts.window import WindowRules
from maild.alerts.workflow import Alerts
from maild.common.clock import Clock
from maild.common.config import Config
from maild.residents.areas import AreaMap, shared_area_map
from maild.residents.bounces import Bounces
from maild.residents.keyring import current_key, fingerprint
from maild.residents.limits import AnswerBudget
from maild.residents.links import Links, VerpTokens, read_key
from maild.residents.registration import Registrations
from maild.store.db import Database
from maild.store.nodes import refuse_while_others_run


class Reconfigurable(Protocol):
    """A long-lived component: takes a reloaded config with one call (maild.service.reload)."""

    def reconfigure(self, config: Config) -> None: ...


@dataclass
class Services:
    config: Config
    clock: Clock
    db: Database
    links: Links
    areas: AreaMap
    registrations: Registrations
    alerts: Alerts
    verp: VerpTokens
    rules: WindowRules
    bounces: Bounces
    budget: AnswerBudget  # registration answers, shared by SMTP and /signup
    key_fingerprint: str  # of the current secret key (maild.residents.keyring)

    def reconfigure(self, config: Config) -> None:
        """A reloaded config (SIGHUP): what the entry points read from here."""
        self.config = config
        self.areas = shared_area_map(config.areas.file)
        self.rules = window_rules(config)

    def components(self) -> list[Reconfigurable]:
        """Everything here that takes a reloaded config, this bag itself first."""
        return [self, self.registrations, self.alerts, self.bounces]


def open_database(config: Config, migrate: bool = True, clock: Clock | None = None) -> Database:
    """The database, migrated to the newest schema (or, ``migrate`` False, checked to be).

    The migration is the starting daemon's: refused while another node runs another
    schema (:class:`maild.store.nodes.UpgradeRefused`).
    """
    db = Database(config.database_url, create=migrate)
    try:
        if migrate:
            db.upgrade(refuse_while_others_run(clock or Clock(), starting=config.service.node_name))
        else:
            db.check_schema()
    except BaseException:
        db.dispose()
        raise
    return db


def build_services(
    config: Config,
    clock: Clock | None = None,
    db: Database | None = None,
    wake_outbox: Callable[[], None] = lambda: None,
    migrate: bool = True,
) -> Services:
    """``wake_outbox`` is called when a registration mail is queued (the daemon's sender)."""
    clock = clock or Clock()
    opened = db is None
    db = db or open_database(config, migrate, clock)
    try:
        key = current_key(db, config)  # KeyMismatch: not the key of the other nodes
    except BaseException:
        if opened:
            db.dispose()
        raise
    old_keys = [read_key(p) for p in config.service.old_secret_key_files]
    links = Links(key, old_keys, clock)
    areas = shared_area_map(config.areas.file)
    registrations = Registrations(config, db, links, areas, clock, wake_outbox)
    rules = window_rules(config)
    alerts = Alerts(config, db, areas, clock, rules)
    verp = VerpTokens(key, old_keys)
    bounces = Bounces.from_config(config, db, clock)
    budget = AnswerBudget(config.limits, clock)
    return Services(
        config,
        clock,
        db,
        links,
        areas,
        registrations,
        alerts,
        verp,
        rules,
        bounces,
        budget,
        fingerprint(key),
    )


def window_rules(config: Config) -> WindowRules:
    return WindowRules.from_config(config.window, config.service.timezone)
