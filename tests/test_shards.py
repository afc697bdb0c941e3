"""Shards sized for training: enough per split for DataLoader workers, balanced, every byte within the bound."""

from __future__ import annotations

import copy
import io
import os
import tarfile

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.release import shards
from pipeline.release import wds
from pipeline.build import BuildError, build_release
from pipeline.config import SPLITS, validate_config
from pipeline.release.layout import read_manifest
from pipeline.release.parquet import write_split
from pipeline.records import ReleaseRecord
from pipeline.release.shards import RowCost, ShardBudget, ShardPlanError, balanced_counts, plan_split
from tests.rawkit import crop, save, simple_raw


def budget(max_shard_bytes: int, min_shards: int = 1, **overheads) -> ShardBudget:
    return ShardBudget(
        max_shard_bytes=max_shard_bytes,
        min_shards=min_shards,
        max_row_group_bytes=overheads.get("max_row_group_bytes", 10**9),
        parquet_file_overhead=overheads.get("parquet_file_overhead", 0),
        parquet_row_group_overhead=overheads.get("parquet_row_group_overhead", 0),
        tar_end=overheads.get("tar_end", 0),
    )


def test_balanced_counts_differ_by_at_most_one_and_sum_to_the_rows():
    for rows in range(0, 60):
        for n in range(1, 20):
            counts = balanced_counts(rows, n)
            assert sum(counts) == rows and len(counts) == n and max(counts) - min(counts) <= 1


@pytest.mark.parametrize("rows", [1, 5, 15, 16, 17, 100, 1001])
def test_a_split_gets_the_minimum_of_shards_or_one_row_per_shard(rows):
    plan = plan_split([RowCost(10, 10, 10)] * rows, budget(10**9, min_shards=16))
    assert len(plan) == min(rows, 16)
    assert sum(plan) == rows and max(plan) - min(plan) <= 1


def test_an_empty_split_has_no_shard():
    assert plan_split([], budget(10**9, min_shards=16)) == []


def test_the_byte_bound_adds_shards_beyond_the_minimum_with_overheads_counted():
    costs = [RowCost(parquet=100, tar=120, image=90)] * 100
    # tar: 120 * rows + 50 <= 1000 -> at most 7 rows a shard -> 15 shards (balanced: 7 or 6 rows)
    plan = plan_split(costs, budget(1000, min_shards=2, tar_end=50))
    assert len(plan) == 15 and max(plan) == 7
    # Parquet: a fixed footer of 300 bytes leaves room for 7 rows of 100 as well; a row group each costs 100 more
    plan = plan_split([RowCost(100, 0, 90)] * 100, budget(1000, parquet_file_overhead=300, parquet_row_group_overhead=100))
    assert max(plan) == 6  # 600 + 300 + 1 group * 100


def test_uneven_rows_get_more_shards_until_every_one_fits():
    costs = [RowCost(400, 400, 400)] * 2 + [RowCost(10, 10, 10)] * 8  # big rows first: balanced shards of 5 would hold both
    plan = plan_split(costs, budget(500))
    ends = [sum(plan[: i + 1]) for i in range(len(plan))]
    starts = [0, *ends[:-1]]
    assert all(sum(c.parquet for c in costs[a:b]) <= 500 for a, b in zip(starts, ends))
    assert max(plan) - min(plan) <= 1


def test_one_row_larger_than_the_bound_is_named():
    costs = [RowCost(10, 10, 10), RowCost(2000, 10, 2000)]
    with pytest.raises(ShardPlanError, match=r"cell_1.tif: one row alone exceeds \[shards\] max_shard_bytes = 1,000"):
        plan_split(costs, budget(1000), describe_row=lambda i: f"cell_{i}.tif")


