"""One pixel limit for every image the project decodes, read from the header before decoding.

A decoder allocates what the header declares, and a header costs a few bytes: a 34-byte
lossless WebP of a blank 16383x16383 canvas decodes to 805 MB, a 48 KB PNG of zeros to
1.2 GB, a 600-byte GIF whose 8x8 screen holds two frames of 20000x1 and 1x20000 pixels
to 1.2 GB (TensorFlow sizes a GIF by its largest frame width and height, not by its
screen), and TF Serving decodes up to ten images of a request at once. So every image
is sized from its header and refused above :data:`MAX_PIXELS` before it is decoded: by
the scan (a refused file is left out of training, with the reason in
``data_report.json``), by ``predict``, by explanations, and inside the exported
SavedModel (TF Serving runs no Python, so the reader is written in TensorFlow ops, and
the Python check runs the very same ops).

The header is read the way ``tf.io.decode_image`` reads it, format by format, in the
order it tells formats apart:

- JPEG: ``tf.io.extract_jpeg_shape`` (libjpeg's own header reader).
- PNG: the IHDR chunk.
- GIF (``GIF8``): every frame's image descriptor, walking past colour tables, extension
  blocks and image data. TensorFlow decodes onto a canvas of the largest frame width by
  the largest frame height (the screen size is ignored; it counts here too), and giflib
  holds every frame in memory at once, so both the canvas and the frames' total are
  limited.
- BMP: width and height (a negative height means top-down rows).
- WebP: the first chunk: VP8 (lossy), VP8L (lossless) or VP8X (extended: the canvas,
  which the image inside must match). An animated WebP is refused by the decoder itself
  at 3 channels.
- JPEG XL, which this TensorFlow build decodes too, is refused: its frames may be larger
  than the image its header declares, so no header check bounds what decoding allocates.

A format the decoder tells apart but whose size cannot be read here is refused, never
trusted. Bytes of no image format are left to the decoder, which refuses them itself.
"""

import os

import tensorflow as tf

from keras_caltech.errors import UserError

# Decoding is measured at about 3x the decoded size at its peak (a 10000x10000 JPEG:
# ~900 MB), and the scan, the pipeline and TF Serving decode several images at once. 50 MP
# (about 150 MB decoded) is far beyond what a classifier at 224 px can use.
MAX_PIXELS = 50_000_000

_UNKNOWN, _JPEG, _PNG, _GIF, _BMP, _WEBP, _JPEG_XL = range(7)
_FORMAT_NAMES = ("unknown", "JPEG", "PNG", "GIF", "BMP", "WebP", "JPEG XL")
_HEADER_BYTES = 32  # every field read at a fixed offset lies in a file's first 32 bytes
_PADDING = 32  # zero bytes after the data, so reads past the end of a short file see zeros
_UNREADABLE = -1  # the width and height of a header that cannot be read
_WHERE = "MAX_PIXELS in keras_caltech/data/pixel_limit.py"
_GIF_RUN = 32  # full 255-byte sub-blocks a GIF walk skips in one step
_GIF_MAX_STEPS = 20_000  # about 60 microseconds each: a GIF is sized in about a second at most


class ImageRefused(UserError):
    """An image refused from its header, before decoding.

    Attributes:
        reason: why, without naming the image (the scan lists it beside the file's path).
    """

    def __init__(self, what, reason):
        super().__init__(f"{what}: {reason}")
        self.reason = reason


