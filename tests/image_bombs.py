"""Decompression bombs, made on the fly: a few bytes whose header declares a huge image.

Each is a valid file of its format (TensorFlow decodes it, at a size only the header
reveals) unless said otherwise. Tests that could decode one, if the pixel limit failed,
decode it in a subprocess under an address-space limit (:func:`run_limited`), so a
regression fails the test instead of exhausting the machine.
"""

import io
import resource
import subprocess
import sys
import zlib

import cv2
import numpy as np
from PIL import Image

# TensorFlow answering a legal 50 MP image with a SavedModel loaded peaks at about 2.7 GB of
# address space. 4.5 GB leaves room for that, while a regression that decodes the bombs
# (805 MB to 1.2 GB each, several at once) fails an allocation instead of the machine.
ADDRESS_SPACE_LIMIT = 4_500 * 2 ** 20


def lossless_webp(width, height):
    """A 34-byte lossless WebP (VP8L) of a blank ``width`` x ``height`` canvas (sides up to 16384).

    A blank picture costs no bits per pixel, so the bitstream of a small one decodes at any
    size: only the 14-bit sides in its header are changed.
    """
    # Quality above 100 is lossless.
    ok, encoded = cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])
    encoded = bytearray(encoded)
    assert ok and encoded[12:16] == b"VP8L" and encoded[20] == 0x2F
    fields = int.from_bytes(encoded[21:25], "little") & ~((1 << 28) - 1)  # keep the alpha and version bits
    encoded[21:25] = (fields | (width - 1) | ((height - 1) << 14)).to_bytes(4, "little")
    return bytes(encoded)


def extended_webp(width, height, canvas=None):
    """An extended WebP: a VP8X chunk declaring ``canvas`` (default the image size), then the VP8L image."""
    canvas_width, canvas_height = canvas or (width, height)
    image = lossless_webp(width, height)[12:]  # the VP8L chunk
    vp8x = (b"VP8X" + (10).to_bytes(4, "little") + bytes(4) + (canvas_width - 1).to_bytes(3, "little")
            + (canvas_height - 1).to_bytes(3, "little"))
    body = b"WEBP" + vp8x + image
    return b"RIFF" + len(body).to_bytes(4, "little") + body


def blank_png(width, height):
    """A 1-bit greyscale PNG of zeros, compressed row by row (20000x20000: about 48 KB, never 50 MB in memory)."""
    def chunk(kind, payload):
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])  # 1 bit, grey
    compressor = zlib.compressobj(9)
    row = bytes(1 + (width + 7) // 8)  # filter byte "none", then the packed pixels
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def bmp_header(width, height):
    """The first 54 bytes of a 24-bit BMP (a negative height: rows top-down); no pixel data follows."""
    return (b"BM" + (54).to_bytes(4, "little") + bytes(4) + (54).to_bytes(4, "little") + (40).to_bytes(4, "little")
            + width.to_bytes(4, "little", signed=True) + height.to_bytes(4, "little", signed=True)
            + (1).to_bytes(2, "little") + (24).to_bytes(2, "little") + bytes(24))


def _gif_frame(width, height):
    """(screen descriptor with its colour table, image descriptor with its data) of a blank frame, by PIL."""
    buffer = io.BytesIO()
    Image.new("P", (width, height), 0).save(buffer, "GIF", interlace=False)
    encoded = buffer.getvalue()
    table = 3 * 2 ** ((encoded[10] & 7) + 1) if encoded[10] & 0x80 else 0
    assert encoded[13 + table] == 0x2C and encoded[-1:] == b";"
    return encoded[:13 + table], encoded[13 + table:-1]


EXTENSIONS = (b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"  # application: loop forever
              b"\x21\xfe\x05first\x06second\x00"  # comment, in two sub-blocks
              b"\x21\xf9\x04\x00\x00\x00\x00\x00")  # graphic control


def gif(frames, screen=(8, 8), declared=None, local_table=False):
    """A GIF of blank frames on a small screen, with extension blocks before every frame.

    Args:
        frames: (width, height) of each frame; each is a valid, decodable frame.
        screen: the logical screen size (TensorFlow ignores it; the largest frame sets the canvas).
        declared: {frame index: (width, height)}: descriptors that claim another size than their
            data holds (the file no longer decodes, but its header is the bomb).
        local_table: give every frame a local colour table of 256 entries (768 bytes to walk past).
    """
    head, parts = None, []
    for index, (width, height) in enumerate(frames):
        head, block = _gif_frame(width, height)
        block = bytearray(block)
        if index in (declared or {}):
            block[5:9] = b"".join(side.to_bytes(2, "little") for side in declared[index])
        if local_table:
            assert not block[9] & 0x80, "the frame has a local colour table already"
            block[9] |= 0x80 | 7
            block[10:10] = bytes(768)
        parts.append(EXTENSIONS + bytes(block))
    head = bytearray(head)
    head[6:10] = b"".join(side.to_bytes(2, "little") for side in screen)
    return bytes(head) + b"".join(parts) + b";"


def limit_address_space():
    """preexec_fn of a subprocess: an allocation beyond :data:`ADDRESS_SPACE_LIMIT` fails instead of swapping."""
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE_LIMIT, ADDRESS_SPACE_LIMIT))


def run_limited(arguments, **kwargs):
    """Runs ``python ARGUMENTS`` under the address-space limit; returns the CompletedProcess.

    A timeout too: under a memory limit TensorFlow can spin on a failed thread start
    rather than exit.
    """
    return subprocess.run([sys.executable, *arguments], preexec_fn=limit_address_space, capture_output=True,
                          text=True, timeout=kwargs.pop("timeout", 300), **kwargs)
