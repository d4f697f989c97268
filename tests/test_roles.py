"""Issue 15: roles the daemon enforces, tried by real Unix users against a real daemon.

The test creates an operator, an approver, an admin and a user with no role (useradd,
as root), gives the config and the state to root alone, starts the daemon, and runs
``maild`` as each of them (runuser): what each may do, what each is refused, and that
every refusal is in the audit log. Off root it is skipped, saying why; CI sets
``MAILD_REQUIRE_ROOT_USERS`` so that there it fails instead.
"""

from __future__ import annotations

import grp
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import select

from maild.alerts.spool_files import ensure_layout
from maild.cli.common import opened_services
from maild.common.config import load_config
from maild.store.models import AuditEntry
from tests.configs import write_config
from tests.daemon import DaemonProcess, maild_command
from tests.databases import ON_POSTGRESQL
from tests.test_alerts_flow import alert_text

# Roles do not depend on the database; and the site below serves a whole module while
# the PostgreSQL half drops each test's database when that test ends.
pytestmark = pytest.mark.skipif(ON_POSTGRESQL, reason="roles are tested in the SQLite half")

REQUIRE_ENV = "MAILD_REQUIRE_ROOT_USERS"
RUNUSER = shutil.which("runuser") or "runuser"
REPO = Path(__file__).resolve().parent.parent
# The test's environment's libraries: found by the system's own interpreter when the test's
# lives where other users may not go (pyenv under /root).
SITE_PACKAGES = [p for p in sys.path if p.endswith("site-packages")]


def _user_env(home: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "PYTHONPATH": os.pathsep.join([str(REPO), *SITE_PACKAGES]),
    }


def _python_for(user: str, home: Path) -> str | None:
    """The test's interpreter if ``user`` may run it, else the system's of the same version."""
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"):
        done = subprocess.run(
            [RUNUSER, "-u", user, "--", python, "-c", "import maild.cli.main"],
            cwd=home,
            env=_user_env(home),
            capture_output=True,
        )
        if done.returncode == 0:
            return python
    return None


