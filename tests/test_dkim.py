"""maild.mail.dkim: signatures that dkimpy verifies against the published record, offline."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import re
import zoneinfo
from collections.abc import Callable
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import dkim  # type: ignore[import-untyped]
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from maild.common.config import ConfigError, DkimConfig, RelayConfig
from maild.delivery.alertmail import AlertContent, AlertTemplate, Personal
from maild.mail import dkim as maild_dkim
from maild.mail.compose import compose
from maild.mail.dkim import DkimSigner, load_private_key, publish_record, signing
from maild.mail.relay import open_relay
from tests.configs import make_config, write_config
from tests.daemon import maild_command
from tests.smtpsink import SmtpSink

TOKYO = zoneinfo.ZoneInfo("Asia/Tokyo")
DATE = dt.datetime(2026, 12, 1, 9, 30, tzinfo=TOKYO)
DOMAIN = "mail.example.jp"
SELECTOR = "maild2026"
UNSUBSCRIBE = "https://mail.example.jp/unsubscribe/SUBSCRIBER-TOKEN"


def write_key(path: Path, key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    return path


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("dkim-keys")
    return {
        "rsa": write_key(
            folder / "rsa.pem", rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ),
        "ed25519": write_key(folder / "ed25519.pem", ed25519.Ed25519PrivateKey.generate()),
    }


def signer_for(key_file: Path) -> DkimSigner:
    signer = DkimSigner.from_config(DkimConfig(domain=DOMAIN, selector=SELECTOR, key_file=key_file))
    assert signer is not None
    return signer


def dns_for(key_file: Path, asked: list[bytes] | None = None) -> Callable[..., bytes | None]:
    """A dnsfunc for dkimpy that answers only our selector, with publish_record's text."""
    record = publish_record(key_file).encode("ascii")

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        if asked is not None:
            asked.append(name)
        return record if name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode() else None

    return dnsfunc


def verifies(data: bytes, key_file: Path) -> bool:
    return bool(dkim.verify(data, dnsfunc=dns_for(key_file)))


def tags(data: bytes) -> dict[str, str]:
    """The tag=value pairs of the first DKIM-Signature, white space removed."""
    match = re.match(rb"DKIM-Signature:(.*?)\r\n(?![ \t])", data, flags=re.DOTALL)
    assert match, data[:200]
    value = re.sub(r"\s+", "", match.group(1).decode("ascii"))
    return dict(part.split("=", 1) for part in value.split(";") if part)


def list_mail() -> bytes:
    return compose(
        from_address="info@mail.example.jp",
        from_name="みやぎSecurityメール",
        to="taro..yamada.@docomo.ne.jp",
        subject="【みやぎSecurityメール】不審者（声かけ）事案の発生【青葉区】",
        body="12月1日午後4時ころ、青葉区内の路上で声かけ事案がありました。\n",
        date=DATE,
        message_id_domain=DOMAIN,
        auto_submitted="auto-generated",
        extra_headers=[
            ("List-Unsubscribe", f"<{UNSUBSCRIBE}>"),
            ("List-Unsubscribe-Post", "List-Unsubscribe=One-Click"),
            ("List-Id", f"<alerts.{DOMAIN}>"),
            ("Precedence", "bulk"),
        ],
    )


def registration_mail() -> bytes:
    return compose(
        from_address="entry@mail.example.jp",
        from_name="みやぎSecurityメール",
        to="hanako@ezweb.ne.jp",
        subject="仮登録のお知らせ",
        body="以下のURLから登録を続けてください。\nhttps://mail.example.jp/register/TOKEN\n",
        date=DATE,
        message_id_domain=DOMAIN,
        auto_submitted="auto-replied",
    )


