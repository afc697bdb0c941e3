"""The dataset card (README.md of a release): Hugging Face YAML header + a datasheet (Gebru et al.).

Prose comes from the config's [datasheet] table; every figure comes from the build's measured counts.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.config import SPLITS, ReleaseConfig
from pipeline.dedup import CENTRE_RADIUS


def size_category(n: int) -> str:
    for bound, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < bound:
            return name
    return "1M<n<10M"


def card_header(config: ReleaseConfig, counts: dict, split_bytes: dict[str, int]) -> dict:
    names = {str(i): name for i, name in enumerate(config.class_names)}
    splits = counts["splits"]
    return {
        "license": config.raw["license"],
        "pretty_name": config.raw["pretty_name"],
        "task_categories": ["image-classification"],
        "size_categories": [size_category(counts["ledger"]["kept"])],
        "tags": ["biology", "medical", "hematology", "microscopy", "blood-smear", "single-cell"],
        "configs": [
            {
                "config_name": "default",
                "default": True,
                # an empty split has no shard and is left out: `datasets` cannot read a Parquet file of no rows
                "data_files": [{"split": s, "path": f"data/{s}-*.parquet"} for s in SPLITS if splits[s]["total"]],
            }
        ],
        "dataset_info": {
            "features": [
                {"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": names}}},
                *({"name": c, "dtype": "string"} for c in ("image_id", "source_file", "patient_id", "annotator", "group_id", "pixel_sha256", "phash", "extra")),
            ],
            "splits": [{"name": s, "num_bytes": split_bytes.get(s, 0), "num_examples": splits[s]["total"]} for s in SPLITS if splits[s]["total"]],
            "download_size": sum(split_bytes.values()),
            "dataset_size": sum(split_bytes.values()),
        },
    }


def _table(header: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def class_table(config: ReleaseConfig, counts: dict) -> str:
    rows = []
    for c in config.classes:
        per = counts["per_class"][c.label]
        rows.append(
            [c.label, c.full_name, c.lineage, per["raw"], per["kept"], *(counts["splits"][s]["per_class"].get(c.label, 0) for s in SPLITS)]
        )
    total = ["**total**", "", "", counts["raw_images"], counts["ledger"]["kept"], *(counts["splits"][s]["total"] for s in SPLITS)]
    return _table(["label", "cell type", "lineage", "raw", "published", *SPLITS], rows + [total])


def cleaning_table(counts: dict) -> str:
    led = counts["ledger"]
    rows = [[fate, led[fate]] for fate in ("kept", "duplicate", "label_conflict", "excluded", "invalid")]
    rows.append(["**raw inputs**", counts["ledger_total"]])
    return _table(["fate", "images"], rows)


def render_card(config: ReleaseConfig, counts: dict, split_bytes: dict[str, int], extra_sections: list[str] | None = None) -> str:
    ds = config.datasheet
    header = yaml.safe_dump(card_header(config, counts, split_bytes), sort_keys=False, allow_unicode=True, width=1000)
    size = config.image_size
    body = f"""# {config.raw['pretty_name']}

Version **{config.version}**, released {config.release_date}. License: `{config.raw['license']}`.
{counts['ledger']['kept']:,} images of single nucleated cells in {len(config.class_names)} classes, split into
train / validation / test ({', '.join(f"{counts['splits'][s]['total']:,}" for s in SPLITS)}).

## How to load

```python
from datasets import load_dataset
ds = load_dataset("<this repository or directory>")          # add revision="v{config.version}" on the Hub
ds["train"].features["label"].names                         # the {len(config.class_names)} class names
```

Every file of this release is listed with its size and sha256 in `manifest.json`; `ledger.csv` gives the
fate of every raw input image (kept, duplicate, label_conflict, excluded, invalid) and the reason.

## Motivation

{ds['motivation']}

## Composition

{ds.get('image_description', f'Images are {size[0]} x {size[1]} RGB.')}

Each record has `image` (the lossless image), `label` (class index; names below), `image_id` (first 16 hex
digits of the sha256 of the decoded RGB pixels, stable across releases), `source_file` (path in the raw
archive), `patient_id` (pseudonymous, where known), `annotator`, `group_id` (images of the same cell at
another focus or crop share it), `pixel_sha256` and `phash`. Splits are stratified by label and grouped:
all images of one patient and of one look-alike group are in the same split.

{class_table(config, counts)}

Classes are strongly imbalanced; this reflects how often the cell types occur.

## Collection process

{ds['collection']}

## Preprocessing, cleaning and labelling

{ds['labelling']}

Cleaning, as the dataset's paper describes it, reproduced by this release's build:
- duplicate images are removed: identical pixels, and copies of one scan up to re-encoding, lossy
  compression, a shift by a few pixels or a brightness change, confirmed by a pixel comparison that
  every candidate pair gets (candidates: pHash within {config.lookalike_threshold} bits, or a hash of the
  window centred on the cell within {CENTRE_RADIUS} bits); one copy is kept;
- duplicates whose labels disagree are all dropped (policy `{config.conflict_policy}`);
- dysplastic cells are excluded{', and the labels ' + ', '.join(sorted(config.exclude_labels)) if config.exclude_labels else ''};
- images of the same cell at another focus or crop are not duplicates: they are kept and grouped;
- `ledger.csv` names, for every duplicate, label conflict and look-alike group, the test that decided it
  and its scores against the bounds, so borderline pairs can be audited.

{cleaning_table(counts)}

## Uses

{ds['uses']}

## Limitations and biases

{ds['limitations']}

{ds.get('biases', '')}

## Personal and sensitive information

{ds.get('personal_information', '')}

## Distribution

Published as Parquet shards (`data/`) readable by `datasets.load_dataset`; license `{config.raw['license']}`.
{('Homepage: ' + config.raw['homepage']) if config.raw.get('homepage') else ''}

## Maintenance

{ds.get('maintenance', '')}

## Citation

```bibtex
{config.raw.get('citation', '').strip()}
```
"""
    sections = "\n".join(extra_sections or [])
    return f"---\n{header}---\n\n{body}{sections}"


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
  `PIL.Image.open(io.BytesIO(data), formats=["PNG", "TIFF"])`, expecting {width} x {height}. With `datasets`,
  load the Parquet files by name (`load_dataset("parquet", data_files=...)`) with declared features and
  `Image(decode=False)`: otherwise the card chooses the files and every Pillow format is tried (an EPS image
  starts Ghostscript).
- With `webdataset`, never call `.decode(...)`: its default handlers unpickle `.pyd` and `.pickle` members.
  Pick the members first, `.to_tuple("tif;png", "cls", "json")`, and decode them yourself.
- Build shard lists from the file names in `manifest.json`, each checked against `wds/<split>-NNNNNN.tar`;
  never hand webdataset a URL or brace pattern read from a file (`pipe:` runs a command).
- Give `croissant.json` to mlcroissant only after checking that it names no URL, archive or path outside
  the release: mlcroissant downloads, clones and extracts what it names.

The mll23-pipeline README ("Loading a release") has the complete code, tested on hostile copies.
"""


def write_card(release_dir: Path, text: str) -> None:
    (release_dir / "README.md").write_text(text, encoding="utf-8")
