"""What only a development config may have (issue 15 item 7): ``maild check-config
--production`` lists it, and ``maild serve`` refuses to start with it when the config is
not a development one.

A development config is one whose mail cannot reach a resident: it relays to a maildir
(``make run``, config/dev.toml), or its ``base_url`` is a loopback address, so that no
link it sends would open anywhere but on the machine itself (a developer's or a test's;
the same rule as :func:`maild.common.config._check_links_are_https`). Any other config
delivers to real people, and must not have:

- a placeholder domain (``example.jp``, RFC 2606's ``example.com`` …) in a host name or
  address that residents see or mail goes to;
- a missing state directory (the secret key and the SQLite database live there; the
  package's installation creates it with the right owner, the daemon would create it
  with root's or the caller's);
- an http ``base_url`` (RFC 8058 one-click unsubscribe needs https; links carry tokens);
- an http ``[console] base_url`` off the machine (the approvers' session would cross the
  network in the clear);
- no DKIM key (mailbox providers file unsigned bulk mail as spam, docs/mail-delivery.md);
- a key, password or config file that every local user can read.
"""

from __future__ import annotations

import ipaddress
import re
import stat
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from maild.common.config import Config
from maild.residents.keyring import key_path

# RFC 2606 / RFC 6761 names and the Japanese one the example configs use.
PLACEHOLDER = re.compile(r"(?:^|[.@/])example\.(?:jp|com|net|org)(?:$|[/:])")


@dataclass(frozen=True)
class Problem:
    """One thing a production config must not have: where, and why in both languages."""

    where: str
    ja: str
    en: str

    def __str__(self) -> str:
        return f"{self.where}: {self.ja} / {self.en}"


def is_development(config: Config) -> bool:
    """True for a config whose mail reaches no resident (see the module's docstring)."""
    if config.relay.url.startswith("maildir:"):
        return True
    return _loopback(urllib.parse.urlsplit(config.service.base_url).hostname or "")


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def production_problems(config: Config) -> list[Problem]:
    """Everything in ``config`` only a development config may have: placeholders, the
    state directory, base_url, DKIM, then the files anyone can read."""
    problems: list[Problem] = []
    problems += _placeholders(config)
    state_dir = config.service.state_dir
    if not state_dir.is_dir():
        problems.append(
            Problem(
                f"[service] state_dir {state_dir}",
                "ディレクトリがありません。サービスユーザーの所有で作成してください",
                "does not exist; create it, owned by the service user",
            )
        )
    if not config.service.base_url.startswith("https://"):
        problems.append(
            Problem(
                f"[service] base_url {config.service.base_url}",
                "https ではありません。登録・解除のリンクには https が必要です",
                "is not https; the links residents get (RFC 8058 one-click unsubscribe) need it",
            )
        )
    console = urllib.parse.urlsplit(config.console.base_url).hostname or ""
    if not config.console.secure and not _loopback(console):
        # Over a tunnel to loopback the cookie stays on the machine; any other http
        # address sends the approvers' session across the network in the clear.
        problems.append(
            Problem(
                f"[console] base_url {config.console.base_url}",
                "https ではありません。承認コンソールは TLS のリバースプロキシの内側に"
                "置いてください",
                "is not https; put the console behind a TLS reverse proxy (docs/console.md)",
            )
        )
    if not config.dkim.enabled:
        problems.append(
            Problem(
                "[dkim]",
                "DKIM 鍵が設定されていません。署名のない一斉配信は迷惑メール扱いされます",
                "no DKIM key is set; unsigned bulk mail is filed as spam",
            )
        )
    for where, path in _secret_files(config):
        if path.exists() and path.stat().st_mode & (stat.S_IROTH | stat.S_IWOTH):
            problems.append(
                Problem(
                    f"{where} {path}",
                    "ほかのユーザーが読み書きできます (chmod o-rwx してください)",
                    "can be read or written by every user (chmod o-rwx it)",
                )
            )
    return problems


def _placeholders(config: Config) -> list[Problem]:
    values = [
        ("[service] base_url", config.service.base_url),
        ("[smtp] hostname", config.smtp.hostname),
        ("[smtp] registration_address", config.smtp.registration_address),
        ("[smtp] bounce_address", config.smtp.bounce_address),
        ("[mail] from_address", config.mail.from_address),
        ("[dkim] domain", config.dkim.domain),
        *(("[approval] test_recipients", r) for r in config.approval.test_recipients),
    ]
    return [
        Problem(
            f"{where} {value}",
            "例示用のドメインのままです。本番のドメインにしてください",
            "is still a placeholder domain; set the real one",
        )
        for where, value in values
        if PLACEHOLDER.search(value.lower())
    ]


def _secret_files(config: Config) -> list[tuple[str, Path]]:
    files: list[tuple[str, Path | None]] = [
        ("config", config.path),
        ("[service] secret key", key_path(config)),
        *(("[service] old_secret_key_files", p) for p in config.service.old_secret_key_files),
        ("[smtp] tls_key_file", config.smtp.tls_key_file),
        ("[relay] password_file", config.relay.password_file),
        *(("[dkim] key_file", key.key_file) for key in config.dkim.signing_keys),
    ]
    return [(where, path) for where, path in files if path is not None]


def refusal(config: Config, problems: list[Problem]) -> str:
    """The message that lists ``problems``, one a line, Japanese first."""
    lines = [
        f"{config.path}: 本番では使えない設定があります / not a production config"
        f" ({len(problems)}):"
    ]
    lines += [f"  - {p}" for p in problems]
    return "\n".join(lines)
