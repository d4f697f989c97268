"""Signed links: purposes don't mix, register links expire, keys rotate."""

from __future__ import annotations

import datetime as dt
import json
import os
import stat
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from itsdangerous import (
    BadSignature,
    SignatureExpired,
    Signer,
    TimestampSigner,
    URLSafeSerializer,
    URLSafeTimedSerializer,
)
from itsdangerous.encoding import base64_encode, int_to_bytes

from maild.common.clock import FakeClock
from maild.residents.links import (
    CSRF,
    CSRF_MAX_AGE,
    MANAGE,
    PURPOSES,
    REGISTER,
    REGISTER_MAX_AGE,
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


def test_links_match_stock_itsdangerous_both_ways() -> None:
    # maild signs with shortcuts (key derived once, no zlib attempt); links already
    # mailed out, and links made by plain itsdangerous, must keep working.
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


# --- any token, against stock itsdangerous ------------------------------------------------
#
# Whatever the token (ours, an old key's, tampered, expired, compressed, oddly spelled or
# validly signed nonsense), Links and VerpTokens must give what stock itsdangerous gives:
# the same payload or the same error. And they must make the same bytes.

OLD_KEY = b"o" * 64
NEW_KEY = b"n" * 64
MAX_AGES = {REGISTER: REGISTER_MAX_AGE, MANAGE: None, UNSUBSCRIBE: None, CSRF: CSRF_MAX_AGE}
PAYLOADS: list[Any] = [
    [7, "0123456789abcdef"],
    [2**53, ""],
    [-3, "東京都千代田区霞が関"],
    "q3Vd8_RmT0aZk-1YbNw2Xc5LhPj7Ue4Gs9Ko6If0Eiw",
    'a "quoted" \\ \u2028 \x00 line',
    "😀",
    42,
    True,
    1.5,
    None,
    {"id": 1},
    [],
    "",
    [[[1]]],
    [8, "0" * 200],  # stock itsdangerous compresses this one
]


def stock(keys: list[bytes], salt: str, clock: FakeClock) -> URLSafeTimedSerializer:
    """Plain itsdangerous (its own JSON, SHA-1 and zlib attempt) on the same clock."""

    class AtClock(TimestampSigner):
        def get_timestamp(self) -> int:
            return clock.timestamp()

    return URLSafeTimedSerializer(keys, salt=salt, signer=AtClock)


def stock_outcome(
    serializer: URLSafeSerializer, token: str, max_age: dt.timedelta | None
) -> tuple[str, str]:
    try:
        if isinstance(serializer, URLSafeTimedSerializer):
            seconds = None if max_age is None else int(max_age.total_seconds())
            value = serializer.loads(token, max_age=seconds)
        else:
            value = serializer.loads(token)
    except SignatureExpired:
        return "expired", ""
    except BadSignature:
        return "invalid", ""
    except Exception as error:  # a validly signed token itsdangerous cannot read
        return "error", type(error).__name__
    return "ok", json.dumps(value)  # json tells True from 1 and 1.0, and a tuple is a list


def maild_outcome(check: Callable[..., Any], *args: Any) -> tuple[str, str]:
    try:
        value = check(*args)
    except LinkError as error:
        return error.reason, ""
    except Exception as error:
        return "error", type(error).__name__
    return "ok", json.dumps(value)


def b64(data: bytes) -> bytes:
    return base64_encode(data)


def crafted_payloads() -> list[bytes]:
    """Payload parts for validly signed tokens that maild never makes."""
    plain = b64(b'[1,"a"]')
    return [
        plain,
        plain + b"==",  # padded
        plain[:-1] + b"B",  # other trailing bits, the same bytes to a lenient decoder
        b"",
        b"!!!",
        b64(b"[1,"),
        b64(b"\xff\xfe"),  # not UTF-8
        b64(b"\xef\xbb\xbf[1]"),  # a UTF-8 byte order mark
        b64("[1]".encode("utf-16-le")),  # JSON, but not in UTF-8
        b64(b"[" * 5000 + b"]" * 5000),  # deeper than json's recursion limit
        b"W10.W10",  # a dot inside
        b"." + b64(zlib.compress(b'[9,"zip"]')),
        b"." + b64(b"not zlib"),
        b64(b'[1,"+/"]').replace(b"_", b"/").replace(b"-", b"+"),
        b64('"é"'.encode()),
    ]


def crafted_stamps(now: int) -> list[bytes]:
    """Timestamp parts for validly signed tokens: edge values and odd spellings."""
    stamps = [b64(int_to_bytes(t)) for t in (0, 1, now, 2**40, 2**64 - 1)]
    stamps += [
        b"",
        b64(b"\x01" * 9),  # more than 64 bits
        b64(int_to_bytes(253402300799)),  # 9999-12-31 23:59:59, the last valid datetime
        b64(int_to_bytes(253402300800)),  # one second later: itsdangerous fails on it
        b64(int_to_bytes(now)) + b"==",
        b"!" + b64(int_to_bytes(now)),
        b64(b"\x00\x00" + int_to_bytes(now)),  # leading zero bytes
        b64(b"\x00" * 5 + int_to_bytes(now)),  # a small value in more than 8 bytes
    ]
    return stamps


def mutations(token: str) -> list[str]:
    """Tampered, truncated and re-spelled copies of a token."""
    swapped = {"A": "B", "-": "+", "_": "/"}
    out = [token[:cut] for cut in range(0, len(token), 4)]
    out += [token[:i] + swapped.get(token[i], "A") + token[i + 1 :] for i in range(len(token))]
    out += [
        token + ".",
        "." + token,
        token + "x",
        token + "=",
        token + "\n",
        " " + token,
        token[:-1] + "é",
        token.replace(".", "..", 1),
        token.replace(".", "", 1),
        token.replace(".", "!.", 1),
        token.replace("-", "+").replace("_", "/"),
        token.upper(),
        ".".join(reversed(token.split("."))),
    ]
    return out


def timed_corpus(links: Links, purpose: str, clock: FakeClock) -> list[str]:
    salt = f"maild.{purpose}"
    now = clock.timestamp()
    max_age = MAX_AGES[purpose] or REGISTER_MAX_AGE
    made: list[str] = []
    # Made at the edges of max_age: exactly at it, a second over, a second and an hour ahead.
    for seconds_ago in (0, 1, int(max_age.total_seconds()), int(max_age.total_seconds()) + 1, -1):
        clock.set(dt.datetime.fromtimestamp(now - seconds_ago, dt.UTC))
        made += [links.make(purpose, payload) for payload in PAYLOADS]
        made += [stock([OLD_KEY], salt, clock).dumps(payload) for payload in PAYLOADS[:3]]
        made.append(stock([b"s" * 64], salt, clock).dumps(PAYLOADS[0]))  # an unknown key
    clock.set(dt.datetime.fromtimestamp(now, dt.UTC))
    made.append(stock([NEW_KEY], "maild.other", clock).dumps(PAYLOADS[0]))
    made += [stock([OLD_KEY, NEW_KEY], salt, clock).dumps(payload) for payload in PAYLOADS]
    signer = Signer(NEW_KEY, salt=salt)  # signs anything
    made += [
        signer.sign(payload + b"." + stamp).decode("ascii")
        for payload in crafted_payloads()
        for stamp in crafted_stamps(now - 5)
    ]
    made.append(signer.sign(b64(b"[1]")).decode("ascii"))  # no timestamp
    short = [token for token in made if len(token) < 300]
    tokens = made + [m for token in short[::7] for m in mutations(token)]
    tokens += ["", ".", "..", "...", "a.b.c", "日本.語.だ"]
    return tokens


@pytest.mark.parametrize("purpose", PURPOSES)
def test_links_check_gives_what_stock_itsdangerous_gives(purpose: str) -> None:
    clock = FakeClock()
    links = Links(NEW_KEY, old_keys=[OLD_KEY], clock=clock)
    tokens = timed_corpus(links, purpose, clock)
    plain = stock([OLD_KEY, NEW_KEY], f"maild.{purpose}", clock)
    outcomes: dict[tuple[str, str], int] = {}
    for max_age in {None, MAX_AGES[purpose], REGISTER_MAX_AGE}:
        for token in tokens:
            expected = stock_outcome(plain, token, max_age)
            assert maild_outcome(links.check, purpose, token, max_age) == expected, (
                token,
                max_age,
            )
            outcomes[expected] = outcomes.get(expected, 0) + 1
    # The corpus reaches every kind of outcome, including the failures of validly
    # signed tokens (a bad payload, a timestamp past year 9999 or past 64-bit time_t).
    kinds = {kind if kind != "error" else detail for kind, detail in outcomes}
    assert kinds == {"ok", "invalid", "expired", "BadPayload", "ValueError", "OverflowError"}


@pytest.mark.parametrize("purpose", PURPOSES)
def test_links_check_subscriber_link_gives_what_stock_itsdangerous_gives(purpose: str) -> None:
    clock = FakeClock()
    links = Links(NEW_KEY, old_keys=[OLD_KEY], clock=clock)
    plain = stock([OLD_KEY, NEW_KEY], f"maild.{purpose}", clock)
    max_age = REGISTER_MAX_AGE if purpose == REGISTER else None  # CSRF tokens aren't links
    for token in timed_corpus(links, purpose, clock):
        kind, value = stock_outcome(plain, token, max_age)
        payload = json.loads(value) if kind == "ok" else None
        if kind == "ok" and not (
            isinstance(payload, list)
            and len(payload) == 2
            and isinstance(payload[0], int)
            and isinstance(payload[1], str)
        ):
            kind, value = "invalid", ""
        got = maild_outcome(links.check_subscriber_link, purpose, token)
        assert got == (kind, value), token


def test_our_tokens_take_the_fast_path() -> None:
    """Not a behaviour, but the point of it: the usual token skips itsdangerous."""
    from maild.residents.links import _MISS

    clock = FakeClock()
    links = Links(NEW_KEY, old_keys=[OLD_KEY], clock=clock)
    old = Links(OLD_KEY, clock=clock)
    for purpose in PURPOSES:
        fast = links._tokens[purpose]
        for payload in PAYLOADS:
            for token in (links.make(purpose, payload), old.make(purpose, payload)):
                assert fast._verified(token, 3600) == payload
        compressed = stock([NEW_KEY], f"maild.{purpose}", clock).dumps(PAYLOADS[-1])
        assert fast._verified(compressed, 3600) is _MISS


@pytest.mark.parametrize(
    "start",
    [
        dt.datetime(1970, 1, 1, tzinfo=dt.UTC),  # timestamp 0: an empty timestamp part
        dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC),
        dt.datetime(2026, 12, 1, 9, 30, 17, tzinfo=dt.UTC),
        dt.datetime(2106, 2, 7, 6, 28, 16, tzinfo=dt.UTC),  # 2**32: five bytes
    ],
)
def test_links_make_gives_the_bytes_stock_itsdangerous_gives(start: dt.datetime) -> None:
    clock = FakeClock(start)
    links = Links(NEW_KEY, old_keys=[OLD_KEY], clock=clock)
    for purpose in PURPOSES:
        plain = stock([OLD_KEY, NEW_KEY], f"maild.{purpose}", clock)
        for payload in PAYLOADS:
            token = links.make(purpose, payload)
            # Stock signing of the uncompressed payload, which is what maild always sent.
            unzipped = plain.make_signer().sign(b64(_stock_json(payload)))
            assert token == unzipped.decode("ascii")
            if not plain.dumps(payload).startswith("."):
                assert token == plain.dumps(payload)


