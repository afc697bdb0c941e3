"""`mll23 verify`: is a release directory exactly what it claims to be, and can people load it?

Each check is a function over a lazily loaded view of the release; it yields human-readable failures
naming the file, row or key at fault. Checks for optional parts (WebDataset shards, Croissant metadata)
are registered with a condition and run only where those files exist. `verify_release` returns the
failures (an empty list means the release passed); `publish` calls it before uploading anything.

A release directory may come from anyone (the CI workflow runs verify on pull requests), so verify runs in
three stages. The manifest is read with a size cap and checked against schemas/manifest.schema.json before any
value of it is used. Then the checks that read the release themselves, through `pipeline.untrusted.files` (no
links, no special files, size caps) with bounded work: Parquet footers and decompressed sizes are checked before
any data is read, tar members by name, type and size before any byte of them is read, images only with the
decoders and bomb limits the build accepts, the card's YAML with a loader that refuses aliases and tags. The
loader checks (`datasets`, `webdataset`, `mlcroissant`), which parse the files by their own rules, run last
and only on a release that passed every check before them. Nothing read from a release is executed, expanded
as a pattern or used as a URL, and every failure is escaped for printing (`pipeline.untrusted.safetext`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
import logging
import os
import re
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.build import BuildError, build_release
from pipeline.config import SPLITS, ConfigError, validate_config
from pipeline.stages.imagecheck import ImageRejected
from pipeline.lifecycle.ancestry import AncestryError
from pipeline.release.layout import CARD, CROISSANT, LEDGER, LEDGER_COLUMNS, MANIFEST, NOTES_DIR, PARQUET_SHARD, RELEASE_FILE, SAMPLE_SHARD, TAR_SHARD, WDS_CARD, WDS_DIR, VersionError, list_release_files, sha256_file, version_key
from pipeline.lifecycle.notes import NotesError
from pipeline.release.parquet import SCHEMA_FIELDS
from pipeline.untrusted.parquet_bounds import ParquetLimits, ParquetRefused, footer_checked, open_bounded
from pipeline.records import FATES
from pipeline.untrusted.formats import (
    MAX_LISTED_MEMBERS,
    MEMBERS_PER_SAMPLE,
    WDS_IMAGE_SUFFIXES,
    CardRefused,
    TarLimits,
    card_header,
    decode_image,
    tar_problems,
)
from pipeline.untrusted.files import (
    MAX_LISTED_FILE_BYTES,
    NOTES_CAP,
    Listing,
    ManifestError,
    ReleaseDir,
    ReleaseFileError,
    file_problems,
    fixed_cap,
    load_manifest,
    parse_json,
    read_ledger,
    relpath_problem,
    show,
)
from pipeline.untrusted.safetext import printable
from pipeline.stages.validate import record_errors, record_validator
from pipeline.release.wds import brace_pattern, shard_name

_SHARD = PARQUET_SHARD
_TAR = TAR_SHARD
# the card's `sample` config: a stratified subset of each split's rows, the very same bytes (pipeline/release/sample.py)
_SAMPLE = SAMPLE_SHARD
_CARD_SHARD = re.compile(f"{_SHARD.pattern}|{_SAMPLE.pattern}", re.ASCII)
_LAYOUT = RELEASE_FILE  # any other name is refused (layout.RELEASE_FILE says why)
_MAX_LISTED = 20  # failures of one kind listed one by one before the rest are counted
_RECORD_BATCH = 16  # rows decoded into Python objects at a time by the records check
_MESSAGE_CHARS = 2000  # one failure message, escaped, at most this long


@dataclass(frozen=True)
class Failure:
    check: str
    message: str

    def __str__(self) -> str:
        return f"[{self.check}] {self.message}"


@dataclass(frozen=True)
class HubLimits:
    """What the Hugging Face Hub accepts (docs: 'Repository limitations and recommendations')."""

    max_file_bytes: int = 50 * 1000**3  # the Hub refuses a file above 50 GB
    # the dataset viewer refuses a Parquet row group above 286.10 MiB uncompressed ("TooBigContentError")
    max_row_group_bytes: int = 300_000_000
    max_entries_per_folder: int = 10_000
    max_files: int = 100_000


@dataclass(frozen=True)
class ReadLimits:
    """How much verify reads or decodes from one part of a release before refusing it unread (a real release is
    far below each: row groups under 32 MB, images under 16 MB, a ledger of 41,906 rows is 6 MB)."""

    parquet: ParquetLimits = field(default_factory=ParquetLimits)
    # rows of all shards, and of the ledger, held in memory as Python objects (MLL23 has 41,906 raw images)
    max_rows: int = 500_000
    # decoded bytes of the shards' per-row text columns held with them (MLL23's are some 10 MB)
    meta_bytes: int = 128 << 20
    # rows with failures the records check reports before it stops: each costs a record validation, and a
    # shard of 500,000 wrong rows took 69 s
    max_failing_rows: int = 1000
    tar: TarLimits = field(default_factory=TarLimits)
    yaml_depth: int = 64


@dataclass(frozen=True)
class VerifyOptions:
    hub: HubLimits = field(default_factory=HubLimits)
    # A non-streaming `load_dataset` copies the whole release into a cache: beyond this size (a CI runner's
    # disk may not hold the release twice) the load check reads every row in streaming mode instead.
    full_load_max_bytes: int = 2_000_000_000
    read: ReadLimits = field(default_factory=ReadLimits)


@dataclass
class CheckResult:
    name: str
    description: str
    failures: list[Failure] = field(default_factory=list)
    skipped: str | None = None  # why a loader check did not run (an earlier check failed)


class ManifestUnreadable(Exception):
    """Nothing else can be checked without the manifest."""


class Refused(Exception):
    """A part of a release verify will not read further; the message names it and says why."""


# ---- the release, read once and shared by every check ---------------------------------------------------


@dataclass(frozen=True)
class Row:
    shard: str
    index: int  # row number in its shard, from 0
    split: str
    image_id: str
    label: int
    source_file: str
    patient_id: str | None
    annotator: str | None
    group_id: str
    pixel_sha256: str
    phash: str
    extra: str | None

    def where(self) -> str:
        return f"{self.shard} row {self.index}"


# The columns of a shard, as the build writes them; any other schema is refused before a value is read
_SHARD_SCHEMA = pa.schema(SCHEMA_FIELDS)
_META_COLUMNS = ["image_id", "label", "source_file", "patient_id", "annotator", "group_id", "pixel_sha256", "phash", "extra"]


class ReleaseView:
    def __init__(self, release_dir: Path, limits: ReadLimits | None = None) -> None:
        self.dir = Path(release_dir)
        self.files = ReleaseDir(self.dir)
        self.limits = limits or ReadLimits()
        self.read_errors: list[str] = []  # files a check needed but could not read
        self.ledger_error: str | None = None  # why ledger.csv could not be read
        self.ledger_columns: list[str] = []

    @cached_property
    def manifest(self) -> dict:
        try:
            return load_manifest(self.files)
        except ManifestError as exc:
            if not os.path.lexists(self.dir / MANIFEST):
                raise ManifestUnreadable(f"{MANIFEST} is missing: nothing can be checked without it") from None
            raise ManifestUnreadable(str(exc)) from None

    @cached_property
    def listing(self) -> Listing:
        return self.files.listing()

    @cached_property
    def present(self) -> list[str]:
        """Regular files of the release except manifest.json, sorted."""
        return [p for p in self.listing.files if p != MANIFEST]

    @cached_property
    def present_set(self) -> frozenset[str]:
        """`present` for lookups: a release may hold 200,000 names and its card as many links."""
        return frozenset(self.present)

    @cached_property
    def declared(self) -> dict[str, int]:
        return {e["path"]: e["size"] for e in self.manifest["files"]}

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    def cap(self, rel: str) -> int:
        """The most verify reads of `rel`: its fixed cap, and no more than the manifest declares."""
        fixed = fixed_cap(rel)
        return min(fixed, self.declared.get(rel, fixed))

    @contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        with self.files.open(rel, max_bytes=self.cap(rel)) as fh:
            yield fh

    def read_text(self, rel: str) -> str:
        return self.files.read_text(rel, max_bytes=self.cap(rel))

    def has(self, rel: str) -> bool:
        return rel in self.present_set

    @cached_property
    def shard_paths(self) -> list[str]:
        """Parquet shards actually present (what `datasets` would load), listed or not."""
        return [p for p in self.present if _SHARD.match(p)]

    @cached_property
    def shard_schema(self) -> pa.Schema:
        """The columns the build writes; a harmonised release (`mll23 harmonise`) adds its per-source columns."""
        if "harmonised_from" in self.manifest:
            from pipeline.lifecycle.harmonise import SOURCE_FIELDS

            return pa.schema(SCHEMA_FIELDS + SOURCE_FIELDS)
        return _SHARD_SCHEMA

    @cached_property
    def sample_paths(self) -> list[str]:
        return [p for p in self.present if _SAMPLE.match(p)]

    @cached_property
    def tar_paths(self) -> list[str]:
        return [p for p in self.present if _TAR.match(p)]

    @cached_property
    def rows(self) -> list[Row]:
        rows: list[Row] = []
        held = 0
        for shard in self.shard_paths:
            split = _SHARD.match(shard).group(1)
            try:
                with self.open(shard) as fh:
                    parquet = open_parquet(fh, shard, self.limits, self.shard_schema)
                    if len(rows) + parquet.metadata.num_rows > self.limits.max_rows:
                        raise Refused(f"{show(shard)}: the shards hold more than {self.limits.max_rows:,} rows: not read")
                    ours: list[Row] = []
                    shard_bytes = 0
                    # a row group at a time, counting what is kept: every row group may be within the Parquet
                    # limits while all of them together, as Python objects, are not
                    for g in range(parquet.num_row_groups):
                        table = parquet.read_row_group(g, columns=_META_COLUMNS)
                        shard_bytes += table.nbytes
                        if held + shard_bytes > self.limits.meta_bytes:
                            raise Refused(
                                f"{show(shard)}: the shards' per-row columns ({', '.join(_META_COLUMNS)}) hold more than "
                                f"{self.limits.meta_bytes:,} bytes: not read"
                            )
                        ours.extend([Row(shard=shard, index=len(ours) + i, split=split, **r) for i, r in enumerate(table.to_pylist())])
                        del table
                    rows.extend(ours)
                    held += shard_bytes
            except (ReleaseFileError, Refused) as exc:
                self.read_errors.append(str(exc))
                continue
            except Exception as exc:  # a damaged shard is a finding, not a crash
                self.read_errors.append(f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})")
                continue
        return rows

    @cached_property
    def ledger(self) -> list[dict[str, str]]:
        if not self.has(LEDGER):
            self.read_errors.append(f"{LEDGER} is missing")
            return []
        try:
            rows = read_ledger(self.files, max_rows=self.limits.max_rows, max_bytes=self.cap(LEDGER))
            self.ledger_columns = list(LEDGER_COLUMNS)
            return rows
        except ReleaseFileError as exc:
            self.ledger_error = str(exc)
        self.read_errors.append(self.ledger_error)
        return []

    @cached_property
    def cards(self) -> dict[str, tuple[str, dict, str | None]]:
        """README.md and wds/README.md (where present): (text, YAML header, why they could not be read)."""
        out = {}
        for rel in (CARD, WDS_CARD):
            if not self.has(rel):
                continue
            try:
                text = self.read_text(rel)
                out[rel] = (text, card_header(text, self.limits.yaml_depth), None)
            except (ReleaseFileError, CardRefused) as exc:
                out[rel] = ("", {}, f"{show(rel)}: {exc}" if isinstance(exc, CardRefused) else str(exc))
        return out

    @property
    def card_text(self) -> str:
        return self.cards.get(CARD, ("", {}, None))[0]

    @property
    def card_yaml(self) -> dict:
        return self.cards.get(CARD, ("", {}, None))[1]


def _capped(check: str, messages: Iterable[str]) -> list[Failure]:
    """The first failures, escaped for printing, and a count of the rest (counted, not kept)."""
    out, more = [], 0
    for m in messages:
        if len(out) < _MAX_LISTED:
            out.append(Failure(check, printable(m, limit=_MESSAGE_CHARS)))
        else:
            more += 1
    if more:
        out.append(Failure(check, f"... and {more} more like these"))
    return out


# ---- bounded readers ---------------------------------------------------------------------------------------


def open_parquet(fh: BinaryIO, rel: str, limits: ReadLimits, schema: pa.Schema = _SHARD_SCHEMA) -> pq.ParquetFile:
    """The shard, once its columns, footer, column chunks and page headers passed the limits (pipeline.untrusted.parquet_bounds)."""
    try:
        return open_bounded(fh, limits.parquet, schema)
    except ParquetRefused as exc:
        raise Refused(f"{show(rel)}: {exc}") from None


def parquet_metadata(fh: BinaryIO, rel: str, limits: ReadLimits) -> pq.FileMetaData:
    """The footer only (its own size checked): what the Hub limits are checked against."""
    try:
        return footer_checked(fh, limits.parquet).metadata
    except ParquetRefused as exc:
        raise Refused(f"{show(rel)}: {exc}") from None


def _dict(value: object) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list:
    return value if isinstance(value, list) else []


# ---- the safety checks: they run first, and the loaders only on a release that passed them -----------------


def check_files(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    yield from file_problems(view.files, view.manifest, view.listing)
    for path in sorted(view.declared):  # an unlisted file fails already
        if relpath_problem(path) is None and path != MANIFEST and not _LAYOUT.match(path):
            yield f"{show(path)}: listed in {MANIFEST} but not a file of the release format (see the README's output layout)"


def check_card(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The cards' YAML loads strictly, and their `configs` point only at the release's own shards."""
    for rel, (_, header, error) in sorted(view.cards.items()):
        if error:
            yield error
            continue
        if rel == CARD:
            yield from _config_problems(rel, header, "", _CARD_SHARD, view.present)
        else:
            yield from _config_problems(rel, header, f"{WDS_DIR}/", _TAR, view.present)
        yield from _card_feature_problems(rel, header)


