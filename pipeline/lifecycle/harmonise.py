"""A harmonised multi-source release built from several releases (MLL23, Matek 2019, Acevedo 2020, ...).

`mll23 harmonise REL... --map MAP.csv --out DIR` makes one dataset of the sources' shared classes for
domain generalisation (the MLL23 paper's sibling datasets, doi 10.1038/s41597-025-06223-x):

- every source release is checked first (files and sha256, every image against its pixel_sha256, unique
  ids): a release is untrusted input, and the pixel hashes are what the cross-source check relies on;
- the map (CSV: `harmonised`, then `<source>_label` per source, named by the dataset's own class names, e.g.
  Matek's NGS; the shipped one is the paper's 11 classes) gives each source class its harmonised class;
  images of classes the map leaves out get an `excluded` ledger row each;
- the same image in two sources (identical pixels, or a pHash near-duplicate confirmed on pixels by
  similarity.compare_duplicate) is kept once: lossless copies first, then the source given first on the command
  line; the other copy gets a `duplicate` ledger row naming the kept one, so no leave-one-source-out
  evaluation tests on an image it trained on;
- each kept image keeps its source's split, its bytes (never re-encoded), its image_id and its original
  label (`original_label`: the source release's class; `original_name`: the dataset's own name);
- shards are `data/{split}-{i:05d}-of-{n:05d}.parquet`, one source per shard, so the card's configs can
  name a source's files: `default` (all sources, their own splits), one per source, and `loso_<source>`
  (train and validation: the other sources; test: every image of the held-out source);
- manifest.json, ledger.csv, README.md (with a class x source table), croissant.json and release notes are
  written as for any release, so `mll23 verify` checks it like any other.

Memory stays bounded: metadata is read first, image bytes one source row group at a time.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.release import manifest as manifest_mod
from pipeline.stages import neardup
from pipeline.lifecycle import notes
from pipeline.release.card import fill_template, size_category, yaml_header
from pipeline.config import LABEL_PATTERN, SPLITS, ConfigError, ReleaseConfig
from pipeline.release.croissant import croissant_document
from pipeline.stages.decode import open_rgb
from pipeline.lifecycle.diff import markdown_table
from pipeline.stages.similarity import compare_duplicate
from pipeline.stages.imagecheck import ImageRejected
from pipeline.release.parquet import SCHEMA_FIELDS, STRING_COLUMNS, hf_features
from pipeline.records import FATES, ClassCount, HarmonisedCounts, LedgerEntry, SplitCount
from pipeline.untrusted.files import ReleaseDir, load_manifest
from pipeline.release.layout import (
    CARD,
    CROISSANT,
    DATA_DIR,
    LEDGER,
    MANIFEST,
    PARQUET_SHARD,
    ManifestError,
    dumps_json,
    file_entries,
    parquet_shard_name,
    sha256_file,
    write_manifest,
)
from pipeline.resources import harmonised_map_path

# Columns a harmonised release adds to every release's columns.
SOURCE_FIELDS = [("source", pa.string()), ("original_label", pa.string()), ("original_name", pa.string())]
_SHARD = PARQUET_SHARD
_SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_MAX_MAP_BYTES = 1_000_000  # a map of a few dozen classes is a few kB
_CHECKS_OF_SOURCES = ("files", "records", "unique", "ledger")
PHASH_THRESHOLD = 4  # the pHash radius of the sources' own dedup (configs' dedup.phash_threshold)
_LOSSLESS_SUFFIXES = (".tif", ".tiff", ".png")
_META = ["image_id", "label", "source_file", "patient_id", "annotator", "group_id", "pixel_sha256", "phash", "extra"]


class HarmoniseError(ValueError):
    """A problem with a source release or the map, naming the file, row or key and what to change."""


@dataclass(frozen=True)
class Source:
    name: str
    dir: Path
    version: str
    class_names: list[str]
    own_name: dict[str, str]  # label -> the dataset's own name for it (its folder alias, else the label)
    license: str
    image_size: tuple[int, int]
    shards: dict[str, list[str]]  # split -> shard paths, as its manifest lists them
    release_date: str


@dataclass(frozen=True)
class LabelMap:
    classes: list[str]  # harmonised class names, in the map's row order (the ClassLabel order)
    by_source: dict[str, dict[str, str]]  # source -> own name -> harmonised class
    sha256: str


@dataclass
class Item:
    """One published image of a source release (metadata only; the bytes stay in the source's shard)."""

    source: str
    split: str
    shard: str
    index: int  # row index in the shard
    label: str  # the source release's class
    own_name: str
    harmonised: str | None
    image_id: str
    pixel_sha256: str
    phash: str
    source_file: str
    suffix: str
    fate: str = "kept"
    reason: str = ""
    duplicate_of: str | None = None

    @property
    def path(self) -> str:
        """Its path in the harmonised release's ledger: unique across sources."""
        return f"{self.source}/{self.source_file}"


@dataclass(frozen=True)
class CrossDuplicate:
    kept: str  # ledger path of the kept copy
    dropped: str
    kind: str  # "exact" or "near_duplicate"
    hamming: int


@dataclass
class HarmoniseReport:
    out: Path
    counts: HarmonisedCounts
    duplicates: list[CrossDuplicate] = field(default_factory=list)
    per_source: dict[str, Counter] = field(default_factory=dict)  # source -> fate -> images


# ---- sources and map ------------------------------------------------------------------------------------


def _source_problems(path: Path) -> list[str]:
    from pipeline.lifecycle.verify import CHECKS, run_checks  # verify imports many readers; load it only when harmonising

    linked = [p.relative_to(path).as_posix() for p in sorted(path.rglob("*")) if p.is_symlink()]
    if linked:
        # a release that links elsewhere could carry any local file into a public harmonised release
        return [f"symbolic link {p}: a release holds its own files; copy the target in or rebuild" for p in linked]
    skip = [c.name for c in CHECKS if c.name not in _CHECKS_OF_SOURCES]
    return [f"{r.name}: {f.message}" for r in run_checks(path, skip=skip) for f in r.failures]


def _own_names(doc: dict, where: Path) -> dict[str, str]:
    """label -> the dataset's own name for it, from the config the source release records (folder aliases)."""
    classes = (doc.get("config") or {}).get("classes") or []
    try:
        alias = {str(c["label"]): str(c.get("folder", c["label"])) for c in classes}
    except (TypeError, KeyError):
        raise HarmoniseError(f"{where}: config.classes is not a list of tables with a label; rebuild the release") from None
    own = {label: alias.get(label, label) for label in doc["class_names"]}
    unprintable = sorted(n for n in own.values() if not n.isprintable() or not n.strip())
    if unprintable:
        raise HarmoniseError(f"{where}: class names {[repr(n) for n in unprintable]} are empty or hold control characters; rebuild the release")
    clashing = sorted({n for n in own.values() if list(own.values()).count(n) > 1})
    if clashing:
        raise HarmoniseError(f"{where}: the class names {clashing} stand for more than one class; rebuild the release with distinct folder names")
    return own


def _image_size(doc: dict, where: Path) -> tuple[int, int]:
    image = (doc.get("config") or {}).get("image") or {}
    try:
        return int(image.get("width", 0)), int(image.get("height", 0))
    except (TypeError, ValueError):
        raise HarmoniseError(f"{where}: config.image width/height are not integers; rebuild the release") from None


def _shards(doc: dict) -> dict[str, list[str]]:
    """split -> the Parquet shards the release holds: every listed data file (the verified file list, so no
    shard is left out even where splits.*.parquet would omit it)."""
    paths = sorted(str(f.get("path", "")) for f in doc["files"])
    return {s: [p for p in paths if _SHARD.match(p) and p.startswith(f"{DATA_DIR}/{s}-")] for s in SPLITS}


def open_source(path: Path) -> Source:
    """A source release, checked; HarmoniseError saying what is wrong with it."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        raise HarmoniseError(f"{path}: no {MANIFEST}; give release directories (built with `mll23 build`), not raw archives")
    problems = _source_problems(path)
    if problems:
        listed = "\n  ".join(problems[:20])
        raise HarmoniseError(f"{path}: the release does not verify, so it cannot be a source (run `mll23 verify {path}`):\n  {listed}")
    where = path / MANIFEST
    try:  # read as verify reads it: no link, size-capped, the manifest schema
        doc = load_manifest(ReleaseDir(path))
    except ManifestError as exc:
        raise HarmoniseError(f"{path}: {exc}") from None
    name = str(doc.get("name", ""))
    if not _SOURCE_NAME.match(name):
        raise HarmoniseError(f"{where}: name {name!r} is not a dataset name (lower-case letters, digits, '_', '.', '-')")
    return Source(
        name=name,
        dir=path,
        version=str(doc["version"]),
        class_names=list(doc["class_names"]),
        own_name=_own_names(doc, where),
        license=str((doc.get("config") or {}).get("license", "other")),
        image_size=_image_size(doc, where),
        shards=_shards(doc),
        release_date=str(doc.get("release_date", "")),
    )


def _read_map_rows(path: Path) -> tuple[list[dict[str, str]], str]:
    """The map's rows and the sha256 of its bytes; refuses what is not a small UTF-8 CSV."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HarmoniseError(f"--map {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > _MAX_MAP_BYTES:
        raise HarmoniseError(f"--map {path}: {len(data):,} bytes; a label map is a small CSV (at most {_MAX_MAP_BYTES:,} bytes)")
    try:
        rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise HarmoniseError(f"--map {path}: not a UTF-8 CSV file ({exc})") from None
    return rows, hashlib.sha256(data).hexdigest()


def _map_source_cell(path: Path, line: int, source: Source, own: str, target: str, mapped: dict[str, str]) -> None:
    known = sorted(source.own_name.values())
    if own not in known:
        raise HarmoniseError(
            f"--map {path} line {line}: {source.name}_label {own!r} is not a class of release {source.name} "
            f"(its classes, by the dataset's own names: {', '.join(known)})"
        )
    if own in mapped:
        raise HarmoniseError(f"--map {path} line {line}: {source.name}_label {own!r} is mapped twice ({mapped[own]!r} and {target!r})")
    mapped[own] = target


def read_map(path: Path, sources: list[Source]) -> LabelMap:
    """The harmonised label map; every error names the file, the row or column and what to change."""
    path = Path(path)
    rows, digest = _read_map_rows(path)
    header = list(rows[0]) if rows else []
    missing = [c for c in ["harmonised"] + [f"{s.name}_label" for s in sources] if c not in header]
    if missing:
        raise HarmoniseError(
            f"--map {path}: missing column(s) {missing}; the map needs 'harmonised' and '<source>_label' for every source "
            f"release given (their manifest names: {', '.join(s.name for s in sources)})"
        )
    classes: list[str] = []
    by_source: dict[str, dict[str, str]] = {s.name: {} for s in sources}
    for line, row in enumerate(rows, start=2):
        target = (row.get("harmonised") or "").strip()
        if not re.match(LABEL_PATTERN, target):
            raise HarmoniseError(f"--map {path} line {line}: harmonised class {target!r} does not match {LABEL_PATTERN} (lower-case letters, digits, underscores)")
        if target in classes:
            raise HarmoniseError(f"--map {path} line {line}: harmonised class {target!r} is listed twice; one row per class")
        classes.append(target)
        for source in sources:
            own = (row.get(f"{source.name}_label") or "").strip()
            if own:
                _map_source_cell(path, line, source, own, target, by_source[source.name])
    if len(classes) < 2:
        raise HarmoniseError(f"--map {path}: {len(classes)} harmonised class(es); a classification dataset needs at least 2")
    return LabelMap(classes, by_source, digest)


# ---- what each source holds ---------------------------------------------------------------------------


def read_items(source: Source, label_map: LabelMap) -> list[Item]:
    """Every published image of a source with its harmonised class (None: outside the map)."""
    items = []
    for split in SPLITS:
        for shard in source.shards[split]:
            table = pq.read_table(source.dir / shard, columns=[*_META, "image.path"])  # not the image bytes
            paths = table.column("path").to_pylist()
            for index, (row, image_path) in enumerate(zip(table.select(_META).to_pylist(), paths)):
                label = source.class_names[row["label"]]
                own = source.own_name[label]
                items.append(
                    Item(
                        source=source.name,
                        split=split,
                        shard=shard,
                        index=index,
                        label=label,
                        own_name=own,
                        harmonised=label_map.by_source[source.name].get(own),
                        image_id=row["image_id"],
                        pixel_sha256=row["pixel_sha256"],
                        phash=row["phash"],
                        source_file=row["source_file"],
                        suffix=Path(image_path or "").suffix.lower(),
                    )
                )
    return items


def _exclude_unmapped(items: list[Item]) -> None:
    for item in items:
        if item.harmonised is None:
            item.fate = "excluded"
            item.reason = f"class {item.own_name!r} of {item.source} has no harmonised class in the map"


def _preference(item: Item, order: dict[str, int]) -> tuple:
    # Lossless copies keep the scanned pixels exactly; among equals the source given first wins, so the
    # choice is the user's and stable from run to run.
    return (item.suffix not in _LOSSLESS_SUFFIXES, order[item.source], item.source_file)


def _image_bytes(source_dirs: dict[str, Path], item: Item) -> bytes:
    """One image's bytes, reading only the row group that holds it (a shard may be hundreds of MB)."""
    parquet = pq.ParquetFile(source_dirs[item.source] / item.shard)
    first_row = 0
    for g in range(parquet.num_row_groups):
        rows = parquet.metadata.row_group(g).num_rows
        if item.index < first_row + rows:
            return parquet.read_row_group(g, columns=["image"]).column("image")[item.index - first_row].as_py()["bytes"]
        first_row += rows
    raise HarmoniseError(f"{item.source}: {item.shard} has no row {item.index}")


def _pixels(source_dirs: dict[str, Path], sizes: dict[str, tuple[int, int]], item: Item) -> np.ndarray | None:
    try:
        return open_rgb(_image_bytes(source_dirs, item), sizes[item.source])[1]
    except ImageRejected:
        return None


class _Groups:
    """Union-find over item indices: images found to be one image end in one group."""

    def __init__(self, n: int) -> None:
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(b)] = self.find(a)

    def members(self) -> list[list[int]]:
        groups: dict[int, list[int]] = defaultdict(list)
        for i in range(len(self.parent)):
            groups[self.find(i)].append(i)
        return list(groups.values())


