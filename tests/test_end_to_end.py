"""The paper's clean-up reproduced at small scale: synth -> build -> every planted case has its expected fate."""

from __future__ import annotations

import csv
import json
from collections import Counter

import pytest

from pipeline.build import build_release
from pipeline.release.manifest import read_ledger
from pipeline.synth.generator import expected_counts, synthesize

SCALE = 0.01


@pytest.fixture(scope="module")
def synth_release(tmp_path_factory, config):
    root = tmp_path_factory.mktemp("e2e")
    synthesize(root / "raw", config=config, scale=SCALE, seed=7, workers=2)
    report = build_release(root / "raw", root / "release", config, workers=2)
    truth = list(csv.DictReader(open(root / "raw" / "synth_truth.csv", encoding="utf-8")))
    ledger = {row["source_file"]: row for row in read_ledger(root / "release" / "ledger.csv")}
    return root, report, truth, ledger


def test_every_planted_case_has_its_expected_fate(synth_release):
    _, _, truth, ledger = synth_release
    assert len(ledger) == len(truth)  # the ledger accounts for every raw input, once
    wrong = [(t["image"], t["kind"], t["expected_fate"], ledger[t["image"]]["fate"]) for t in truth if ledger[t["image"]]["fate"] != t["expected_fate"]]
    assert wrong == []
    kinds = Counter(t["kind"] for t in truth)
    for kind in ("exact_copy", "reencode_png", "jpeg", "shift", "brighter", "conflict_copy", "dysplastic", "refocus_blur", "refocus_samehash", "recrop"):
        assert kinds[kind] >= 1, kind  # every kind is planted at this scale, so the assertion above covers it
    for t in truth:
        if t["expected_fate"] == "duplicate":
            assert ledger[t["image"]]["duplicate_of"] == t["source"]


def test_kept_counts_per_class_match_the_papers_table_at_this_scale(synth_release, config):
    _, report, _, _ = synth_release
    expected = expected_counts(config, SCALE)
    assert {c: v.raw for c, v in report.counts.per_class.items()} == {c: raw for c, (raw, _) in expected.items()}
    assert {c: v.kept for c, v in report.counts.per_class.items()} == {c: pub for c, (_, pub) in expected.items()}


def test_lookalikes_share_a_group_and_no_group_or_patient_straddles_splits(synth_release):
    root, _, truth, ledger = synth_release
    import pyarrow.parquet as pq

    table = pq.read_table(root / "release" / "data", columns=["source_file", "group_id", "patient_id"]).to_pylist()
    group_of = {r["source_file"]: r["group_id"] for r in table}
    for t in truth:
        if t["kind"].startswith(("refocus", "recrop")):
            assert group_of[t["image"]] == group_of[t["source"]], t["image"]
    split_of = {r["source_file"]: ledger[r["source_file"]]["split"] for r in table}
    for key in ("group_id", "patient_id"):
        seen: dict[str, set[str]] = {}
        for r in table:
            seen.setdefault(r[key], set()).add(split_of[r["source_file"]])
        assert all(len(s) == 1 for s in seen.values()), key


def test_release_loads_with_image_and_classlabel_and_manifest_counts(synth_release, config):
    import datasets

    root, _, _, _ = synth_release
    manifest = json.loads((root / "release" / "manifest.json").read_text())
    ds = datasets.load_dataset(str(root / "release"))
    assert set(ds) == {"train", "validation", "test"}
    for split, info in manifest["splits"].items():
        assert ds[split].num_rows == info["num_examples"]
        assert ds[split].features["label"].names == config.class_names
        assert isinstance(ds[split].features["image"], datasets.Image)
    assert ds["test"][0]["image"].size == (288, 288)
