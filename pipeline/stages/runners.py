"""The stages as the build runs them: decode, dedup, exclude and validate, split, each on plain records.

Decode and dedup run on the executor, with the per-image cache; each stage takes the records of the stage
before and returns its own, with a ledger row for every input it drops.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.lifecycle import ancestry
from pipeline.records import DecodeFailure, DedupResult, ImageFacts, LedgerEntry, Publishable, RawItem, ReleaseRecord
from pipeline.runtime.cache import FactsCache, file_sha256_or_none, rebuild
from pipeline.runtime.executor import Executor, batch_size, batched
from pipeline.runtime.overlap import ReadAhead
from pipeline.runtime.progress import Progress
from pipeline.stages.decode import decode_file, load_rgb, publish_as_original
from pipeline.stages.dedup import PairMemo, deduplicate
from pipeline.stages.exclude import exclusion_reason
from pipeline.stages.split import SplitItem, assign_splits
from pipeline.stages.validate import record_errors, record_validator


def _decode_task(raw: str, size: tuple[int, int], item: RawItem) -> ImageFacts | DecodeFailure:
    return decode_file(Path(raw) / item.relpath, item.relpath, item.label, size)


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
        partial(load_pixels, os.path.abspath(raw), config.image_size),
        phash_threshold=config.phash_threshold,
        lookalike_threshold=config.lookalike_threshold,
        policy=config.conflict_policy,
        prefer=prefer,
        map_fn=executor.map if executor is not None else None,
        pair_memo=pair_memo,
    )


def load_pixels(raw: str, size: tuple[int, int], relpath: str):
    """Pixels of an accepted image, by absolute path (picklable: runs in worker processes too)."""
    return load_rgb(Path(raw) / relpath, size)


def run_exclude_and_validate(
    items: list[RawItem], facts: dict[str, ImageFacts], dedup: DedupResult, config: ReleaseConfig
) -> tuple[list[Publishable], list[LedgerEntry]]:
    """The images to publish, and a ledger row for each one dropped: a duplicate, excluded, or failing the record schema."""
    kept: list[Publishable] = []
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
        candidate = Publishable(item, f, dedup.group_of[item.relpath])
        errors = _schema_errors(candidate, config, validator)
        if errors:
            ledger.append(LedgerEntry(item.relpath, item.label, "invalid", "record schema: " + "; ".join(errors), sha256=f.file_sha256))
            continue
        kept.append(candidate)
    return kept, ledger


def _schema_errors(candidate: Publishable, config: ReleaseConfig, validator) -> list[str]:
    """The record schema's verdict on the record this image will become. It is the same in every split (the
    split stage only hands out SPLITS, the schema's enum), so it is taken before the split stage runs: an
    image the schema refuses takes no place in the split."""
    return record_errors(_record(candidate, config, SPLITS[0]).metadata(), validator)


def run_split(kept: list[Publishable], config: ReleaseConfig, previous: dict[str, str] | None = None) -> list[ReleaseRecord]:
    """The release's records, each made once its split is known, in publishing order: split, then image_id (not
    the label: a relabelled image keeps its place, so a re-release rewrites only its own row's bytes, not every row
    between its old and new class; and, the image_id being a pixel hash, every shard holds a mix of classes)."""
    assignment = assign_splits(
        [SplitItem(k.image_id, k.item.label, k.group_id, k.item.patient_id) for k in kept],
        config.split_fractions,
        config.split_seed,
        previous=previous,
    )
    return sorted(
        (_record(k, config, assignment[k.image_id]) for k in kept),
        key=lambda r: (SPLITS.index(r.split), r.image_id),
    )


def _record(kept: Publishable, config: ReleaseConfig, split: str) -> ReleaseRecord:
    item, facts = kept.item, kept.facts
    return ReleaseRecord(
        image_id=kept.image_id,
        label=config.label_index(item.label),
        label_name=item.label,
        split=split,
        source_file=item.relpath,
        patient_id=item.patient_id,
        annotator=item.annotator,
        group_id=kept.group_id,
        pixel_sha256=facts.pixel_sha256,
        phash=f"{facts.phash:016x}",
        width=facts.width,
        height=facts.height,
        lossless=publish_as_original(facts, config.publish_codec),
        file_format=facts.file_format,
        extra=item.extra,
    )


def run_split_report(records: list[ReleaseRecord], prev: ancestry.PreviousRelease | None) -> list[ancestry.SplitMove]:
    """Images of the previous release that changed split because their unit joins earlier splits."""
    if prev is None:
        return []
    items = [SplitItem(r.image_id, r.label_name, r.group_id, r.patient_id) for r in records]
    return ancestry.split_moves(items, {r.image_id: r.split for r in records}, prev.splits)