# The feature types a release declares. `datasets` decodes a column by its declared type (Audio and Video hand
# the bytes to FFmpeg, Pdf to pdfplumber), so a card or a shard declaring any other type fails the release.
_CARD_DTYPES = frozenset({"image", "string", "json", "int64"})
_ARROW_FEATURES = frozenset({"Image", "ClassLabel", "Value"})


def _card_feature_problems(card: str, header: dict) -> Iterator[str]:
    info = header.get("dataset_info")
    if info is None:
        return
    if not isinstance(info, dict):
        yield f"{card}: YAML dataset_info is not a mapping"
        return
    for i, feature in enumerate(_list(info.get("features"))):
        dtype = feature.get("dtype") if isinstance(feature, dict) else None
        ok = dtype in _CARD_DTYPES if isinstance(dtype, str) else isinstance(dtype, dict) and list(dtype) == ["class_label"]
        if not ok:
            yield f"{card}: YAML dataset_info.features[{i}] has dtype {show(dtype)}, which a release does not use"


def _parquet_feature_problems(rel: str, parquet: pq.ParquetFile) -> Iterator[str]:
    """The `datasets` features stored in the shard's schema: only the types the build writes."""
    metadata = parquet.schema_arrow.metadata or {}
    for key in sorted(set(metadata) - {b"huggingface"}):  # e.g. b"pandas", which pandas readers act on
        yield f"{show(rel)}: schema metadata key {show(key.decode('utf-8', errors='replace'))} is not one the build writes"
    if b"huggingface" not in metadata:
        return
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        kinds = {name: spec.get("_type") for name, spec in features.items()}
        dtypes = [spec.get("dtype") for spec in features.values() if spec.get("_type") == "Value"]
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        yield f"{show(rel)}: the huggingface schema metadata is not a features mapping"
        return
    for name, kind in sorted(kinds.items(), key=str):
        if kind not in _ARROW_FEATURES:
            yield f"{show(rel)}: schema metadata declares column {show(name)} as {show(kind)}, which a release does not use"
    if any(d not in ("string", "int64") for d in dtypes):
        yield f"{show(rel)}: schema metadata declares a Value of dtype {show(sorted(map(str, dtypes)))}, which a release does not use"