def _exact_pairs(live: list[Item]) -> Iterator[tuple[int, int]]:
    first_of: dict[str, int] = {}
    for i, item in enumerate(live):
        j = first_of.setdefault(item.pixel_sha256, i)
        if j != i and live[j].source != item.source:
            yield j, i


def _near_pairs(live: list[Item], sources: list[Source], phash_threshold: int) -> Iterator[tuple[int, int]]:
    """(a, b) of images of two sources with the same size whose pixels confirm one scan."""
    dirs = {s.name: s.dir for s in sources}
    sizes = {s.name: s.image_size for s in sources}
    hashes = [int(item.phash, 16) for item in live]
    for a, b in neardup.near_pairs(hashes, phash_threshold).tolist():
        ia, ib = live[a], live[b]
        if ia.source == ib.source or ia.pixel_sha256 == ib.pixel_sha256 or sizes[ia.source] != sizes[ib.source]:
            continue  # same source: its own build decided; same pixels: found exactly; other size: not one scan
        pixels_a, pixels_b = _pixels(dirs, sizes, ia), _pixels(dirs, sizes, ib)
        if pixels_a is not None and pixels_b is not None and compare_duplicate(pixels_a, pixels_b).duplicate:
            yield a, b


def _phash_distance(a: Item, b: Item) -> int:
    return (int(a.phash, 16) ^ int(b.phash, 16)).bit_count()


