"""The pixel limit: every format's size read from its header equals what TensorFlow decodes,
decompression bombs made on the fly are refused before decoding, and what cannot be sized
is refused, not trusted. The same graph ops run eagerly and inside tf.data."""

import io

import cv2
import image_bombs
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_caltech.data import pixel_limit
from keras_caltech.data.pixel_limit import MAX_PIXELS, ImageRefused, assert_pixel_limit, check_pixels
from keras_caltech.errors import UserError

PIXELS = np.random.default_rng(0).integers(0, 256, size=(40, 50, 3), dtype=np.uint8)


def _saved(image, image_format, **options):
    buffer = io.BytesIO()
    image.save(buffer, image_format, **options)
    return buffer.getvalue()


def _top_down_bmp():
    """A BMP with a negative height (rows stored top-down), as some writers save them."""
    encoded = bytearray(_saved(Image.fromarray(PIXELS), "BMP"))
    height = int.from_bytes(encoded[22:26], "little", signed=True)
    encoded[22:26] = (-height).to_bytes(4, "little", signed=True)
    return bytes(encoded)


GOOD_IMAGES = {
    "jpeg": lambda: _saved(Image.fromarray(PIXELS), "JPEG"),
    "progressive jpeg": lambda: _saved(Image.fromarray(PIXELS), "JPEG", progressive=True),
    "grey jpeg": lambda: _saved(Image.fromarray(PIXELS[..., 0]), "JPEG"),
    "cmyk jpeg": lambda: _saved(Image.fromarray(PIXELS).convert("CMYK"), "JPEG"),
    "png": lambda: _saved(Image.fromarray(PIXELS), "PNG"),
    "interlaced png with alpha": lambda: _saved(Image.fromarray(np.dstack([PIXELS, PIXELS[..., 0]])), "PNG",
                                                interlace=1),
    "animated gif": lambda: _saved(Image.fromarray(PIXELS), "GIF", save_all=True,
                                   append_images=[Image.fromarray(PIXELS[::-1])]),
    "gif with extensions, local colour tables and frames of two sizes": lambda: image_bombs.gif(
        [(30, 20), (10, 40)], screen=(30, 40), local_table=True),
    "bmp": lambda: _saved(Image.fromarray(PIXELS), "BMP"),
    "top-down bmp": _top_down_bmp,
    "lossy webp": lambda: cv2.imencode(".webp", PIXELS, [cv2.IMWRITE_WEBP_QUALITY, 80])[1].tobytes(),
    "lossless webp": lambda: cv2.imencode(".webp", PIXELS, [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes(),
    "extended webp": lambda: image_bombs.extended_webp(50, 40),
}

BOMBS = {  # (encoded bytes, the size the message must give)
    "lossless webp of 16383x16383": (lambda: image_bombs.lossless_webp(16383, 16383), "16383x16383 pixels"),
    "webp whose VP8X canvas is 16383x16383": (lambda: image_bombs.extended_webp(8, 8, canvas=(16383, 16383)),
                                              "16383x16383 pixels"),
    "png of 20000x20000 zeros": (lambda: image_bombs.blank_png(20000, 20000), "20000x20000 pixels"),
    "png of 50010000 pixels": (lambda: image_bombs.blank_png(10000, 5001), "10000x5001 pixels"),
    "bmp of -20000 rows": (lambda: image_bombs.bmp_header(20000, -20000), "20000x20000 pixels"),
    "gif: 8x8 screen, 12000x12000 frame": (lambda: image_bombs.gif([(8, 8)], declared={0: (12000, 12000)}),
                                           "12000x12000 pixels"),
    "gif: a small first frame, then a 12000x12000 one": (
        lambda: image_bombs.gif([(8, 8), (8, 8)], declared={1: (12000, 12000)}, local_table=True),
        "12000x12000 pixels"),
    "gif: frames of 20000x1 and 1x20000": (lambda: image_bombs.gif([(20000, 1), (1, 20000)]), "20000x20000 pixels"),
    "gif: two 7000x7000 frames": (
        lambda: image_bombs.gif([(8, 8), (8, 8)], declared={0: (7000, 7000), 1: (7000, 7000)}),
        "frames hold 98000000 pixels in all"),
}

UNSIZABLE = {  # (encoded bytes, the part of the reason)
    "jpeg xl codestream": (b"\xff\x0a" + bytes(30), "JPEG XL is refused"),
    "jpeg xl container": (b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a" + bytes(30), "JPEG XL is refused"),
    "webp with an unknown first chunk": (b"RIFF\x20\x00\x00\x00WEBPABCD" + bytes(30), "from its WebP header"),
    "png without IHDR first": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDX" + bytes(30), "from its PNG header"),
    "jpeg with a broken header": (b"\xff\xd8\xff\xe0 not a JPEG header at all", "from its JPEG header"),
    "gif of 30000 tiny blocks": (image_bombs.gif([(8, 8)])[:-1].replace(
        image_bombs.EXTENSIONS, b"\x21\xfe" + b"\x01x" * 30000 + b"\x00", 1) + b";", "from its GIF header"),
}


@pytest.mark.parametrize("name", GOOD_IMAGES)
def test_the_header_gives_the_size_tensorflow_decodes_for_every_format(name):
    encoded = GOOD_IMAGES[name]()
    decoded = tf.io.decode_image(encoded, expand_animations=False)  # (height, width, channels)
    assert check_pixels(encoded, name) == (decoded.shape[1], decoded.shape[0])


def test_a_gif_is_sized_by_its_largest_frame_width_and_height_as_tensorflow_decodes_it():
    encoded = image_bombs.gif([(30, 2), (3, 20)])  # on an 8x8 screen
    assert tf.io.decode_image(encoded, expand_animations=False).shape[:2] == (20, 30)
    assert check_pixels(encoded) == (30, 20)


def test_a_gif_walk_skips_long_runs_of_full_sub_blocks():
    comment = b"\x21\xfe" + (b"\xff" + bytes(255)) * 1000 + b"\x05hello\x00"  # 1000 full sub-blocks, then 5 bytes
    encoded = image_bombs.gif([(8, 8), (8, 8)], declared={1: (12000, 12000)})
    after_first_frame = encoded.index(image_bombs.EXTENSIONS, 20)
    encoded = encoded[:after_first_frame] + comment + encoded[after_first_frame:]
    with pytest.raises(ImageRefused, match="12000x12000"):  # the frame after the comment was reached
        check_pixels(encoded)


@pytest.mark.parametrize("name", BOMBS)
def test_a_decompression_bomb_is_refused_from_its_header_naming_the_image_its_size_and_the_limit(name):
    make, size = BOMBS[name]
    with pytest.raises(ImageRefused) as refused:
        check_pixels(make(), "photo.jpg")
    message = str(refused.value)
    assert message.startswith("photo.jpg: too large (") and size in message, message
    assert f"limit {MAX_PIXELS} pixels, MAX_PIXELS in keras_caltech/data/pixel_limit.py" in message
    assert isinstance(refused.value, UserError) and refused.value.reason in message


def test_the_limit_includes_an_image_of_exactly_max_pixels():
    assert check_pixels(image_bombs.blank_png(10000, 5000)) == (10000, 5000)
    assert check_pixels(image_bombs.gif([(8, 8), (8, 8)], declared={0: (5000, 5000), 1: (5000, 5000)})) == (5000, 5000)


@pytest.mark.parametrize("name", UNSIZABLE)
def test_a_format_tensorflow_decodes_but_whose_size_cannot_be_read_is_refused_not_trusted(name):
    encoded, reason = UNSIZABLE[name]
    with pytest.raises(ImageRefused, match=reason):
        check_pixels(encoded, name)


@pytest.mark.parametrize("encoded", [b"", b"this is text, not an image", b"GIF"], ids=["empty", "text", "too short"])
def test_bytes_of_no_image_format_are_left_to_the_decoder(encoded):
    assert check_pixels(encoded) is None


def test_a_path_is_read_and_named_in_the_message(tmp_path):
    path = tmp_path / "huge.png"
    path.write_bytes(image_bombs.blank_png(20000, 20000))
    with pytest.raises(ImageRefused, match=f"^{path}: too large"):
        check_pixels(path)
    with pytest.raises(UserError, match="cannot read image file .*missing.png"):
        check_pixels(tmp_path / "missing.png")


def test_the_graph_check_passes_good_images_unchanged_and_refuses_bombs_inside_tf_data():
    good = [GOOD_IMAGES[name]() for name in ("jpeg", "animated gif", "lossless webp")]
    checked = tf.data.Dataset.from_tensor_slices(good).map(assert_pixel_limit)
    assert [element.numpy() for element in checked] == good

    for encoded, message in ((image_bombs.lossless_webp(16383, 16383), "larger than the limit of 50000000 pixels"),
                             (UNSIZABLE["jpeg xl codestream"][0], "its size cannot be read from its header")):
        refusing = tf.data.Dataset.from_tensor_slices([good[0], encoded]).map(assert_pixel_limit)
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            list(refusing)


def test_the_header_reader_gives_the_same_fields_eagerly_and_as_a_graph():
    for encoded in [GOOD_IMAGES["animated gif"](), image_bombs.gif([(20000, 1), (1, 20000)])]:
        eager = pixel_limit._header_fields(tf.constant(encoded)).numpy()
        assert eager.tolist() == pixel_limit._read_header(tf.constant(encoded)).numpy().tolist()


DECODE_AFTER_CHECK = r'''
import sys
import tensorflow as tf
from keras_caltech.data.pixel_limit import check_pixels
encoded = open(sys.argv[1], "rb").read()
print(check_pixels(encoded))
try:
    tf.io.decode_image(encoded, channels=3, expand_animations=False)
    print("decoded")
except tf.errors.InvalidArgumentError as error:
    print("refused by the decoder")
'''


def test_a_webp_canvas_bounds_the_image_inside_it(tmp_path):
    """The header check sizes an extended WebP by its VP8X canvas; libwebp refuses an image of another size
    before decoding it, so a small canvas around a 16383x16383 image costs nothing (decoded under a limit)."""
    (tmp_path / "inside.webp").write_bytes(image_bombs.extended_webp(16383, 16383, canvas=(8, 8)))
    result = image_bombs.run_limited(["-c", DECODE_AFTER_CHECK, str(tmp_path / "inside.webp")])
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["(8,", "8)", "refused", "by", "the", "decoder"]
