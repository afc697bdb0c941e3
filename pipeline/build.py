"""Build: run every stage in order and write the release directory whole or not at all.

The spine is `build_release`: check the request, ingest, decode and dedup (on the executor, with the
per-image cache), select what is published and split it, count, then write into staging and move it into place.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.lifecycle import ancestry, notes
from pipeline.records import FATES, ClassCount, DedupResult, ImageFacts, LedgerEntry, Publishable, RawItem, ReleaseCounts, ReleaseRecord, SplitCount
from pipeline.release import manifest, writer
from pipeline.release.layout import LEDGER
from pipeline.release.writer import ReleaseContents, WrittenShards
from pipeline.runtime import integrity
from pipeline.runtime.cache import EncodedCache, FactsCache
from pipeline.runtime.executor import Executor, make_executor
from pipeline.runtime.progress import Progress
from pipeline.stages.decode import ENCODING
from pipeline.stages.ingest import AnnotationsError, IngestResult, ingest
from pipeline.stages.runners import run_decode, run_dedup, run_exclude_and_validate, run_split, run_split_report

# run_decode and run_dedup are imported from here by tests and benchmarks, with run_ingest and Progress
__all__ = ["BuildError", "BuildReport", "Progress", "StageTimer", "build_release", "default_workers", "run_decode", "run_dedup", "run_ingest"]


class BuildError(RuntimeError):
    """The build refused to write a release; the message says why."""


@dataclass
class BuildReport:
    out_dir: Path
    counts: ReleaseCounts
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


class StageTimer:
    """Wall-clock and CPU seconds per stage, taken as laps: a stage's time is all the time since the previous lap,
    so nothing the build does goes uncounted."""

    def __init__(self) -> None:
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), _cpu_seconds()

    def lap(self, stage: str) -> None:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        self.wall[stage], self.cpu[stage] = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes (a pool counts once it is shut down)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


# ---- the spine ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """What a build was asked to do, checked before any work starts."""

    raw: Path
    out: Path
    config: ReleaseConfig
    strict: bool
    overwrite: bool
    cache_dir: Path | None
    verify_cache: bool
    notes_dir: Path | None
    previous: ancestry.PreviousRelease | None
    notes_rel: str  # the release notes' path in the release
    notes_words: str  # the maintainers' section of the notes, carried over


@dataclass(frozen=True)
class _Examined:
    """What decode and dedup found out about the ingested images."""

    decoded: list[RawItem]  # the items that decoded, in ingest order
    facts: dict[str, ImageFacts]  # relpath -> decode's facts (without dedup's signatures)
    dedup: DedupResult
    failed: list[LedgerEntry]  # the images that did not decode, as invalid ledger rows
    work: dict[str, int]  # images, from_cache, decoded
    check_threads: int  # threads that check the written shards


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
    progress = progress or Progress()
    warnings = integrity.clean_stale_staging(Path(out))
    request = _check_request(Path(raw), Path(out), config, strict, overwrite, cache_dir, verify_cache, previous, notes_dir)
    timer = StageTimer()
    ingested, ledger = run_ingest(request.raw, config)
    warnings += [f"folder {f} has no input files" for f in ingested.empty_folders]
    timer.lap("ingest")
    examined = _decode_and_dedup(request, ingested, executor, workers or default_workers(), progress, timer, warnings)
    ledger += examined.failed
    records, selected = _select_and_split(request, examined, ledger, timer)
    ledger += selected
    counts = compute_counts(config, ledger, records)
    balance = check_ledger_invariant(ledger, ingested.raw_files, counts)
    contents = ReleaseContents(request.raw, config, records, examined.facts, counts, examined.dedup)
    fingerprint = _raw_fingerprint(ingested, examined.facts)
    notes_text = _write_whole_or_nothing(request, contents, fingerprint, manifest.ledger_text(ledger), progress, examined.check_threads, timer, warnings)
    if request.notes_dir is not None:
        notes.write_editable_copy(request.notes_dir, request.notes_rel, notes_text)
    return BuildReport(
        out_dir=request.out, counts=counts, ledger=sorted(ledger, key=lambda e: e.relpath), ignored=ingested.ignored, timings=timer.wall,
        balance=balance, warnings=warnings, split_moves=run_split_report(records, request.previous), notes_path=request.notes_rel,
        work=examined.work, cpu_timings=timer.cpu,
    )


def _check_request(
    raw: Path, out: Path, config: ReleaseConfig, strict: bool, overwrite: bool, cache_dir: Path | None, verify_cache: bool,
    previous: Path | None, notes_dir: Path | None,
) -> _Request:
    """Refuse what can be refused before any work: an existing release without overwrite, a previous release
    that is not an earlier version of this dataset, notes whose maintainer markers are broken."""
    if out.exists() and not overwrite:
        raise BuildError(f"{out} already exists; pass --overwrite to replace it")
    prev = ancestry.load_previous(previous, config) if previous is not None else None
    notes_rel = notes.notes_relpath(config.version)
    words = notes.maintainer_words(Path(notes_dir) / Path(notes_rel).name if notes_dir is not None else out / notes_rel)
    return _Request(
        raw, out, config, strict, overwrite, Path(cache_dir) if cache_dir is not None else None, verify_cache,
        Path(notes_dir) if notes_dir is not None else None, prev, notes_rel, words,
    )


@contextmanager
def _per_image_workers(
    executor: Executor | None, workers: int, request: _Request, warnings: list[str]
) -> Iterator[tuple[Executor, FactsCache | None]]:
    """The executor and the per-image cache of decode and dedup, for exactly as long as those run. An executor
    made here is shut down after; a caller's is left idle (a local pool's workers exit: their memory is free
    for the write stage). The cache's warnings join the build's."""
    owned = executor is None
    executor = executor or make_executor("local", workers)
    cache = None
    try:
        if request.cache_dir is not None:
            cache = FactsCache(request.cache_dir, request.config.image_size, verify=request.verify_cache)
        yield executor, cache
    finally:
        if cache is not None:
            warnings += cache.warnings()
            cache.close()
        if owned:
            executor.close()
        else:
            executor.idle()


def _decode_and_dedup(
    request: _Request, ingested: IngestResult, executor: Executor | None, workers: int, progress: Progress, timer: StageTimer, warnings: list[str]
) -> _Examined:
    raw, config, prev = request.raw, request.config, request.previous
    with _per_image_workers(executor, workers, request, warnings) as (engine, cache):
        # shards are checked on this machine (only it sees the staging directory), by as many threads as workers
        check_threads = engine.parallelism if engine.name in ("serial", "local") else workers
        facts, failed, work = _decode_stage(raw, ingested.items, config, progress, engine, cache)
        timer.lap("decode")
        decoded = [i for i in ingested.items if i.relpath in facts]
        prefer = ancestry.dedup_preference(prev) if prev else None
        dedup = run_dedup(raw, decoded, facts, config, prefer=prefer, executor=engine, pair_memo=cache)
    timer.lap("dedup")
    facts = {relpath: replace(f, signature=None) for relpath, f in facts.items()}  # dedup's alone: ~1.3 kB an image
    return _Examined(decoded, facts, dedup, failed, work, check_threads)


def _decode_stage(
    raw: Path, items: list[RawItem], config: ReleaseConfig, progress: Progress, executor: Executor, cache: FactsCache | None
) -> tuple[dict[str, ImageFacts], list[LedgerEntry], dict[str, int]]:
    try:
        return run_decode(raw, items, config, executor, progress, cache)
    finally:
        executor.idle()  # a local pool's workers exit, so their CPU time is counted in this stage


def _select_and_split(
    request: _Request, examined: _Examined, ledger: list[LedgerEntry], timer: StageTimer
) -> tuple[list[ReleaseRecord], list[LedgerEntry]]:
    """The records to publish, with their splits, and the ledger rows of every decoded image (dropped or kept);
    refuses (BuildError) a release that --strict forbids or that would hold no image."""
    config, facts, dedup = request.config, examined.facts, examined.dedup
    kept, dropped = run_exclude_and_validate(examined.decoded, facts, dedup, config)
    timer.lap("exclude+validate")
    if request.strict:
        refuse_if_strict(ledger + dropped)
    refuse_if_nothing_publishable(kept, ledger + dropped, config, request.out)
    records = run_split(kept, config, previous=request.previous.splits if request.previous else None)
    kept_rows = [
        # the reason names the kept copy's duplicate group and look-alike group, with the deciding test's scores
        LedgerEntry(r.source_file, r.label_name, "kept", dedup.fates[r.source_file][1], split=r.split, image_id=r.image_id, sha256=facts[r.source_file].file_sha256)
        for r in records
    ]
    timer.lap("split")
    return records, dropped + kept_rows


def _write_whole_or_nothing(
    request: _Request, contents: ReleaseContents, fingerprint: str, ledger_text: str, progress: Progress, check_threads: int,
    timer: StageTimer, warnings: list[str],
) -> str:
    """Write the release into a fresh staging directory next to ``out``, check it, and move it into place: on any
    failure the staging directory is removed and nothing is published. Returns the release notes' text."""
    request.out.parent.mkdir(parents=True, exist_ok=True)
    staging = integrity.staging_path(request.out)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        notes_text = _write_staging(staging, request, contents, fingerprint, ledger_text, progress, check_threads, timer, warnings)
        timer.lap("verify")
        integrity.fsync_tree(staging)
        _move_into_place(staging, request.out, request.overwrite)
        timer.lap("move")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return notes_text


