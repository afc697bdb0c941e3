"""The paper's duplicate semantics: exact and perceptual duplicates confirmed on pixels, look-alike groups,
and the label-conflict policy.

What counts as what (FACTS.md, "Clean-up the paper describes"):

* duplicate: the same scan of the same cell, whatever happened to the file afterwards: identical
  pixels (any file name or lossless encoding), or the same pixels up to lossy re-compression (JPEG
  q >= 90), a shift by 1-2 px or a small global brightness change. One copy is kept.
* look-alike: the same cell in another image, refocused (another focal plane) or re-cropped (the cell
  6-20 px off centre). NOT a duplicate: the release keeps every look-alike. Look-alikes (and
  duplicates) share a look-alike group id so that a split can keep one cell in one split.

How it is found, with per-image state limited to the ImageFacts:

1. identical ``pixel_sha256`` -> duplicates (no pixels read);
2. candidates: one representative per distinct pixel hash; pairs whose 64-bit pHash differs by at
   most ``lookalike_threshold`` bits (``pipeline.stages.neardup.near_pairs``, exact and sub-quadratic), plus
   pairs whose *centre hash* (a pHash of a window registered on the stained cell: see
   :func:`centre_hash`; robust to re-crops, which move the ordinary pHash by up to ~24 bits) differs
   by at most ``CENTRE_RADIUS``, when the facts carry one (attribute ``centre_hash``) or the caller
   passes ``centre_hashes``;
3. every candidate pair gets the duplicate test first (:func:`compare_duplicate`): the hashes only
   *propose* pairs, they never decide that a pair cannot be a duplicate (a copy shifted by one pixel
   into a white margin moves the pHash by 6 bits or more). A confirmed pair is a duplicate. Pairs that
   fail it get the same-cell test (:func:`same_cell`): a confirmed pair is a look-alike;
4. union-find over duplicate pairs gives duplicate groups (labels agree -> keep one; disagree ->
   ``policy``), and over all confirmed pairs the look-alike groups.

Both tests have a coarse stage on the 36 x 36 signatures (vectorised over all candidates, no pixels)
and a pixel stage. A pair whose signatures, without their border (where a shifted copy's fill lands),
correlate below ``DUP_GATE_MIN_CORR`` cannot be a duplicate (copies correlate >= 0.975 there:
bench/bench_dedup_sweep.py), and one below ``SAME_CELL_COARSE_CORR`` at every shift is not the same
cell. Only the pairs that pass either, and every pair within ``phash_threshold`` bits whatever it
scores, are loaded, once, for the pixel duplicate test and, when that fails, the fine same-cell test on
the same pixels (1,565 of 99,044 candidates at full scale: bench/RESULTS.md). The coarse same-cell
signature (36 x 36 uint8, 1.3 kB) comes with the facts (the decode stage computes it with the centre
hash: :func:`cell_features`); it is computed here only for facts that lack it. With ``map_fn`` the index searches and every pixel test run
in parallel; tests are pure functions of their two images, cut into batches from sorted lists, so the
result is the same for any number of workers. Everything is sorted by relpath first, so the result
does not depend on the input order.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

from pipeline.stages import neardup
from pipeline.stages.phash import phash_of_grey
from pipeline.records import DedupResult, ImageFacts, Pair

__all__ = [
    "deduplicate",
    "compare_duplicate",
    "same_cell",
    "centre_hash",
    "signature",
    "DuplicateTest",
    "SameCellTest",
    "PairVerdict",
    "POLICIES",
]

POLICIES = ("drop_all", "majority")

# ---- Duplicate confirmation (calibrated on the synthetic archive's planted cases; see the tests) ----
# A copy may be shifted by up to this many px (planted: 1-2 px, edge replicated).
DUP_MAX_SHIFT = 2
# RMS residual (grey levels, per RGB channel, after per-channel mean-brightness compensation) at the
# best shift. Measured on the full-scale synthetic archive: JPEG q90-95 1.36-2.26, shifted/brighter
# copies <= 0.33; re-crops 10-32; different cells >> 10. Refocused look-alikes score 1.58-4.61, i.e.
# they overlap JPEG (PSNR alone cannot tell them apart), so this only rejects different images and
# misalignment; focus is tested by the high-frequency ratio below. The robustness sweep
# (bench/bench_dedup_sweep.py, two generators, crops the synth never writes) puts the line: copies up to
# JPEG q80 3.30 and added noise std 3 3.02; a re-crop by 4 px (2 px left after the shift search) 3.80
# at least. The bound sits in the middle of that gap (~7% either side).
DUP_MAX_RMS = 3.55
# Global brightness change allowed (mean-brightness ratio). Planted brighter copies: 1.031-1.058.
DUP_MAX_GAIN = 0.12
# Ratio of the high-frequency energy of the two images over the overlap: mean square of the
# 4-neighbour Laplacian after a Gaussian of sigma 1 (which removes pixel noise but keeps cell
# structure), the contrast gain divided out. Re-encoding, shifts and brightness leave it near 1,
# a refocus changes it a lot. Measured at scale 1 (112 confirmed duplicate pairs, 119 refocused
# look-alikes): duplicates 0.952-1.013; blurred look-alikes (extra sigma 1-2) 0.175-0.686, sharper ones
# 1.569-2.761. The robustness sweep narrows the lower gap: copies (JPEG q80, contrast +-5%, brightness
# +-8 with white clipping) >= 0.92, a refocus by extra sigma 1 of an already soft crop <= 0.83; the lower
# bound is the geometric middle (0.875, ~5% either side). Upper: added noise std 2 <= 1.21, sharper focal
# planes >= 1.569; noise std 3-4 reaches 1.86 (the documented line: such a copy is kept as a look-alike).
DUP_HF_RATIO = (0.875, 1.25)
HF_PRESMOOTH = 1.0

# ---- Same-cell (look-alike) confirmation ----
# Both images are blurred (sigma 2 px: refocus differences vanish) and compared by normalised
# correlation over the overlap at the best shift within +-SAME_CELL_MAX_SHIFT px (re-crops move the
# cell by 6-20 px). Coarse stage: 36 x 36 signatures (8x downscale, 1.3 kB per image, cached for every
# image met in a candidate pair). Fine stage, only above SAME_CELL_COARSE_CORR: 144 x 144 (2x).
SAME_CELL_BLUR = 2.0
SAME_CELL_MAX_SHIFT = 24
# Coarse correlation, measured at scale 1: the 179 planted look-alikes >= 0.949; the 98,753 other
# candidate pairs (pHash or centre hash within 10 bits): median 0.70, 99th percentile 0.905, max 0.968.
# About 1.3% of candidates pass this prefilter and get the fine stage.
SAME_CELL_COARSE_CORR = 0.90
# Fine correlation, measured at scale 1: look-alikes (refocused sigma 1-2, sharper, re-cropped 6-20 px)
# >= 0.992; different cells that passed the prefilter <= 0.969. The bound is the middle of that gap.
SAME_CELL_MIN_CORR = 0.98

# ---- Which candidates get pixels (the duplicate test's gate) ----
# A copy of one scan keeps its coarse signature except near the border, where a shift's fill (edge
# repeated, white or black) lands: the zero-shift correlation of the two signatures without their outer
# DUP_GATE_BORDER cells (16 px) is >= DUP_GATE_MIN_CORR for every copy in the robustness sweep
# (bench/bench_dedup_sweep.py, crops the synth never writes: shifts <= 3 px with any fill, brightness
# +-8, contrast +-5%, JPEG q >= 80, noise std <= 4 all >= 0.975). Pairs below it, and below the same-cell
# prefilter (SAME_CELL_COARSE_CORR), cannot be duplicates, so their pixels are not loaded; the pairs that
# pass either, and every pair within phash_threshold bits, get the pixel duplicate test (and, when it
# fails and the coarse stage allows, the fine same-cell test on the same loaded pixels).
DUP_GATE_BORDER = 2
DUP_GATE_MIN_CORR = 0.95

# ---- Centre hash (re-crop candidates) ----
CENTRE_HALF = 96  # the hashed window is 192 x 192 px around the stained cell's centroid
CENTRE_RADIUS = 10  # re-crops by 6-20 px: centre-hash distance 0-12 (pHash: 2-24); ~half the candidates

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
COARSE_BATCH = 512  # coarse same-cell tests per task: ~2 x 0.7 MB of signatures, ~0.1 s of work


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) @ _LUMA


def _channel_max(rgb: np.ndarray) -> np.ndarray:
    """rgb.max(axis=-1), the same values ~20x faster (numpy reduces a length-3 last axis slowly)."""
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


def _lap(g: np.ndarray) -> np.ndarray:
    return g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4.0 * g[1:-1, 1:-1]


def _overlap(h: int, w: int, dy: int, dx: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices of a and b that coincide when b(y, x) = a(y - dy, x - dx)."""
    sa = (slice(max(0, -dy), h - max(0, dy)), slice(max(0, -dx), w - max(0, dx)))
    sb = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    return sa, sb


