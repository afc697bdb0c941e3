import dataclasses
import tomllib

import pytest

from pipeline.config import ConfigError, load_config, validate_config
from pipeline.resources import default_config_path


def _doc():
    return tomllib.loads(default_config_path().read_text())


def test_shipped_config_is_valid_and_has_18_classes_in_order(config):
    assert config.class_names[0] == "myeloblast"
    assert config.class_names[-1] == "lymphocyte_reactive"
    assert len(config.class_names) == 18
    assert sum(c.raw_count for c in config.classes) == 41_906
    assert sum(c.published_count for c in config.classes) == 41_621


def test_digest_is_stable_and_changes_with_content():
    a, b = validate_config(_doc(), "a"), validate_config(_doc(), "b")
    assert a.digest() == b.digest()
    doc = _doc()
    doc["split"]["seed"] = 24
    assert validate_config(doc, "c").digest() != a.digest()


@pytest.mark.parametrize(
    "mutate, key",
    [
        (lambda d: d.update(colour="red"), "colour"),
        (lambda d: d["dedup"].update(phash_threshold="four"), "dedup.phash_threshold"),
        (lambda d: d.update(version="1.0"), "version"),
        (lambda d: d["split"].update(extra=1), "split.extra"),
        (lambda d: d["dedup"].pop("conflict_policy"), "dedup.conflict_policy"),
    ],
)
def test_schema_errors_name_the_key(mutate, key):
    doc = _doc()
    mutate(doc)
    with pytest.raises(ConfigError) as exc:
        validate_config(doc, "cfg.toml")
    assert f"key '{key}'" in str(exc.value)


def test_duplicate_classes_and_bad_split_sum_are_refused():
    doc = _doc()
    doc["classes"].append(dict(doc["classes"][0]))
    with pytest.raises(ConfigError, match="key 'classes': duplicate labels \\['myeloblast'\\]"):
        validate_config(doc, "x")
    doc = _doc()
    doc["split"]["test"] = 0.3
    with pytest.raises(ConfigError, match="key 'split': .*sum to 1, got 1.1"):
        validate_config(doc, "x")


def test_version_override_is_validated(tmp_path):
    assert load_config(version="2.1.0").version == "2.1.0"
    with pytest.raises(ConfigError, match="key 'version'"):
        load_config(version="v2")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_release_date_overrides_the_config_and_must_be_a_date(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app
    from pipeline.config import ConfigError, load_config

    assert load_config(release_date="2026-01-15").raw["release_date"] == "2026-01-15"
    assert load_config().raw["release_date"] == "2025-12-01"
    for bad in ("2026-13-45", "15.01.2026", "2026-1-5"):
        with pytest.raises(ConfigError, match="release_date"):
            load_config(release_date=bad)
    raw = tmp_path / "raw"
    raw.mkdir()
    result = CliRunner().invoke(app, ["build", str(raw), "--out", str(tmp_path / "out"), "--release-date", "2026-02-30"])
    assert result.exit_code == 2 and "release_date: '2026-02-30' is not a date YYYY-MM-DD" in result.output
    assert not (tmp_path / "out").exists()


def _schema_defaults(table: dict) -> dict:
    return {key: prop["default"] for key, prop in table["properties"].items() if "default" in prop}


def _field_defaults(cls) -> dict:
    """The dataclass's plain defaults as TOML would spell them (None and nested tables have no schema default)."""
    found = {}
    for f in dataclasses.fields(cls):
        value = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if value is not None and not dataclasses.is_dataclass(value):
            found[f.name] = sorted(value) if isinstance(value, frozenset) else list(value) if isinstance(value, tuple) else value
    return found


def test_schema_defaults_are_the_dataclass_defaults():
    from pipeline import config as cfg
    from pipeline.resources import load_schema

    schema = load_schema("config")
    tables = {"image": cfg.ImageConfig, "dedup": cfg.DedupConfig, "split": cfg.SplitConfig, "shards": cfg.ShardsConfig,
              "card": cfg.CardConfig, "dataset": cfg.DatasetProse, "datasheet": cfg.Datasheet}
    assert _schema_defaults(schema) == _field_defaults(cfg.ReleaseConfig)
    assert _schema_defaults(schema["properties"]["classes"]["items"]) == _field_defaults(cfg.ClassInfo)
    for key, cls in tables.items():
        assert _schema_defaults(schema["properties"][key]) == _field_defaults(cls), key
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(cfg.ReleaseConfig)} - {"raw", "source"}


def test_omitted_keys_take_their_defaults_and_dataset_prose_is_read():
    doc = _doc()
    del doc["image"]["max_file_bytes"], doc["dedup"]["lookalike_threshold"], doc["card"]
    doc["dataset"] = {"cells": "single white blood cells", "keywords": ["hematology"]}
    config = validate_config(doc, "x")
    assert (config.max_file_bytes, config.lookalike_threshold, config.repo_id, config.sample_fraction) == (16_000_000, 10, None, 0.01)
    assert config.dataset.cells == "single white blood cells" and config.dataset.keywords == ("hematology",)
    assert config.dataset.excluded_cells == "dysplastic cells"
    doc["dataset"]["colour"] = "red"
    with pytest.raises(ConfigError, match="key 'dataset.colour'"):
        validate_config(doc, "x")


def _counts(labels: list[str]):
    from pipeline.records import ReleaseCounts

    ledger = {"kept": 30, "duplicate": 5, "label_conflict": 2, "excluded": 3, "invalid": 1}
    return ReleaseCounts.from_manifest({
        "splits": {s: {"total": 10, "per_class": {label: 1 for label in labels}} for s in ("train", "validation", "test")},
        "per_class": {label: {"raw": 2, "kept": 1} for label in labels}, "raw_images": 41, "ledger": ledger, "ledger_total": 41})


def test_card_and_croissant_prose_follow_the_config():
    from pipeline.release import card, croissant

    doc = _doc()
    doc["dedup"]["conflict_policy"] = "majority"
    doc["dataset"] = {"cells": "single white blood cells", "excluded_cells": "cells flagged dysplastic in annotations.csv", "keywords": ["hematology"]}
    config = validate_config(doc, "x")
    counts = _counts(config.class_names)
    text = card.render_card(config, counts, {}, card.Layout({"train": 1, "validation": 1, "test": 1}, {}))
    assert "30 images of single white blood cells in 18 classes" in text
    assert "are all dropped" not in text and "strict majority" in text  # what `majority` does, not `drop_all`
    assert "- cells flagged dysplastic in annotations.csv are excluded;" in text
    # keys left out: their defaults claim nothing about a particular dataset (MLL23's wording is its config's)
    assert "Classes are strongly imbalanced; this reflects" not in text and "Cleaning, reproduced by this release's build:" in text
    assert "paper" not in text.split("## Preprocessing")[1].split("##")[0]
    described = croissant.croissant_document(config, counts, [])
    assert described["keywords"] == ["image-classification", "hematology"]
    assert "Cells flagged dysplastic in annotations.csv excluded." in described["rai:dataPreprocessingProtocol"]
