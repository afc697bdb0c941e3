"""Build: run every stage in order and write the release directory whole or not at all."""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import pipeline
from pipeline.release import card
from pipeline.release import croissant
from pipeline.release import figures
from pipeline.runtime import integrity
from pipeline.lifecycle import ancestry
from pipeline.release import manifest
from pipeline.lifecycle import notes
from pipeline.release import wds
from pipeline.runtime.cache import EncodedCache, FactsCache, file_sha256_or_none, rebuild
from pipeline.config import SPLITS, ReleaseConfig
from pipeline.stages.decode import ENCODING, EncodedStore, decode_file, load_rgb, publish_as_original, publishable_bytes
from pipeline.stages.dedup import PairMemo, deduplicate
from pipeline.runtime.executor import Executor, batch_size, batched, make_executor
from pipeline.stages.exclude import exclusion_reason
from pipeline.stages.ingest import AnnotationsError, IngestResult, ingest
from pipeline.runtime.overlap import ReadAhead, prefetch
from pipeline.release.parquet import ShardInfo, write_split
from pipeline.release.layout import DATA_DIR, SAMPLE_DIR
from pipeline.release.sample import sample_ids
from pipeline.release.shards import ShardPlanError, plan_release_split, published_size_bound
from pipeline.records import FATES, DecodeFailure, DedupResult, ImageFacts, LedgerEntry, RawItem, ReleaseRecord
from pipeline.stages.split import SplitItem, assign_splits
from pipeline.stages.validate import record_errors, record_validator


class BuildError(RuntimeError):
    """The build refused to write a release; the message says why."""


class Progress:
    """Receives stage progress; the CLI draws bars, tests and libraries use this silent default."""

    def start(self, stage: str, total: int | None) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def finish(self, stage: str) -> None: ...


@dataclass
class BuildReport:
    out_dir: Path
    counts: dict
    ledger: list[LedgerEntry]
    ignored: list[str]
    timings: dict[str, float] = field(default_factory=dict)
    balance: integrity.LedgerBalance | None = None  # the nothing-lost equation, checked before anything was written
    warnings: list[str] = field(default_factory=list)  # not errors: empty class folders, clean-up of killed builds
    work: dict[str, int] = field(default_factory=dict)  # per-image work: images, from_cache, decoded
    cpu_timings: dict[str, float] = field(default_factory=dict)  # CPU seconds per stage, worker processes included
    # images of the previous release that changed split (their unit now straddles earlier splits)
    split_moves: list[ancestry.SplitMove] = field(default_factory=list)
    notes_path: str = ""  # the release notes, relative to the release directory

    @property
    def problems(self) -> list[LedgerEntry]:
        return [e for e in self.ledger if e.fate == "invalid"]


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


def _decode_task(raw: str, size: tuple[int, int], item: RawItem) -> ImageFacts | DecodeFailure:
    return decode_file(Path(raw) / item.relpath, item.relpath, item.label, size)


def _staging_dir(out: Path) -> Path:
    return integrity.staging_path(out)


def _publish_dir(staging: Path, out: Path, overwrite: bool) -> None:
    """Move a finished release into place; an old release is replaced only with overwrite."""
    if out.exists():
        if not overwrite:
            raise BuildError(f"{out} already exists; pass --overwrite to replace it")
        old = integrity.old_path(out)
        os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)
    integrity.fsync_dir(out.parent)



def _record(item: RawItem, facts: ImageFacts, config: ReleaseConfig, group_id: str) -> ReleaseRecord:
    return ReleaseRecord(
        image_id=facts.pixel_sha256[:16],
        label=config.label_index(item.label),
        label_name=item.label,
        split="train",  # provisional: the split stage sets the real split before anything is written
        source_file=item.relpath,
        patient_id=item.patient_id,
        annotator=item.annotator,
        group_id=group_id,
        pixel_sha256=facts.pixel_sha256,
        phash=f"{facts.phash:016x}",
        width=facts.width,
        height=facts.height,
        lossless=publish_as_original(facts, config.publish_codec),
        file_format=facts.file_format,
        extra=item.extra,
    )


