"""QR codes for posters (README.md ``maild qr``): ``mailto:`` the registration address.

A resident scans the code, the phone opens a new mail to the registration
address, and sending it (blank) starts the registration. The image kind follows
the output's extension: SVG for print shops and layout programs, PNG for
everything else.
"""

from __future__ import annotations

import math
from pathlib import Path
from urllib.parse import quote

import segno

# Level M restores 15 % of the symbol: enough for a poster that gets creased or
# dirty, while keeping the code coarse enough for an old phone camera.
ERROR_LEVEL = "m"

# ISO/IEC 18004 asks for a quiet zone of four modules around the symbol; scanners
# miss codes printed closer to other ink.
BORDER = 4

# At 300 dpi, 600 px is about 5 cm: comfortable to scan from arm's length.
MIN_PNG_WIDTH = 600
PNG_DPI = 300

KINDS = {".svg": "svg", ".png": "png"}

# RFC 6068 §2: in a mailto: URI, "%", "?", "#", "=", "&", spaces and non-ASCII
# must be percent-encoded or the phone reads a different address. Letters,
# digits and "-._~" are never encoded; these few more may stay as they are.
_MAILTO_SAFE = "@!$'*+"


def mailto_uri(address: str) -> str:
    """The ``mailto:`` URI for ``address``, percent-encoded as RFC 6068 requires."""
    if not address or address != address.strip() or "@" not in address:
        # The address is not repeated: error texts never hold a full address
        # (docs/mail-delivery.md).
        raise ValueError(
            "QRコードにするメールアドレスが正しくありません / "
            "not a mail address to put in a QR code"
        )
    return "mailto:" + quote(address, safe=_MAILTO_SAFE)


def scale_for(modules: int) -> int:
    """Pixels per module so that ``modules`` (the symbol with its border) fill the minimum."""
    return max(1, math.ceil(MIN_PNG_WIDTH / modules))


def write_qr(address: str, output: Path) -> None:
    """Write a QR code of ``mailto:ADDRESS`` to ``output`` (``.svg`` or ``.png``).

    Raises ValueError for another extension or an unusable address, before
    anything is written; OSError when the file cannot be written.
    """
    kind = KINDS.get(output.suffix.lower())
    if kind is None:
        raise ValueError(
            f"QRコードのファイル名は .svg か .png で終えてください（{output.name}） / "
            f"the QR code file name must end in .svg or .png: {output.name}"
        )
    # micro=False: Micro QR saves space but many phone camera apps cannot read it.
    # boost_error=False: the level is the one chosen above, not whatever fits.
    code = segno.make(mailto_uri(address), error=ERROR_LEVEL, micro=False, boost_error=False)
    width, _ = code.symbol_size(scale=1, border=BORDER)
    scale = scale_for(int(width))
    if kind == "png":
        code.save(str(output), kind=kind, scale=scale, border=BORDER, dpi=PNG_DPI)
    else:
        code.save(str(output), kind=kind, scale=scale, border=BORDER, title=address)
