"""How many pixels an encoded image will decode to, read from the header fields TensorFlow's decoder itself uses.

The decode gate: every path that opens an image (split, and through the files split admitted extract-features,
fine-tune and evaluate; ``predict``; the served photo model) asks :func:`decoded_size` before a pixel is decoded,
and refuses what is too large or what has no size it can establish. Pillow's header parser is no gate: it
refuses files TensorFlow decodes in full (a PNG with a bad checksum on one text chunk, say), so a bound that
trusts it can be bypassed. These parsers read only the fields that ``tf.io.decode_image`` sizes its buffers by,
the same way it picks the format: by the first bytes, whatever the extension.

- JPEG: the first start-of-frame segment (libjpeg's height and width).
- PNG: the IHDR chunk, which must come first (libpng's width and height).
- GIF: the largest frame's width by the largest frame's height, the canvas TensorFlow paints frames on; giflib
  reads every frame's raster too, so their pixels count as well.
- BMP: the info header's width and height (a negative height stores the rows top-down).
- WebP: the VP8X canvas, or the VP8 or VP8L frame header.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

FORMATS = "JPEG, PNG, GIF, BMP or WebP"


@dataclass(frozen=True)
class DecodedSize:
    """What decoding will make of an image.

    Attributes:
        format: JPEG, PNG, GIF, BMP or WebP.
        width, height: of the decoded image (GIF: of the canvas).
        pixels: every pixel the decoder holds at once while decoding (GIF: its canvas and every frame's raster).
    """

    format: str
    width: int
    height: int
    pixels: int


class HeaderError(ValueError):
    """The header does not say how large the image is (or is not one the decoder reads)."""


def image_format(data: bytes) -> str | None:
    """The format ``tf.io.decode_image`` would pick for these bytes, by the same first bytes, or None."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if data.startswith(b"GIF8"):
        return "GIF"
    if data.startswith(b"BM"):
        return "BMP"
    if data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        return "WebP"
    return None


def decoded_size(data: bytes) -> DecodedSize:
    """The decoded size of encoded image bytes, from their header alone.

    Raises:
        HeaderError: not a format the decoder reads, or a header that is cut short or says nothing of its size.
    """
    kind = image_format(data)
    if kind is None:
        raise HeaderError(f"not a {FORMATS} file (its first bytes match none of them)")
    width, height, pixels = _PARSERS[kind](data)
    if width <= 0 or height <= 0:
        raise HeaderError(f"its {kind} header gives a size of {width}x{height}")
    return DecodedSize(kind, width, height, max(pixels, width * height))


def _jpeg(data: bytes) -> tuple[int, int, int]:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            raise HeaderError("its JPEG markers are broken before the frame header")
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers with no length
            position += 2
            continue
        (length,) = struct.unpack_from(">H", data, position + 2)
        if length < 2:
            raise HeaderError("its JPEG header has a segment of impossible length")
        # Start of frame: C0-CF but for DHT (C4), JPG (C8) and DAC (CC). Its body: precision, height, width.
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            if position + 9 > len(data):
                break
            height, width = struct.unpack_from(">HH", data, position + 5)
            return width, height, width * height
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            break
        position += 2 + length
    raise HeaderError("its JPEG header has no frame header giving its size")


def _png(data: bytes) -> tuple[int, int, int]:
    if len(data) < 24 or data[12:16] != b"IHDR":
        raise HeaderError("its PNG header has no IHDR chunk first")
    width, height = struct.unpack_from(">II", data, 16)
    return width, height, width * height


def _gif(data: bytes) -> tuple[int, int, int]:
    if len(data) < 13:
        raise HeaderError("its GIF header is cut short")
    flags = data[10]
    position = 13 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0)  # past the global colour table
    frames: list[tuple[int, int]] = []
    while position < len(data):
        block = data[position]
        if block == 0x3B:  # trailer
            break
        if block == 0x21:  # extension: label, then data sub-blocks
            position = _skip_sub_blocks(data, position + 2)
        elif block == 0x2C:  # image descriptor: left, top, width, height, flags
            if position + 10 > len(data):
                break
            width, height = struct.unpack_from("<HH", data, position + 5)
            frames.append((width, height))
            local = data[position + 9]
            position += 10 + (3 << ((local & 7) + 1) if local & 0x80 else 0)
            position = _skip_sub_blocks(data, position + 1)  # past the LZW code size
        else:
            break  # what giflib does after this is its own affair: the frames so far are what it can read
    if not frames:
        raise HeaderError("its GIF header describes no frame")
    width, height = max(w for w, _ in frames), max(h for _, h in frames)
    return width, height, width * height + sum(w * h for w, h in frames)


def _skip_sub_blocks(data: bytes, position: int) -> int:
    while position < len(data):
        size = data[position]
        position += 1 + size
        if size == 0:
            break
    return position


def _bmp(data: bytes) -> tuple[int, int, int]:
    if len(data) < 26:
        raise HeaderError("its BMP header is cut short")
    (header_size,) = struct.unpack_from("<I", data, 14)
    if header_size == 12:  # the old OS/2 header: 16-bit sizes
        width, height = struct.unpack_from("<hh", data, 18)
    else:
        width, height = struct.unpack_from("<ii", data, 18)
    return width, abs(height), width * abs(height)


def _webp(data: bytes) -> tuple[int, int, int]:
    chunk = data[12:16]
    body = 20
    if chunk == b"VP8X" and len(data) >= body + 10:
        width = 1 + int.from_bytes(data[body + 4 : body + 7], "little")
        height = 1 + int.from_bytes(data[body + 7 : body + 10], "little")
        return width, height, width * height
    if chunk == b"VP8 " and len(data) >= body + 10 and data[body + 3 : body + 6] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", data, body + 6)
        return width & 0x3FFF, height & 0x3FFF, (width & 0x3FFF) * (height & 0x3FFF)
    if chunk == b"VP8L" and len(data) >= body + 5 and data[body] == 0x2F:
        (bits,) = struct.unpack_from("<I", data, body + 1)
        width, height = 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
        return width, height, width * height
    raise HeaderError("its WebP header has no VP8X, VP8 or VP8L chunk giving its size")


_PARSERS = {"JPEG": _jpeg, "PNG": _png, "GIF": _gif, "BMP": _bmp, "WebP": _webp}