def _down(g: np.ndarray, f: int) -> np.ndarray:
    h, w = g.shape
    blocks = g[: h // f * f, : w // f * f].reshape(h // f, f, w // f, f)
    if f < 8 and blocks.flags.c_contiguous:
        # The same float additions, in the same order, as blocks.mean(axis=(1, 3)) makes (numpy sums runs
        # shorter than 8 one element after the other), so the same bits, ~10x faster than the generic
        # two-axis reduction (tests/test_phash.py compares them).
        rows = blocks[:, :, :, 0]
        for b in range(1, f):
            rows = rows + blocks[:, :, :, b]
        total = rows[:, 0]
        for a in range(1, f):
            total = total + rows[:, a]
        return total / (f * f)
    return blocks.mean(axis=(1, 3))


@dataclass(frozen=True)
class DuplicateTest:
    dy: int
    dx: int
    rms: float
    gain: float
    hf_ratio: float
    duplicate: bool


@dataclass(frozen=True)
class SameCellTest:
    dy: int
    dx: int
    coarse_corr: float
    corr: float
    same: bool


@dataclass(frozen=True)
class PairVerdict:
    """What the tests said about one candidate pair (a pure function of the two images' pixels).

    ``duplicate`` is None when the pixel duplicate test was not run (coarse correlation below
    both gates and pHash beyond phash_threshold); ``same_cell`` is None when the pair is a
    duplicate (the same-cell test is only asked of pairs that are not)."""

    duplicate: DuplicateTest | None
    same_cell: SameCellTest | None

    @property
    def is_duplicate(self) -> bool:
        return self.duplicate is not None and self.duplicate.duplicate

    @property
    def is_same_cell(self) -> bool:
        return self.same_cell is not None and self.same_cell.same


def compare_duplicate(a: np.ndarray, b: np.ndarray) -> DuplicateTest:
    """Is b the same scan as a, up to re-encoding noise, lossy compression, a 1-2 px shift and brightness?

    Search integer shifts in [-2, 2]^2 for the smallest grey residual after a least-squares gain and
    offset; at that shift measure the per-channel RMS residual after mean-brightness compensation
    (saturated pixels, e.g. white padding, left out), the gain, and the focus-sensitive ratio of
    high-frequency energy (contrast gain divided out). Duplicate iff all three are within the module's
    bounds.
    """
    if a.shape != b.shape:
        return DuplicateTest(0, 0, math.inf, math.nan, math.nan, False)
    ga, gb = _grey(a), _grey(b)
    h, w = ga.shape
    best = (math.inf, 0, 0)
    for dy in range(-DUP_MAX_SHIFT, DUP_MAX_SHIFT + 1):
        for dx in range(-DUP_MAX_SHIFT, DUP_MAX_SHIFT + 1):
            sa, sb = _overlap(h, w, dy, dx)
            A, B = ga[sa], gb[sb]
            dA, dB = A - A.mean(), B - B.mean()
            va, cov, vb = float((dA * dA).mean()), float((dA * dB).mean()), float((dB * dB).mean())
            r = vb - cov * cov / va if va > 0 else vb
            if r < best[0] - 1e-9:
                best = (r, dy, dx)
    _, dy, dx = best
    sa, sb = _overlap(h, w, dy, dx)
    A = np.asarray(a[sa], dtype=np.float32)
    B = np.asarray(b[sb], dtype=np.float32)
    ok = (_channel_max(A) < 250) & (_channel_max(B) < 250)
    if ok.sum() < 0.25 * ok.size:
        ok = np.ones_like(ok)
    res, gains = [], []
    for c in range(3):
        x, y = A[..., c][ok], B[..., c][ok]
        g = float(y.mean() / max(float(x.mean()), 1e-6))
        res.append(float(((y - g * x) ** 2).mean()))
        gains.append(g)
    rms = math.sqrt(sum(res) / 3)
    GA, GB = A @ _LUMA, B @ _LUMA
    gain = float(GB.mean() / max(float(GA.mean()), 1e-6))
    la = _lap(ndimage.gaussian_filter(GA, HF_PRESMOOTH))
    lb = _lap(ndimage.gaussian_filter(GB, HF_PRESMOOTH))
    ea = float((la * la).mean())
    eb = float((lb * lb).mean())
    # Structure scales with the contrast gain (the regression slope of b on a), not the mean ratio: an
    # added offset (+8 grey levels) changes the mean ratio by ~10% but no edge.
    dA, dB = GA - GA.mean(), GB - GB.mean()
    va = float((dA * dA).mean())
    slope = float((dA * dB).mean()) / va if va > 0 else 1.0
    hf = (eb / (slope * slope)) / ea if ea > 0 and slope > 0 else (1.0 if eb == ea == 0 else math.inf)
    dup = rms <= DUP_MAX_RMS and abs(gain - 1.0) <= DUP_MAX_GAIN and DUP_HF_RATIO[0] <= hf <= DUP_HF_RATIO[1]
    return DuplicateTest(dy, dx, rms, gain, hf, dup)


def signature(rgb: np.ndarray) -> np.ndarray:
    """The coarse same-cell signature: grey, 8x downscaled (blur ~2 px), uint8 36 x 36 for 288 x 288."""
    return _signature_of_down4(_down(_grey(rgb), 4))


def _signature_of_down4(d: np.ndarray) -> np.ndarray:
    g = ndimage.gaussian_filter(d, SAME_CELL_BLUR / 4)
    return np.clip(_down(g, 2) + 0.5, 0, 255).astype(np.uint8)


def signature_shape(width: int, height: int) -> tuple[int, int]:
    """The shape of :func:`signature` for an image of that size (stored as bytes in ImageFacts)."""
    return (height // 4) // 2, (width // 4) // 2


def cell_features(rgb: np.ndarray) -> tuple[int, bytes]:
    """(:func:`centre_hash`, :func:`signature` as bytes) from one grey conversion and one downscale.

    The decode stage computes both for every image, so dedup's same-cell tests need no pixels for their
    coarse stage: only the ~1% of candidate pairs that reach the fine stage are decoded again.
    """
    g = _grey(rgb)
    d = _down(g, 4)
    return _centre_hash_of(g, d), _signature_of_down4(d).tobytes()


def _fine_signature(rgb: np.ndarray) -> np.ndarray:
    return _down(ndimage.gaussian_filter(_grey(rgb), SAME_CELL_BLUR), 2).astype(np.float64)


def _rect_sums(ii: np.ndarray, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray) -> np.ndarray:
    """Sums over [y0, y1) x [x0, x1) from integral images with a zero first row/column (broadcasting)."""
    return ii[..., y1, x1] - ii[..., y0, x1] - ii[..., y1, x0] + ii[..., y0, x0]


def _integral(x: np.ndarray) -> np.ndarray:
    ii = np.zeros((*x.shape[:-2], x.shape[-2] + 1, x.shape[-1] + 1), dtype=np.float64)
    ii[..., 1:, 1:] = x.cumsum(-2).cumsum(-1)
    return ii


def _ncc_all_shifts(A: np.ndarray, B: np.ndarray, R: int) -> np.ndarray:
    """Normalised correlation over the overlap of A and B for every shift in [-R, R]^2 (B(y) ~ A(y - d)).

    FFT cross-correlation for the products, integral images for the overlap sums: O(n log n) per pair
    instead of (2R + 1)^2 passes.
    """
    return _ncc_indexed(np.stack([A, B]), np.array([0]), np.array([1]), R)[0]


def _ncc_indexed(images: np.ndarray, ia: np.ndarray, ib: np.ndarray, R: int) -> np.ndarray:
    """_ncc_all_shifts(images[ia[k]], images[ib[k]], R) for every k, shape (k, 2R + 1, 2R + 1).

    Whatever belongs to one image (its transform, its overlap sums) is computed once per image, not once
    per pair; each pair gets the same arithmetic as alone (transforms work line by line).
    """
    h, w = images.shape[-2:]
    # Any padding >= size + R + 1 keeps the shifts <= R free of wrap-around; a 5-smooth one is fast (the
    # fine stage's 157 is prime, and a prime-length FFT is several times slower than one of 160).
    N0, N1 = next_fast_len(h + R + 1, real=True), next_fast_len(w + R + 1, real=True)
    F = np.fft.rfft2(images, (N0, N1))
    cc = np.fft.irfft2(np.conj(F[ia]) * F[ib], (N0, N1))  # cc[d] = sum_y A[y] B[y + d]
    d = np.arange(-R, R + 1)
    dyy, dxx = d[:, None], d[None, :]
    sab = cc[..., dyy % N0, dxx % N1]
    ay0, ay1 = np.maximum(0, -dyy), h - np.maximum(0, dyy)
    ax0, ax1 = np.maximum(0, -dxx), w - np.maximum(0, dxx)
    by0, by1, bx0, bx1 = ay0 + dyy, ay1 + dyy, ax0 + dxx, ax1 + dxx
    n = (ay1 - ay0) * (ax1 - ax0)
    ii, ii2 = _integral(images), _integral(images * images)
    sa, saa = _rect_sums(ii, ay0, ay1, ax0, ax1)[ia], _rect_sums(ii2, ay0, ay1, ax0, ax1)[ia]
    sb, sbb = _rect_sums(ii, by0, by1, bx0, bx1)[ib], _rect_sums(ii2, by0, by1, bx0, bx1)[ib]
    cov = sab - sa * sb / n
    var = np.maximum(saa - sa * sa / n, 0) * np.maximum(sbb - sb * sb / n, 0)
    return np.where(var > 0, cov / np.sqrt(np.where(var > 0, var, 1.0)), 0.0)


def _best(ncc: np.ndarray, R: int, scale: int) -> tuple[float, int, int]:
    k = int(np.argmax(ncc))
    return float(ncc.flat[k]), scale * (k // ncc.shape[1] - R), scale * (k % ncc.shape[1] - R)


def _same_cell(sig_a: np.ndarray, sig_b: np.ndarray, fine_a: Callable[[], np.ndarray], fine_b: Callable[[], np.ndarray]) -> SameCellTest:
    coarse = _coarse_test((sig_a, sig_b))
    if coarse.coarse_corr < SAME_CELL_COARSE_CORR:
        return coarse
    return _fine_test(coarse.coarse_corr, fine_a(), fine_b())


def _coarse_test(sigs: tuple[np.ndarray, np.ndarray]) -> SameCellTest:
    """The coarse stage of the same-cell test; final (not same) unless coarse_corr >= SAME_CELL_COARSE_CORR."""
    return _coarse_tests(np.stack(sigs), np.array([0]), np.array([1]))[0]


def _coarse_tests(sigs: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> list[SameCellTest]:
    """_coarse_test of (sigs[ia[k]], sigs[ib[k]]) for every k, in one vectorised pass."""
    R = max(1, SAME_CELL_MAX_SHIFT // 8)
    ncc = _ncc_indexed(sigs.astype(np.float64), ia, ib, R)
    out = []
    for k in range(ncc.shape[0]):
        coarse, dy, dx = _best(ncc[k], R, 8)
        out.append(SameCellTest(dy, dx, coarse, coarse, False))
    return out


def _coarse_batch(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[SameCellTest]:
    return _coarse_tests(*task)


def _coarse_task(batch: list[tuple[int, int]], sig: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures of the images in ``batch``, once each; index of a and of b for each pair)."""
    images = sorted({i for pair in batch for i in pair})
    where = {i: k for k, i in enumerate(images)}
    ia = np.array([where[a] for a, _ in batch], dtype=np.intp)
    ib = np.array([where[b] for _, b in batch], dtype=np.intp)
    return np.stack([sig[i] for i in images]), ia, ib


def _fine_test(coarse: float, fine_a: np.ndarray, fine_b: np.ndarray) -> SameCellTest:
    R = SAME_CELL_MAX_SHIFT // 2
    corr, dy, dx = _best(_ncc_all_shifts(fine_a, fine_b, R), R, 2)
    return SameCellTest(dy, dx, coarse, corr, corr >= SAME_CELL_MIN_CORR)


# Worker-side pieces of the parallel same-cell tests (module level: picklable for process pools).
def _signature_of(load_pixels: Callable[[str], np.ndarray], relpath: str) -> np.ndarray:
    return signature(np.asarray(load_pixels(relpath)))


def _near_pairs_task(search: tuple[np.ndarray, int]) -> np.ndarray:
    return neardup.near_pairs(*search)


def gate_corr(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The duplicate gate's score of two coarse signatures (:func:`signature`)."""
    return float(_gate_corrs({0: sig_a, 1: sig_b}, [(0, 1)])[0])


def _gate_corrs(sig: Mapping[int, np.ndarray], pairs: list[tuple[int, int]], chunk: int = 2048) -> np.ndarray:
    """Zero-shift normalised correlation of the signatures' interiors (DUP_GATE_BORDER cells cut from each
    side), for every pair. Pairs go in chunks, each centring and scaling just its own images' interiors
    (the same arithmetic per image whatever the chunk), so memory stays ~30 MB at any scale."""
    return np.concatenate([np.zeros(0)] + [_gate_chunk(sig, pairs[k : k + chunk]) for k in range(0, len(pairs), chunk)])


def _gate_chunk(sig: Mapping[int, np.ndarray], pairs: list[tuple[int, int]]) -> np.ndarray:
    images = sorted({i for pair in pairs for i in pair})
    where = {i: k for k, i in enumerate(images)}
    cut = DUP_GATE_BORDER
    z = np.stack([sig[i][cut:-cut, cut:-cut].ravel() for i in images]).astype(np.float64)
    z -= z.mean(axis=1, keepdims=True)
    norm = np.sqrt((z * z).sum(axis=1, keepdims=True))
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)  # a flat interior correlates with nothing
    ia = np.array([where[a] for a, _ in pairs], dtype=np.intp)
    ib = np.array([where[b] for _, b in pairs], dtype=np.intp)
    return np.einsum("ij,ij->i", z[ia], z[ib])


def _pixel_tests_of(load_pixels: Callable[[str], np.ndarray], job: tuple[str, str, SameCellTest]) -> PairVerdict:
    """The pixel stage of one pair: the duplicate test; if it fails, the fine same-cell test on the same
    pixels when the coarse stage passed (else the coarse result stands)."""
    a_rel, b_rel, coarse = job
    a, b = np.asarray(load_pixels(a_rel)), np.asarray(load_pixels(b_rel))
    dup = compare_duplicate(a, b)
    if dup.duplicate:
        return PairVerdict(dup, None)
    if coarse.coarse_corr < SAME_CELL_COARSE_CORR:
        return PairVerdict(dup, coarse)
    return PairVerdict(dup, _fine_test(coarse.coarse_corr, _fine_signature(a), _fine_signature(b)))


def same_cell(a: np.ndarray, b: np.ndarray) -> SameCellTest:
    """Do two RGB images show the same cell, possibly refocused or re-cropped (shift <= 24 px)?"""
    return _same_cell(signature(a), signature(b), lambda: _fine_signature(a), lambda: _fine_signature(b))


def centre_hash(rgb: np.ndarray) -> int:
    """64-bit pHash of a 192 x 192 window centred on the stained cell (robust to re-crops).

    The centroid of the dark (stained) mass on a 4x-downscaled grey image registers the window, so a
    crop of the same field taken 6-20 px off centre hashes (nearly) the same. Meant to be computed
    once per image where the image is decoded (like pHash) and handed to :func:`deduplicate`.
    """
    g = _grey(rgb)
    return _centre_hash_of(g, _down(g, 4))


def _centre_hash_of(g: np.ndarray, d: np.ndarray) -> int:
    h, w = g.shape
    wgt = np.clip(np.median(d) - d - 60.0, 0, None)
    if wgt.sum() > 0:
        yy, xx = np.mgrid[: d.shape[0], : d.shape[1]]
        cy = float((wgt * yy).sum() / wgt.sum()) * 4 + 1.5
        cx = float((wgt * xx).sum() / wgt.sum()) * 4 + 1.5
    else:
        cy, cx = h / 2, w / 2
    half = min(CENTRE_HALF, h // 2, w // 2)
    y0 = int(round(min(max(cy - half, 0), h - 2 * half)))
    x0 = int(round(min(max(cx - half, 0), w - 2 * half)))
    win = np.clip(g[y0 : y0 + 2 * half, x0 : x0 + 2 * half] + 0.5, 0, 255).astype(np.uint8)
    return phash_of_grey(win)  # = int(str(imagehash.phash(Image.fromarray(win, "L"))), 16), faster (pipeline.stages.phash)


class _UnionFind:
    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, i: int, j: int) -> None:
        ri, rj = self.find(i), self.find(j)
        if ri != rj:
            self.parent[max(ri, rj)] = min(ri, rj)

    def groups(self) -> dict[int, list[int]]:
        out: dict[int, list[int]] = {}
        for i in range(len(self.parent)):
            out.setdefault(self.find(i), []).append(i)
        return out


def _default_prefer(f: ImageFacts) -> tuple:
    return (not f.lossless,)


def _hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


def _others(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def deduplicate(
    facts: Sequence[ImageFacts],
    load_pixels: Callable[[str], np.ndarray],
    *,
    phash_threshold: int,
    lookalike_threshold: int,
    policy: str,
    prefer: Callable[[ImageFacts], tuple] | None = None,
    centre_hashes: Mapping[str, int] | None = None,
    stats: dict | None = None,
    map_fn: Callable[[Callable, list], Iterable] | None = None,
    pair_memo: PairMemo | None = None,
) -> DedupResult:
    """Fates, look-alike groups and confirmed pairs for every image in ``facts``.

    ``prefer(f)`` gives a sort key; within a duplicate group the smallest (key, relpath) is kept. The
    default key prefers lossless files, so the kept copy is the first lossless one by relpath.
    ``centre_hashes`` (relpath -> :func:`centre_hash`) adds re-crop candidates; without it a
    ``centre_hash`` attribute of the facts is used when every fact has one. ``stats``, when given, is
    filled with counts (candidates, pixel loads, tests run) for reports. ``map_fn(fn, items)`` (results in
    order, e.g. an executor's map) runs the same-cell tests' image work in parallel; ``fn`` and
    ``load_pixels`` must then be picklable. The outcome is the same with or without it. ``pair_memo``
    remembers same-cell test results by the pair's file sha256s across builds (pipeline.runtime.cache).
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown conflict policy {policy!r}; expected one of {POLICIES}")
    if lookalike_threshold < phash_threshold:
        raise ValueError("lookalike_threshold must be >= phash_threshold")
    items = sorted(facts, key=lambda f: f.relpath)
    for x, y in zip(items, items[1:]):
        if x.relpath == y.relpath:
            raise ValueError(f"relpath given twice: {x.relpath}")
    n = len(items)
    key = prefer or _default_prefer
    counters = Counter()

    dup_uf, cell_uf = _UnionFind(n), _UnionFind(n)
    pairs: list[Pair] = []

    # 1. Identical pixels.
    by_sha: dict[str, list[int]] = {}
    for i, f in enumerate(items):
        by_sha.setdefault(f.pixel_sha256, []).append(i)
    reps = sorted(members[0] for members in by_sha.values())
    for members in by_sha.values():
        for m in members[1:]:
            dup_uf.union(members[0], m)
            cell_uf.union(members[0], m)
            pairs.append(Pair(items[members[0]].relpath, items[m].relpath, "exact", 0, "identical pixels", "pixel sha256 equal", math.inf))

    # 2. Candidates among one representative per distinct pixel hash (the two index searches side by side).
    cand: set[tuple[int, int]] = set()
    run = map_fn or map
    if len(reps) > 1:
        searches = [(np.array([items[r].phash for r in reps], dtype=np.uint64), lookalike_threshold)]
        ch_of = _centre_hashes(items, centre_hashes)
        if ch_of is not None:
            searches.append((np.array([ch_of[r] for r in reps], dtype=np.uint64), CENTRE_RADIUS))
        found = list(run(_near_pairs_task, searches))
        for k, pairs_found in enumerate(found):
            before = len(cand)
            for i, j in np.asarray(pairs_found).tolist():
                cand.add((reps[min(i, j)], reps[max(i, j)]))
            counters["phash_candidates" if k == 0 else "centre_candidates_added"] = len(cand) - before


    # 3. Test every candidate, in a fixed order. Every test is a pure function of the pair's pixels, so the
    # pixel work runs beforehand (in parallel with map_fn) and is only looked up here.
    ordered = sorted(cand)
    floor = {(a, b) for a, b in ordered if _hamming(items[a].phash, items[b].phash) <= phash_threshold}
    verdicts = _remembered(items, ordered, pair_memo, floor)
    counters["pairs_remembered"] = len(verdicts)
    fresh = _pair_verdicts(items, [pair for pair in ordered if pair not in verdicts], floor, load_pixels, run, counters)
    verdicts.update(fresh)
    if pair_memo is not None:
        pair_memo.remember({fk: v for pair, v in fresh.items() if (fk := _file_key(items, pair)) is not None})
    for a, b in ordered:
        h = _hamming(items[a].phash, items[b].phash)
        v = verdicts[(a, b)]
        counters["duplicate_tests"] += v.duplicate is not None
        if v.is_duplicate:
            dup_uf.union(a, b)
            cell_uf.union(a, b)
            pairs.append(Pair(items[a].relpath, items[b].relpath, "near_duplicate", h, "duplicate test", describe_duplicate(v.duplicate), duplicate_margin(v.duplicate)))
            continue
        counters["same_cell_tests"] += 1
        counters["same_cell_fine_tests"] += v.same_cell.coarse_corr >= SAME_CELL_COARSE_CORR
        if v.is_same_cell:
            cell_uf.union(a, b)
            pairs.append(Pair(items[a].relpath, items[b].relpath, "lookalike", h, "same-cell test", describe_lookalike(v), lookalike_margin(v)))
    pairs.sort(key=lambda p: (p.a, p.b, p.kind))

    # 4. Fates per duplicate group; each reason names the test (and its scores) that put the file in it.
    joins = _dup_edges(pairs)
    fates: dict[str, tuple[str, str, str | None]] = {}
    for members in dup_uf.groups().values():
        if len(members) == 1:
            fates[items[members[0]].relpath] = ("kept", "", None)
            continue
        _group_fates(items, members, key, policy, fates, joins)

    # 5. Look-alike groups: id from the smallest pixel hash of the group (independent of order and names).
    # Kept members of a group of several cells name its closest call (the smallest margin to a threshold).
    closest = _closest_lookalike(items, pairs, dup_uf)
    group_of: dict[str, str] = {}
    for members in cell_uf.groups().values():
        smallest = min(items[m].pixel_sha256 for m in members)
        gid = hashlib.sha256(smallest.encode("ascii")).hexdigest()[:16]
        for m in members:
            group_of[items[m].relpath] = gid
            call = closest.get(dup_uf.find(m))
            fate, reason, dup_of = fates[items[m].relpath]
            if call is not None and fate == "kept":
                note = f"look-alike group {gid} of {len(members)} images; closest call {call.a} ~ {call.b}: {call.score}"
                fates[items[m].relpath] = (fate, f"{reason}; {note}" if reason else note, dup_of)

    counters["pairs_exact"] = sum(p.kind == "exact" for p in pairs)
    counters["pairs_near_duplicate"] = sum(p.kind == "near_duplicate" for p in pairs)
    counters["pairs_lookalike"] = sum(p.kind == "lookalike" for p in pairs)
    counters["images"] = n
    if stats is not None:
        stats.update(counters)
    return DedupResult(fates=dict(sorted(fates.items())), group_of=dict(sorted(group_of.items())), pairs=pairs)


class PairMemo(Protocol):
    """Test results by (file sha256 of a, file sha256 of b): a pure function of the two files."""

    def known(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], PairVerdict]: ...

    def remember(self, results: dict[tuple[str, str], PairVerdict]) -> None: ...


def _file_key(items: list[ImageFacts], pair: tuple[int, int]) -> tuple[str, str] | None:
    a, b = items[pair[0]].file_sha256, items[pair[1]].file_sha256
    return (a, b) if a and b else None


def _remembered(
    items: list[ImageFacts], tested: list[tuple[int, int]], memo: PairMemo | None, floor: set[tuple[int, int]]
) -> dict[tuple[int, int], PairVerdict]:
    """Verdicts the memo holds, except those without a duplicate test for a pair that needs one now
    (within ``phash_threshold``, which a build may have raised since)."""
    if memo is None:
        return {}
    keyed = {key: pair for pair in tested if (key := _file_key(items, pair)) is not None}
    found = {keyed[key]: v for key, v in memo.known(list(keyed)).items()}
    return {pair: v for pair, v in found.items() if v.duplicate is not None or pair not in floor}


def _pair_verdicts(
    items: list[ImageFacts],
    tested: list[tuple[int, int]],
    floor: set[tuple[int, int]],
    load_pixels: Callable[[str], np.ndarray],
    map_fn: Callable,
    counters: Counter,
) -> dict[tuple[int, int], PairVerdict]:
    """The verdict on every pair: the coarse stages for all (vectorised, no pixels), then, for the pairs
    that pass the duplicate gate or the same-cell prefilter and those in ``floor``, one load of both
    images for the pixel duplicate test and, when it fails and the coarse stage allows, the fine
    same-cell test (mapped with ``map_fn``)."""
    coarse, sig = _coarse_stage(items, tested, load_pixels, map_fn, counters)
    gate = dict(zip(tested, _gate_corrs(sig, tested)))
    pixel_pairs = [
        pair for pair in tested if pair in floor or gate[pair] >= DUP_GATE_MIN_CORR or coarse[pair].coarse_corr >= SAME_CELL_COARSE_CORR
    ]
    counters["pixel_loads"] += 2 * len(pixel_pairs)
    counters["duplicate_tests_run"] += len(pixel_pairs)
    jobs = [(items[a].relpath, items[b].relpath, coarse[(a, b)]) for a, b in pixel_pairs]
    verdicts = {pair: PairVerdict(None, coarse[pair]) for pair in tested}
    verdicts.update(zip(pixel_pairs, map_fn(partial(_pixel_tests_of, load_pixels), jobs)))
    return verdicts


def _coarse_stage(
    items: list[ImageFacts], tested: list[tuple[int, int]], load_pixels: Callable[[str], np.ndarray], map_fn: Callable, counters: Counter
) -> tuple[dict[tuple[int, int], SameCellTest], dict[int, np.ndarray]]:
    """The coarse same-cell test of every pair, and the signatures it used, in two rounds mapped with
    ``map_fn``: the signature of each image the facts lack (one load each; the decode stage normally
    stored them all), then the pairs, vectorised, COARSE_BATCH a task. Batches are cut from the sorted
    pair list, so results do not depend on the number of workers."""
    involved = sorted({i for pair in tested for i in pair})
    stored = {i: _stored_signature(items[i]) for i in involved}
    missing = [i for i in involved if stored[i] is None]
    counters["pixel_loads"] += len(missing)
    sig = {i: s for i, s in stored.items() if s is not None}
    sig.update(zip(missing, map_fn(partial(_signature_of, load_pixels), [items[i].relpath for i in missing])))
    batches = [tested[k : k + COARSE_BATCH] for k in range(0, len(tested), COARSE_BATCH)]
    tasks = _LazyTasks(batches, partial(_coarse_task, sig=sig))  # stacked as sent: ~1 MB each, ~200 of them at full scale
    return dict(zip(tested, (t for tests in map_fn(_coarse_batch, tasks) for t in tests))), sig


class _LazyTasks(Sequence):
    """make(item) for each item, built only when read: an executor holds just the tasks in flight."""

    def __init__(self, items: list, make: Callable) -> None:
        self._items, self._make = items, make

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self._make(item) for item in self._items[index]]
        return self._make(self._items[index])


def _stored_signature(f: ImageFacts) -> np.ndarray | None:
    data = getattr(f, "signature", None)
    if data is None:
        return None
    return np.frombuffer(data, dtype=np.uint8).reshape(signature_shape(f.width, f.height))


def _centre_hashes(items: list[ImageFacts], given: Mapping[str, int] | None) -> list[int] | None:
    if given is not None:
        missing = [f.relpath for f in items if f.relpath not in given]
        if missing:
            raise ValueError(f"centre_hashes lacks {len(missing)} images, e.g. {missing[0]}")
        return [int(given[f.relpath]) for f in items]
    if items and all(getattr(f, "centre_hash", None) is not None for f in items):
        return [int(f.centre_hash) for f in items]  # type: ignore[attr-defined]
    return None


def describe_duplicate(t: DuplicateTest) -> str:
    """The duplicate test's scores and bounds, for the ledger and the card's dedup figure."""
    lo, hi = DUP_HF_RATIO
    return (
        f"duplicate test: rms {t.rms:.2f} (max {DUP_MAX_RMS:g}), gain {t.gain:.3f} (1 +- {DUP_MAX_GAIN:g}); "
        f"hf ratio {t.hf_ratio:.3f} ({lo:g}-{hi:g}), shift ({t.dy}, {t.dx})"
    )


def duplicate_failures(t: DuplicateTest) -> list[str]:
    """Which bounds of the duplicate test a pair missed (empty for a duplicate)."""
    lo, hi = DUP_HF_RATIO
    out = []
    if not t.rms <= DUP_MAX_RMS:
        out.append(f"rms {t.rms:.2f} > {DUP_MAX_RMS:g}")
    if not abs(t.gain - 1.0) <= DUP_MAX_GAIN:
        out.append(f"gain {t.gain:.3f} outside 1 +- {DUP_MAX_GAIN:g}")
    if not lo <= t.hf_ratio <= hi:
        out.append(f"hf ratio {t.hf_ratio:.3f} outside {lo:g}-{hi:g}")
    return out


def describe_lookalike(v: PairVerdict) -> str:
    s = v.same_cell
    text = f"same-cell test: corr {s.corr:.4f} (min {SAME_CELL_MIN_CORR:g}) at shift ({s.dy}, {s.dx})"
    if v.duplicate is not None:
        text += "; duplicate test failed: " + ", ".join(duplicate_failures(v.duplicate))
    return text


def _hf_distance(hf: float) -> float:
    """log distance of the hf ratio to the middle of its band, in half-bands: < 1 inside, > 1 outside."""
    lo, hi = DUP_HF_RATIO
    return abs(math.log(hf / math.sqrt(lo * hi))) / math.log(math.sqrt(hi / lo)) if hf > 0 and math.isfinite(hf) else math.inf


def duplicate_margin(t: DuplicateTest) -> float:
    """How far a confirmed duplicate is from failing: the smallest relative slack of its three bounds
    (1 = a perfect copy, 0 = on a bound)."""
    return min(1.0 - t.rms / DUP_MAX_RMS, 1.0 - abs(t.gain - 1.0) / DUP_MAX_GAIN, 1.0 - _hf_distance(t.hf_ratio))


def lookalike_margin(v: PairVerdict) -> float:
    """How far a look-alike is from the other answers: from failing the same-cell test (its correlation
    above the bound, relative to the room up to 1) and from passing the duplicate test (its worst
    relative excess over a duplicate bound)."""
    margin = (v.same_cell.corr - SAME_CELL_MIN_CORR) / (1.0 - SAME_CELL_MIN_CORR)
    t = v.duplicate
    if t is not None:
        excess = max(t.rms / DUP_MAX_RMS - 1.0, abs(t.gain - 1.0) / DUP_MAX_GAIN - 1.0, _hf_distance(t.hf_ratio) - 1.0)
        margin = min(margin, excess)
    return margin


def _dup_edges(pairs: list[Pair]) -> dict[str, list[Pair]]:
    """The duplicate pairs (identical pixels or the duplicate test) each file is part of."""
    out: dict[str, list[Pair]] = {}
    for p in pairs:
        if p.kind in ("exact", "near_duplicate"):
            out.setdefault(p.a, []).append(p)
            out.setdefault(p.b, []).append(p)
    return out


def _join_text(me: str, kept: str | None, joins: dict[str, list[Pair]]) -> str:
    """The test that joined ``me`` to its duplicate group: its pair with the kept copy where there is one,
    else its pixel-tested pair closest to a bound."""
    p = min(joins[me], key=lambda p: (kept not in (p.a, p.b), p.kind == "exact", p.margin, p.a, p.b))
    other = p.b if p.a == me else p.a
    if p.kind == "exact":
        return f"identical pixels to {other}"
    return f"{p.score}; against {other}, pHash distance {p.hamming}"


def _closest_lookalike(items: list[ImageFacts], pairs: list[Pair], dup_uf: _UnionFind) -> dict[int, Pair]:
    """Per duplicate group (by its union-find root), its look-alike pair with the smallest margin."""
    index = {f.relpath: i for i, f in enumerate(items)}
    out: dict[int, Pair] = {}
    for p in pairs:
        if p.kind != "lookalike":
            continue
        for rel in (p.a, p.b):
            root = dup_uf.find(index[rel])
            if root not in out or (p.margin, p.a, p.b) < (out[root].margin, out[root].a, out[root].b):
                out[root] = p
    return out


def _group_fates(items, members, key, policy, fates, joins) -> None:
    by_label: dict[str, list[int]] = {}
    for m in members:
        by_label.setdefault(items[m].label, []).append(m)

    def pick(ms: list[int]) -> int:
        return min(ms, key=lambda m: (key(items[m]), items[m].relpath))

    def mark_duplicates(ms: list[int], keep: int) -> None:
        kr = items[keep].relpath
        fates[kr] = ("kept", f"kept copy of a duplicate group of {len(ms)} files", None)
        for m in ms:
            if m == keep:
                continue
            me = items[m].relpath
            if items[m].pixel_sha256 == items[keep].pixel_sha256:
                how = "identical pixels"
            else:
                how = f"the same image up to re-encoding, shift or brightness ({_join_text(me, kr, joins)})"
            fates[me] = ("duplicate", f"duplicate of {kr}: {how}", kr)

    if len(by_label) == 1:
        mark_duplicates(members, pick(members))
        return
    names = sorted(items[m].relpath for m in members)
    summary = ", ".join(f"{lab} x{len(ms)}" for lab, ms in sorted(by_label.items()))
    if policy == "majority":
        lab, ms = max(by_label.items(), key=lambda kv: (len(kv[1]), kv[0]))
        if 2 * len(ms) > len(members):
            keep = pick(ms)
            mark_duplicates(ms, keep)
            kr = items[keep].relpath
            for m in members:
                if items[m].label != lab:
                    fates[items[m].relpath] = (
                        "label_conflict",
                        f"label conflict: labelled {items[m].label} but the majority of {len(members)} copies say {lab} ({summary}); {kr} kept; "
                        f"{_join_text(items[m].relpath, None, joins)}",
                        None,
                    )
            return
    why = "no strict majority" if policy == "majority" else "policy drop_all drops every copy"
    for m in members:
        me = items[m].relpath
        fates[me] = (
            "label_conflict",
            f"label conflict: copies of one image labelled {summary} ({why}); other copies: {_others([x for x in names if x != me])}; "
            f"{_join_text(me, None, joins)}",
            None,
        )