def check_pixels(data_or_path, what=None):
    """Refuses an image that would decode to more than :data:`MAX_PIXELS` pixels, reading its header only.

    Args:
        data_or_path: the encoded image (bytes or a scalar string tensor), or its file path.
        what: names the image in the error message; defaults to the path (or "the image").

    Returns:
        (width, height) as ``tf.io.decode_image`` will decode it (for a GIF: its largest
        frame width and height, or its screen's if larger), or None for bytes of no image
        format TensorFlow decodes (decoding them fails with TensorFlow's own message).

    Raises:
        ImageRefused: a UserError: too many pixels, or a size that cannot be read from the
            header (JPEG XL, a damaged header, a GIF of too many blocks). The message names
            the image, its size and the limit.
        UserError: the file cannot be read.
    """
    if isinstance(data_or_path, (str, os.PathLike)):
        what = what or str(data_or_path)
        try:
            with open(data_or_path, "rb") as file:
                data_or_path = file.read()
        except OSError as error:
            raise UserError(f"cannot read image file {data_or_path}: {error.strerror or error}") from None
    what = what or "the image"
    try:
        fields = _read_header(tf.constant(data_or_path)).numpy()
    except tf.errors.InvalidArgumentError:  # libjpeg cannot read the JPEG header
        fields = (_JPEG, _UNREADABLE, _UNREADABLE, _UNREADABLE)
    image_format, width, height, stored = (int(value) for value in fields)
    if image_format == _UNKNOWN:
        return None
    if image_format == _JPEG_XL:
        raise ImageRefused(what, "JPEG XL is refused: its frames may be larger than the image its header declares, "
                                 "so decoding cannot be bounded beforehand; convert it to PNG or JPEG")
    if width == _UNREADABLE:
        raise ImageRefused(what, f"its size cannot be read from its {_FORMAT_NAMES[image_format]} header (a damaged "
                                 f"or unusual file, or a GIF of more than {_GIF_MAX_STEPS} blocks), so it is "
                                 "refused rather than decoded blind")
    if width * height > MAX_PIXELS:
        raise ImageRefused(what, f"too large ({width}x{height} pixels; limit {MAX_PIXELS} pixels, {_WHERE})")
    if stored > MAX_PIXELS:
        raise ImageRefused(what, f"too large (a GIF whose frames hold {stored} pixels in all; limit {MAX_PIXELS} "
                                 f"pixels, {_WHERE})")
    return width, height


def assert_pixel_limit(encoded):
    """Returns ``encoded`` once its header shows it decodes within :data:`MAX_PIXELS`: graph ops only.

    For graphs that run without Python (the exported SavedModel): decode the returned
    tensor, so decoding runs only after the check passed.

    Args:
        encoded: scalar string tensor, encoded image bytes.

    Returns:
        ``encoded``, unchanged.

    Raises:
        tf.errors.InvalidArgumentError (when run): the size cannot be read from the header
            (JPEG XL, a damaged header, a GIF of too many blocks) or exceeds the limit; the
            message names the limit.
    """
    fields = _header_fields(encoded)  # [format, width, height, pixels stored in all frames]
    width, height, stored = fields[1], fields[2], fields[3]
    readable = tf.debugging.Assert(width >= 0, [
        "image refused: its size cannot be read from its header (JPEG XL, a damaged header, or a GIF of more "
        f"than {_GIF_MAX_STEPS} blocks), so it is not decoded; send JPEG, PNG, GIF, BMP or WebP"])
    # Each side is compared first: the product of two 32-bit sides can overflow int64.
    within = ((width <= MAX_PIXELS) & (height <= MAX_PIXELS) & (width * height <= MAX_PIXELS)
              & (stored <= MAX_PIXELS))
    small = tf.debugging.Assert(within, [
        f"image refused: larger than the limit of {MAX_PIXELS} pixels (width x height, or all frames of a GIF "
        "together), so it is not decoded; send a smaller image. Width, height, pixels in all frames:",
        width, height, stored])
    with tf.control_dependencies([readable, small]):
        return tf.identity(encoded)


def _header_fields(encoded):
    """int64 (4,): [format code, width, height, pixels held in memory while decoding].

    Width and height are those ``tf.io.decode_image`` decodes to (a GIF's screen counts
    too, when larger than its frames); the last field is width x height except for a GIF
    (every frame's pixels). Unknown formats give zeros, a known format whose size cannot be
    read gives ``_UNREADABLE``.
    """
    # The first bytes hold every format's size but JPEG's (libjpeg finds it) and GIF's frames.
    head, head_length = _bytes(tf.strings.substr(encoded, 0, _HEADER_BYTES))
    image_format = _classify(head, head_length)

    def unknown():
        return tf.constant([0, 0, 0], tf.int64)

    def jpeg():
        height, width = tf.unstack(tf.io.extract_jpeg_shape(encoded, output_type=tf.int64)[:2])
        return tf.stack([width, height, width * height])

    branches = [unknown, jpeg, lambda: _png_size(head), lambda: _gif_size(*_bytes(encoded)),
                lambda: _bmp_size(head), lambda: _webp_size(head), _unreadable]
    size = tf.switch_case(tf.cast(image_format, tf.int32), branches)
    return tf.concat([image_format[None], size], axis=0)


