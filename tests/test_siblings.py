"""The sibling archives (Matek 2019, Acevedo 2020) as first-class inputs: shipped configs, folder aliases,
non-square JPEG sources published as their original bytes, and errors that say what to change."""

from __future__ import annotations

import hashlib
import io
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError, validate_config
from pipeline.stages.ingest import ingest
from pipeline.release.manifest import read_ledger
from pipeline.release.layout import read_manifest
from pipeline.resources import shipped_config_path
from pipeline.lifecycle.verify import verify_messages
from tests.rawkit import crop, encode, save
from tests.siblingkit import build_sibling, expected_published, sibling_config


def _doc(name: str) -> dict:
    return tomllib.loads(shipped_config_path(name).read_text(encoding="utf-8"))


def test_shipped_sibling_configs_have_their_archives_classes_sizes_and_formats():
    matek, acevedo = sibling_config("matek19"), sibling_config("acevedo20")
    assert (len(matek.classes), sum(c.raw_count for c in matek.classes)) == (15, 18_365)
    assert (len(acevedo.classes), sum(c.raw_count for c in acevedo.classes)) == (13, 17_092)
    assert (matek.image_size, matek.image_format) == ((400, 400), "TIFF")
    assert (acevedo.image_size, acevedo.image_format) == ((360, 363), "JPEG")  # 360 wide, 363 high
    assert matek.label_of_folder["NGS"] == "neutrophil_segmented"
    ngs = next(c for c in matek.classes if c.folder == "NGS")
    assert ngs.full_name.startswith("NGS")  # the archive's own name stays the display name
    assert acevedo.label_of_folder["SNE"] == "neutrophil_segmented"


def test_a_label_outside_the_pattern_says_why_and_suggests_a_folder_alias():
    doc = _doc("matek19")
    doc["classes"][0] = {"label": "NGS", "raw_count": 1, "published_count": 1}
    with pytest.raises(ConfigError) as err:
        validate_config(doc, "lab.toml")
    message = str(err.value)
    assert "key 'classes.0.label'" in message
    assert "lower-case letters, digits and underscores" in message
    assert 'label = "ngs", folder = "NGS"' in message


def test_two_classes_with_one_folder_are_refused():
    doc = _doc("matek19")
    doc["classes"][1]["folder"] = "NGS"
    with pytest.raises(ConfigError, match=r"folder names \['NGS'\] are used by more than one class"):
        validate_config(doc, "lab.toml")


def test_a_near_miss_folder_gets_a_did_you_mean(tmp_path):
    raw = tmp_path / "raw"
    save(raw / "NSG" / "a.tif", crop(1, (400, 400)))
    save(raw / "neutrophil_segmented" / "b.tif", crop(2, (400, 400)))
    save(raw / "LYT" / "c.tif", crop(3, (400, 400)))
    result = ingest(raw, sibling_config("matek19"))
    reasons = {i.relpath: i.reason for i in result.invalid}
    assert reasons["NSG/a.tif"] == "unknown label folder 'NSG' (did you mean 'NGS'?)"
    assert "it is the label of folder 'NGS'" in reasons["neutrophil_segmented/b.tif"]
    assert [(i.relpath, i.label) for i in result.items] == [("LYT/c.tif", "lymphocyte")]


def test_annotations_may_name_the_folder_alias_or_the_label(tmp_path):
    raw = tmp_path / "raw"
    save(raw / "NGS" / "a.tif", crop(1, (400, 400)))
    save(raw / "NGS" / "b.tif", crop(2, (400, 400)))
    save(raw / "LYT" / "c.tif", crop(3, (400, 400)))
    (raw / "annotations.csv").write_text("image,label\nNGS/a.tif,NGS\nNGS/b.tif,neutrophil_segmented\nLYT/c.tif,NGS\n", encoding="utf-8")
    result = ingest(raw, sibling_config("matek19"))
    assert [(i.relpath, i.label) for i in result.items] == [("NGS/a.tif", "neutrophil_segmented"), ("NGS/b.tif", "neutrophil_segmented")]
    assert [i.relpath for i in result.invalid] == ["LYT/c.tif"]
    assert "label 'neutrophil_segmented' disagrees with folder 'LYT'" in result.invalid[0].reason


def test_swapped_width_and_height_get_a_hint(tmp_path):
    raw = tmp_path / "raw"
    for i, folder in enumerate(["SNE", "SNE", "lymphocyte"]):
        save(raw / folder / f"{i}.jpg", crop(i, (360, 363)), "JPEG", quality=95)
    swapped = shipped_config_path("acevedo20").read_text(encoding="utf-8").replace("width = 360", "width = 363").replace("height = 363", "height = 360")
    (tmp_path / "swapped.toml").write_text(swapped, encoding="utf-8")
    result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel"), "--config", str(tmp_path / "swapped.toml"), "--strict", "--workers", "1", "--no-cache"])
    assert result.exit_code == 1, result.output
    hint = "wrong size 360x363, expected 363x360; width and height look swapped in the config (set image.width = 360, image.height = 363)"
    assert result.output.count(hint) == 3
    assert not (tmp_path / "rel").exists()


