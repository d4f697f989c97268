"""SIGHUP: take a changed config, area file and window rules without a restart.

The new files are read and checked in full first; a broken one is refused
with a logged reason and the running configuration stays. What is applied is
swapped by reference, so an SMTP session or a fan-out batch under way finishes
with the values it started with. Listeners, the database, the relay, the
spool, keys and the time zone are bound at start: a change there is logged as
needing a restart and otherwise ignored.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from maild.alerts.window import WindowRules
from maild.common.config import Config, ConfigError, load_config
from maild.delivery.fanout import FanoutSender
from maild.inbound.handler import InboundHandler
from maild.mail.dkim import DkimSigner
from maild.residents.areas import AreaFileError, AreaMap
from maild.service.services import Services, window_rules
from maild.web.app import WebApp

log = logging.getLogger("maild")

# Sections (or keys) read once at start.
BOUND_AT_START = (
    ("smtp", "listen"),
    ("smtp", "tls_cert_file"),
    ("smtp", "tls_key_file"),
    ("smtp", "max_message_size"),
    ("web", "listen"),
    ("database", None),
    ("relay", None),
    ("dkim", None),
    ("spool", None),
    ("service", "state_dir"),
    ("service", "timezone"),
    ("service", "old_secret_key_files"),
)


@dataclass
class Reloader:
    services: Services
    handler: InboundHandler
    web: WebApp
    fanout: FanoutSender

    async def reload(self) -> bool:
        """Re-read and apply; False (and the old configuration kept) when the new one is bad."""
        old = self.services.config
        try:
            config, areas, rules = await asyncio.to_thread(self._load, old)
        except (ConfigError, AreaFileError, ValueError, OSError) as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            return False
        for section, key in BOUND_AT_START:
            before = getattr(old, section) if key is None else getattr(getattr(old, section), key)
            after = (
                getattr(config, section) if key is None else getattr(getattr(config, section), key)
            )
            if before != after:
                name = f"[{section}]" + (f" {key}" if key else "")
                log.warning("reload: %s changed; it takes effect at the next restart", name)
        self._apply(config, areas, rules)
        log.info("reloaded %s (%d areas)", config.path, len(areas.areas()))
        return True

    @staticmethod
    def _load(old: Config) -> tuple[Config, AreaMap, WindowRules]:
        config = load_config(old.path)
        areas = AreaMap.load(config.areas.file)
        DkimSigner.from_config(config.dkim)  # a broken key file is refused now, not at restart
        return config, areas, window_rules(config)

    def _apply(self, config: Config, areas: AreaMap, rules: WindowRules) -> None:
        s = self.services
        s.config, s.areas, s.rules = config, areas, rules
        s.registrations.config, s.registrations.areas = config, areas
        s.alerts.config, s.alerts.areas, s.alerts.rules = config, areas, rules
        s.bounces.threshold = config.bounces.threshold
        self.web.config, self.web.areas = config, areas
        self.handler.reconfigure(config)
        self.fanout.reconfigure(config)
