"""The dataset card (README.md of a release): Hugging Face YAML header + a datasheet (Gebru et al.).

The text is pipeline/templates/card.md (wds_card.md for the tars' own card); the dataset's prose comes from the
config's [datasheet] and [dataset] tables, every figure from the build's measured counts.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path

import yaml

from pipeline.release import snippets
from pipeline.config import SPLITS, ReleaseConfig
from pipeline.records import ReleaseCounts
from pipeline.stages.dedup import CENTRE_RADIUS
from pipeline.release.layout import CARD, DATA_DIR, SAMPLE_DIR, WDS_DIR
from pipeline.release.snippets import fence
from pipeline.release.wds import IMAGE_FIELD, TarShard, brace_pattern
from pipeline.resources import template_path


@dataclass(frozen=True)
class Layout:
    """The files the card's snippets and prose refer to: shards per split (the same number in both formats)
    and rows per split of the `sample` config."""

    shards: dict[str, int]
    sample_rows: dict[str, int]

    @property
    def first_split(self) -> str | None:
        """The split the snippets read: train, or the first split with images."""
        return next((s for s in SPLITS if self.shards.get(s)), None)


def size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M"


def card_header(config: ReleaseConfig, counts: ReleaseCounts, split_bytes: dict[str, int], layout: Layout) -> dict:
    names = {str(i): name for i, name in enumerate(config.class_names)}
    splits = counts.splits
    return {
        "license": config.license,
        "pretty_name": config.pretty_name,
        "task_categories": ["image-classification"],
        "size_categories": [size_category(counts.kept)],
        "tags": list(config.dataset.keywords),
        "configs": [
            {
                "config_name": "default",
                "default": True,
                # an empty split has no shard and is left out: `datasets` cannot read a Parquet file of no rows
                "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*.parquet"} for s in SPLITS if splits[s].total],
            },
            *(
                [{"config_name": "sample", "data_files": [{"split": s, "path": f"{SAMPLE_DIR}/{s}-*.parquet"} for s in SPLITS if layout.sample_rows.get(s)]}]
                if any(layout.sample_rows.values())
                else []
            ),
        ],
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": names}}},
                *({"name": c, "dtype": "string"} for c in ("image_id", "source_file", "patient_id", "annotator", "group_id", "pixel_sha256", "phash", "extra")),
            ],
            "splits": [{"name": s, "num_bytes": split_bytes.get(s, 0), "num_examples": splits[s].total} for s in SPLITS if splits[s].total],
            "download_size": sum(split_bytes.values()),
            "dataset_size": sum(split_bytes.values()),
        },
    }


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def class_table(config: ReleaseConfig, counts: ReleaseCounts) -> str:
    rows = []
    for c in config.classes:
        per = counts.per_class[c.label]
        rows.append(
            [c.label, c.full_name, c.lineage, per.raw, per.kept, *(counts.splits[s].of(c.label) for s in SPLITS)]
        )
    total = ["**total**", "", "", counts.raw_images, counts.kept, *(counts.splits[s].total for s in SPLITS)]
    return _table(["label", "cell type", "lineage", "raw", "published", *SPLITS], rows + [total])


def cleaning_table(counts: ReleaseCounts) -> str:
    led = counts.ledger
    rows = [[fate, led[fate]] for fate in ("kept", "duplicate", "label_conflict", "excluded", "invalid")]
    rows.append(["**raw inputs**", counts.ledger_total])
    return _table(["fate", "images"], rows)


def class_order(config: ReleaseConfig) -> str:
    return ", ".join(f"{i} `{name}`" for i, name in enumerate(config.class_names))


def rare_classes(config: ReleaseConfig, counts: ReleaseCounts) -> str:
    """The classes with fewer than the config's minimum of images in some split, with their measured counts."""
    floor = config.rare_class_min_images
    present = [s for s in SPLITS if counts.splits[s].total]
    lines = []
    for c in config.class_names:
        per_split = {s: counts.splits[s].of(c) for s in present}
        short = [s for s, n in per_split.items() if n < floor]
        if short:
            where = ", ".join(f"{s} {n:,}" for s, n in per_split.items())
            lines.append(f"- `{c}`: {where} (under {floor} in {', '.join(short)})")
    if not lines:
        return f"Every class has at least {floor} images in every split."
    return (
        f"**Rare classes.** These classes have fewer than {floor} images in a split, too few for reliable "
        f"per-class metrics there (a class with 0 images in a split cannot be evaluated on it):\n\n" + "\n".join(lines)
    )


