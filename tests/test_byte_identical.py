"""Same input and config, same bytes: a release built now is byte-identical to the one the code wrote before the
restructure of issue 12 (recorded in tests/golden/release_digests.json).

Two releases from one synthetic archive (MLL23's config, seed 0): v1.0.0, and v1.1.0 built with `--previous`
after a few images were removed, one relabelled and the release date moved, so the ancestry, diff and notes
code paths are covered too. Every file's sha256 is compared.

Encoders write their own version into some bytes (Parquet's `created_by`, zlib's deflate choices in PNG), so
file digests are only comparable under the library versions they were recorded with; under others the test
still compares what no encoder touches: the ledgers, the release notes and every published row's
(image_id, split, label, pixel sha256).

Re-record only for an intended layout change, and say so in the commit:
    PYTHONPATH=. python -m tests.test_byte_identical --record
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

GOLDEN = Path(__file__).parent / "golden" / "release_digests.json"
SCALE = 0.004
SEED = 0
VERSION_INDEPENDENT = ("ledger.csv", "release_notes/v1.0.0.md", "release_notes/v1.1.0.md")


def library_versions() -> dict[str, str]:
    import imagehash
    import numpy
    import PIL
    import pyarrow

    return {"pyarrow": pyarrow.__version__, "pillow": PIL.__version__, "numpy": numpy.__version__,
            "imagehash": imagehash.__version__, "zlib": zlib.ZLIB_RUNTIME_VERSION}


def _edit_raw(raw: Path) -> None:
    """Remove every 40th image, relabel one: what a maintainer's next archive looks like."""
    path = raw / "annotations.csv"
    with open(path, newline="", encoding="utf-8") as fh:
        rows = sorted(csv.DictReader(fh), key=lambda r: r["image"])
    gone = {r["image"] for i, r in enumerate(rows) if i % 40 == 7}
    for rel in gone:
        (raw / rel).unlink()
    rows = [r for r in rows if r["image"] not in gone]
    moved = rows[len(rows) // 2]
    new = next(p.name for p in sorted(raw.iterdir()) if p.is_dir() and p.name != moved["label"])
    target = f"{new}/{Path(moved['image']).name}"
    (raw / moved["image"]).rename(raw / target)
    moved["image"], moved["label"] = target, new
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def build_both(work: Path) -> dict[str, Path]:
    from pipeline.build import build_release
    from pipeline.config import load_config
    from pipeline.synth.generator import synthesize

    raw = work / "raw"
    synthesize(raw, config=load_config(), scale=SCALE, seed=SEED, workers=1)
    notes = work / "notes"
    v1 = work / "v1.0.0"
    build_release(raw, v1, load_config(version="1.0.0"), workers=1, notes_dir=notes)
    _edit_raw(raw)
    v2 = work / "v1.1.0"
    build_release(raw, v2, load_config(version="1.1.0", release_date="2026-06-01"), workers=1,
                  previous=v1, notes_dir=notes)
    return {"v1.0.0": v1, "v1.1.0": v2}


def file_digests(release: Path) -> dict[str, str]:
    return {p.relative_to(release).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(release.rglob("*")) if p.is_file()}


def row_digest(release: Path) -> str:
    """sha256 over every published row's image id, split, label and decoded pixels, in a fixed order."""
    rows = []
    for shard in sorted((release / "data").glob("*.parquet")):
        table = pq.read_table(shard, columns=["image", "image_id", "label"]).to_pylist()
        split = shard.name.split("-")[0]
        for row in table:
            pixels = np.asarray(Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB"))
            rows.append(f"{row['image_id']}\t{split}\t{row['label']}\t{hashlib.sha256(pixels.tobytes()).hexdigest()}")
    return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()


def observe(work: Path) -> dict:
    releases = build_both(work)
    return {
        "libraries": library_versions(),
        "files": {name: file_digests(path) for name, path in releases.items()},
        "rows": {name: row_digest(path) for name, path in releases.items()},
        "row_counts": {name: sum(pq.ParquetFile(p).metadata.num_rows for p in (path / "data").glob("*.parquet"))
                       for name, path in releases.items()},
    }


def test_release_bytes_match_the_recorded_layout(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text(encoding="utf-8"))
    seen = observe(tmp_path)
    assert seen["row_counts"] == golden["row_counts"]
    assert seen["rows"] == golden["rows"], "published rows (ids, splits, labels, pixels) differ from the record"
    for name, files in golden["files"].items():
        assert sorted(seen["files"][name]) == sorted(files), f"{name}: the set of files differs"
        for rel in VERSION_INDEPENDENT:
            if rel in files:
                assert seen["files"][name][rel] == files[rel], f"{name}/{rel} differs"
    if seen["libraries"] != golden["libraries"]:
        return  # encoders differ: the bytes of Parquet, PNG and tars may differ legitimately (see the docstring)
    for name, files in golden["files"].items():
        differ = sorted(rel for rel, digest in files.items() if seen["files"][name][rel] != digest)
        assert not differ, f"{name}: files whose bytes differ from the recorded layout: {differ}"


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        record = observe(Path(tmp))
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"recorded {sum(len(f) for f in record['files'].values())} file digests in {GOLDEN}")
