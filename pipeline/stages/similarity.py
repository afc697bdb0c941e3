"""The similarity maths dedup decides with: signatures, centre hash, duplicate gate, duplicate and same-cell tests.

Every function here is pure: a function of one or two images (or their signatures). The decode stage
computes :func:`cell_features` (centre hash and coarse signature) for every image; :mod:`pipeline.stages.dedup`
proposes candidate pairs and asks these tests which are duplicates (the same scan of one cell) and which
look-alikes (the same cell refocused or re-cropped).

Both tests have a coarse stage on the 36 x 36 signatures (vectorised over many pairs, no pixels) and a pixel
stage. A pair whose signatures, without their border (where a shifted copy's fill lands), correlate below
``DUP_GATE_MIN_CORR`` cannot be a duplicate (copies correlate >= 0.975 there: bench/bench_dedup_sweep.py),
and one below ``SAME_CELL_COARSE_CORR`` at every shift is not the same cell. The pixel stage
(:func:`pixel_verdict`) runs the duplicate test and, when that fails and the coarse stage allows, the fine
same-cell test on the same pixels. Every bound below was calibrated on the synthetic archive's planted cases
and the robustness sweep (README, "Dedup: where the line is"; bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.fft import next_fast_len

from pipeline.stages.phash import phash_of_grey

__all__ = [
    "DuplicateTest",
    "SameCellTest",
    "PairVerdict",
    "compare_duplicate",
    "same_cell",
    "centre_hash",
    "signature",
    "signature_shape",
    "cell_features",
    "fine_signature",
    "coarse_test",
    "coarse_tests",
    "fine_test",
    "gate_corr",
    "gate_corrs",
    "pair_index",
    "needs_pixel_stage",
    "pixel_verdict",
]


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

# ---- Centre hash (re-crop candidates; dedup searches them within its CENTRE_RADIUS) ----
CENTRE_HALF = 96  # the hashed window is 192 x 192 px around the stained cell's centroid

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


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
    dy, dx = _best_shift(ga, gb)
    sa, sb = _overlap(*ga.shape, dy, dx)
    A = np.asarray(a[sa], dtype=np.float32)
    B = np.asarray(b[sb], dtype=np.float32)
    rms = _compensated_rms(A, B)
    GA, GB = A @ _LUMA, B @ _LUMA
    gain = float(GB.mean() / max(float(GA.mean()), 1e-6))
    hf = _hf_ratio(GA, GB)
    dup = rms <= DUP_MAX_RMS and abs(gain - 1.0) <= DUP_MAX_GAIN and DUP_HF_RATIO[0] <= hf <= DUP_HF_RATIO[1]
    return DuplicateTest(dy, dx, rms, gain, hf, dup)


def _best_shift(ga: np.ndarray, gb: np.ndarray) -> tuple[int, int]:
    """The shift (dy, dx) within +-DUP_MAX_SHIFT with the smallest grey residual after a least-squares gain
    and offset (the first one met on a tie)."""
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
    return best[1], best[2]


def _compensated_rms(A: np.ndarray, B: np.ndarray) -> float:
    """RMS residual per RGB channel of aligned crops after per-channel mean-brightness compensation. Pixels
    saturated in either (white padding, clipped highlights) are left out unless they are most of the crop."""
    ok = (_channel_max(A) < 250) & (_channel_max(B) < 250)
    if ok.sum() < 0.25 * ok.size:
        ok = np.ones_like(ok)
    res = []
    for c in range(3):
        x, y = A[..., c][ok], B[..., c][ok]
        g = float(y.mean() / max(float(x.mean()), 1e-6))
        res.append(float(((y - g * x) ** 2).mean()))
    return math.sqrt(sum(res) / 3)


def _hf_ratio(GA: np.ndarray, GB: np.ndarray) -> float:
    """High-frequency energy of aligned grey crops, b's over a's, with the contrast gain divided out."""
    la = _lap(ndimage.gaussian_filter(GA, HF_PRESMOOTH))
    lb = _lap(ndimage.gaussian_filter(GB, HF_PRESMOOTH))
    ea = float((la * la).mean())
    eb = float((lb * lb).mean())
    # Structure scales with the contrast gain (the regression slope of b on a), not the mean ratio: an
    # added offset (+8 grey levels) changes the mean ratio by ~10% but no edge.
    dA, dB = GA - GA.mean(), GB - GB.mean()
    va = float((dA * dA).mean())
    slope = float((dA * dB).mean()) / va if va > 0 else 1.0
    return (eb / (slope * slope)) / ea if ea > 0 and slope > 0 else (1.0 if eb == ea == 0 else math.inf)


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


def fine_signature(rgb: np.ndarray) -> np.ndarray:
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
    coarse = coarse_test((sig_a, sig_b))
    if coarse.coarse_corr < SAME_CELL_COARSE_CORR:
        return coarse
    return fine_test(coarse.coarse_corr, fine_a(), fine_b())


def coarse_test(sigs: tuple[np.ndarray, np.ndarray]) -> SameCellTest:
    """The coarse stage of the same-cell test; final (not same) unless coarse_corr >= SAME_CELL_COARSE_CORR."""
    return coarse_tests(np.stack(sigs), np.array([0]), np.array([1]))[0]


def coarse_tests(sigs: np.ndarray, ia: np.ndarray, ib: np.ndarray) -> list[SameCellTest]:
    """coarse_test of (sigs[ia[k]], sigs[ib[k]]) for every k, in one vectorised pass."""
    R = max(1, SAME_CELL_MAX_SHIFT // 8)
    ncc = _ncc_indexed(sigs.astype(np.float64), ia, ib, R)
    out = []
    for k in range(ncc.shape[0]):
        coarse, dy, dx = _best(ncc[k], R, 8)
        out.append(SameCellTest(dy, dx, coarse, coarse, False))
    return out


def fine_test(coarse: float, fine_a: np.ndarray, fine_b: np.ndarray) -> SameCellTest:
    """The fine stage of the same-cell test on two fine signatures (:func:`fine_signature`) after a coarse score ``coarse``."""
    R = SAME_CELL_MAX_SHIFT // 2
    corr, dy, dx = _best(_ncc_all_shifts(fine_a, fine_b, R), R, 2)
    return SameCellTest(dy, dx, coarse, corr, corr >= SAME_CELL_MIN_CORR)


def pair_index(pairs: Sequence[tuple[int, int]]) -> tuple[list[int], np.ndarray, np.ndarray]:
    """The images ``pairs`` name, sorted and once each, and every pair's positions of a and of b among them
    (the ``ia``/``ib`` of :func:`coarse_tests`)."""
    images = sorted({i for pair in pairs for i in pair})
    where = {i: k for k, i in enumerate(images)}
    ia = np.array([where[a] for a, _ in pairs], dtype=np.intp)
    ib = np.array([where[b] for _, b in pairs], dtype=np.intp)
    return images, ia, ib


def gate_corr(sig_a: np.ndarray, sig_b: np.ndarray) -> float:
    """The duplicate gate's score of two coarse signatures (:func:`signature`)."""
    return float(gate_corrs({0: sig_a, 1: sig_b}, [(0, 1)])[0])