def sample_text(config: ReleaseConfig, layout: Layout) -> str:
    rows = layout.sample_rows
    split_counts = ", ".join(f"{rows.get(s, 0):,} {s}" for s in SPLITS if layout.shards.get(s))
    return (
        f"The `sample` config holds {sum(rows.values()):,} images ({split_counts}): {config.sample_fraction * 100:g}% of each "
        f"class in each split, at least one image of every class a split has (those with the smallest `image_id`), "
        f"for quick tries and the Hub's dataset viewer."
    )


def how_to_load(config: ReleaseConfig, layout: Layout) -> str:
    """The card's loading section: the Hub repository (when the config or `--repo` names one) and a local copy."""
    split = layout.first_split
    if split is None:
        return "## How to load\n\nThis release has no images.\n"
    local = snippets.Source(snippets.local_dir(config))
    hub = snippets.hub_source(config)
    sample = any(layout.sample_rows.values())
    parts = [
        "## How to load",
        f"Label `i` is the `i`-th class name (`features[\"label\"].names`), in the config's order, which is the order of "
        f"the class table below and not alphabetical: {class_order(config)}.",
    ]
    if hub is not None:
        parts += [
            f"From the Hub repository `{config.repo_id}` at this release's tag `{hub.revision}`:",
            fence(snippets.datasets_block(hub, split, sample=sample)),
            f"A local copy of the whole release, in the directory `{local.path}` that the blocks below read:",
            fence(snippets.download_block(config)),
        ]
    parts += [
        f"From a local copy of this release, the directory `{local.path}`:",
        fence(snippets.datasets_block(local, split, sample=sample)),
    ]
    if sample:
        parts.append(sample_text(config, layout))
    torch_source = hub or local
    shards = layout.shards[split]
    parts += [
        "### PyTorch",
        f"Each split has at least {config.min_shards_per_split} shards in each format (one row per shard when it has fewer rows), "
        f"with rows balanced to within one, so DataLoader workers share the work: "
        f"{', '.join(f'{s} {n}' for s, n in layout.shards.items() if n)} shards. "
        "Parquet through `datasets`, map-style and streaming:",
        fence(snippets.torch_parquet_block(torch_source, split, shards)),
        f"The WebDataset tars (`{WDS_DIR}/`) through the `webdataset` library:",
        fence(snippets.torch_wds_block(snippets.tar_dir_code(torch_source, split, in_subfolder=True), split, shards)),
    ]
    return "\n\n".join(parts) + "\n"


def _image_bytes_phrase(codec: str) -> str:
    """What the image bytes are, as the build published them (decode.publish_as_original)."""
    if codec == "original":
        return "the source file when it is lossless RGB or an RGB JPEG, else a lossless PNG of its pixels"
    return "a lossless PNG of the source's pixels, or the source file itself when it is an RGB JPEG"


# What the cleaning does with copies whose labels disagree, per `dedup.conflict_policy` (stages/dedup.py).
CONFLICT_RULES = {
    "drop_all": "are all dropped",
    "majority": "keep one copy of the label a strict majority of the copies carry (all are dropped when no label has one)",
}


def fill_template(name: str, values: dict[str, str]) -> str:
    """A template of pipeline/templates/ with its ``${name}`` fields filled (KeyError names a missing one)."""
    return string.Template(template_path(name).read_text(encoding="utf-8")).substitute(values)


def yaml_header(header: dict) -> str:
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000) + "---\n"


def exclusion_phrase(config: ReleaseConfig) -> str:
    """The card's cleaning item on exclusions: the config's excluded cells, and its excluded labels."""
    labels = f", and the labels {', '.join(sorted(config.exclude_labels))}" if config.exclude_labels else ""
    return f"{config.dataset.excluded_cells} are excluded{labels}"


def _summary_fields(config: ReleaseConfig, counts: ReleaseCounts, layout: Layout) -> dict[str, str]:
    """The card's title lines, loading section and distribution: names, dates and totals."""
    return {
        "pretty_name": config.pretty_name,
        "version": config.version,
        "release_date": config.release_date,
        "license": config.license,
        "kept": f"{counts.kept:,}",
        "cells": config.dataset.cells,
        "class_count": str(len(config.class_names)),
        "split_totals": ", ".join(f"{counts.splits[s].total:,}" for s in SPLITS),
        "how_to_load": how_to_load(config, layout),
        "sample_dir": SAMPLE_DIR,
        "wds_dir": WDS_DIR,
        "homepage_line": f"Homepage: {config.homepage}" if config.homepage else "",
        "citation": config.citation.strip(),
    }