def alert_mail() -> bytes:
    template = AlertTemplate(
        AlertContent(
            alert_id=7,
            subject="不審者（声かけ）事案の発生",
            area_label="青葉区",
            body="12月1日午後4時ころ、青葉区内の路上で、下校中の児童が声をかけられました。\n" * 8,
            sender="仙台北警察署",
            message_key="0123456789abcdef",
        ),
        from_address="info@mail.example.jp",
        from_name="みやぎSecurityメール",
        subject_prefix="【みやぎSecurityメール】",
        list_id=f"<alerts.{DOMAIN}>",
        hostname=DOMAIN,
    )
    return template.personalise(
        Personal(
            address="taro@docomo.ne.jp",
            subscriber_id=42,
            manage_url="https://mail.example.jp/manage/SUBSCRIBER-TOKEN",
            unsubscribe_url=UNSUBSCRIBE,
            envelope_from="bounce+VERP@mail.example.jp",
        ),
        format_datetime(DATE),
    )


# --- signing and verifying ---------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
@pytest.mark.parametrize("build", [list_mail, alert_mail, registration_mail])
def test_signature_verifies_against_the_published_record(
    keys: dict[str, Path], kind: str, build: Callable[[], bytes]
) -> None:
    original = build()
    signed = signer_for(keys[kind]).sign(original)

    assert signed.startswith(b"DKIM-Signature: ")
    assert signed.endswith(original)
    assert signed.count(b"DKIM-Signature:") == 1
    assert all(len(line) <= 998 for line in signed.split(b"\r\n"))
    asked: list[bytes] = []
    assert dkim.verify(signed, dnsfunc=dns_for(keys[kind], asked))
    assert asked == [f"{SELECTOR}._domainkey.{DOMAIN}.".encode()]
    t = tags(signed)
    assert t["d"] == DOMAIN
    assert t["s"] == SELECTOR
    assert t["c"] == "relaxed/relaxed"
    assert t["a"] == {"rsa": "rsa-sha256", "ed25519": "ed25519-sha256"}[kind]


def test_the_other_key_does_not_verify(keys: dict[str, Path]) -> None:
    signed = signer_for(keys["rsa"]).sign(alert_mail())
    other = write_key(
        keys["rsa"].with_name("other.pem"),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    )
    assert not verifies(signed, other)


def test_h_tag_covers_one_click_unsubscribe_and_oversigns(keys: dict[str, Path]) -> None:
    signed = signer_for(keys["ed25519"]).sign(alert_mail())

    signed_names = tags(signed)["h"].split(":")
    assert signed_names.count("list-unsubscribe") == 2
    assert signed_names.count("list-unsubscribe-post") == 2
    for name in ("from", "to", "subject", "date", "message-id", "list-id", "auto-submitted"):
        assert signed_names.count(name) == 2, name
    assert "precedence" not in signed_names


def test_absent_fields_are_signed_as_absent(keys: dict[str, Path]) -> None:
    signed = signer_for(keys["ed25519"]).sign(registration_mail())

    signed_names = tags(signed)["h"].split(":")
    assert signed_names.count("from") == 2
    assert signed_names.count("list-unsubscribe") == 1  # absent: signed once, as empty
    added = signed.replace(
        b"\r\n\r\n", f"\r\nList-Unsubscribe: <{UNSUBSCRIBE}>\r\n\r\n".encode(), 1
    )
    assert verifies(signed, keys["ed25519"])
    assert not verifies(added, keys["ed25519"])


# --- tampering ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_changed_list_unsubscribe_fails(keys: dict[str, Path], kind: str) -> None:
    signed = signer_for(keys[kind]).sign(list_mail())
    forged = signed.replace(UNSUBSCRIBE.encode(), b"https://evil.example/unsubscribe/x")

    assert forged != signed
    assert verifies(signed, keys[kind])
    assert not verifies(forged, keys[kind])


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_changed_body_fails(keys: dict[str, Path], kind: str) -> None:
    signed = signer_for(keys[kind]).sign(alert_mail())
    head, body = signed.split(b"\r\n\r\n", 1)
    lines = body.split(b"\r\n")
    lines[0] = lines[0][:-4] + (b"AAAA" if lines[0][-4:] != b"AAAA" else b"BBBB")
    forged = head + b"\r\n\r\n" + b"\r\n".join(lines)

    assert not verifies(forged, keys[kind])
    assert not verifies(signed + b"PS: appended\r\n", keys[kind])


