"""`mll23 verify`: is a release directory exactly what it claims to be, and can people load it?

Each check is a function over a lazily loaded view of the release; it yields human-readable failures
naming the file, row or key at fault. Checks for optional parts (WebDataset shards, Croissant metadata)
are registered with a condition and run only where those files exist. `verify_release` returns the
failures (an empty list means the release passed); `publish` calls it before uploading anything.
"""

from __future__ import annotations

import filecmp
import hashlib
import io
import json
import logging
import re
import shutil
import tempfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import yaml
from PIL import Image

from pipeline.build import BuildError, build_release
from pipeline.config import SPLITS, ConfigError, validate_config
from pipeline.lineage import LineageError, version_key
from pipeline.manifest import LEDGER, LEDGER_COLUMNS, MANIFEST, list_release_files, read_ledger, sha256_file
from pipeline.notes import NOTES_DIR, NotesError
from pipeline.records import FATES
from pipeline.validate import record_errors, record_validator

CARD = "README.md"
_SHARD = re.compile(r"^data/(train|validation|test)-\d{5}-of-\d{5}\.parquet$")
_MAX_LISTED = 20  # failures of one kind listed one by one before the rest are counted


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
class VerifyOptions:
    hub: HubLimits = field(default_factory=HubLimits)
    # A non-streaming `load_dataset` copies the whole release into a cache: beyond this size (a CI runner's
    # disk may not hold the release twice) the load check reads every row in streaming mode instead.
    full_load_max_bytes: int = 2_000_000_000


@dataclass
class CheckResult:
    name: str
    description: str
    failures: list[Failure] = field(default_factory=list)


class ManifestUnreadable(Exception):
    """Nothing else can be checked without the manifest."""


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


_META_COLUMNS = ["image_id", "label", "source_file", "patient_id", "annotator", "group_id", "pixel_sha256", "phash", "extra"]


class ReleaseView:
    def __init__(self, release_dir: Path) -> None:
        self.dir = Path(release_dir)
        self.read_errors: list[str] = []  # files a check needed but could not read

    @cached_property
    def manifest(self) -> dict:
        path = self.dir / MANIFEST
        if not path.is_file():
            raise ManifestUnreadable(f"{MANIFEST} is missing: nothing can be checked without it")
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestUnreadable(f"{MANIFEST} is not valid JSON: {exc}") from None
        missing = [k for k in ("name", "version", "files", "splits", "counts", "class_names") if k not in doc]
        if missing:
            raise ManifestUnreadable(f"{MANIFEST} lacks the key(s) {missing}")
        return doc

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @cached_property
    def shard_paths(self) -> list[str]:
        """Parquet shards actually present (what `datasets` would load), listed or not."""
        return sorted(p for p in list_release_files(self.dir) if _SHARD.match(p))

    @cached_property
    def rows(self) -> list[Row]:
        rows: list[Row] = []
        for shard in self.shard_paths:
            split = _SHARD.match(shard).group(1)
            try:
                table = pq.read_table(self.dir / shard, columns=_META_COLUMNS)
            except Exception as exc:  # a damaged shard is a finding, not a crash
                self.read_errors.append(f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})")
                continue
            for i, r in enumerate(table.to_pylist()):
                rows.append(Row(shard=shard, index=i, split=split, **r))
        return rows

    @cached_property
    def ledger(self) -> list[dict[str, str]]:
        path = self.dir / LEDGER
        if not path.is_file():
            self.read_errors.append(f"{LEDGER} is missing")
            return []
        return read_ledger(path)

    @cached_property
    def card_text(self) -> str:
        path = self.dir / CARD
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    @cached_property
    def card_yaml(self) -> dict:
        return _card_header(self.card_text)


def _capped(check: str, messages: Iterable[str]) -> list[Failure]:
    messages = list(messages)
    out = [Failure(check, m) for m in messages[:_MAX_LISTED]]
    if len(messages) > _MAX_LISTED:
        out.append(Failure(check, f"... and {len(messages) - _MAX_LISTED} more like these"))
    return out


# ---- the checks ----------------------------------------------------------------------------------------


