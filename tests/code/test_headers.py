"""The decode gate's header parsers: the size TensorFlow's decoder will make, before anything is decoded."""

import io

import numpy as np
import pytest
from PIL import Image

from tests.helpers import bomb_png
from transfer.data.headers import HeaderError, decoded_size, image_format

SIZES = [(37, 21), (8, 300), (640, 480)]


def _encoded(width: int, height: int, kind: str, **options) -> bytes:
    rng = np.random.default_rng(width * height)
    image = Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))
    out = io.BytesIO()
    image.save(out, format=kind, **options)
    return out.getvalue()


@pytest.mark.parametrize("width,height", SIZES)
@pytest.mark.parametrize("kind,options", [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}),
                                          ("GIF", {}), ("BMP", {}), ("WEBP", {"lossless": False}),
                                          ("WEBP", {"lossless": True})])
def test_every_format_gives_the_size_tensorflow_decodes_it_to(width, height, kind, options):
    import tensorflow as tf

    data = _encoded(width, height, kind, **options)
    size = decoded_size(data)
    decoded = tf.io.decode_image(data, channels=3, expand_animations=False)
    assert (size.height, size.width) == tuple(decoded.shape[:2])
    assert size.pixels >= width * height


def test_a_png_that_pillow_refuses_for_a_bad_text_checksum_has_its_size_read_as_tensorflow_decodes_it():
    """The bypass: Pillow gives up on the broken tEXt chunk, so a bound that trusts Pillow lets the file through,
    while TensorFlow decodes every pixel (at 20000x20000, 7 GB; here a size that is cheap to decode)."""
    import tensorflow as tf

    data = bomb_png(1500, 1000)
    with pytest.raises(Exception):  # noqa: B017 (whatever Pillow raises: it is not the gate)
        Image.open(io.BytesIO(data)).load()
    assert tuple(tf.io.decode_image(data, channels=3, expand_animations=False).shape) == (1000, 1500, 3)
    size = decoded_size(data)
    assert (size.width, size.height, size.pixels) == (1500, 1000, 1_500_000)
    assert decoded_size(bomb_png()).pixels == 400_000_000


def test_an_animated_gif_counts_its_canvas_and_every_frame():
    frames = [Image.new("RGB", (40, 30), (index * 40, 0, 0)) for index in range(5)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=50)
    size = decoded_size(out.getvalue())
    assert (size.width, size.height) == (40, 30)
    assert size.pixels >= 40 * 30 * 5


@pytest.mark.parametrize("data,why", [
    (b"", "not a JPEG, PNG, GIF, BMP or WebP"),
    (b"hello, world: plain text", "not a JPEG, PNG, GIF, BMP or WebP"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "no frame header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dtEXt", "no IHDR chunk first"),
    (b"GIF89a\x10\x00\x10\x00\x00\x00\x00;", "describes no frame"),
    (b"BM\x00\x00", "cut short"),
    (b"RIFF\x10\x00\x00\x00WEBPJUNK", "no VP8X, VP8 or VP8L"),
])
def test_a_header_that_gives_no_size_is_an_error_naming_why(data, why):
    with pytest.raises(HeaderError, match=why):
        decoded_size(data)


def test_the_format_is_picked_by_content_as_the_decoder_picks_it():
    assert image_format(_encoded(9, 9, "PNG")) == "PNG"
    assert image_format(_encoded(9, 9, "JPEG")) == "JPEG"
    assert image_format(b"II*\x00 a TIFF") is None