def _stock_json(payload: Any) -> bytes:
    return URLSafeTimedSerializer.default_serializer.dumps(payload).encode("utf-8")


def verp_corpus(verp: VerpTokens) -> list[str]:
    salt = "maild.verp"
    made = [verp.make(n) for n in (0, 1, 42, 2**31, 2**63)]
    made += [URLSafeSerializer([OLD_KEY], salt=salt).dumps(p) for p in PAYLOADS]
    made += [URLSafeSerializer([OLD_KEY, NEW_KEY], salt=salt).dumps(p) for p in PAYLOADS]
    made.append(URLSafeSerializer([b"s" * 64], salt=salt).dumps(7))
    made.append(URLSafeSerializer([NEW_KEY], salt="maild.manage").dumps(7))
    made += [Signer(NEW_KEY, salt=salt).sign(p).decode("ascii") for p in crafted_payloads()]
    return made + [m for token in made[:5] for m in mutations(token)]


def test_verp_tokens_give_what_stock_itsdangerous_gives() -> None:
    verp = VerpTokens(NEW_KEY, old_keys=[OLD_KEY])
    plain = URLSafeSerializer([OLD_KEY, NEW_KEY], salt="maild.verp")
    outcomes = set()
    for token in verp_corpus(verp):
        kind, value = stock_outcome(plain, token, None)
        if kind == "ok" and not isinstance(json.loads(value), int):
            kind, value = "invalid", ""
        outcomes.add(kind)
        assert maild_outcome(verp.check, token) == (kind, value), token
    assert outcomes == {"ok", "invalid", "error"}
    for n in (0, 1, 42, 2**31, 2**63):
        assert verp.make(n) == plain.dumps(n)