def _cannot_make_users() -> str | None:
    if os.geteuid() != 0:
        return "creating Unix users needs root"
    for tool in ("useradd", "groupadd", "userdel", "groupdel", "runuser"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


@dataclass(frozen=True)
class Site:
    folder: Path
    config: Path
    operator: str
    approver: str
    admin: str
    nobody: str
    spool: Path
    maildir: Path
    python: str  # an interpreter the users may run, with maild and its libraries

    @property
    def socket(self) -> Path:
        return self.folder / "run" / "control.sock"

    def home(self, user: str) -> Path:
        return self.folder / "home" / user

    def maild(self, user: str, *args: str) -> subprocess.CompletedProcess[str]:
        """``maild ARGS`` run by ``user`` as themselves: no sudo, their own groups."""
        command = [self.python, "-m", "maild", "--config", str(self.config), *args]
        return subprocess.run(
            [RUNUSER, "-u", user, "--", *command],
            cwd=self.home(user),
            # The socket is not at the default /run/maild/control.sock here.
            env={**_user_env(self.home(user)), "MAILD_SOCKET": str(self.socket)},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def alert_file(self, user: str, name: str) -> str:
        path = self.home(user) / name
        path.write_text(alert_text("aoba", urgent=False), encoding="utf-8")
        shutil.chown(path, user)
        return name

    def audit(self) -> list[tuple[int | None, str, str, str | None]]:
        with opened_services(load_config(self.config)) as services:
            with services.db.transaction() as session:
                rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id))
                return [(r.alert_id, r.action, r.user, r.detail) for r in rows]


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    reason = _cannot_make_users()
    if reason is not None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {reason}")
        pytest.skip(f"{reason}; set {REQUIRE_ENV}=1 to make this a failure")
    tag = secrets.token_hex(3)
    groups = {role: f"md{role[:3]}{tag}" for role in ("operators", "approvers", "admins")}
    users = {role: f"md{role}{tag}" for role in ("op", "ap", "ad", "no")}
    made_groups: list[str] = []
    made_users: list[str] = []
    # Under /tmp, not pytest's 0700 folder: the users must reach their files and the socket.
    folder = Path(tempfile.mkdtemp(prefix="maild-roles-", dir="/tmp"))
    daemon: DaemonProcess | None = None
    try:
        os.chmod(folder, 0o711)
        for group in groups.values():
            subprocess.run(["groupadd", group], check=True)
            made_groups.append(group)
        member = {"op": "operators", "ap": "approvers", "ad": "admins"}
        for key, user in users.items():
            extra = ["-G", groups[member[key]]] if key in member else []
            subprocess.run(["useradd", "-M", "-U", *extra, user], check=True)
            made_users.append(user)
            home = folder / "home" / user
            home.mkdir(parents=True)
            shutil.chown(home, user, user)
            os.chmod(folder / "home", 0o711)
        python = _python_for(users["no"], folder / "home" / users["no"])
        if python is None:
            message = f"no {sys.version.split()[0][:4]} interpreter other users may run"
            if os.environ.get(REQUIRE_ENV):
                pytest.fail(message)
            pytest.skip(message)
        spool = folder / "spool"
        maildir = folder / "maildir"
        config = write_config(
            folder,
            service={"control_socket": str(folder / "run" / "control.sock")},
            roles={
                "operators_group": groups["operators"],
                "approvers_group": groups["approvers"],
                "admins_group": groups["admins"],
            },
            approval={"required": True, "test_recipients": ["tester@example.jp"]},
        )
        os.chmod(config, 0o600)  # as docs/operations.md: the service user's alone
        # The spool as docs/operations.md sets it up: operators write into incoming/.
        ensure_layout(spool)
        os.chmod(spool, 0o750)
        shutil.chown(spool, group=groups["operators"])
        os.chmod(spool / "incoming", 0o2770)
        shutil.chown(spool / "incoming", group=groups["operators"])
        # The state folder as tmpfiles.d makes it (a SQLite database would create it too).
        (folder / "state").mkdir(mode=0o700, exist_ok=True)
        maild_command(config, "db", "upgrade")
        os.chmod(folder / "state", 0o700)
        daemon = DaemonProcess(config, folder / "daemon.log").start()
        yield Site(
            folder,
            config,
            users["op"],
            users["ap"],
            users["ad"],
            users["no"],
            spool,
            maildir,
            python,
        )
    finally:
        if daemon is not None:
            daemon.stop()
        for user in made_users:
            subprocess.run(["userdel", user], check=False)
        for group in made_groups:
            subprocess.run(["groupdel", group], check=False)
        for user in made_users:  # the user's own group, when userdel left it
            if _group_exists(user):
                subprocess.run(["groupdel", user], check=False)
        shutil.rmtree(folder, ignore_errors=True)


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _alerts(site: Site, user: str) -> list[dict[str, object]]:
    done = site.maild(user, "alerts", "list", "--json")
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def _submitted(site: Site, user: str, name: str) -> dict[str, object]:
    """Submit a file as ``user`` and wait for the daemon to take it."""
    before = {a["id"] for a in _alerts(site, user)}
    done = site.maild(user, "submit", site.alert_file(user, name))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "受け付けました / placed in the spool" in done.stdout
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        new = [a for a in _alerts(site, user) if a["id"] not in before]
        if new:
            return new[0]
        time.sleep(0.2)
    raise AssertionError(f"{name} never became an alert")


def _refused(done: subprocess.CompletedProcess[str], role: str) -> None:
    assert done.returncode != 0
    assert "権限がありません" in done.stderr and f"needs the {role} role" in done.stderr, (
        done.stderr
    )


def test_the_operator_cannot_read_the_config_the_database_or_the_key(site: Site) -> None:
    state = load_config(site.config).service.state_dir
    secrets_ = [site.config, state / "secret.key"]
    if (state / "maild.db").exists():
        secrets_.append(state / "maild.db")
    for path in secrets_:
        done = subprocess.run(
            [RUNUSER, "-u", site.operator, "--", "cat", str(path)], capture_output=True
        )
        assert done.returncode != 0 and b"Permission denied" in done.stderr, path