@pytest.mark.parametrize("name", ["From", "Subject", "List-Unsubscribe"])
def test_a_second_field_put_above_ours_fails(keys: dict[str, Path], name: str) -> None:
    signed = signer_for(keys["ed25519"]).sign(list_mail())
    value = {"From": "Police <police@evil.example>", "Subject": "偽物", "List-Unsubscribe": "<x>"}
    added = f"{name}: {value[name]}\r\n".encode() + signed

    assert not verifies(added, keys["ed25519"])


def test_refolded_headers_still_verify(keys: dict[str, Path]) -> None:
    """relaxed/relaxed: a relay that refolds a header does not break the signature."""
    signed = signer_for(keys["rsa"]).sign(list_mail())
    refolded = signed.replace(b"List-Id: <", b"List-Id:\r\n\t <", 1)

    assert refolded != signed
    assert verifies(refolded, keys["rsa"])


# --- keys, records and config -------------------------------------------------------


def test_publish_record(keys: dict[str, Path]) -> None:
    rsa_record = publish_record(keys["rsa"])
    ed_record = publish_record(keys["ed25519"])

    assert rsa_record.startswith("v=DKIM1; k=rsa; p=MII")
    assert ed_record.startswith("v=DKIM1; k=ed25519; p=")
    assert len(base64.b64decode(ed_record.split("p=")[1])) == 32  # RFC 8463 §4.2


def test_disabled_config_gives_no_signer() -> None:
    assert DkimSigner.from_config(DkimConfig()) is None


def test_key_is_read_once(keys: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "copy.pem"
    copy.write_bytes(keys["ed25519"].read_bytes())
    copy.chmod(0o600)
    signer = signer_for(copy)
    copy.unlink()

    assert verifies(signer.sign(alert_mail()), keys["ed25519"])


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"not a key at all\n", "not a PEM private key"),
        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "not a PEM"),
        (
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            "cannot sign DKIM",
        ),
        (
            ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.BestAvailableEncryption(b"secret"),
            ),
            "encrypted",
        ),
        (
            ed25519.Ed25519PrivateKey.generate()
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            "not a PEM private key",
        ),
    ],
    # Named, not shown: three keys are made anew at each collection, and every pytest-xdist
    # worker must collect the same names.
    ids=["text", "no-key-in-pem", "ec-key", "encrypted", "public-key"],
)
def test_bad_key_file_is_named(tmp_path: Path, content: bytes, problem: str) -> None:
    bad = tmp_path / "bad-dkim.pem"
    bad.write_bytes(content)
    config = DkimConfig(domain=DOMAIN, selector=SELECTOR, key_file=bad)

    with pytest.raises(ValueError, match=problem) as raised:
        DkimSigner.from_config(config)
    assert str(bad) in str(raised.value)


def test_missing_key_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "gone.pem"
    with pytest.raises(ValueError, match="gone.pem: cannot read"):
        DkimSigner.from_config(DkimConfig(domain=DOMAIN, selector=SELECTOR, key_file=missing))


def test_world_readable_key_is_warned_about(
    keys: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    open_key = tmp_path / "open.pem"
    open_key.write_bytes(keys["ed25519"].read_bytes())
    open_key.chmod(0o644)

    with caplog.at_level(logging.WARNING, logger="maild.delivery"):
        load_private_key(open_key)
    assert "readable by every user" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="maild.delivery"):
        load_private_key(keys["ed25519"])
    assert caplog.text == ""


@pytest.mark.parametrize("domain", ["メール.example.jp", "mail example.jp", ""])
def test_domain_must_be_an_ascii_dns_name(keys: dict[str, Path], domain: str) -> None:
    with pytest.raises(ValueError, match="not an ASCII DNS name"):
        DkimSigner(domain, SELECTOR, load_private_key(keys["ed25519"]))


