"""Hostile raw files for the bad-input catalogue: byte-level fakes Pillow will not write by itself."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def png_16bit(samples: np.ndarray) -> bytes:
    """A PNG with 16 bits per sample: HxW (grey) or HxWx3 (RGB) uint16."""
    colour_type = 2 if samples.ndim == 3 else 0
    height, width = samples.shape[:2]
    rows = b"".join(b"\0" + samples[y].astype(">u2").tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares width x height 8-bit RGB pixels: a decompression bomb's calling card."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return PNG_SIGNATURE + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b"")


def tiff_16bit_rgb(samples: np.ndarray) -> bytes:
    """An uncompressed little-endian RGB TIFF with 16 bits per sample (HxWx3 uint16)."""
    height, width, _ = samples.shape
    pixels = samples.astype("<u2").tobytes()
    n_entries = 9
    ifd_offset = 8
    bits_offset = ifd_offset + 2 + n_entries * 12 + 4
    data_offset = bits_offset + 6
    short = lambda tag, value: struct.pack("<HHIHH", tag, 3, 1, value, 0)  # noqa: E731
    long_ = lambda tag, value: struct.pack("<HHII", tag, 4, 1, value)  # noqa: E731
    entries = [
        short(256, width), short(257, height), struct.pack("<HHII", 258, 3, 3, bits_offset), short(259, 1), short(262, 2),
        long_(273, data_offset), short(277, 3), short(278, height), long_(279, len(pixels)),
    ]
    assert len(entries) == n_entries
    return b"II*\0" + struct.pack("<I", ifd_offset) + struct.pack("<H", n_entries) + b"".join(entries) + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + pixels


def encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def multipage_tiff(pages: list[np.ndarray]) -> bytes:
    first, *rest = [Image.fromarray(p) for p in pages]
    return encode(first, "TIFF", save_all=True, append_images=rest)


def with_orientation(pixels: np.ndarray, fmt: str, orientation: int) -> bytes:
    """An image whose EXIF says viewers must rotate it (orientation 6: 90 degrees clockwise)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    if fmt == "TIFF":
        return encode(Image.fromarray(pixels), fmt, tiffinfo={0x0112: orientation})
    return encode(Image.fromarray(pixels), fmt, exif=exif.tobytes())


def transparent(pixels: np.ndarray, alpha: int) -> bytes:
    rgba = np.dstack([pixels, np.full(pixels.shape[:2], 255, np.uint8)])
    rgba[:10, :10, 3] = alpha
    return encode(Image.fromarray(rgba, "RGBA"), "PNG")
