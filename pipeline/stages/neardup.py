"""Exact, sub-quadratic search for all pairs of 64-bit hashes within a Hamming radius.

Method: generalised pigeonhole (multi-index hashing). Cut the 64 bits into ``m`` contiguous blocks.
If ``popcount(x ^ y) <= k`` the differing bits touch at most ``k`` blocks, so ``x`` and ``y`` agree
exactly on at least ``m - k`` blocks, i.e. on every block of at least one ``(m - k)``-subset of the
blocks. For every such subset ("combination") we group the hashes by the bits of those blocks (one
sort), take the pairs inside each group of equal keys as candidates and keep those whose full
distance is ``<= k``. No pair within the radius can be missed (pigeonhole) and none outside it is
kept (every candidate is verified), so the result is exactly what brute force finds.

Repeats across combinations are removed without a global ``np.unique``: a pair is emitted only by its
canonical combination, the lexicographically first one it collides in (the first ``m - k`` blocks
on which it agrees). Each pair is therefore produced once, and memory stays bounded by the output
plus one chunk of candidates.

Identical hashes are collapsed first. The search runs on the distinct values, so a value repeated
``r`` times never becomes a run of ``r`` candidates per combination; the ``r * (r - 1) / 2``
distance-0 pairs and the cross products of near groups are written out once at the end (that part
is the output itself and cannot be smaller).

Everything is vectorised numpy: one sort and a few array passes per combination, with candidate
pairs generated in chunks of at most ``_CHUNK_PAIRS`` (plus one run).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator
from itertools import combinations

import numpy as np

__all__ = ["near_pairs", "near_pairs_bruteforce", "hamming", "choose_blocks"]

_CHUNK_PAIRS = 1 << 21  # candidate pairs generated and verified at once
_SAMPLE_VALUES = 1 << 14  # distinct values whose key collisions are counted to choose the block count
_BF_CELLS = 1 << 18  # cells of the (rows x columns) distance block brute force holds at once

# Rough single-core costs in ns, measured on an AMD EPYC with numpy 2.4; only their ratios matter.
# They pick the block count m and decide when brute force is cheaper (tiny n or a wide radius).
_COST_PER_KEY = 80.0  # per hash per combination: mask, argsort, gather, run detection
_COST_PER_CANDIDATE = 18.0  # per candidate pair: generate, gather, xor, popcount, compare
_COST_PER_COMBINATION = 20_000.0  # Python and allocation overhead of one combination
_COST_PER_BF_PAIR = 2.8  # per pair of the all-pairs brute force

_EMPTY = np.empty((0, 2), dtype=np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Elementwise Hamming distance ``popcount(a ^ b)`` of uint64 arrays (numpy broadcasting applies).

    Returns ``np.bitwise_count``'s result, dtype uint8 (values 0..64): compare it freely, but cast
    before subtracting from it.
    """
    return np.bitwise_count(np.bitwise_xor(_as_u64(a), _as_u64(b)))


def near_pairs(hashes: np.ndarray, threshold: int, *, blocks: int | None = None) -> np.ndarray:
    """All index pairs ``(i, j)``, ``i < j``, with ``popcount(hashes[i] ^ hashes[j]) <= threshold``.

    ``hashes``: 1-D uint64 array (other integer arrays are reinterpreted as their 64-bit patterns;
    a list of Python ints, e.g. ``ImageFacts.phash`` values, is taken exactly).
    Returns an int64 array of shape ``(k, 2)``, rows sorted lexicographically, no repeats.

    Exact by pigeonhole (see the module docstring): the set equals ``near_pairs_bruteforce``'s.
    ``blocks`` forces the number of blocks ``m`` (``threshold < m <= 64``; it costs C(m, threshold)
    sorts, so keep it near ``threshold + 2``); by default
    ``choose_blocks`` picks it from a cost estimate, and falls back to the (equally exact) brute
    force over the distinct values where that is cheaper: tiny inputs or wide radii.
    """
    h = _as_hashes(hashes)
    k = _as_threshold(threshold)
    n = h.size
    if n < 2:
        return _EMPTY.copy()
    values, inverse = np.unique(h, return_inverse=True)
    # members: original indices grouped by distinct value, ascending inside each group
    members = np.argsort(inverse, kind="stable")
    sizes = np.bincount(inverse, minlength=values.size)
    starts = np.cumsum(sizes) - sizes

    parts = [_group_pairs(members, starts, sizes)]  # distance 0: pairs inside groups of identical hashes
    if values.size >= 2 and k > 0:
        if blocks is None:
            m = choose_blocks(values.size, k, values)
        else:
            m = operator.index(blocks)
            if not k < m <= 64:
                raise ValueError(f"blocks must satisfy threshold < blocks <= 64, got blocks={m}, threshold={k}")
        if m is None:
            du, dv = _bruteforce_kernel(values, k)
        else:
            du, dv = _index_search(values, k, m)
        parts.append(_expand_cross(du, dv, members, starts, sizes))
    return _sorted_rows(parts, n)