def test_message_without_header_is_refused(keys: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="cannot DKIM-sign"):
        signer_for(keys["ed25519"]).sign(b"no header here at all")


# --- signing on the way to a real relay ----------------------------------------------


def test_signing_relay_delivers_signed_mail(keys: dict[str, Path], sink: SmtpSink) -> None:
    original = alert_mail()

    async def main() -> None:
        relay = signing(open_relay(RelayConfig(url=sink.url), DOMAIN), signer_for(keys["rsa"]))
        try:
            await relay.send("bounce+VERP@mail.example.jp", "taro@docomo.ne.jp", original)
        finally:
            await relay.close()

    asyncio.run(main())

    [received] = sink.wait_for(1)
    assert received.rcpt_tos == ("taro@docomo.ne.jp",)
    assert received.data.startswith(b"DKIM-Signature: ")
    assert received.data.endswith(original)
    assert verifies(received.data, keys["rsa"])


def test_no_signer_leaves_the_relay_alone(sink: SmtpSink) -> None:
    relay = open_relay(RelayConfig(url=sink.url), DOMAIN)
    assert signing(relay, None) is relay


# --- issue 13.4: RSA and Ed25519 together ------------------------------------------------


def test_two_keys_give_two_signatures_each_verified_with_its_own_record(
    keys: dict[str, Path],
) -> None:
    config = DkimConfig(
        domain=DOMAIN,
        selector="ed",
        key_file=keys["ed25519"],
        second_selector="rsa",
        second_key_file=keys["rsa"],
    )
    signer = DkimSigner.from_config(config)
    assert signer is not None
    original = alert_mail()
    signed = signer.sign(original)
    assert signed.count(b"DKIM-Signature:") == 2 and signed.endswith(original)
    records = {
        f"ed._domainkey.{DOMAIN}.".encode(): publish_record(keys["ed25519"]).encode(),
        f"rsa._domainkey.{DOMAIN}.".encode(): publish_record(keys["rsa"]).encode(),
    }

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return records.get(name)

    # dkimpy verifies the signature at the index given; each one on its own.
    assert dkim.DKIM(signed).verify(idx=0, dnsfunc=dnsfunc)
    assert dkim.DKIM(signed).verify(idx=1, dnsfunc=dnsfunc)
    algorithms = {
        line.split(b"a=", 1)[1].split(b";", 1)[0]
        for line in signed.replace(b"\r\n\t", b" ").replace(b"\r\n ", b" ").split(b"\r\n")
        if line.startswith(b"DKIM-Signature:")
    }
    assert algorithms == {b"ed25519-sha256", b"rsa-sha256"}


def test_two_keys_of_one_kind_are_refused(keys: dict[str, Path]) -> None:
    config = DkimConfig(
        domain=DOMAIN,
        selector="a",
        key_file=keys["rsa"],
        second_selector="b",
        second_key_file=keys["rsa"],
    )
    with pytest.raises(ValueError, match="different kinds"):
        DkimSigner.from_config(config)


@pytest.mark.parametrize(
    ("relay", "second", "refused"),
    [
        ("smtp://127.0.0.1:25", False, True),  # Ed25519 alone to a real relay
        ("smtp://127.0.0.1:25", True, False),  # with RSA beside it
        ("maildir:var/maildir", False, False),  # make run: nothing leaves the machine
    ],
)
def test_ed25519_alone_is_refused_with_a_real_relay(
    keys: dict[str, Path], tmp_path: Path, relay: str, second: bool, refused: bool
) -> None:
    dkim_section: dict[str, str] = {
        "domain": DOMAIN,
        "selector": "ed",
        "key_file": str(keys["ed25519"]),
    }
    if second:
        dkim_section |= {"second_selector": "rsa", "second_key_file": str(keys["rsa"])}
    config = make_config(tmp_path, relay={"url": relay}, dkim=dkim_section)
    if refused:
        with pytest.raises(ValueError, match="Ed25519 key alone"):
            maild_dkim.signer_for(config)
    else:
        assert maild_dkim.signer_for(config) is not None


