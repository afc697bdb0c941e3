"""Dedup's grouping and policy: candidate pairs, duplicate and look-alike groups, label conflicts, each fate's reason.

Every fate names the test that decided it and its scores against the bounds (for the ledger and the card).

What counts as what (the duplicate semantics of the MLL23 paper, Tran et al., Scientific Data 2025,
doi:10.1038/s41597-025-06223-x, as README "What a build does" and "Dedup: where the line is" state them):

* duplicate: the same scan of the same cell, whatever happened to the file afterwards: identical
  pixels (any file name or lossless encoding), or the same pixels up to lossy re-compression (JPEG
  q >= 80), a shift by 1-2 px or a small global brightness change. One copy is kept.
* look-alike: the same cell in another image, refocused (another focal plane) or re-cropped (the cell
  6-20 px off centre). NOT a duplicate: the release keeps every look-alike. Look-alikes (and
  duplicates) share a look-alike group id so that a split can keep one cell in one split.

How it is found, with per-image state limited to the ImageFacts (the tests themselves are
:mod:`pipeline.stages.similarity`'s):

1. identical ``pixel_sha256`` -> duplicates (no pixels read);
2. candidates: one representative per distinct pixel hash; pairs whose 64-bit pHash differs by at
   most ``lookalike_threshold`` bits (``pipeline.stages.neardup.near_pairs``, exact and sub-quadratic), plus
   pairs whose *centre hash* (a pHash of a window registered on the stained cell: robust to re-crops,
   which move the ordinary pHash by up to ~24 bits) differs by at most ``CENTRE_RADIUS``, when every
   fact carries one (``ImageFacts.centre_hash``) or the caller passes ``centre_hashes``;
3. every candidate pair gets the duplicate test first: the hashes only *propose* pairs, they never
   decide that a pair cannot be a duplicate (a copy shifted by one pixel into a white margin moves the
   pHash by 6 bits or more). A confirmed pair is a duplicate. Pairs that fail it get the same-cell
   test: a confirmed pair is a look-alike;
4. union-find (:mod:`pipeline.stages.groups`) over duplicate pairs gives duplicate groups (labels
   agree -> keep one; disagree -> ``policy``), and over all confirmed pairs the look-alike groups.

The coarse stages of both tests run on the signatures the decode stage stored (computed here only for
facts that lack one), vectorised over all candidates; only the pairs they leave open, and every pair
within ``phash_threshold`` bits whatever it scores, are loaded, once, for the pixel stage (1,565 of 99,044
candidates at full scale: bench/RESULTS.md). With ``map_fn`` the index searches and every test run in
parallel; tests are pure functions of their two images, cut into batches from sorted lists, so the
result is the same for any number of workers. Everything is sorted by relpath first, so the result does
not depend on the input order.
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

from pipeline.records import DedupResult, ImageFacts, Pair
from pipeline.stages import neardup
from pipeline.stages.groups import UnionFind
from pipeline.stages.similarity import (
    DUP_HF_RATIO,
    DUP_MAX_GAIN,
    DUP_MAX_RMS,
    SAME_CELL_COARSE_CORR,
    SAME_CELL_MIN_CORR,
    DuplicateTest,
    PairVerdict,
    SameCellTest,
    coarse_tests,
    gate_corrs,
    needs_pixel_stage,
    pair_index,
    pixel_verdict,
    signature,
    signature_shape,
)

__all__ = [
    "deduplicate",
    "PairMemo",
    "POLICIES",
    "CENTRE_RADIUS",
    "describe_duplicate",
    "describe_lookalike",
    "duplicate_failures",
    "duplicate_margin",
    "lookalike_margin",
]

POLICIES = ("drop_all", "majority")
CENTRE_RADIUS = 10  # re-crops by 6-20 px: centre-hash distance 0-12 (pHash: 2-24); ~half the candidates
COARSE_BATCH = 512  # coarse same-cell tests per task: ~2 x 0.7 MB of signatures, ~0.1 s of work

Fate = tuple[str, str, str | None]  # (fate, reason, duplicate_of)
Candidate = tuple[int, int]  # indices into the items sorted by relpath, smaller first


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
    ``centre_hashes`` (relpath -> :func:`pipeline.stages.similarity.centre_hash`) adds re-crop candidates;
    without it the facts' ``centre_hash`` is used when every fact has one. ``stats``, when given, is
    filled with counts (candidates, pixel loads, tests run) for reports. ``map_fn(fn, items)`` (results in
    order, e.g. an executor's map) runs the same-cell tests' image work in parallel; ``fn`` and
    ``load_pixels`` must then be picklable. The outcome is the same with or without it. ``pair_memo``
    remembers same-cell test results by the pair's file sha256s across builds (pipeline.runtime.cache).
    """
    _check_options(policy, phash_threshold, lookalike_threshold)
    found = _Found.of(_sorted_by_relpath(facts))
    run = map_fn or map
    representatives = _join_identical_pixels(found)
    candidates = _candidate_pairs(found, representatives, lookalike_threshold, centre_hashes, run)
    verdicts = _verdicts(found, candidates, phash_threshold, load_pixels, run, pair_memo)
    _join_confirmed(found, candidates, verdicts)
    found.pairs.sort(key=lambda p: (p.a, p.b, p.kind))
    fates = _duplicate_group_fates(found, prefer or _default_prefer, policy)
    group_of = _lookalike_groups(found, fates)
    _count_pairs(found)
    if stats is not None:
        stats.update(found.counters)
    return DedupResult(fates=dict(sorted(fates.items())), group_of=dict(sorted(group_of.items())), pairs=found.pairs)