def _composition_fields(config: ReleaseConfig, counts: ReleaseCounts) -> dict[str, str]:
    """The card's composition and cleaning sections: the record layout, the class and fate tables, the rules."""
    width, height = config.image_size
    description = config.datasheet.image_description
    return {
        "image_description": f"Images are {width} x {height} RGB." if description is None else description,
        "image_bytes": _image_bytes_phrase(config.publish_codec),
        "image_field": IMAGE_FIELD,
        "class_table": class_table(config, counts),
        "class_balance": config.dataset.class_balance,
        "rare_classes": rare_classes(config, counts),
        "cleaning_intro": config.dataset.cleaning_intro,
        "lookalike_threshold": str(config.lookalike_threshold),
        "centre_radius": str(CENTRE_RADIUS),
        "phash_threshold": str(config.phash_threshold),
        "conflict_rule": CONFLICT_RULES[config.conflict_policy],
        "conflict_policy": config.conflict_policy,
        "exclusion": exclusion_phrase(config),
        "cleaning_table": cleaning_table(counts),
    }


def _datasheet_fields(config: ReleaseConfig) -> dict[str, str]:
    ds = config.datasheet
    names = ("motivation", "collection", "labelling", "uses", "limitations", "biases", "personal_information", "maintenance")
    return {name: getattr(ds, name) for name in names}


def render_card(config: ReleaseConfig, counts: ReleaseCounts, split_bytes: dict[str, int], layout: Layout, extra_sections: list[str] | None = None) -> str:
    """README.md of a release: the YAML header, then pipeline/templates/card.md filled from the config and counts."""
    values = {**_summary_fields(config, counts, layout), **_composition_fields(config, counts), **_datasheet_fields(config)}
    body = fill_template("card.md", values)
    return f"{yaml_header(card_header(config, counts, split_bytes, layout))}\n{body}" + "\n".join(extra_sections or [])


def loading_safely_section(config: ReleaseConfig) -> str:
    """The card's advice for consumers who did not build the release themselves: what in the usual loaders
    would run or read what a tampered copy planted, and what to do instead."""
    width, height = config.image_size
    return f"""
## Loading safely

A copy of this release that you did not build yourself is untrusted input: treat its files as data only.

- Check it first with `mll23 verify <directory>` (from `mll23-pipeline`): it bounds memory and time by the
  declared sizes and refuses anything the release format does not define.
- Decode images only as the formats this release uses, and check their size:
  `PIL.Image.open(io.BytesIO(data), formats=["PNG", "TIFF", "JPEG"])`, expecting {width} x {height}. With `datasets`,
  load the Parquet files by name (`load_dataset("parquet", data_files=...)`) with declared features and
  `Image(decode=False)`: otherwise the card chooses the files and every Pillow format is tried (an EPS image
  starts Ghostscript).
- With `webdataset`, never call `.decode(...)`: its default handlers unpickle `.pyd` and `.pickle` members.
  Pick the members first, `.to_tuple("png", "cls", "json")`, and decode them yourself.
- Build shard lists from the file names in `manifest.json`, each checked against `wds/<split>-NNNNNN.tar`;
  never hand webdataset a URL or brace pattern read from a file (`pipe:` runs a command).
- Give `croissant.json` to mlcroissant only after checking that it names no URL, archive or path outside
  the release: mlcroissant downloads, clones and extracts what it names.

The mll23-pipeline README ("Loading a release") has the complete code, tested on hostile copies.
"""


def write_card(release_dir: Path, text: str) -> None:
    (release_dir / CARD).write_text(text, encoding="utf-8")


def wds_features(class_names: list[str]) -> list[dict]:
    """The tars' card `dataset_info.features`, the same in every release: `png` as Image, `cls` as ClassLabel
    with the release's class names, `json` as a JSON object."""
    names = {str(i): name for i, name in enumerate(class_names)}
    return [
        {"name": IMAGE_FIELD, "dtype": "image"},
        {"name": "cls", "dtype": {"class_label": {"names": names}}},
        {"name": "json", "dtype": "json"},
    ]