def check_files(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    listed = {}
    for entry in view.manifest["files"]:
        if entry["path"] in listed:
            yield f"{entry['path']} is listed twice in {MANIFEST}"
        listed[entry["path"]] = entry
    present = set(list_release_files(view.dir))
    for path, entry in sorted(listed.items()):
        target = view.dir / path
        if path not in present:
            yield f"{path} is listed in {MANIFEST} but missing from the release"
            continue
        size = target.stat().st_size
        if size != entry["size"]:
            yield f"{path}: size is {size:,} bytes, {MANIFEST} says {entry['size']:,}"
        digest = sha256_file(target)
        if digest != entry["sha256"]:
            yield f"{path}: sha256 is {digest}, {MANIFEST} says {entry['sha256']} (the file was changed after the build)"
    for path in sorted(present - set(listed)):
        yield f"{path} is in the release but not listed in {MANIFEST} (remove it, or rebuild)"


def check_version(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    version = view.manifest["version"]
    try:
        version_key(version)
    except LineageError as exc:
        yield f"{MANIFEST}: version {exc}"
    config = view.manifest.get("config")
    if config is not None and config.get("version") != version:
        yield f"{MANIFEST}: version {version} but its config says {config.get('version')}"
    if f"Version **{version}**" not in view.card_text:
        yield f"{CARD} does not state version {version} (expected 'Version **{version}**')"
    notes = view.manifest.get("release_notes")
    if notes:
        path = view.dir / notes
        if not path.is_file():
            yield f"{notes} (the release notes named in {MANIFEST}) is missing"
        elif not path.read_text(encoding="utf-8").startswith(f"# {view.manifest['name']} v{version}\n"):
            yield f"{notes} is not the notes of {view.manifest['name']} v{version} (its first line says otherwise)"
        if f"]({notes})" not in view.card_text:
            yield f"{CARD} does not link the release notes {notes}"
    for target in sorted(set(re.findall(r"\]\(([^)#?]+)\)", view.card_text))):
        if "://" not in target and not target.startswith("mailto:") and not (view.dir / target).exists():
            yield f"{CARD} links {target}, which is not a file of the release"


def check_records(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Every row against schemas/record.schema.json, and its image: decodes, and has the pixels it claims."""
    validator = record_validator()
    names = view.class_names
    for shard in view.shard_paths:
        split = _SHARD.match(shard).group(1)
        try:
            parquet = pq.ParquetFile(view.dir / shard)
        except Exception as exc:
            yield f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})"
            continue
        index = 0
        for g in range(parquet.num_row_groups):
            try:
                batch = parquet.read_row_group(g).to_pylist()
            except Exception as exc:
                yield f"{shard} row group {g}: cannot be read ({type(exc).__name__}: {exc})"
                index += parquet.metadata.row_group(g).num_rows
                continue
            for r in batch:
                yield from _record_problems(f"{shard} row {index}", r, split, names, validator)
                index += 1


def _record_problems(where: str, r: dict, split: str, names: list[str], validator) -> Iterator[str]:
    label = r.get("label")
    label_name = names[label] if isinstance(label, int) and 0 <= label < len(names) else None
    if label_name is None:
        yield f"{where}: label {label!r} is not an index into the {len(names)} class names"
    image = r.get("image") or {}
    data = image.get("bytes") or b""
    width = height = 0
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            width, height = img.size
            pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
        digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        if digest != r.get("pixel_sha256"):
            yield f"{where}: the image's pixels hash to {digest[:16]}..., the row says pixel_sha256 {str(r.get('pixel_sha256'))[:16]}..."
    except Exception as exc:
        yield f"{where}: image bytes do not decode ({type(exc).__name__}: {exc})"
    if r.get("image_id") and r.get("pixel_sha256") and r["image_id"] != r["pixel_sha256"][:16]:
        yield f"{where}: image_id {r['image_id']} is not the first 16 hex digits of pixel_sha256"
    try:
        extra = json.loads(r["extra"]) if r.get("extra") else {}
    except ValueError:
        yield f"{where}: extra is not JSON: {r['extra'][:60]!r}"
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


def _card_header(text: str) -> dict:
    m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    return (yaml.safe_load(m.group(1)) or {}) if m else {}


def _yaml_split_counts(name: str, header: dict, shard_split: Counter) -> Iterator[str]:
    info = header.get("dataset_info") or {}
    claimed = {s.get("name"): s.get("num_examples") for s in info.get("splits", [])}
    for s in SPLITS:
        n = shard_split.get(s, 0)
        if claimed.get(s, 0) != n:
            yield f"{name}: YAML dataset_info.splits {s} num_examples is {claimed.get(s, 0)}, but the shards hold {n}"


def _card_counts(view: ReleaseView, shard_split: Counter, shard_class: Counter, fates: Counter) -> Iterator[str]:
    if not view.card_text:
        yield f"{CARD} (the dataset card) is missing"
        return
    yield from _yaml_split_counts(CARD, view.card_yaml, shard_split)
    wds_card = view.dir / "wds" / CARD
    if wds_card.is_file():
        yield from _yaml_split_counts(f"wds/{CARD}", _card_header(wds_card.read_text(encoding="utf-8")), shard_split)
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
    path = view.dir / LEDGER
    if not path.is_file():
        yield f"{LEDGER} is missing"
        return
    header = path.read_text(encoding="utf-8").split("\n", 1)[0].split(",")
    if tuple(header) != LEDGER_COLUMNS:
        yield f"{LEDGER}: columns are {header}, expected {list(LEDGER_COLUMNS)}"
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
    files = list_release_files(view.dir) + [MANIFEST]
    if len(files) > limits.max_files:
        yield f"{len(files):,} files; the Hub takes at most {limits.max_files:,} per repository"
    per_folder = Counter(str(Path(f).parent) for f in files)
    for folder, n in sorted(per_folder.items()):
        if n > limits.max_entries_per_folder:
            yield f"{folder}/ holds {n:,} files; the Hub takes at most {limits.max_entries_per_folder:,} per folder"
    for f in files:
        size = (view.dir / f).stat().st_size
        if size > limits.max_file_bytes:
            yield f"{f} is {size:,} bytes; the Hub refuses files over {limits.max_file_bytes:,}"
    for shard in view.shard_paths:
        try:
            meta = pq.ParquetFile(view.dir / shard).metadata
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
    yield from _datasets_load_problems(view.dir, view.shard_paths, expected, view.class_names, "label", opts)


def _datasets_load_problems(
    root: Path, files: list[str], expected: dict[str, int], class_names: list[str], label: str, opts: VerifyOptions
) -> Iterator[str]:
    """load_dataset(root) and load_dataset(root, streaming=True): splits, rows, ClassLabel names, one image per row."""
    import datasets

    size = sum((root / f).stat().st_size for f in files)
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


def check_load_webdataset(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """wds/: `webdataset` over the manifest's brace pattern, and `datasets.load_dataset(DIR/wds)` (also streaming)."""
    import webdataset as wds

    truth = _parquet_truth(view)
    for split, info in sorted(view.manifest["splits"].items()):
        entry = info.get("webdataset") or {}
        if not info.get("num_examples"):
            continue
        if entry.get("num_examples") != info["num_examples"]:
            yield f"{MANIFEST}: splits.{split}.webdataset.num_examples is {entry.get('num_examples')}, the split has {info['num_examples']}"
        pattern = entry.get("pattern")
        if not pattern:
            yield f"{MANIFEST}: splits.{split}.webdataset has no brace pattern"
            continue
        samples: dict[str, list[int]] = defaultdict(list)
        try:
            pipeline_ = wds.WebDataset(str(view.dir / pattern), shardshuffle=False).decode("pil").to_tuple("__key__", "tif;png;jpg", "cls")
            for key, image, cls in pipeline_:
                image.load()
                samples[key].append(cls)
        except Exception as exc:
            yield f"webdataset.WebDataset({pattern!r}) fails: {type(exc).__name__}: {exc}"
            continue
        if sum(len(v) for v in samples.values()) != info["num_examples"]:
            yield f"webdataset {pattern}: {sum(len(v) for v in samples.values())} samples, the manifest says {info['num_examples']}"
        for key in sorted(set(samples) ^ set(truth[split]))[:_MAX_LISTED]:
            where = "only in the tars" if key in samples else "only in the Parquet shards"
            yield f"webdataset {pattern}: sample {key} is {where}"
        for key in sorted(k for k in samples if k in truth[split] and samples[k] != [truth[split][k]])[:_MAX_LISTED]:
            yield f"webdataset {pattern}: sample {key} has cls {samples[key]}, the Parquet label is {truth[split][key]}"
    wds_files = sorted(p for p in list_release_files(view.dir) if p.startswith("wds/") and p.endswith(".tar"))
    expected = {s: v.get("num_examples", 0) for s, v in view.manifest["splits"].items() if v.get("num_examples")}
    yield from _datasets_load_problems(view.dir / "wds", [f.removeprefix("wds/") for f in wds_files], expected, view.class_names, "cls", opts)


CROISSANT = "croissant.json"


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


def check_load_croissant(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """croissant.json: valid for mlcroissant, this version, every file with its sha256, one record per image."""
    import mlcroissant as mlc

    path = view.dir / CROISSANT
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        yield f"{CROISSANT} is not valid JSON: {exc}"
        return
    if doc.get("version") != view.manifest["version"]:
        yield f"{CROISSANT}: version is {doc.get('version')}, {MANIFEST} says {view.manifest['version']}"
    declared = {d.get("contentUrl"): d.get("sha256") for d in doc.get("distribution", []) if d.get("@type") == "cr:FileObject"}
    listed = {f["path"]: f["sha256"] for f in view.manifest["files"] if f["path"] not in (CROISSANT, MANIFEST)}
    for rel in sorted(set(declared) | set(listed)):
        if declared.get(rel) != listed.get(rel):
            if rel not in declared:
                yield f"{CROISSANT} does not declare {rel}"
            elif rel not in listed:
                yield f"{CROISSANT} declares {rel}, which {MANIFEST} does not list"
            else:
                yield f"{CROISSANT}: sha256 of {rel} is {declared[rel]}, {MANIFEST} says {listed[rel]}"
    try:
        with _quiet_logging():
            dataset = mlc.Dataset(jsonld=str(path))
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


CHECKS: tuple[Check, ...] = (
    Check("files", "every file in manifest.json present with its size and sha256, no unlisted file", check_files),
    Check("version", "one semantic version in manifest, config, card and notes; the card's links resolve", check_version),
    Check("records", "every Parquet row valid against schemas/record.schema.json; images decode to their pixel_sha256", check_records),
    Check("counts", "counts in the card (YAML and tables), manifest, ledger and shards agree", check_counts),
    Check("ledger", "the ledger accounts for every raw input once and for every published row", check_ledger),
    Check("splits", "no patient or look-alike group in two splits", check_splits),
    Check("unique", "no image_id (or pixel_sha256) twice", check_unique),
    Check("hub-limits", "files, folders, shards and row groups within the Hub's limits", check_hub_limits),
    Check("load-datasets", "datasets.load_dataset reads the release (also streaming)", check_load_datasets),
    Check("load-webdataset", "wds/ reads with webdataset (the manifest's pattern) and datasets, matching the Parquet shards",
          check_load_webdataset, lambda view: any((view.dir / "wds").glob("*.tar"))),
    Check("load-croissant", "croissant.json loads with mlcroissant: version, files and sha256, one record per image",
          check_load_croissant, lambda view: (view.dir / CROISSANT).is_file()),
)


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
) -> list[CheckResult]:
    """Every applicable check, in order, with its failures (none: it passed)."""
    view = ReleaseView(Path(release_dir))
    opts = VerifyOptions(hub=limits or HubLimits())
    if full_load_max_bytes is not None:
        opts = VerifyOptions(hub=opts.hub, full_load_max_bytes=full_load_max_bytes)
    try:
        view.manifest
    except ManifestUnreadable as exc:
        return [CheckResult("manifest", "manifest.json present and readable", [Failure("manifest", str(exc))])]
    results = []
    for check in CHECKS:
        if check.name in skip or not check.applies(view):
            continue
        result = CheckResult(check.name, check.description)
        try:
            result.failures = _capped(check.name, check.run(view, opts))
        except Exception as exc:  # a check that cannot finish is a failed check, reported like the others
            result.failures.append(Failure(check.name, f"could not complete: {type(exc).__name__}: {exc}"))
        results.append(result)
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
    editable = notes_dir / Path(rel).name
    if not editable.is_file():
        yield f"{editable} is missing (the release carries {rel}; keep its editable copy there)"
    elif not (view.dir / rel).is_file() or not filecmp.cmp(editable, view.dir / rel, shallow=False):
        yield f"{editable} differs from {rel} in the release: rebuild the release so that it carries the edited notes"


# ---- --rebuild RAW ---------------------------------------------------------------------------------------


def find_previous(view: ReleaseView, previous: Path | None) -> tuple[Path | None, str | None]:
    """The release this one was built on: the given directory, or a sibling whose manifest has the recorded sha256."""
    ref = view.manifest.get("previous")
    if not ref:
        return None, None
    if previous is not None:
        path = Path(previous) / MANIFEST
        if not path.is_file() or sha256_file(path) != ref["manifest_sha256"]:
            return None, (
                f"--previous {previous} is not the release this one was built on "
                f"(v{ref['version']}, manifest sha256 {ref['manifest_sha256'][:16]}...)"
            )
        return Path(previous), None
    for sibling in sorted(view.dir.resolve().parent.iterdir()):
        candidate = sibling / MANIFEST
        if sibling != view.dir.resolve() and candidate.is_file() and sha256_file(candidate) == ref["manifest_sha256"]:
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
        if (view.dir / NOTES_DIR).is_dir():
            shutil.copytree(view.dir / NOTES_DIR, notes_copy)
        out = Path(tmp) / "release"
        try:
            build_release(raw, out, config, workers=workers, previous=prev_dir, notes_dir=notes_copy)
        except (BuildError, LineageError, NotesError, FileNotFoundError) as exc:
            yield f"the rebuild from {raw} failed: {exc}"
            return
        ours, theirs = set(list_release_files(view.dir)) | {MANIFEST}, set(list_release_files(out)) | {MANIFEST}
        for rel in sorted(ours - theirs):
            yield f"{rel} is in the release but not in the rebuild"
        for rel in sorted(theirs - ours):
            yield f"{rel} is in the rebuild but not in the release"
        for rel in sorted(ours & theirs):
            if not filecmp.cmp(view.dir / rel, out / rel, shallow=False):
                yield f"{rel} differs from the rebuild from {raw}"


def verify_messages(release_dir: Path, **options) -> list[str]:
    """The failures as text, one per problem ('[check] message'): what `mll23 publish` refuses a release for."""
    return [str(f) for f in verify_release(release_dir, **options)]