@dataclass
class _Found:
    """What the steps of :func:`deduplicate` build up over the items sorted by relpath."""

    items: list[ImageFacts]
    duplicates: UnionFind[int]  # duplicate groups
    cells: UnionFind[int]  # look-alike groups: every confirmed pair, duplicates included
    pairs: list[Pair]  # the confirmed pairs
    counters: Counter  # for ``stats``

    @classmethod
    def of(cls, items: list[ImageFacts]) -> _Found:
        return cls(items, UnionFind(range(len(items))), UnionFind(range(len(items))), [], Counter())

    def join(self, a: int, b: int, pair: Pair) -> None:
        """Record a confirmed pair: a look-alike joins the look-alike groups, a duplicate both groupings."""
        if pair.kind != "lookalike":
            self.duplicates.union(a, b)
        self.cells.union(a, b)
        self.pairs.append(pair)


def _check_options(policy: str, phash_threshold: int, lookalike_threshold: int) -> None:
    if policy not in POLICIES:
        raise ValueError(f"unknown conflict policy {policy!r}; expected one of {POLICIES}")
    if lookalike_threshold < phash_threshold:
        raise ValueError("lookalike_threshold must be >= phash_threshold")


def _sorted_by_relpath(facts: Sequence[ImageFacts]) -> list[ImageFacts]:
    items = sorted(facts, key=lambda f: f.relpath)
    for x, y in zip(items, items[1:]):
        if x.relpath == y.relpath:
            raise ValueError(f"relpath given twice: {x.relpath}")
    return items


def _join_identical_pixels(found: _Found) -> list[int]:
    """Step 1: files with identical pixels are duplicates (no pixels read). Returns one representative per
    distinct pixel hash (its first file by relpath), in order."""
    items = found.items
    by_sha: dict[str, list[int]] = {}
    for i, f in enumerate(items):
        by_sha.setdefault(f.pixel_sha256, []).append(i)
    for first, *copies in by_sha.values():
        for m in copies:
            found.join(first, m, Pair(items[first].relpath, items[m].relpath, "exact", 0, "identical pixels", "pixel sha256 equal", math.inf))
    return sorted(members[0] for members in by_sha.values())


def _candidate_pairs(
    found: _Found, reps: list[int], lookalike_threshold: int, centre_hashes: Mapping[str, int] | None, run: Callable
) -> list[Candidate]:
    """Step 2: the pairs of representatives whose pHash is within ``lookalike_threshold`` bits, or whose
    centre hash is within ``CENTRE_RADIUS`` bits, sorted (the two index searches side by side)."""
    items = found.items
    if len(reps) < 2:
        return []
    searches = [(np.array([items[r].phash for r in reps], dtype=np.uint64), lookalike_threshold)]
    centre = _centre_hashes(items, centre_hashes)
    if centre is not None:
        searches.append((np.array([centre[r] for r in reps], dtype=np.uint64), CENTRE_RADIUS))
    cand: set[Candidate] = set()
    for counter, pairs_found in zip(("phash_candidates", "centre_candidates_added"), list(run(_near_pairs_task, searches))):
        before = len(cand)
        for i, j in np.asarray(pairs_found).tolist():
            cand.add((reps[min(i, j)], reps[max(i, j)]))
        found.counters[counter] = len(cand) - before
    return sorted(cand)


