"""The release configuration: one TOML file, validated against schemas/config.schema.json, read into frozen dataclasses.

Every optional key's default is the default of its dataclass field below (and the schema's `default`, which
tests/test_config.py keeps equal); nothing else supplies a default. ``ReleaseConfig.raw`` keeps the document
as loaded, because the manifest records it and ``digest`` hashes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from dataclasses import dataclass, field, fields
from datetime import date
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.resources import default_config_path, load_schema, shipped_config_names, shipped_config_path

SPLITS = ("train", "validation", "test")
LABEL_PATTERN = "^[a-z0-9_]+$"


class ConfigError(ValueError):
    """A configuration problem, naming the key at fault."""


@dataclass(frozen=True)
class ClassInfo:
    """One `[[classes]]` entry."""

    label: str
    full_name: str  # the cell type in words; default: the folder
    folder: str  # the dataset's own name for the class (its folder under RAW); default: the label
    lineage: str = ""  # the cell's blood-cell lineage (myeloid, lymphoid, ...), not a release's ancestry
    raw_count: int | None = None
    published_count: int | None = None

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ClassInfo:
        """A class without `folder` uses its label as folder, and its folder as `full_name`."""
        folder = table.get("folder", table["label"])
        return _from_table(cls, {**table, "folder": folder, "full_name": table.get("full_name", folder)})


@dataclass(frozen=True)
class ImageConfig:
    """`[image]`: what the raw files are and how they are published."""

    width: int
    height: int
    mode: str  # "RGB": what every published image is decoded to
    format: str = "TIFF"  # the archive's file format (what `mll23 synth` writes)
    # Raw files above this size are refused without being read (a 288x288 RGB TIFF is about 250 kB).
    max_file_bytes: int = 16_000_000
    # Lossless images are published as PNG unless a config says "original" (bench/RESULTS.md, "Image codec": a
    # full MLL23 release is 0.40x the size of its TIFFs, downloads in 22 instead of 55 minutes at 50 Mbit/s);
    # lossy files are always published as their own bytes (decode.publish_as_original).
    publish_codec: str = "png"
    pixels_per_micrometre: float | None = None


@dataclass(frozen=True)
class DedupConfig:
    """`[dedup]`: the pHash radii and what happens to copies whose labels disagree."""

    phash_threshold: int
    conflict_policy: str  # "drop_all" or "majority"
    lookalike_threshold: int = 10


@dataclass(frozen=True)
class SplitConfig:
    """`[split]`: the fractions of train, validation and test, and the seed of the assignment."""

    train: float
    validation: float
    test: float
    seed: int

    @property
    def fractions(self) -> dict[str, float]:
        return {s: float(getattr(self, s)) for s in SPLITS}


@dataclass(frozen=True)
class ShardsConfig:
    """`[shards]`: how big the Parquet and tar shards and their row groups may be."""

    max_shard_bytes: int = 500_000_000
    max_row_group_bytes: int = 32_000_000
    # DataLoader workers read whole shards: every split gets at least this many of each format.
    min_shards_per_split: int = 16
    image_compression: str = "none"


@dataclass(frozen=True)
class CardConfig:
    """`[card]`: the Hub repository the card's snippets load from, its `sample` config and its rare-class flag."""

    repo_id: str | None = None  # None: the card shows how to load a local copy only, never a made-up repository
    sample_fraction: float = 0.01
    rare_class_min_images: int = 30


@dataclass(frozen=True)
class DatasetProse:
    """`[dataset]`: the sentences about the dataset that the card and croissant.json print around the measured
    figures. Each dataset's config says them (MLL23's in configs/mll23.toml); the defaults claim nothing about a
    particular dataset."""

    cells: str = "single cells"  # "N images of <cells> in K classes"
    class_balance: str = ""  # the card's sentence on the class sizes, after the class table; none by default
    cleaning_intro: str = "Cleaning, reproduced by this release's build:"
    excluded_cells: str = "dysplastic cells"  # "<excluded_cells> are excluded": what the exclude stage removes
    keywords: tuple[str, ...] = ("biology", "microscopy")


@dataclass(frozen=True)
class Datasheet:
    """`[datasheet]`: the prose of the card's datasheet sections and croissant.json's Responsible-AI fields."""

    motivation: str
    collection: str
    labelling: str
    uses: str
    limitations: str
    image_description: str | None = None  # None: the card says the image size
    biases: str = ""
    personal_information: str = ""
    maintenance: str = ""


