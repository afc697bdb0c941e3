"""Write a release's files into staging: both shard formats and the sample, then the documents, manifest last.

The build (pipeline/build.py) decides what goes in; this module turns its records into files. Each image is read
once: the Parquet writer asks for it, the tar writer takes the same bytes, and the sample and the card's
picture grid keep what they need of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.records import DedupResult, ImageFacts, ReleaseCounts, ReleaseRecord
from pipeline.release import card, croissant, figures, wds
from pipeline.release.parquet import ShardInfo, write_split
from pipeline.release.sample import sample_ids
from pipeline.release.layout import SAMPLE_DIR, file_entries, write_manifest
from pipeline.release.shards import ShardPlanError, plan_release_split, published_size_bound
from pipeline.runtime import integrity
from pipeline.runtime.overlap import prefetch
from pipeline.runtime.progress import Progress
from pipeline.stages.decode import EncodedStore, load_rgb, publish_as_original, publishable_bytes


class WriteError(RuntimeError):
    """The shards cannot be written as planned; the message says why."""


@dataclass(frozen=True)
class ReleaseContents:
    """What a release's files are written from: the build's decisions, measured."""

    raw: Path
    config: ReleaseConfig
    records: list[ReleaseRecord]  # with their splits, in publishing order
    facts: dict[str, ImageFacts]  # relpath -> what decode found
    counts: ReleaseCounts
    dedup: DedupResult


@dataclass
class WrittenShards:
    """What the shard writers wrote, for the card, the figures and the manifest."""

    grid: figures.SampleGrid
    parquet: dict[str, list[str]] = field(default_factory=dict)  # split -> shard relpaths
    tars: dict[str, list[wds.TarShard]] = field(default_factory=dict)
    split_bytes: dict[str, int] = field(default_factory=dict)  # split -> bytes of its Parquet shards
    sample_parquet: dict[str, list[str]] = field(default_factory=dict)
    sample_rows: dict[str, int] = field(default_factory=dict)
    digests: list[dict] = field(default_factory=list)  # path, size, sha256 of each shard, hashed while it was written

    def manifest_splits(self, counts: ReleaseCounts) -> dict:
        """The manifest's `splits`: each split's size and shards in both formats."""
        return {
            s: {"num_examples": counts.splits[s].total, "parquet": self.parquet[s], "webdataset": wds.manifest_entry(s, self.tars[s])}
            for s in SPLITS
        }

    def manifest_sample(self, fraction: float) -> dict:
        """The manifest's `sample`: the card's sample config, split by split."""
        return {"fraction": fraction, "splits": {s: {"num_examples": self.sample_rows[s], "parquet": self.sample_parquet[s]} for s in SPLITS}}


class _ImageReader:
    """The published bytes of every image, read (and re-encoded as config.publish_codec says) ahead by threads, in
    the order the writers ask for them: split by split, each in publishing order. PNG encoding holds the GIL
    (measured: two threads encode no faster than one), so at full scale it is about one core's work; the
    cache of encoded images spares it on rebuilds."""

    def __init__(self, contents: ReleaseContents, encoded: EncodedStore | None, grid: figures.SampleGrid, progress: Progress) -> None:
        raw, facts, codec = contents.raw, contents.facts, contents.config.publish_codec
        in_order = [r for s in SPLITS for r in contents.records if r.split == s]
        self._ahead = prefetch(lambda r: publishable_bytes(raw / r.source_file, facts[r.source_file], codec, encoded), in_order)
        self._grid, self._progress = grid, progress
        self.picked = sample_ids(contents.records, contents.config.sample_fraction)
        # the sample rows' bytes, from the same read as their full-split rows, until the split's sample is written
        self.sample_bytes: dict[str, bytes] = {}

    def read(self, record: ReleaseRecord) -> bytes:
        self._progress.advance("write")
        expected, data = next(self._ahead)
        if expected is not record:
            raise WriteError(f"write stage asked for {record.source_file} out of order (expected {expected.source_file})")
        self._grid.offer(record, data)
        if record.image_id in self.picked:
            self.sample_bytes[record.image_id] = data
        return data

    def close(self) -> None:
        self._ahead.close()


def shard_checker(contents: ReleaseContents, threads: int) -> integrity.ShardChecker:
    """What every written shard must hold (integrity.ShardChecker). Images published byte for byte are
    checked by the bytes' sha256 against the file that was decoded (fresh, or from the checksummed cache);
    re-encoded images, and a fixed sample of the others, are decoded again."""
    config, expected = contents.config, {}
    for r in contents.records:
        f = contents.facts[r.source_file]
        expected[r.source_file] = integrity.Expected(f.pixel_sha256, f.file_sha256 if publish_as_original(f, config.publish_codec) else None)
    return integrity.ShardChecker(expected, config.image_size, threads)


def write_shards(
    staging: Path, contents: ReleaseContents, progress: Progress, checker: integrity.ShardChecker | None = None, encoded: EncodedStore | None = None
) -> WrittenShards:
    """Every split's Parquet and tar shards and its sample. ``checker`` is handed each shard as soon as it is
    complete (integrity.ShardChecker); ``encoded`` keeps the re-encoded images between builds (cache.EncodedCache),
    so a rebuild copies them instead of encoding."""
    progress.start("write", len(contents.records))
    written = WrittenShards(figures.SampleGrid(contents.records, contents.config.class_names))
    reader = _ImageReader(contents, encoded, written.grid, progress)
    for split in SPLITS:
        _write_full_split(staging, split, contents, reader, written, checker)
        _write_sample_split(staging, split, contents, reader, written)
    reader.close()
    progress.finish("write")
    return written


def _write_full_split(
    staging: Path, split: str, contents: ReleaseContents, reader: _ImageReader, written: WrittenShards, checker: integrity.ShardChecker | None
) -> None:
    config = contents.config
    records = [r for r in contents.records if r.split == split]
    bounds = [published_size_bound(contents.raw / r.source_file, contents.facts[r.source_file], config.publish_codec) for r in records]
    plan = shard_plan(records, bounds, config)
    # One read per image feeds both formats: the tar writer takes each image as the Parquet writer asks for it.
    with wds.ShardedTarWriter(staging, split, plan, config.max_shard_bytes, wds.MEMBER_MTIME, on_shard=checker and checker.tar) as tars:
        infos = _write_parquet(staging / "data", split, records, lambda r: tars.add(r, reader.read(r)), config, plan, on_shard=checker and checker.parquet)
    written.tars[split] = tars.shards
    written.parquet[split] = [i.path.relative_to(staging).as_posix() for i in infos]
    written.digests += [{"path": rel, "size": i.size, "sha256": i.sha256} for rel, i in zip(written.parquet[split], infos)]
    written.digests += [{"path": t.path, "size": t.size, "sha256": t.sha256} for t in tars.shards]
    written.split_bytes[split] = sum(i.path.stat().st_size for i in infos)


def _write_sample_split(staging: Path, split: str, contents: ReleaseContents, reader: _ImageReader, written: WrittenShards) -> None:
    """The card's `sample` config for one split (pipeline/release/sample.py): Parquet only, as few shards as the byte
    bound allows, the very bytes of the full split's rows (taken out of the reader's sample bytes)."""
    picked = [r for r in contents.records if r.split == split and r.image_id in reader.picked]
    images = reader.sample_bytes
    plan = shard_plan(picked, [len(images[r.image_id]) for r in picked], contents.config, min_shards=1)
    infos = _write_parquet(staging / SAMPLE_DIR, split, picked, lambda r: images.pop(r.image_id), contents.config, plan)
    written.sample_rows[split] = sum(i.rows for i in infos)
    written.sample_parquet[split] = [i.path.relative_to(staging).as_posix() for i in infos]
    written.digests += [{"path": i.path.relative_to(staging).as_posix(), "size": i.size, "sha256": i.sha256} for i in infos]


def _write_parquet(
    directory: Path,
    split: str,
    records: list[ReleaseRecord],
    read_bytes: Callable[[ReleaseRecord], bytes],
    config: ReleaseConfig,
    plan: list[int],
    on_shard: Callable[[Path], None] | None = None,
) -> list[ShardInfo]:
    return write_split(
        directory,
        split,
        records,
        read_bytes,
        config.class_names,
        shard_rows=plan,
        max_shard_bytes=config.max_shard_bytes,
        max_row_group_bytes=config.max_row_group_bytes,
        image_compression=config.image_compression,
        on_shard=on_shard,
    )


def shard_plan(split_records: list[ReleaseRecord], sizes: list[int], config: ReleaseConfig, min_shards: int | None = None) -> list[int]:
    """Rows per shard of one split, the same for both formats (pipeline/release/shards.py); ``sizes``: each image's
    published bytes, exact or an upper bound."""
    try:
        return plan_release_split(split_records, sizes, config, min_shards=min_shards)
    except ShardPlanError as exc:
        raise WriteError(str(exc)) from exc


def write_documents(
    staging: Path, contents: ReleaseContents, shards: WrittenShards, body: dict, text_files: dict[str, str], card_sections: list[str]
) -> None:
    """The text files (ledger, release notes), the pictures and cards, croissant.json; the manifest (``body`` and
    every file) last, since it lists all the others."""
    for relpath, text in sorted(text_files.items()):
        (staging / relpath).parent.mkdir(parents=True, exist_ok=True)
        (staging / relpath).write_text(text, encoding="utf-8")
    entries = _write_cards_and_pictures(staging, contents, shards, card_sections)
    write_manifest(staging, body, known=entries)


def _write_cards_and_pictures(staging: Path, contents: ReleaseContents, shards: WrittenShards, card_sections: list[str]) -> list[dict]:
    """The tars' own card, the pictures, the dataset card linking both, then croissant.json, which hashes them all."""
    config, counts, dedup = contents.config, contents.counts, contents.dedup
    card.write_wds_card(staging, config, shards.tars)
    pictures = figures.write_figures(
        staging, config, counts, shards.grid, dedup.pairs, dedup.fates, lambda rel: load_rgb(contents.raw / rel, config.image_size)
    )
    extra_sections = [card.wds_and_croissant_section(config, shards.tars), figures.card_section(pictures), card.loading_safely_section(config), *card_sections]
    layout = card.Layout({s: len(shards.tars[s]) for s in SPLITS}, shards.sample_rows)
    card.write_card(staging, card.render_card(config, counts, shards.split_bytes, layout, extra_sections=extra_sections))
    entries = file_entries(staging, known=shards.digests)  # shards were hashed as they were written
    croissant.write_croissant(staging, config, counts, entries)
    return entries  # the manifest reuses these digests instead of hashing every shard again
