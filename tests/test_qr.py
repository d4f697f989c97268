"""The poster QR code (README.md ``maild qr``): decoded by a real reader, not compared to itself.

PNG files go straight to ``zbarimg`` (Debian's ``zbar-tools``). SVG files are read
as XML, their drawing is turned back into modules and written as a plain bitmap
that ``zbarimg`` decodes; the same modules also give the error correction level
from the symbol's format information (ISO/IEC 18004 §7.9).

Without ``zbarimg`` these tests skip, unless ``MAILD_REQUIRE_QR_DECODER`` is set
(CI sets it), when they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import segno

from maild.residents.qr import mailto_uri, write_qr

ADDRESS = "entry@mail.example.jp"
EXPECTED = "mailto:entry@mail.example.jp"
SVG_NS = "{http://www.w3.org/2000/svg}"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUIET_ZONE = 4  # modules, ISO/IEC 18004 §6.3.8
PRINT_WIDTH = 600  # pixels: about 5 cm at 300 dpi

# The two error-correction bits of the format information, after unmasking.
EC_LEVELS = {0b01: "L", 0b00: "M", 0b11: "Q", 0b10: "H"}
FORMAT_MASK = 0b101010000010010

Matrix = list[list[bool]]


def zbarimg() -> str:
    """The decoder's path; skip, or fail when MAILD_REQUIRE_QR_DECODER is set."""
    found = shutil.which("zbarimg")
    if found:
        return found
    reason = "zbarimg (Debian zbar-tools) is not installed"
    if os.environ.get("MAILD_REQUIRE_QR_DECODER"):
        pytest.fail(f"{reason}; MAILD_REQUIRE_QR_DECODER is set")
    pytest.skip(reason)