_read_header = tf.function(_header_fields, input_signature=[tf.TensorSpec((), tf.string)], autograph=False)


def _bytes(encoded):
    """(uint8 (length + _PADDING,), length): the bytes, then zeros, so reads past the end see zeros."""
    data = tf.io.decode_raw(encoded, tf.uint8)  # (length,)
    return tf.concat([data, tf.zeros([_PADDING], tf.uint8)], axis=0), tf.size(data, out_type=tf.int64)


def _classify(data, length):
    """The format code, told apart by magic bytes in the order ``tf.io.decode_image`` does.

    Args:
        data: the file's first bytes, padded (see :func:`_bytes`).
        length: how many of them are the file's (at most ``_HEADER_BYTES``).
    """
    checks = [_starts(data, b"\xff\xd8\xff"), _starts(data, b"\x89PNG\r\n\x1a\n"), _starts(data, b"GIF8"),
              _starts(data, b"BM"), _starts(data, b"RIFF") & (length > 12) & _starts(data, b"WEBP", 8),
              (_starts(data, b"\xff\x0a") & (length >= 2))
              | _starts(data, b"\x00\x00\x00\x0cJXL \x0d\x0a\x87\x0a"), tf.constant(True)]
    first = tf.argmax(tf.cast(tf.stack(checks), tf.int32), output_type=tf.int64)  # the first that matches
    return tf.where(first == len(checks) - 1, tf.constant(_UNKNOWN, tf.int64), first + 1)


def _starts(data, magic, offset=0):
    return tf.reduce_all(data[offset:offset + len(magic)] == tf.constant(list(magic), tf.uint8))


def _unsigned(data, offset, size, big_endian=False):
    """The unsigned integer of ``size`` bytes at ``offset`` (a tensor or an int); past the end: zeros."""
    last = tf.size(data, out_type=tf.int64) - 1
    positions = tf.minimum(tf.cast(offset, tf.int64) + tf.range(size, dtype=tf.int64), last)
    values = tf.cast(tf.gather(data, positions), tf.int64)
    shifts = tf.range(size, dtype=tf.int64) * 8
    return tf.reduce_sum(tf.bitwise.left_shift(values, tf.reverse(shifts, [0]) if big_endian else shifts))


def _sized(width, height):
    return tf.stack([width, height, width * height])


def _unreadable():
    return tf.constant([_UNREADABLE, _UNREADABLE, _UNREADABLE], tf.int64)


def _png_size(data):
    # IHDR must be the first chunk: length (4 bytes), type, then width and height, big-endian.
    return tf.cond(_starts(data, b"IHDR", 12),
                   lambda: _sized(_unsigned(data, 16, 4, big_endian=True), _unsigned(data, 20, 4, big_endian=True)),
                   _unreadable)


def _bmp_size(data):
    def magnitude(value):  # a signed 32-bit field; a negative height means rows stored top-down
        return tf.abs(tf.where(value >= 2 ** 31, value - 2 ** 32, value))

    return _sized(magnitude(_unsigned(data, 18, 4)), magnitude(_unsigned(data, 22, 4)))


def _webp_size(data):
    """The first chunk after ``RIFF....WEBP``: VP8, VP8L or VP8X (any other is not sized)."""
    fourteen_bits = (1 << 14) - 1
    lossless = _unsigned(data, 21, 4)  # after the 0x2f signature: 14 bits width - 1, 14 bits height - 1
    cases = [
        # VP8: 3-byte frame tag, start code 9d 01 2a, then 14-bit width and height (2 scale bits each).
        (_starts(data, b"VP8 ", 12) & _starts(data, b"\x9d\x01\x2a", 23),
         lambda: _sized(_unsigned(data, 26, 2) & fourteen_bits, _unsigned(data, 28, 2) & fourteen_bits)),
        (_starts(data, b"VP8L", 12) & _starts(data, b"\x2f", 20),
         lambda: _sized((lossless & fourteen_bits) + 1, (tf.bitwise.right_shift(lossless, 14) & fourteen_bits) + 1)),
        # VP8X: flags (4 bytes), then canvas width - 1 and height - 1, 24 bits each.
        (_starts(data, b"VP8X", 12), lambda: _sized(_unsigned(data, 24, 3) + 1, _unsigned(data, 27, 3) + 1)),
    ]
    return tf.case(cases, default=_unreadable, exclusive=True)