def test_a_plainly_wrong_size_gets_no_swap_hint(tmp_path):
    raw = tmp_path / "raw"
    save(raw / "SNE" / "a.jpg", crop(1, (300, 300)), "JPEG")
    save(raw / "SNE" / "b.jpg", crop(2, (360, 363)), "JPEG")
    result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel"), "--config", "acevedo20", "--workers", "1", "--no-cache"])
    assert result.exit_code == 0, result.output
    ledger = {e["source_file"]: e for e in read_ledger(tmp_path / "rel" / "ledger.csv")}
    assert ledger["SNE/a.jpg"]["reason"] == "wrong size 300x300, expected 360x363"
    assert ledger["SNE/b.jpg"]["fate"] == "kept"


def test_jpeg_sources_are_published_as_their_original_bytes(tmp_path):
    raw = tmp_path / "raw"
    files = {f"SNE/{i}.jpg": encode(crop(i, (360, 363)), "JPEG", quality=90) for i in range(4)}
    files["lymphocyte/grey.jpg"] = encode(crop(9, (360, 363))[:, :, 0], "JPEG", quality=90)  # grey: not RGB as it is
    for rel, data in files.items():
        (raw / rel).parent.mkdir(parents=True, exist_ok=True)
        (raw / rel).write_bytes(data)
    result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel"), "--config", "acevedo20", "--workers", "1", "--no-cache"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(tmp_path / "rel" / "data").to_pylist()
    assert len(rows) == 5
    for row in rows:
        data = row["image"]["bytes"]
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        assert hashlib.sha256(pixels.tobytes()).hexdigest() == row["pixel_sha256"]
        assert row["image_id"] == row["pixel_sha256"][:16]
        if row["source_file"].startswith("SNE/"):
            assert data == files[row["source_file"]]  # byte for byte: no re-encoding, no inflation
            assert row["image"]["path"].endswith(".jpg")
        else:
            assert row["image"]["path"].endswith(".png")  # converted to RGB, so stored losslessly as PNG
    published = sum(len(r["image"]["bytes"]) for r in rows if r["source_file"].startswith("SNE/"))
    assert published == sum(len(d) for rel, d in files.items() if rel.startswith("SNE/"))
    assert verify_messages(tmp_path / "rel") == []


@pytest.mark.parametrize("name", ["mll23", "matek19", "acevedo20"])
def test_a_synthetic_archive_of_each_shipped_config_builds_verifies_and_loads(tmp_path, name):
    import datasets

    config = sibling_config(name)
    release = build_sibling(name, tmp_path)
    assert verify_messages(release) == []
    raw_dirs = sorted(p.name for p in (tmp_path / f"{name}-raw").iterdir() if p.is_dir())
    assert raw_dirs == sorted(config.label_of_folder)  # the archive's own folder names
    sizes = {Image.open(p).size for p in (tmp_path / f"{name}-raw").rglob("cell_*")}
    assert sizes == {config.image_size}
    suffixes = Counter(p.suffix for p in (tmp_path / f"{name}-raw").rglob("cell_*"))
    if config.image_format == "JPEG":
        assert set(suffixes) == {".jpg"}
    ds = datasets.load_dataset(str(release), cache_dir=str(tmp_path / "hf"))
    assert ds["train"].features["label"].names == config.class_names
    loaded = Counter(config.class_names[label] for split in ds for label in ds[split]["label"])
    assert dict(loaded) == {label: n for label, n in expected_published(name).items() if n}
    assert read_manifest(release)["config"]["name"] == name


def test_a_jpeg_archive_with_planted_duplicates_gets_every_expected_fate(tmp_path):
    import csv

    from pipeline.build import build_release

    doc = _doc("acevedo20")
    for c in doc["classes"][:3]:
        c["raw_count"] = c["published_count"] + 2000  # removals to plant: copies, conflicts, dysplastic cells
    config = validate_config(doc, "acevedo with removals")
    from pipeline.synth.generator import synthesize

    synthesize(tmp_path / "raw", config=config, scale=0.003, seed=11, workers=1)
    truth = list(csv.DictReader(open(tmp_path / "raw" / "synth_truth.csv", encoding="utf-8")))
    kinds = Counter(t["kind"] for t in truth)
    assert kinds["exact_copy"] and kinds["jpeg"] and kinds["conflict_copy"] and kinds["dysplastic"]
    assert not kinds["reencode_png"] and not kinds["reencode_lzw"] and not kinds["shift"] and not kinds["brighter"]
    assert {Path(t["image"]).suffix for t in truth} == {".jpg"}
    build_release(tmp_path / "raw", tmp_path / "rel", config, workers=1)
    ledger = {e["source_file"]: e for e in read_ledger(tmp_path / "rel" / "ledger.csv")}
    wrong = [(t["image"], t["kind"], t["expected_fate"], ledger[t["image"]]["fate"]) for t in truth if ledger[t["image"]]["fate"] != t["expected_fate"]]
    assert wrong == []


@pytest.mark.parametrize("folder", ["../NGS", "NGS/sub", ".hidden", "a\\b"])
def test_a_folder_alias_cannot_leave_raw_or_hide(folder):
    doc = _doc("matek19")
    doc["classes"][0]["folder"] = folder
    with pytest.raises(ConfigError, match=r"key 'classes.0.folder'"):
        validate_config(doc, "lab.toml")
