"""Which image files are accepted, and how they become 8-bit RGB pixels: the decode stage's rules for hostile input.

Every refusal raises ImageRejected whose message is the ledger's reason. The rules:
- content decides the format, not the file name: TIFF, PNG or JPEG content is accepted under any of the
  accepted suffixes (a PNG saved as .tif is read as the PNG it is); other formats are refused, and only
  these three Pillow decoders are ever run on untrusted bytes;
- Pillow's decompression-bomb limit stays on and its warning is treated as a refusal; the declared size is
  checked against the configured size before any pixel is decoded, so a small file declaring a huge image
  costs nothing;
- one image per file, at most 8 bits per sample, no EXIF rotation (the stored pixels would not be what the
  annotator saw upright);
- 8-bit RGB is used as is; palette, grey and bilevel images, and images with an alpha channel that is fully
  opaque, convert to RGB without loss; other modes (CMYK, YCbCr, 16-bit, float) and transparent pixels are
  refused.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

ACCEPTED_FORMATS = ("TIFF", "PNG", "JPEG")
_EXIF_ORIENTATION = 0x0112
_TIFF_BITS_PER_SAMPLE = 258
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAGIC = {b"II*\0": "TIFF", b"MM\0*": "TIFF", _PNG_SIGNATURE: "PNG", b"\xff\xd8\xff": "JPEG"}
# Modes whose every value maps to one RGB value and back: converting them loses nothing.
_LOSSLESS_TO_RGB = frozenset({"L", "P", "1"})
# Modes with an alpha channel: accepted only when every pixel is opaque.
_WITH_ALPHA = frozenset({"RGBA", "LA", "PA"})


class ImageRejected(ValueError):
    """An image that cannot be published; the message is the ledger's reason."""


def sniff_format(data: bytes) -> str | None:
    """The accepted format the first bytes claim, so a broken TIFF is reported as such, not as 'not an image'."""
    return next((fmt for magic, fmt in _MAGIC.items() if data.startswith(magic)), None)


def open_image(data: bytes) -> Image.Image:
    """Parse the header only (no pixels yet), with the decompression-bomb limit enforced as an error."""
    if not data:
        raise ImageRejected("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageRejected(f"decompression bomb refused: {exc}") from None
    except UnidentifiedImageError:
        claimed = sniff_format(data)
        if claimed:
            raise ImageRejected(f"corrupt or truncated {claimed} file: its header cannot be parsed") from None
        raise ImageRejected("not a TIFF, PNG or JPEG image (unknown format, or not an image at all)") from None
    except Exception as exc:  # Pillow's parsers raise many types on hostile headers; all mean the same here
        raise ImageRejected(f"corrupt image header: {type(exc).__name__}: {exc}") from None


def bits_per_sample(img: Image.Image, data: bytes) -> int:
    """The largest sample depth the file declares (Pillow silently narrows 16-bit RGB to 8 bits on load)."""
    if img.format == "TIFF":
        bits = img.tag_v2.get(_TIFF_BITS_PER_SAMPLE, (1,))
        return max(bits) if isinstance(bits, tuple) else int(bits)
    if img.format == "PNG" and data.startswith(_PNG_SIGNATURE) and len(data) >= 25:
        return data[24]  # IHDR bit depth: signature (8) + length (4) + "IHDR" (4) + width (4) + height (4)
    return 8  # Pillow decodes baseline JPEG only, which is 8-bit


def wrong_size_reason(size: tuple[int, int], expected: tuple[int, int]) -> str:
    """The refusal for a size other than the config's; a transposed size is far likelier a config slip than bad data."""
    reason = f"wrong size {size[0]}x{size[1]}, expected {expected[0]}x{expected[1]}"
    if size == (expected[1], expected[0]):
        reason += f"; width and height look swapped in the config (set image.width = {size[0]}, image.height = {size[1]})"
    return reason


def check_header(img: Image.Image, data: bytes, expected_size: tuple[int, int]) -> None:
    """Refusals decided from the header alone, before any pixel is decoded."""
    frames = getattr(img, "n_frames", 1)
    if frames > 1:
        raise ImageRejected(f"multi-page image ({frames} frames): expected one image per file")
    if img.size != expected_size:
        raise ImageRejected(wrong_size_reason(img.size, expected_size))
    bits = bits_per_sample(img, data)
    if bits > 8:
        raise ImageRejected(f"{bits} bits per sample ({img.format}, mode {img.mode}): expected 8-bit; converting would lose precision")
    if img.mode != "RGB" and img.mode not in _LOSSLESS_TO_RGB and img.mode not in _WITH_ALPHA:
        raise ImageRejected(f"unsupported image mode {img.mode!r}: expected 8-bit RGB (or grey/palette, converted losslessly)")


def load_pixels(img: Image.Image) -> None:
    try:
        img.load()
    except Exception as exc:  # truncated data, bad compression streams, inconsistent tags
        raise ImageRejected(f"corrupt or truncated image: {type(exc).__name__}: {exc}") from None


def check_orientation(img: Image.Image) -> None:
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF is not a reason to refuse pixels that decoded fine
        return
    if orientation not in (1, None):
        raise ImageRejected(f"EXIF orientation {orientation} set: the stored pixels are not upright; re-export without it")


def to_rgb(img: Image.Image) -> tuple[Image.Image, bool]:
    """The image as 8-bit RGB, and whether it already was (so its file bytes may be published unchanged)."""
    if img.mode == "RGB":
        return img, True
    if img.mode in _WITH_ALPHA or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        if int(np.asarray(rgba.getchannel("A")).min()) < 255:
            raise ImageRejected(f"{img.mode} image with transparent pixels: cannot convert to RGB without loss")
        return rgba.convert("RGB"), False
    return img.convert("RGB"), False


def decode_checked(data: bytes, expected_size: tuple[int, int]) -> tuple[Image.Image, bool, str]:
    """Decode untrusted bytes under every rule above: (RGB image, already RGB, content format)."""
    img = open_image(data)
    try:
        check_header(img, data, expected_size)
        check_orientation(img)  # before load: Pillow rotates TIFFs while loading and drops the tag
    except ImageRejected:
        raise
    except Exception as exc:  # counting frames walks every TIFF directory, and a mangled one fails in many ways
        raise ImageRejected(f"corrupt image header: {type(exc).__name__}: {exc}") from None
    load_pixels(img)
    rgb_img, unchanged = to_rgb(img)
    return rgb_img, unchanged, img.format or "UNKNOWN"

