"""pipeline.stages.dedup on a synthetic archive: planted duplicates, conflicts and look-alikes, policies, order."""

from __future__ import annotations

import dataclasses
import random
import shutil
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

from pipeline.synth import generator
from pipeline.stages.dedup import deduplicate
from pipeline.stages.similarity import (
    DUP_HF_RATIO,
    SAME_CELL_MIN_CORR,
    cell_features,
    centre_hash,
    coarse_test,
    coarse_tests,
    compare_duplicate,
    same_cell,
    signature,
)
from pipeline.stages.decode import decode_file, load_rgb
from pipeline.records import ImageFacts

try:
    from tests.helpers_images import ORIGINAL_KINDS, SIZE, annotations, archive, centre_hashes_of, config, facts_of, loader, truth
except ImportError:  # tests/ on sys.path instead of the repository root
    from helpers_images import ORIGINAL_KINDS, SIZE, annotations, archive, centre_hashes_of, config, facts_of, loader, truth


def _run(root, facts=None, *, policy=None, prefer=None, calls=None, stats=None, centre=True):
    cfg = config()
    return deduplicate(
        list(facts if facts is not None else facts_of(root)),
        loader(root, calls),
        phash_threshold=cfg.phash_threshold,
        lookalike_threshold=cfg.lookalike_threshold,
        policy=policy or cfg.conflict_policy,
        prefer=prefer,
        centre_hashes=centre_hashes_of(root) if centre else None,
        stats=stats,
    )


@pytest.fixture(scope="module")
def root():
    return archive(0.01)


@pytest.fixture(scope="module")
def result(root):
    calls: list[str] = []
    stats: dict = {}
    r = _run(root, calls=calls, stats=stats)
    return r, calls, stats


def test_every_planted_case_gets_its_fate(root, result):
    r, _, _ = result
    t = truth(root)
    assert set(r.fates) == set(t) == set(r.group_of)
    for rel, row in t.items():
        fate, reason, dup_of = r.fates[rel]
        kind = row["kind"]
        if row["expected_fate"] == "duplicate":
            assert fate == "duplicate" and dup_of == row["source"], (rel, kind, r.fates[rel])
            assert reason.startswith(f"duplicate of {row['source']}")
        elif kind in ("conflict_original", "conflict_copy"):
            assert fate == "label_conflict", (rel, r.fates[rel])
            assert dup_of is None and "label conflict" in reason
        elif kind in generator.LOOKALIKE_KINDS:
            assert fate == "kept", (rel, kind, r.fates[rel])
            assert r.group_of[rel] == r.group_of[row["source"]], (rel, kind, row["detail"])
        else:  # originals (dysplastic ones are removed later by the exclusion stage)
            assert fate == "kept", (rel, kind, r.fates[rel])


def test_conflict_reason_names_labels_and_other_files(root, result):
    r, _, _ = result
    t = truth(root)
    for rel, row in t.items():
        if row["kind"] == "conflict_copy":
            reason = r.fates[rel][1]
            assert row["source"] in reason and rel.split("/")[0] in reason and row["source"].split("/")[0] in reason
            assert rel in r.fates[row["source"]][1]


def test_kept_counts_per_class_equal_expected_published(root, result):
    r, _, _ = result
    ann = annotations(root)
    kept = Counter(rel.split("/")[0] for rel, (fate, _, _) in r.fates.items() if fate == "kept" and ann[rel]["dysplastic"] == "false")
    expected = generator.expected_counts(config(), 0.01)
    assert {lab: kept.get(lab, 0) for lab in expected} == {lab: p for lab, (_, p) in expected.items()}


def test_equal_phash_refocused_lookalikes_exist_and_are_kept(root, result):
    r, _, _ = result
    t = truth(root)
    facts = {f.relpath: f for f in facts_of(root)}
    equal = [rel for rel, row in t.items() if row["kind"] in generator.LOOKALIKE_KINDS and facts[rel].phash == facts[row["source"]].phash]
    assert len(equal) >= 2, "grouping equal pHashes as duplicates would drop these"
    for rel in equal:
        assert r.fates[rel][0] == "kept" and r.fates[t[rel]["source"]][0] == "kept"
        assert any({p.a, p.b} == {rel, t[rel]["source"]} and p.kind == "lookalike" and p.hamming == 0 for p in r.pairs)