_CONFIG_KEYS = frozenset({"config_name", "default", "data_files"})
_MAX_PATTERNS = 64


def _config_problems(card: str, header: dict, base: str, allowed: re.Pattern, present: list[str]) -> Iterator[str]:
    """`datasets` globs each data_files pattern (and would fetch a URL): each must be a plain relative pattern
    whose matches are all shards of the release. Each pattern is matched against the files of its own folder
    only, and a card has a handful: 64 patterns at most (2,000 patterns against 100,000 files took minutes)."""
    by_folder: dict[str, list[str]] = defaultdict(list)
    for p in present:
        if p.startswith(base):
            by_folder[p[len(base):].rpartition("/")[0]].append(p)
    budget = _MAX_PATTERNS
    for i, config in enumerate(_list(header.get("configs"))):
        if not isinstance(config, dict):
            yield f"{card}: YAML configs[{i}] is not a mapping"
            continue
        for key in sorted(set(config) - _CONFIG_KEYS, key=str):
            yield f"{card}: YAML configs[{i}] has key {show(key)}, which a release card does not use"
        data_files = config.get("data_files")
        if isinstance(data_files, dict):  # {split: patterns}, the other spelling `datasets` accepts
            data_files = [{"path": v} for v in data_files.values()]
        entries = data_files if isinstance(data_files, list) else [data_files]
        for entry in entries:
            patterns = entry.get("path") if isinstance(entry, dict) else entry
            for pattern in patterns if isinstance(patterns, list) else [patterns]:
                budget -= 1
                if budget < 0:
                    yield f"{card}: YAML configs hold more than {_MAX_PATTERNS} data_files patterns: the rest were not checked"
                    return
                problem = _pattern_problem(pattern, base, allowed, by_folder)
                if problem:
                    yield f"{card}: YAML configs[{i}] data_files pattern {show(pattern)} {problem}"


def _pattern_problem(pattern: object, base: str, allowed: re.Pattern, by_folder: dict[str, list[str]]) -> str | None:
    if not isinstance(pattern, str):
        return "is not a string"
    problem = relpath_problem(pattern)
    if problem:
        return problem
    head, _, last = pattern.rpartition("/")
    if any(ch in pattern for ch in "?[]{}") or "*" in head or "**" in last or "://" in pattern:
        return "uses glob syntax other than one '*' in the file name, or a URL (only plain patterns of the release's shards are read)"
    matches = [p for p in by_folder.get(head, ()) if fnmatch.fnmatchcase(p[len(base):], pattern)]
    strays = [m for m in matches if not allowed.match(m)]
    if strays:
        return f"matches {show(strays[0])}, which is not a shard of the release"
    return None


def check_webdataset_tars(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The manifest's WebDataset entries name the release's own tars, and every member of every tar is a regular
    file `<key>.<suffix>` with a suffix of the format, within its size limit (both from the headers, before any
    member is read) and holding what its suffix says (pipeline.untrusted.formats.tar_problems)."""
    tars = set(view.tar_paths)
    named = set()
    for split, info in sorted(view.manifest["splits"].items()):
        entry = _dict(info.get("webdataset"))
        shards = _list(entry.get("shards"))
        paths = [s.get("path") for s in shards]
        expected = [f"{WDS_DIR}/{shard_name(split, i)}" for i in range(len(shards))]
        if paths != expected:
            yield f"{MANIFEST}: splits.{split}.webdataset.shards are {show(paths)}, the release format names them {expected}"
        if entry.get("pattern") != brace_pattern(split, len(shards)):
            yield f"{MANIFEST}: splits.{split}.webdataset.pattern is {show(entry.get('pattern'))}, expected {brace_pattern(split, len(shards))}"
        named.update(p for p in paths if isinstance(p, str))
    for rel in sorted(named - tars):
        if relpath_problem(rel) is None:
            yield f"{show(rel)} is named in {MANIFEST} splits but is not a tar of the release"
    # A tar holds its split's published images, three members each: the Parquet rows (read with their own
    # bounds) bound how many headers are walked, so a tar of a million empty members is refused after a few.
    # A few more than that are read, so that the first strays are named (the member check stops at that many).
    split_rows = Counter(r.split for r in view.rows)
    for rel in sorted(tars):
        split = _TAR.match(rel).group(1)
        expected = MEMBERS_PER_SAMPLE * split_rows[split]
        limits = dataclasses.replace(
            opts.read.tar,
            members=min(opts.read.tar.members, expected + MAX_LISTED_MEMBERS),
            members_why=f" (the {split_rows[split]:,} {split} rows of the Parquet shards make {expected:,})",
        )
        try:
            with view.open(rel) as fh:
                yield from tar_problems(fh, rel, limits)
        except ReleaseFileError as exc:
            yield str(exc)


# ---- the content checks ------------------------------------------------------------------------------------

# A Markdown link target: no brackets, parentheses or spaces inside, so every scan stops at the next `(`, `]`
# or `)` and the search stays linear (the old `[^)#?]+` rescanned a README of "](" from every "(").
_LINK = re.compile(r"\]\(([^()\[\]#?\s]+)\)")


def check_version(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    version = view.manifest["version"]
    try:
        version_key(version)
    except VersionError as exc:
        yield f"{MANIFEST}: version {exc}"
    config = view.manifest.get("config")
    if config is not None and config.get("version") != version:
        yield f"{MANIFEST}: version {version} but its config says {show(config.get('version'))}"
    if f"Version **{version}**" not in view.card_text:
        yield f"{CARD} does not state version {version} (expected 'Version **{version}**')"
    notes = view.manifest.get("release_notes")
    if notes:
        if relpath_problem(notes) or not view.has(notes):
            yield f"{show(notes)} (the release notes named in {MANIFEST}) is missing"
        else:
            try:
                text = view.read_text(notes)
            except ReleaseFileError as exc:
                yield str(exc)
            else:
                if not text.startswith(f"# {view.manifest['name']} v{version}\n"):
                    yield f"{show(notes)} is not the notes of {show(view.manifest['name'])} v{version} (its first line says otherwise)"
        if f"]({notes})" not in view.card_text:
            yield f"{CARD} does not link the release notes {show(notes)}"
    folders = {p.rsplit("/", 1)[0] for p in view.present if "/" in p}
    for target in sorted(set(_LINK.findall(view.card_text))):
        if "://" in target or target.startswith("mailto:"):
            continue
        if relpath_problem(target.rstrip("/")) is not None or (target not in view.present_set and target.rstrip("/") not in folders):
            yield f"{CARD} links {show(target)}, which is not a file of the release"


def check_records(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Every row against schemas/record.schema.json, and its image: decodes, and has the pixels it claims."""
    failing: list = [0, ""]  # rows with failures so far (over all shards), the shard where the check stopped
    listed = more = 0
    for message in _records_problems(view, opts, failing):
        # the first ones, then a count; the stop (if any) must be the last line printed, not one of those counted
        if listed < _MAX_LISTED - 1:
            listed += 1
            yield message
        else:
            more += 1
    stopped = failing[0] >= opts.read.max_failing_rows
    if stopped:
        yield (f"... and {more:,} more like these: {failing[0]:,} rows failed; the records check stopped there, in "
               f"{failing[1]} (the rest were not checked)")
    elif more:
        yield f"... and {more:,} more like these"


def _records_problems(view: ReleaseView, opts: VerifyOptions, failing: list) -> Iterator[str]:
    validator = record_validator()
    names = view.class_names
    published = {(r.image_id, r.split, r.label) for r in view.rows}
    for shard in view.shard_paths + view.sample_paths:
        split = (_SHARD.match(shard) or _SAMPLE.match(shard)).group(1)
        try:
            with view.open(shard) as fh:
                parquet = open_parquet(fh, shard, opts.read, view.shard_schema)
                yield from _parquet_feature_problems(shard, parquet)
                yield from _shard_records(parquet, shard, split, names, validator, failing, opts.read.max_failing_rows)
                if _SAMPLE.match(shard):
                    yield from _sample_problems(parquet, shard, split, published)
                if failing[0] >= opts.read.max_failing_rows:
                    failing[1] = shard
                    return
        except (ReleaseFileError, Refused) as exc:
            yield str(exc)
        except Exception as exc:
            yield f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})"