def decode(image: Path) -> str:
    """The text of the one QR code in ``image``, as a phone's reader would see it."""
    result = subprocess.run(
        [zbarimg(), "--raw", "-q", "-Sdisable", "-Sqrcode.enable", str(image)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, f"zbarimg found no QR code: {result.stderr}"
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"expected one code, got {lines!r}"
    return lines[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def svg_modules(path: Path) -> Matrix:
    """Dark modules drawn by the SVG, read back from its path (``M``/``m``/``h`` strokes)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{SVG_NS}svg"
    paths = root.findall(f"{SVG_NS}path")
    assert len(paths) == 1
    (drawing,) = paths
    scale_match = re.fullmatch(r"scale\((\d+)\)", drawing.get("transform", ""))
    assert scale_match, drawing.get("transform")
    scale = int(scale_match[1])
    width, height = int(root.get("width", "0")), int(root.get("height", "0"))
    assert width == height and width % scale == 0
    size = width // scale
    matrix = [[False] * size for _ in range(size)]
    x = y = 0.0
    for command, arguments in re.findall(r"([A-Za-z])([^A-Za-z]*)", drawing.get("d", "")):
        numbers = [float(n) for n in arguments.replace(",", " ").split()]
        if command in "Mm":
            dx, dy = numbers
            x, y = (dx, dy) if command == "M" else (x + dx, y + dy)
        elif command == "h":
            (dx,) = numbers
            # A stroke of width 1 centred on y + 0.5 covers one row of modules.
            for column in range(round(x), round(x + dx)):
                matrix[int(y)][column] = True
            x += dx
        else:
            raise AssertionError(f"unexpected SVG path command {command!r}")
    return matrix


def write_pbm(matrix: Matrix, path: Path, pixels: int = 8) -> None:
    """A plain-text bitmap (netpbm P1) of ``matrix``, ``pixels`` per module."""
    size = len(matrix) * pixels
    rows = []
    for row in matrix:
        line = " ".join("1" if dark else "0" for dark in row for _ in range(pixels))
        rows.extend([line] * pixels)
    path.write_text(f"P1\n{size} {size}\n" + "\n".join(rows) + "\n", encoding="ascii")


def error_level(matrix: Matrix, border: int) -> str:
    """The error correction level in the format information beside the top-left finder."""
    m = [row[border : len(row) - border] for row in matrix[border : len(matrix) - border]]
    # Bits 14..9 run along row 8, skip the timing column 6, then turn up column 8.
    cells = [(8, c) for c in (0, 1, 2, 3, 4, 5, 7, 8)] + [(r, 8) for r in (7, 5, 4, 3, 2, 1, 0)]
    bits = 0
    for r, c in cells:
        bits = (bits << 1) | int(m[r][c])
    return EC_LEVELS[(bits ^ FORMAT_MASK) >> 13]


def test_png_decodes_to_the_mailto_uri_and_is_big_enough_to_print(tmp_path: Path) -> None:
    output = tmp_path / "poster.png"
    write_qr(ADDRESS, output)
    assert decode(output) == EXPECTED
    width, height = png_size(output)
    assert width == height >= PRINT_WIDTH


def test_svg_is_xml_whose_modules_decode_to_the_mailto_uri(tmp_path: Path) -> None:
    output = tmp_path / "poster.svg"
    write_qr(ADDRESS, output)
    matrix = svg_modules(output)
    assert error_level(matrix, QUIET_ZONE) == "M"
    size = len(matrix)
    edge = [*range(QUIET_ZONE), *range(size - QUIET_ZONE, size)]
    assert not any(matrix[r][c] for r in edge for c in range(size)), "quiet zone"
    assert not any(matrix[r][c] for r in range(size) for c in edge), "quiet zone"
    assert matrix[QUIET_ZONE][QUIET_ZONE], "the finder pattern starts right after the quiet zone"
    bitmap = tmp_path / "poster-from-svg.pbm"
    write_pbm(matrix, bitmap)
    assert decode(bitmap) == EXPECTED


def test_the_format_reader_tells_levels_apart(tmp_path: Path) -> None:
    # Guards the check above: a reader that always said "M" would prove nothing.
    for level in "LMQH":
        output = tmp_path / f"{level}.svg"
        code = segno.make(EXPECTED, error=level, micro=False, boost_error=False)
        code.save(str(output), kind="svg", scale=3, border=QUIET_ZONE)
        assert error_level(svg_modules(output), QUIET_ZONE) == level


def test_extension_is_case_insensitive(tmp_path: Path) -> None:
    output = tmp_path / "POSTER.PNG"
    write_qr(ADDRESS, output)
    assert output.read_bytes().startswith(PNG_SIGNATURE)


def test_long_address_still_decodes_at_print_size(tmp_path: Path) -> None:
    address = "safety-information-registration.miyagi@mail.police.example.lg.jp"
    output = tmp_path / "long.png"
    write_qr(address, output)
    assert decode(output) == f"mailto:{address}"
    assert png_size(output)[0] >= PRINT_WIDTH


@pytest.mark.parametrize("name", ["poster.pdf", "poster.jpg", "poster", "poster.svg.txt"])
def test_other_extensions_are_refused_before_writing(tmp_path: Path, name: str) -> None:
    output = tmp_path / name
    with pytest.raises(ValueError, match=r"\.svg か \.png.*\.svg or \.png") as caught:
        write_qr(ADDRESS, output)
    assert name in str(caught.value)
    assert not output.exists()


def test_mailto_uri_percent_encodes_what_rfc6068_requires() -> None:
    assert mailto_uri("entry+poster@mail.example.jp") == "mailto:entry+poster@mail.example.jp"
    assert mailto_uri("a=b?c%d#e@x.example.jp") == "mailto:a%3Db%3Fc%25d%23e@x.example.jp"


@pytest.mark.parametrize("address", ["", " entry@mail.example.jp", "entry"])
def test_unusable_addresses_are_refused(tmp_path: Path, address: str) -> None:
    output = tmp_path / "poster.png"
    with pytest.raises(ValueError, match="メールアドレス"):
        write_qr(address, output)
    assert not output.exists()