def test_pairs_record_every_confirmed_relation(root, result):
    r, _, _ = result
    t = truth(root)
    got = {frozenset((p.a, p.b)): p for p in r.pairs}
    for rel, row in t.items():
        if row["kind"] in ORIGINAL_KINDS:
            continue
        p = got.get(frozenset((rel, row["source"])))
        assert p is not None, (rel, row["kind"])
        if row["kind"] in ("exact_copy", "reencode_png", "reencode_lzw") or (row["kind"] == "conflict_copy" and rel.endswith(".tif")):
            assert p.kind == "exact" and p.hamming == 0
        elif row["expected_fate"] in ("duplicate", "label_conflict"):
            assert p.kind == "near_duplicate"
        else:
            assert p.kind == "lookalike"
    assert all(p.a < p.b for p in r.pairs)
    assert len({(p.a, p.b) for p in r.pairs}) == len(r.pairs)


def test_groups_are_16_hex_and_singletons_have_their_own(root, result):
    r, _, _ = result
    sizes = Counter(r.group_of.values())
    assert all(len(g) == 16 and int(g, 16) >= 0 for g in sizes)
    t = truth(root)
    derived = sum(1 for row in t.values() if row["kind"] not in ORIGINAL_KINDS)
    assert len(sizes) == len(t) - derived  # one group per original cell


def test_pixels_loaded_only_for_candidate_pairs(result):
    r, calls, stats = result
    assert stats["pixel_loads"] == len(calls)
    assert len(calls) < 0.25 * stats["images"], stats
    assert stats["duplicate_tests"] + stats["same_cell_tests"] >= stats["pairs_near_duplicate"] + stats["pairs_lookalike"]


def test_result_independent_of_input_order(root, result):
    r, _, _ = result
    facts = list(facts_of(root))
    random.Random(5).shuffle(facts)
    r2 = _run(root, facts)
    assert r2.fates == r.fates and r2.group_of == r.group_of and r2.pairs == r.pairs


def test_without_centre_hashes_recrops_are_still_kept(root):
    r = _run(root, centre=False)
    t = truth(root)
    for rel, row in t.items():
        if row["kind"] == "recrop":
            assert r.fates[rel][0] == "kept"


def _subset_archive(root, tmp_path, rels):
    for rel in rels:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, tmp_path / rel)
    return tmp_path


def _facts(base, rels_labels):
    out = []
    for rel, label in rels_labels:
        f = decode_file(base / rel, rel, label, SIZE)
        assert isinstance(f, ImageFacts)
        out.append(f)
    return out


def _run_plain(base, facts, policy, prefer=None):
    cfg = config()
    return deduplicate(facts, loader(base), phash_threshold=cfg.phash_threshold, lookalike_threshold=cfg.lookalike_threshold, policy=policy, prefer=prefer)


