"""One secret key for every node: a link made on one node must open on the others.

Each node reads ``state_dir/secret.key``; the nodes sharing a database must hold the same
file. The database keeps the key's fingerprint (setting :data:`FINGERPRINT_SETTING`),
written by the first node that starts, and a node whose key does not match refuses to
start (``maild serve``, ``maild check-config``) instead of handing out links the other
nodes reject.

The fingerprint is an HMAC of a fixed label under the key: it tells keys apart and says
nothing of the key, and unlike a plain hash of the key it is a value no other part of
maild computes. Only the current key has one; ``old_secret_key_files`` still verify links.

Rotation (docs/operations.md): a node whose current key is new but which lists the key
of the fingerprint among its old keys has been rotated, and the database takes its
fingerprint; every node still on the old key is then stale and refuses to start until
it gets the new key file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

from maild.common.config import Config
from maild.residents.links import KEY_FILE_NAME, load_or_create_key, read_key
from maild.store import settings
from maild.store.db import Database

log = logging.getLogger("maild.residents.keyring")

FINGERPRINT_SETTING = "secret_key_fingerprint"
_LABEL = b"maild secret key fingerprint v1"

# How the node's key stands against the database's fingerprint (check-config says it).
MATCHES = "matches the database's"
UNRECORDED = "not recorded yet: the first node to start records its own"
ROTATED = "rotated: the database takes this node's new key at start"
STALE = "stale"


class KeyMismatch(Exception):
    """The node's key is not the database's; the message says what to do (Japanese / English)."""


def fingerprint(key: bytes) -> str:
    return hmac.new(key, _LABEL, hashlib.sha256).hexdigest()[:32]


def key_path(config: Config) -> Path:
    return config.service.state_dir / KEY_FILE_NAME


def current_key(db: Database, config: Config) -> bytes:
    """The node's current key, checked against the database's fingerprint and recorded
    there if no node has yet; the key file is created at the first start of the first
    node only. Raises :class:`KeyMismatch`."""
    path = key_path(config)
    with db.engine.begin() as connection:
        stored = settings.value(connection, FINGERPRINT_SETTING)
    if stored is not None and not path.exists() and not _among_old_keys(config, stored):
        raise _missing(path)
    key = load_or_create_key(config.service.state_dir)  # new: first node, or a rotation
    mine = fingerprint(key)
    with db.engine.begin() as connection:
        stored = settings.first_value(connection, FINGERPRINT_SETTING, mine)
        state = _state(config, stored, mine)
        if state == ROTATED and settings.replace(connection, FINGERPRINT_SETTING, stored, mine):
            log.warning(
                "secret key rotated: the database now takes this node's key; copy %s to"
                " every other node",
                path,
            )
            state = MATCHES
    if state != MATCHES:
        raise _stale(path)
    return key


def check_key(db: Database, config: Config) -> str:
    """``check-config``'s look at the key: how it stands (:data:`MATCHES`, …); creates and
    records nothing. Raises :class:`KeyMismatch` for a key the daemon would refuse."""
    path = key_path(config)
    with db.engine.begin() as connection:
        stored = settings.value(connection, FINGERPRINT_SETTING)
    if stored is None:
        return UNRECORDED
    if not path.exists():
        if _among_old_keys(config, stored):
            return ROTATED
        raise _missing(path)
    state = _state(config, stored, fingerprint(read_key(path)))
    if state == STALE:
        raise _stale(path)
    return state


def _state(config: Config, stored: str, mine: str) -> str:
    if stored == mine:
        return MATCHES
    return ROTATED if _among_old_keys(config, stored) else STALE


def _among_old_keys(config: Config, stored: str) -> bool:
    return any(fingerprint(read_key(p)) == stored for p in config.service.old_secret_key_files)


def _missing(path: Path) -> KeyMismatch:
    return KeyMismatch(
        f"秘密鍵ファイル {path} がありません。ほかのノードからコピーしてください / the secret"
        f" key file {path} is missing, and the nodes on this database share one: copy it"
        " from another node (mode 0600, owned by the service user)"
    )


def _stale(path: Path) -> KeyMismatch:
    return KeyMismatch(
        f"秘密鍵 {path} がデータベースの鍵と一致しません。ほかのノードの secret.key を"
        f"コピーしてください / the secret key {path} is not the one the other nodes on this"
        " database use: copy secret.key from a node that runs (after a key rotation: the"
        " new key, with the old one in [service] old_secret_key_files)"
    )