def _mark_copies(live: list[Item], members: list[int], order: dict[str, int]) -> list[CrossDuplicate]:
    """Keep the preferred copy of one image found in several sources; the others become its duplicates."""
    winner = min(members, key=lambda i: _preference(live[i], order))
    kept = live[winner]
    found = []
    for i in sorted(members, key=lambda i: live[i].path):
        if live[i].source == kept.source:
            continue  # a source's own look-alikes stay as its build left them
        exact = live[i].pixel_sha256 == kept.pixel_sha256
        distance = _phash_distance(live[i], kept)
        what = "the same pixels as" if exact else f"a near-duplicate (pHash distance {distance}, confirmed on pixels) of"
        live[i].fate, live[i].duplicate_of = "duplicate", kept.path
        live[i].reason = (
            f"cross-source duplicate: {what} {kept.path} (image {kept.image_id}), which is kept: "
            "lossless copies first, then the source given first"
        )
        found.append(CrossDuplicate(kept.path, live[i].path, "exact" if exact else "near_duplicate", distance))
    return found


def find_cross_source_duplicates(items: list[Item], sources: list[Source], phash_threshold: int = PHASH_THRESHOLD) -> list[CrossDuplicate]:
    """The same image in two sources: identical pixels, or a pHash near-duplicate confirmed on the pixels
    (similarity.compare_duplicate). Every copy but the preferred one becomes a duplicate of it; returns those."""
    live = [i for i in items if i.fate == "kept"]
    groups = _Groups(len(live))
    for a, b in _exact_pairs(live):
        groups.join(a, b)
    for a, b in _near_pairs(live, sources, phash_threshold):
        groups.join(a, b)
    order = {s.name: i for i, s in enumerate(sources)}
    found = [d for members in groups.members() if len({live[i].source for i in members}) > 1 for d in _mark_copies(live, members, order)]
    return sorted(found, key=lambda d: d.dropped)


