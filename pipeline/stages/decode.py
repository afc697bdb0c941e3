"""The per-image work: decode each image once and derive every fact the later stages need from that decode."""

from __future__ import annotations

import dataclasses
import hashlib
import io
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, features

from pipeline.stages.similarity import cell_features
from pipeline.stages.imagecheck import ImageRejected, decode_checked
from pipeline.stages.phash import phash, phash_of_grey
from pipeline.records import DecodeFailure, ImageFacts

# TIFF compressions that give back the scanned pixels exactly; anything else is re-encoded as PNG.
_LOSSLESS_TIFF = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits", None}
# Lossy formats whose RGB files are published as they came: re-encoding a JPEG losslessly inflates it about
# tenfold and adds nothing, since its decoded pixels (what pixel_sha256 and image_id hash) are the same either way.
_PUBLISHED_AS_LOSSY_ORIGINAL = {"JPEG"}


def phash_int(img: Image.Image) -> int:
    """imagehash.phash(img) as an unsigned 64-bit int (computed by pipeline.stages.phash, bit-identical and faster)."""
    return phash(img)


def pixel_sha256(rgb: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8)).hexdigest()


def open_rgb(data: bytes, expected_size: tuple[int, int]) -> tuple[Image.Image, np.ndarray, bool, str]:
    """Decode image bytes into RGB pixels; raise ImageRejected with the reason when unusable (rules: imagecheck).
    The flag: the file is lossless 8-bit RGB (its bytes are the scanned pixels exactly)."""
    rgb_img, unchanged, fmt = decode_checked(data, expected_size)
    return rgb_img, np.asarray(rgb_img, dtype=np.uint8), unchanged and _lossless_format(rgb_img, fmt), fmt


def _lossless_format(img: Image.Image, fmt: str) -> bool:
    return fmt == "PNG" or (fmt == "TIFF" and img.info.get("compression") in _LOSSLESS_TIFF)


def decode_image(data: bytes, relpath: str, label: str, expected_size: tuple[int, int]) -> tuple[ImageFacts, np.ndarray]:
    rgb_img, unchanged, fmt = decode_checked(data, expected_size)
    rgb = np.asarray(rgb_img, dtype=np.uint8)
    lossless = unchanged and _lossless_format(rgb_img, fmt)
    # Only a file that is RGB already: a grey JPEG would not decode to the RGB pixels its pixel_sha256 names.
    as_is = unchanged and (lossless or fmt in _PUBLISHED_AS_LOSSY_ORIGINAL)
    grey = np.asarray(rgb_img.convert("L"))  # imagehash's grey conversion, for a bit-identical pHash
    centre, sig = cell_features(rgb)
    facts = ImageFacts(
        relpath=relpath,
        label=label,
        pixel_sha256=pixel_sha256(rgb),
        phash=phash_of_grey(grey),
        width=rgb.shape[1],
        height=rgb.shape[0],
        lossless=lossless,
        file_format=fmt,
        published_as_is=as_is,
        centre_hash=centre,
        signature=sig,
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


# How a release publishes lossless images ([image] publish_codec): "original" keeps lossless RGB files'
# own bytes, "png" re-encodes every lossless image as PNG. Lossy files (RGB JPEG) are always their own
# bytes: re-encoding would inflate them and could not give back anything they lost.
PUBLISH_CODECS = ("original", "png")
# zlib level of every PNG a release holds: level 1 is 4-5x faster to encode than the default 6 for ~15% more
# bytes on noisy crops (bench/RESULTS.md, "Image codec"). Fixed, and PNGs carry no time or text chunks, so
# a rebuild writes the same bytes.
PNG_COMPRESS_LEVEL = 1
# What the encoded bytes depend on besides the file and this module's code (the per-image cache's key).
ENCODING = f"PNG compress_level={PNG_COMPRESS_LEVEL} zlib={features.version('zlib')}"


def publish_as_original(facts: ImageFacts, codec: str) -> bool:
    """Whether the release stores the file's own bytes (else a PNG of its decoded pixels)."""
    lossy_original = facts.published_as_is and not facts.lossless  # an RGB JPEG
    return lossy_original or (facts.published_as_is and codec == "original")


def encode_png(data: bytes, facts: ImageFacts) -> bytes:
    """A PNG of the file's decoded RGB pixels: deterministic (fixed level, no time or text chunks; an ICC
    profile of the source is carried over, as the pixels mean nothing without it)."""
    rgb_img, _, _, _ = open_rgb(data, (facts.width, facts.height))
    buf = io.BytesIO()
    rgb_img.save(buf, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


class EncodedStore(Protocol):
    """Where encoded images are kept between builds (cache.EncodedCache), by the source file's sha256."""

    def get(self, file_sha256: str) -> bytes | None: ...

    def put(self, file_sha256: str, data: bytes) -> None: ...


def publishable_bytes(path: Path, facts: ImageFacts, codec: str = "original", store: EncodedStore | None = None) -> bytes:
    """The bytes a release stores: the file as it is (publish_as_original), else a PNG of its decoded pixels,
    taken from ``store`` when an earlier build encoded this very file, and put there when encoded now."""
    data = path.read_bytes()
    if publish_as_original(facts, codec):
        return data
    cached = store.get(facts.file_sha256) if store is not None else None
    if cached is not None:
        return cached
    encoded = encode_png(data, facts)
    if store is not None:
        store.put(facts.file_sha256, encoded)
    return encoded