def compute_counts(config: ReleaseConfig, ledger: list[LedgerEntry], records: list[ReleaseRecord]) -> dict:
    fates = Counter(e.fate for e in ledger)
    per_class = {c: {"raw": 0, "kept": 0} for c in config.class_names}
    for e in ledger:
        if e.label in per_class and e.input_kind == "file":
            per_class[e.label]["raw"] += 1
    for r in records:
        per_class[r.label_name]["kept"] += 1
    splits = {s: {"total": 0, "per_class": {}} for s in SPLITS}
    for r in records:
        splits[r.split]["total"] += 1
        splits[r.split]["per_class"][r.label_name] = splits[r.split]["per_class"].get(r.label_name, 0) + 1
    return {
        "raw_images": sum(1 for e in ledger if e.input_kind == "file"),
        "annotation_rows_without_file": sum(1 for e in ledger if e.input_kind == "annotation_row"),
        "ledger_total": len(ledger),
        "ledger": {f: fates.get(f, 0) for f in FATES},
        "per_class": per_class,
        "splits": splits,
    }


def check_ledger_invariant(ledger: list[LedgerEntry], raw_files: list[str], counts: dict) -> integrity.LedgerBalance:
    """Nothing lost: every raw file has exactly one ledger row, and the fates add up (integrity.check_nothing_lost)."""
    if sum(counts["ledger"].values()) != counts["ledger_total"]:
        raise BuildError(f"ledger invariant broken: fates add up to {sum(counts['ledger'].values())}, ledger has {counts['ledger_total']} rows")
    balance = integrity.check_nothing_lost(ledger, raw_files)
    if balance.raw_inputs != counts["raw_images"]:
        raise BuildError(f"ledger invariant broken: {balance.raw_inputs} raw inputs found, counts say {counts['raw_images']}")
    return balance


# ---- stages: each takes plain records and returns plain records ------------------------------------------


def run_ingest(raw: Path, config: ReleaseConfig) -> tuple[IngestResult, list[LedgerEntry]]:
    try:
        ingested = ingest(raw, config)
    except AnnotationsError as exc:  # the table as a whole is unusable: stop before reading any image
        raise BuildError(f"{exc}\nnothing was built") from None
    ledger = [LedgerEntry(i.relpath, i.label, "invalid", i.reason, input_kind=i.input_kind) for i in ingested.invalid]
    return ingested, ledger


def run_decode(
    raw: Path,
    items: list[RawItem],
    config: ReleaseConfig,
    executor: Executor,
    progress: Progress,
    cache: FactsCache | None = None,
) -> tuple[dict[str, ImageFacts], list[LedgerEntry], dict[str, int]]:
    """One read and one decode per image, on the executor's workers, skipping images the cache already
    knows; failures become invalid ledger rows. Also returns how much work was done."""
    progress.start("decode", len(items))
    raw = Path(os.path.abspath(raw))  # workers (maybe on other machines) open files by absolute path
    executor.require_path(str(raw))
    paths = [str(raw / i.relpath) for i in items]
    results: list[ImageFacts | DecodeFailure | None] = [None] * len(items)
    stat_keys: dict = {}
    looked_at_ns = time.time_ns()
    if cache is not None:
        lookup = cache.lookup(paths, [i.relpath for i in items], [i.label for i in items])
        stat_keys = lookup.stat_keys
        for index, cached in lookup.cached.items():
            results[index] = cached
        if cache.verify:
            _fill_from_content(cache, executor, paths, items, results)
        progress.advance("decode", sum(r is not None for r in results))
    from_cache = sum(r is not None for r in results)
    todo = [k for k, r in enumerate(results) if r is None]
    task = partial(_decode_task, str(raw), config.image_size)
    batches = list(batched(todo, batch_size(len(todo), executor.parallelism)))
    finished = 0
    # Workers on other machines read through their own page cache: read-ahead only helps a local pool.
    ahead = [paths[k] for k in todo] if executor.name in ("serial", "local") else []
    with ReadAhead(ahead) as read_ahead:
        for indices, batch_results in zip(batches, executor.map_batches(task, ([items[k] for k in b] for b in batches))):
            for index, result in zip(indices, batch_results):
                results[index] = result
                if cache is not None:
                    cache.record(paths[index], stat_keys.get(index), result, looked_at_ns)
            finished += len(indices)
            read_ahead.done(finished)
            progress.advance("decode", len(indices))
    if cache is not None:
        cache.commit()
    progress.finish("decode")
    facts: dict[str, ImageFacts] = {}
    failed: list[LedgerEntry] = []
    for item, result in zip(items, results):
        if isinstance(result, DecodeFailure):
            failed.append(LedgerEntry(item.relpath, item.label, "invalid", result.reason, sha256=result.file_sha256))
        else:
            facts[item.relpath] = result
    return facts, failed, {"images": len(items), "from_cache": from_cache, "decoded": len(todo)}