def _from_table(cls: type, table: dict[str, Any]) -> Any:
    """``cls`` from a TOML table: the table's values over the fields' defaults. Keys the class does not know are
    ignored: a validated config has none, and harmonise's recorded description may carry more datasheet prose."""
    known = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in table.items() if k in known})


@dataclass(frozen=True)
class ReleaseConfig:
    """The validated config, typed. Build it with `from_doc` (or `load_config` / `validate_config`)."""

    raw: dict[str, Any]  # the validated TOML document, as loaded (plus any CLI overrides)
    source: str  # where it came from, for messages
    name: str
    pretty_name: str
    version: str
    release_date: str
    license: str
    classes: tuple[ClassInfo, ...]
    image: ImageConfig
    dedup: DedupConfig
    datasheet: Datasheet
    split: SplitConfig | None = None  # None only in harmonise's description of a release for croissant.json
    shards: ShardsConfig = field(default_factory=ShardsConfig)
    card: CardConfig = field(default_factory=CardConfig)
    dataset: DatasetProse = field(default_factory=DatasetProse)
    homepage: str | None = None
    doi: str | None = None
    citation: str = ""
    exclude_labels: frozenset[str] = frozenset()  # labels removed from the release entirely

    @classmethod
    def from_doc(cls, doc: dict[str, Any], source: str) -> ReleaseConfig:
        """The typed view of a document already checked against the schema (validate_config checks it)."""
        sections = {"image": ImageConfig, "dedup": DedupConfig, "datasheet": Datasheet, "split": SplitConfig,
                    "shards": ShardsConfig, "card": CardConfig}
        tables = {key: _from_table(kind, doc[key]) for key, kind in sections.items() if key in doc}
        scalars = {k: doc[k] for k in ("name", "pretty_name", "version", "release_date", "license", "homepage", "doi", "citation") if k in doc}
        dataset = dict(doc.get("dataset", {}))
        if "keywords" in dataset:
            dataset["keywords"] = tuple(dataset["keywords"])
        return cls(
            raw=doc,
            source=source,
            classes=tuple(ClassInfo.from_table(c) for c in doc["classes"]),
            dataset=_from_table(DatasetProse, dataset),
            exclude_labels=frozenset(doc.get("exclude_labels", ())),
            **scalars,
            **tables,
        )

    # The names the stages read (flat, as before the config was typed), each from its one section.

    @property
    def class_names(self) -> list[str]:
        return [c.label for c in self.classes]

    def label_index(self, label: str) -> int:
        return self.class_names.index(label)

    @property
    def label_of_folder(self) -> dict[str, str]:
        """Folder name under RAW (the dataset's own class name) -> label; a class without `folder` uses its label."""
        return {c.folder: c.label for c in self.classes}

    @property
    def image_size(self) -> tuple[int, int]:
        return self.image.width, self.image.height

    @property
    def image_format(self) -> str:
        return self.image.format

    @property
    def publish_codec(self) -> str:
        """How lossless images are published: "png" (re-encoded) or "original" (the files' own bytes)."""
        return self.image.publish_codec

    @property
    def max_file_bytes(self) -> int:
        return self.image.max_file_bytes

    @property
    def phash_threshold(self) -> int:
        return self.dedup.phash_threshold

    @property
    def lookalike_threshold(self) -> int:
        return self.dedup.lookalike_threshold

    @property
    def conflict_policy(self) -> str:
        return self.dedup.conflict_policy

    @property
    def split_fractions(self) -> dict[str, float]:
        return self._split.fractions

    @property
    def split_seed(self) -> int:
        return self._split.seed

    @property
    def _split(self) -> SplitConfig:
        if self.split is None:
            raise ConfigError(f"{self.source}: key 'split' is missing")
        return self.split

    @property
    def max_shard_bytes(self) -> int:
        return self.shards.max_shard_bytes

    @property
    def max_row_group_bytes(self) -> int:
        return self.shards.max_row_group_bytes

    @property
    def min_shards_per_split(self) -> int:
        """Every split gets at least this many shards of each format (fewer rows: one row per shard)."""
        return self.shards.min_shards_per_split

    @property
    def image_compression(self) -> str:
        return self.shards.image_compression

    @property
    def repo_id(self) -> str | None:
        """The Hub repository the card's snippets load from (config [card] repo_id, or `mll23 build --repo`)."""
        return self.card.repo_id

    @property
    def sample_fraction(self) -> float:
        """Share of each class of each split in the card's `sample` config."""
        return float(self.card.sample_fraction)

    @property
    def rare_class_min_images(self) -> int:
        """The card flags a class with fewer images than this in a split."""
        return self.card.rare_class_min_images

    def digest(self) -> str:
        """sha256 of the canonical JSON form: two configs that mean the same hash the same."""
        canonical = json.dumps(self.raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _key_path(error: jsonschema.ValidationError) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "(top level)"


def suggested_label(name: str) -> str:
    """A label of the required pattern made from a dataset's own class name ("NGS" -> "ngs")."""
    return re.sub(r"_+", "_", re.sub(r"[^a-z0-9_]", "_", name.lower())).strip("_") or "label"


def _label_pattern_message(name: object) -> str:
    # Labels become ClassLabel names, ledger values and card anchors, so they stay plain; a lab's own names
    # (abbreviations, capitals, spaces) belong in `folder`, which maps that folder to the label.
    shown = str(name)
    return (
        f"label {shown!r} does not match {LABEL_PATTERN} (labels are lower-case letters, digits and underscores, so "
        f"every tool can use them as class names); keep the dataset's own name as the folder alias: "
        f'label = "{suggested_label(shown)}", folder = {json.dumps(shown, ensure_ascii=False)}'
    )


def _error_lines(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(key, message) for one schema error; an unknown or missing key is named itself, not its parent table."""
    parent = [str(p) for p in error.absolute_path]
    if error.validator == "pattern" and parent[:1] == ["classes"] and parent[-1:] == ["label"]:
        return [(_key_path(error), _label_pattern_message(error.instance))]
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        return [(".".join(parent + [k]), f"unknown key; allowed here: {', '.join(allowed)}") for k in unknown]
    if error.validator == "required" and isinstance(error.instance, dict):
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(".".join(parent + [k]), "required key is missing") for k in missing]
    return [(_key_path(error), error.message)]


def validate_config(doc: dict[str, Any], source: str) -> ReleaseConfig:
    """Schema check plus the rules a schema cannot say; every error names the key."""
    validator = jsonschema.Draft202012Validator(load_schema("config"))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = sorted({f"{source}: key '{key}': {message}" for e in errors for key, message in _error_lines(e)})
        raise ConfigError("invalid release config:\n  " + "\n  ".join(lines))
    labels = [c["label"] for c in doc["classes"]]
    dupes = sorted({label for label in labels if labels.count(label) > 1})
    if dupes:
        raise ConfigError(f"{source}: key 'classes': duplicate labels {dupes}")
    folders = [c.get("folder", c["label"]) for c in doc["classes"]]
    clashing = sorted({f for f in folders if folders.count(f) > 1})
    if clashing:
        raise ConfigError(f"{source}: key 'classes': folder names {clashing} are used by more than one class (each folder maps to one label)")
    unknown_excluded = sorted(set(doc.get("exclude_labels", [])) - set(labels))
    if unknown_excluded:
        raise ConfigError(f"{source}: key 'exclude_labels': not in classes: {unknown_excluded}")
    total = sum(float(doc["split"][s]) for s in SPLITS)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ConfigError(f"{source}: key 'split': train + validation + test must sum to 1, got {total:g}")
    return ReleaseConfig.from_doc(doc, source)


def load_config(path: Path | None = None, *, version: str | None = None, repo_id: str | None = None,
                release_date: str | None = None) -> ReleaseConfig:
    """Load and validate a release config: a TOML file, or a shipped config by name ("matek19"); MLL23's when None.
    ``version``, ``repo_id`` and ``release_date`` (YYYY-MM-DD, a real date) override the config's (and are
    validated with it)."""
    path = Path(path) if path is not None else default_config_path()
    if not path.exists() and shipped_config_path(str(path)) is not None:
        path = shipped_config_path(str(path))
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path} (shipped configs, usable by name: {', '.join(shipped_config_names())})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if version is not None:
        doc["version"] = version
    if repo_id is not None:
        doc.setdefault("card", {})["repo_id"] = repo_id
    if release_date is not None:
        try:
            date.fromisoformat(release_date)
        except ValueError:
            raise ConfigError(f"release_date: {release_date!r} is not a date YYYY-MM-DD") from None
        doc["release_date"] = release_date
    return validate_config(doc, str(path))
