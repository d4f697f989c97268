"""Golden vectors: links made by maild 0.1.0 must keep working in every later maild.

``tests/golden/links-0.1.0.json`` holds literal tokens that 0.1.0 made with a fixed
(test) key and a fixed time. Residents have mails holding links in exactly this format:
whatever library or code makes and checks links later, these must verify to the same
payload, and be refused under another key or once expired. Never regenerate the file;
add a new one beside it when the format gains a version.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from maild.common.clock import FakeClock
from maild.residents.links import (
    CSRF,
    CSRF_MAX_AGE,
    MANAGE,
    REGISTER,
    REGISTER_MAX_AGE,
    UNSUBSCRIBE,
    LinkError,
    Links,
    VerpTokens,
)

GOLDEN = json.loads((Path(__file__).parent / "golden" / "links-0.1.0.json").read_text("utf-8"))
KEY = bytes.fromhex(GOLDEN["key_hex"])
OTHER_KEY = b"0" * 64
SIGNED_AT = dt.datetime.fromtimestamp(GOLDEN["signed_at_timestamp"], dt.UTC)
VECTORS: list[dict[str, Any]] = GOLDEN["vectors"]
SUBSCRIBER_LINKS = (REGISTER, MANAGE, UNSUBSCRIBE)
# How long each kind lives; None: for ever (manage and unsubscribe links, VERP addresses).
MAX_AGE: dict[str, dt.timedelta | None] = {
    REGISTER: REGISTER_MAX_AGE,
    MANAGE: None,
    UNSUBSCRIBE: None,
    CSRF: CSRF_MAX_AGE,
    "verp": None,
}


def vector_id(vector: dict[str, Any]) -> str:
    return f"{vector['kind']}-{vector['payload']}"


def check(key: bytes, vector: dict[str, Any], at: dt.datetime, old_keys: list[bytes]) -> Any:
    """The payload the current code reads from a golden token, as maild's callers ask."""
    kind, token = vector["kind"], vector["token"]
    if kind == "verp":
        return VerpTokens(key, old_keys).check(token)
    links = Links(key, old_keys, clock=FakeClock(at))
    if kind in SUBSCRIBER_LINKS:
        return list(links.check_subscriber_link(kind, token))
    return links.check(kind, token, MAX_AGE[kind])


def test_the_file_covers_every_kind_of_token() -> None:
    assert {vector["kind"] for vector in VECTORS} == set(MAX_AGE)
    assert SIGNED_AT == dt.datetime.fromisoformat(GOLDEN["signed_at"])


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_golden_tokens_verify_to_their_payload(vector: dict[str, Any]) -> None:
    max_age = MAX_AGE[vector["kind"]]
    # At the moment of signing, at the last second of their life, and years on for
    # the kinds that never expire.
    moments = [SIGNED_AT, SIGNED_AT + (max_age or dt.timedelta(days=3650))]
    for at in moments:
        assert check(KEY, vector, at, []) == vector["payload"]
        # After a key rotation the 0.1.0 key is an old key: its links still verify.
        assert check(OTHER_KEY, vector, at, [KEY]) == vector["payload"]


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_golden_tokens_are_refused_under_another_key(vector: dict[str, Any]) -> None:
    with pytest.raises(LinkError) as error:
        check(OTHER_KEY, vector, SIGNED_AT, [])
    assert error.value.reason == "invalid"


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS if MAX_AGE[v["kind"]] is not None], ids=vector_id
)
def test_golden_tokens_are_refused_once_expired(vector: dict[str, Any]) -> None:
    max_age = MAX_AGE[vector["kind"]]
    assert max_age is not None
    with pytest.raises(LinkError) as error:
        check(KEY, vector, SIGNED_AT + max_age + dt.timedelta(seconds=1), [])
    assert error.value.reason == "expired"


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_golden_tokens_are_refused_for_another_purpose(vector: dict[str, Any]) -> None:
    for kind in MAX_AGE:
        if kind != vector["kind"]:
            with pytest.raises(LinkError):
                check(KEY, {**vector, "kind": kind}, SIGNED_AT, [])


@pytest.mark.parametrize("vector", VECTORS, ids=vector_id)
def test_links_made_today_are_the_golden_bytes(vector: dict[str, Any]) -> None:
    """The same key, time and payload still make the same token: new links stay
    readable by 0.1.0 (a rollback), and the format has not drifted."""
    kind, payload = vector["kind"], vector["payload"]
    if kind == "verp":
        made = VerpTokens(KEY).make(payload)
    else:
        made = Links(KEY, clock=FakeClock(SIGNED_AT)).make(kind, payload)
    assert made == vector["token"]
