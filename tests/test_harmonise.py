"""`mll23 harmonise`: one release of MLL23, Matek 2019 and Acevedo 2020 on their 11 shared classes, with a
`source` column, each source's split, per-source and leave-one-source-out configs, and cross-source
duplicates kept once."""

from __future__ import annotations

import copy
import json
import csv
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image
from typer.testing import CliRunner

from pipeline.build import build_release
from pipeline.cli import app
from pipeline.config import validate_config
from pipeline.lifecycle.harmonise import HarmoniseError, harmonise
from pipeline.release.manifest import read_ledger
from pipeline.release.layout import read_manifest
from pipeline.resources import harmonised_map_path
from pipeline.lifecycle.verify import verify_messages
from tests.rawkit import crop, save
from tests.siblingkit import build_sibling, expected_published, sibling_config

SOURCES = ("mll23", "matek19", "acevedo20")


def _shipped_map() -> list[dict[str, str]]:
    return list(csv.DictReader(open(harmonised_map_path(), encoding="utf-8")))


def _expected_per_source(name: str) -> Counter:
    """Harmonised class -> images a source contributes, from the synthetic archive's expected counts."""
    config = sibling_config(name)
    own = {c.label: c.folder for c in config.classes}
    to_harmonised = {row[f"{name}_label"]: row["harmonised"] for row in _shipped_map() if row[f"{name}_label"]}
    out: Counter = Counter()
    for label, n in expected_published(name).items():
        if own[label] in to_harmonised:
            out[to_harmonised[own[label]]] += n
    return out