def _centre_hashes(items: list[ImageFacts], given: Mapping[str, int] | None) -> list[int] | None:
    if given is not None:
        missing = [f.relpath for f in items if f.relpath not in given]
        if missing:
            raise ValueError(f"centre_hashes lacks {len(missing)} images, e.g. {missing[0]}")
        return [int(given[f.relpath]) for f in items]
    hashes = [f.centre_hash for f in items]
    if items and all(h is not None for h in hashes):
        return [int(h) for h in hashes]
    return None


def _verdicts(
    found: _Found,
    candidates: list[Candidate],
    phash_threshold: int,
    load_pixels: Callable[[str], np.ndarray],
    run: Callable,
    memo: PairMemo | None,
) -> dict[Candidate, PairVerdict]:
    """Step 3: the tests' verdict on every candidate, from ``memo`` where an earlier build tested the same
    two files, else tested now (in parallel with ``run``) and remembered."""
    items = found.items
    floor = {(a, b) for a, b in candidates if _hamming(items[a].phash, items[b].phash) <= phash_threshold}
    verdicts = _remembered(items, candidates, memo, floor)
    found.counters["pairs_remembered"] = len(verdicts)
    fresh = _pair_verdicts(items, [pair for pair in candidates if pair not in verdicts], floor, load_pixels, run, found.counters)
    verdicts.update(fresh)
    if memo is not None:
        memo.remember({key: v for pair, v in fresh.items() if (key := _file_key(items, pair)) is not None})
    return verdicts


def _join_confirmed(found: _Found, candidates: list[Candidate], verdicts: Mapping[Candidate, PairVerdict]) -> None:
    """Each candidate, in order, joined as its verdict says: a duplicate, a look-alike, or not at all."""
    items, counters = found.items, found.counters
    for a, b in candidates:
        h = _hamming(items[a].phash, items[b].phash)
        v = verdicts[(a, b)]
        counters["duplicate_tests"] += v.duplicate is not None
        if v.is_duplicate:
            score, margin = describe_duplicate(v.duplicate), duplicate_margin(v.duplicate)
            found.join(a, b, Pair(items[a].relpath, items[b].relpath, "near_duplicate", h, "duplicate test", score, margin))
            continue
        counters["same_cell_tests"] += 1
        counters["same_cell_fine_tests"] += v.same_cell.coarse_corr >= SAME_CELL_COARSE_CORR
        if v.is_same_cell:
            found.join(a, b, Pair(items[a].relpath, items[b].relpath, "lookalike", h, "same-cell test", describe_lookalike(v), lookalike_margin(v)))


def _duplicate_group_fates(found: _Found, key: Callable[[ImageFacts], tuple], policy: str) -> dict[str, Fate]:
    """Step 4: the fate of every file by its duplicate group; each reason names the test (and its scores)
    that put the file in its group."""
    items = found.items
    joins = _dup_edges(found.pairs)
    fates: dict[str, Fate] = {}
    for members in found.duplicates.groups().values():
        if len(members) == 1:
            fates[items[members[0]].relpath] = ("kept", "", None)
        else:
            fates.update(_group_fates(items, members, key, policy, joins))
    return fates


def _lookalike_groups(found: _Found, fates: dict[str, Fate]) -> dict[str, str]:
    """Step 5: relpath -> look-alike group id, from the group's smallest pixel hash (independent of order and
    names). The kept members of a group of several cells get its closest call (the smallest margin to a
    threshold) added to their reason in ``fates``."""
    items = found.items
    closest = _closest_lookalike(items, found.pairs, found.duplicates)
    group_of: dict[str, str] = {}
    for members in found.cells.groups().values():
        smallest = min(items[m].pixel_sha256 for m in members)
        gid = hashlib.sha256(smallest.encode("ascii")).hexdigest()[:16]
        for m in members:
            group_of[items[m].relpath] = gid
            call = closest.get(found.duplicates.find(m))
            fate, reason, dup_of = fates[items[m].relpath]
            if call is not None and fate == "kept":
                note = f"look-alike group {gid} of {len(members)} images; closest call {call.a} ~ {call.b}: {call.score}"
                fates[items[m].relpath] = (fate, f"{reason}; {note}" if reason else note, dup_of)
    return group_of


