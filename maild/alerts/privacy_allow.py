"""The words the privacy check never flags (:class:`maild.alerts.privacy.AllowList`):
the service's own and the operator's file of extra ones (``[alerts] privacy_allow``).

Read when the daemon starts and again on SIGHUP (``Alerts.reconfigure``); a file that
cannot be read refuses the reload (:mod:`maild.service.reload`), so a broken edit never
leaves the check without the words it had.
"""

from __future__ import annotations

from pathlib import Path

from maild.alerts.privacy import AllowList
from maild.common.config import Config, ConfigError
from maild.residents.areas import AreaMap

# Police names every alert signs with (仙台中央警察署, 宮城県警察本部生活安全企画課).
_FIXED = ("警察署", "警察本部", "県警察", "生活安全企画課", "交通企画課", "県民安全対策課")
_SUFFIXES = ("警察署", "署", "ブロック", "市", "区", "町", "村")


class PrivacyAllowError(ConfigError):
    """The file of allowed words cannot be read: refused like a broken config."""


def area_words(areas: AreaMap) -> set[str]:
    """Every area's Japanese name, also without its 市/区/町/署 and with ヶ spelt ケ."""
    words: set[str] = set()
    for area in areas.areas():
        name = area.name_ja
        forms = {name}
        for suffix in _SUFFIXES:
            if name.endswith(suffix) and len(name) - len(suffix) >= 2:
                forms.add(name[: -len(suffix)])
        if area.kind == "station" and name.endswith("警察署"):
            forms.add(name[: -len("警察署")] + "署")
        for form in list(forms):
            forms.update({form.replace("ヶ", "ケ"), form.replace("ヶ", "ケ")})
        words |= forms
    return words


def read_allow_file(path: Path) -> list[str]:
    """One word or name a line; blank lines and lines starting with # are left out."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise PrivacyAllowError(
            f"{path}: 許可語のファイルを読めません / cannot read the file of allowed words: {e}"
        ) from None
    return [s for line in text.splitlines() if (s := line.strip()) and not s.startswith("#")]


def build_allow_list(config: Config, areas: AreaMap) -> AllowList:
    words = area_words(areas) | set(_FIXED)
    words |= {config.service.name, config.mail.from_name}
    if config.alerts.privacy_allow is not None:
        words |= set(read_allow_file(config.alerts.privacy_allow))
    return AllowList(words)
