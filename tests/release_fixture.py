"""A hand-made minimal release, written in milliseconds, for the tests of publishing and loading.

Why not the real build (`pipeline.build.build_release` on a `mll23 synth` archive)? Publishing tests need many
releases that differ in exactly one chosen way (one more train row, new pixels in one split, another version, a
release note more or fewer) and need them fast; a real build takes seconds and cannot be steered like that. The
tests that need a real release build one (test_publish_cli, test_publish_wds, test_publish_security, ...).

What the publishing and loading tests rely on, in the file names of pipeline.release.layout:

    README.md                                  dataset card: YAML (license, pretty_name, configs with data_files per
                                               split, dataset_info.features image: image, label: class_label) + body
    data/{split}-00000-of-00001.parquet        image: struct<bytes: binary, path: string>, label: int64, image_id
    images/{image_id}.png                      a few example crops (a file the real layout does not have)
    ledger.csv, croissant.json, release_notes/v{version}.md   (short stand-ins, not the real formats)
    manifest.json                              name, version, release_date, files [{path, size, sha256}] (every
                                               file but itself), counts {"splits": {split: rows}, "labels": {...}}

Its manifest has only what publish reads (version, files), so it is read with `required=PUBLISH_KEYS`. Everything
is derived from the arguments (seeded pixels, no clock), so two calls with the same arguments write byte-identical
releases, like the real build.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.release.layout import (
    CARD,
    CROISSANT,
    DATA_DIR,
    LEDGER,
    dumps_json,
    notes_relpath,
    parquet_shard_name,
    read_manifest as read_checked_manifest,
    write_manifest,
)
from pipeline.untrusted.files import PUBLISH_KEYS

LABELS = ("myeloblast", "lymphocyte", "monocyte")
SPLITS = ("train", "validation", "test")
DEFAULT_ROWS = {"train": 6, "validation": 2, "test": 3}

FEATURES = {
    "image": {"_type": "Image"},
    "label": {"names": list(LABELS), "_type": "ClassLabel"},
    "image_id": {"dtype": "string", "_type": "Value"},
}


def png_bytes(seed: int, size: int = 16) -> bytes:
    rng = random.Random(seed)
    pixels = bytes(rng.randrange(256) for _ in range(size * size * 3))
    buf = io.BytesIO()
    Image.frombytes("RGB", (size, size), pixels).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _rows(split: str, n: int, salt: int) -> list[dict]:
    offset = {"train": 0, "validation": 1000, "test": 2000}[split]
    rows = []
    for i in range(n):
        image_id = f"mll23_{offset + i:05d}"
        seed = int(hashlib.sha256(f"{image_id}/{salt}".encode()).hexdigest()[:8], 16)
        rows.append({"image_id": image_id, "label": (offset + i) % len(LABELS), "png": png_bytes(seed)})
    return rows


def _write_parquet(path: Path, rows: list[dict]) -> int:
    schema = pa.schema(
        [
            pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
            pa.field("label", pa.int64()),
            pa.field("image_id", pa.string()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": FEATURES}})},
    )
    table = pa.table(
        {
            "image": [{"bytes": r["png"], "path": f"{r['image_id']}.png"} for r in rows],
            "label": [r["label"] for r in rows],
            "image_id": [r["image_id"] for r in rows],
        },
        schema=schema,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd", row_group_size=max(1, len(rows)))
    return table.nbytes


def _card(version: str, rows: dict[str, int], nbytes: dict[str, int], release_date: str) -> str:
    names = "\n".join(f"          '{i}': {name}" for i, name in enumerate(LABELS))
    data_files = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in SPLITS)
    splits = "\n".join(f"  - name: {s}\n    num_bytes: {nbytes[s]}\n    num_examples: {rows[s]}" for s in SPLITS)
    return f"""---
license: cc-by-4.0
pretty_name: 'MLL23: expert-annotated single-cell peripheral blood images'
task_categories:
- image-classification
size_categories:
- n<1K
configs:
- config_name: default
  data_files:
{data_files}
dataset_info:
  features:
  - name: image
    dtype: image
  - name: label
    dtype:
      class_label:
        names:
{names}
  - name: image_id
    dtype: string
  splits:
{splits}
  dataset_size: {sum(nbytes.values())}
---

# MLL23 (test fixture) v{version}

Released {release_date}. Single-cell crops from peripheral blood smears, {len(LABELS)} classes.
"""


def write_fixture_release(
    out: Path,
    *,
    version: str = "1.0.0",
    release_date: str = "2025-12-01",
    rows: dict[str, int] | None = None,
    salt: dict[str, int] | None = None,
    gallery: tuple[str, ...] = ("mll23_00000", "mll23_00001", "mll23_00002"),
    notes: tuple[str, ...] | None = None,
) -> Path:
    """Write a release into `out` (created; must not exist or be empty) and return it.

    `rows` gives the rows per split, `salt` changes a split's pixels (so its Parquet changes), `gallery` the
    image ids copied to images/, `notes` the versions that have release notes (default: just this one)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    rows = {**DEFAULT_ROWS, **(rows or {})}
    salt = salt or {}
    nbytes: dict[str, int] = {}
    all_rows: dict[str, dict] = {}
    for split in SPLITS:
        split_rows = _rows(split, rows[split], salt.get(split, 0))
        nbytes[split] = _write_parquet(out / DATA_DIR / parquet_shard_name(split, 0, 1), split_rows)
        all_rows.update({r["image_id"]: {**r, "split": split} for r in split_rows})
    (out / CARD).write_text(_card(version, rows, nbytes, release_date), encoding="utf-8")
    for image_id in gallery:
        (out / "images").mkdir(exist_ok=True)
        (out / "images" / f"{image_id}.png").write_bytes(all_rows[image_id]["png"])
    _write_ledger(out, all_rows)
    croissant = {"@context": {"@vocab": "https://schema.org/"}, "@type": "Dataset", "name": "mll23",
                 "version": version, "datePublished": release_date}
    (out / CROISSANT).write_text(dumps_json(croissant), encoding="utf-8")
    for note_version in notes or (version,):
        (out / notes_relpath(note_version)).parent.mkdir(exist_ok=True)
        (out / notes_relpath(note_version)).write_text(f"# v{note_version}\n\nTest release.\n")
    label_counts = {name: sum(1 for r in all_rows.values() if r["label"] == i) for i, name in enumerate(LABELS)}
    write_manifest(out, {"name": "mll23", "version": version, "release_date": release_date,
                         "counts": {"splits": dict(rows), "labels": label_counts}})
    return out


def _write_ledger(out: Path, all_rows: dict[str, dict]) -> None:
    with (out / LEDGER).open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["relpath", "label", "fate", "reason", "split", "image_id"])
        for image_id, r in sorted(all_rows.items()):
            writer.writerow([f"{LABELS[r['label']]}/{image_id}.tif", LABELS[r["label"]], "kept", "", r["split"],
                             image_id])


def read_manifest(release: Path) -> dict:
    return read_checked_manifest(release, required=PUBLISH_KEYS)


def split_counts(release: Path) -> dict[str, int]:
    """Rows per split as the manifest records them (the one place to adapt if the real manifest differs)."""
    return dict(read_manifest(release)["counts"]["splits"])