@contextmanager
def _write_helpers(request: _Request, contents: ReleaseContents, check_threads: int, warnings: list[str]) -> Iterator[tuple[integrity.ShardChecker, EncodedCache | None]]:
    """The shard checker and the cache of encoded images, for as long as the writers run."""
    checker = writer.shard_checker(contents, check_threads)
    encoded = None
    try:
        if request.cache_dir is not None:
            encoded = EncodedCache(request.cache_dir, request.config.image_size, ENCODING)
        yield checker, encoded
    finally:
        checker.close()
        if encoded is not None:
            warnings += encoded.warnings()
            encoded.close()


def _write_staging(
    staging: Path, request: _Request, contents: ReleaseContents, fingerprint: str, ledger_text: str, progress: Progress,
    check_threads: int, timer: StageTimer, warnings: list[str],
) -> str:
    """Every file of the release, into staging, each shard checked as soon as it is written; the notes come from
    the very manifest and ledger being written."""
    prev = request.previous
    with _write_helpers(request, contents, check_threads, warnings) as (checker, encoded):
        try:
            shards = writer.write_shards(staging, contents, progress, checker, encoded)
        except writer.WriteError as exc:
            raise BuildError(str(exc)) from exc
        body = _manifest_body(request, contents, fingerprint, shards)
        notes_text = notes.notes_for_build(body, ledger_text, prev.path if prev else None, request.notes_words)
        card_link = notes.card_section(request.config.version, prev.version if prev else None)
        writer.write_documents(staging, contents, shards, body, {LEDGER: ledger_text, request.notes_rel: notes_text}, [card_link])
        timer.lap("write")
        checker.result()  # most shards were checked while later ones were written
    return notes_text


