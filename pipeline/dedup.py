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
   most ``lookalike_threshold`` bits (``pipeline.neardup.near_pairs``, exact and sub-quadratic), plus
   pairs whose *centre hash* (a pHash of a window registered on the stained cell: see
   :func:`centre_hash`; robust to re-crops, which move the ordinary pHash by up to ~24 bits) differs
   by at most ``CENTRE_RADIUS``, when the facts carry one (attribute ``centre_hash``) or the caller
   passes ``centre_hashes``;
3. each candidate within ``phash_threshold`` bits is compared pixel by pixel (:func:`compare_duplicate`);
   a confirmed pair is a duplicate. Other candidates (and candidates that failed that test) get the
   same-cell test (:func:`same_cell`): a confirmed pair is a look-alike;
4. union-find over duplicate pairs gives duplicate groups (labels agree -> keep one; disagree ->
   ``policy``), and over all confirmed pairs the look-alike groups.

Only candidate pairs ever cause a pixel load: the duplicate tests (a few hundred at full scale) and the
fine same-cell stage (~1.4% of the candidates). The coarse same-cell signature (36 x 36 uint8, 1.3 kB)
comes with the facts (the decode stage computes it with the centre hash: :func:`cell_features`); it is
computed here only for facts that lack it. With ``map_fn`` the index searches and every pixel test run
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

from pipeline import neardup
from pipeline.phash import phash_of_grey
from pipeline.records import DedupResult, ImageFacts, Pair