# ---- writing ----------------------------------------------------------------------------------------------


def arrow_schema(class_names: list[str]) -> pa.Schema:
    """The release's columns plus the source columns; `datasets` restores Image and ClassLabel from the metadata."""
    features = hf_features(class_names)
    for name, _ in SOURCE_FIELDS:
        features[name] = {"dtype": "string", "_type": "Value"}
    meta = {b"huggingface": json.dumps({"info": {"features": features}}, sort_keys=True).encode()}
    return pa.schema(SCHEMA_FIELDS + SOURCE_FIELDS, metadata=meta)


def _namespaced(source: str, value: str | None) -> str | None:
    return None if value is None else f"{source}:{value}"


def _group_id(source: str, group: str) -> str:
    # Look-alike groups are per source; a fresh 16-hex id keeps two sources' groups apart.
    return hashlib.sha256(f"{source}:{group}".encode()).hexdigest()[:16]


def _rows_for(table: pa.Table, keep: list[int], item_of: dict[int, Item], class_index: dict[str, int], schema: pa.Schema) -> pa.Table:
    rows = table.take(pa.array(keep, pa.int64())).to_pylist()
    cols: dict[str, list] = {name: [] for name in schema.names}
    for index, row in zip(keep, rows):
        item = item_of[index]
        row["label"] = class_index[item.harmonised]
        row["source_file"] = item.path
        row["patient_id"] = _namespaced(item.source, row["patient_id"])
        row["group_id"] = _group_id(item.source, row["group_id"])
        row["source"], row["original_label"], row["original_name"] = item.source, item.label, item.own_name
        for name in schema.names:
            cols[name].append(row.get(name))
    return pa.Table.from_pydict(cols, schema=schema)


@dataclass
class _ShardOut:
    split: str
    source: str
    tmp: Path
    rows: int = 0
    bytes: int = 0


