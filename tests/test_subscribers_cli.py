"""``maild subscribers import`` and ``export`` as operators run them (issue 15 item 6):
an import that skipped rows fails unless ``--partial``, an export to a file is 0600."""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.daemon import maild_command

GOOD = "address,areas,categories\ntaro@docomo.ne.jp,aoba,\n"
ONE_BAD = GOOD + "not-an-address,aoba,\nhanako@ezweb.ne.jp,izumi,community\n"


@pytest.fixture
def config(config_path: Callable[..., Path]) -> Path:
    path = config_path()
    maild_command(path, "db", "upgrade")
    return path


def test_an_import_that_skipped_rows_fails_unless_partial(config: Path, tmp_path: Path) -> None:
    csv = tmp_path / "old.csv"
    csv.write_text(ONE_BAD, encoding="utf-8")
    done = maild_command(config, "subscribers", "import", str(csv), check=False)
    assert done.returncode == 1
    assert "2 imported, 1 skipped" in done.stdout
    assert "line 3" in done.stderr and "--partial" in done.stderr
    assert "1 行をスキップしました" in done.stderr and "1 row was skipped" in done.stderr
    # The rows that were good are in; again with --partial, all are "already registered"
    # skips, accepted.
    again = maild_command(config, "subscribers", "import", "--partial", str(csv), check=False)
    assert again.returncode == 0 and "0 imported, 3 skipped" in again.stdout


def test_an_import_without_skips_succeeds(config: Path, tmp_path: Path) -> None:
    csv = tmp_path / "old.csv"
    csv.write_text(GOOD, encoding="utf-8")
    done = maild_command(config, "subscribers", "import", str(csv))
    assert "1 imported, 0 skipped" in done.stdout and "--partial" not in done.stderr


def test_export_to_a_file_is_0600_and_names_every_category(config: Path, tmp_path: Path) -> None:
    csv = tmp_path / "old.csv"
    csv.write_text(GOOD, encoding="utf-8")
    maild_command(config, "subscribers", "import", str(csv))
    out = tmp_path / "export.csv"
    out.write_text("old, and readable by all\n", encoding="utf-8")
    out.chmod(0o644)
    done = maild_command(config, "subscribers", "export", "--output", str(out))
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert done.stdout == ""  # nothing on stdout: the file has it
    assert "1 件出力しました / 1 subscriber exported" in done.stderr
    assert out.read_text(encoding="utf-8").splitlines() == [
        "address,areas,categories,status,hours",
        "taro@docomo.ne.jp,aoba,child-women street-crime frequent-crime community other,active,",
    ]
    fresh = tmp_path / "fresh.csv"
    maild_command(config, "subscribers", "export", "--output", str(fresh))
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o600


def test_stats_speak_japanese_first_with_counters_and_plurals(config: Path, tmp_path: Path) -> None:
    csv = tmp_path / "old.csv"
    csv.write_text(GOOD + "hanako@ezweb.ne.jp,aoba,community\n", encoding="utf-8")
    maild_command(config, "subscribers", "import", str(csv))
    lines = maild_command(config, "subscribers", "stats").stdout.splitlines()
    assert lines[0] == (
        "登録者 / subscribers: 仮登録 0 人、登録済み 2 人、一時停止 0 人"
        " / 0 pending, 2 active, 0 suspended"
    )
    assert lines[1].startswith("分類ごと（登録済みで受け取る人数） / by category")
    assert "  その他 (other): 1 人 / 1 subscriber" in lines
    assert "  地域の自主防犯活動に役立つ情報 (community): 2 人 / 2 subscribers" in lines
    assert "  青葉区 (aoba): 2 人 / 2 subscribers" in lines
    assert "  県内全域 (all): 0 人 / 0 subscribers" in lines
    assert lines[-1] == (
        "受信時間帯（登録済み） / receiving hours (active subscribers): いつでも 2 人、"
        "時間帯あり 0 人（うち緊急の情報も待つ 0 人） / any time 2, own hours 0"
        " (urgent alerts wait too: 0)"
    )