def _colour_table_bytes(packed):
    """Bytes of the colour table announced by a GIF packed-fields byte (flag 0x80, size in its low 3 bits)."""
    return tf.where(packed >= 128, 3 * tf.bitwise.left_shift(tf.constant(2, tf.int64), packed & 7), 0)


def _gif_size(data, length):
    """(canvas width, canvas height, pixels of all frames) from every image descriptor of a GIF.

    Blocks after the screen descriptor and global colour table: an image descriptor
    (0x2C, then left, top, width, height, packed fields, a local colour table, the LZW
    code size and data sub-blocks), an extension (0x21, a label, data sub-blocks) or the
    trailer (0x3B; giflib refuses anything else). Data sub-blocks are a length byte and
    that many bytes, ended by a zero length.

    One step reads a block, or a sub-block, or a run of up to ``_GIF_RUN`` full (255-byte)
    sub-blocks, which is what encoders write; a file that needs more than
    ``_GIF_MAX_STEPS`` steps (tiny sub-blocks, sized at a few microseconds each) is
    refused as unreadable, so sizing a GIF never costs more than about a second.
    """
    zero = tf.constant(0, tf.int64)
    last = tf.size(data, out_type=tf.int64) - 1
    # Read in one step: the byte at the position and the 10 after it (a descriptor), then
    # where the next sub-block lengths are if the one at the position and the next are full.
    offsets = tf.concat([tf.range(11, dtype=tf.int64), 256 * tf.range(1, _GIF_RUN + 1, dtype=tf.int64)], 0)
    run_lengths = tf.range(_GIF_RUN + 1, dtype=tf.int64)
    no_end = tf.constant(_GIF_RUN + 1, tf.int64)

    def keep_walking(position, in_sub_blocks, width, height, total, done):
        return ~done & (position < length)

    def step(position, in_sub_blocks, width, height, total, done):
        window = tf.cast(tf.gather(data, tf.minimum(position + offsets, last)), tf.int64)
        descriptor, byte = window[:11], window[0]  # descriptor[i]: the byte at position + i
        lengths = tf.concat([window[:1], window[11:]], 0)  # at position + 256 * i, i = 0 .. _GIF_RUN
        full_run = tf.reduce_min(tf.where(lengths == 255, no_end, run_lengths))  # full sub-blocks in a row
        is_image = ~in_sub_blocks & (byte == 0x2C)
        is_extension = ~in_sub_blocks & (byte == 0x21)
        frame_width, frame_height = descriptor[5] + 256 * descriptor[6], descriptor[7] + 256 * descriptor[8]
        after_sub_blocks = tf.where(full_run > 0, position + 256 * full_run, position + 1 + byte)
        after_block = tf.where(is_image, position + 11 + _colour_table_bytes(descriptor[9]), position + 2)
        done = ~in_sub_blocks & ~is_image & ~is_extension
        return (tf.where(in_sub_blocks, after_sub_blocks, after_block),
                tf.where(in_sub_blocks, byte != 0, is_image | is_extension),
                tf.where(is_image, tf.maximum(width, frame_width), width),
                tf.where(is_image, tf.maximum(height, frame_height), height),
                total + tf.where(is_image, frame_width * frame_height, zero), done)

    position, _, width, height, total, done = tf.while_loop(
        keep_walking, step, (13 + _colour_table_bytes(_unsigned(data, 10, 1)), tf.constant(False),
                             _unsigned(data, 6, 2), _unsigned(data, 8, 2), zero, tf.constant(False)),
        maximum_iterations=_GIF_MAX_STEPS)
    finished = done | (position >= length)  # at the trailer, or at the end of a truncated file
    return tf.where(finished, tf.stack([width, height, total]), _unreadable())