def _fill_from_content(cache: FactsCache, executor: Executor, paths: list[str], items: list[RawItem], results: list) -> None:
    """--verify-cache: hash every file not yet resolved and take cached facts by sha256 alone."""
    todo = [k for k, r in enumerate(results) if r is None]
    shas = dict(zip(todo, executor.map(file_sha256_or_none, [paths[k] for k in todo])))
    known = cache.facts_for(sha for sha in shas.values() if sha)
    for index, sha in shas.items():
        if sha in known:
            results[index] = rebuild(known[sha], sha, items[index].relpath, items[index].label)


def run_dedup(
    raw: Path,
    items: list[RawItem],
    facts: dict[str, ImageFacts],
    config: ReleaseConfig,
    prefer: Callable | None = None,
    executor: Executor | None = None,
    pair_memo: PairMemo | None = None,
) -> DedupResult:
    """Duplicates and look-alike groups; the pixel work of the same-cell tests runs on the executor, and
    tests already run for the same two files come from ``pair_memo`` (the per-image cache)."""
    return deduplicate(
        [facts[i.relpath] for i in items],
        partial(_load_pixels, os.path.abspath(raw), config.image_size),
        phash_threshold=config.phash_threshold,
        lookalike_threshold=config.lookalike_threshold,
        policy=config.conflict_policy,
        prefer=prefer,
        map_fn=executor.map if executor is not None else None,
        pair_memo=pair_memo,
    )


def _load_pixels(raw: str, size: tuple[int, int], relpath: str):
    """Pixels of an accepted image, by absolute path (picklable: runs in worker processes too)."""
    return load_rgb(Path(raw) / relpath, size)


def run_exclude_and_validate(
    items: list[RawItem], facts: dict[str, ImageFacts], dedup: DedupResult, config: ReleaseConfig
) -> tuple[list[ReleaseRecord], list[LedgerEntry]]:
    records: list[ReleaseRecord] = []
    ledger: list[LedgerEntry] = []
    validator = record_validator()
    for item in items:
        f = facts[item.relpath]
        fate, reason, dup_of = dedup.fates[item.relpath]
        if fate != "kept":
            ledger.append(LedgerEntry(item.relpath, item.label, fate, reason, duplicate_of=dup_of, sha256=f.file_sha256))
            continue
        why = exclusion_reason(item, config.exclude_labels)
        if why:
            ledger.append(LedgerEntry(item.relpath, item.label, "excluded", why, sha256=f.file_sha256))
            continue
        record = _record(item, f, config, dedup.group_of[item.relpath])
        errors = record_errors(record.metadata(), validator)
        if errors:
            ledger.append(LedgerEntry(item.relpath, item.label, "invalid", "record schema: " + "; ".join(errors), sha256=f.file_sha256))
            continue
        records.append(record)
    return records, ledger


