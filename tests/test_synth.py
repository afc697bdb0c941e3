"""pipeline.synth.generator: counts, truth file, determinism, image format and content of synthetic archives."""

from __future__ import annotations

import hashlib
import io
import math
from collections import Counter
from itertools import combinations

import numpy as np
import pytest
from PIL import Image

from pipeline.synth import generator
from pipeline.synth.plan import plan_cells
from pipeline.stages.decode import decode_file, load_rgb
from pipeline.records import ImageFacts

try:
    from tests.helpers_images import ORIGINAL_KINDS, SIZE, annotations, archive, config, facts_of, truth
except ImportError:  # tests/ on sys.path instead of the repository root
    from helpers_images import ORIGINAL_KINDS, SIZE, annotations, archive, config, facts_of, truth

FATE_OF_KIND = {
    "original": "kept",
    "dysplastic": "excluded",
    "conflict_original": "label_conflict",
    "conflict_copy": "label_conflict",
    **{k: "duplicate" for k in generator.DUPLICATE_KINDS},
    **{k: "kept" for k in generator.LOOKALIKE_KINDS},
}


def _files(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.parent != root)


def test_expected_counts_at_scale_one_are_the_configs_counts():
    cfg = config()
    counts = generator.expected_counts(cfg, 1.0)
    assert counts == {c.label: (c.raw_count, c.published_count) for c in cfg.classes}
    assert sum(r for r, _ in counts.values()) == 41_906
    assert sum(p for _, p in counts.values()) == 41_621


def test_plan_at_scale_one_has_the_papers_shape():
    """The full-scale plan (no rendering): per class raw/kept counts and the planted mix."""
    cfg = config()
    cells = plan_cells(cfg, 1.0, seed=0)
    outputs = [o for c in cells for o in c.outputs]
    raw = Counter(o.label for o in outputs)
    kept = Counter(o.label for o in outputs if o.fate == "kept")
    for c in cfg.classes:
        assert raw[c.label] == c.raw_count, c.label
        assert kept[c.label] == c.published_count, c.label
    kinds = Counter(o.kind for o in outputs)
    assert kinds["refocus_samehash"] == 49
    assert set(kinds) == set(generator.KINDS)
    # classes that lose nothing get no planted removals
    for c in cfg.classes:
        if c.raw_count == c.published_count:
            assert all(o.fate == "kept" for o in outputs if o.label == c.label)


@pytest.mark.parametrize("scale", [0.004, 0.01])
def test_counts_per_class_equal_expected_counts(scale):
    root = archive(scale)
    expected = generator.expected_counts(config(), scale)
    t = truth(root)
    raw = Counter(rel.split("/")[0] for rel in _files(root))
    kept = Counter(rel.split("/")[0] for rel, row in t.items() if row["expected_fate"] == "kept")
    for label, (n_raw, n_pub) in expected.items():
        assert raw[label] == n_raw, label
        assert kept[label] == n_pub, label
        assert n_pub >= generator.MIN_KEPT
    if scale >= 0.01:
        assert {row["kind"] for row in t.values()} == set(generator.KINDS), "every kind planted at scale >= 0.01"


def test_truth_consistent_with_annotations_and_files():
    root = archive(0.01)
    t, ann = truth(root), annotations(root)
    files = _files(root)
    assert sorted(t) == sorted(ann) == files
    patients = Counter(row["patient_id"] for row in ann.values())
    for rel, row in t.items():
        a = ann[rel]
        label = rel.split("/")[0]
        assert a["label"] == label
        assert a["annotator"] in generator.ANNOTATORS
        assert a["patient_id"].startswith("P") and len(a["patient_id"]) == 5
        assert a["dysplastic"] in ("true", "false")
        assert row["expected_fate"] == FATE_OF_KIND[row["kind"]], rel
        assert (a["dysplastic"] == "true") == (row["kind"] == "dysplastic")
        src = row["source"]
        if row["kind"] in ORIGINAL_KINDS:
            assert src == ""
            continue
        assert src in t and t[src]["kind"] in ORIGINAL_KINDS, rel
        assert ann[src]["patient_id"] == a["patient_id"], "derived images share their source's patient"
        data, src_data = (root / rel).read_bytes(), (root / src).read_bytes()
        kind = row["kind"]
        if kind == "conflict_copy":
            assert label != src.split("/")[0], "a conflict copy lies in another class folder"
            assert t[src]["kind"] == "conflict_original"
            assert a["annotator"] != ann[src]["annotator"]
        else:
            assert label == src.split("/")[0], "duplicates and look-alikes stay in their source's class"
            assert t[src]["kind"] == "original"
        if kind == "exact_copy" or (kind == "conflict_copy" and rel.endswith(".tif")):
            assert data == src_data
        elif kind in ("reencode_png", "reencode_lzw"):
            assert data != src_data
            assert np.array_equal(load_rgb(root / rel, SIZE), load_rgb(root / src, SIZE))
        else:
            assert data != src_data
    # pseudonymous patients with several cells each (the last run may be shorter)
    sizes = sorted(patients.values())
    assert len(sizes) >= 5 and sizes[-1] <= 60 * 3 and sorted(sizes)[1] >= 10


