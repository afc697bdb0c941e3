"""All pairs of 64-bit hashes within a Hamming radius (brute-force stand-in; replaced by the indexed search)."""

from __future__ import annotations

import numpy as np


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.bitwise_count(np.bitwise_xor(a, b))


def near_pairs_bruteforce(hashes: np.ndarray, threshold: int) -> np.ndarray:
    hashes = np.asarray(hashes, dtype=np.uint64)
    out = []
    for i in range(len(hashes) - 1):
        d = hamming(hashes[i + 1 :], hashes[i])
        js = np.nonzero(d <= threshold)[0] + i + 1
        out.extend((i, int(j)) for j in js)
    return np.array(out, dtype=np.int64).reshape(-1, 2)


near_pairs = near_pairs_bruteforce
