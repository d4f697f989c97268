"""WSGI entry point for running the web pages under a separate server.

``gunicorn 'maild.service.wsgi:application'`` (or ``waitress-serve --call
'maild.service.wsgi:build_from_env'``) with ``MAILD_CONFIG`` naming the config file.
The objects are the daemon's own, built by :func:`maild.service.services.build_services`.
This process does not migrate the schema (run ``maild db upgrade`` or the daemon)
and sends no mail: the daemon's outbox sender picks the queued mails up.
"""

from __future__ import annotations

import os
from typing import Any

from maild.common.clock import Clock
from maild.common.config import Config, ConfigError, load_config
from maild.service.services import build_services
from maild.web.app import WebApp, create_app
from maild.web.health import Health

CONFIG_ENV = "MAILD_CONFIG"


def build_app(config: Config, clock: Clock | None = None, health: Health | None = None) -> WebApp:
    """The web app over freshly built services; several server workers may each call it."""
    services = build_services(config, clock or Clock(), migrate=False)
    return create_app(
        config,
        services.registrations,
        services.areas,
        services.links,
        services.clock,
        health,
        budget=services.budget,
    )


def build_from_env() -> WebApp:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"{CONFIG_ENV} is not set; set it to the path of maild.toml")
    return build_app(load_config(path))


_application: WebApp | None = None


def __getattr__(name: str) -> Any:
    # Built on first use, so that importing build_app needs no MAILD_CONFIG.
    global _application
    if name == "application":
        if _application is None:
            _application = build_from_env()
        return _application
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
