"""The files of one cell: its original and every duplicate, conflict copy and look-alike derived from it.

What is derived from an original (see pipeline.synth.generator for the fate a correct build gives each):
exact copies and lossless re-encodings (PNG, LZW TIFF) of its pixels; perturbed copies (JPEG, a 1-2 px shift,
a 3-6% brighter copy) kept within the pHash candidate radius; look-alikes re-rendered from the same field at
another focus or crop with fresh noise. Each cell is rendered from its own seed, in any worker process.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.stages.decode import phash_int
from pipeline.synth.field import Field
from pipeline.synth.plan import ORIGINAL_KINDS, Output

_ORIGINAL_JPEG_QUALITY = 95
# Kinds whose pixels are the original's: nothing to compare with the original's pHash.
_SAME_PIXELS = (*ORIGINAL_KINDS, "exact_copy", "reencode_png", "reencode_lzw")
# Extra focus blur tried for a look-alike that should hash like its twin, until one does.
_SAMEHASH_SIGMAS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 1.1, 1.3, 1.5, 1.7, 1.9)


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt, **kw)
    return buf.getvalue()


def _tiff(arr: np.ndarray, compression: str | None = None) -> bytes:
    return _encode(arr, "TIFF", compression=compression) if compression else _encode(arr, "TIFF")


def _decoded(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def original_bytes(arr: np.ndarray, file_format: str) -> bytes:
    """An image as the archive stores its originals (the config's image.format)."""
    if file_format == "JPEG":
        return _encode(arr, "JPEG", quality=_ORIGINAL_JPEG_QUALITY)
    if file_format == "PNG":
        return _encode(arr, "PNG", compress_level=6)
    return _tiff(arr)


def _phash(arr: np.ndarray) -> int:
    return phash_int(Image.fromarray(arr, "RGB"))


def _ham(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _shift(arr: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Content moved by (dy, dx); the uncovered rows/columns repeat the edge."""
    h, w = arr.shape[:2]
    iy = np.clip(np.arange(h) - dy, 0, h - 1)
    ix = np.clip(np.arange(w) - dx, 0, w - 1)
    return arr[iy][:, ix]


@dataclass(frozen=True)
class _Original:
    """A cell's field, its original as published (pixels and bytes) and what copies are checked against."""

    field: Field
    pixels: np.ndarray
    data: bytes
    phash: int  # 0 when no output of the cell needs it
    file_format: str
    phash_threshold: int


# ---------------------------------------------------------------------------------------- perturbed copies
# Each draws one perturbation; `attempt` >= 4 asks for a milder one. Returns (pixels, file bytes, detail).


def _jpeg_copy(orig: np.ndarray, attempt: int, rng: np.random.Generator) -> tuple[np.ndarray, bytes, str]:
    q = int(rng.integers(90, 96)) if attempt < 4 else 95
    data = _encode(orig, "JPEG", quality=q)
    return _decoded(data), data, f"quality={q}"


def _shifted_copy(orig: np.ndarray, attempt: int, rng: np.random.Generator) -> tuple[np.ndarray, bytes, str]:
    while True:
        dy, dx = (int(v) for v in rng.integers(-2, 3, 2))
        if (dy, dx) != (0, 0) and (attempt < 4 or max(abs(dy), abs(dx)) == 1):
            break
    arr = _shift(orig, dy, dx)
    return arr, _tiff(arr), f"dy={dy};dx={dx}"


def _brighter_copy(orig: np.ndarray, attempt: int, rng: np.random.Generator) -> tuple[np.ndarray, bytes, str]:
    fac = float(rng.uniform(1.03, 1.06)) if attempt < 4 else 1.03
    arr = np.clip(np.rint(orig.astype(np.float32) * fac), 0, 255).astype(np.uint8)
    return arr, _tiff(arr), f"factor={fac:.3f}"


_PERTURBATIONS = {"jpeg": _jpeg_copy, "conflict_copy": _jpeg_copy, "shift": _shifted_copy, "brighter": _brighter_copy}


def _perturbed(kind: str, src: _Original, rng: np.random.Generator) -> tuple[bytes, str]:
    """A perturbed copy within the pHash candidate radius (a milder one re-drawn, up to 8 tries)."""
    perturb = _PERTURBATIONS[kind]
    for attempt in range(8):
        arr, data, detail = perturb(src.pixels, attempt, rng)
        d = _ham(_phash(arr), src.phash)
        if d <= src.phash_threshold:
            break
    return data, detail + f";phash_distance={d}"


# ----------------------------------------------------------------------------------------------- look-alikes
# Each re-renders the cell's field with fresh noise. Returns (pixels, detail).


def _refocus_samehash(src: _Original, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """At another focal plane whose pHash equals its twin's (or, failing that, is the closest found)."""
    best = None
    for sb in _SAMEHASH_SIGMAS:
        arr = src.field.render(rng, sigma=math.hypot(src.field.sigma0, sb))
        d = _ham(_phash(arr), src.phash)
        if best is None or d < best[0]:
            best = (d, sb, arr)
        if d == 0:
            break
    d, sb, arr = best
    return arr, f"extra_sigma={sb:.2f};phash_distance={d}"


def _refocus_blur(src: _Original, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    sb = float(rng.uniform(1.0, 2.0))
    arr = src.field.render(rng, sigma=math.hypot(src.field.sigma0, sb))
    return arr, f"extra_sigma={sb:.2f};phash_distance={_ham(_phash(arr), src.phash)}"


def _refocus_sharp(src: _Original, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    arr = src.field.render(rng, sigma=0.3)
    return arr, f"sigma=0.30;phash_distance={_ham(_phash(arr), src.phash)}"


def _recrop(src: _Original, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """The same field cropped with the cell 6-20 px off centre."""
    mag, ang = rng.uniform(6, 20), rng.uniform(0, 2 * np.pi)
    oy, ox = int(round(mag * math.sin(ang))), int(round(mag * math.cos(ang)))
    arr = src.field.render(rng, offset=(oy, ox))
    # the cell moves the other way in the crop
    return arr, f"dy={-oy};dx={-ox};phash_distance={_ham(_phash(arr), src.phash)}"


_LOOKALIKES: dict[str, Callable[[_Original, np.random.Generator], tuple[np.ndarray, str]]] = {
    "refocus_samehash": _refocus_samehash,
    "refocus_blur": _refocus_blur,
    "refocus_sharp": _refocus_sharp,
    "recrop": _recrop,
}


def _field_detail(fld: Field) -> str:
    pad = f";pad={fld.pad[0]}:{fld.pad[1]}" if fld.pad else ""
    return f"sigma={fld.sigma0:.2f};noise={fld.noise:.2f};read={fld.read_sd:.2f}" + pad


def _file(o: Output, src: _Original, rng: np.random.Generator) -> tuple[bytes, str]:
    """The bytes of one output of the cell and its truth detail."""
    if o.kind in ORIGINAL_KINDS:
        return src.data, _field_detail(src.field)
    if o.kind == "exact_copy" or (o.kind == "conflict_copy" and o.variant == "exact"):
        return src.data, "same bytes"
    if o.kind == "reencode_png":
        return _encode(src.pixels, "PNG", compress_level=6), "png"
    if o.kind == "reencode_lzw":
        return _tiff(src.pixels, "tiff_lzw"), "tiff_lzw"
    if o.kind in _PERTURBATIONS:
        return _perturbed(o.kind, src, rng)
    if o.kind in _LOOKALIKES:
        arr, detail = _LOOKALIKES[o.kind](src, rng)
        return original_bytes(arr, src.file_format), detail
    raise ValueError(o.kind)


def render_cell(args: tuple) -> list[tuple[str, str]]:
    """Render one field and write its original and everything derived from it; returns (relpath, detail)."""
    cell, out_dir, seed, phash_threshold, size, file_format = args
    rng = np.random.default_rng([seed, 0xF1E1D, cell.index])
    fld = Field(cell.label, rng, dysplastic=cell.kind == "dysplastic", size=size)
    pixels = fld.render(rng)
    data = original_bytes(pixels, file_format)
    if file_format == "JPEG":
        pixels = _decoded(data)  # what is published, and what copies derive from
    needs_hash = any(o.kind not in _SAME_PIXELS for o in cell.outputs)
    src = _Original(fld, pixels, data, _phash(pixels) if needs_hash else 0, file_format, phash_threshold)
    details = []
    for o in cell.outputs:
        data, detail = _file(o, src, rng)
        (Path(out_dir) / o.relpath).write_bytes(data)
        details.append((o.relpath, detail))
    return details
