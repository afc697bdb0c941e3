"""Benchmark of pipeline.stages.neardup.near_pairs on uniform 64-bit hashes with planted near pairs.

    python bench/bench_neardup.py [--n 1000000] [--threshold 4] [--check-n 100000] [--planted 1000]

1. On --check-n hashes: near_pairs and the brute-force reference, the pair sets compared for equality,
   both timings and their ratio.
2. On --n hashes: near_pairs alone (brute force is quadratic), time, pairs found, and whether every
   planted pair was found.

Runs in one process pinned to one CPU (where the OS allows) with numpy's thread pools set to one
thread. Prints wall and CPU seconds; on a shared machine compare figures of one run only.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # before numpy is imported

import argparse  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from pipeline.stages.neardup import choose_blocks, near_pairs, near_pairs_bruteforce  # noqa: E402


def pin_to_one_cpu() -> str:
    try:
        cpu = min(os.sched_getaffinity(0))
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned (sched_setaffinity unavailable)"


def planted_hashes(n: int, planted: int, threshold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n uniform hashes; `planted` disjoint index pairs (i, j) made to differ in 0..threshold bits."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    planted = min(planted, n // 2)
    idx = rng.choice(n, 2 * planted, replace=False).reshape(planted, 2)
    for (i, j), d in zip(idx, rng.integers(0, threshold + 1, planted)):
        flips = sum(1 << int(b) for b in rng.choice(64, int(d), replace=False))
        h[j] = h[i] ^ np.uint64(flips)
    pairs = np.sort(idx, axis=1)
    return h, pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))].astype(np.int64)


def timed(f, *args):
    w0, c0 = time.perf_counter(), time.process_time()
    out = f(*args)
    return out, time.perf_counter() - w0, time.process_time() - c0


def contains_all(found: np.ndarray, wanted: np.ndarray, n: int) -> bool:
    return bool(np.isin(wanted[:, 0] * n + wanted[:, 1], found[:, 0] * n + found[:, 1]).all())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="hashes for the timing run (default 10^6)")
    ap.add_argument("--threshold", type=int, default=4, help="Hamming radius (default 4)")
    ap.add_argument("--check-n", type=int, default=100_000, help="hashes for the brute-force check (0: skip)")
    ap.add_argument("--planted", type=int, default=1000, help="near pairs planted at distance 0..threshold")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    k = args.threshold

    pinned = pin_to_one_cpu()
    print(f"python {platform.python_version()}, numpy {np.__version__}, nproc {os.cpu_count()}, {pinned}")
    print(f"threshold {k}, {args.planted} planted pairs per run, seed {args.seed}\n")

    rows = []  # (n, method, blocks, wall s, cpu s, pairs, planted found, note)
    ok = True
    if args.check_n:
        n = args.check_n
        h, planted = planted_hashes(n, args.planted, k, args.seed)
        fast, fw, fc = timed(near_pairs, h, k)
        slow, sw, sc = timed(near_pairs_bruteforce, h, k)
        equal = np.array_equal(fast, slow)
        ok &= equal
        m = choose_blocks(np.unique(h).size, k)
        rows.append((n, "near_pairs", m, fw, fc, fast.shape[0], contains_all(fast, planted, n), ""))
        rows.append((n, "brute force", None, sw, sc, slow.shape[0], contains_all(slow, planted, n), ""))
        rows.append((n, "ratio brute/near_pairs", None, sw / fw, sc / fc, None, None, f"identical pair sets: {equal}"))
    n = args.n
    h, planted = planted_hashes(n, args.planted, k, args.seed + 1)
    fast, fw, fc = timed(near_pairs, h, k)
    all_found = contains_all(fast, planted, n)
    ok &= all_found
    m = choose_blocks(np.unique(h).size, k)
    rows.append((n, "near_pairs", m, fw, fc, fast.shape[0], all_found, ""))

    print("| n | method | blocks m (key combinations) | wall s | CPU s | pairs found | all planted found | note |")
    print("|---:|---|---|---:|---:|---:|---|---|")
    for n, method, m, wall, cpu, pairs, found, note in rows:
        blocks = "-" if m is None else f"{m} ({math.comb(m, k)})"
        if method.startswith("ratio"):
            print(f"| {n:,} | {method} | - | {wall:.1f}x | {cpu:.1f}x | - | - | {note} |")
        else:
            print(f"| {n:,} | {method} | {blocks} | {wall:.2f} | {cpu:.2f} | {pairs:,} | {found} | {note} |")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\npeak RSS {peak_mib:.0f} MiB; {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