def test_dkim_record_prints_a_zone_line_per_key(keys: dict[str, Path], tmp_path: Path) -> None:
    dkim_section = {
        "domain": DOMAIN,
        "selector": "rsa2026",
        "key_file": str(keys["rsa"]),
        "second_selector": "ed2026",
        "second_key_file": str(keys["ed25519"]),
    }
    config = write_config(tmp_path, dkim=dkim_section)
    lines = maild_command(config, "dkim", "record").stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        f"rsa2026._domainkey.{DOMAIN}.",
        f"ed2026._domainkey.{DOMAIN}.",
    ]
    for line, key in zip(lines, (keys["rsa"], keys["ed25519"]), strict=True):
        strings = re.findall(r'"([^"]*)"', line)
        assert all(len(s) <= 255 for s in strings)
        assert "".join(strings) == publish_record(key)
    assert len(re.findall(r'"', lines[0])) > 2  # RSA-2048 needs more than one string


def test_keys_as_an_array_of_tables_sign_and_publish_each(
    keys: dict[str, Path], tmp_path: Path
) -> None:
    # SPEC §11: [dkim] takes its keys as [[dkim.keys]] tables, one signature each.
    listed = [
        {"selector": "rsa2026", "key_file": str(keys["rsa"])},
        {"selector": "ed2026", "key_file": str(keys["ed25519"])},
    ]
    dkim_section = {"domain": DOMAIN, "keys": listed}
    config = write_config(tmp_path, relay={"url": "smtp://127.0.0.1:25"}, dkim=dkim_section)
    assert "[[dkim.keys]]" not in config.read_text()  # inline tables: the same TOML value
    lines = maild_command(config, "dkim", "record").stdout.splitlines()
    assert [line.split()[0] for line in lines] == [
        f"rsa2026._domainkey.{DOMAIN}.",
        f"ed2026._domainkey.{DOMAIN}.",
    ]
    signer = maild_dkim.signer_for(make_config(tmp_path, dkim=dkim_section))
    assert signer is not None
    assert [k.selector for k in signer.keys] == ["rsa2026", "ed2026"]
    assert signer.sign(alert_mail()).count(b"DKIM-Signature:") == 2


@pytest.mark.parametrize(
    ("extra", "keys_given", "message"),
    [
        ({"selector": "old"}, "both", "not both"),
        ({}, "same selector", "a selector of its own"),
        ({}, "unknown key", "[dkim.keys 1] algorithm: unknown key"),
        ({}, "no file", "[dkim.keys 1] key_file: each key needs both"),
        ({"domain": ""}, "both", "DKIM keys need domain"),
    ],
)
def test_keys_tables_that_cannot_work_are_refused(
    keys: dict[str, Path], tmp_path: Path, extra: dict[str, str], keys_given: str, message: str
) -> None:
    rsa, ed = str(keys["rsa"]), str(keys["ed25519"])
    listed: list[dict[str, str]] = {
        "both": [{"selector": "a", "key_file": rsa}],
        "same selector": [{"selector": "a", "key_file": rsa}, {"selector": "a", "key_file": ed}],
        "unknown key": [{"selector": "a", "key_file": rsa, "algorithm": "rsa"}],
        "no file": [{"selector": "a"}],
    }[keys_given]
    section: dict[str, Any] = {"domain": DOMAIN, "keys": listed} | extra
    with pytest.raises(ConfigError, match=re.escape(message)):
        make_config(tmp_path, dkim=section)


def test_dkim_record_without_dkim_says_what_to_set(tmp_path: Path) -> None:
    done = maild_command(write_config(tmp_path), "dkim", "record", check=False)
    assert done.returncode != 0
    assert "[dkim] is not set up" in done.stderr