def test_png_bound_holds_for_noise_which_deflate_cannot_shrink():
    noise = Image.frombytes("RGB", (288, 288), os.urandom(288 * 288 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG", optimize=False, compress_level=6)
    bound = shards.png_size_bound(288, 288, source_size=0)
    assert len(buf.getvalue()) <= bound < len(buf.getvalue()) * 1.02


def _records(n: int) -> list[ReleaseRecord]:
    return [
        ReleaseRecord(f"{k:016x}", k % 3, "myeloblast", "train", f"myeloblast/cell_{k:04d}.tif", f"P{k}", None, f"{k:016x}", f"{k:064x}", f"{k:016x}", 288, 288, True, "TIFF")
        for k in range(n)
    ]


def test_written_shards_stay_within_the_bound_counting_every_byte(tmp_path, config):
    """Incompressible images of 97 kB against a 1 MB bound: the planned Parquet shards and tars, footer and
    headers included, are each at most the bound, and the plan wastes at most one shard."""
    records = _records(60)
    payload = {r.source_file: os.urandom(97_000 + 13 * k) for k, r in enumerate(records)}
    doc = copy.deepcopy(config.raw)
    doc["shards"] = {"max_shard_bytes": 1_000_000, "max_row_group_bytes": 250_000, "min_shards_per_split": 2}
    small = validate_config(doc, "test config")
    plan = shards.plan_release_split(records, [len(payload[r.source_file]) for r in records], small)
    with wds.ShardedTarWriter(tmp_path, "train", plan, small.max_shard_bytes, 0) as tars:
        infos = write_split(
            tmp_path / "data", "train", records, lambda r: tars.add(r, payload[r.source_file]), small.class_names,
            shard_rows=plan, max_shard_bytes=small.max_shard_bytes, max_row_group_bytes=small.max_row_group_bytes,
        )
    sizes = [i.path.stat().st_size for i in infos] + [(tmp_path / t.path).stat().st_size for t in tars.shards]
    assert max(sizes) <= 1_000_000
    assert [i.rows for i in infos] == [t.num_examples for t in tars.shards] == plan
    assert len(plan) <= -(-max(sum(sizes[: len(infos)]), sum(sizes[len(infos) :])) // 1_000_000) + 1
    for info, tar_shard in zip(infos, tars.shards):  # shard i of both formats holds the same rows
        with tarfile.open(tmp_path / tar_shard.path) as tar:
            keys = sorted({m.name.split(".", 1)[0] for m in tar.getmembers()})
        assert keys == sorted(pq.read_table(info.path, columns=["image_id"]).column("image_id").to_pylist())


def test_a_writer_refuses_rows_beyond_its_plan(tmp_path, config):
    records = _records(5)
    with pytest.raises(ValueError, match="more records than the shard plan's 4 rows"):
        write_split(tmp_path, "train", records, lambda r: b"x" * 10, config.class_names, shard_rows=[2, 2], max_shard_bytes=10**6, max_row_group_bytes=10**6)


def _config(config, **shards_keys):
    doc = copy.deepcopy(config.raw)
    doc["shards"] = {**doc["shards"], **shards_keys}
    return validate_config(doc, "test config")


def test_a_build_gives_every_split_balanced_shards_in_both_formats(tmp_path, config):
    raw = tmp_path / "raw"
    simple_raw(raw, ["myeloblast", "monocyte", "eosinophil"], per_class=14)
    built = build_release(raw, tmp_path / "rel", _config(config, min_shards_per_split=5), workers=1)
    manifest = read_manifest(built.out_dir)
    for split in SPLITS:
        entry = manifest["splits"][split]
        rows = entry["num_examples"]
        tar_counts = [s["num_examples"] for s in entry["webdataset"]["shards"]]
        parquet_counts = [pq.ParquetFile(built.out_dir / p).metadata.num_rows for p in entry["parquet"]]
        assert tar_counts == parquet_counts and sum(tar_counts) == rows
        assert len(tar_counts) == min(rows, 5) and max(tar_counts) - min(tar_counts) <= 1, (split, tar_counts)


def test_an_image_larger_than_a_shard_stops_the_build_naming_it(tmp_path, config):
    raw = tmp_path / "raw"
    rows = simple_raw(raw, ["myeloblast", "monocyte"], per_class=4, annotate=False)
    big = raw / "monocyte" / "big.tif"
    save(big, crop(99), fmt="TIFF")
    with open(big, "ab") as fh:  # a valid TIFF with 1.2 MB of trailing bytes, published as it is
        fh.write(b"\0" * 1_200_000)
    del rows
    with pytest.raises(BuildError, match=r"monocyte/big.tif: one row alone exceeds \[shards\] max_shard_bytes = 1,000,000"):
        build_release(raw, tmp_path / "rel", _config(config, max_shard_bytes=1_000_000), workers=1)
    assert not (tmp_path / "rel").exists()


def test_min_shards_per_split_is_validated_naming_the_key(config):
    from pipeline.config import ConfigError

    doc = copy.deepcopy(config.raw)
    doc["shards"]["min_shards_per_split"] = 0
    with pytest.raises(ConfigError, match=r"key 'shards.min_shards_per_split'"):
        validate_config(doc, "test config")
    assert config.min_shards_per_split == 16