def gate_corrs(sig: Mapping[int, np.ndarray], pairs: list[tuple[int, int]], chunk: int = 2048) -> np.ndarray:
    """Zero-shift normalised correlation of the signatures' interiors (DUP_GATE_BORDER cells cut from each
    side), for every pair. Pairs go in chunks, each centring and scaling just its own images' interiors
    (the same arithmetic per image whatever the chunk), so memory stays ~30 MB at any scale."""
    return np.concatenate([np.zeros(0)] + [_gate_chunk(sig, pairs[k : k + chunk]) for k in range(0, len(pairs), chunk)])


def _gate_chunk(sig: Mapping[int, np.ndarray], pairs: list[tuple[int, int]]) -> np.ndarray:
    images, ia, ib = pair_index(pairs)
    cut = DUP_GATE_BORDER
    z = np.stack([sig[i][cut:-cut, cut:-cut].ravel() for i in images]).astype(np.float64)
    z -= z.mean(axis=1, keepdims=True)
    norm = np.sqrt((z * z).sum(axis=1, keepdims=True))
    z = np.divide(z, norm, out=np.zeros_like(z), where=norm > 0)  # a flat interior correlates with nothing
    return np.einsum("ij,ij->i", z[ia], z[ib])


def needs_pixel_stage(gate: float, coarse: SameCellTest) -> bool:
    """Whether a pair's coarse scores leave it open (it may be a duplicate by the gate, or the same cell by the
    prefilter), so that its pixels must be loaded. (Pairs within dedup's phash_threshold get them anyway.)"""
    return gate >= DUP_GATE_MIN_CORR or coarse.coarse_corr >= SAME_CELL_COARSE_CORR


def pixel_verdict(load_pixels: Callable[[str], np.ndarray], job: tuple[str, str, SameCellTest]) -> PairVerdict:
    """The pixel stage of one pair: the duplicate test; if it fails, the fine same-cell test on the same
    pixels when the coarse stage passed (else the coarse result stands)."""
    a_rel, b_rel, coarse = job
    a, b = np.asarray(load_pixels(a_rel)), np.asarray(load_pixels(b_rel))
    dup = compare_duplicate(a, b)
    if dup.duplicate:
        return PairVerdict(dup, None)
    if coarse.coarse_corr < SAME_CELL_COARSE_CORR:
        return PairVerdict(dup, coarse)
    return PairVerdict(dup, fine_test(coarse.coarse_corr, fine_signature(a), fine_signature(b)))


def same_cell(a: np.ndarray, b: np.ndarray) -> SameCellTest:
    """Do two RGB images show the same cell, possibly refocused or re-cropped (shift <= 24 px)?"""
    return _same_cell(signature(a), signature(b), lambda: fine_signature(a), lambda: fine_signature(b))


def centre_hash(rgb: np.ndarray) -> int:
    """64-bit pHash of a 192 x 192 window centred on the stained cell (robust to re-crops).

    The centroid of the dark (stained) mass on a 4x-downscaled grey image registers the window, so a
    crop of the same field taken 6-20 px off centre hashes (nearly) the same. Meant to be computed
    once per image where the image is decoded (like pHash) and handed to :func:`pipeline.stages.dedup.deduplicate`.
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
