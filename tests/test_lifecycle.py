"""Release lifecycle: v1.0.0, then v1.1.0 from changed raw data (added, removed, relabelled images)."""

import hashlib
import json
import shutil

import pytest
import yaml
from typer.testing import CliRunner

import pipeline
from pipeline.build import build_release
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.lifecycle.diff import config_changes, diff_releases, render_diff
from pipeline.lifecycle.ancestry import AncestryError
from pipeline.release.layout import VersionError, read_manifest, version_key
from pipeline.release.manifest import read_ledger
from pipeline.lifecycle.notes import BEGIN, END, NotesError
from pipeline.lifecycle.verify import verify_release
from tests.rawkit import crop, save, simple_raw, write_annotations

LABELS = ["myeloblast", "monocyte", "eosinophil"]


def image_id(seed: int) -> str:
    return hashlib.sha256(crop(seed).tobytes()).hexdigest()[:16]


def kept(release) -> dict[str, dict]:
    return {r["image_id"]: r for r in read_ledger(release / "ledger.csv") if r["fate"] == "kept"}


def generated_part(notes_text: str) -> str:
    return notes_text[notes_text.index(END) + len(END) :].lstrip("\n")


@pytest.fixture(scope="module")
def v1(tmp_path_factory):
    """RAW for v1.0.0 (24 images, seeds 0..23 in LABELS order), and its release."""
    base = tmp_path_factory.mktemp("lifecycle")
    rows = simple_raw(base / "raw1", LABELS, per_class=8)
    build_release(base / "raw1", base / "v1.0.0", load_config(version="1.0.0"), workers=1, notes_dir=base / "notes")
    return base, rows


def changed_raw(v1, name: str):
    """v1's RAW with 2 images removed, 3 added, 1 relabelled, 1 now marked dysplastic, and 1 exact copy of a
    published image added."""
    base, rows = v1
    raw = base / name
    shutil.copytree(base / "raw1", raw)
    rows = [dict(r) for r in rows]
    removed = ["myeloblast/cell_002.tif", "eosinophil/cell_005.tif"]
    for rel in removed:
        (raw / rel).unlink()
    rows = [r for r in rows if r["image"] not in removed]
    # relabel: the expert moves monocyte/cell_001 to eosinophil (the folder must follow the label)
    (raw / "monocyte/cell_001.tif").rename(raw / "eosinophil/from_monocyte_001.tif")
    relabelled = next(r for r in rows if r["image"] == "monocyte/cell_001.tif")
    relabelled.update(image="eosinophil/from_monocyte_001.tif", label="eosinophil")
    next(r for r in rows if r["image"] == "eosinophil/cell_000.tif")["dysplastic"] = "true"
    added = {"myeloblast/new_a.tif": (900, "P10"), "monocyte/new_b.tif": (901, "P11"), "eosinophil/new_c.tif": (902, "P03")}
    for rel, (seed, patient) in added.items():
        save(raw / rel, crop(seed))
        rows.append({"image": rel, "label": rel.split("/")[0], "patient_id": patient, "annotator": "E1", "dysplastic": "false"})
    # a lossless copy of a published image whose path sorts first: dedup alone would publish the copy
    save(raw / "myeloblast/a_copy.png", crop(0))
    rows.append({"image": "myeloblast/a_copy.png", "label": "myeloblast", "patient_id": "P00", "dysplastic": "false"})
    write_annotations(raw, rows)
    return raw