def _sample_problems(parquet: pq.ParquetFile, shard: str, split: str, published: set[tuple[str, str, int]]) -> Iterator[str]:
    """A sample row is a published row of the same split with the same label (its image was checked above)."""
    table = parquet.read(columns=["image_id", "label"])
    for i, (image_id, label) in enumerate(zip(table["image_id"].to_pylist(), table["label"].to_pylist())):
        if (image_id, split, label) not in published:
            yield f"{shard} row {i}: image {show(image_id)} with label {show(label)} is not a published {split} row"


def _shard_records(parquet: pq.ParquetFile, shard: str, split: str, names: list[str], validator, failing: list,
                   max_failing: int) -> Iterator[str]:
    index = 0
    for g in range(parquet.num_row_groups):
        end = index + parquet.metadata.row_group(g).num_rows
        try:
            # a few rows at a time: only one row group's Arrow data and a handful of images are in memory at once
            for batch in parquet.iter_batches(batch_size=_RECORD_BATCH, row_groups=[g]):
                for r in batch.to_pylist():
                    problems = list(_record_problems(f"{shard} row {index}", r, split, names, validator))
                    yield from problems
                    index += 1
                    failing[0] += bool(problems)
                    if failing[0] >= max_failing:
                        return
        except Exception as exc:
            yield f"{shard} row group {g}: cannot be read ({type(exc).__name__}: {exc})"
        index = end


def _record_problems(where: str, r: dict, split: str, names: list[str], validator) -> Iterator[str]:
    label = r.get("label")
    label_name = names[label] if isinstance(label, int) and 0 <= label < len(names) else None
    if label_name is None:
        yield f"{where}: label {show(label)} is not an index into the {len(names)} class names"
    image = r.get("image") if isinstance(r.get("image"), dict) else {}
    data = image.get("bytes") or b""
    width = height = 0
    try:
        pixels, (width, height) = decode_image(data)
        digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        if digest != r.get("pixel_sha256"):
            yield f"{where}: the image's pixels hash to {digest[:16]}..., the row says pixel_sha256 {show(r.get('pixel_sha256'))[:16]}..."
    except ImageRejected as exc:
        yield f"{where}: image refused: {exc}"
    except Exception as exc:
        yield f"{where}: image bytes do not decode ({type(exc).__name__}: {exc})"
    if r.get("image_id") and r.get("pixel_sha256") and r["image_id"] != r["pixel_sha256"][:16]:
        yield f"{where}: image_id {show(r['image_id'])} is not the first 16 hex digits of pixel_sha256"
    try:
        extra = json.loads(r["extra"]) if r.get("extra") else {}
    except (ValueError, RecursionError, TypeError):
        yield f"{where}: extra is not JSON: {show(str(r['extra'])[:60])}"
        extra = {}
    metadata = {
        "image_id": r.get("image_id"),
        "label": label,
        "label_name": label_name or "",
        "split": split,
        "source_file": r.get("source_file"),
        "patient_id": r.get("patient_id"),
        "annotator": r.get("annotator"),
        "group_id": r.get("group_id"),
        "pixel_sha256": r.get("pixel_sha256"),
        "phash": r.get("phash"),
        "width": width or 1,
        "height": height or 1,
        "extra": extra,
    }
    for error in record_errors(metadata, validator):
        yield f"{where}: record schema: {error}"


def _markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = (cells, [])
                tables.append(current)
            elif not all(set(c) <= set("-: ") for c in cells):
                current[1].append(cells)
        else:
            current = None
    return tables


