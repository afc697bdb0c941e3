"""near_pairs must find exactly the pairs brute force finds, on uniform, clustered and planted data."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.stages import neardup
from pipeline.stages.neardup import choose_blocks, hamming, near_pairs, near_pairs_bruteforce

ONE = np.uint64(1)


# ------------------------------------------------------------------------------------------ data


def flip_bits(rng: np.random.Generator, h: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """h[i] with counts[i] distinct random bits flipped."""
    out = h.copy()
    for i, c in enumerate(counts):
        for bit in rng.choice(64, size=int(c), replace=False):
            out[i] ^= ONE << np.uint64(bit)
    return out


def uniform(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, n, dtype=np.uint64, endpoint=False)


def clustered(n: int, seed: int) -> np.ndarray:
    """Few centres, members 0..6 bits away, one centre repeated many times: like real pHashes."""
    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2**64, 12, dtype=np.uint64, endpoint=False)
    h = flip_bits(rng, centres[rng.integers(0, centres.size, n)], rng.integers(0, 7, n))
    h[rng.choice(n, n // 20, replace=False)] = centres[0]
    # a second family sharing most high bits: hard case for blocks of high bits
    h[: n // 10] = (h[: n // 10] & np.uint64(0xFFFF)) | (centres[1] & ~np.uint64(0xFFFF))
    return h


def planted(n: int, seed: int, max_flip: int = 9) -> np.ndarray:
    """Uniform hashes, then a fifth of them overwritten by copies of others at 0..max_flip bits."""
    rng = np.random.default_rng(seed)
    h = uniform(n, seed)
    dst = rng.choice(n, n // 5, replace=False)
    src = rng.integers(0, n, dst.size)
    h[dst] = flip_bits(rng, h[src], rng.integers(0, max_flip + 1, dst.size))
    return h


def python_pairs(h, k: int) -> set[tuple[int, int]]:
    """Obviously correct, slow: the definition."""
    h = [int(x) for x in h]
    return {(i, j) for i, j in itertools.combinations(range(len(h)), 2) if bin(h[i] ^ h[j]).count("1") <= k}


def as_set(pairs: np.ndarray) -> set[tuple[int, int]]:
    return set(map(tuple, pairs.tolist()))


def assert_contract(pairs: np.ndarray, n: int) -> None:
    assert pairs.dtype == np.int64 and pairs.ndim == 2 and pairs.shape[1] == 2
    if pairs.shape[0]:
        assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.min() >= 0 and pairs.max() < n
        codes = pairs[:, 0] * n + pairs[:, 1]
        assert (np.diff(codes) > 0).all(), "rows must be strictly increasing: sorted, no repeats"


def feasible_blocks(k: int, max_combinations: int = 300) -> list[int]:
    """Block counts the index search can take at threshold k: each costs C(m, k) sorts."""
    return [m for m in range(k + 1, 65) if math.comb(m, k) <= max_combinations]


def block_choices(k: int) -> list[int | None]:
    """Automatic choice plus forced block counts: the pigeonhole minimum, one more, and the most."""
    ms = feasible_blocks(k)
    return [None, *sorted({ms[0], ms[min(1, len(ms) - 1)], ms[-1]})]


# ------------------------------------------------------------------------------- reference itself


@pytest.mark.parametrize("k", [0, 1, 3, 6, 64])
def test_bruteforce_matches_definition(k):
    h = np.concatenate([clustered(150, 5), planted(100, 6)])
    got = near_pairs_bruteforce(h, k)
    assert_contract(got, h.size)
    assert as_set(got) == python_pairs(h, k)
    if k == 64:
        assert got.shape[0] == h.size * (h.size - 1) // 2


def test_hamming_is_popcount_of_xor():
    a, b = uniform(500, 1), uniform(500, 2)
    a[:3] = [0, 2**64 - 1, 2**63]
    b[:3] = [2**64 - 1, 2**64 - 1, 0]
    got = hamming(a, b)
    assert got.tolist() == [bin(int(x) ^ int(y)).count("1") for x, y in zip(a, b)]
    assert got[:3].tolist() == [64, 0, 1]
    assert hamming(a[:, None], b[None, :5]).shape == (500, 5)


# ------------------------------------------------------------------------ equality with brute force


@pytest.mark.parametrize("k", range(9))
@pytest.mark.parametrize(
    "name, make, n",
    [("uniform", uniform, 5000), ("clustered", clustered, 3000), ("planted", planted, 4000)],
)
def test_equals_bruteforce(name, make, n, k):
    h = make(n, 100 + k)
    expected = near_pairs_bruteforce(h, k)
    if name != "uniform":
        assert expected.shape[0] > 0, "the data must contain pairs within the radius"
    for m in block_choices(k):
        got = near_pairs(h, k, blocks=m)
        assert_contract(got, n)
        assert np.array_equal(got, expected), f"blocks={m}: {got.shape[0]} pairs vs {expected.shape[0]}"


@pytest.mark.parametrize("k", [9, 12, 16])
def test_wide_radius_equals_bruteforce(k):
    h = np.concatenate([clustered(600, k), planted(600, k, max_flip=18)])
    expected = near_pairs_bruteforce(h, k)
    assert expected.shape[0] > 0
    for m in block_choices(k):
        assert np.array_equal(near_pairs(h, k, blocks=m), expected), m


def test_small_chunks_give_the_same_pairs(monkeypatch):
    """Candidate generation split into many chunks, runs larger than a chunk included."""
    h = clustered(800, 9)
    expected = near_pairs_bruteforce(h, 4)
    assert expected.shape[0] > 1000
    monkeypatch.setattr(neardup, "_CHUNK_PAIRS", 20)
    monkeypatch.setattr(neardup, "_BF_CELLS", 100)
    for m in (5, 6, 9):
        assert np.array_equal(near_pairs(h, 4, blocks=m), expected)
    assert np.array_equal(near_pairs_bruteforce(h, 4), expected)


# ------------------------------------------------------------------------------------ edge cases


@pytest.mark.parametrize("k", [0, 4, 16])
@pytest.mark.parametrize("empty", [[], np.array([], dtype=np.uint64), np.empty(0, dtype=np.int64)])
def test_empty(empty, k):
    for f in (near_pairs, near_pairs_bruteforce):
        got = f(empty, k)
        assert got.shape == (0, 2) and got.dtype == np.int64


@pytest.mark.parametrize("k", [0, 4, 16])
def test_one_hash(k):
    for f in (near_pairs, near_pairs_bruteforce):
        got = f(np.array([2**64 - 1], dtype=np.uint64), k)
        assert got.shape == (0, 2) and got.dtype == np.int64


@pytest.mark.parametrize("k", [0, 1, 4, 8])
def test_all_identical(k):
    n = 400
    h = np.full(n, 0xDEADBEEF_12345678, dtype=np.uint64)
    expected = np.array(list(itertools.combinations(range(n), 2)), dtype=np.int64)
    for m in block_choices(k):
        assert np.array_equal(near_pairs(h, k, blocks=m), expected)
    assert np.array_equal(near_pairs_bruteforce(h, k), expected)


def test_identical_groups_and_their_near_neighbours():
    """Groups of copies at distance 2 from each other: every cross pair is in, nothing else."""
    a, b, far = np.uint64(0x0F0F_0000_0000_0001), np.uint64(0x0F0F_0000_0000_0007), np.uint64(0xF0F0_FFFF_0000_0000)
    h = np.array([a, far, b, a, b, b, far, a], dtype=np.uint64)
    got = near_pairs(h, 2, blocks=3)
    assert as_set(got) == python_pairs(h, 2)
    assert (1, 6) in as_set(got) and (0, 1) not in as_set(got)
    assert got.shape[0] == 15 + 1  # C(6, 2) among the a/b copies, plus the two `far` copies


@pytest.mark.parametrize("k", range(17))
def test_distance_exactly_at_threshold_and_one_more(k):
    """Pairs at exactly k bits are found, at k + 1 bits they are not, whichever blocks the bits hit."""
    rng = np.random.default_rng(k)
    base = uniform(40, 1000 + k)
    at = flip_bits(rng, base, np.full(base.size, k))
    beyond = flip_bits(rng, base, np.full(base.size, k + 1))
    # spread out, contiguous and boundary-crossing flips: the worst cases for a block split
    spread = base ^ np.uint64(sum(1 << (64 * t // max(k, 1)) for t in range(k)))
    run = base ^ np.uint64(((1 << k) - 1) << (32 - k // 2))
    h = np.concatenate([base, at, beyond, spread, run])
    n = base.size
    expected = near_pairs_bruteforce(h, k)
    assert as_set(expected) == python_pairs(h, k)
    found = as_set(expected)
    assert all((i, i + n) in found for i in range(n))  # distance k
    assert all((i, i + 2 * n) not in found for i in range(n))  # distance k + 1
    assert all((i, i + 3 * n) in found and (i, i + 4 * n) in found for i in range(n))
    for m in block_choices(k):
        assert np.array_equal(near_pairs(h, k, blocks=m), expected), m


def test_input_order_does_not_change_the_set():
    h = np.concatenate([clustered(1500, 77), planted(1500, 78)])
    perm = np.random.default_rng(3).permutation(h.size)
    for k in (0, 2, 4, 7):
        base = near_pairs(h, k)
        assert base.shape[0] > 0
        for m in (None, k + 1):
            shuffled = near_pairs(h[perm], k, blocks=m)  # index t of the shuffled array is perm[t] of h
            mapped = np.sort(perm[shuffled], axis=1)  # back to indices of h, i < j
            mapped = mapped[np.lexsort((mapped[:, 1], mapped[:, 0]))]
            assert np.array_equal(mapped, base)


def test_input_types():
    values = [0, 2**64 - 1, 2**63, 2**63 + 1, 5, 7]
    expected = {(0, 2), (0, 3), (0, 4), (2, 3), (3, 4), (4, 5)}
    assert python_pairs(values, 2) == expected
    assert as_set(near_pairs(values, 2)) == expected
    signed = np.array(values, dtype=np.uint64).view(np.int64)  # same bits, signed dtype
    assert as_set(near_pairs(signed, 2)) == expected
    assert as_set(near_pairs_bruteforce(signed, 2)) == expected
    with pytest.raises(ValueError):
        near_pairs(np.zeros((2, 2), dtype=np.uint64), 1)
    with pytest.raises(ValueError):
        near_pairs(values, -1)
    with pytest.raises(ValueError):
        near_pairs(values, 4, blocks=4)  # fewer blocks than threshold + 1: pigeonhole fails
    with pytest.raises(TypeError):
        near_pairs(np.array([1.0, 2.0]), 1)
    with pytest.raises(TypeError):
        near_pairs([1, 2.5], 1)
    assert as_set(near_pairs([0, -1, 2**64 - 1], 0)) == {(1, 2)}  # -1 is all 64 bits set


def test_choose_blocks():
    assert choose_blocks(10**6, 0) == 1
    assert choose_blocks(10**6, 4) == 6  # keys of 21-22 bits, 15 combinations
    for k in range(1, 13):
        m = choose_blocks(10**6, k)
        assert m is not None and m > k
    assert choose_blocks(50, 8) is None  # tiny input: brute force is cheaper
    assert choose_blocks(10**6, 64) is None


# --------------------------------------------------------------------------------------- property


@st.composite
def hash_arrays(draw):
    """Small arrays with many near pairs: seeds plus copies of them with a few bits flipped."""
    seeds = draw(st.lists(st.integers(0, 2**64 - 1), min_size=0, max_size=8))
    out = list(seeds)
    if seeds:
        for _ in range(draw(st.integers(0, 40))):
            v = draw(st.sampled_from(seeds))
            for bit in draw(st.lists(st.integers(0, 63), max_size=10)):
                v ^= 1 << bit
            out.append(v)
    order = draw(st.permutations(range(len(out))))
    return np.array([out[i] for i in order], dtype=np.uint64)


@settings(max_examples=120, deadline=None)
@given(h=hash_arrays(), k=st.integers(0, 16), data=st.data())
def test_property_equals_bruteforce(h, k, data):
    blocks = data.draw(st.one_of(st.none(), st.sampled_from(feasible_blocks(k))), label="blocks")
    got = near_pairs(h, k, blocks=blocks)
    assert_contract(got, h.size)
    assert np.array_equal(got, near_pairs_bruteforce(h, k))
    assert as_set(got) == python_pairs(h, k)


def test_combination_at_unranks_the_itertools_order():
    from itertools import combinations

    from pipeline.stages.neardup import _combination_at

    for m in range(1, 13):
        for s in range(1, m + 1):
            assert [_combination_at(m, s, i) for i in range(math.comb(m, s))] == list(combinations(range(m), s))


def test_block_count_chosen_from_the_data_for_clustered_hashes():
    """Hashes of similar images collide far more than uniform ones: counting collisions on the data
    chooses fewer, wider-keyed combinations (or brute force) than the uniform estimate, same pairs."""
    rng = np.random.default_rng(3)
    centres = rng.integers(0, 2**64 - 1, 40, dtype=np.uint64)
    flips = rng.integers(0, 64, (4000, 3))
    noise = np.bitwise_or.reduce(np.left_shift(np.uint64(1), flips.astype(np.uint64)), axis=1)
    hashes = np.unique(centres[rng.integers(0, 40, 4000)] ^ noise)
    uniform = choose_blocks(hashes.size, 8)
    measured = choose_blocks(hashes.size, 8, hashes)
    assert (uniform, measured) == (9, None)  # 40 tight clusters: the index search's keys collide in bulk
    assert np.array_equal(near_pairs(hashes, 8), near_pairs_bruteforce(hashes, 8))
    assert np.array_equal(near_pairs(hashes, 8, blocks=9), near_pairs_bruteforce(hashes, 8))
