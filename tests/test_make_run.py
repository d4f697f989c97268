"""`make run`'s banner (issue 15 item 8): the swaks line it shows works against the
`make run` setup as it is, and the addresses it names are config/dev.toml's.

The banner is read from the Makefile as the shell would echo it; the daemon runs on
config/dev.toml itself (copied next to config/areas.toml, so its relative paths land in
the test's folder) with only the listening ports made free ones. The banner's command
runs with swaks when it is installed (stdin closed: a swaks that asks for a body fails
here as it hangs for a resident); otherwise the same SMTP dialogue goes by smtplib.
"""

from __future__ import annotations

import email
import email.policy
import shlex
import shutil
import smtplib
import subprocess
import time
import tomllib
from pathlib import Path

import pytest

from tests.daemon import DaemonProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent
DEV = ROOT / "config" / "dev.toml"


def banner() -> list[str]:
    """The lines `make run` prints before it starts the daemon."""
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    recipe = makefile.split("\nrun:", 1)[1].split("\n\n", 1)[0]
    lines = []
    for line in recipe.splitlines():
        command = line.strip()
        if command.startswith("@echo "):
            lines.append(" ".join(shlex.split(command[1:])[1:]))
    return lines


def swaks_argv() -> list[str]:
    [line] = [line for line in banner() if "swaks " in line]
    return shlex.split(line.split("swaks ", 1)[1])


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_the_banner_names_the_dev_configs_port_and_addresses() -> None:
    dev = tomllib.loads(DEV.read_text(encoding="utf-8"))
    argv = swaks_argv()
    assert option(argv, "--server") == dev["smtp"]["listen"]
    assert option(argv, "--to") == dev["smtp"]["registration_address"]
    assert f"SMTP on {dev['smtp']['listen']}" in banner()[0]
    assert f"web on {dev['service']['base_url']}/signup" in banner()[0]


def _dev_setup(folder: Path) -> Path:
    """config/dev.toml and its area file in ``folder/config``, listening on free ports."""
    config = folder / "config"
    config.mkdir()
    shutil.copy(ROOT / "config" / "areas.toml", config / "areas.toml")
    text = DEV.read_text(encoding="utf-8")
    dev = tomllib.loads(text)
    for listen in (dev["smtp"]["listen"], dev["web"]["listen"], dev["web"]["operators_listen"]):
        text = text.replace(f'listen = "{listen}"', f'listen = "{listen.rsplit(":", 1)[0]}:0"')
    (config / "dev.toml").write_text(text, encoding="utf-8")
    (folder / "var").mkdir()  # `make run` makes it
    return config / "dev.toml"


def _send_as_the_banner_says(argv: list[str], port: int) -> None:
    argv = list(argv)
    argv[argv.index("--server") + 1] = f"127.0.0.1:{port}"
    swaks = shutil.which("swaks")
    if swaks is not None:
        done = subprocess.run(
            [swaks, *argv], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "250 2.0.0 OK" in done.stdout, done.stdout
        return
    headers = "".join(f"{h}\r\n" for i, h in enumerate(argv) if i and argv[i - 1] == "--header")
    body = option(argv, "--body") if "--body" in argv else ""
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.sendmail(
            option(argv, "--from"), [option(argv, "--to")], f"{headers}\r\n{body}\r\n".encode()
        )


def test_the_banners_swaks_line_gets_an_answer(tmp_path: Path) -> None:
    config = _dev_setup(tmp_path)
    daemon = DaemonProcess(config, tmp_path / "daemon.log").start()
    try:
        argv = swaks_argv()
        _send_as_the_banner_says(argv, daemon.smtp_port)
        new = tmp_path / "var" / "maildir" / "new"
        deadline = time.monotonic() + 20
        while not (new.is_dir() and any(new.iterdir())) and time.monotonic() < deadline:
            time.sleep(0.1)
        mails = sorted(new.iterdir()) if new.is_dir() else []
        assert len(mails) == 1, daemon.log()
        answer = email.message_from_bytes(mails[0].read_bytes(), policy=email.policy.default)
        assert answer["To"] == option(argv, "--from")
        assert answer["Subject"].endswith("仮登録のお知らせ")
    finally:
        assert daemon.stop() == 0