def near_pairs_bruteforce(hashes: np.ndarray, threshold: int) -> np.ndarray:
    """Reference: compare every pair (vectorised, in row blocks of bounded memory); same contract as
    ``near_pairs``. Quadratic time: use it for checking, not for large inputs."""
    h = _as_hashes(hashes)
    k = _as_threshold(threshold)
    if h.size < 2:
        return _EMPTY.copy()
    i, j = _bruteforce_kernel(h, k)
    return np.stack([i, j], axis=1).astype(np.int64, copy=False)


def choose_blocks(n: int, threshold: int, values: np.ndarray | None = None) -> int | None:
    """Number of blocks ``m`` the index search would use for ``n`` distinct hashes at ``threshold``,
    or None when brute force is estimated to be cheaper.

    Cost per combination ~ sort of n keys + expected colliding pairs; there are C(m, threshold)
    combinations. Narrow keys flood the verify step, many blocks multiply the sorts. Colliding pairs are
    those of uniform hashes, or, given the distinct ``values``, counted on a few of each m's combinations:
    perceptual hashes of similar images are far from uniform (at scale 1 the uniform estimate picked a
    block count 3x slower than the best).
    """
    k = _as_threshold(threshold)
    if k == 0:
        return 1  # identical values are grouped before the search: nothing left to look for
    if k >= 64 or n < 2:
        return None
    all_pairs = n * (n - 1) / 2
    best_m, best_cost = None, all_pairs * _COST_PER_BF_PAIR
    for m in range(k + 1, 65):
        combos = math.comb(m, k)
        if combos * _COST_PER_COMBINATION > best_cost:
            break  # combos only grow with m from here on (m > k)
        cost = combos * (n * _COST_PER_KEY + _COST_PER_COMBINATION)
        if values is not None and values.size == n and cost < best_cost:
            cost += combos * _sampled_collisions(values, m, m - k) * _COST_PER_CANDIDATE
        else:
            cost += all_pairs * _collision_rate(m, m - k) * _COST_PER_CANDIDATE
        if cost < best_cost:
            best_m, best_cost = m, cost
    return best_m


# ---------------------------------------------------------------------------------------- internals


def _as_u64(a) -> np.ndarray:
    """uint64 view of integer input: arrays of any integer dtype (signed ones keep their bit
    pattern), or Python ints in 0..2**64-1 (negative ones as two's complement). Lists go through
    Python ints because numpy turns e.g. ``[0, 2**64 - 1]`` into float64, losing bits."""
    if isinstance(a, np.ndarray) and a.dtype.kind != "O":
        if a.dtype.kind in "iu" or a.size == 0:
            return a if a.dtype == np.uint64 else a.astype(np.uint64)
        raise TypeError(f"hashes must be integers, got dtype {a.dtype}")
    obj = np.asarray(a, dtype=object)
    flat = obj.ravel()
    if not all(isinstance(x, (int, np.integer)) and not isinstance(x, bool) for x in flat):
        raise TypeError("hashes must be integers")
    return np.array([int(x) & 0xFFFF_FFFF_FFFF_FFFF for x in flat], dtype=np.uint64).reshape(obj.shape)