def run_split(records: list[ReleaseRecord], config: ReleaseConfig, previous: dict[str, str] | None = None) -> list[ReleaseRecord]:
    """Records with their split, in publishing order: split, then label, then image_id."""
    assignment = assign_splits(
        [SplitItem(r.image_id, r.label_name, r.group_id, r.patient_id) for r in records],
        config.split_fractions,
        config.split_seed,
        previous=previous,
    )
    return sorted(
        (replace(r, split=assignment[r.image_id]) for r in records),
        key=lambda r: (SPLITS.index(r.split), r.label, r.image_id),
    )


def shard_checker(records: list[ReleaseRecord], facts: dict[str, ImageFacts], config: ReleaseConfig, threads: int) -> integrity.ShardChecker:
    """What every written shard must hold (integrity.ShardChecker). Images published byte for byte are
    checked by the bytes' sha256 against the file that was decoded (fresh, or from the checksummed cache);
    re-encoded images, and a fixed sample of the others, are decoded again."""
    expected = {}
    for r in records:
        f = facts[r.source_file]
        expected[r.source_file] = integrity.Expected(f.pixel_sha256, f.file_sha256 if publish_as_original(f, config.publish_codec) else None)
    return integrity.ShardChecker(expected, config.image_size, threads)


def run_split_report(records: list[ReleaseRecord], prev: ancestry.PreviousRelease | None) -> list[ancestry.SplitMove]:
    """Images of the previous release that changed split because their unit joins earlier splits."""
    if prev is None:
        return []
    items = [SplitItem(r.image_id, r.label_name, r.group_id, r.patient_id) for r in records]
    return ancestry.split_moves(items, {r.image_id: r.split for r in records}, prev.splits)


def refuse_if_strict(ledger: list[LedgerEntry]) -> None:
    bad = sorted((e for e in ledger if e.fate == "invalid"), key=lambda e: e.relpath)
    if bad:
        lines = "\n".join(f"  {e.relpath}: {e.reason}" for e in bad[:50])
        more = f"\n  ... and {len(bad) - 50} more" if len(bad) > 50 else ""
        raise BuildError(f"--strict: {len(bad)} invalid input(s); no release written:\n{lines}{more}")


# imagecheck's refusal of a wrong size; read back to say what all the images have in common
_WRONG_SIZE = re.compile(r"wrong size (\d+)x(\d+), expected \d+x\d+")
# "annotations.csv line 4: ..." and "annotations.csv lines 2, 4 ...": the same problem on other lines is one reason
_LINE_PREFIX = re.compile(r"^annotations\.csv lines? \d+(?:, \d+)*:? ")
_MOST_REASONS = 3


def _reason_kind(entry: LedgerEntry) -> str:
    """What entries share when they failed for the same reason (a duplicate or conflict names its copies)."""
    if entry.fate in ("duplicate", "label_conflict"):
        return entry.fate.replace("_", " ")
    return _LINE_PREFIX.sub("", entry.reason)