def _count_pairs(found: _Found) -> None:
    for kind in ("exact", "near_duplicate", "lookalike"):
        found.counters[f"pairs_{kind}"] = sum(p.kind == kind for p in found.pairs)
    found.counters["images"] = len(found.items)


def _default_prefer(f: ImageFacts) -> tuple:
    return (not f.lossless,)


def _hamming(a: int, b: int) -> int:
    return (int(a) ^ int(b)).bit_count()


class PairMemo(Protocol):
    """Test results by (file sha256 of a, file sha256 of b): a pure function of the two files."""

    def known(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], PairVerdict]: ...

    def remember(self, results: dict[tuple[str, str], PairVerdict]) -> None: ...


def _file_key(items: list[ImageFacts], pair: Candidate) -> tuple[str, str] | None:
    a, b = items[pair[0]].file_sha256, items[pair[1]].file_sha256
    return (a, b) if a and b else None


def _remembered(
    items: list[ImageFacts], tested: list[Candidate], memo: PairMemo | None, floor: set[Candidate]
) -> dict[Candidate, PairVerdict]:
    """Verdicts the memo holds, except those without a duplicate test for a pair that needs one now
    (within ``phash_threshold``, which a build may have raised since)."""
    if memo is None:
        return {}
    keyed = {key: pair for pair in tested if (key := _file_key(items, pair)) is not None}
    found = {keyed[key]: v for key, v in memo.known(list(keyed)).items()}
    return {pair: v for pair, v in found.items() if v.duplicate is not None or pair not in floor}


def _pair_verdicts(
    items: list[ImageFacts],
    tested: list[Candidate],
    floor: set[Candidate],
    load_pixels: Callable[[str], np.ndarray],
    map_fn: Callable,
    counters: Counter,
) -> dict[Candidate, PairVerdict]:
    """The verdict on every pair: the coarse stages for all (vectorised, no pixels), then, for the pairs
    that pass the duplicate gate or the same-cell prefilter and those in ``floor``, one load of both
    images for the pixel duplicate test and, when it fails and the coarse stage allows, the fine
    same-cell test (mapped with ``map_fn``)."""
    coarse, sig = _coarse_stage(items, tested, load_pixels, map_fn, counters)
    gate = dict(zip(tested, gate_corrs(sig, tested)))
    pixel_pairs = [pair for pair in tested if pair in floor or needs_pixel_stage(gate[pair], coarse[pair])]
    counters["pixel_loads"] += 2 * len(pixel_pairs)
    counters["duplicate_tests_run"] += len(pixel_pairs)
    jobs = [(items[a].relpath, items[b].relpath, coarse[(a, b)]) for a, b in pixel_pairs]
    verdicts = {pair: PairVerdict(None, coarse[pair]) for pair in tested}
    verdicts.update(zip(pixel_pairs, map_fn(partial(pixel_verdict, load_pixels), jobs)))
    return verdicts


def _coarse_stage(
    items: list[ImageFacts], tested: list[Candidate], load_pixels: Callable[[str], np.ndarray], map_fn: Callable, counters: Counter
) -> tuple[dict[Candidate, SameCellTest], dict[int, np.ndarray]]:
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


# Worker-side pieces of the parallel work (module level: picklable for process pools).
def _coarse_batch(task: tuple[np.ndarray, np.ndarray, np.ndarray]) -> list[SameCellTest]:
    return coarse_tests(*task)