@pytest.fixture(scope="module")
def v2(v1):
    """v1.1.0 built with the CLI, as a maintainer would: `mll23 build RAW --previous v1.0.0 --notes-dir notes`."""
    base, _ = v1
    raw = changed_raw(v1, "raw2")
    args = ["build", str(raw), "--out", str(base / "v1.1.0"), "--version", "1.1.0", "--workers", "1",
            "--previous", str(base / "v1.0.0"), "--notes-dir", str(base / "notes")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"release notes: {base / 'v1.1.0' / 'release_notes' / 'v1.1.0.md'}" in result.output
    assert "split change" not in result.output
    return base, result


def test_version_order_follows_semver():
    order = ["0.9.9", "1.0.0-alpha", "1.0.0-alpha.2", "1.0.0-alpha.10", "1.0.0-beta", "1.0.0", "1.0.1", "1.1.0", "2.0.0"]
    assert sorted(order, key=version_key) == order
    with pytest.raises(VersionError, match="not a semantic version"):
        version_key("1.0")


def test_notes_list_exactly_the_change(v2):
    base, _ = v2
    d = diff_releases(base / "v1.0.0", base / "v1.1.0")
    assert {k.image_id for k in d.added} == {image_id(900), image_id(901), image_id(902)}
    # seeds: myeloblast cell_002 is seed 2, eosinophil cell_005 is seed 16 + 5
    assert {(r.image.image_id, r.why) for r in d.removed} == {
        (image_id(2), "raw file no longer in the input"),
        (image_id(21), "raw file no longer in the input"),
        (image_id(16), "excluded: dysplastic cell (annotations.csv dysplastic=true)"),
    }
    assert [(r.image_id, r.old_label, r.new_label) for r in d.relabelled] == [(image_id(9), "monocyte", "eosinophil")]
    assert [(m.old, m.new) for m in d.renamed] == [("monocyte/cell_001.tif", "eosinophil/from_monocyte_001.tif")]
    assert d.split_changes == []
    assert [(f.source_file, f.before, f.after) for f in d.fate_changes] == [
        ("eosinophil/cell_000.tif", "kept", "excluded: dysplastic cell (annotations.csv dysplastic=true)"),
        ("myeloblast/a_copy.png", "", "duplicate: duplicate of myeloblast/cell_000.tif: identical pixels"),
    ]
    counts = {c.key: (c.old, c.new) for c in d.per_class if c.old or c.new}
    # myeloblast -1 +1; monocyte -1 (relabelled) +1; eosinophil -1 -1 (dysplastic) +1 (relabelled) +1
    assert counts == {"myeloblast": (8, 8), "monocyte": (8, 8), "eosinophil": (8, 8)}
    assert sum(c.new for c in d.per_split) == 24 and sum(c.old for c in d.per_split) == 24
    assert {c.key: (c.old, c.new) for c in d.fates if c.old or c.new} == {"kept": (24, 24), "duplicate": (0, 1), "excluded": (0, 1)}
    assert d.config_changes == [] and d.tool_change is None

    notes = (base / "v1.1.0" / "release_notes" / "v1.1.0.md").read_text()
    for k in d.added + [r.image for r in d.removed]:
        assert f"`{k.image_id}`" in notes
    assert "### Images added (3)" in notes and "### Images removed (3)" in notes and "### Label changes (1)" in notes
    assert "### Dedup, exclusion and validity changes (2)" in notes
    assert "| `" + image_id(9) + "` | monocyte | eosinophil |" in notes
    assert "| eosinophil | 8 | 8 | 0 |" in notes and "| excluded | 0 | 1 | +1 |" in notes
    assert "Every image of v1.0.0 that is still published keeps its split." in notes


def test_surviving_images_keep_their_split_and_new_ones_follow_their_patient(v2):
    base, _ = v2
    old, new = kept(base / "v1.0.0"), kept(base / "v1.1.0")
    surviving = set(old) & set(new)
    assert len(surviving) == 24 - 3
    assert all(new[i]["split"] == old[i]["split"] for i in surviving)
    # new_c joins patient P03, whose v1.0.0 images all share one split
    p03_split = {old[image_id(n)]["split"] for n in range(24) if n % 7 == 3 and image_id(n) in old}
    assert len(p03_split) == 1 and new[image_id(902)]["split"] == p03_split.pop()


def test_a_new_copy_does_not_replace_the_published_file(v2):
    base, _ = v2
    ledger = {r["source_file"]: r for r in read_ledger(base / "v1.1.0" / "ledger.csv")}
    assert ledger["myeloblast/cell_000.tif"]["fate"] == "kept"
    assert ledger["myeloblast/a_copy.png"]["fate"] == "duplicate"
    assert ledger["myeloblast/a_copy.png"]["duplicate_of"] == "myeloblast/cell_000.tif"
    assert ledger["myeloblast/a_copy.png"]["reason"] == "duplicate of myeloblast/cell_000.tif: identical pixels"


def test_mll23_diff_prints_the_notes_generated_part(v2):
    base, _ = v2
    result = CliRunner().invoke(app, ["diff", str(base / "v1.0.0"), str(base / "v1.1.0")])
    assert result.exit_code == 0, result.output
    notes = (base / "v1.1.0" / "release_notes" / "v1.1.0.md").read_text()
    assert result.output == generated_part(notes) == render_diff(diff_releases(base / "v1.0.0", base / "v1.1.0"))
    as_json = json.loads(CliRunner().invoke(app, ["diff", str(base / "v1.0.0"), str(base / "v1.1.0"), "--json"]).output)
    assert sorted(k["image_id"] for k in as_json["added"]) == sorted([image_id(900), image_id(901), image_id(902)])
    missing = CliRunner().invoke(app, ["diff", str(base / "v1.0.0"), str(base / "nope")])
    assert missing.exit_code == 2 and "no manifest.json" in missing.output


def test_release_carries_notes_card_links_them_and_manifest_records_ancestry(v1, v2):
    base, _ = v2
    release = base / "v1.1.0"
    manifest = read_manifest(release)
    assert manifest["version"] == "1.1.0" and manifest["config"]["version"] == "1.1.0"
    assert manifest["release_notes"] == "release_notes/v1.1.0.md"
    assert manifest["previous"]["version"] == "1.0.0"
    assert manifest["previous"]["manifest_sha256"] == hashlib.sha256((base / "v1.0.0" / "manifest.json").read_bytes()).hexdigest()
    assert "release_notes/v1.1.0.md" in {f["path"] for f in manifest["files"]}
    assert set(manifest["retired"]) == {image_id(2), image_id(16), image_id(21)}
    card = (release / "README.md").read_text()
    assert "what changed since v1.0.0 is in [release_notes/v1.1.0.md](release_notes/v1.1.0.md)" in card
    assert (base / "notes" / "v1.1.0.md").read_bytes() == (release / "release_notes" / "v1.1.0.md").read_bytes()
    assert verify_release(release, notes_dir=base / "notes") == []


def test_maintainer_words_survive_regeneration(v1, v2, tmp_path):
    base, _ = v2
    notes_dir = tmp_path / "notes"
    shutil.copytree(base / "notes", notes_dir)
    editable = notes_dir / "v1.1.0.md"
    text = editable.read_text()
    words = "\nExpert review of March: one monocyte was an eosinophil.\n\n| a | table |\n"
    editable.write_text(text[: text.index(BEGIN) + len(BEGIN)] + words + text[text.index(END) :])
    out = tmp_path / "v1.1.0"
    raw = base / "raw2"
    config = load_config(version="1.1.0")
    for _ in range(2):  # a second regeneration keeps them too
        build_release(raw, out, config, workers=1, previous=base / "v1.0.0", notes_dir=notes_dir, overwrite=True)
        regenerated = (out / "release_notes" / "v1.1.0.md").read_text()
        assert f"{BEGIN}{words}{END}" in regenerated
        assert generated_part(regenerated) == generated_part((base / "v1.1.0" / "release_notes" / "v1.1.0.md").read_text())
        assert editable.read_text() == regenerated
    # words edited in the notes directory but not rebuilt: verify names the stale copy
    editable.write_text(regenerated.replace("one monocyte", "two monocytes"))
    failures = verify_release(out, notes_dir=notes_dir, skip=("load-datasets",))
    assert [f.check for f in failures] == ["notes-copy"] and "rebuild the release" in failures[0].message


def test_broken_markers_refuse_to_overwrite_the_words(v1, tmp_path):
    base, _ = v1
    notes_dir = tmp_path / "notes"
    notes_dir.mkdir()
    (notes_dir / "v1.0.0.md").write_text("# my own notes without markers\n")
    with pytest.raises(NotesError, match="v1.0.0.md: expected one"):
        build_release(base / "raw1", tmp_path / "rel", load_config(version="1.0.0"), workers=1, notes_dir=notes_dir)
    assert (notes_dir / "v1.0.0.md").read_text() == "# my own notes without markers\n"
    assert not (tmp_path / "rel").exists()


def test_previous_must_be_an_earlier_version(v1, tmp_path):
    base, _ = v1
    with pytest.raises(AncestryError, match="version 1.0.0 is not newer than the previous release's 1.0.0"):
        build_release(base / "raw1", tmp_path / "rel", load_config(version="1.0.0"), workers=1, previous=base / "v1.0.0")
    result = CliRunner().invoke(
        app, ["build", str(base / "raw1"), "--out", str(tmp_path / "rel"), "--version", "0.9.0", "--previous", str(base / "v1.0.0"),
              "--notes-dir", str(tmp_path / "n")],
    )
    assert result.exit_code == 2 and "0.9.0 is not newer" in result.output
    with pytest.raises(AncestryError, match="no manifest.json there"):
        build_release(base / "raw1", tmp_path / "rel", load_config(version="2.0.0"), workers=1, previous=base / "raw1")


def test_a_removed_image_that_comes_back_returns_to_its_old_split(v1, v2, tmp_path):
    base, _ = v2
    raw = tmp_path / "raw3"
    shutil.copytree(base / "raw2", raw)
    shutil.copy(base / "raw1" / "myeloblast" / "cell_002.tif", raw / "myeloblast" / "cell_002_back.tif")
    rows = (raw / "annotations.csv").read_text().splitlines()
    rows.append("myeloblast/cell_002_back.tif,myeloblast,P40,E1,false")  # a new patient: no link to its old unit
    (raw / "annotations.csv").write_text("\n".join(rows) + "\n")
    build_release(raw, tmp_path / "v1.2.0", load_config(version="1.2.0"), workers=1, previous=base / "v1.1.0", notes_dir=tmp_path / "n")
    assert kept(tmp_path / "v1.2.0")[image_id(2)]["split"] == kept(base / "v1.0.0")[image_id(2)]["split"]
    assert set(read_manifest(tmp_path / "v1.2.0")["retired"]) == {image_id(16), image_id(21)}
    assert read_manifest(tmp_path / "v1.2.0")["retired"][image_id(21)]["last_version"] == "1.0.0"


def test_a_patient_link_across_old_splits_moves_the_unit_towards_train_and_is_reported(v1, tmp_path):
    base, rows = v1
    old = kept(base / "v1.0.0")
    split_of_patient = {}
    for n, row in enumerate(rows):
        split_of_patient.setdefault(row["patient_id"], old[image_id(n)]["split"])
    train_patient = next(p for p, s in sorted(split_of_patient.items()) if s == "train")
    test_patient = next(p for p, s in sorted(split_of_patient.items()) if s == "test")
    raw = tmp_path / "raw"
    shutil.copytree(base / "raw1", raw)
    rows = [dict(r) for r in rows]
    moved_row = next(r for r in rows if r["patient_id"] == test_patient)
    moved_row["patient_id"] = train_patient  # a corrected patient id joins a test image to a training patient
    write_annotations(raw, rows)
    report = build_release(raw, tmp_path / "v1.0.1", load_config(version="1.0.1"), workers=1, previous=base / "v1.0.0", notes_dir=tmp_path / "n")
    new = kept(tmp_path / "v1.0.1")
    moved_id = image_id(next(n for n, r in enumerate(rows) if r is moved_row))
    assert [(m.image_id, m.old_split, m.new_split) for m in report.split_moves] == [(moved_id, "test", "train")]
    assert "moves from test to train" in report.split_moves[0].describe()
    assert all(new[i]["split"] == "train" for i, r in old.items() if r["split"] == "train")
    notes = (tmp_path / "v1.0.1" / "release_notes" / "v1.0.1.md").read_text()
    assert "### Split changes (1)" in notes and f"| `{moved_id}` | test | train |" in notes


def test_a_unit_straddling_old_splits_goes_to_the_split_nearest_train():
    from pipeline.lifecycle.ancestry import split_moves
    from pipeline.stages.split import SplitItem, assign_splits

    fractions = {"train": 0.7, "validation": 0.1, "test": 0.2}
    # one patient whose earlier images were mostly in test, one in validation: a majority rule would pick test
    items = [SplitItem(f"{i:016x}", "a", f"g{i}", "P1") for i in range(4)]
    previous = {items[0].key: "validation", items[1].key: "test", items[2].key: "test"}
    assignment = assign_splits(items, fractions, seed=0, previous=previous)
    assert set(assignment.values()) == {"validation"}
    moves = split_moves(items, assignment, previous)
    assert [(m.image_id, m.old_split, m.new_split) for m in moves] == [(items[1].key, "test", "validation"), (items[2].key, "test", "validation")]
    assert moves[0].unit_splits == (("validation", 1), ("test", 2))


def test_first_release_notes_give_its_counts(v1):
    base, _ = v1
    notes = (base / "v1.0.0" / "release_notes" / "v1.0.0.md").read_text()
    assert notes.startswith("# mll23 v1.0.0\n") and "First release." in notes
    per_split = {}
    for row in kept(base / "v1.0.0").values():
        per_split[row["split"]] = per_split.get(row["split"], 0) + 1
    total_row = f"| **total** | {per_split['train']} | {per_split['validation']} | {per_split['test']} | 24 |"
    assert "24 images in 3 classes, from 24 raw inputs." in notes and total_row in notes
    assert (base / "notes" / "v1.0.0.md").read_bytes() == (base / "v1.0.0" / "release_notes" / "v1.0.0.md").read_bytes()


def test_config_changes_are_listed_key_by_key():
    old = load_config(version="1.0.0").raw
    new = json.loads(json.dumps(old))
    new.update(version="1.1.0", release_date="2026-01-15", exclude_labels=["basophil"])
    new["split"]["seed"] = 24
    new["classes"][1]["full_name"] = "segmented neutrophil"
    assert config_changes(old, new) == [
        ("classes[1].full_name", '"segmented neutrophil granulocyte"', '"segmented neutrophil"'),
        ("exclude_labels", "[]", '["basophil"]'),
        ("split.seed", "23", "24"),
    ]


def test_ci_workflow_command_pins_the_tool():
    default = CliRunner().invoke(app, ["ci-workflow"])
    assert default.exit_code == 0
    assert yaml.safe_load(default.output)["env"]["MLL23_PIPELINE"] == f"mll23-pipeline[croissant,webdataset]=={pipeline.__version__}"
    spec = "mll23-pipeline @ git+https://example.org/mll23-pipeline@v0.1.0"
    pinned = CliRunner().invoke(app, ["ci-workflow", "--install", spec])
    assert yaml.safe_load(pinned.output)["env"]["MLL23_PIPELINE"] == spec.replace(" @", "[croissant,webdataset] @")
