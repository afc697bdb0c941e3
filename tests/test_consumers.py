"""A release as its consumers meet it: every advertised way to load it, its Croissant metadata, its pictures."""

import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.release import figures
from pipeline.release.wds import MEMBER_MTIME
from pipeline.build import build_release
from pipeline.config import SPLITS
from pipeline.release.layout import CROISSANT, MANIFEST, read_manifest
from pipeline.stages.decode import load_rgb
from pipeline.release.manifest import read_ledger
from tests.codeckit import with_codec
from tests.consumerkit import PNG_ONLY, SHARD_BYTES, consumer_raw, small_shards
from tests.rawkit import crop


@pytest.fixture(scope="module")
def release(tmp_path_factory, config):
    base = tmp_path_factory.mktemp("consumers")
    consumer_raw(base / "raw", config)
    # publish_codec "original": the TIFFs stay TIFF, so the release mixes TIFF and PNG bytes under one member name
    build_release(base / "raw", base / "release", with_codec(small_shards(config), "original"), workers=2)
    return base / "release"


@pytest.fixture(scope="module")
def manifest(release):
    return read_manifest(release)


def nonempty_splits(manifest) -> list[str]:
    return [s for s in SPLITS if manifest["splits"][s]["num_examples"]]


def parquet_rows(release: Path, manifest: dict, split: str) -> dict[str, dict]:
    """image_id -> Parquet row, read with pyarrow (the reference every other way is compared with)."""
    rows = {}
    for path in manifest["splits"][split]["parquet"]:
        for row in pq.read_table(release / path).to_pylist():
            rows[row["image_id"]] = row
    return rows


def contains_tile(big: np.ndarray, tile: np.ndarray) -> bool:
    """Whether tile appears pixel for pixel somewhere in big."""
    h, w = tile.shape[:2]
    ys, xs = np.nonzero(np.all(big[: big.shape[0] - h + 1, : big.shape[1] - w + 1] == tile[0, 0], axis=-1))
    return any(np.array_equal(big[y : y + h, x : x + w], tile) for y, x in zip(ys, xs))


# ---- Parquet -----------------------------------------------------------------------------------------------


def test_parquet_loads_with_load_dataset_also_streaming(release, manifest, config):
    import datasets

    ds = datasets.load_dataset(str(release))
    streamed = datasets.load_dataset(str(release), streaming=True)
    assert set(ds) == set(streamed) == set(nonempty_splits(manifest))
    for split in ds:
        for features in (ds[split].features, streamed[split].features):
            assert isinstance(features["image"], datasets.Image)
            assert features["label"].names == config.class_names == manifest["class_names"]
        assert ds[split].num_rows == manifest["splits"][split]["num_examples"]
        assert sum(1 for _ in streamed[split]) == manifest["splits"][split]["num_examples"]


def test_root_card_has_only_parquet_configs(release):
    # datasets infers one builder for every config from the first config's files (huggingface/datasets#7101):
    # a tar config beside the Parquet one would be read with the Parquet builder.
    header = yaml.safe_load((release / "README.md").read_text(encoding="utf-8").split("---\n")[1])
    paths = [f["path"] for cfg in header["configs"] for f in cfg["data_files"]]
    assert paths and all(p.endswith(".parquet") for p in paths)


def test_a_tar_config_in_the_root_card_would_break_loading(release, tmp_path):
    """Why the tars have their own card: the upstream trap, reproduced. If this test fails, datasets fixed #7101."""
    import datasets

    trap = tmp_path / "trap"
    shutil.copytree(release, trap)
    text = (trap / "README.md").read_text(encoding="utf-8")
    _, head, body = text.split("---\n", 2)
    header = yaml.safe_load(head)
    header["configs"].append({"config_name": "webdataset", "data_files": [{"split": "train", "path": "wds/train-*.tar"}]})
    (trap / "README.md").write_text("---\n" + yaml.safe_dump(header, sort_keys=False) + "---\n" + body, encoding="utf-8")
    with pytest.raises(Exception, match="Parquet magic bytes"):
        datasets.load_dataset(str(trap), "webdataset", split="train")


# ---- WebDataset --------------------------------------------------------------------------------------------