def _write_split(staging: Path, split: str, sources: list[Source], items_by_shard: dict[tuple[str, str], list[Item]], label_map: LabelMap, max_shard_bytes: int) -> list[_ShardOut]:
    """One split's shards: one source per shard, in the sources' order, streamed a source row group at a time."""
    schema = arrow_schema(label_map.classes)
    class_index = {c: i for i, c in enumerate(label_map.classes)}
    compression = {name: "zstd" for name in ["image.path", "label", *STRING_COLUMNS, *(n for n, _ in SOURCE_FIELDS)]}
    compression["image.bytes"] = "none"
    shards: list[_ShardOut] = []
    writer: pq.ParquetWriter | None = None
    for source in sources:
        for shard in source.shards[split]:
            item_of = {i.index: i for i in items_by_shard.get((source.name, shard), []) if i.fate == "kept"}
            if not item_of:
                continue
            parquet = pq.ParquetFile(source.dir / shard)
            first_row = 0  # shard row index of the row group's first row
            for g in range(parquet.num_row_groups):
                table = parquet.read_row_group(g, columns=schema.names[: len(SCHEMA_FIELDS)])
                here = {k: item_of[first_row + k] for k in range(table.num_rows) if first_row + k in item_of}
                first_row += table.num_rows
                if not here:
                    continue
                out = _rows_for(table, sorted(here), here, class_index, schema)
                size = sum(len(b or b"") for b in out.column("image").combine_chunks().field("bytes").to_pylist())
                current = shards[-1] if shards else None
                if writer is None or current.source != source.name or (current.bytes + size > max_shard_bytes and current.rows):
                    if writer is not None:
                        writer.close()
                    shards.append(_ShardOut(split, source.name, staging / DATA_DIR / f".{split}-{len(shards):05d}.partial"))
                    writer = pq.ParquetWriter(shards[-1].tmp, schema, compression=compression, use_dictionary=STRING_COLUMNS, write_statistics=[*STRING_COLUMNS, "label"])
                writer.write_table(out, row_group_size=out.num_rows)
                shards[-1].rows += out.num_rows
                shards[-1].bytes += size
    if writer is not None:
        writer.close()
    return shards


def _name_shards(shards: list[_ShardOut]) -> dict[str, list[tuple[str, _ShardOut]]]:
    """Final names data/{split}-{i:05d}-of-{n:05d}.parquet; split -> [(path, shard)]."""
    named: dict[str, list[tuple[str, _ShardOut]]] = {s: [] for s in SPLITS}
    for split in SPLITS:
        mine = [s for s in shards if s.split == split]
        for i, shard in enumerate(mine):
            rel = f"{DATA_DIR}/{parquet_shard_name(split, i, len(mine))}"
            os.replace(shard.tmp, shard.tmp.parent / Path(rel).name)
            named[split].append((rel, shard))
    return named


# ---- counts, ledger, card ---------------------------------------------------------------------------------


def compute_counts(items: list[Item], classes: list[str], sources: list[Source]) -> HarmonisedCounts:
    kept = [i for i in items if i.fate == "kept"]
    fates = Counter(i.fate for i in items)
    per_source = {
        s.name: {c: sum(1 for i in kept if i.source == s.name and i.harmonised == c) for c in classes} for s in sources
    }
    return HarmonisedCounts(
        raw_images=len(items),
        annotation_rows_without_file=0,
        ledger_total=len(items),
        ledger={f: fates.get(f, 0) for f in FATES},
        per_class={c: ClassCount(sum(1 for i in items if i.harmonised == c), sum(1 for i in kept if i.harmonised == c)) for c in classes},
        splits={s: SplitCount(sum(1 for i in kept if i.split == s), dict(Counter(i.harmonised for i in kept if i.split == s))) for s in SPLITS},
        per_source=per_source,
        per_source_split={s.name: {sp: sum(1 for i in kept if i.source == s.name and i.split == sp) for sp in SPLITS} for s in sources},
    )


def ledger_entries(items: list[Item]) -> list[LedgerEntry]:
    return [
        LedgerEntry(
            relpath=i.path,
            label=i.own_name,
            fate=i.fate,
            reason=i.reason or f"harmonised class {i.harmonised} (from {i.source} class {i.own_name!r})",
            duplicate_of=i.duplicate_of,
            split=i.split if i.fate == "kept" else None,
            image_id=i.image_id if i.fate == "kept" else None,
            sha256=None,
        )
        for i in items
    ]


def _configs(named: dict[str, list[tuple[str, _ShardOut]]], sources: list[Source]) -> list[dict]:
    """The card's configs: default (every source, its own splits), one per source, and leave-one-source-out."""

    def files(keep) -> list[str]:
        return [rel for split in SPLITS for rel, shard in named[split] if keep(split, shard)]

    configs = [{"config_name": "default", "default": True, "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*.parquet"} for s in SPLITS if named[s]]}]
    for src in sources:
        data_files = [{"split": s, "path": [rel for rel, sh in named[s] if sh.source == src.name]} for s in SPLITS]
        configs.append({"config_name": src.name, "data_files": [d for d in data_files if d["path"]]})
    for held in sources:
        loso = [
            {"split": "train", "path": files(lambda s, sh: s == "train" and sh.source != held.name)},
            {"split": "validation", "path": files(lambda s, sh: s == "validation" and sh.source != held.name)},
            {"split": "test", "path": files(lambda s, sh: sh.source == held.name)},
        ]
        configs.append({"config_name": f"loso_{held.name}", "data_files": [d for d in loso if d["path"]]})
    return configs


