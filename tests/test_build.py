import json

import pytest
from typer.testing import CliRunner

from pipeline.build import BuildError, build_release
from pipeline.cli import app
from pipeline.release.manifest import read_ledger
from pipeline.release.layout import sha256_file
from tests.rawkit import crop, save, simple_raw, write_annotations

LABELS = ["myeloblast", "monocyte", "eosinophil"]


@pytest.fixture
def raw(tmp_path):
    raw = tmp_path / "raw"
    rows = simple_raw(raw, LABELS, per_class=8)
    save(raw / "myeloblast" / "copy.png", crop(0))  # identical pixels to myeloblast/cell_000.tif, other encoding
    (raw / "monocyte" / "broken.tif").write_bytes(b"II*\0garbage")
    rows += [
        {"image": "myeloblast/copy.png", "label": "myeloblast", "patient_id": "P00", "dysplastic": "false"},
        {"image": "monocyte/broken.tif", "label": "monocyte", "patient_id": "P01", "dysplastic": "false"},
    ]
    rows[3]["dysplastic"] = "true"
    write_annotations(raw, rows)
    return raw


def test_build_writes_a_release_whose_ledger_accounts_for_every_input(raw, tmp_path, config):
    report = build_release(raw, tmp_path / "rel", config, workers=1)
    ledger = read_ledger(tmp_path / "rel" / "ledger.csv")
    assert len(ledger) == 26 == report.counts.ledger_total
    fates = {row["source_file"]: row for row in ledger}
    assert fates["myeloblast/copy.png"]["fate"] == "duplicate"
    assert fates["myeloblast/copy.png"]["duplicate_of"] == "myeloblast/cell_000.tif"
    assert fates["myeloblast/cell_003.tif"]["fate"] == "excluded"
    assert fates["monocyte/broken.tif"]["fate"] == "invalid"
    assert "corrupt or truncated" in fates["monocyte/broken.tif"]["reason"] or "not a readable image" in fates["monocyte/broken.tif"]["reason"]
    assert report.counts.ledger == {"kept": 23, "duplicate": 1, "label_conflict": 0, "excluded": 1, "invalid": 1}
    kept = [r for r in ledger if r["fate"] == "kept"]
    assert len(kept) == 23 and all(r["split"] in ("train", "validation", "test") for r in kept)

    manifest = json.loads((tmp_path / "rel" / "manifest.json").read_text())
    listed = {f["path"]: f for f in manifest["files"]}
    parquet = [p for s in manifest["splits"].values() for p in s["parquet"]]
    tars = [t["path"] for s in manifest["splits"].values() for t in s["webdataset"]["shards"]]
    pictures = [f"figures/{name}.png" for name in ("class_distribution_train", "class_distribution_validation", "class_distribution_test", "sample_grid", "dedup_pairs")]
    sample = [p for s in manifest["sample"]["splits"].values() for p in s["parquet"]]  # the card's `sample` config
    assert set(listed) == {"README.md", "ledger.csv", "croissant.json", "wds/README.md", manifest["release_notes"], *parquet, *sample, *tars, *pictures}
    for path, entry in listed.items():
        assert sha256_file(tmp_path / "rel" / path) == entry["sha256"]
    assert sum(s["num_examples"] for s in manifest["splits"].values()) == 23


def test_release_loads_with_datasets(raw, tmp_path, config):
    import datasets

    build_release(raw, tmp_path / "rel", config, workers=2)
    manifest = json.loads((tmp_path / "rel" / "manifest.json").read_text())
    ds = datasets.load_dataset(str(tmp_path / "rel"))
    nonempty = {s for s, v in manifest["splits"].items() if v["num_examples"]}
    assert set(ds) == nonempty
    for split in nonempty:
        assert ds[split].num_rows == manifest["splits"][split]["num_examples"]
        assert isinstance(ds[split].features["image"], datasets.Image)
        assert ds[split].features["label"].names == config.class_names
    row = ds["train"][0]
    assert row["image"].size == (288, 288) and row["image"].mode == "RGB"
    assert config.class_names[row["label"]] in LABELS


def test_same_input_gives_identical_release(raw, tmp_path, config):
    build_release(raw, tmp_path / "a", config, workers=1)
    build_release(raw, tmp_path / "b", config, workers=2)
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert a == b
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_strict_refuses_and_writes_nothing(raw, tmp_path, config):
    with pytest.raises(BuildError, match="monocyte/broken.tif"):
        build_release(raw, tmp_path / "rel", config, workers=1, strict=True)
    assert not (tmp_path / "rel").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["raw"]


def test_existing_release_is_not_overwritten_by_accident(raw, tmp_path, config):
    build_release(raw, tmp_path / "rel", config, workers=1)
    with pytest.raises(BuildError, match="already exists; pass --overwrite"):
        build_release(raw, tmp_path / "rel", config, workers=1)
    build_release(raw, tmp_path / "rel", config, workers=1, overwrite=True)
    assert (tmp_path / "rel" / "manifest.json").is_file()