def wds_loading(config: ReleaseConfig, shards: dict[str, list[TarShard]]) -> str:
    """The tars' card's snippets: the webdataset branch of the Hub repository (its root is this folder) and
    the folder of a local copy."""
    split = next(s for s in SPLITS if shards.get(s))
    local = snippets.Source(f"{snippets.local_dir(config)}/{WDS_DIR}")
    hub = snippets.hub_source(config, snippets.WDS_TAG_SUFFIX)
    parts = []
    if hub is not None:
        parts += [
            f"From the Hub repository `{config.repo_id}` at tag `{hub.revision}` (branch `webdataset`, whose root is this folder):",
            fence(snippets.datasets_block(hub, split, sample=False, tars=True)),
        ]
    parts += [f"From a local copy of the release, the folder `{local.path}`:", fence(snippets.datasets_block(local, split, sample=False, tars=True))]
    source = hub or local
    parts += [
        f"Through the `webdataset` library and PyTorch ({split} has {len(shards[split])} shards):",
        fence(snippets.torch_wds_block(snippets.tar_dir_code(source, split, in_subfolder=False), split, len(shards[split]))),
    ]
    return "\n\n".join(parts)


def render_wds_card(config: ReleaseConfig, shards: dict[str, list[TarShard]], split_bytes: dict[str, int]) -> str:
    """wds/README.md: a card of its own, so `datasets` builds the WebDataset variant with declared features.

    The release's root card keeps only Parquet configs: `datasets` picks one builder for all configs from the
    first config's files (huggingface/datasets#7101), so a tar config there would be read as Parquet.
    """
    present = [s for s in SPLITS if shards.get(s)]
    header = {
        "license": config.license,
        "pretty_name": f"{config.pretty_name} (WebDataset shards)",
        "task_categories": ["image-classification"],
        "configs": [{"config_name": "default", "default": True, "data_files": [{"split": s, "path": f"{s}-*.tar"} for s in present]}],
        "dataset_info": {
            "features": wds_features(config.class_names),
            "splits": [{"name": s, "num_bytes": split_bytes.get(s, 0), "num_examples": sum(x.num_examples for x in shards[s])} for s in present],
        },
    }
    body = fill_template("wds_card.md", {
        "pretty_name": config.pretty_name,
        "version": config.version,
        "image_field": IMAGE_FIELD,
        "class_count": str(len(config.class_names)),
        "class_order": class_order(config),
        "loading": wds_loading(config, shards),
    })
    return f"{yaml_header(header)}\n{body}"


def write_wds_card(release_dir: Path, config: ReleaseConfig, shards: dict[str, list[TarShard]]) -> None:
    if not any(shards.values()):
        return  # nothing to describe: a release without images has no WebDataset variant
    split_bytes = {s: sum((release_dir / x.path).stat().st_size for x in shards[s]) for s in SPLITS}
    (release_dir / WDS_DIR / CARD).write_text(render_wds_card(config, shards, split_bytes), encoding="utf-8")


def wds_and_croissant_section(config: ReleaseConfig, shards: dict[str, list[TarShard]]) -> str:
    """The dataset card's section on the WebDataset variant and the Croissant metadata."""
    croissant = fence(snippets.croissant_block(snippets.local_dir(config)))
    patterns = [(s, brace_pattern(s, len(shards.get(s, [])))) for s in SPLITS]
    if not any(p for _, p in patterns):
        return f"\n## Croissant metadata\n\nNo image was published, so there are no WebDataset shards.\n\n{croissant}\n"
    rows = "\n".join(f"| {s} | {sum(x.num_examples for x in shards[s]):,} | {len(shards[s])} | `{p}` |" for s, p in patterns if p)
    return f"""
## WebDataset shards and Croissant metadata

The same records are also published as WebDataset tar shards in `{WDS_DIR}/`: one sample per image, key
`image_id`, members `<key>.cls` (label index), `<key>.json` (the record's metadata) and `<key>.{IMAGE_FIELD}` (the same
bytes as the Parquet `image` column). Shard `i` of a split holds the same rows in both formats; shard lists and
counts are in `manifest.json`. `{WDS_DIR}/README.md` is their own card (on the Hub: branch `webdataset`).

| split | samples | shards | shard pattern |
| --- | --- | --- | --- |
{rows}

`croissant.json` describes the release in Croissant 1.1 (every file with its sha256, the classes, one record per
image), read here from a local copy:

{croissant}
"""
