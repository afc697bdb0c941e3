"""What it costs that every candidate pair can get the pixel duplicate test (the hashes only propose).

    python bench/bench_dedup_cost.py --scale 1          # the archive bench/run.py made (bench/.cache/)

One run, on one set of facts (decoded once; the per-image cache in bench/.cache/facts-cost/ makes a second
run skip the decode):
  1. the candidate pairs as dedup makes them (pHash within lookalike_threshold, centre hash within
     CENTRE_RADIUS, one representative per distinct pixel hash), their coarse same-cell test and the
     duplicate gate's score (vectorised, no pixels);
  2. which pairs get the pixel duplicate test under each rule: before (pHash within phash_threshold
     only), now (that, or the duplicate gate, or the same-cell prefilter), and literally every candidate;
  3. the pixel work of before and now, each timed in this process on one core: before = the duplicate
     tests of its pairs (two loads each) + the fine same-cell tests of the pairs the prefilter passes
     that were not duplicates (two more loads each); now = one job per pair (two loads, the duplicate
     test, the fine same-cell test when it fails). The every-candidate rule is timed on a random sample
     of its pairs and scaled (it is too slow to run whole);
  4. the whole ``deduplicate`` as the build runs it (local executor, --workers), and its counters.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path

import numpy as np

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))

from pipeline.stages import dedup, similarity  # noqa: E402
from pipeline.stages import neardup  # noqa: E402
from pipeline.build import Progress, run_decode, run_ingest  # noqa: E402
from pipeline.stages.runners import load_pixels  # noqa: E402
from pipeline.runtime.cache import FactsCache  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.runtime.executor import make_executor  # noqa: E402


def candidates(items, cfg) -> list[tuple[int, int]]:
    by_sha: dict[str, int] = {}
    for i, f in enumerate(items):
        by_sha.setdefault(f.pixel_sha256, i)
    reps = sorted(by_sha.values())
    cand: set[tuple[int, int]] = set()
    for hashes, radius in (([items[r].phash for r in reps], cfg.lookalike_threshold), ([items[r].centre_hash for r in reps], dedup.CENTRE_RADIUS)):
        for i, j in neardup.near_pairs(np.array(hashes, dtype=np.uint64), radius).tolist():
            cand.add((reps[min(i, j)], reps[max(i, j)]))
    return sorted(cand)


def timed(fn, jobs) -> tuple[float, list]:
    start = time.perf_counter()
    out = [fn(job) for job in jobs]
    return time.perf_counter() - start, out


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample", type=int, default=300, help="candidate pairs timed to estimate the every-candidate rule")
    return ap.parse_args(argv)


def _decoded(a: argparse.Namespace):
    """The config, an executor, the archive's image facts sorted by path, and a picklable pixel loader."""
    raw = BENCH / ".cache" / f"raw-synth-scale{a.scale:g}-seed{a.seed}"
    if not raw.is_dir():
        raise SystemExit(f"{raw} not found: run `python bench/run.py --scale {a.scale:g} --seed {a.seed}` first (it makes the archive)")
    cfg = load_config()
    executor = make_executor("local", a.workers)
    ingested, _ = run_ingest(raw, cfg)
    with FactsCache(BENCH / ".cache" / "facts-cost", cfg.image_size) as cache:
        facts, _, _ = run_decode(raw, ingested.items, cfg, executor, Progress(), cache)
    items = sorted(facts.values(), key=lambda f: f.relpath)
    load = partial(load_pixels, os.path.abspath(raw), cfg.image_size)  # picklable: the executor's workers load too
    return cfg, executor, items, load