def test_files_decode_as_288_rgb_in_the_archive_formats():
    root = archive(0.01)
    t = truth(root)
    for rel, row in t.items():
        f = decode_file(root / rel, rel, rel.split("/")[0], SIZE)
        assert isinstance(f, ImageFacts), f
        assert (f.width, f.height) == SIZE
        with Image.open(root / rel) as im:
            assert im.mode == "RGB"
            fmt, comp = im.format, im.info.get("compression")
            if rel.endswith(".tif"):
                assert fmt == "TIFF" and comp == ("tiff_lzw" if row["kind"] == "reencode_lzw" else "raw")
                assert 306 not in im.tag_v2, "no DateTime tag"
            elif rel.endswith(".png"):
                assert fmt == "PNG" and "tIME" not in im.info
            else:
                assert rel.endswith(".jpg") and fmt == "JPEG" and row["kind"] in ("jpeg", "conflict_copy")
    assert sum(rel.endswith(".tif") for rel in t) > 0.95 * len(t)


def test_byte_identical_for_same_seed_whatever_the_workers():
    a, b = archive(0.004, 0, 1), archive(0.004, 0, 2)
    fa, fb = _files(a), _files(b)
    assert fa == fb
    for rel in fa + ["annotations.csv", "synth_truth.csv"]:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    c = archive(0.004, 1, 1)
    assert (a / "synth_truth.csv").read_bytes() != (c / "synth_truth.csv").read_bytes()


def test_originals_are_distinct_cells():
    from pipeline.stages.similarity import same_cell

    root = archive(0.01)
    t = truth(root)
    facts = {f.relpath: f for f in facts_of(root)}
    originals = sorted(rel for rel, row in t.items() if row["kind"] in ORIGINAL_KINDS)
    assert len({facts[r].pixel_sha256 for r in originals}) == len(originals)
    thr, look = config().phash_threshold, config().lookalike_threshold
    close = []
    for x, y in combinations(originals, 2):
        d = (facts[x].phash ^ facts[y].phash).bit_count()
        assert d > thr, (x, y, d)
        if d <= look:
            close.append((x, y))
    for x, y in close:
        assert not same_cell(load_rgb(root / x, SIZE), load_rgb(root / y, SIZE)).same, (x, y)


def test_images_look_like_blood_smear_crops():
    root = archive(0.01)
    t = truth(root)
    padded = 0
    for rel, row in t.items():
        if row["kind"] != "original":
            continue
        img = load_rgb(root / rel, SIZE).astype(np.float32)
        if "pad=" in row["detail"]:
            padded += 1
            assert (img.min(axis=2) == 255).all(axis=1).any() or (img.min(axis=2) == 255).all(axis=0).any()
        grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        unpadded = img.min(axis=2) < 255
        bright = unpadded & (grey >= np.percentile(grey[unpadded], 85))
        bg = np.median(img[bright], axis=0)  # the plasma between cells
        assert bg[0] > bg[1] and bg[2] > bg[1] and bg.min() > 190, f"{rel}: background should be pale pink, got {bg}"
        # stained (purple/blue: blue above red, well above green, darker than the background) pixels,
        # mostly in the centre: the nucleated cell
        r, g, b = img[..., 0], img[..., 1], img[..., 2]
        stained = (b > r + 10) & (b > g + 25) & (grey < 170)
        centre = stained[64:224, 64:224].sum()
        assert centre >= 400, f"{rel}: no stained cell in the centre"
        assert centre >= 0.8 * stained.sum(), f"{rel}: the stained cell should be centred"
        # red cells: pinkish pixels (red above blue above green) somewhere
        assert ((r > b) & (b > g + 5) & (grey < 200)).sum() > 0 or "smudge" in rel
    assert padded >= 1, "a few crops carry white padding bars"


def test_planted_lookalikes_and_duplicates_hash_as_intended():
    root = archive(0.01)
    t = truth(root)
    facts = {f.relpath: f for f in facts_of(root)}
    dist = lambda a, b: (facts[a].phash ^ facts[b].phash).bit_count()  # noqa: E731
    same = [rel for rel, row in t.items() if row["kind"] == "refocus_samehash"]
    assert same and all(dist(rel, t[rel]["source"]) <= 2 for rel in same)
    assert any(dist(rel, t[rel]["source"]) == 0 for rel in same)
    for rel, row in t.items():
        if row["expected_fate"] == "duplicate":
            assert dist(rel, row["source"]) <= config().phash_threshold, rel
        if row["kind"] == "recrop":
            dy, dx = (int(p.split("=")[1]) for p in row["detail"].split(";")[:2])
            assert 5 <= math.hypot(dy, dx) <= 21


def test_detail_of_lossy_copies_is_real():
    """The recorded JPEG quality is what the file carries (a sanity check of the truth details)."""
    root = archive(0.01)
    for rel, row in truth(root).items():
        if rel.endswith(".jpg"):
            q = int(row["detail"].split(";")[0].split("=")[1])
            src = load_rgb(root / row["source"], SIZE)
            buf = io.BytesIO()
            Image.fromarray(src).save(buf, "JPEG", quality=q)
            assert hashlib.sha256(buf.getvalue()).digest() == hashlib.sha256((root / rel).read_bytes()).digest()


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        generator.expected_counts(config(), 0)
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    with pytest.raises(FileExistsError):
        generator.synthesize(tmp_path / "x", config=config(), scale=0.001)
