"""Signed links: purposes don't mix, register links expire, keys rotate."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
from itsdangerous import Signer, TimestampSigner, URLSafeSerializer, URLSafeTimedSerializer

from maild.common.clock import FakeClock
from maild.residents.links import (
    CSRF,
    CSRF_MAX_AGE,
    MANAGE,
    REGISTER,
    UNSUBSCRIBE,
    LinkError,
    Links,
    VerpTokens,
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


def stock(salt: str, clock: FakeClock, key: bytes = b"k" * 64) -> URLSafeTimedSerializer:
    """itsdangerous as it comes (its defaults, compression tried), on the same clock."""

    class AtClock(TimestampSigner):
        def get_timestamp(self) -> int:
            return clock.timestamp()

    return URLSafeTimedSerializer([key], salt=salt, signer=AtClock)


def test_links_and_plain_itsdangerous_tokens_read_each_other() -> None:
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    plain = stock(f"maild.{MANAGE}", clock)
    assert plain.loads(links.subscriber_link(MANAGE, 7, "abc")) == [7, "abc"]
    assert links.subscriber_link(MANAGE, 7, "abc") == plain.dumps([7, "abc"])
    assert links.check_subscriber_link(MANAGE, plain.dumps([8, "def"])) == (8, "def")
    # A compressible payload, which stock itsdangerous sends zlib-compressed.
    compressed = plain.dumps([8, "0" * 200])
    assert compressed.startswith(".")
    assert links.check(MANAGE, compressed) == [8, "0" * 200]

    verp = VerpTokens(b"k" * 64)
    stock_verp = URLSafeSerializer([b"k" * 64], salt="maild.verp")
    assert verp.make(42) == stock_verp.dumps(42)
    assert verp.check(stock_verp.dumps(43)) == 43


def test_the_signer_made_once_signs_like_stock_as_time_and_payloads_change() -> None:
    """SignerOnce, DerivedOnceSigner and KeyedHMAC keep what itsdangerous would redo for
    every token; the tokens must stay the stock bytes for every payload and moment."""
    clock = FakeClock()
    links = Links(b"k" * 64, old_keys=[b"o" * 64], clock=clock)
    plain = stock(f"maild.{MANAGE}", clock)
    verp = VerpTokens(b"k" * 64)
    stock_verp = URLSafeSerializer([b"k" * 64], salt="maild.verp")
    for subscriber_id in range(1, 40):
        clock.advance(seconds=subscriber_id * 97)
        key = hashlib.sha256(bytes([subscriber_id])).hexdigest()[:16]  # as random as link keys
        assert links.subscriber_link(MANAGE, subscriber_id, key) == plain.dumps(
            [subscriber_id, key]
        )
        assert verp.make(subscriber_id) == stock_verp.dumps(subscriber_id)
        manage, unsubscribe = links.mail_links(subscriber_id, key)
        assert manage == plain.dumps([subscriber_id, key])
        assert unsubscribe == stock(f"maild.{UNSUBSCRIBE}", clock).dumps([subscriber_id, key])
    # Text the JSON encoder escapes differently with ensure_ascii on and off.
    clock.advance(seconds=1)
    assert links.make(CSRF, ["é\n\u2028", 1.5]) == stock("maild.csrf", clock).dumps(
        ["é\n\u2028", 1.5]
    )
    old = stock(f"maild.{MANAGE}", clock, key=b"o" * 64).dumps([5, "x"])
    assert links.check_subscriber_link(MANAGE, old) == (5, "x")


def test_tokens_are_never_compressed_and_compressed_ones_still_load() -> None:
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    plain = stock("maild.csrf", clock)
    repetitive = "A" * 43  # a cookie the client chose: itsdangerous would compress it
    compressed = plain.dumps(repetitive)
    assert compressed.startswith(".")
    ours = links.make(CSRF, repetitive)
    assert not ours.startswith(".")
    for token in (compressed, ours):
        assert links.check(CSRF, token, CSRF_MAX_AGE) == repetitive
    assert not VerpTokens(b"k" * 64).make(10**60).startswith(".")


def test_csrf_tokens_expire_after_12_hours() -> None:
    clock = FakeClock()
    links = Links(b"k" * 64, clock=clock)
    token = links.make(CSRF, "cookie")
    clock.advance(hours=12)
    assert links.check(CSRF, token, CSRF_MAX_AGE) == "cookie"
    clock.advance(seconds=1)
    with pytest.raises(LinkError) as error:
        links.check(CSRF, token, CSRF_MAX_AGE)
    assert error.value.reason == "expired"


def test_a_token_signed_in_the_future_is_expired() -> None:
    clock = FakeClock()
    token = Links(b"k" * 64, clock=clock).subscriber_link(REGISTER, 1, "abc")
    clock.advance(seconds=-1)
    with pytest.raises(LinkError) as error:
        Links(b"k" * 64, clock=clock).check_subscriber_link(REGISTER, token)
    assert error.value.reason == "expired"


def test_payloads_that_are_not_subscriber_links_are_invalid() -> None:
    links = Links(b"k" * 64)
    for payload in ([1], [1, 2], ["1", "abc"], [1, "abc", 3], {"id": 1}, "x", None):
        with pytest.raises(LinkError) as error:
            links.check_subscriber_link(MANAGE, links.make(MANAGE, payload))
        assert error.value.reason == "invalid"
    verp = VerpTokens(b"k" * 64)
    with pytest.raises(LinkError):
        verp.check(URLSafeSerializer([b"k" * 64], salt="maild.verp").dumps("7"))


@pytest.mark.parametrize("token", ["", ".", "..", "a.b.c", "日本.語.だ", "W10.W10.W10.W10"])
def test_garbage_is_invalid(token: str) -> None:
    with pytest.raises(LinkError) as error:
        Links(b"k" * 64).check(MANAGE, token)
    assert error.value.reason == "invalid"
    with pytest.raises(LinkError):
        VerpTokens(b"k" * 64).check(token)


def test_signer_settings_do_not_follow_the_librarys_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """HMAC-SHA1 and django-concat are given explicitly: a later itsdangerous with other
    defaults must not change the tokens that residents hold."""
    clock = FakeClock()
    before = Links(b"k" * 64, clock=clock).subscriber_link(MANAGE, 7, "abc")
    verp_before = VerpTokens(b"k" * 64).make(7)
    monkeypatch.setattr(Signer, "default_digest_method", staticmethod(hashlib.sha256))
    monkeypatch.setattr(Signer, "default_key_derivation", "hmac")
    assert stock(f"maild.{MANAGE}", clock).dumps([7, "abc"]) != before  # the patch bites
    links = Links(b"k" * 64, clock=clock)
    assert links.subscriber_link(MANAGE, 7, "abc") == before
    assert links.check_subscriber_link(MANAGE, before) == (7, "abc")
    assert VerpTokens(b"k" * 64).make(7) == verp_before


def test_a_verp_token_with_bytes_outside_its_alphabet_is_invalid() -> None:
    verp = VerpTokens(b"k" * 32)
    token = verp.make(42)
    assert verp.check(token) == 42
    for extra in ("é", "\x00", "=", "~"):
        with pytest.raises(LinkError, match="invalid"):
            verp.check(token + extra)