__all__ = [
    "deduplicate",
    "compare_duplicate",
    "same_cell",
    "centre_hash",
    "signature",
    "DuplicateTest",
    "SameCellTest",
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
# misalignment; focus is tested by the high-frequency ratio below.
DUP_MAX_RMS = 4.0
# Global brightness change allowed (mean-brightness ratio). Planted brighter copies: 1.031-1.058.
DUP_MAX_GAIN = 0.12
# Ratio of the high-frequency energy of the two images over the overlap: mean square of the
# 4-neighbour Laplacian after a Gaussian of sigma 1 (which removes pixel noise but keeps cell
# structure), the brightness gain divided out. Re-encoding, shifts and brightness leave it near 1,
# a refocus changes it a lot. Measured at scale 1 (112 confirmed duplicate pairs, 119 refocused
# look-alikes): duplicates 0.952-1.013 (JPEG 0.980-1.013, brighter 0.952-1.003, shift 1.000);
# blurred look-alikes (extra sigma 1-2) 0.175-0.686, sharper ones 1.569-2.761. Each bound sits near the
# geometric middle of its gap (0.686|0.952 -> 0.80; 1.013|1.569 -> 1.25): ~17-26% margin either side.
DUP_HF_RATIO = (0.80, 1.25)
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

# ---- Centre hash (re-crop candidates) ----
CENTRE_HALF = 96  # the hashed window is 192 x 192 px around the stained cell's centroid
CENTRE_RADIUS = 10  # re-crops by 6-20 px: centre-hash distance 0-12 (pHash: 2-24); ~half the candidates

_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
COARSE_BATCH = 512  # coarse same-cell tests per task: ~2 x 0.7 MB of signatures, ~0.1 s of work


def _grey(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb, dtype=np.float32) @ _LUMA


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


def compare_duplicate(a: np.ndarray, b: np.ndarray) -> DuplicateTest:
    """Is b the same scan as a, up to re-encoding noise, lossy compression, a 1-2 px shift and brightness?

    Search integer shifts in [-2, 2]^2 for the smallest grey residual after a least-squares gain and
    offset; at that shift measure the per-channel RMS residual after mean-brightness compensation
    (saturated pixels, e.g. white padding, left out), the gain, and the focus-sensitive ratio of
    high-frequency energy. Duplicate iff all three are within the module's bounds.
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
    ok = (A.max(axis=-1) < 250) & (B.max(axis=-1) < 250)
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
    hf = (eb / (gain * gain)) / ea if ea > 0 else (1.0 if eb == 0 else math.inf)
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


def _duplicate_test_of(load_pixels: Callable[[str], np.ndarray], job: tuple[str, str]) -> DuplicateTest:
    return compare_duplicate(np.asarray(load_pixels(job[0])), np.asarray(load_pixels(job[1])))


def _fine_test_of(load_pixels: Callable[[str], np.ndarray], job: tuple[str, str, float]) -> SameCellTest:
    a, b, coarse = job
    return _fine_test(coarse, _fine_signature(np.asarray(load_pixels(a))), _fine_signature(np.asarray(load_pixels(b))))


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
    return phash_of_grey(win)  # = int(str(imagehash.phash(Image.fromarray(win, "L"))), 16), faster (pipeline.phash)


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
    remembers same-cell test results by the pair's file sha256s across builds (pipeline.cache).
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
    via_pixels: set[int] = set()  # members joined to their group by a near-duplicate (not identical pixels)

    # 1. Identical pixels.
    by_sha: dict[str, list[int]] = {}
    for i, f in enumerate(items):
        by_sha.setdefault(f.pixel_sha256, []).append(i)
    reps = sorted(members[0] for members in by_sha.values())
    for members in by_sha.values():
        for m in members[1:]:
            dup_uf.union(members[0], m)
            cell_uf.union(members[0], m)
            pairs.append(Pair(items[members[0]].relpath, items[m].relpath, "exact", 0))

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


    # 3. Confirm on pixels, in a fixed order. Every test is a pure function of the pair's pixels, so with
    # map_fn the same-cell tests are run beforehand in parallel and only looked up here.
    ordered = sorted(cand)
    dup_pairs = [(a, b) for a, b in ordered if _hamming(items[a].phash, items[b].phash) <= phash_threshold]
    counters["duplicate_tests"] = len(dup_pairs)
    counters["pixel_loads"] += 2 * len(dup_pairs)
    jobs = [(items[a].relpath, items[b].relpath) for a, b in dup_pairs]
    duplicate = dict(zip(dup_pairs, run(partial(_duplicate_test_of, load_pixels), jobs)))
    tested = [(a, b) for a, b in ordered if not ((a, b) in duplicate and duplicate[(a, b)].duplicate)]
    cell_tests = _remembered(items, tested, pair_memo)
    todo = [pair for pair in tested if pair not in cell_tests]
    counters["same_cell_remembered"] = len(cell_tests)
    fresh = _same_cell_tests(items, todo, load_pixels, run, counters)
    cell_tests.update(fresh)
    if pair_memo is not None:
        pair_memo.remember({(items[a].file_sha256, items[b].file_sha256): t for (a, b), t in fresh.items() if items[a].file_sha256 and items[b].file_sha256})
    for a, b in ordered:
        h = _hamming(items[a].phash, items[b].phash)
        t = duplicate.get((a, b))
        if t is not None and t.duplicate:
            dup_uf.union(a, b)
            cell_uf.union(a, b)
            via_pixels.update((a, b))
            pairs.append(Pair(items[a].relpath, items[b].relpath, "near_duplicate", h))
            continue
        counters["same_cell_tests"] += 1
        s = cell_tests[(a, b)]
        counters["same_cell_fine_tests"] += s.coarse_corr >= SAME_CELL_COARSE_CORR
        if s.same:
            cell_uf.union(a, b)
            pairs.append(Pair(items[a].relpath, items[b].relpath, "lookalike", h))

    # 4. Fates per duplicate group.
    fates: dict[str, tuple[str, str, str | None]] = {}
    for members in dup_uf.groups().values():
        if len(members) == 1:
            fates[items[members[0]].relpath] = ("kept", "", None)
            continue
        _group_fates(items, members, key, policy, fates)

    # 5. Look-alike groups: id from the smallest pixel hash of the group (independent of order and names).
    group_of: dict[str, str] = {}
    for members in cell_uf.groups().values():
        smallest = min(items[m].pixel_sha256 for m in members)
        gid = hashlib.sha256(smallest.encode("ascii")).hexdigest()[:16]
        for m in members:
            group_of[items[m].relpath] = gid

    pairs.sort(key=lambda p: (p.a, p.b, p.kind))
    counters["pairs_exact"] = sum(p.kind == "exact" for p in pairs)
    counters["pairs_near_duplicate"] = sum(p.kind == "near_duplicate" for p in pairs)
    counters["pairs_lookalike"] = sum(p.kind == "lookalike" for p in pairs)
    counters["images"] = n
    if stats is not None:
        stats.update(counters)
    return DedupResult(fates=dict(sorted(fates.items())), group_of=dict(sorted(group_of.items())), pairs=pairs)


class PairMemo(Protocol):
    """Same-cell test results by (file sha256 of a, file sha256 of b): a pure function of the two files."""

    def known(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], SameCellTest]: ...

    def remember(self, results: dict[tuple[str, str], SameCellTest]) -> None: ...


def _remembered(items: list[ImageFacts], tested: list[tuple[int, int]], memo: PairMemo | None) -> dict[tuple[int, int], SameCellTest]:
    if memo is None:
        return {}
    keyed = {(items[a].file_sha256, items[b].file_sha256): (a, b) for a, b in tested if items[a].file_sha256 and items[b].file_sha256}
    return {keyed[key]: test for key, test in memo.known(list(keyed)).items()}


def _same_cell_tests(
    items: list[ImageFacts], tested: list[tuple[int, int]], load_pixels: Callable[[str], np.ndarray], map_fn: Callable, counters: Counter
) -> dict[tuple[int, int], SameCellTest]:
    """_same_cell for every pair, in three rounds mapped with ``map_fn``: the coarse signature of each
    image the facts lack (one load each; the decode stage normally stored them all), the coarse test of
    every pair (vectorised, COARSE_BATCH pairs a task), the fine test of the pairs that pass it (two loads
    each). Batches are cut from the sorted pair list, so results do not depend on the number of workers."""
    involved = sorted({i for pair in tested for i in pair})
    stored = {i: _stored_signature(items[i]) for i in involved}
    missing = [i for i in involved if stored[i] is None]
    counters["pixel_loads"] += len(missing)
    sig = {i: s for i, s in stored.items() if s is not None}
    sig.update(zip(missing, map_fn(partial(_signature_of, load_pixels), [items[i].relpath for i in missing])))
    batches = [tested[k : k + COARSE_BATCH] for k in range(0, len(tested), COARSE_BATCH)]
    tasks = _LazyTasks(batches, partial(_coarse_task, sig=sig))  # stacked as sent: ~1 MB each, ~200 of them at full scale
    coarse = dict(zip(tested, (t for tests in map_fn(_coarse_batch, tasks) for t in tests)))
    fine_pairs = [pair for pair in tested if coarse[pair].coarse_corr >= SAME_CELL_COARSE_CORR]
    counters["pixel_loads"] += 2 * len(fine_pairs)
    jobs = [(items[a].relpath, items[b].relpath, coarse[(a, b)].coarse_corr) for a, b in fine_pairs]
    coarse.update(zip(fine_pairs, map_fn(partial(_fine_test_of, load_pixels), jobs)))
    return coarse


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


def _group_fates(items, members, key, policy, fates) -> None:
    by_label: dict[str, list[int]] = {}
    for m in members:
        by_label.setdefault(items[m].label, []).append(m)

    def pick(ms: list[int]) -> int:
        return min(ms, key=lambda m: (key(items[m]), items[m].relpath))

    def mark_duplicates(ms: list[int], keep: int) -> None:
        kr = items[keep].relpath
        fates[kr] = ("kept", "", None)
        for m in ms:
            if m == keep:
                continue
            how = "identical pixels" if items[m].pixel_sha256 == items[keep].pixel_sha256 else "the same image up to re-encoding, shift or brightness (confirmed on pixels)"
            fates[items[m].relpath] = ("duplicate", f"duplicate of {kr}: {how}", kr)

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
                        f"label conflict: labelled {items[m].label} but the majority of {len(members)} copies say {lab} ({summary}); {kr} kept",
                        None,
                    )
            return
    why = "no strict majority" if policy == "majority" else "policy drop_all drops every copy"
    for m in members:
        me = items[m].relpath
        fates[me] = (
            "label_conflict",
            f"label conflict: copies of one image labelled {summary} ({why}); other copies: {_others([x for x in names if x != me])}",
            None,
        )