def test_policy_majority(root, tmp_path):
    t = truth(root)
    # a tie: the planted conflict pairs (one copy per label) are dropped under both policies
    pair = sorted((row["source"], rel) for rel, row in t.items() if row["kind"] == "conflict_copy")[0]
    # a majority: an original, a second copy in its own class and a copy in another class
    orig = sorted(rel for rel, row in t.items() if row["kind"] == "original" and rel.startswith("lymphocyte/"))[0]
    base = _subset_archive(root, tmp_path, [*pair, orig])
    shutil.copyfile(base / orig, base / "lymphocyte/zz_copy.tif")
    (base / "plasma_cell").mkdir(exist_ok=True)
    shutil.copyfile(base / orig, base / "plasma_cell/other_copy.tif")
    facts = _facts(base, [(pair[0], pair[0].split("/")[0]), (pair[1], pair[1].split("/")[0]), (orig, "lymphocyte"), ("lymphocyte/zz_copy.tif", "lymphocyte"), ("plasma_cell/other_copy.tif", "plasma_cell")])

    r = _run_plain(base, facts, "majority")
    assert r.fates[orig] == ("kept", "kept copy of a duplicate group of 2 files", None)
    assert r.fates["lymphocyte/zz_copy.tif"][:1] == ("duplicate",) and r.fates["lymphocyte/zz_copy.tif"][2] == orig
    assert r.fates["plasma_cell/other_copy.tif"][0] == "label_conflict"
    assert "majority" in r.fates["plasma_cell/other_copy.tif"][1]
    assert r.fates[pair[0]][0] == r.fates[pair[1]][0] == "label_conflict"
    assert "no strict majority" in r.fates[pair[0]][1]

    d = _run_plain(base, facts, "drop_all")
    for rel in (orig, "lymphocyte/zz_copy.tif", "plasma_cell/other_copy.tif", *pair):
        assert d.fates[rel][0] == "label_conflict"
    assert "lymphocyte x2" in d.fates[orig][1] and "plasma_cell x1" in d.fates[orig][1]


def test_prefer_overrides_the_kept_copy(root):
    t = truth(root)
    jpg = sorted(rel for rel, row in t.items() if row["kind"] == "jpeg")[0]
    src = t[jpg]["source"]
    facts = [f for f in facts_of(root) if f.relpath in (jpg, src)]
    r = _run_plain(root, facts, "drop_all")
    assert r.fates[src][0] == "kept" and r.fates[jpg][2] == src
    r = _run_plain(root, facts, "drop_all", prefer=lambda f: (f.file_format != "JPEG",))
    assert r.fates[jpg][0] == "kept" and r.fates[src][2] == jpg


def test_unknown_policy_and_repeated_relpath_are_errors(root):
    facts = list(facts_of(root))[:3]
    with pytest.raises(ValueError, match="policy"):
        _run_plain(root, facts, "first_wins")
    with pytest.raises(ValueError, match="twice"):
        _run_plain(root, facts + [facts[0]], "drop_all")


def test_exact_groups_need_no_pixels():
    """Identical pixel hashes are duplicates whatever the names; nothing is loaded for them."""
    f = lambda rel, sha, lossless=True: ImageFacts(rel, "a", sha, 0x0F0F0F0F0F0F0F0F if sha == "s1" else 0xFFFF0000FFFF0000, 288, 288, lossless, "TIFF")  # noqa: E731
    facts = [f("a/z.tif", "s1"), f("a/b.png", "s1"), f("a/a.jpg", "s1", False), f("a/q.tif", "s2")]

    def no_load(rel):
        raise AssertionError("no pixel load expected")

    r = deduplicate(facts, no_load, phash_threshold=4, lookalike_threshold=10, policy="drop_all")
    assert r.fates["a/b.png"] == ("kept", "kept copy of a duplicate group of 3 files", None)
    assert r.fates["a/z.tif"][0] == r.fates["a/a.jpg"][0] == "duplicate"
    assert r.fates["a/z.tif"][2] == "a/b.png"
    assert r.fates["a/q.tif"] == ("kept", "", None)
    assert r.group_of["a/z.tif"] == r.group_of["a/b.png"] != r.group_of["a/q.tif"]
    assert [(p.a, p.b, p.kind, p.hamming, p.decided_by) for p in r.pairs] == [
        ("a/a.jpg", "a/b.png", "exact", 0, "identical pixels"),
        ("a/a.jpg", "a/z.tif", "exact", 0, "identical pixels"),
    ]


# ---- calibration evidence: the confirmation rule's margins on the planted cases ----