def test_cli_exit_codes_and_messages(raw, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel"), "--workers", "1"])
    assert ok.exit_code == 0, ok.output
    assert "monocyte/broken.tif" in ok.output
    assert "= 26 raw inputs" in ok.output
    strict = runner.invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel2"), "--strict", "--workers", "1"])
    assert strict.exit_code == 1 and "monocyte/broken.tif" in strict.output
    bad_version = runner.invoke(app, ["build", str(raw), "--out", str(tmp_path / "rel3"), "--version", "one"])
    assert bad_version.exit_code == 2 and "key 'version'" in bad_version.output
    missing = runner.invoke(app, ["build", str(tmp_path / "nope"), "--out", str(tmp_path / "rel4")])
    assert missing.exit_code == 2 and "RAW directory not found" in missing.output


def test_a_date_only_rebuild_changes_only_the_small_files(raw, tmp_path):
    """The release date is in the card, notes, manifest and croissant.json, never in a shard: a re-release
    that changes only its date re-sends no shard (tar headers carry a fixed mtime)."""
    for date in ("2025-12-01", "2026-03-15"):
        result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / date), "--release-date", date, "--no-cache", "--workers", "1"])
        assert result.exit_code == 0, result.output
    old, new = (json.loads((tmp_path / d / "manifest.json").read_text()) for d in ("2025-12-01", "2026-03-15"))
    assert (old["release_date"], new["release_date"]) == ("2025-12-01", "2026-03-15")
    old_files, new_files = ({f["path"]: f["sha256"] for f in m["files"]} for m in (old, new))
    assert set(old_files) == set(new_files)
    changed = {p for p in old_files if old_files[p] != new_files[p]}
    shards = {p for p in old_files if p.endswith((".parquet", ".tar"))}
    assert shards and any(p.endswith(".tar") for p in shards)
    assert changed & shards == set()
    assert "README.md" in changed and "croissant.json" in changed


def _parquet_column_chunks(path, column):
    """The file bytes of `column`'s chunk in every row group (pages, headers and all)."""
    import pyarrow.parquet as pq

    meta, data = pq.ParquetFile(path).metadata, path.read_bytes()
    chunks = []
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        col = next(group.column(c) for c in range(meta.num_columns) if group.column(c).path_in_schema == column)
        start = col.dictionary_page_offset or col.data_page_offset
        chunks.append(data[start:start + col.total_compressed_size])
    return chunks


def test_a_relabel_rewrites_only_its_own_row(tmp_path, config):
    """Rows are ordered by (split, image_id), not by label: relabelling one image keeps every row where it was, so a
    re-release rewrites one Parquet shard (its label and metadata columns; the image column's bytes stay the same)
    and one tar (the sample's .cls and .json members), and no other shard."""
    import tarfile

    import pyarrow.parquet as pq

    from pipeline.config import validate_config
    from pipeline.release.wds import shard_name
    from tests.consumerkit import small_shards

    raw = tmp_path / "raw"
    rows = simple_raw(raw, LABELS, per_class=8)
    cfg = small_shards(config)
    v1 = build_release(raw, tmp_path / "v1", cfg, workers=1).out_dir
    ledger = read_ledger(v1 / "ledger.csv")
    moved = next(e for e in ledger if e["fate"] == "kept" and e["split"] == "train" and e["label"] == LABELS[0])
    new_rel = f"{LABELS[-1]}/relabelled_{moved['source_file'].split('/')[1]}"  # not a name the folder has
    (raw / moved["source_file"]).rename(raw / new_rel)
    for row in rows:
        if row["image"] == moved["source_file"]:
            row["image"], row["label"] = new_rel, LABELS[-1]
    write_annotations(raw, rows)
    v2 = build_release(raw, tmp_path / "v2", validate_config({**cfg.raw, "version": "1.0.1"}, "test config"), workers=1,
                       previous=v1).out_dir

    shards = sorted(p.relative_to(v1).as_posix() for p in v1.glob("data/*.parquet"))
    tars = sorted(p.relative_to(v1).as_posix() for p in v1.glob("wds/*.tar"))
    assert len([s for s in shards if "/train-" in s]) >= 2 and tars
    assert shards == sorted(p.relative_to(v2).as_posix() for p in v2.glob("data/*.parquet"))
    assert tars == sorted(p.relative_to(v2).as_posix() for p in v2.glob("wds/*.tar"))
    for s in shards:  # every row where it was, in every shard of every split
        assert pq.read_table(v1 / s, columns=["image_id"]) == pq.read_table(v2 / s, columns=["image_id"]), s
    changed = [s for s in shards + tars if sha256_file(v1 / s) != sha256_file(v2 / s)]
    holder = next(s for s in shards if moved["image_id"] in pq.read_table(v1 / s, columns=["image_id"]).column(0).to_pylist())
    split, index = holder.split("/")[1].split("-of-")[0].rsplit("-", 1)
    assert changed == [holder, f"wds/{shard_name(split, int(index))}"], changed

    old, new = pq.read_table(v1 / holder).to_pylist(), pq.read_table(v2 / holder).to_pylist()
    differ = {(r1["image_id"], k) for r1, r2 in zip(old, new) for k in r1 if r1[k] != r2[k]}
    assert differ == {(moved["image_id"], "label"), (moved["image_id"], "source_file")}
    assert _parquet_column_chunks(v1 / holder, "image.bytes") == _parquet_column_chunks(v2 / holder, "image.bytes")

    def members(release):
        with tarfile.open(release / changed[1]) as tar:
            return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}

    m1, m2 = members(v1), members(v2)
    assert sorted(m1) == sorted(m2)
    assert {n for n in m1 if m1[n] != m2[n]} == {f"{moved['image_id']}.cls", f"{moved['image_id']}.json"}