def main(argv: list[str] | None = None) -> int:
    a = _arguments(argv)
    cfg, executor, items, load = _decoded(a)

    t0 = time.perf_counter()
    cand = candidates(items, cfg)
    t_search = time.perf_counter() - t0
    t0 = time.perf_counter()
    coarse, sig = dedup._coarse_stage(items, cand, load, map, Counter())
    gate = dict(zip(cand, similarity.gate_corrs(sig, cand)))
    t_coarse = time.perf_counter() - t0
    floor = {p for p in cand if (items[p[0]].phash ^ items[p[1]].phash).bit_count() <= cfg.phash_threshold}
    prefilter = {p for p in cand if coarse[p].coarse_corr >= similarity.SAME_CELL_COARSE_CORR}
    gated = {p for p in cand if gate[p] >= similarity.DUP_GATE_MIN_CORR}
    now = sorted(floor | gated | prefilter)

    def dup_job(pair):
        return similarity.compare_duplicate(load(items[pair[0]].relpath), load(items[pair[1]].relpath))

    def fine_job(pair):
        return similarity.fine_test(coarse[pair].coarse_corr, similarity.fine_signature(load(items[pair[0]].relpath)), similarity.fine_signature(load(items[pair[1]].relpath)))

    t_before_dup, before_tests = timed(dup_job, sorted(floor))
    before_dups = {p for p, t in zip(sorted(floor), before_tests) if t.duplicate}
    before_fine = sorted(prefilter - before_dups)
    t_before_fine, _ = timed(fine_job, before_fine)
    job = lambda pair: similarity.pixel_verdict(load, (items[pair[0]].relpath, items[pair[1]].relpath, coarse[pair]))  # noqa: E731
    t_now, verdicts = timed(job, now)
    t_now_dup, _ = timed(dup_job, now)
    sample = random.Random(a.seed).sample(cand, min(a.sample, len(cand)))
    t_sample, _ = timed(dup_job, sample)
    now_dups = sum(v.is_duplicate for v in verdicts)

    stats: dict = {}
    t0 = time.perf_counter()
    result = dedup.deduplicate(
        items, load, phash_threshold=cfg.phash_threshold, lookalike_threshold=cfg.lookalike_threshold, policy=cfg.conflict_policy,
        stats=stats, map_fn=executor.map,
    )
    t_dedup = time.perf_counter() - t0
    executor.close()
    fates = Counter(f[0] for f in result.fates.values())

    n = len(cand)
    print(f"## dedup cost, scale {a.scale:g} ({len(items):,} images), seed {a.seed}\n")
    print(f"- candidates: {n:,} pairs (index searches {t_search:.1f} s); coarse same-cell test and duplicate gate of all: {t_coarse:.1f} s, no pixels")
    print(f"- pairs given the pixel duplicate test: before (pHash <= {cfg.phash_threshold}) {len(floor):,}; now {len(now):,} "
          f"(**{len(now) / max(len(floor), 1):.1f}x**): {len(floor):,} within pHash {cfg.phash_threshold}, {len(gated):,} past the gate, "
          f"{len(prefilter):,} past the same-cell prefilter; every candidate would be {n:,} (**{n / max(len(floor), 1):.0f}x**)")
    print(f"- duplicates confirmed by the duplicate test: before {len(before_dups):,}, now {now_dups:,}")
    print(f"- duplicate tests alone (two loads each, one core): before {t_before_dup:.1f} s, now {t_now_dup:.1f} s (**{t_now_dup / max(t_before_dup, 1e-9):.1f}x**); "
          f"every candidate: ~{t_sample / len(sample) * n:.0f} s (from {len(sample)} pairs: {t_sample / len(sample) * 1e3:.1f} ms a pair)")
    print(f"- all pixel work (one core): before {t_before_dup + t_before_fine:.1f} s ({len(floor):,} duplicate + {len(before_fine):,} fine same-cell tests, "
          f"{2 * (len(floor) + len(before_fine)):,} loads); now {t_now:.1f} s ({len(now):,} jobs, {2 * len(now):,} loads): "
          f"**{t_now / max(t_before_dup + t_before_fine, 1e-9):.2f}x**")
    print(f"- whole deduplicate(), {a.workers} workers: {t_dedup:.1f} s wall; fates {dict(sorted(fates.items()))}; counters {dict(sorted(stats.items()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