def pretty_name(sources: list[Source]) -> str:
    return f"Harmonised single-cell blood images ({', '.join(s.name for s in sources)})"


def card_header(sources: list[Source], classes: list[str], counts: HarmonisedCounts, configs: list[dict], split_bytes: dict[str, int]) -> dict:
    """The card's YAML: the sources' licences, the configs, and the features and split sizes `datasets` checks."""
    licenses = sorted({s.license for s in sources})
    return {
        "license": licenses[0] if len(licenses) == 1 else licenses,
        "pretty_name": pretty_name(sources),
        "task_categories": ["image-classification"],
        "size_categories": [size_category(counts.kept)],
        "tags": ["biology", "medical", "hematology", "microscopy", "blood-smear", "single-cell", "domain-generalization"],
        "configs": configs,
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {str(i): c for i, c in enumerate(classes)}}}},
                *({"name": c, "dtype": "string"} for c in [*STRING_COLUMNS, *(n for n, _ in SOURCE_FIELDS)]),
            ],
            "splits": [{"name": s, "num_bytes": split_bytes.get(s, 0), "num_examples": counts.splits[s].total} for s in SPLITS if counts.splits[s].total],
            "download_size": sum(split_bytes.values()),
            "dataset_size": sum(split_bytes.values()),
        },
    }


def card_tables(sources: list[Source], label_map: LabelMap, counts: HarmonisedCounts) -> dict[str, str]:
    """The card's tables: classes per source, per split (the table `mll23 verify` checks), the map, the fates."""
    classes, splits, per_source, fates = label_map.classes, counts.splits, counts.per_source, counts.ledger
    class_rows = [[c, *(splits[s].of(c) for s in SPLITS), counts.per_class[c].kept] for c in classes]
    class_rows.append(["**total**", *(splits[s].total for s in SPLITS), fates["kept"]])
    source_rows = [[c, *(per_source[s.name][c] for s in sources), counts.per_class[c].kept] for c in classes]
    source_rows.append(["**total**", *(sum(per_source[s.name].values()) for s in sources), fates["kept"]])
    map_rows = [[c, *(", ".join(sorted(o for o, h in label_map.by_source[s.name].items() if h == c)) or "-" for s in sources)] for c in classes]
    fate_rows = [[f, fates[f]] for f in ("kept", "duplicate", "excluded")] + [["**raw inputs**", counts.ledger_total]]
    return {
        "per_source": markdown_table(["harmonised class", *(s.name for s in sources), "total"], source_rows),
        "per_split": markdown_table(["label", *SPLITS, "published"], class_rows),
        "map": markdown_table(["harmonised class", *(s.name for s in sources)], map_rows),
        "fates": markdown_table(["fate", "images"], fate_rows),
    }


def _duplicates_sentence(duplicates: list[CrossDuplicate]) -> str:
    if not duplicates:
        return "No image was found in two sources."
    return f"{len(duplicates)} image(s) were found in two sources and kept once (see `ledger.csv`, fate `duplicate`)."


def card_fields(version: str, release_date: str, sources: list[Source], label_map: LabelMap, counts: HarmonisedCounts, duplicates: list[CrossDuplicate]) -> dict[str, str]:
    """What pipeline/templates/harmonised_card.md is filled with: the sources, their configs and the tables."""
    return {
        "pretty_name": pretty_name(sources),
        "version": version,
        "release_date": release_date,
        "class_count": str(len(label_map.classes)),
        "source_list": "\n".join(f"- `{s.name}` v{s.version} ({s.image_size[0]} x {s.image_size[1]} px, licence {s.license})" for s in sources),
        "first_source": sources[0].name,
        "source_configs": ", ".join(f"`{s.name}`" for s in sources),
        "loso_configs": ", ".join(f"`loso_{s.name}`" for s in sources),
        "duplicates": _duplicates_sentence(duplicates),
        **card_tables(sources, label_map, counts),
    }


def render_card(name: str, version: str, release_date: str, sources: list[Source], label_map: LabelMap, counts: HarmonisedCounts, configs: list[dict], split_bytes: dict[str, int], duplicates: list[CrossDuplicate]) -> str:
    """README.md of a harmonised release: its YAML header, the filled template, and the release notes section."""
    header = card_header(sources, label_map.classes, counts, configs, split_bytes)
    body = fill_template("harmonised_card.md", card_fields(version, release_date, sources, label_map, counts, duplicates))
    return yaml_header(header) + body + notes.card_section(version, None)


