"""The release lifecycle on a realistic synthetic archive: duplicates, look-alikes and conflicts included.

v1.0.0 from a small synthetic archive; v1.1.0 from the same archive with two images removed, one relabelled,
three new cells added, and a lossless near-duplicate of a published image whose name sorts first (dedup on its
own would publish the newcomer and the image would change its id).
"""

import hashlib
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.build import build_release
from pipeline.cli import app
from pipeline.config import load_config
from pipeline.stages.decode import load_rgb
from pipeline.lifecycle.diff import diff_releases
from pipeline.release.manifest import read_ledger
from pipeline.lifecycle.notes import END
from pipeline.lifecycle.verify import verify_release
from tests.helpers_images import archive, read_csv, truth
from tests.rawkit import crop, save, write_annotations

SIZE = (288, 288)
COLUMNS = ("image", "label", "patient_id", "annotator", "dysplastic")


def pixel_id(pixels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()[:16]


def kept(release) -> dict[str, dict]:
    return {r["image_id"]: r for r in read_ledger(release / "ledger.csv") if r["fate"] == "kept"}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    base = tmp_path_factory.mktemp("synth-lifecycle")
    source = archive(0.004, 0, 1)
    raw1 = base / "raw1"
    shutil.copytree(source, raw1, ignore=shutil.ignore_patterns("synth_truth.csv"))
    build_release(raw1, base / "v1.0.0", load_config(version="1.0.0"), workers=1, notes_dir=base / "notes")

    # published originals that no other file duplicates or resembles: safe to remove, relabel or shadow
    related = {r["source"] for r in truth(source).values() if r["source"]}
    plain = sorted(p for p, r in truth(source).items() if r["kind"] == "original" and p not in related and p.endswith(".tif"))
    rows = {r["image"]: r for r in read_csv(raw1 / "annotations.csv")}
    raw2 = base / "raw2"
    shutil.copytree(raw1, raw2)
    removed, relabel, shadowed = plain[:2], plain[2], plain[3]
    for rel in removed:
        (raw2 / rel).unlink()
        del rows[rel]
    old_label = relabel.split("/")[0]
    new_label = next(c for c in load_config().class_names if c != old_label)
    moved = f"{new_label}/relabelled_{relabel.split('/')[1]}"
    (raw2 / relabel).rename(raw2 / moved)
    rows[moved] = dict(rows.pop(relabel), image=moved, label=new_label)
    folder = shadowed.split("/")[0]
    brighter = np.clip(load_rgb(raw1 / shadowed, SIZE).astype(np.float32) * 1.04, 0, 255).astype(np.uint8)
    save(raw2 / folder / "a_brighter.tif", brighter)  # sorts before cell_*.tif; lossless like the original
    rows[f"{folder}/a_brighter.tif"] = dict(rows[shadowed], image=f"{folder}/a_brighter.tif")
    added = {}
    for k, label in enumerate(("myeloblast", "lymphocyte", "basophil")):
        rel = f"{label}/batch2_{k}.tif"
        save(raw2 / rel, crop(5000 + k))
        rows[rel] = {"image": rel, "label": label, "patient_id": f"Q{k}", "annotator": "E2", "dysplastic": "false"}
        added[rel] = pixel_id(crop(5000 + k))
    write_annotations(raw2, [rows[k] for k in sorted(rows)], columns=COLUMNS)

    args = ["build", str(raw2), "--out", str(base / "v1.1.0"), "--version", "1.1.0", "--workers", "1",
            "--previous", str(base / "v1.0.0"), "--notes-dir", str(base / "notes")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    ids = {rel: pixel_id(load_rgb(raw1 / rel, SIZE)) for rel in [*removed, relabel, shadowed]}
    return {
        "base": base, "removed": [ids[r] for r in removed], "relabel": (ids[relabel], old_label, new_label),
        "shadowed": shadowed, "shadowed_id": ids[shadowed], "added": added, "folder": folder, "cli_output": result.output,
    }


def test_the_published_copy_stays_published_when_a_near_duplicate_arrives(releases):
    base = releases["base"]
    ledger = {r["source_file"]: r for r in read_ledger(base / "v1.1.0" / "ledger.csv")}
    assert ledger[releases["shadowed"]]["fate"] == "kept"
    assert ledger[releases["shadowed"]]["image_id"] == releases["shadowed_id"]
    newcomer = ledger[f"{releases['folder']}/a_brighter.tif"]
    assert newcomer["fate"] == "duplicate" and newcomer["duplicate_of"] == releases["shadowed"]


def test_notes_and_diff_list_exactly_the_change(releases):
    base = releases["base"]
    d = diff_releases(base / "v1.0.0", base / "v1.1.0")
    assert sorted(k.image_id for k in d.added) == sorted(releases["added"].values())
    assert sorted(r.image.image_id for r in d.removed) == sorted(releases["removed"])
    assert [(r.image_id, r.old_label, r.new_label) for r in d.relabelled] == [releases["relabel"]]
    assert d.split_changes == []
    assert [f.source_file for f in d.fate_changes] == [f"{releases['folder']}/a_brighter.tif"]
    notes = (base / "v1.1.0" / "release_notes" / "v1.1.0.md").read_text()
    printed = CliRunner().invoke(app, ["diff", str(base / "v1.0.0"), str(base / "v1.1.0")]).output
    assert printed == notes[notes.index(END) + len(END):].lstrip("\n")


def test_every_surviving_image_keeps_its_split_and_both_releases_verify(releases):
    base = releases["base"]
    old, new = kept(base / "v1.0.0"), kept(base / "v1.1.0")
    surviving = set(old) & set(new)
    assert len(surviving) == len(old) - 2
    assert {i: new[i]["split"] for i in surviving} == {i: old[i]["split"] for i in surviving}
    assert verify_release(base / "v1.0.0", notes_dir=base / "notes") == []
    assert verify_release(base / "v1.1.0", notes_dir=base / "notes") == []


def test_look_alike_groups_of_the_archive_stay_together(releases):
    """The archive's refocused and re-cropped twins are kept, grouped, and their group sits in one split."""
    base = releases["base"]
    source = archive(0.004, 0, 1)
    lookalikes = [(p, r["source"]) for p, r in truth(source).items() if r["kind"].startswith(("refocus", "recrop"))]
    assert lookalikes
    ledger = {r["source_file"]: r for r in read_ledger(base / "v1.1.0" / "ledger.csv")}
    for twin, original in lookalikes:
        if ledger[original]["fate"] == "kept" and ledger[twin]["fate"] == "kept":
            assert ledger[twin]["split"] == ledger[original]["split"], (twin, original)
