"""Signed links: purposes don't mix, register links expire, keys rotate."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from itsdangerous import TimestampSigner, URLSafeTimedSerializer

from maild.clock import FakeClock
from maild.tokens import (
    CSRF,
    CSRF_MAX_AGE,
    MANAGE,
    REGISTER,
    UNSUBSCRIBE,
    LinkError,
    Links,
    load_or_create_key,
)


def test_key_is_created_once_and_private(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path / "state")
    assert load_or_create_key(tmp_path / "state") == key
    mode = stat.S_IMODE(os.stat(tmp_path / "state" / "secret.key").st_mode)
    assert mode == 0o600


def test_purposes_do_not_mix() -> None:
    links = Links(b"k" * 64)
    token = links.subscriber_link(MANAGE, 7, "abc")
    assert links.check_subscriber_link(MANAGE, token) == (7, "abc")
    with pytest.raises(LinkError) as error:
        links.check_subscriber_link(UNSUBSCRIBE, token)
    assert error.value.reason == "invalid"


def test_register_links_expire_after_24_hours() -> None:
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    token = links.subscriber_link(REGISTER, 1, "abc")
    clock.advance(hours=23, minutes=59)
    assert links.check_subscriber_link(REGISTER, token) == (1, "abc")
    clock.advance(minutes=2)
    with pytest.raises(LinkError) as error:
        links.check_subscriber_link(REGISTER, token)
    assert error.value.reason == "expired"


def test_manage_links_do_not_expire() -> None:
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    token = links.subscriber_link(MANAGE, 1, "abc")
    clock.advance(days=3650)
    assert links.check_subscriber_link(MANAGE, token) == (1, "abc")


def test_tampered_token_is_invalid() -> None:
    links = Links(b"k" * 64)
    token = links.subscriber_link(MANAGE, 1, "abc")
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    with pytest.raises(LinkError):
        links.check_subscriber_link(MANAGE, tampered)


def test_old_keys_still_verify_after_rotation() -> None:
    old = Links(b"o" * 64)
    token = old.subscriber_link(MANAGE, 3, "k")
    rotated = Links(b"n" * 64, old_keys=[b"o" * 64])
    assert rotated.check_subscriber_link(MANAGE, token) == (3, "k")
    with pytest.raises(LinkError):
        Links(b"n" * 64).check_subscriber_link(MANAGE, token)


def test_links_match_stock_itsdangerous_both_ways() -> None:
    # maild signs with shortcuts (key derived once, no zlib attempt); links already
    # mailed out, and links made by plain itsdangerous, must keep working.
    from itsdangerous import URLSafeSerializer, URLSafeTimedSerializer

    from maild.tokens import VerpTokens

    key = b"k" * 64
    links = Links(key)
    stock = URLSafeTimedSerializer([key], salt=f"maild.{MANAGE}")
    assert stock.loads(links.subscriber_link(MANAGE, 7, "abc")) == [7, "abc"]
    assert links.check_subscriber_link(MANAGE, stock.dumps([7, "abc"])) == (7, "abc")
    # A compressible payload, which stock itsdangerous sends zlib-compressed.
    compressed = stock.dumps([8, "0" * 200])
    assert compressed.startswith(".")
    assert links.check(MANAGE, compressed) == [8, "0" * 200]

    verp = VerpTokens(key)
    stock_verp = URLSafeSerializer([key], salt="maild.verp")
    assert verp.make(42) == stock_verp.dumps(42)
    assert verp.check(stock_verp.dumps(43)) == 43


def itsdangerous_serializer(salt: str, clock: FakeClock) -> URLSafeTimedSerializer:
    """itsdangerous as it comes (lazy SHA-1, compression tried), on the same clock."""

    class AtClock(TimestampSigner):
        def get_timestamp(self) -> int:
            return clock.timestamp()

    return URLSafeTimedSerializer([b"k" * 64], salt=salt, signer=AtClock)


# --- the forms' CSRF tokens ---------------------------------------------------------------


def test_csrf_tokens_are_itsdangerous_tokens_uncompressed_and_old_ones_still_load() -> None:
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    plain = itsdangerous_serializer("maild.csrf", clock)
    random_cookie = "q3Vd8_RmT0aZk-1YbNw2Xc5LhPj7Ue4Gs9Ko6If0Eiw"
    assert links.make(CSRF, random_cookie) == plain.dumps(random_cookie)  # the same bytes
    repetitive = "A" * 43  # a cookie the client chose: itsdangerous would compress it
    compressed = plain.dumps(repetitive)
    assert compressed.startswith(".")
    assert not links.make(CSRF, repetitive).startswith(".")
    for token in (compressed, links.make(CSRF, repetitive)):
        assert links.check(CSRF, token, CSRF_MAX_AGE) == repetitive


def test_links_are_the_same_bytes_as_itsdangerous_makes() -> None:
    """The HMAC goes through OpenSSL's constructor; the tokens are the ones mails carry."""
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    plain = itsdangerous_serializer("maild.manage", clock)
    assert links.subscriber_link(MANAGE, 7, "abc") == plain.dumps([7, "abc"])
    assert links.check_subscriber_link(MANAGE, plain.dumps([8, "def"])) == (8, "def")
