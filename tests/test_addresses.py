"""Addresses as Japanese phones write them, and masking for logs."""

from __future__ import annotations

import pytest

from maild.common.addresses import InvalidAddress, mask, mask_token, normalize, smtp_path


@pytest.mark.parametrize(
    ("text", "canonical", "wire"),
    [
        ("taro@example.jp", "taro@example.jp", "taro@example.jp"),
        ("<Taro@Example.JP>", "Taro@example.jp", "Taro@example.jp"),
        ("taro..test.@docomo.ne.jp", "taro..test.@docomo.ne.jp", '"taro..test."@docomo.ne.jp'),
        ('"taro..test."@docomo.ne.jp', "taro..test.@docomo.ne.jp", '"taro..test."@docomo.ne.jp'),
        (".hanako@ezweb.ne.jp", ".hanako@ezweb.ne.jp", '".hanako"@ezweb.ne.jp'),
    ],
)
def test_legacy_addresses_are_kept_and_quoted_on_the_wire(
    text: str, canonical: str, wire: str
) -> None:
    assert normalize(text) == canonical
    assert smtp_path(canonical) == wire


@pytest.mark.parametrize("text", ["", "taro", "taro@", "@example.jp", "a b@example.jp", "a@b"])
def test_invalid_addresses(text: str) -> None:
    with pytest.raises(InvalidAddress):
        normalize(text)


def test_masks_hide_the_address_and_token() -> None:
    assert mask("taro..test.@docomo.ne.jp") == "t***@docomo.ne.jp"
    token = "WzUsImFiY2QiXQ.aw4OAA.c1bShk6mEO0ST-riLotid6ChkoQ"
    assert mask_token(token) == "WzUsIm…"