@pytest.fixture(scope="module")
def three(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    root = tmp_path_factory.mktemp("harmonise")
    releases = {name: build_sibling(name, root) for name in SOURCES}
    return root, releases


@pytest.fixture(scope="module")
def harmonised(three) -> Path:
    root, releases = three
    result = CliRunner().invoke(app, ["harmonise", *(str(releases[n]) for n in SOURCES), "--map", str(harmonised_map_path()), "--out", str(root / "h")])
    assert result.exit_code == 0, result.output
    return root / "h"


def test_the_shipped_map_has_the_papers_11_classes():
    rows = _shipped_map()
    assert len(rows) == 11
    assert {r["matek19_label"] for r in rows} >= {"NGS", "MYO", "LYT"}
    assert next(r for r in rows if r["harmonised"] == "erythroblast")["mll23_label"] == "normoblast"


def test_harmonised_release_verifies_and_loads_with_11_classes_a_source_column_and_per_source_counts(harmonised, tmp_path):
    import datasets

    assert verify_messages(harmonised) == []
    ds = datasets.load_dataset(str(harmonised), cache_dir=str(tmp_path / "hf"))
    names = [r["harmonised"] for r in _shipped_map()]
    for split in ds:
        assert ds[split].features["label"].names == names
        assert {"source", "original_label", "original_name", "image"} <= set(ds[split].features)
    loaded: dict[str, Counter] = {s: Counter() for s in SOURCES}
    for split in ds:
        for source, label in zip(ds[split]["source"], ds[split]["label"]):
            loaded[source][names[label]] += 1
    for source in SOURCES:
        assert loaded[source] == _expected_per_source(source), source


def test_each_image_keeps_its_source_split_bytes_and_original_label(three, harmonised):
    _, releases = three
    rows = {}
    for source in SOURCES:
        for shard in sorted((releases[source] / "data").glob("*.parquet")):
            split = shard.name.split("-")[0]
            for r in pq.read_table(shard).to_pylist():
                rows[(source, r["image_id"])] = (split, r["image"]["bytes"], r["label"])
    published = 0
    for shard in sorted((harmonised / "data").glob("*.parquet")):
        split = shard.name.split("-")[0]
        table = pq.read_table(shard).to_pylist()
        assert len({r["source"] for r in table}) == 1  # one source per shard: the configs name a source's files
        for r in table:
            src_split, data, src_label = rows[(r["source"], r["image_id"])]
            assert split == src_split
            assert r["image"]["bytes"] == data
            assert r["original_label"] == sibling_config(r["source"]).class_names[src_label]
            assert r["source_file"].startswith(r["source"] + "/")
            published += 1
    assert published == read_manifest(harmonised)["counts"]["ledger"]["kept"]


def test_classes_outside_the_map_are_excluded_with_a_ledger_row_each(three, harmonised):
    _, releases = three
    ledger = read_ledger(harmonised / "ledger.csv")
    excluded = [e for e in ledger if e["fate"] == "excluded"]
    hairy = [e for e in excluded if e["source_file"].startswith("mll23/") and e["label"] == "hairy_cell"]
    assert len(hairy) == expected_published("mll23")["hairy_cell"]
    assert hairy[0]["reason"] == "class 'hairy_cell' of mll23 has no harmonised class in the map"
    platelets = [e for e in excluded if e["label"] == "platelet"]
    assert len(platelets) == expected_published("acevedo20")["platelet"]
    total_inputs = sum(read_manifest(releases[s])["counts"]["ledger"]["kept"] for s in SOURCES)
    assert len(ledger) == total_inputs  # every image of every source release, once


def test_per_source_and_leave_one_source_out_configs_load(harmonised, tmp_path):
    import datasets

    header = yaml.safe_load((harmonised / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    configs = {c["config_name"] for c in header["configs"]}
    assert configs == {"default", *SOURCES, *(f"loso_{s}" for s in SOURCES)}
    for held in SOURCES:
        ds = datasets.load_dataset(str(harmonised), f"loso_{held}", cache_dir=str(tmp_path / "hf"))
        assert set(ds["test"]["source"]) == {held}
        assert held not in set(ds["train"]["source"])
        assert sum(Counter(ds["test"]["source"]).values()) == sum(_expected_per_source(held).values())
    one = datasets.load_dataset(str(harmonised), "matek19", cache_dir=str(tmp_path / "hf"))
    assert {s for split in one for s in one[split]["source"]} == {"matek19"}


def test_card_has_a_class_by_source_table(harmonised):
    card = (harmonised / "README.md").read_text(encoding="utf-8")
    line = next(line for line in card.splitlines() if line.startswith("| neutrophil_segmented |") and line.count("|") == 6)
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert [int(c) for c in cells[1:4]] == [_expected_per_source(s)["neutrophil_segmented"] for s in SOURCES]


# ---- cross-source duplicates -------------------------------------------------------------------------------


def _lab2_release(root: Path, mll23_raw: Path, mll23_release: Path) -> tuple[Path, str, str]:
    """A second 288 px source: one exact copy of an MLL23 image (TIFF bytes), one JPEG re-compression of
    another, and distinct crops. Returns the release and the two planted MLL23 source files."""
    kept = sorted(e["source_file"] for e in read_ledger(mll23_release / "ledger.csv") if e["fate"] == "kept" and e["label"] == "lymphocyte")
    exact, lossy = kept[0], kept[1]
    raw = root / "lab2-raw"
    (raw / "lymphocyte").mkdir(parents=True)
    shutil.copyfile(mll23_raw / exact, raw / "lymphocyte" / "copy.tif")
    pixels = np.asarray(Image.open(mll23_raw / lossy).convert("RGB"))
    Image.fromarray(pixels).save(raw / "lymphocyte" / "recompressed.jpg", format="JPEG", quality=95)
    for i in range(4):
        save(raw / "monocyte" / f"m{i}.tif", crop(100 + i))
        save(raw / "lymphocyte" / f"l{i}.tif", crop(200 + i))
    doc = copy.deepcopy(sibling_config("mll23").raw)
    doc["name"] = "lab2"
    build_release(raw, root / "lab2", validate_config(doc, "lab2"), workers=1)
    return root / "lab2", exact, lossy


def _two_source_map(path: Path) -> Path:
    path.write_text("harmonised,mll23_label,lab2_label\nlymphocyte,lymphocyte,lymphocyte\nmonocyte,monocyte,monocyte\n", encoding="utf-8")
    return path


def test_a_cross_source_duplicate_is_reported_and_kept_once(three, tmp_path):
    root, releases = three
    lab2, exact, lossy = _lab2_release(tmp_path, root / "mll23-raw", releases["mll23"])
    report = harmonise([lab2, releases["mll23"]], tmp_path / "h2", map_path=_two_source_map(tmp_path / "map.csv"))
    found = {(d.kept, d.dropped, d.kind) for d in report.duplicates}
    # exact copies, both lossless: the source given first (lab2) keeps it
    assert ("lab2/lymphocyte/copy.tif", f"mll23/{exact}", "exact") in found
    # a JPEG re-compression: the lossless copy wins whatever the order
    assert (f"mll23/{lossy}", "lab2/lymphocyte/recompressed.jpg", "near_duplicate") in found
    assert len(found) == 2
    ledger = {e["source_file"]: e for e in read_ledger(tmp_path / "h2" / "ledger.csv")}
    assert ledger[f"mll23/{exact}"]["fate"] == "duplicate"
    assert ledger[f"mll23/{exact}"]["duplicate_of"] == "lab2/lymphocyte/copy.tif"
    assert "cross-source duplicate: the same pixels as lab2/lymphocyte/copy.tif" in ledger[f"mll23/{exact}"]["reason"]
    assert "confirmed on pixels" in ledger["lab2/lymphocyte/recompressed.jpg"]["reason"]
    assert verify_messages(tmp_path / "h2") == []
    # leave-one-source-out never tests on an image it trained on
    rows = pq.read_table(tmp_path / "h2" / "data").to_pylist()
    by_source = {s: {r["pixel_sha256"] for r in rows if r["source"] == s} for s in ("lab2", "mll23")}
    assert not by_source["lab2"] & by_source["mll23"]
    lab2_rows = pq.read_table(lab2 / "data").to_pylist()
    mll23_rows = pq.read_table(releases["mll23"] / "data").to_pylist()
    assert len(rows) == len(lab2_rows) + sum(1 for r in mll23_rows if r["label"] in (2, 4)) - 2


def test_errors_name_the_file_and_what_to_change(three, tmp_path):
    root, releases = three
    with pytest.raises(HarmoniseError, match=r"missing column\(s\) \['acevedo20_label'\]"):
        harmonise([releases["mll23"], releases["acevedo20"]], tmp_path / "x", map_path=_write(tmp_path / "m1.csv", "harmonised,mll23_label\nlymphocyte,lymphocyte\nmonocyte,monocyte\n"))
    bad = "harmonised,mll23_label,matek19_label\nlymphocyte,lymphocyte,LYX\nmonocyte,monocyte,MON\n"
    with pytest.raises(HarmoniseError, match=r"line 2: matek19_label 'LYX' is not a class of release matek19 \(its classes, by the dataset's own names: BAS, EBO"):
        harmonise([releases["mll23"], releases["matek19"]], tmp_path / "x", map_path=_write(tmp_path / "m2.csv", bad))
    with pytest.raises(HarmoniseError, match="give release directories"):
        harmonise([root / "mll23-raw", releases["matek19"]], tmp_path / "x")
    tampered = tmp_path / "tampered"
    shutil.copytree(releases["matek19"], tampered)
    shard = sorted((tampered / "data").glob("*.parquet"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(HarmoniseError, match=r"the release does not verify, so it cannot be a source"):
        harmonise([releases["mll23"], tampered], tmp_path / "x")
    assert not (tmp_path / "x").exists()


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_harmonising_again_gives_byte_identical_files(three, harmonised, tmp_path):
    _, releases = three
    harmonise([releases[n] for n in SOURCES], tmp_path / "again")
    files = lambda d: [(f["path"], f["sha256"]) for f in read_manifest(d)["files"]]  # noqa: E731
    assert files(tmp_path / "again") == files(harmonised)
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (harmonised / "manifest.json").read_bytes()


def test_a_source_release_with_a_symbolic_link_is_refused(three, tmp_path):
    _, releases = three
    copy_dir = tmp_path / "linked"
    shutil.copytree(releases["matek19"], copy_dir)
    (copy_dir / "elsewhere.txt").symlink_to("/etc/hostname")
    with pytest.raises(HarmoniseError, match=r"symbolic link elsewhere.txt: a release holds its own files"):
        harmonise([releases["mll23"], copy_dir], tmp_path / "x")


def test_cli_refuses_a_raw_archive_as_a_source_with_exit_code_2(three, tmp_path):
    root, releases = three
    result = CliRunner().invoke(app, ["harmonise", str(root / "matek19-raw"), str(releases["mll23"]), "--out", str(tmp_path / "h")])
    assert result.exit_code == 2
    assert "give release directories (built with `mll23 build`), not raw archives" in result.output
    assert not (tmp_path / "h").exists()


_HUB_CONSUMER = r"""
import json, sys
import datasets

out = {}
for config in ("default", "loso_matek19", "acevedo20"):
    ds = datasets.load_dataset(sys.argv[1], config, revision="v1.0.0")
    out[config] = {s: {"rows": len(ds[s]), "sources": sorted(set(ds[s]["source"])), "names": ds[s].features["label"].names} for s in ds}
print("RESULT " + json.dumps(out))
"""


@pytest.mark.filterwarnings("ignore:Use 'content=<...>':DeprecationWarning")
def test_published_harmonised_release_loads_its_configs_from_the_hub(harmonised, hub, token, tmp_path):
    import subprocess
    import sys

    from pipeline.lifecycle.publish.steps import publish
    from tests.consumerkit import consumer_env

    publish(harmonised, "org/harmonised", token=token, endpoint=hub.url, log=lambda _: None)
    proc = subprocess.run([sys.executable, "-c", _HUB_CONSUMER, "org/harmonised"], env=consumer_env(hub.url, tmp_path / "consumer"),
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    loaded = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[len("RESULT "):])
    names = [r["harmonised"] for r in _shipped_map()]
    splits = read_manifest(harmonised)["splits"]
    assert {s: v["rows"] for s, v in loaded["default"].items()} == {s: v["num_examples"] for s, v in splits.items() if v["num_examples"]}
    assert all(v["names"] == names for config in loaded.values() for v in config.values())
    assert loaded["loso_matek19"]["test"]["sources"] == ["matek19"]
    assert loaded["loso_matek19"]["test"]["rows"] == sum(_expected_per_source("matek19").values())
    assert "matek19" not in loaded["loso_matek19"]["train"]["sources"]
    assert {s for v in loaded["acevedo20"].values() for s in v["sources"]} == {"acevedo20"}


@pytest.mark.parametrize("edit, named", [
    (lambda c: c["classes"][0].update(label="../x"), "key classes/0/label"),
    (lambda c: c.update(image=None), "key image"),
    (lambda c: c.update(extra_key="x"), "key (top)"),
])
def test_a_tampered_croissant_description_in_a_harmonised_manifest_is_named(harmonised, tmp_path, edit, named):
    from tests import hostile_release_kit as kit

    copy_dir = tmp_path / "h"
    shutil.copytree(harmonised, copy_dir)
    kit.edit_manifest(copy_dir, lambda d: edit(d["config"]))
    messages = verify_messages(copy_dir)
    assert any(m.startswith("[croissant]") and "harmonised release" in m and named in m for m in messages), messages
