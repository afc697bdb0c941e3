"""The release configuration: one TOML file, validated against schemas/config.schema.json before any work."""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from datetime import date
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from pipeline.resources import default_config_path, load_schema

SPLITS = ("train", "validation", "test")
DEFAULT_MAX_FILE_BYTES = 16_000_000


class ConfigError(ValueError):
    """A configuration problem, naming the key at fault."""


@dataclass(frozen=True)
class ClassInfo:
    label: str
    lineage: str
    full_name: str
    raw_count: int | None
    published_count: int | None


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
                full_name=c.get("full_name", c["label"]),
                raw_count=c.get("raw_count"),
                published_count=c.get("published_count"),
            )
            for c in self.raw["classes"]
        )

    @property
    def class_names(self) -> list[str]:
        return [c["label"] for c in self.raw["classes"]]

    def label_index(self, label: str) -> int:
        return self.class_names.index(label)

    @property
    def exclude_labels(self) -> frozenset[str]:
        return frozenset(self.raw.get("exclude_labels", []))

    @property
    def image_size(self) -> tuple[int, int]:
        return self.raw["image"]["width"], self.raw["image"]["height"]

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
    def image_compression(self) -> str:
        return self.raw["shards"].get("image_compression", "none")

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


def _error_lines(error: jsonschema.ValidationError) -> list[tuple[str, str]]:
    """(key, message) for one schema error; an unknown or missing key is named itself, not its parent table."""
    parent = [str(p) for p in error.absolute_path]
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
    unknown_excluded = sorted(set(doc.get("exclude_labels", [])) - set(labels))
    if unknown_excluded:
        raise ConfigError(f"{source}: key 'exclude_labels': not in classes: {unknown_excluded}")
    total = sum(float(doc["split"][s]) for s in SPLITS)
    if not math.isclose(total, 1.0, abs_tol=1e-9):
        raise ConfigError(f"{source}: key 'split': train + validation + test must sum to 1, got {total:g}")
    return ReleaseConfig(raw=doc, source=source)


def load_config(path: Path | None = None, *, version: str | None = None, release_date: str | None = None) -> ReleaseConfig:
    """Load and validate a release config; the shipped MLL23 config when path is None. `version` and
    `release_date` (YYYY-MM-DD, a real date) override the config's."""
    path = Path(path) if path is not None else default_config_path()
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    if version is not None:
        doc["version"] = version
    if release_date is not None:
        try:
            date.fromisoformat(release_date)
        except ValueError:
            raise ConfigError(f"release_date: {release_date!r} is not a date YYYY-MM-DD") from None
        doc["release_date"] = release_date
    return validate_config(doc, str(path))