def test_manifest_lists_webdataset_shards_with_counts_and_pattern(release, manifest):
    on_disk = sorted(p.relative_to(release).as_posix() for p in (release / "wds").glob("*.tar"))
    listed = [s["path"] for split in SPLITS for s in manifest["splits"][split]["webdataset"]["shards"]]
    assert sorted(listed) == on_disk
    assert len(manifest["splits"]["train"]["webdataset"]["shards"]) > 1
    for split in SPLITS:
        entry = manifest["splits"][split]["webdataset"]
        assert entry["num_examples"] == manifest["splits"][split]["num_examples"] == sum(s["num_examples"] for s in entry["shards"])
        if entry["shards"]:
            assert entry["pattern"] == f"wds/{split}-{{000000..{len(entry['shards']) - 1:06d}}}.tar"
    files = {f["path"] for f in manifest["files"]}
    assert set(on_disk) | {"wds/README.md"} <= files


def test_tar_shards_follow_webdataset_conventions_with_fixed_headers(release, manifest, config):
    epoch = MEMBER_MTIME
    for split in nonempty_splits(manifest):
        rows = parquet_rows(release, manifest, split)
        seen = []
        for shard in manifest["splits"][split]["webdataset"]["shards"]:
            path = release / shard["path"]
            assert path.stat().st_size <= SHARD_BYTES
            with tarfile.open(path) as tar:
                members = tar.getmembers()
                assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode, m.type) for m in members} == {(epoch, 0, 0, "", "", 0o644, tarfile.REGTYPE)}
                keys = [m.name.split(".", 1)[0] for m in members]
                # members of a sample are adjacent, sorted, three per sample; keys carry no dots
                samples = [keys[i] for i in range(0, len(keys), 3)]
                assert keys == [k for k in samples for _ in range(3)]
                assert len(samples) == shard["num_examples"]
                for key in samples:
                    names = [m.name for m in members if m.name.startswith(key + ".")]
                    row = rows[key]
                    image_name = f"{key}.png"  # one member name whatever the image's format
                    assert names == sorted([f"{key}.cls", f"{key}.json", image_name])
                    assert tar.extractfile(f"{key}.cls").read() == str(row["label"]).encode()
                    assert tar.extractfile(image_name).read() == row["image"]["bytes"]
                    meta = json.loads(tar.extractfile(f"{key}.json").read())
                    assert (meta["image_id"], meta["split"], meta["source_file"]) == (key, split, row["source_file"])
                seen += samples
        assert sorted(seen) == sorted(rows)


def test_webdataset_library_reads_every_split_from_its_pattern(release, manifest, config):
    import webdataset as wds

    formats = {}
    for split in nonempty_splits(manifest):
        rows = parquet_rows(release, manifest, split)
        pattern = str(release / manifest["splits"][split]["webdataset"]["pattern"])
        samples = list(wds.WebDataset(pattern, shardshuffle=False).decode("pil").to_tuple("__key__", "png", "cls", "json"))
        assert len(samples) == manifest["splits"][split]["num_examples"]
        for key, image, label, meta in samples:
            assert image.size == config.image_size and image.mode == "RGB"
            assert label == rows[key]["label"] == meta["label"]
            assert config.class_names[label] == meta["label_name"]
        raw = list(wds.WebDataset(pattern, shardshuffle=False))
        for sample in raw:
            assert {k for k in sample if not k.startswith("__")} == {"png", "cls", "json"}
            assert sample["png"] == rows[sample["__key__"]]["image"]["bytes"]
            formats[rows[sample["__key__"]]["source_file"]] = Image.open(io.BytesIO(sample["png"])).format
    # the release mixes TIFF and PNG bytes under the one member name, and both decode
    assert formats[PNG_ONLY] == "PNG" and "TIFF" in formats.values()