def _commonest_reasons(entries: list[LedgerEntry]) -> str:
    by_kind: dict[str, list[str]] = {}
    for e in sorted(entries, key=lambda e: e.relpath):
        by_kind.setdefault(_reason_kind(e), []).append(e.relpath)
    ranked = sorted(by_kind.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    parts = [f"{len(files)} x {kind} (e.g. {files[0]})" for kind, files in ranked[:_MOST_REASONS]]
    rest = ranked[_MOST_REASONS:]
    if rest:
        parts.append(f"{sum(len(files) for _, files in rest)} more for {len(rest)} other reason(s)")
    return "; ".join(parts)


def _one_wrong_size(entries: list[LedgerEntry], expected: tuple[int, int]) -> str | None:
    """'all 80 images are 360x363; ...' when every input was refused for the same wrong size."""
    sizes = {m.groups() if (m := _WRONG_SIZE.match(e.reason)) else None for e in entries}
    if len(sizes) != 1 or None in sizes:
        return None
    width, height = (int(x) for x in sizes.pop())
    said = f"all {len(entries)} images are {width}x{height}; the config expects {expected[0]}x{expected[1]}"
    if (height, width) == tuple(expected):
        said += f": width and height look swapped in the config's image size (set [image] width = {width}, height = {height})"
    return said


def nothing_publishable(ledger: list[LedgerEntry], config: ReleaseConfig) -> str:
    """Why no raw input made it into the release, led by the commonest reason."""
    files = [e for e in ledger if e.input_kind == "file"]
    if not files:
        rows = len(ledger)
        return (
            f"RAW holds no input image (no file in a folder named after one of the config's {len(config.class_names)} classes)"
            + (f"; annotations.csv names {rows} file(s) that are not there" if rows else "")
        )
    fates = Counter(e.fate for e in files)
    if fates.keys() == {"invalid"}:
        return _one_wrong_size(files, config.image_size) or f"all {len(files)} inputs are invalid: {_commonest_reasons(files)}"
    if fates.keys() == {"excluded"}:
        return f"every image was excluded: {_commonest_reasons(files)}"
    if fates.keys() == {"label_conflict"}:
        return f"every image was dropped as a label conflict: {_commonest_reasons(files)}"
    spread = ", ".join(f"{fates[f]} {f}" for f in FATES if fates[f])
    return f"none of the {len(files)} inputs can be published ({spread}): {_commonest_reasons(files)}"


def refuse_if_nothing_publishable(records: list[ReleaseRecord], ledger: list[LedgerEntry], config: ReleaseConfig, out: Path) -> None:
    """A release without images cannot be loaded by anyone: refuse it before anything is written."""
    if not records:
        raise BuildError(f"nothing to publish: {nothing_publishable(ledger, config)}; no release written to {out}")


def write_release(
    staging: Path,
    raw: Path,
    records: list[ReleaseRecord],
    facts: dict[str, ImageFacts],
    ledger: list[LedgerEntry],
    counts: dict,
    config: ReleaseConfig,
    manifest_body: dict,
    progress: Progress,
    dedup: DedupResult | None = None,
    extra_files: dict[str, str] | None = None,
    card_sections: list[str] | None = None,
    checker: integrity.ShardChecker | None = None,
    encoded: EncodedStore | None = None,
) -> None:
    """Every file of the release, into staging; the manifest last, since it lists all the others.
    ``checker`` is handed each shard as soon as it is complete (integrity.ShardChecker); ``encoded`` keeps the
    re-encoded images between builds (cache.EncodedCache), so a rebuild copies them instead of encoding."""
    progress.start("write", len(records))
    split_bytes: dict[str, int] = {}
    shards: dict[str, list[str]] = {}
    tar_shards: dict[str, list[wds.TarShard]] = {}
    written: list[dict] = []  # path, size, sha256 of each shard, hashed while it was written
    grid = figures.SampleGrid(records, config.class_names)
    picked = sample_ids(records, config.sample_fraction)
    # the sample rows' bytes, from the same read as their full-split rows, until the split's sample is written
    sample_bytes: dict[str, bytes] = {}
    sample_rows: dict[str, int] = {}
    sample_shards: dict[str, list[str]] = {}

    # Images are read (and re-encoded as config.publish_codec says) ahead by threads, in the order the writers
    # ask for them: split by split, each in publishing order. PNG encoding holds the GIL (measured: two threads
    # encode no faster than one), so at full scale it is about one core's work; the cache spares it on rebuilds.
    codec = config.publish_codec
    ahead = prefetch(
        lambda r: publishable_bytes(raw / r.source_file, facts[r.source_file], codec, encoded), [r for s in SPLITS for r in records if r.split == s]
    )

    def read_bytes(record: ReleaseRecord) -> bytes:
        progress.advance("write")
        expected, data = next(ahead)
        if expected is not record:
            raise BuildError(f"write stage asked for {record.source_file} out of order (expected {expected.source_file})")
        grid.offer(record, data)
        if record.image_id in picked:
            sample_bytes[record.image_id] = data
        return data

    for split in SPLITS:
        split_records = [r for r in records if r.split == split]
        plan = shard_plan(split_records, [published_size_bound(raw / r.source_file, facts[r.source_file], codec) for r in split_records], config)
        # One read per image feeds both formats: the tar writer takes each image as the Parquet writer asks for it.
        with wds.ShardedTarWriter(staging, split, plan, config.max_shard_bytes, wds.MEMBER_MTIME, on_shard=checker and checker.tar) as tars:
            infos = write_split(
                staging / DATA_DIR,
                split,
                split_records,
                lambda r: tars.add(r, read_bytes(r)),
                config.class_names,
                shard_rows=plan,
                max_shard_bytes=config.max_shard_bytes,
                max_row_group_bytes=config.max_row_group_bytes,
                image_compression=config.image_compression,
                on_shard=checker and checker.parquet,
            )
        tar_shards[split] = tars.shards
        shards[split] = [i.path.relative_to(staging).as_posix() for i in infos]
        written += [{"path": rel, "size": i.size, "sha256": i.sha256} for rel, i in zip(shards[split], infos)]
        written += [{"path": t.path, "size": t.size, "sha256": t.sha256} for t in tars.shards]
        split_bytes[split] = sum(i.path.stat().st_size for i in infos)
        sample_infos = write_sample_split(staging, split, [r for r in split_records if r.image_id in picked], sample_bytes, config)
        sample_rows[split] = sum(i.rows for i in sample_infos)
        sample_shards[split] = [i.path.relative_to(staging).as_posix() for i in sample_infos]
        written += [{"path": i.path.relative_to(staging).as_posix(), "size": i.size, "sha256": i.sha256} for i in sample_infos]
    ahead.close()
    progress.finish("write")
    (staging / manifest.LEDGER).write_text(manifest.ledger_text(ledger), encoding="utf-8")
    for relpath, text in sorted((extra_files or {}).items()):
        (staging / relpath).parent.mkdir(parents=True, exist_ok=True)
        (staging / relpath).write_text(text, encoding="utf-8")
    entries = write_cards_and_pictures(
        staging, raw, config, counts, split_bytes, tar_shards, sample_rows, grid, dedup or DedupResult(), card_sections, written
    )
    body = dict(manifest_body)
    body["splits"] = {
        s: {"num_examples": counts["splits"][s]["total"], "parquet": shards[s], "webdataset": wds.manifest_entry(s, tar_shards[s])}
        for s in SPLITS
    }
    body["sample"] = {
        "fraction": config.sample_fraction,
        "splits": {s: {"num_examples": sample_rows[s], "parquet": sample_shards[s]} for s in SPLITS},
    }
    manifest.write_manifest(staging, body, known=entries)


def shard_plan(split_records: list[ReleaseRecord], sizes: list[int], config: ReleaseConfig, min_shards: int | None = None) -> list[int]:
    """Rows per shard of one split, the same for both formats (pipeline/release/shards.py); ``sizes``: each image's
    published bytes, exact or an upper bound."""
    try:
        return plan_release_split(split_records, sizes, config, min_shards=min_shards)
    except ShardPlanError as exc:
        raise BuildError(str(exc)) from exc


def write_sample_split(staging: Path, split: str, picked: list[ReleaseRecord], images: dict[str, bytes], config: ReleaseConfig) -> list[ShardInfo]:
    """The card's `sample` config for one split (pipeline/release/sample.py): Parquet only, as few shards as the byte
    bound allows, the very bytes of the full split's rows (taken out of ``images``)."""
    return write_split(
        staging / SAMPLE_DIR,
        split,
        picked,
        lambda r: images.pop(r.image_id),
        config.class_names,
        shard_rows=shard_plan(picked, [len(images[r.image_id]) for r in picked], config, min_shards=1),
        max_shard_bytes=config.max_shard_bytes,
        max_row_group_bytes=config.max_row_group_bytes,
        image_compression=config.image_compression,
    )


def write_cards_and_pictures(
    staging: Path,
    raw: Path,
    config: ReleaseConfig,
    counts: dict,
    split_bytes: dict[str, int],
    tar_shards: dict[str, list[wds.TarShard]],
    sample_rows: dict[str, int],
    grid: figures.SampleGrid,
    dedup: DedupResult,
    card_sections: list[str] | None = None,
    written: list[dict] = (),
) -> list[dict]:
    """The tars' own card, the pictures, the dataset card linking both, then croissant.json, which hashes them all."""
    card.write_wds_card(staging, config, tar_shards)
    pictures = figures.write_figures(
        staging, config, counts, grid, dedup.pairs, dedup.fates, lambda rel: load_rgb(raw / rel, config.image_size)
    )
    extra_sections = [card.wds_and_croissant_section(config, tar_shards), figures.card_section(pictures), card.loading_safely_section(config), *(card_sections or [])]
    layout = card.Layout({s: len(tar_shards[s]) for s in SPLITS}, sample_rows)
    card.write_card(staging, card.render_card(config, counts, split_bytes, layout, extra_sections=extra_sections))
    entries = manifest.file_entries(staging, known=written)  # shards were hashed as they were written
    croissant.write_croissant(staging, config, counts, entries)
    return entries  # the manifest reuses these digests instead of hashing every shard again


def build_release(
    raw: Path,
    out: Path,
    config: ReleaseConfig,
    *,
    workers: int | None = None,
    strict: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    executor: Executor | None = None,
    cache_dir: Path | None = None,
    verify_cache: bool = False,
    previous: Path | None = None,
    notes_dir: Path | None = None,
) -> BuildReport:
    """Build a release. Per-image work runs on ``executor`` (default: a local pool of ``workers`` processes);
    with ``cache_dir`` per-image results are reused from and saved to that cache (pipeline/runtime/cache.py).
    previous: the earlier release whose image ids and splits this one keeps (raises AncestryError when it
    is not an earlier version of this dataset). notes_dir: where the editable release notes live; their
    maintainer section is kept and the regenerated file is written back there (raises NotesError when the
    existing file's markers are broken). Both are checked before any work starts."""
    raw, out = Path(raw), Path(out)
    progress = progress or Progress()
    workers = workers or default_workers()
    warnings = integrity.clean_stale_staging(out)
    if out.exists() and not overwrite:
        raise BuildError(f"{out} already exists; pass --overwrite to replace it")
    prev = ancestry.load_previous(previous, config) if previous is not None else None
    notes_rel = notes.notes_relpath(config.version)
    words = notes.maintainer_words(Path(notes_dir) / Path(notes_rel).name if notes_dir is not None else Path(out) / notes_rel)
    timings: dict[str, float] = {}
    cpu_timings: dict[str, float] = {}
    clock, cpu_clock = time.perf_counter(), _cpu_seconds()

    def lap(stage: str) -> None:
        nonlocal clock, cpu_clock
        now, cpu_now = time.perf_counter(), _cpu_seconds()
        timings[stage], cpu_timings[stage] = now - clock, cpu_now - cpu_clock
        clock, cpu_clock = now, cpu_now

    ingested, ledger = run_ingest(raw, config)
    warnings += [f"folder {f} has no input files" for f in ingested.empty_folders]
    lap("ingest")
    owned = executor is None
    executor = executor or make_executor("local", workers)
    # shards are checked on this machine (only it sees the staging directory), by as many threads as workers
    check_threads = executor.parallelism if executor.name in ("serial", "local") else workers
    cache = FactsCache(Path(cache_dir), config.image_size, verify=verify_cache) if cache_dir is not None else None
    try:
        facts, failed, work = _decode_stage(raw, ingested.items, config, progress, executor, cache)
        ledger += failed
        lap("decode")
        decoded = [i for i in ingested.items if i.relpath in facts]
        prefer = ancestry.dedup_preference(prev) if prev else None
        dedup = run_dedup(raw, decoded, facts, config, prefer=prefer, executor=executor, pair_memo=cache)
    finally:
        if cache is not None:
            warnings += cache.warnings()
            cache.close()
        if owned:
            executor.close()
        else:
            executor.idle()  # a local pool's workers exit now: their memory is free for the write stage
    lap("dedup")
    facts = {relpath: replace(f, signature=None) for relpath, f in facts.items()}  # dedup's alone: ~1.3 kB an image
    records, dropped = run_exclude_and_validate(decoded, facts, dedup, config)
    ledger += dropped
    lap("exclude+validate")
    if strict:
        refuse_if_strict(ledger)
    refuse_if_nothing_publishable(records, ledger, config, out)
    records = run_split(records, config, previous=prev.splits if prev else None)
    moves = run_split_report(records, prev)
    ledger += [
        # the reason names the kept copy's duplicate group and look-alike group, with the deciding test's scores
        LedgerEntry(r.source_file, r.label_name, "kept", dedup.fates[r.source_file][1], split=r.split, image_id=r.image_id, sha256=facts[r.source_file].file_sha256)
        for r in records
    ]
    lap("split")
    counts = compute_counts(config, ledger, records)
    balance = check_ledger_invariant(ledger, ingested.raw_files, counts)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = _staging_dir(out)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        body = _manifest_body(config, counts, ingested, facts)
        body.update(ancestry.manifest_fields(config, prev, {r.image_id for r in records}, notes_rel))
        notes_text = notes.notes_for_build(body, manifest.ledger_text(ledger), prev.path if prev else None, words)
        card_link = notes.card_section(config.version, prev.version if prev else None)
        checker = shard_checker(records, facts, config, check_threads)
        encoded = EncodedCache(Path(cache_dir), config.image_size, ENCODING) if cache_dir is not None else None
        try:
            write_release(
                staging, raw, records, facts, ledger, counts, config, body, progress, dedup,
                extra_files={notes_rel: notes_text}, card_sections=[card_link], checker=checker, encoded=encoded,
            )
            lap("write")
            checker.result()  # most shards were checked while later ones were written
        finally:
            checker.close()
            if encoded is not None:
                warnings += encoded.warnings()
                encoded.close()
        lap("verify")
        integrity.fsync_tree(staging)
        _publish_dir(staging, out, overwrite)
        lap("publish")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if notes_dir is not None:
        notes.write_editable_copy(Path(notes_dir), notes_rel, notes_text)
    return BuildReport(
        out_dir=out, counts=counts, ledger=sorted(ledger, key=lambda e: e.relpath), ignored=ingested.ignored, timings=timings,
        balance=balance, warnings=warnings, split_moves=moves, notes_path=notes_rel, work=work, cpu_timings=cpu_timings,
    )


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes (a pool counts once it is shut down)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _decode_stage(
    raw: Path, items: list[RawItem], config: ReleaseConfig, progress: Progress, executor: Executor, cache: FactsCache | None
) -> tuple[dict[str, ImageFacts], list[LedgerEntry], dict[str, int]]:
    try:
        return run_decode(raw, items, config, executor, progress, cache)
    finally:
        executor.idle()  # a local pool's workers exit, so their CPU time is counted in this stage


def _manifest_body(config: ReleaseConfig, counts: dict, ingested: IngestResult, facts: dict[str, ImageFacts]) -> dict:
    fingerprint_lines = [f"{i.relpath}\t{i.size}\t{facts[i.relpath].file_sha256 if i.relpath in facts else ''}" for i in ingested.items]
    fingerprint_lines += [f"{i.relpath}\t\tinvalid" for i in ingested.invalid]
    if ingested.annotations_sha256:
        fingerprint_lines.append(f"annotations.csv\t\t{ingested.annotations_sha256}")
    return {
        "name": config.name,
        "version": config.version,
        "release_date": config.release_date,
        "tool": {"name": "mll23-pipeline", "version": pipeline.__version__},
        "config_sha256": config.digest(),
        "raw_fingerprint": manifest.raw_fingerprint(fingerprint_lines),
        "class_names": config.class_names,
        "counts": counts,
    }