def _manifest_body(request: _Request, contents: ReleaseContents, fingerprint: str, shards: WrittenShards) -> dict:
    config = request.config
    return manifest.manifest_body(
        config.name, config.version, config.release_date, config.class_names, contents.counts,
        config_sha256=config.digest(),
        raw_fingerprint=fingerprint,
        splits=shards.manifest_splits(contents.counts),
        sample=shards.manifest_sample(config.sample_fraction),
        **ancestry.manifest_fields(config, request.previous, {r.image_id for r in contents.records}, request.notes_rel),
    )


def _raw_fingerprint(ingested: IngestResult, facts: dict[str, ImageFacts]) -> str:
    """Changes when any raw input changes: every item with its size and file sha256, the invalid ones, annotations.csv."""
    lines = [f"{i.relpath}\t{i.size}\t{facts[i.relpath].file_sha256 if i.relpath in facts else ''}" for i in ingested.items]
    lines += [f"{i.relpath}\t\tinvalid" for i in ingested.invalid]
    if ingested.annotations_sha256:
        lines.append(f"annotations.csv\t\t{ingested.annotations_sha256}")
    return manifest.raw_fingerprint(lines)


def _move_into_place(staging: Path, out: Path, overwrite: bool) -> None:
    """Rename a finished staging directory to ``out`` (not the Hub publish); an old release is replaced only with overwrite."""
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


# ---- counts ---------------------------------------------------------------------------------------------------


def compute_counts(config: ReleaseConfig, ledger: list[LedgerEntry], records: list[ReleaseRecord]) -> ReleaseCounts:
    fates = Counter(e.fate for e in ledger)
    files = [e for e in ledger if e.input_kind == "file"]
    raw = Counter(e.label for e in files)
    kept = Counter(r.label_name for r in records)
    return ReleaseCounts(
        raw_images=len(files),
        annotation_rows_without_file=sum(1 for e in ledger if e.input_kind == "annotation_row"),
        ledger_total=len(ledger),
        ledger={f: fates.get(f, 0) for f in FATES},
        per_class={c: ClassCount(raw[c], kept[c]) for c in config.class_names},
        splits={s: _split_count([r for r in records if r.split == s]) for s in SPLITS},
    )


def _split_count(records: list[ReleaseRecord]) -> SplitCount:
    return SplitCount(len(records), dict(Counter(r.label_name for r in records)))


def check_ledger_invariant(ledger: list[LedgerEntry], raw_files: list[str], counts: ReleaseCounts) -> integrity.LedgerBalance:
    """Nothing lost: every raw file has exactly one ledger row, and the fates add up (integrity.check_nothing_lost)."""
    if sum(counts.ledger.values()) != counts.ledger_total:
        raise BuildError(f"ledger invariant broken: fates add up to {sum(counts.ledger.values())}, ledger has {counts.ledger_total} rows")
    balance = integrity.check_nothing_lost(ledger, raw_files)
    if balance.raw_inputs != counts.raw_images:
        raise BuildError(f"ledger invariant broken: {balance.raw_inputs} raw inputs found, counts say {counts.raw_images}")
    return balance


# ---- stages: each takes plain records and returns plain records ------------------------------------------


def run_ingest(raw: Path, config: ReleaseConfig) -> tuple[IngestResult, list[LedgerEntry]]:
    try:
        ingested = ingest(raw, config)
    except AnnotationsError as exc:  # the table as a whole is unusable: stop before reading any image
        raise BuildError(f"{exc}\nnothing was built") from None
    ledger = [LedgerEntry(i.relpath, i.label, "invalid", i.reason, input_kind=i.input_kind) for i in ingested.invalid]
    return ingested, ledger


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


def refuse_if_nothing_publishable(kept: list[Publishable], ledger: list[LedgerEntry], config: ReleaseConfig, out: Path) -> None:
    """A release without images cannot be loaded by anyone: refuse it before anything is written."""
    if not kept:
        raise BuildError(f"nothing to publish: {nothing_publishable(ledger, config)}; no release written to {out}")