def test_webdataset_loads_through_datasets_with_declared_features(release, manifest, config):
    import datasets

    ds = datasets.load_dataset(str(release / "wds"))
    streamed = datasets.load_dataset(str(release / "wds"), streaming=True)
    assert set(ds) == set(streamed) == set(nonempty_splits(manifest))
    for split in ds:
        for features in (ds[split].features, streamed[split].features):
            assert list(features) == ["png", "cls", "json"] and isinstance(features["png"], datasets.Image)
            assert isinstance(features["cls"], datasets.ClassLabel)
            assert features["cls"].names == config.class_names == manifest["class_names"]
        assert ds[split].num_rows == manifest["splits"][split]["num_examples"]
        assert sum(1 for _ in streamed[split]) == manifest["splits"][split]["num_examples"]
        rows = parquet_rows(release, manifest, split)
        assert sorted(r["json"]["image_id"] for r in ds[split]) == sorted(rows)
        for record in ds[split]:
            assert record["png"].size == config.image_size  # no image silently dropped
            assert record["cls"] == rows[record["json"]["image_id"]]["label"]


# ---- Croissant ---------------------------------------------------------------------------------------------


def test_croissant_validates_lists_every_file_and_loads_records(release, manifest, config):
    import mlcroissant as mlc

    cli = Path(sys.executable).with_name("mlcroissant")
    done = subprocess.run([str(cli), "validate", "--jsonld", str(release / CROISSANT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "error" not in done.stderr.lower()

    doc = json.loads((release / CROISSANT).read_text(encoding="utf-8"))
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.1"
    declared = {d["contentUrl"]: d["sha256"] for d in doc["distribution"] if d["@type"] == "cr:FileObject"}
    expected = {f["path"]: f["sha256"] for f in manifest["files"] if f["path"] not in (CROISSANT, MANIFEST)}
    assert declared == expected
    for key in ("dataCollection", "dataPreprocessingProtocol", "dataAnnotationProtocol", "dataLimitations", "dataBiases", "personalSensitiveInformation", "dataReleaseMaintenancePlan"):
        assert doc[f"rai:{key}"].strip()
    assert doc["rai:dataCollection"] == config.datasheet.collection

    dataset = mlc.Dataset(jsonld=str(release / CROISSANT))
    classes = sorted((r["classes/index"], r["classes/name"]) for r in dataset.records("classes"))
    assert classes == list(enumerate(config.class_names))
    records = list(dataset.records("images"))
    assert len(records) == manifest["counts"]["ledger"]["kept"]
    for split in nonempty_splits(manifest):
        rows = parquet_rows(release, manifest, split)
        mine = {r["images/image_id"].decode(): r for r in records if r["images/split"] == split.encode()}
        assert set(mine) == set(rows)
        for image_id, r in mine.items():
            assert r["images/label"] == rows[image_id]["label"]
            assert r["images/image"].size == config.image_size


def test_mlcroissant_iterates_every_record_without_a_warning(release, manifest, caplog):
    """No log warning (mlcroissant logs one per record when a transform does not match) and no warning about the
    data; deprecation warnings raised inside third-party code (pandas via mlcroissant, rdflib) are the libraries'
    own and do not depend on the release."""
    import logging
    import warnings

    import mlcroissant as mlc

    caplog.set_level(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        records = list(mlc.Dataset(jsonld=str(release / CROISSANT)).records("images"))
    assert len(records) == manifest["counts"]["ledger"]["kept"]
    assert {s: sum(1 for r in records if r["images/split"] == s.encode()) for s in SPLITS} == {s: manifest["splits"][s]["num_examples"] for s in SPLITS}
    assert [r.getMessage()[:200] for r in caplog.records if r.levelno >= logging.WARNING] == []
    ours = [w for w in caught if not (issubclass(w.category, DeprecationWarning) and "site-packages" in w.filename)]
    assert [f"{w.category.__name__}: {w.message}" for w in ours] == []


# ---- pictures ----------------------------------------------------------------------------------------------


def card_image_links(release: Path) -> list[str]:
    return re.findall(r"!\[[^\]]+\]\(([^)]+\.png)\)", (release / "README.md").read_text(encoding="utf-8"))


def test_card_shows_every_picture_and_they_are_small_lossless_pngs(release, manifest):
    links = card_image_links(release)
    assert sorted(links) == sorted(p.relative_to(release).as_posix() for p in (release / "figures").glob("*.png"))
    assert {f"figures/class_distribution_{s}.png" for s in SPLITS} | {"figures/sample_grid.png", "figures/dedup_pairs.png"} == set(links)
    listed = {f["path"] for f in manifest["files"]}
    for link in links:
        assert link in listed
        data = (release / link).read_bytes()
        assert len(data) < 512_000  # small: each picture under half a megabyte
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "PNG" and img.mode == "RGB"
            assert not set(img.info) - {"dpi"}  # no text or time chunks


def test_sample_grid_shows_published_crops_of_every_class(release, manifest, config):
    grid = np.asarray(Image.open(release / "figures" / "sample_grid.png").convert("RGB"))
    rows = {k: v for s in nonempty_splits(manifest) for k, v in parquet_rows(release, manifest, s).items()}
    published = [SimpleNamespace(label_name=config.class_names[r["label"]], image_id=k) for k, r in rows.items()]
    chosen = figures.choose_samples(published, figures.SAMPLES_PER_CLASS)
    assert set(chosen) == set(config.class_names)
    for ids in chosen.values():
        for image_id in ids:
            tile = figures.thumbnail(Image.open(io.BytesIO(rows[image_id]["image"]["bytes"])), figures.THUMB_PX)
            assert contains_tile(grid, np.asarray(tile)), image_id


def test_dedup_gallery_shows_duplicate_and_lookalike_pairs_of_this_build(release, manifest, config):
    gallery = np.asarray(Image.open(release / "figures" / "dedup_pairs.png").convert("RGB"))
    raw = release.parent / "raw"

    def shown(rel: str) -> bool:
        pixels = load_rgb(raw / rel, config.image_size)
        return contains_tile(gallery, np.asarray(figures.thumbnail(Image.fromarray(pixels), figures.PAIR_THUMB_PX)))

    duplicates = [(r["duplicate_of"], r["source_file"]) for r in read_ledger(release / "ledger.csv") if r["fate"] == "duplicate"]
    assert any(shown(kept) and shown(dropped) for kept, dropped in duplicates)
    by_group: dict[str, list[str]] = {}
    for split in nonempty_splits(manifest):
        for row in parquet_rows(release, manifest, split).values():
            by_group.setdefault(row["group_id"], []).append(row["source_file"])
    lookalikes = [sorted(files) for files in by_group.values() if len(files) > 1]
    assert lookalikes and any(all(shown(f) for f in files[:2]) for files in lookalikes)


def test_pair_gallery_orders_hardest_pairs_first_and_shows_both_images(tmp_path):
    from pipeline.records import Pair

    pairs = [Pair("a.tif", "b.tif", "near_duplicate", 1), Pair("c.tif", "d.tif", "near_duplicate", 4), Pair("e.tif", "f.tif", "lookalike", 9), Pair("g.tif", "h.tif", "lookalike", 6)]
    assert [p.a for p in figures.select_pairs(pairs, per_kind=1)] == ["c.tif", "g.tif"]
    pixels = {name: crop(i + 100) for i, name in enumerate("abcdefgh")}
    fates = {f"{n}.tif": ("kept", "", None) for n in "abcdefgh"}
    img = np.asarray(figures.pair_gallery(pairs, fates, lambda rel: pixels[rel[0]], per_kind=1))
    for name in "cdgh":
        assert contains_tile(img, np.asarray(figures.thumbnail(Image.fromarray(pixels[name]), figures.PAIR_THUMB_PX)))
    for name in "abef":
        assert not contains_tile(img, np.asarray(figures.thumbnail(Image.fromarray(pixels[name]), figures.PAIR_THUMB_PX)))


def test_readme_loading_lines_run_as_written(release, manifest):
    """The README's "Loading a release" block, executed with DIR set to a fresh release."""
    text = (Path(__file__).resolve().parent.parent / "README.md").read_text(encoding="utf-8")
    section = text.split("## Loading a release", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    scope = {"DIR": str(release)}
    exec(compile(code, "README.md: Loading a release", "exec"), scope)
    assert sum(1 for _ in scope["ds"]) == manifest["splits"]["train"]["num_examples"]
    assert sum(1 for _ in scope["records"]) == manifest["counts"]["ledger"]["kept"]
