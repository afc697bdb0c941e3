"""The release configuration: one TOML file, validated against schemas/config.schema.json before any work."""

from __future__ import annotations

import hashlib
import json
import math
import re
import tomllib
from datetime import date
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.resources import default_config_path, load_schema, shipped_config_names, shipped_config_path

SPLITS = ("train", "validation", "test")
DEFAULT_MAX_FILE_BYTES = 16_000_000
# Lossless images are published as PNG unless a config says "original" (bench/RESULTS.md, "Image codec": a
# full MLL23 release is 0.40x the size of its TIFFs, downloads in 22 instead of 55 minutes at 50 Mbit/s).
DEFAULT_PUBLISH_CODEC = "png"
DEFAULT_MIN_SHARDS_PER_SPLIT = 16
DEFAULT_SAMPLE_FRACTION = 0.01
DEFAULT_RARE_CLASS_MIN_IMAGES = 30


class ConfigError(ValueError):
    """A configuration problem, naming the key at fault."""


LABEL_PATTERN = "^[a-z0-9_]+$"


@dataclass(frozen=True)
class ClassInfo:
    label: str
    lineage: str
    full_name: str
    raw_count: int | None
    published_count: int | None
    folder: str = ""  # the dataset's own name for the class (its folder under RAW)


@dataclass(frozen=True)
class ReleaseConfig:
    raw: dict[str, Any]  # the validated TOML document, as loaded (plus any CLI overrides)
    source: str  # where it came from, for messages

    @property
    def name(self) -> str:
        return self.raw["name"]

    @property
    def version(self) -> str:
        return self.raw["version"]

    @property
    def release_date(self) -> str:
        return self.raw["release_date"]

    @property
    def classes(self) -> tuple[ClassInfo, ...]:
        return tuple(
            ClassInfo(
                label=c["label"],
                lineage=c.get("lineage", ""),
                full_name=c.get("full_name", c.get("folder", c["label"])),
                raw_count=c.get("raw_count"),
                published_count=c.get("published_count"),
                folder=c.get("folder", c["label"]),
            )
            for c in self.raw["classes"]
        )

    @property
    def class_names(self) -> list[str]:
        return [c["label"] for c in self.raw["classes"]]

    @property
    def label_of_folder(self) -> dict[str, str]:
        """Folder name under RAW (the dataset's own class name) -> label; a class without `folder` uses its label."""
        return {c.get("folder", c["label"]): c["label"] for c in self.raw["classes"]}

    @property
    def image_format(self) -> str:
        return self.raw["image"].get("format", "TIFF")

    def label_index(self, label: str) -> int:
        return self.class_names.index(label)

    @property
    def exclude_labels(self) -> frozenset[str]:
        return frozenset(self.raw.get("exclude_labels", []))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.raw["image"]["width"], self.raw["image"]["height"]

    @property
    def publish_codec(self) -> str:
        """How lossless images are published: "png" (re-encoded) or "original" (the files' own bytes); lossy
        files are always published as their own bytes (decode.publish_as_original)."""
        return self.raw["image"].get("publish_codec", DEFAULT_PUBLISH_CODEC)

    @property
    def max_file_bytes(self) -> int:
        """Raw files above this size are refused without being read (a 288x288 RGB TIFF is about 250 kB)."""
        return self.raw["image"].get("max_file_bytes", DEFAULT_MAX_FILE_BYTES)

    @property
    def phash_threshold(self) -> int:
        return self.raw["dedup"]["phash_threshold"]

    @property
    def lookalike_threshold(self) -> int:
        return self.raw["dedup"].get("lookalike_threshold", 10)

    @property
    def conflict_policy(self) -> str:
        return self.raw["dedup"]["conflict_policy"]

    @property
    def split_fractions(self) -> dict[str, float]:
        return {s: float(self.raw["split"][s]) for s in SPLITS}

    @property
    def split_seed(self) -> int:
        return self.raw["split"]["seed"]

    @property
    def max_shard_bytes(self) -> int:
        return self.raw["shards"].get("max_shard_bytes", 500_000_000)

    @property
    def max_row_group_bytes(self) -> int:
        return self.raw["shards"].get("max_row_group_bytes", 32_000_000)

    @property
    def min_shards_per_split(self) -> int:
        """Every split gets at least this many shards of each format (fewer rows: one row per shard)."""
        return self.raw["shards"].get("min_shards_per_split", DEFAULT_MIN_SHARDS_PER_SPLIT)

    @property
    def image_compression(self) -> str:
        return self.raw["shards"].get("image_compression", "none")

    @property
    def repo_id(self) -> str | None:
        """The Hub repository the card's snippets load from (config [card] repo_id, or `mll23 build --repo`)."""
        return self.raw.get("card", {}).get("repo_id")

    @property
    def sample_fraction(self) -> float:
        """Share of each class of each split in the card's `sample` config."""
        return float(self.raw.get("card", {}).get("sample_fraction", DEFAULT_SAMPLE_FRACTION))

    @property
    def rare_class_min_images(self) -> int:
        """The card flags a class with fewer images than this in a split."""
        return self.raw.get("card", {}).get("rare_class_min_images", DEFAULT_RARE_CLASS_MIN_IMAGES)

    @property
    def datasheet(self) -> dict[str, str]:
        return dict(self.raw["datasheet"])

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
    return ReleaseConfig(raw=doc, source=source)


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