def _croissant_config(name: str, version: str, release_date: str, sources: list[Source], label_map: LabelMap) -> ReleaseConfig:
    """A config-shaped description of the harmonised dataset, for the shared Croissant writer."""
    licenses = sorted({s.license for s in sources})
    doc = {
        "name": name,
        "pretty_name": pretty_name(sources),
        "version": version,
        "release_date": release_date,
        "license": licenses[0] if len(licenses) == 1 else "other",
        "classes": [{"label": c, "full_name": c.replace("_", " ")} for c in label_map.classes],
        "image": {"width": 0, "height": 0, "mode": "RGB"},
        "dedup": {"phash_threshold": PHASH_THRESHOLD, "conflict_policy": "drop_all"},
        "datasheet": {
            "motivation": "Single-cell blood images of several public datasets on their shared classes, for training across laboratories and domain generalisation.",
            "collection": "Built from verified releases of the sources: " + ", ".join(f"{s.name} v{s.version}" for s in sources) + ".",
            "labelling": "Each source's own labels, mapped to shared classes by a label map; the original label is kept in every record.",
            "uses": "Domain generalisation: train on some sources and test on another (leave-one-source-out configs), or per source.",
            "limitations": "Image size, magnification, stain and population differ between sources; each source's licence and citation apply to its images.",
        },
    }
    return ReleaseConfig.from_doc(doc, "harmonise")


_TEXT = {"type": "string", "maxLength": 100_000}
# The config-shaped description a harmonised manifest records (what _croissant_config writes, nothing more): verify
# reads it from an untrusted manifest, so its shape is checked before the Croissant writer sees it.
_CROISSANT_CONFIG_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "pretty_name", "version", "release_date", "license", "classes", "image", "dedup", "datasheet"],
    "properties": {
        "name": _TEXT, "pretty_name": _TEXT, "version": _TEXT, "release_date": _TEXT, "license": _TEXT,
        "classes": {"type": "array", "maxItems": 1000, "items": {
            "type": "object", "additionalProperties": False, "required": ["label", "full_name"],
            "properties": {"label": {"type": "string", "pattern": LABEL_PATTERN}, "full_name": _TEXT}}},
        "image": {"type": "object", "additionalProperties": False, "required": ["width", "height", "mode"],
                  "properties": {"width": {"type": "integer"}, "height": {"type": "integer"}, "mode": {"const": "RGB"}}},
        "dedup": {"type": "object", "additionalProperties": False, "required": ["phash_threshold", "conflict_policy"],
                  "properties": {"phash_threshold": {"type": "integer"}, "conflict_policy": {"const": "drop_all"}}},
        "datasheet": {"type": "object", "maxProperties": 20, "additionalProperties": _TEXT,
                      "required": ["motivation", "collection", "labelling", "uses", "limitations"]},
    },
}


def croissant_config_of(manifest: dict) -> ReleaseConfig:
    """The Croissant description a harmonised release's manifest records, checked (ConfigError names the key)."""
    doc = manifest.get("config")
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(_CROISSANT_CONFIG_SCHEMA).iter_errors(doc))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise ConfigError(f"manifest.json (config) of a harmonised release: key {where}: {error.message[:200]}")
    return ReleaseConfig.from_doc(doc, "manifest.json (config)")


def _write_croissant(staging: Path, config: ReleaseConfig, counts: HarmonisedCounts, sources: list[Source]) -> None:
    files = [e for e in file_entries(staging) if e["path"] not in (CROISSANT, MANIFEST)]
    doc = croissant_document(config, counts, files)
    doc["rai:dataPreprocessingProtocol"] = (
        f"Built from verified source releases; classes outside the label map excluded; the same image in two sources "
        f"(identical pixels, or pHash within {PHASH_THRESHOLD} bits confirmed on pixels) kept once. Of {counts.ledger_total:,} "
        f"source images: {counts.kept:,} kept, {counts.ledger['duplicate']:,} cross-source duplicates, "
        f"{counts.ledger['excluded']:,} excluded (ledger.csv gives each image's fate and reason)."
    )
    add_source_fields(next(r for r in doc["recordSet"] if r["@id"] == "images"))
    (staging / CROISSANT).write_text(dumps_json(doc), encoding="utf-8")


_SOURCE_FIELDS = (("source", "The source dataset."), ("original_label", "The class in the source release."),
                  ("original_name", "The source dataset's own name for the class."))


def add_source_fields(images: dict) -> dict:
    """The harmonised release's Croissant `images` record set: the shared one plus the per-source columns
    (also what `mll23 verify` expects of a harmonised release's croissant.json)."""
    images["description"] = "One record per published image (sizes differ between sources), read from the Parquet shards."
    for name, what in _SOURCE_FIELDS:
        images["field"].append({"@type": "cr:Field", "@id": f"images/{name}", "name": name, "description": what, "dataType": "sc:Text",
                                "source": {"fileSet": {"@id": "parquet-files"}, "extract": {"column": name}}})
    return images


# ---- the command --------------------------------------------------------------------------------------


def _staging(out: Path) -> Path:
    return out.parent / f".{out.name}.harmonise-staging"


@dataclass(frozen=True)
class _Inputs:
    """What a harmonised release is made of: the checked sources, the map, every image and the cross-source copies."""

    sources: list[Source]
    label_map: LabelMap
    items: list[Item]
    duplicates: list[CrossDuplicate]

    @property
    def release_date(self) -> str:
        # the newest source's date: a harmonised build reads no clock, so rebuilding it gives the same bytes
        return max(s.release_date for s in self.sources)