def _coarse_task(batch: list[Candidate], sig: Mapping[int, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures of the images in ``batch``, once each; index of a and of b for each pair)."""
    images, ia, ib = pair_index(batch)
    return np.stack([sig[i] for i in images]), ia, ib


def _signature_of(load_pixels: Callable[[str], np.ndarray], relpath: str) -> np.ndarray:
    return signature(np.asarray(load_pixels(relpath)))


def _near_pairs_task(search: tuple[np.ndarray, int]) -> np.ndarray:
    return neardup.near_pairs(*search)


def _stored_signature(f: ImageFacts) -> np.ndarray | None:
    if f.signature is None:
        return None
    return np.frombuffer(f.signature, dtype=np.uint8).reshape(signature_shape(f.width, f.height))


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


def _closest_lookalike(items: list[ImageFacts], pairs: list[Pair], dup_uf: UnionFind[int]) -> dict[int, Pair]:
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




def _group_fates(
    items: list[ImageFacts], members: list[int], key: Callable[[ImageFacts], tuple], policy: str, joins: dict[str, list[Pair]]
) -> dict[str, Fate]:
    """The fates of one duplicate group of several files: where its labels agree, one copy is kept and the
    others are its duplicates; where they disagree, ``policy`` decides (``majority`` keeps a strict majority
    label's copy; otherwise, and under ``drop_all``, every copy is a label conflict)."""
    by_label: dict[str, list[int]] = {}
    for m in members:
        by_label.setdefault(items[m].label, []).append(m)
    if len(by_label) == 1:
        return _keep_one(items, members, _preferred(items, members, key), joins)
    if policy == "majority":
        label, agreeing = max(by_label.items(), key=lambda kv: (len(kv[1]), kv[0]))
        if 2 * len(agreeing) > len(members):
            return _keep_majority(items, members, _preferred(items, agreeing, key), label, _label_summary(by_label), joins)
    why = "no strict majority" if policy == "majority" else "policy drop_all drops every copy"
    return _drop_conflicting(items, members, f"{_label_summary(by_label)} ({why})", joins)


def _label_summary(by_label: dict[str, list[int]]) -> str:
    return ", ".join(f"{lab} x{len(ms)}" for lab, ms in sorted(by_label.items()))


def _preferred(items: list[ImageFacts], members: list[int], key: Callable[[ImageFacts], tuple]) -> int:
    """The copy to keep: the smallest (key, relpath)."""
    return min(members, key=lambda m: (key(items[m]), items[m].relpath))


def _keep_one(items: list[ImageFacts], members: list[int], keep: int, joins: dict[str, list[Pair]]) -> dict[str, Fate]:
    """``keep`` is kept; every other member is its duplicate."""
    kept = items[keep].relpath
    fates: dict[str, Fate] = {kept: ("kept", f"kept copy of a duplicate group of {len(members)} files", None)}
    for m in members:
        if m == keep:
            continue
        me = items[m].relpath
        if items[m].pixel_sha256 == items[keep].pixel_sha256:
            how = "identical pixels"
        else:
            how = f"the same image up to re-encoding, shift or brightness ({_join_text(me, kept, joins)})"
        fates[me] = ("duplicate", f"duplicate of {kept}: {how}", kept)
    return fates


def _keep_majority(
    items: list[ImageFacts],
    members: list[int],
    keep: int,
    label: str,
    summary: str,
    joins: dict[str, list[Pair]],
) -> dict[str, Fate]:
    """Policy ``majority``: ``keep`` (a copy with the strict majority ``label``) is kept and the other copies
    with that label are its duplicates; every copy with another label is a label conflict."""
    agreeing = [m for m in members if items[m].label == label]
    fates = _keep_one(items, agreeing, keep, joins)
    kept = items[keep].relpath
    for m in members:
        if items[m].label != label:
            me = items[m].relpath
            fates[me] = (
                "label_conflict",
                f"label conflict: labelled {items[m].label} but the majority of {len(members)} copies say {label} ({summary}); {kept} kept; "
                f"{_join_text(me, None, joins)}",
                None,
            )
    return fates


def _drop_conflicting(items: list[ImageFacts], members: list[int], labels: str, joins: dict[str, list[Pair]]) -> dict[str, Fate]:
    """Every copy of a group with disagreeing ``labels`` is a label conflict, naming the others."""
    names = sorted(items[m].relpath for m in members)
    fates: dict[str, Fate] = {}
    for me in names:
        fates[me] = (
            "label_conflict",
            f"label conflict: copies of one image labelled {labels}; other copies: {_others([x for x in names if x != me])}; "
            f"{_join_text(me, None, joins)}",
            None,
        )
    return fates


def _others(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
