"""Build the bytes of a mail the service sends (docs/mail-delivery.md). Pure: no I/O.

A message is a list of header fields, each already encoded and folded, and a
body, already transfer-encoded; :func:`render` joins them with CRLF. Keeping the
two apart is what makes bulk mail cheap later: a template can encode the
headers that are the same for everyone once, and only substitute the few that
differ per recipient (``To``, ``Message-ID``, ``List-Unsubscribe``), all of them
ASCII, without going through :mod:`email` again.

Choices, and why:

- The body is UTF-8 ``text/plain`` in base64. Japanese text is three bytes a
  character in UTF-8; base64 costs 4/3 of that, quoted-printable 3×. Base64
  lines are 76 characters, far below the 998 bytes relays enforce ("500 Line
  Too Long"), and the text is in canonical CRLF form before encoding
  (RFC 2045 §6.8).
- Headers are written here rather than by ``EmailMessage``, whose header
  parser drops the quotes of legacy addresses such as
  ``"taro..yamada."@docomo.ne.jp`` (docs/mail-delivery.md). Non-ASCII Subject and display
  name become RFC 2047 encoded words, split on character boundaries.
- Every header appears once (receivers reject duplicates, docs/mail-delivery.md); extra
  headers that collide with ours are refused.
- Recipients at ``mail.legacy_charset_domains`` get ``charset="iso-2022-jp"``
  (docs/mail-delivery.md): text mapped by :mod:`maild.mail.legacy` (① → (1), ～ → 〜 …), the
  body 7bit ISO-2022-JP in lines under 998 bytes, Subject and display name as
  ISO-2022-JP encoded words (``EmailMessage`` would write them in UTF-8). A
  character with no equivalent raises :class:`~maild.mail.legacy.LegacyCharsetError`:
  no mojibake is ever sent.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import re
from collections.abc import Sequence
from email.utils import format_datetime, make_msgid
from typing import Final, Literal

from maild.common.addresses import domain_of, smtp_path
from maild.common.config import Config
from maild.mail import legacy

AUTO_REPLIED = "auto-replied"
AUTO_GENERATED = "auto-generated"
AUTO_SUBMITTED_VALUES = (AUTO_REPLIED, AUTO_GENERATED)

Charset = Literal["utf-8", "iso-2022-jp"]
UTF8: Final = "utf-8"
ISO_2022_JP: Final = "iso-2022-jp"
CHARSETS: tuple[Charset, ...] = (UTF8, ISO_2022_JP)

CRLF = "\r\n"
MAX_LINE = 998  # RFC 5322 §2.1.1, without the CRLF
FOLD_AT = 78  # RFC 5322 §2.1.1's "SHOULD"
BASE64_LINE = 76  # RFC 2045 §6.8
BASE64_CHUNK = BASE64_LINE // 4 * 3  # input bytes per base64 line: 57
MAX_ENCODED_WORD = 75  # RFC 2047 §2
MAX_ENCODED_LINE = 76  # RFC 2047 §2: a line holding an encoded word
# ISO-2022-JP lines are cut this many characters at a time. A JIS X 0208
# character is 2 bytes and every switch to or from ASCII adds a 3-byte escape,
# so 300 characters are at most ~700 bytes in practice; each piece is measured anyway.
_LEGACY_FOLD = 300

# Headers compose() writes itself; extra_headers may not repeat them.
OWN_HEADERS = frozenset(
    {
        "date",
        "from",
        "to",
        "subject",
        "message-id",
        "in-reply-to",
        "references",
        "auto-submitted",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)

_FIELD_NAME = re.compile(r"[!-9;-~]+")  # RFC 5322 §3.6.8 ftext
# RFC 5322 §3.2.3: a phrase holding one of these is quoted
_QUOTE_IN_PHRASE = re.compile(r'[][\\()<>@,:;".]')
_CONTROLS = re.compile(r"[\x00-\x1f\x7f]+")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_MSG_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")  # printable ASCII, no < > inside
_BARE_MSG_ID = re.compile(r"[!-;=?-~]+@[!-;=?-~]+")
# A plain-text header word this long cannot be folded; encode it instead.
_LONG_WORD = 900

Field = tuple[str, str]


def compose(
    *,
    from_address: str,
    from_name: str,
    to: str,
    subject: str,
    body: str,
    date: dt.datetime,
    message_id_domain: str,
    auto_submitted: str,
    in_reply_to: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    message_id: str | None = None,
    charset: Charset = UTF8,
) -> bytes:
    """The complete message, CRLF line endings, ready for the relay's DATA.

    ``date`` must be timezone-aware and already in the service's time zone (it is
    written with its offset, e.g. ``+0900``). ``auto_submitted`` is
    ``"auto-replied"`` for answers to a resident's mail and ``"auto-generated"``
    otherwise (RFC 3834). ``in_reply_to`` is the Message-ID being answered; a
    malformed one (it comes from a resident's phone) is left out rather than
    refused. ``message_id`` lets a caller keep one id across retries; by default
    a new unique one is made in ``message_id_domain``. ``extra_headers`` values
    must be ASCII (List-Id, List-Unsubscribe, Precedence, …). ``charset`` is
    ``"iso-2022-jp"`` for recipients at ``mail.legacy_charset_domains``; it raises
    :class:`~maild.mail.legacy.LegacyCharsetError` for text that cannot be sent so.
    """
    fields = header_fields(
        from_address=from_address,
        from_name=from_name,
        to=to,
        subject=subject,
        date=date,
        message_id=message_id or make_msgid(domain=message_id_domain),
        auto_submitted=auto_submitted,
        in_reply_to=in_reply_to,
        extra_headers=extra_headers,
        charset=charset,
    )
    return render(fields, encode_body(body, charset))


def header_fields(
    *,
    from_address: str,
    from_name: str,
    to: str,
    subject: str,
    date: dt.datetime,
    message_id: str,
    auto_submitted: str,
    in_reply_to: str | None = None,
    extra_headers: Sequence[tuple[str, str]] = (),
    charset: Charset = UTF8,
) -> list[Field]:
    """Every header of a message as ``(name, encoded and folded value)``, in order."""
    _check_charset(charset)
    if date.tzinfo is None or date.utcoffset() is None:
        raise ValueError("the Date of a mail needs a timezone-aware datetime")
    if auto_submitted not in AUTO_SUBMITTED_VALUES:
        raise ValueError(f"Auto-Submitted must be one of {AUTO_SUBMITTED_VALUES}")
    if not _MSG_ID.fullmatch(message_id):
        raise ValueError(f"{message_id!r} is not a Message-ID such as <id@domain>")
    fields: list[Field] = [
        ("Date", format_datetime(date)),
        ("From", _mailbox(from_name, from_address, charset)),
        ("To", header_address(to)),
        ("Subject", _text("Subject", subject, charset)),
        ("Message-ID", message_id),
    ]
    reply_id = _reply_id(in_reply_to)
    if reply_id is not None:
        # We do not keep the thread, so References holds just the parent (RFC 5322 §3.6.4).
        fields += [("In-Reply-To", reply_id), ("References", reply_id)]
    fields.append(("Auto-Submitted", auto_submitted))
    seen = set(OWN_HEADERS)
    for name, value in extra_headers:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"{name!r} is not a header field name")
        if name.lower() in seen:
            raise ValueError(f"header {name} would appear twice")
        seen.add(name.lower())
        if not value.isascii() or _CONTROLS.search(value):
            raise ValueError(f"header {name}: the value must be one line of ASCII")
        fields.append((name, _fold(name, value)))
    fields.append(("MIME-Version", "1.0"))
    if charset == ISO_2022_JP:
        # RFC 1468: ISO-2022-JP is a 7bit encoding; every line ends in ASCII.
        fields += [
            ("Content-Type", f"text/plain; charset={legacy.MIME_CHARSET}"),
            ("Content-Transfer-Encoding", "7bit"),
        ]
    else:
        fields += [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Transfer-Encoding", "base64"),
        ]
    return fields


def encode_body(text: str, charset: Charset = UTF8) -> bytes:
    """The body ready for DATA, ending in CRLF.

    UTF-8: ``text`` as canonical CRLF UTF-8, base64 in 76-character lines.
    ISO-2022-JP: ``text`` mapped by :func:`maild.mail.legacy.to_legacy`, each line
    encoded on its own (so each ends in ASCII) and cut at character boundaries
    into pieces under 998 bytes; raises :class:`~maild.mail.legacy.LegacyCharsetError`.
    """
    if charset != ISO_2022_JP:
        _check_charset(charset)
        return base64_lines(canonical_utf8(text))
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return _encode_legacy_lines(lines, text)


def canonical_utf8(text: str) -> bytes:
    """``text`` as UTF-8 with CRLF line ends, ending in CRLF: what a UTF-8 body encodes."""
    lines = _LINE_BREAK.split(text)
    if lines and lines[-1] == "":
        lines.pop()
    return "".join(line + CRLF for line in lines).encode("utf-8")


def base64_lines(data: bytes) -> bytes:
    """``data`` in base64, 76 characters and CRLF a line (RFC 2045 §6.8).

    Every :data:`BASE64_CHUNK` bytes of input make one whole line, so a long
    shared beginning cut at a multiple of it can be encoded once and the rest
    appended later (maild.delivery.alertmail does that per recipient).
    """
    encoded = base64.b64encode(data)
    return b"".join(
        encoded[i : i + BASE64_LINE] + b"\r\n" for i in range(0, len(encoded), BASE64_LINE)
    )


def _encode_legacy_lines(lines: list[str], text: str) -> bytes:
    out: list[bytes] = []
    for line in lines:
        encoded = legacy.encode_as_is(line)  # most lines need no mapping: encode once
        if encoded is None:
            line = legacy.to_legacy(line)
            encoded = legacy.encode_as_is(line)
            if encoded is None:
                # Report every character of the whole body, with body line numbers.
                raise legacy.LegacyCharsetError("body", legacy.legacy_problems(text))
        if len(encoded) <= MAX_LINE:
            out.append(encoded)
            continue
        start = 0
        while start < len(line):
            size = _LEGACY_FOLD
            piece = line[start : start + size].encode(legacy.CODEC)
            while len(piece) > MAX_LINE:  # only for text that switches sets very often
                size //= 2
                piece = line[start : start + size].encode(legacy.CODEC)
            out.append(piece)
            start += size
    return b"".join(line + b"\r\n" for line in out)


def _check_charset(charset: str) -> None:
    if charset not in CHARSETS:
        raise ValueError(f"charset must be one of {CHARSETS}, not {charset!r}")


def render(fields: Sequence[Field], body: bytes) -> bytes:
    """Join header fields and an encoded body into the bytes sent after DATA."""
    head = "".join(f"{name}: {value}{CRLF}" for name, value in fields)
    for line in head.split(CRLF):
        if len(line) > MAX_LINE:
            raise ValueError(f"a header line is longer than {MAX_LINE} bytes: {line[:40]}…")
    return head.encode("ascii") + b"\r\n" + body


# --- header values -------------------------------------------------------------


def _one_line(text: str) -> str:
    """Header text from people: line breaks and controls become single spaces."""
    return " ".join(_CONTROLS.sub(" ", text).split())


def _text(name: str, text: str, charset: Charset = UTF8) -> str:
    """An unstructured header value (RFC 5322 §3.2.5), RFC 2047-encoded when needed."""
    text = _one_line(text)
    if charset == ISO_2022_JP:
        text = legacy.check_legacy(name, text)
    if text.isascii() and "=?" not in text and all(len(w) < _LONG_WORD for w in text.split()):
        return _fold(name, text)
    return _encoded_words(name, text, charset)


@functools.lru_cache(maxsize=256)
def _encoded_words(name: str, text: str, charset: Charset) -> str:
    """``text`` as RFC 2047 "B" encoded words, folded one word a line.

    RFC 2047 §2: an encoded word is at most 75 characters, and a line holding one at
    most 76, so the first word is shorter by the header's name. Words are cut at
    character boundaries; each ISO-2022-JP word starts and ends in ASCII (RFC 1468).
    Cached: the From name and a notice's Subject are the same in every mail."""
    mime = legacy.MIME_CHARSET if charset == ISO_2022_JP else "UTF-8"
    codec = legacy.CODEC if charset == ISO_2022_JP else "utf-8"
    overhead = len(f"=?{mime}?B??=")
    words: list[str] = []
    budget = min(MAX_ENCODED_WORD, MAX_ENCODED_LINE - len(name) - 2) - overhead
    start = 0
    while start < len(text):
        end = start + 1
        # Grow the piece while its base64 still fits; base64 is 4 characters per 3 bytes.
        while end < len(text) and _b64_length(text[start : end + 1], codec) <= budget:
            end += 1
        piece = text[start:end].encode(codec)
        words.append(f"=?{mime}?B?{base64.b64encode(piece).decode('ascii')}?=")
        start = end
        budget = MAX_ENCODED_WORD - overhead  # later lines start with one space
    return (CRLF + " ").join(words)


def _b64_length(piece: str, codec: str) -> int:
    return -(-len(piece.encode(codec)) // 3) * 4


def _fold(name: str, value: str) -> str:
    """Fold ASCII ``value`` before white space so lines stay near 78 characters
    (RFC 5322 §2.2.3); never right after the colon, never into a blank line."""
    out: list[str] = []
    width = len(name) + 2
    for i, chunk in enumerate(re.split(r"(?=[ \t])", value)):
        if i and chunk.strip() and width + len(chunk) > FOLD_AT:
            out.append(CRLF)
            width = 0
        out.append(chunk)
        width += len(chunk)
    return "".join(out)


def header_address(address: str) -> str:
    """``address`` as a header writes it (legacy local parts quoted); ValueError if unfit."""
    path = smtp_path(address)
    if not path.isascii() or _CONTROLS.search(path) or re.search(r"[\s<>]", path):
        raise ValueError("a mail address in a header must be printable ASCII")
    return path


def _mailbox(name: str, address: str, charset: Charset = UTF8) -> str:
    """``display name <address>``; a non-ASCII name as encoded words (RFC 2047 §5)."""
    path = header_address(address)
    name = _one_line(name)
    if not name:
        return path
    if charset == ISO_2022_JP:
        name = legacy.check_legacy("From", name)
    if name.isascii() and "=?" not in name:
        if _QUOTE_IN_PHRASE.search(name):
            name = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        return f"{name} <{path}>"
    words = _encoded_words("From", name, charset)
    last_line = len(words) - words.rfind(CRLF) - 2 if CRLF in words else len("From: " + words)
    # RFC 2047 §2 keeps a line with an encoded word within 76: the address may need its own.
    fold = CRLF if last_line + len(path) + 3 > MAX_ENCODED_LINE else ""
    return f"{words}{fold} <{path}>"


def _reply_id(text: str | None) -> str | None:
    """The Message-ID to answer, or None when the resident's mail had none usable."""
    if not text:
        return None
    match = _MSG_ID.search(text)
    if match:
        return match.group(0)
    bare = text.strip()
    return f"<{bare}>" if _BARE_MSG_ID.fullmatch(bare) else None


def charset_for(config: Config, address: str) -> Charset:
    """ISO-2022-JP for ``mail.legacy_charset_domains`` (old phones), UTF-8 for everyone else."""
    return ISO_2022_JP if domain_of(address) in config.mail.legacy_charset_domains else UTF8
