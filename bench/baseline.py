"""The pipeline a user would write by hand with the same packages (issue 5's baseline), one part per call.

    python bench/baseline.py phash   RAW OUT --workers 2   # imagehash.phash of every crop, equal hashes = duplicates
    python bench/baseline.py parquet RAW OUT               # what push_to_hub does to write Parquet shards
    python bench/baseline.py wds     RAW OUT               # webdataset.ShardWriter tars

`phash` writes OUT/kept.json (the images it keeps, one per distinct hash, with their labels); `parquet` and
`wds` write those images. bench/run.py runs each part in its own process to time it and measure its memory.
"""

from __future__ import annotations

import argparse
import json
import sys
from multiprocessing import get_context
from pathlib import Path

SUFFIXES = {".tif", ".tiff", ".png", ".jpg", ".jpeg"}


def raw_images(raw: Path) -> list[tuple[str, str]]:
    """(absolute path, label) of every image under RAW/<label>/, sorted."""
    return sorted((str(p), p.parent.name) for p in raw.glob("*/*") if p.suffix.lower() in SUFFIXES)


def _phash(path: str) -> str:
    import imagehash
    from PIL import Image

    return str(imagehash.phash(Image.open(path)))


def phash_part(raw: Path, out: Path, workers: int) -> dict:
    images = raw_images(raw)
    with get_context("fork").Pool(workers) as pool:
        hashes = pool.map(_phash, [p for p, _ in images], chunksize=64)
    kept: dict[str, tuple[str, str]] = {}
    for (path, label), h in zip(images, hashes):
        kept.setdefault(h, (path, label))  # equal hashes are taken as duplicates: keep the first
    rows = sorted(kept.values())
    (out / "kept.json").write_text(json.dumps(rows))
    return {"images": len(images), "kept": len(rows)}


def _kept(out: Path) -> list[tuple[str, str]]:
    return [tuple(r) for r in json.loads((out / "kept.json").read_text())]


def parquet_part(out: Path) -> dict:
    """push_to_hub's shard loop (datasets 5.x `_push_parquet_shards_to_hub_single`), writing locally."""
    import datasets
    from datasets.arrow_writer import get_writer_batch_size_from_data_size, get_writer_batch_size_from_features
    from datasets.table import embed_table_storage
    from datasets.utils.py_utils import convert_file_size_to_int

    rows = _kept(out)
    names = sorted({label for _, label in rows})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=names)})
    ds = datasets.Dataset.from_dict({"image": [p for p, _ in rows], "label": [names.index(l) for _, l in rows]}, features=features)
    nbytes = ds._estimate_nbytes()
    batch = get_writer_batch_size_from_features(ds.features) or get_writer_batch_size_from_data_size(len(ds), nbytes)
    num_shards = int(nbytes / convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)) + 1
    (out / "parquet").mkdir(exist_ok=True)
    for index in range(num_shards):
        shard = ds.shard(num_shards=num_shards, index=index, contiguous=True)
        shard = shard.with_format("arrow").map(embed_table_storage, batched=True, batch_size=batch, keep_in_memory=True)
        shard.to_parquet(out / "parquet" / f"train-{index:05d}-of-{num_shards:05d}.parquet", batch_size=batch)
    return {"images": len(rows), "shards": num_shards}


def wds_part(out: Path) -> dict:
    import webdataset as wds

    rows = _kept(out)
    names = sorted({label for _, label in rows})
    (out / "wds").mkdir(exist_ok=True)
    with wds.ShardWriter(str(out / "wds" / "train-%06d.tar"), maxsize=500_000_000, maxcount=1_000_000, verbose=0) as sink:
        for k, (path, label) in enumerate(rows):
            suffix = Path(path).suffix.lower().lstrip(".")
            with open(path, "rb") as fh:
                sink.write({"__key__": f"{k:08d}", suffix: fh.read(), "cls": names.index(label)})
    return {"images": len(rows), "shards": len(list((out / "wds").glob("*.tar")))}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("part", choices=["phash", "parquet", "wds"])
    ap.add_argument("raw", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    if a.part == "phash":
        result = phash_part(a.raw, a.out, a.workers)
    elif a.part == "parquet":
        result = parquet_part(a.out)
    else:
        result = wds_part(a.out)
    print("RESULT " + json.dumps(result))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