def _as_hashes(hashes) -> np.ndarray:
    h = _as_u64(hashes)
    if h.ndim != 1:
        raise ValueError(f"hashes must be 1-D, got shape {h.shape}")
    return h


def _as_threshold(threshold) -> int:
    k = operator.index(threshold)
    if k < 0:
        raise ValueError(f"threshold must be >= 0, got {k}")
    return k


def _block_layout(m: int) -> list[tuple[int, int]]:
    """(start bit, width) of m contiguous blocks covering 64 bits; widths differ by at most 1."""
    q, r = divmod(64, m)
    layout, start = [], 0
    for b in range(m):
        width = q + 1 if b < r else q
        layout.append((start, width))
        start += width
    return layout


def _block_mask(start: int, width: int) -> int:
    return ((1 << width) - 1) << start


def _collision_rate(m: int, s: int) -> float:
    """Sum over all s-subsets of m blocks of 2**-(key width): expected collisions per uniform pair."""
    q, r = divmod(64, m)
    return sum(
        math.comb(r, t) * math.comb(m - r, s - t) * 2.0 ** -(t * (q + 1) + (s - t) * q) for t in range(0, min(r, s) + 1)
    )


def _sampled_collisions(values: np.ndarray, m: int, s: int, samples: int = 3) -> float:
    """Mean number of colliding pairs per combination of s of m blocks, counted on ``samples`` of them
    spread over the lexicographic order (a deterministic choice, and the result only picks m)."""
    stride = max(1, values.size // _SAMPLE_VALUES)
    sample = values[::stride]  # values are sorted: an even spread; pairs scale with the square of the size
    scale = (values.size / sample.size) ** 2
    count = math.comb(m, s)
    layout = _block_layout(m)
    picked = sorted({round(i * (count - 1) / max(1, samples - 1)) for i in range(samples)})
    total = 0
    for index in picked:
        keys = np.sort(sample & np.uint64(sum(_block_mask(*layout[b]) for b in _combination_at(m, s, index))))
        _, counts = np.unique(keys, return_counts=True)
        total += int((counts * (counts - 1) // 2).sum())
    return scale * total / len(picked)


def _combination_at(m: int, s: int, index: int) -> tuple[int, ...]:
    """The index-th s-subset of range(m) in the lexicographic order of itertools.combinations."""
    out, first = [], 0
    for left in range(s, 0, -1):
        for b in range(first, m):
            below = math.comb(m - b - 1, left - 1)  # subsets that pick b next
            if index < below:
                out.append(b)
                first = b + 1
                break
            index -= below
    return tuple(out)


def _index_search(values: np.ndarray, k: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (u, v), u < v, of positions in ``values`` (distinct hashes) within distance k, each once."""
    layout = _block_layout(m)
    block_masks = [np.uint64(_block_mask(s, w)) for s, w in layout]
    out_u, out_v = [], []
    for combo in combinations(range(m), m - k):  # lexicographic: the canonical order
        key_mask = np.uint64(sum(_block_mask(*layout[b]) for b in combo))
        # blocks before the combination's last one that are not in it: a pair agreeing on any of
        # them also collides in an earlier combination, which is the one that emits it
        earlier = [block_masks[b] for b in range(combo[-1]) if b not in combo]
        keys = values & key_mask
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        new_run = np.empty(keys.size, dtype=bool)
        new_run[0] = True
        np.not_equal(keys[1:], keys[:-1], out=new_run[1:])
        run_starts = np.flatnonzero(new_run)
        run_lens = np.diff(np.append(run_starts, keys.size))
        multi = run_lens >= 2
        if not multi.any():
            continue
        sorted_vals = values[order]
        for p, q in _run_pairs(run_starts[multi], run_lens[multi]):
            diff = sorted_vals[p] ^ sorted_vals[q]
            keep = np.bitwise_count(diff) <= k
            for mask in earlier:
                keep &= (diff & mask) != 0
            a, b = order[p[keep]], order[q[keep]]
            out_u.append(np.minimum(a, b))
            out_v.append(np.maximum(a, b))
    if not out_u:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    return np.concatenate(out_u), np.concatenate(out_v)


def _run_pairs(starts: np.ndarray, lens: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """All position pairs (p, q), p < q, inside each run [start, start + len), in chunks of about
    ``_CHUNK_PAIRS`` pairs (a chunk exceeds it by less than one run). Each run is expanded once."""
    budget = _CHUNK_PAIRS
    starts = np.asarray(starts, dtype=np.intp)
    lens = np.asarray(lens, dtype=np.intp)
    if starts.size == 0:
        return
    first = np.cumsum(lens) - lens  # offset of each run among the concatenated run elements
    pos = np.repeat(starts - first, lens) + np.arange(int(lens.sum()), dtype=np.intp)
    partners = np.repeat(starts + lens, lens) - pos - 1  # later elements of the same run
    has = partners > 0
    pos, partners = pos[has], partners[has]
    cum = np.cumsum(partners)
    lo = 0
    while lo < pos.size:
        done = cum[lo - 1] if lo else 0
        hi = max(int(np.searchsorted(cum, done + budget, side="right")), lo + 1)
        cnt = partners[lo:hi]
        total = int(cum[hi - 1] - done)
        p = np.repeat(pos[lo:hi], cnt)
        base = np.repeat(np.cumsum(cnt) - cnt, cnt)
        q = p + 1 + (np.arange(total, dtype=np.intp) - base)
        yield p, q
        lo = hi


def _group_pairs(members: np.ndarray, starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(i, j) pairs of original indices holding the same hash, as an (x, 2) intp array."""
    multi = sizes >= 2
    chunks = [np.stack([members[p], members[q]], axis=1) for p, q in _run_pairs(starts[multi], sizes[multi])]
    return np.concatenate(chunks) if chunks else np.empty((0, 2), np.intp)


def _expand_cross(du, dv, members, starts, sizes) -> np.ndarray:
    """Every original-index pair (min, max) behind the distinct-value pairs (du, dv)."""
    if du.size == 0:
        return np.empty((0, 2), np.intp)
    su, sv = sizes[du], sizes[dv]
    if np.all(su == 1) and np.all(sv == 1):
        a, b = members[starts[du]], members[starts[dv]]
    else:
        cnt = su * sv
        rep = np.repeat(np.arange(du.size), cnt)
        t = np.arange(int(cnt.sum()), dtype=np.intp) - np.repeat(np.cumsum(cnt) - cnt, cnt)
        width = sv[rep]
        a = members[starts[du][rep] + t // width]
        b = members[starts[dv][rep] + t % width]
    return np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1)


def _sorted_rows(parts: list[np.ndarray], n: int) -> np.ndarray:
    rows = np.concatenate(parts).astype(np.int64, copy=False)
    if rows.shape[0] == 0:
        return _EMPTY.copy()
    if n <= 3_000_000_000:  # i * n + j fits in int64
        codes = np.sort(rows[:, 0] * n + rows[:, 1])
        return np.stack(np.divmod(codes, n), axis=1)
    return rows[np.lexsort((rows[:, 1], rows[:, 0]))]


def _bruteforce_kernel(h: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """All (i, j), i < j, with popcount(h[i] ^ h[j]) <= k, lexicographically sorted; row blocks
    against the columns to their right, holding at most about ``_BF_CELLS`` distances at once."""
    n = h.size
    rows = max(1, _BF_CELLS // n)
    out_i, out_j = [], []
    for a in range(0, n - 1, rows):
        b = min(a + rows, n - 1)
        block = np.bitwise_count(h[a:b, None] ^ h[None, a + 1 :])  # column c is hash a + 1 + c
        ii, cc = np.nonzero(block <= k)
        ii += a
        jj = cc + (a + 1)
        upper = jj > ii
        out_i.append(ii[upper])
        out_j.append(jj[upper])
    if not out_i:
        return np.empty(0, np.intp), np.empty(0, np.intp)
    return np.concatenate(out_i), np.concatenate(out_j)
