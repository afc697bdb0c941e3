"""The per-image work: decode each image once and derive every fact the later stages need from that decode."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import warnings
from pathlib import Path

import imagehash
import numpy as np
from PIL import Image, UnidentifiedImageError

from pipeline.dedup import centre_hash
from pipeline.records import DecodeFailure, ImageFacts

# TIFF compressions that give back the scanned pixels exactly; anything else is re-encoded as PNG.
_LOSSLESS_TIFF = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits", None}
_EXIF_ORIENTATION = 0x0112


class ImageRejected(ValueError):
    """An image that cannot be published; the message is the ledger's reason."""


def sharpness(grey: np.ndarray) -> float:
    """Variance of the 4-neighbour Laplacian: drops sharply when a cell is refocused (blurred)."""
    g = grey.astype(np.float32)
    lap = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]
    return float(lap.var())


def phash_int(img: Image.Image) -> int:
    return int(str(imagehash.phash(img)), 16)


def pixel_sha256(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def _to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """The image as 8-bit RGB, and whether its file bytes can be published unchanged."""
    if img.mode == "RGB":
        return img, True
    if img.mode in ("P", "L"):
        # Palette and grey images convert to RGB without loss; they are republished as PNG.
        return img.convert("RGB"), False
    if img.mode == "RGBA":
        alpha = np.asarray(img.getchannel("A"))
        if alpha.min() < 255:
            raise ImageRejected("RGBA image with transparent pixels: cannot convert to RGB without loss")
        return img.convert("RGB"), False
    raise ImageRejected(f"unsupported image mode {img.mode!r} (expected 8-bit RGB)")


def open_rgb(data: bytes, expected_size: tuple[int, int]) -> tuple[Image.Image, np.ndarray, bool, str]:
    """Decode image bytes into RGB pixels; raise ImageRejected with the reason when unusable."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
    except (UnidentifiedImageError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected("not a readable image (unknown or unsupported format)" if isinstance(exc, UnidentifiedImageError) else f"not a readable image: {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(f"corrupt or truncated image: {exc}") from None
    if getattr(img, "n_frames", 1) > 1:
        raise ImageRejected(f"multi-page image ({img.n_frames} frames): expected one image per file")
    if img.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None):
        raise ImageRejected("EXIF orientation tag set: the stored pixels are not upright; re-export without it")
    if img.size != expected_size:
        raise ImageRejected(f"wrong size {img.size[0]}x{img.size[1]}, expected {expected_size[0]}x{expected_size[1]}")
    fmt = img.format or "UNKNOWN"
    rgb_img, unchanged = _to_rgb(img)
    lossless_format = fmt == "PNG" or (fmt == "TIFF" and img.info.get("compression") in _LOSSLESS_TIFF)
    return rgb_img, np.asarray(rgb_img, dtype=np.uint8), unchanged and lossless_format, fmt


def decode_image(data: bytes, relpath: str, label: str, expected_size: tuple[int, int]) -> tuple[ImageFacts, np.ndarray]:
    rgb_img, rgb, lossless, fmt = open_rgb(data, expected_size)
    facts = ImageFacts(
        relpath=relpath,
        label=label,
        pixel_sha256=pixel_sha256(rgb),
        phash=phash_int(rgb_img),
        width=rgb.shape[1],
        height=rgb.shape[0],
        sharpness=sharpness(np.asarray(rgb_img.convert("L"))),
        lossless=lossless,
        file_format=fmt,
        centre_hash=centre_hash(rgb),
    )
    return facts, rgb


def decode_file(path: Path, relpath: str, label: str, expected_size: tuple[int, int]) -> ImageFacts | DecodeFailure:
    """The per-image task run in worker processes: one read, one decode, every hash."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return DecodeFailure(relpath, f"cannot read file: {exc.strerror or exc}")
    file_sha = hashlib.sha256(data).hexdigest()
    try:
        facts, _ = decode_image(data, relpath, label, expected_size)
    except ImageRejected as exc:
        return DecodeFailure(relpath, str(exc), file_sha)
    return dataclasses.replace(facts, file_sha256=file_sha)


def load_rgb(path: Path, expected_size: tuple[int, int]) -> np.ndarray:
    """Pixels of an image already accepted by decode_file (used for the few pairs dedup compares)."""
    return open_rgb(path.read_bytes(), expected_size)[1]


def publishable_bytes(path: Path, facts: ImageFacts) -> bytes:
    """The bytes a release stores: the file as it is when lossless RGB, else a PNG of the decoded pixels."""
    data = path.read_bytes()
    if facts.lossless:
        return data
    rgb_img, _, _, _ = open_rgb(data, (facts.width, facts.height))
    buf = io.BytesIO()
    rgb_img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()