def test_the_operator_submits_lists_and_cancels_their_own_request(site: Site) -> None:
    alert = _submitted(site, site.operator, "one.txt")
    shown = json.loads(
        site.maild(site.operator, "alerts", "show", str(alert["id"]), "--json").stdout
    )
    assert shown["requester"] == site.operator  # the file is theirs: the kernel says so
    assert shown["status"] == "pending_approval"
    done = site.maild(site.operator, "alerts", "cancel", str(alert["id"]))
    assert done.returncode == 0, done.stderr
    assert ("cancelled", site.operator) in [(a[1], a[2]) for a in site.audit()]


def test_the_operator_test_sends_to_the_test_recipients(site: Site) -> None:
    done = site.maild(site.operator, "submit", "--test", site.alert_file(site.operator, "t.txt"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "テスト送信しました" in done.stdout
    mails = [p for p in (site.maildir / "new").iterdir() if p.is_file()]
    assert any(b"tester@example.jp" in p.read_bytes() for p in mails)


def test_the_operator_is_refused_approval_export_and_removal(site: Site) -> None:
    alert = _submitted(site, site.operator, "two.txt")
    alert_id = str(alert["id"])
    _refused(site.maild(site.operator, "alerts", "approve", alert_id), "approver")
    _refused(site.maild(site.operator, "alerts", "send-now", alert_id), "approver")
    _refused(site.maild(site.operator, "subscribers", "export"), "admin")
    _refused(site.maild(site.operator, "subscribers", "remove", "a@example.jp"), "admin")
    _refused(site.maild(site.operator, "check-config"), "admin")
    refused = [(a[0], a[3]) for a in site.audit() if a[1] == "refused" and a[2] == site.operator]
    assert (alert["id"], f"alerts approve {alert_id}") in refused
    assert (None, "subscribers export") in refused
    assert (None, "subscribers remove") in refused  # the command, never the address
    assert len(refused) >= 5
    # The approver approves what the operator asked for.
    done = site.maild(site.approver, "alerts", "approve", alert_id)
    assert done.returncode == 0, done.stderr
    shown = json.loads(site.maild(site.approver, "alerts", "show", alert_id, "--json").stdout)
    assert shown["status"] == "scheduled" and shown["approved_by"] == site.approver
    # Once approved, stopping it is the approver's call.
    done = site.maild(site.operator, "alerts", "cancel", alert_id)
    assert done.returncode != 0 and "approver" in done.stderr
    assert site.maild(site.approver, "alerts", "cancel", alert_id).returncode == 0


def test_the_admin_sees_subscribers_but_not_alerts(site: Site) -> None:
    done = site.maild(site.admin, "subscribers", "stats", "--json")
    assert done.returncode == 0, done.stderr
    assert "by_status" in json.loads(done.stdout)
    assert site.maild(site.admin, "check-config").returncode == 0
    _refused(site.maild(site.admin, "alerts", "list"), "operator")


def test_a_user_without_a_role_gets_only_the_window_and_the_qr_code(site: Site) -> None:
    for args, role in (
        (("alerts", "list"), "operator"),
        (("submit", "--check", site.alert_file(site.nobody, "x.txt")), "operator"),
        (("alerts", "approve", "1"), "approver"),
        (("subscribers", "stats"), "admin"),
        (("subscribers", "export"), "admin"),
    ):
        _refused(site.maild(site.nobody, *args), role)
    assert ("refused", site.nobody, "subscribers stats") in [
        (a[1], a[2], a[3]) for a in site.audit()
    ]
    done = site.maild(site.nobody, "window", "--json")
    assert done.returncode == 0, done.stderr
    assert "open" in json.loads(done.stdout)
    done = site.maild(site.nobody, "qr", "--output", "poster.svg")
    assert done.returncode == 0, done.stderr
    assert (site.home(site.nobody) / "poster.svg").read_bytes().startswith(b"<?xml")


def test_the_service_users_commands_are_never_run_for_a_caller(site: Site) -> None:
    done = site.maild(site.admin, "--socket", str(site.socket), "nodes")
    assert done.returncode == 0, done.stderr  # an admin command through --socket
    done = site.maild(site.admin, "db", "upgrade")
    assert done.returncode != 0 and "permission denied" in done.stderr
