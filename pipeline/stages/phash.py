"""imagehash.phash, bit for bit, at a fraction of the cost.

imagehash.phash(img) is: grey = img.convert("L"); 32x32 LANCZOS resize; 2-D DCT-II (scipy.fftpack);
bits = top-left 8x8 > its median. Two thirds of its time is Pillow's resize of a 288x288 image, which
runs a generic ~50-tap filter per output pixel. Here the same resize is two passes of banded matrix
products in float64 (BLAS, one thread per worker process):
Pillow resamples 8-bit images in fixed point (integer coefficients scaled by 2**22, an accumulator
started at 2**21, the sum shifted right by 22 and clipped to 0..255, one axis after the other), and every
partial sum stays below 2**31, so float64 matrix products give those integers exactly. The integer
coefficients are not recomputed here (libm's sin may differ from C's in the last bit): they are read
back from Pillow itself by resizing impulse images in 32-bit integer mode, where Pillow rounds
value * coefficient exactly as it rounds coefficients for 8-bit images. The DCT is scipy's, as in
imagehash, on the same 32x32 integers, so the hash is identical (tests/test_phash.py checks this on
many images and edge cases).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fftpack
from PIL import Image

HASH_SIZE = 8
SMALL = HASH_SIZE * 4  # imagehash's highfreq_factor 4: the image is reduced to 32x32
_PRECISION_BITS = 22  # Pillow's Resample.c: 32 - 8 - 2
_BAND = 8  # output pixels per matrix product (bench: 8 was fastest of 2, 4, 8, 16 for 288 -> 32)
_BIT_WEIGHTS = (1 << np.arange(63, -1, -1, dtype=np.uint64)).astype(np.uint64)


@lru_cache(maxsize=8)
def lanczos_matrix(in_size: int, out_size: int = SMALL) -> np.ndarray:
    """(out_size, in_size) float64 matrix of Pillow's fixed-point LANCZOS coefficients for one axis.

    Row r of an in_size x in_size int32 image holding 2**22 at column r and 0 elsewhere, resized in
    width only, gives round(2**22 * k) for every output column: exactly Pillow's 8-bit coefficients.
    """
    impulses = np.zeros((in_size, in_size), np.int32)
    np.fill_diagonal(impulses, 1 << _PRECISION_BITS)
    resized = Image.fromarray(impulses, mode="I").resize((out_size, in_size), Image.Resampling.LANCZOS)
    coefficients = np.asarray(resized, dtype=np.int64)  # (in_size, out_size): input pixel x output pixel
    return np.ascontiguousarray(coefficients.T, dtype=np.float64)


@lru_cache(maxsize=8)
def lanczos_blocks(in_size: int) -> tuple[tuple[int, int, np.ndarray], ...]:
    """lanczos_matrix(in_size) cut into bands of _BAND outputs: (first input, end input, coefficients).

    Each output pixel uses only ~6 input pixels per output step (49 of 288 for 288 -> 32), so multiplying
    band by band skips the zeros of the full matrix: a third of the arithmetic, 2-3x faster.
    """
    matrix = lanczos_matrix(in_size)
    bands = []
    for first in range(0, matrix.shape[0], _BAND):
        rows = matrix[first : first + _BAND]
        used = np.nonzero(rows.any(axis=0))[0]
        start, end = (int(used[0]), int(used[-1]) + 1) if used.size else (0, 1)
        bands.append((start, end, np.ascontiguousarray(rows[:, start:end])))
    return tuple(bands)


def _fixed_point_to_uint8(acc: np.ndarray) -> np.ndarray:
    # Pillow: clip8(ss) with ss = 2**21 + sum(pixel * k); the shift is arithmetic (floor), then clip.
    return np.clip(np.floor((acc + (1 << (_PRECISION_BITS - 1))) / (1 << _PRECISION_BITS)), 0, 255)


def _horizontal(x: np.ndarray) -> np.ndarray:
    """(h, w) -> (h, 32): Pillow's horizontal pass, fixed point, before clipping."""
    return np.concatenate([x[:, start:end] @ band.T for start, end, band in lanczos_blocks(x.shape[1])], axis=1)


def _vertical(x: np.ndarray) -> np.ndarray:
    """(h, w) -> (32, w): Pillow's vertical pass, fixed point, before clipping."""
    return np.concatenate([band @ x[start:end] for start, end, band in lanczos_blocks(x.shape[0])], axis=0)


def _reduce(grey: np.ndarray, order: str) -> np.ndarray:
    pixels = grey.astype(np.float64)
    if order == "hv":
        return _fixed_point_to_uint8(_vertical(_fixed_point_to_uint8(_horizontal(pixels))))
    return _fixed_point_to_uint8(_horizontal(_fixed_point_to_uint8(_vertical(pixels))))


@lru_cache(maxsize=64)
def pass_order(width: int, height: int) -> str | None:
    """Which pass Pillow runs first for this size ("hv": horizontal, "vh": vertical), None if unsure.

    Pillow picks the order from the sizes (e.g. 288x288 goes horizontal first, 64x288 vertical first), and
    the rounding between the passes makes the order visible. It is read off Pillow on probe images, so a
    Pillow that changes its rule is followed; when the probes cannot tell, Pillow itself resizes.
    """
    rng = np.random.default_rng(0)
    probes = [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(3)]
    probes.append((np.add.outer(np.arange(height), np.arange(width)) * 7 % 256).astype(np.uint8))
    matches = [
        order
        for order in ("hv", "vh")
        if all(np.array_equal(_reduce(p, order), np.asarray(Image.fromarray(p).resize((SMALL, SMALL), Image.Resampling.LANCZOS))) for p in probes)
    ]
    return matches[0] if len(matches) == 1 else None


def reduce_grey(grey: np.ndarray) -> np.ndarray:
    """Pillow's grey.resize((32, 32), LANCZOS) for an HxW uint8 array, as a 32x32 float64 array of integers."""
    order = pass_order(grey.shape[1], grey.shape[0])
    if order is None:
        return np.asarray(Image.fromarray(grey).resize((SMALL, SMALL), Image.Resampling.LANCZOS), dtype=np.float64)
    return _reduce(grey, order)


def phash_of_grey(grey: np.ndarray) -> int:
    """64-bit pHash of an 8-bit grey image (HxW uint8), equal to int(str(imagehash.phash(img)), 16)."""
    small = reduce_grey(grey)
    dct = scipy.fftpack.dct(scipy.fftpack.dct(small, axis=0), axis=1)
    low = dct[:HASH_SIZE, :HASH_SIZE]
    bits = (low > np.median(low)).ravel()
    return int(_BIT_WEIGHTS[bits].sum(dtype=np.uint64))


def phash(img: Image.Image) -> int:
    """The pHash of a PIL image of any mode imagehash accepts (converted to grey as imagehash does)."""
    return phash_of_grey(np.asarray(img.convert("L")))