def test_confirmation_margins_on_planted_pairs(root):
    t = truth(root)
    load = lambda rel: load_rgb(root / rel, SIZE)  # noqa: E731
    dups, looks = [], []
    for rel, row in sorted(t.items()):
        if row["kind"] in ("jpeg", "shift", "brighter") or (row["kind"] == "conflict_copy" and rel.endswith(".jpg")):
            dups.append(compare_duplicate(load(row["source"]), load(rel)))
        elif row["kind"] in generator.LOOKALIKE_KINDS:
            a, b = load(row["source"]), load(rel)
            looks.append((row["kind"], compare_duplicate(a, b), same_cell(a, b)))
    assert dups and looks
    lo, hi = DUP_HF_RATIO
    for d in dups:
        assert d.duplicate
        # at least 8% from either bound (the robustness sweep's hardest copies sit ~5% inside: README)
        assert lo * 1.08 < d.hf_ratio < hi / 1.08, d
    for kind, d, s in looks:
        assert not d.duplicate, (kind, d)
        if kind != "recrop":  # a re-crop is off by more than the duplicate shift search
            assert not (lo / 1.15 < d.hf_ratio < hi * 1.15), (kind, d)
        assert s.same and s.corr > SAME_CELL_MIN_CORR + 0.01, (kind, s)


def test_different_cells_fail_the_same_cell_test(root):
    t = truth(root)
    facts = {f.relpath: f for f in facts_of(root)}
    originals = sorted(rel for rel, row in t.items() if row["kind"] == "original")
    closest = sorted(combinations(originals, 2), key=lambda p: ((facts[p[0]].phash ^ facts[p[1]].phash).bit_count(), p))[:15]
    img = {rel: load_rgb(root / rel, SIZE) for p in closest for rel in p}
    for x, y in closest:
        s = same_cell(img[x], img[y])
        assert not s.same and s.corr < SAME_CELL_MIN_CORR - 0.02, (x, y, s)


def test_identical_copy_under_two_names_is_exact_not_compared(root):
    t = truth(root)
    rel = sorted(r for r, row in t.items() if row["kind"] == "exact_copy")[0]
    a = load_rgb(root / rel, SIZE)
    d = compare_duplicate(a, a)
    assert d.duplicate and d.rms == 0 and d.hf_ratio == pytest.approx(1.0)


def test_signatures_from_decode_spare_pixel_loads_and_change_nothing(root, result):
    """decode stores each image's coarse signature, so only fine same-cell and duplicate tests load pixels."""
    r, calls, stats = result
    facts = facts_of(root)
    assert all(f.signature is not None and len(f.signature) == 36 * 36 for f in facts)
    bare = [dataclasses.replace(f, signature=None) for f in facts]
    calls_bare: list[str] = []
    stats_bare: dict = {}
    r_bare = _run(root, bare, calls=calls_bare, stats=stats_bare)
    assert (r_bare.fates, r_bare.group_of, r_bare.pairs) == (r.fates, r.group_of, r.pairs)
    with_sig_loads = stats["duplicate_tests"] * 2 + 2 * stats["same_cell_fine_tests"]
    assert len(calls) <= with_sig_loads < len(calls_bare), (len(calls), with_sig_loads, len(calls_bare))


def test_cell_features_are_the_centre_hash_and_signature_bits(root):
    rels = sorted(annotations(root))[:12]
    for rel in rels:
        rgb = load_rgb(root / rel, SIZE)
        centre, sig = cell_features(rgb)
        assert centre == centre_hash(rgb)
        assert sig == signature(rgb).tobytes()


def test_batched_coarse_tests_equal_one_pair_at_a_time(root):
    """The vectorised coarse test gives the same bits as testing each pair alone, whatever the batch."""
    sigs = [signature(load_rgb(root / rel, SIZE)) for rel in sorted(annotations(root))[:24]]
    pairs = list(combinations(range(len(sigs)), 2))[:60]
    alone = [coarse_test((sigs[a], sigs[b])) for a, b in pairs]
    for cut in (1, 7, 60):
        batched = []
        for k in range(0, len(pairs), cut):
            chunk = pairs[k : k + cut]
            batched += coarse_tests(np.stack(sigs), np.array([a for a, _ in chunk]), np.array([b for _, b in chunk]))
        assert batched == alone
