"""A tiny release directory in the layout `mll23 build` writes, for tests of publishing and loading.

Stand-in until the real build is merged: swap `build_release` for a call to the build on a synthetic raw archive
(`mll23 synth` + `mll23 build`). The tests only rely on the layout below and on `manifest.json`:

    README.md                                  dataset card: YAML (license, pretty_name, configs with data_files per
                                               split, dataset_info.features image: image, label: class_label) + body
    data/{split}-00000-of-00001.parquet        image: struct<bytes: binary, path: string>, label: int64, image_id
    images/{image_id}.png                      a few example crops
    ledger.csv, croissant.json, release_notes/v{version}.md
    manifest.json                              name, version, release_date, files [{path, size, sha256}] (every
                                               file but itself), counts {"splits": {split: rows}, "labels": {...}}

Everything is derived from the arguments (seeded pixels, no clock), so two builds with the same arguments are
byte-identical, like the real build.
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


def build_release(
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
        nbytes[split] = _write_parquet(out / "data" / f"{split}-00000-of-00001.parquet", split_rows)
        all_rows.update({r["image_id"]: {**r, "split": split} for r in split_rows})
    (out / "README.md").write_text(_card(version, rows, nbytes, release_date), encoding="utf-8")
    for image_id in gallery:
        (out / "images").mkdir(exist_ok=True)
        (out / "images" / f"{image_id}.png").write_bytes(all_rows[image_id]["png"])
    with (out / "ledger.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["relpath", "label", "fate", "reason", "split", "image_id"])
        for image_id, r in sorted(all_rows.items()):
            writer.writerow([f"{LABELS[r['label']]}/{image_id}.tif", LABELS[r["label"]], "kept", "", r["split"],
                             image_id])
    croissant = {"@context": {"@vocab": "https://schema.org/"}, "@type": "Dataset", "name": "mll23",
                 "version": version, "datePublished": release_date}
    (out / "croissant.json").write_text(json.dumps(croissant, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    for note_version in notes or (version,):
        (out / "release_notes").mkdir(exist_ok=True)
        (out / "release_notes" / f"v{note_version}.md").write_text(f"# v{note_version}\n\nTest release.\n")

    files = []
    for path in sorted(p for p in out.rglob("*") if p.is_file()):
        data = path.read_bytes()
        files.append({"path": path.relative_to(out).as_posix(), "size": len(data),
                      "sha256": hashlib.sha256(data).hexdigest()})
    label_counts = {name: sum(1 for r in all_rows.values() if r["label"] == i) for i, name in enumerate(LABELS)}
    manifest = {"name": "mll23", "version": version, "release_date": release_date, "files": files,
                "counts": {"splits": dict(rows), "labels": label_counts}}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def read_manifest(release: Path) -> dict:
    return json.loads((Path(release) / "manifest.json").read_text(encoding="utf-8"))


def split_counts(release: Path) -> dict[str, int]:
    """Rows per split as the manifest records them (the one place to adapt if the real manifest differs)."""
    return dict(read_manifest(release)["counts"]["splits"])