def _int(cell: str) -> int | None:
    text = cell.replace("*", "").replace(",", "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def check_counts(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The shards are what is published; the card, the manifest and the ledger must all say the same."""
    names = view.class_names
    rows = view.rows
    view.ledger  # read before the list of read errors, so they include the ledger's
    for problem in view.read_errors:
        yield problem
    shard_split = Counter(r.split for r in rows)
    shard_class = Counter((r.split, names[r.label]) for r in rows if 0 <= r.label < len(names))
    kept = [e for e in view.ledger if e.get("fate") == "kept"]
    ledger_split = Counter(e.get("split") for e in kept)
    m = view.manifest
    counts = m["counts"]

    def compare(source: str, what: str, claimed: object, actual: int) -> Iterator[str]:
        if claimed != actual:
            yield f"{source}: {what} is {claimed}, but the shards hold {actual}"

    for s in SPLITS:
        n = shard_split.get(s, 0)
        yield from compare(MANIFEST, f"splits.{s}.num_examples", m["splits"].get(s, {}).get("num_examples"), n)
        yield from compare(MANIFEST, f"counts.splits.{s}.total", counts.get("splits", {}).get(s, {}).get("total"), n)
        if ledger_split.get(s, 0) != n:
            yield f"{LEDGER}: {ledger_split.get(s, 0)} kept rows in {s}, but the shards hold {n}"
        per_class = counts.get("splits", {}).get(s, {}).get("per_class", {})
        for c in names:
            if per_class.get(c, 0) != shard_class.get((s, c), 0):
                yield f"{MANIFEST}: counts.splits.{s}.per_class.{c} is {per_class.get(c, 0)}, but the shards hold {shard_class.get((s, c), 0)}"
    for c in names:
        actual = sum(shard_class.get((s, c), 0) for s in SPLITS)
        yield from compare(MANIFEST, f"counts.per_class.{c}.kept", counts.get("per_class", {}).get(c, {}).get("kept"), actual)
    fates = Counter(e.get("fate") for e in view.ledger)
    for fate in FATES:
        if counts.get("ledger", {}).get(fate) != fates.get(fate, 0):
            yield f"{MANIFEST}: counts.ledger.{fate} is {counts.get('ledger', {}).get(fate)}, but {LEDGER} has {fates.get(fate, 0)} such rows"
    if counts.get("ledger_total") != len(view.ledger):
        yield f"{MANIFEST}: counts.ledger_total is {counts.get('ledger_total')}, but {LEDGER} has {len(view.ledger)} rows"
    yield from _card_counts(view, shard_split, shard_class, fates)


def _yaml_split_counts(name: str, header: dict, shard_split: Counter) -> Iterator[str]:
    info = _dict(header.get("dataset_info"))
    claimed = {s["name"]: s.get("num_examples") for s in _list(info.get("splits")) if isinstance(s, dict) and isinstance(s.get("name"), str)}
    for s in SPLITS:
        n = shard_split.get(s, 0)
        if claimed.get(s, 0) != n:
            yield f"{name}: YAML dataset_info.splits {s} num_examples is {show(claimed.get(s, 0))}, but the shards hold {n}"


def _card_counts(view: ReleaseView, shard_split: Counter, shard_class: Counter, fates: Counter) -> Iterator[str]:
    if not view.card_text:
        yield f"{CARD} (the dataset card) is missing"
        return
    yield from _yaml_split_counts(CARD, view.card_yaml, shard_split)
    if WDS_CARD in view.cards:
        yield from _yaml_split_counts(WDS_CARD, view.cards[WDS_CARD][1], shard_split)
    tables = _markdown_tables(view.card_text)
    class_tables = [t for t in tables if t[0][:1] == ["label"] and all(s in t[0] for s in SPLITS)]
    fate_tables = [t for t in tables if t[0] == ["fate", "images"]]
    if not class_tables:
        yield f"{CARD}: no per-class table (a header 'label | ... | train | validation | test')"
    for header, body in class_tables[:1]:
        col = {name: i for i, name in enumerate(header)}
        for cells in body:
            label = cells[0].replace("*", "")
            for s in SPLITS:
                actual = shard_split.get(s, 0) if label == "total" else shard_class.get((s, label), 0)
                if _int(cells[col[s]]) != actual:
                    yield f"{CARD}: class table, row {label}, column {s} says {cells[col[s]]}, but the shards hold {actual}"
            if "published" in col:
                actual = sum(shard_split.values()) if label == "total" else sum(shard_class.get((s, label), 0) for s in SPLITS)
                if _int(cells[col["published"]]) != actual:
                    yield f"{CARD}: class table, row {label}, column published says {cells[col['published']]}, but the shards hold {actual}"
    for _, body in fate_tables[:1]:
        for fate, n in ((c[0].replace("*", ""), c[1]) for c in body):
            actual = sum(fates.values()) if fate == "raw inputs" else fates.get(fate, 0)
            if _int(n) != actual:
                yield f"{CARD}: cleaning table, row {fate} says {n}, but {LEDGER} has {actual}"


def check_ledger(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Every raw input exactly once, with a known fate; every published row has exactly one kept entry."""
    if not view.has(LEDGER):
        yield f"{LEDGER} is missing"
        return
    entries = view.ledger
    if view.ledger_error:
        yield view.ledger_error
        return
    header = view.ledger_columns
    if tuple(header) != LEDGER_COLUMNS:
        yield f"{LEDGER}: columns are {show(header)}, expected {list(LEDGER_COLUMNS)}"
        return
    seen = Counter(e["source_file"] for e in view.ledger if e["input"] == "file")
    yield from (f"{LEDGER}: raw input {p} has {n} rows (every raw input must have exactly one)" for p, n in sorted(seen.items()) if n > 1)
    paths = {e["source_file"] for e in view.ledger}
    for number, e in enumerate(view.ledger, start=2):
        where = f"{LEDGER} line {number} ({e['source_file']})"
        if e["fate"] not in FATES:
            yield f"{where}: unknown fate {e['fate']!r}"
        if e["input"] not in ("file", "annotation_row"):
            yield f"{where}: unknown input kind {e['input']!r}"
        if (e["fate"] == "kept") != bool(e["split"] and e["image_id"]):
            yield f"{where}: a kept input needs a split and an image_id, and only a kept one has them"
        if e["fate"] == "duplicate" and e["duplicate_of"] not in paths:
            yield f"{where}: duplicate of {e['duplicate_of']!r}, which is not in the ledger"
    counts = view.manifest["counts"]
    if counts.get("raw_images") != sum(seen.values()):
        yield f"{MANIFEST}: counts.raw_images is {counts.get('raw_images')}, but {LEDGER} has {sum(seen.values())} raw files"
    kept = Counter((e["source_file"], e["image_id"], e["split"]) for e in view.ledger if e["fate"] == "kept")
    published = Counter((r.source_file, r.image_id, r.split) for r in view.rows)
    for key in sorted(set(kept) | set(published)):
        if kept[key] != published[key]:
            yield (
                f"image {key[1]} ({key[0]}, {key[2]}) is published in {published[key]} row(s) "
                f"but has {kept[key]} kept row(s) in {LEDGER}"
            )


def check_splits(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """No patient and no look-alike group in two splits: they would leak between training and evaluation."""
    for attr, what in (("patient_id", "patient"), ("group_id", "look-alike group")):
        where: dict[str, Counter] = defaultdict(Counter)
        for r in view.rows:
            if getattr(r, attr):
                where[getattr(r, attr)][r.split] += 1
        for key, splits in sorted(where.items()):
            if len(splits) > 1:
                spread = ", ".join(f"{n} in {s}" for s, n in sorted(splits.items(), key=lambda x: SPLITS.index(x[0])))
                yield f"{what} {key} is in {len(splits)} splits ({spread})"


def check_unique(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    for attr in ("image_id", "pixel_sha256"):
        seen: dict[str, list[str]] = defaultdict(list)
        for r in view.rows:
            seen[getattr(r, attr)].append(r.where())
        for key, places in sorted(seen.items()):
            if len(places) > 1:
                yield f"{attr} {key} appears {len(places)} times: {', '.join(places[:5])}"


def check_hub_limits(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    limits = opts.hub
    files = view.present + [MANIFEST]
    if len(files) > limits.max_files:
        yield f"{len(files):,} files; the Hub takes at most {limits.max_files:,} per repository"
    per_folder = Counter(str(Path(f).parent) for f in files)
    for folder, n in sorted(per_folder.items()):
        if n > limits.max_entries_per_folder:
            yield f"{folder}/ holds {n:,} files; the Hub takes at most {limits.max_entries_per_folder:,} per folder"
    for f in files:
        try:
            size = view.files.size(f, max_bytes=limits.max_file_bytes)
        except ReleaseFileError as exc:
            yield str(exc).replace("for this file", "(the Hub refuses larger files)")
            continue
    for shard in view.shard_paths:
        try:
            with view.open(shard) as fh:
                meta = parquet_metadata(fh, shard, opts.read)
        except (ReleaseFileError, Refused) as exc:
            yield str(exc)
            continue
        except Exception as exc:
            yield f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})"
            continue
        if meta.num_rows == 0:
            yield f"{shard} has no rows (`datasets` cannot load a Parquet file of no rows)"
        for g in range(meta.num_row_groups):
            size = meta.row_group(g).total_byte_size
            if size > limits.max_row_group_bytes:
                yield (
                    f"{shard} row group {g} is {size:,} bytes uncompressed; the Hub's dataset viewer refuses row groups "
                    f"over {limits.max_row_group_bytes:,}"
                )


def check_load_datasets(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The way the card tells people to load the release: `datasets.load_dataset(DIR)`, and streaming."""
    expected = {s: v.get("num_examples", 0) for s, v in view.manifest["splits"].items() if v.get("num_examples")}
    size = sum(view.files.size(p) for p in view.shard_paths)
    yield from _datasets_load_problems(view.dir, size, expected, view.class_names, "label", opts)


def _datasets_load_problems(
    root: Path, size: int, expected: dict[str, int], class_names: list[str], label: str, opts: VerifyOptions
) -> Iterator[str]:
    """load_dataset(root) and load_dataset(root, streaming=True): splits, rows, ClassLabel names, one image per row."""
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        if size <= opts.full_load_max_bytes:
            yield from _full_load(root, expected, class_names, label)
        yield from _streaming_load(root, expected, class_names, label, count_all=size > opts.full_load_max_bytes)
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()


def _image_columns(features) -> list[str]:
    import datasets

    return sorted(name for name, feature in features.items() if isinstance(feature, datasets.Image))


def _split_problems(how: str, split: str, features, rows: Iterable[dict], expected: dict[str, int], class_names: list[str], label: str) -> Iterator[str]:
    """rows: the split's image columns, undecoded. Every row must carry exactly one image."""
    images = _image_columns(features)
    if not images:
        yield f"{how}: {split} has no Image column (features: {sorted(features)})"
    if getattr(features.get(label), "names", None) != class_names:
        yield f"{how}: {split} column {label} is not a ClassLabel with the manifest's class_names"
    n = without_image = 0
    for row in rows:
        n += 1
        without_image += sum(row[c] is not None for c in images) != 1
    if n != expected[split]:
        yield f"{how}: {split} has {n} rows, the manifest says {expected[split]}"
    if images and without_image:
        yield f"{how}: {without_image} {split} row(s) without exactly one image in {images}"


def _undecoded(ds, features):
    import datasets

    for column in _image_columns(features):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds.select_columns(_image_columns(features))


def _first_image_problem(how: str, split: str, ds, features) -> Iterator[str]:
    try:
        first = next(iter(ds))
        image = next(first[c] for c in _image_columns(features) if first[c] is not None)
        image.load()
    except Exception as exc:
        yield f"{how}: first {split} image does not decode: {type(exc).__name__}: {exc}"


def _full_load(root: Path, expected: dict[str, int], class_names: list[str], label: str) -> Iterator[str]:
    import datasets

    how = f"datasets.load_dataset({str(root)!r})"
    with tempfile.TemporaryDirectory(prefix="mll23-verify-cache-") as cache:
        try:
            ds = datasets.load_dataset(str(root), cache_dir=cache)
        except Exception as exc:
            yield f"{how} fails: {type(exc).__name__}: {exc}"
            return
        if set(ds) != set(expected):
            yield f"{how} gives splits {sorted(ds)}, the manifest has {sorted(expected)}"
        for split in sorted(set(ds) & set(expected)):
            features = ds[split].features
            yield from _split_problems(how, split, features, _undecoded(ds[split], features), expected, class_names, label)
            yield from _first_image_problem(how, split, ds[split], features)
        del ds  # its Arrow files live in the cache about to be removed


def _streaming_load(root: Path, expected: dict[str, int], class_names: list[str], label: str, count_all: bool) -> Iterator[str]:
    """Streaming reads the files where they are: cheap enough to read every row of a large release."""
    import datasets

    how = f"datasets.load_dataset({str(root)!r}, streaming=True)"
    try:
        streamed = datasets.load_dataset(str(root), streaming=True)
    except Exception as exc:
        yield f"{how} fails: {type(exc).__name__}: {exc}"
        return
    if set(streamed) != set(expected):
        yield f"{how} gives splits {sorted(streamed)}, the manifest has {sorted(expected)}"
    for split in sorted(set(streamed) & set(expected)):
        features = streamed[split].features
        try:
            yield from _first_image_problem(how, split, streamed[split], features)
            if count_all:
                yield from _split_problems(how, split, features, _undecoded(streamed[split], features), expected, class_names, label)
        except Exception as exc:
            yield f"{how}: reading {split} fails: {type(exc).__name__}: {exc}"


def _parquet_truth(view: ReleaseView) -> dict[str, dict[str, int]]:
    """split -> image_id -> label, as the Parquet shards publish them."""
    truth: dict[str, dict[str, int]] = defaultdict(dict)
    for r in view.rows:
        truth[r.split][r.image_id] = r.label
    return truth


def _wds_decoder():
    """webdataset's Decoder with a handler for each member suffix of the format and nothing else: its default
    handlers (`decode("pil")` adds them) unpickle .pyd/.pickle members, load .pth with torch and gunzip .gz."""
    from webdataset.autodecode import Decoder

    def handle(key: str, data: bytes):
        suffix = key.rsplit(".", 1)[-1]
        if suffix == "cls":
            return int(data.decode("ascii"))
        if suffix == "json":
            return json.loads(data)
        if suffix in WDS_IMAGE_SUFFIXES:
            return decode_image(data)[0]
        raise Refused(f"member suffix .{suffix} is not one of the release format's")

    return Decoder([handle], pre=[], post=[])


def _wds_samples(view: ReleaseView, shards: list[str]) -> Iterator[dict]:
    """Samples of the tars as webdataset groups them, from files verify opened itself (never a URL or pattern)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    decoder = _wds_decoder()

    def sources() -> Iterator[dict]:
        for rel in shards:
            with view.open(rel) as fh:
                yield {"url": rel, "stream": fh}

    for sample in group_by_keys(tar_file_expander(sources())):
        yield decoder(sample)


def check_load_webdataset(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """wds/: `webdataset`'s tar reader over the manifest's shards, and `datasets.load_dataset(DIR/wds)` (also streaming)."""
    truth = _parquet_truth(view)
    for split, info in sorted(view.manifest["splits"].items()):
        entry = _dict(info.get("webdataset"))
        if not info.get("num_examples"):
            continue
        if entry.get("num_examples") != info["num_examples"]:
            yield f"{MANIFEST}: splits.{split}.webdataset.num_examples is {show(entry.get('num_examples'))}, the split has {info['num_examples']}"
        pattern = entry.get("pattern")
        if not pattern:
            yield f"{MANIFEST}: splits.{split}.webdataset has no brace pattern"
            continue
        shards = [s["path"] for s in _list(entry.get("shards"))]
        samples: dict[str, list[int]] = defaultdict(list)
        try:
            for sample in _wds_samples(view, shards):
                images = [sample[k] for k in WDS_IMAGE_SUFFIXES if k in sample]
                if len(images) != 1 or "cls" not in sample:
                    yield f"webdataset {pattern}: sample {show(sample.get('__key__'))} lacks one image and its cls"
                samples[sample["__key__"]].append(sample.get("cls"))
        except Exception as exc:
            yield f"webdataset {pattern}: reading the tars fails: {type(exc).__name__}: {exc}"
            continue
        if sum(len(v) for v in samples.values()) != info["num_examples"]:
            yield f"webdataset {pattern}: {sum(len(v) for v in samples.values())} samples, the manifest says {info['num_examples']}"
        for key in sorted(set(samples) ^ set(truth[split]))[:_MAX_LISTED]:
            where = "only in the tars" if key in samples else "only in the Parquet shards"
            yield f"webdataset {pattern}: sample {key} is {where}"
        for key in sorted(k for k in samples if k in truth[split] and samples[k] != [truth[split][k]])[:_MAX_LISTED]:
            yield f"webdataset {pattern}: sample {key} has cls {samples[key]}, the Parquet label is {truth[split][key]}"
    expected = {s: v.get("num_examples", 0) for s, v in view.manifest["splits"].items() if v.get("num_examples")}
    size = sum(view.files.size(p) for p in view.tar_paths)
    yield from _datasets_load_problems(view.dir / WDS_DIR, size, expected, view.class_names, "cls", opts)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """mlcroissant logs a warning per record on the root logger; a CI log of 40,000 of them hides the report."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _text(value: object) -> str:
    """mlcroissant yields text fields as bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _croissant_doc(view: ReleaseView) -> dict:
    try:
        doc = parse_json(view.read_text(CROISSANT), CROISSANT)
    except ReleaseFileError as exc:
        raise Refused(str(exc)) from None
    except ValueError as exc:  # bounded before parsing, duplicate keys refused (pipeline.untrusted.files.parse_json)
        raise Refused(str(exc)) from None
    if not isinstance(doc, dict):
        raise Refused(f"{CROISSANT} is a JSON {type(doc).__name__}, not an object")
    return doc


def _croissant_build_parts(view: ReleaseView) -> dict:
    """The parts of croissant.json that mlcroissant acts on (the JSON-LD context, the record sets with their
    regexes and column paths, the file sets with their glob patterns), as this tool writes them for the
    release's config: verify lets mlcroissant run only these, never a regex, glob or remote context from a release."""
    from pipeline.release import croissant

    if not isinstance(view.manifest.get("config"), dict):
        raise ConfigError(f"{MANIFEST} records no config")
    if "harmonised_from" in view.manifest:  # `mll23 harmonise`: per-source columns, a config of its own shape
        from pipeline.lifecycle.harmonise import add_source_fields, croissant_config_of

        config = croissant_config_of(view.manifest)
        images = add_source_fields(croissant.images_record_set(config))
    else:
        config = validate_config(view.manifest["config"], f"{MANIFEST} (config)")
        images = croissant.images_record_set(config)
    return {
        "@context": croissant.CONTEXT,
        "recordSet": [croissant.splits_record_set(), croissant.classes_record_set(config), images],
        "fileSets": [d for d in croissant.croissant_document(config, view.manifest["counts"], [])["distribution"] if d.get("@type") == "cr:FileSet"],
    }


def check_croissant(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """croissant.json: this version, every file with its sha256, and nothing for mlcroissant to run but what the
    build writes (context, record sets, file sets)."""
    try:
        doc = _croissant_doc(view)
    except Refused as exc:
        yield str(exc)
        return
    if doc.get("version") != view.manifest["version"]:
        yield f"{CROISSANT}: version is {show(doc.get('version'))}, {MANIFEST} says {view.manifest['version']}"
    distribution = _list(doc.get("distribution"))
    objects = [d for d in distribution if isinstance(d, dict) and d.get("@type") == "cr:FileObject"]
    declared = {d.get("contentUrl"): d.get("sha256") for d in objects}
    listed = {f["path"]: f["sha256"] for f in view.manifest["files"] if f["path"] not in (CROISSANT, MANIFEST)}
    for rel in sorted(set(declared) | set(listed), key=str):
        if declared.get(rel) != listed.get(rel):
            if rel not in declared:
                yield f"{CROISSANT} does not declare {show(rel)}"
            elif rel not in listed:
                yield f"{CROISSANT} declares {show(rel)}, which {MANIFEST} does not list"
            else:
                yield f"{CROISSANT}: sha256 of {show(rel)} is {show(declared[rel])}, {MANIFEST} says {listed[rel]}"
    try:
        build = _croissant_build_parts(view)
    except ConfigError as exc:
        yield f"{CROISSANT} cannot be compared with what the build writes: {exc}"
        return
    if doc.get("@context") != build["@context"]:
        yield f"{CROISSANT}: @context is not the one the build writes (a context can make JSON-LD readers fetch URLs)"
    if doc.get("recordSet") != build["recordSet"]:
        yield f"{CROISSANT}: recordSet differs from what the build writes for this config (its regexes and columns would be run)"
    others = [d for d in distribution if not (isinstance(d, dict) and d.get("@type") == "cr:FileObject")]
    if others != build["fileSets"]:
        yield f"{CROISSANT}: file sets differ from what the build writes (their glob patterns would be expanded)"
    for d in objects:
        if set(d) - _FILE_OBJECT_KEYS or not all(isinstance(v, str) for v in d.values()):
            yield f"{CROISSANT}: file object {show(d.get('contentUrl'))} has keys or values the build does not write"
    for key, value in sorted(doc.items()):
        if key in ("@context", "@type", "distribution", "recordSet"):
            continue
        # a JSON-LD node object anywhere (`@context`, `@graph`, `@included`, a nested FileObject) would be read by
        # mlcroissant's JSON-LD parser; the build writes plain text here
        if key.startswith("@") or not _plain(value):
            yield f"{CROISSANT}: {show(key)} holds more than text, which the build does not write"
    if doc.get("@type") != "sc:Dataset":
        yield f"{CROISSANT}: @type is {show(doc.get('@type'))}, expected sc:Dataset"


_FILE_OBJECT_KEYS = frozenset({"@id", "@type", "contentSize", "contentUrl", "encodingFormat", "name", "sha256", "description"})


def _plain(value: object) -> bool:
    """Text, a number or a list of those: no JSON-LD node object."""
    if isinstance(value, list):
        return all(isinstance(v, (str, int, float, bool)) for v in value)
    return isinstance(value, (str, int, float, bool)) or value is None


def check_load_croissant(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """mlcroissant reads croissant.json: one record per published image, with its label."""
    import mlcroissant as mlc

    try:
        with _quiet_logging():
            dataset = mlc.Dataset(jsonld=str(view.dir / CROISSANT))
            records = [(r["images/split"], r["images/image_id"], r["images/label"]) for r in dataset.records("images")]
    except Exception as exc:
        yield f"mlcroissant cannot read {CROISSANT}: {type(exc).__name__}: {str(exc)[:500]}"
        return
    found = {(_text(s), _text(i)): label for s, i, label in records}
    truth = {(s, i): label for s, ids in _parquet_truth(view).items() for i, label in ids.items()}
    if len(records) != len(truth):
        yield f"{CROISSANT}: record set 'images' has {len(records)} records, the shards hold {len(truth)} images"
    for key in sorted(set(found) ^ set(truth))[:_MAX_LISTED]:
        yield f"{CROISSANT}: image {key[1]} ({key[0]}) is {'only in croissant.json' if key in found else 'missing from its records'}"
    for key in sorted(k for k in found if k in truth and found[k] != truth[k])[:_MAX_LISTED]:
        yield f"{CROISSANT}: image {key[1]} has label {found[key]}, the Parquet label is {truth[key]}"


@dataclass(frozen=True)
class Check:
    name: str
    description: str
    run: Callable[[ReleaseView, VerifyOptions], Iterable[str]]
    applies: Callable[[ReleaseView], bool] = lambda view: True
    # Safety checks read the release themselves with bounded work; they run before any loader check.
    safety: bool = False
    # Loader checks hand the release to another library (datasets, webdataset, mlcroissant).
    loader: bool = False


CHECKS: tuple[Check, ...] = (
    Check("files", "every file in manifest.json present, regular, with its size and sha256; no unlisted, linked or special file",
          check_files, safety=True),
    Check("card", "the cards' YAML loads without aliases or tags; configs name only the release's shards; features of the release's types",
          check_card, safety=True),
    Check("records", "every Parquet row (sample/ too) valid against schemas/record.schema.json; images decode to their pixel_sha256; sample rows are published rows",
          check_records, safety=True),
    Check("wds-tars", "the tars are the manifest's, uncompressed, with members <key>.cls/.json/.png within their size limits",
          check_webdataset_tars, lambda view: bool(view.tar_paths), safety=True),
    Check("croissant", "croissant.json: this version, every file with its sha256, what mlcroissant runs as the build writes it",
          check_croissant, lambda view: view.has(CROISSANT), safety=True),
    Check("version", "one semantic version in manifest, config, card and notes; the card's links resolve", check_version),
    Check("counts", "counts in the card (YAML and tables), manifest, ledger and shards agree", check_counts),
    Check("ledger", "the ledger accounts for every raw input once and for every published row", check_ledger),
    Check("splits", "no patient or look-alike group in two splits", check_splits),
    Check("unique", "no image_id (or pixel_sha256) twice", check_unique),
    Check("hub-limits", "files, folders, shards and row groups within the Hub's limits", check_hub_limits),
    Check("load-datasets", "datasets.load_dataset reads the release (also streaming)", check_load_datasets, loader=True),
    Check("load-webdataset", "wds/ reads with webdataset's tar reader and datasets, matching the Parquet shards",
          check_load_webdataset, lambda view: bool(view.tar_paths), loader=True),
    Check("load-croissant", "croissant.json loads with mlcroissant: one record per image, with its label",
          check_load_croissant, lambda view: view.has(CROISSANT), loader=True),
)


def _run(check: Check, view: ReleaseView, opts: VerifyOptions) -> CheckResult:
    result = CheckResult(check.name, check.description)
    try:
        result.failures = _capped(check.name, check.run(view, opts))
    except Exception as exc:  # a check that cannot finish is a failed check, reported like the others
        result.failures.append(Failure(check.name, printable(f"could not complete: {type(exc).__name__}: {exc}", limit=_MESSAGE_CHARS)))
    return result


def run_checks(
    release_dir: Path,
    *,
    rebuild_raw: Path | None = None,
    previous: Path | None = None,
    workers: int | None = None,
    limits: HubLimits | None = None,
    skip: Iterable[str] = (),
    notes_dir: Path | None = None,
    full_load_max_bytes: int | None = None,
    read_limits: ReadLimits | None = None,
) -> list[CheckResult]:
    """Every applicable check, in order, with its failures (none: it passed). The loader checks run only when
    every check before them passed; `skip` names checks the caller has done itself (publish runs the file check
    with hard links refused) or does not want, and skipping a safety check leaves its guarantee to the caller."""
    opts = VerifyOptions(hub=limits or HubLimits(), read=read_limits or ReadLimits())
    if full_load_max_bytes is not None:
        opts = VerifyOptions(hub=opts.hub, full_load_max_bytes=full_load_max_bytes, read=opts.read)
    view = ReleaseView(Path(release_dir), opts.read)
    try:
        os.close(view.files.root_fd())
        view.manifest
    except (ManifestUnreadable, ReleaseFileError) as exc:
        return [CheckResult("manifest", "manifest.json present, readable and of the manifest schema",
                            [Failure("manifest", printable(str(exc), limit=_MESSAGE_CHARS))])]
    skip = set(skip)
    results: list[CheckResult] = []
    for check in CHECKS:
        if check.name in skip or not check.applies(view):
            continue
        if check.loader and any(r.failures for r in results):
            failed = ", ".join(r.name for r in results if r.failures)
            results.append(CheckResult(check.name, check.description, skipped=f"not run: the release failed {failed}"))
            continue
        results.append(_run(check, view, opts))
    if notes_dir is not None:
        result = CheckResult("notes-copy", f"the release notes equal the editable copy in {notes_dir}")
        result.failures = _capped("notes-copy", notes_copy_differences(view, Path(notes_dir)))
        results.append(result)
    if rebuild_raw is not None:
        result = CheckResult("rebuild", f"a rebuild from {rebuild_raw} is byte-identical")
        result.failures = _capped("rebuild", rebuild_differences(view, Path(rebuild_raw), previous, workers))
        results.append(result)
    return results


def verify_release(release_dir: Path, **options) -> list[Failure]:
    """All failures of a release; empty when it passes. Options as for `run_checks`."""
    return [f for result in run_checks(release_dir, **options) for f in result.failures]


def notes_copy_differences(view: ReleaseView, notes_dir: Path) -> Iterator[str]:
    """The maintainers edit notes_dir/vX.Y.Z.md; the release carries what they wrote at build time."""
    rel = view.manifest.get("release_notes")
    if not rel:
        yield f"{MANIFEST} names no release notes"
        return
    if relpath_problem(rel):
        yield f"{MANIFEST}: release_notes {show(rel)} is not a path inside the release"
        return
    name = rel.rsplit("/", 1)[-1]
    editable = notes_dir / name
    try:  # the notes directory is in the same repository as the release, so it is read the same way
        theirs = ReleaseDir(notes_dir).read_bytes(name, max_bytes=NOTES_CAP)
    except ReleaseFileError as exc:
        yield f"{editable} is missing or not readable ({exc}); the release carries {show(rel)}: keep its editable copy there"
        return
    try:
        same = view.files.read_bytes(rel, max_bytes=NOTES_CAP) == theirs
    except ReleaseFileError:
        same = False
    if not same:
        yield f"{editable} differs from {show(rel)} in the release: rebuild the release so that it carries the edited notes"


# ---- --rebuild RAW ---------------------------------------------------------------------------------------


def _manifest_sha256(release_dir: Path) -> str | None:
    """sha256 of a release's manifest.json, read like any release file (siblings come from the same pull request)."""
    try:
        return ReleaseDir(release_dir).hash(MANIFEST, max_bytes=fixed_cap(MANIFEST))[1]
    except (ReleaseFileError, OSError):
        return None


def find_previous(view: ReleaseView, previous: Path | None) -> tuple[Path | None, str | None]:
    """The release this one was built on: the given directory, or a sibling whose manifest has the recorded sha256."""
    ref = view.manifest.get("previous")
    if not ref:
        return None, None
    if previous is not None:
        if _manifest_sha256(Path(previous)) != ref["manifest_sha256"]:
            return None, (
                f"--previous {previous} is not the release this one was built on "
                f"(v{ref['version']}, manifest sha256 {ref['manifest_sha256'][:16]}...)"
            )
        return Path(previous), None
    for sibling in sorted(view.dir.resolve().parent.iterdir()):
        if sibling != view.dir.resolve() and sibling.is_dir() and not sibling.is_symlink() and _manifest_sha256(sibling) == ref["manifest_sha256"]:
            return sibling, None
    return None, (
        f"this release was built on v{ref['version']} (manifest sha256 {ref['manifest_sha256'][:16]}...), "
        "which is not beside it; pass --previous with that release's directory"
    )


def rebuild_differences(view: ReleaseView, raw: Path, previous: Path | None, workers: int | None) -> Iterator[str]:
    config_doc = view.manifest.get("config")
    if config_doc is None:
        yield f"{MANIFEST} does not record the config it was built with, so it cannot be rebuilt"
        return
    try:
        config = validate_config(config_doc, f"{view.dir / MANIFEST} (config)")
    except ConfigError as exc:
        yield str(exc)
        return
    prev_dir, problem = find_previous(view, previous)
    if problem:
        yield problem
        return
    with tempfile.TemporaryDirectory(prefix="mll23-rebuild-") as tmp:
        notes_copy = Path(tmp) / "notes"
        # the maintainers' words come from the release's own notes, so the rebuild writes the same notes
        notes_copy.mkdir()
        for rel in view.present:
            if rel.startswith(f"{NOTES_DIR}/") and rel.count("/") == 1:
                try:
                    (notes_copy / rel.split("/", 1)[1]).write_bytes(view.files.read_bytes(rel, max_bytes=NOTES_CAP))
                except ReleaseFileError as exc:
                    yield str(exc)
                    return
        out = Path(tmp) / "release"
        try:
            build_release(raw, out, config, workers=workers, previous=prev_dir, notes_dir=notes_copy)
        except (BuildError, AncestryError, NotesError, FileNotFoundError) as exc:
            yield f"the rebuild from {raw} failed: {exc}"
            return
        # another raw input explains every difference below: say that first, not as one more differing file
        recorded = view.manifest.get("raw_fingerprint")
        rebuilt = json.loads((out / MANIFEST).read_text(encoding="utf-8")).get("raw_fingerprint")
        if recorded != rebuilt:
            yield (f"{raw} is not the raw input this release was built from: its raw_fingerprint is"
                   f" {str(rebuilt)[:16]}..., {MANIFEST} records {show(recorded)[:16]}... (the files that differ follow)")
        ours, theirs = set(view.present) | {MANIFEST}, set(list_release_files(out)) | {MANIFEST}
        for rel in sorted(ours - theirs):
            yield f"{rel} is in the release but not in the rebuild"
        for rel in sorted(theirs - ours):
            yield f"{rel} is in the rebuild but not in the release"
        for rel in sorted(ours & theirs):
            if view.files.hash(rel, max_bytes=MAX_LISTED_FILE_BYTES)[1] != sha256_file(out / rel):
                yield f"{rel} differs from the rebuild from {raw}"


def verify_messages(release_dir: Path, **options) -> list[str]:
    """The failures as text, one per problem ('[check] message'): what `mll23 publish` refuses a release for."""
    return [str(f) for f in verify_release(release_dir, **options)]