def _check_request(releases: list[Path], out: Path, name: str, overwrite: bool) -> None:
    if len(releases) < 2:
        raise HarmoniseError("give at least two source releases")
    if out.exists() and not overwrite:
        raise HarmoniseError(f"{out} exists; pass --overwrite to replace it")
    if not _SOURCE_NAME.match(name):
        raise HarmoniseError(f"--name {name!r}: use lower-case letters, digits, '_', '.', '-'")


def _read_inputs(releases: list[Path], map_path: Path | None) -> _Inputs:
    sources = [open_source(Path(r)) for r in releases]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise HarmoniseError(f"two source releases have the same name ({', '.join(sorted(n for n in set(names) if names.count(n) > 1))}); give each dataset once")
    label_map = read_map(map_path or harmonised_map_path(), sources)
    items = [item for s in sources for item in read_items(s, label_map)]
    _exclude_unmapped(items)
    return _Inputs(sources, label_map, items, find_cross_source_duplicates(items, sources))


def _write_shards(staging: Path, inputs: _Inputs, max_shard_bytes: int) -> dict[str, list[tuple[str, _ShardOut]]]:
    by_shard: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for item in inputs.items:
        by_shard[(item.source, item.shard)].append(item)
    shards = [sh for split in SPLITS for sh in _write_split(staging, split, inputs.sources, by_shard, inputs.label_map, max_shard_bytes)]
    return _name_shards(shards)


def _manifest_body(name: str, version: str, inputs: _Inputs, counts: HarmonisedCounts, named: dict[str, list[tuple[str, _ShardOut]]]) -> dict:
    return manifest_mod.manifest_body(
        name, version, inputs.release_date, inputs.label_map.classes, counts,
        harmonised_from=[{"name": s.name, "version": s.version, "manifest_sha256": sha256_file(s.dir / MANIFEST)} for s in inputs.sources],
        label_map_sha256=inputs.label_map.sha256,
        splits={s: {"num_examples": counts.splits[s].total, "parquet": [rel for rel, _ in named[s]]} for s in SPLITS},
        release_notes=notes.notes_relpath(version),
    )


def _write_release(staging: Path, out: Path, name: str, version: str, inputs: _Inputs, max_shard_bytes: int) -> dict:
    """Every file of the harmonised release into ``staging``; returns its counts."""
    (staging / DATA_DIR).mkdir(parents=True)
    sources, label_map = inputs.sources, inputs.label_map
    named = _write_shards(staging, inputs, max_shard_bytes)
    counts = compute_counts(inputs.items, label_map.classes, sources)
    split_bytes = {s: sum((staging / rel).stat().st_size for rel, _ in named[s]) for s in SPLITS}
    ledger_text = manifest_mod.ledger_text(ledger_entries(inputs.items))
    (staging / LEDGER).write_text(ledger_text, encoding="utf-8")
    body = _manifest_body(name, version, inputs, counts, named)
    notes_path = staging / notes.notes_relpath(version)
    notes_path.parent.mkdir(parents=True)
    notes_path.write_text(notes.notes_for_build(body, ledger_text, None, notes.maintainer_words(out / notes.notes_relpath(version))), encoding="utf-8")
    card = render_card(name, version, inputs.release_date, sources, label_map, counts, _configs(named, sources), split_bytes, inputs.duplicates)
    (staging / CARD).write_text(card, encoding="utf-8")
    croissant_config = _croissant_config(name, version, inputs.release_date, sources, label_map)
    body["config"] = croissant_config.raw  # what verify rebuilds croissant.json's record and file sets from
    _write_croissant(staging, croissant_config, counts, sources)
    write_manifest(staging, body)
    return counts


def harmonise(
    releases: list[Path],
    out: Path,
    *,
    map_path: Path | None = None,
    name: str = "blood-cells-harmonised",
    version: str = "1.0.0",
    overwrite: bool = False,
    max_shard_bytes: int = 500_000_000,
) -> HarmoniseReport:
    """Build the harmonised release into ``out`` (whole or not at all)."""
    out = Path(out)
    _check_request(releases, out, name, overwrite)
    inputs = _read_inputs(releases, map_path)
    staging = _staging(out)
    if staging.exists():
        shutil.rmtree(staging)
    try:
        counts = _write_release(staging, out, name, version, inputs, max_shard_bytes)
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    per_source = {s.name: Counter(i.fate for i in inputs.items if i.source == s.name) for s in inputs.sources}
    return HarmoniseReport(out, counts, inputs.duplicates, per_source)


def iter_report_lines(report: HarmoniseReport) -> Iterator[str]:
    for source, fates in report.per_source.items():
        yield f"{source}: " + ", ".join(f"{fates.get(f, 0)} {f}" for f in ("kept", "duplicate", "excluded"))
    for d in report.duplicates:
        yield f"cross-source {d.kind}: {d.dropped} is {d.kept} (kept once, as {d.kept})"
