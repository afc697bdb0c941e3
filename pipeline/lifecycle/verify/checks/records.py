"""The records check: every Parquet row of the record schema, its image decoding to the pixels it claims.

The rows of sample/ too, each of which must be a published row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from pipeline.stages.imagecheck import ImageRejected
from pipeline.stages.validate import record_errors, record_validator
from pipeline.untrusted.files import ReleaseFileError
from pipeline.release.layout import PARQUET_SHARD, SAMPLE_SHARD, show
from pipeline.untrusted.formats import decode_image
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.report import MAX_LISTED
from pipeline.lifecycle.verify.view import Refused, ReleaseView, open_parquet

_RECORD_BATCH = 16  # rows decoded into Python objects at a time by the records check
# The feature types a shard may declare. `datasets` decodes a column by its declared type (Audio and Video hand
# the bytes to FFmpeg, Pdf to pdfplumber), so a shard declaring any other type fails the release.
_ARROW_FEATURES = frozenset({"Image", "ClassLabel", "Value"})


@dataclass
class _Failing:
    """Rows with failures so far, over all shards, and the shard where the check stopped at too many."""

    rows: int = 0
    stopped_in: str = ""


def check_records(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Every row against schemas/record.schema.json, and its image: decodes, and has the pixels it claims."""
    failing = _Failing()
    listed = more = 0
    for message in _records_problems(view, opts, failing):
        # the first ones, then a count; the stop (if any) must be the last line printed, not one of those counted
        if listed < MAX_LISTED - 1:
            listed += 1
            yield message
        else:
            more += 1
    stopped = failing.rows >= opts.read.max_failing_rows
    if stopped:
        yield (f"... and {more:,} more like these: {failing.rows:,} rows failed; the records check stopped there, in "
               f"{failing.stopped_in} (the rest were not checked)")
    elif more:
        yield f"... and {more:,} more like these"


def _records_problems(view: ReleaseView, opts: VerifyOptions, failing: _Failing) -> Iterator[str]:
    validator = record_validator()
    names = view.class_names
    published = {(r.image_id, r.split, r.label) for r in view.rows}
    for shard in view.shard_paths + view.sample_paths:
        split = (PARQUET_SHARD.match(shard) or SAMPLE_SHARD.match(shard)).group(1)
        try:
            with view.open(shard) as fh:
                parquet = open_parquet(fh, shard, opts.read, view.shard_schema)
                yield from _parquet_feature_problems(shard, parquet)
                yield from _shard_records(parquet, shard, split, names, validator, failing, opts.read.max_failing_rows)
                if SAMPLE_SHARD.match(shard):
                    yield from _sample_problems(parquet, shard, split, published)
                if failing.rows >= opts.read.max_failing_rows:
                    failing.stopped_in = shard
                    return
        except (ReleaseFileError, Refused) as exc:
            yield str(exc)
        except Exception as exc:
            yield f"{shard}: cannot be read as Parquet ({type(exc).__name__}: {exc})"


def _parquet_feature_problems(rel: str, parquet: pq.ParquetFile) -> Iterator[str]:
    """The `datasets` features stored in the shard's schema: only the types the build writes."""
    metadata = parquet.schema_arrow.metadata or {}
    for key in sorted(set(metadata) - {b"huggingface"}):  # e.g. b"pandas", which pandas readers act on
        yield f"{show(rel)}: schema metadata key {show(key.decode('utf-8', errors='replace'))} is not one the build writes"
    if b"huggingface" not in metadata:
        return
    try:
        features = json.loads(metadata[b"huggingface"])["info"]["features"]
        kinds = {name: spec.get("_type") for name, spec in features.items()}
        dtypes = [spec.get("dtype") for spec in features.values() if spec.get("_type") == "Value"]
    except (ValueError, RecursionError, KeyError, TypeError, AttributeError):
        yield f"{show(rel)}: the huggingface schema metadata is not a features mapping"
        return
    for name, kind in sorted(kinds.items(), key=str):
        if kind not in _ARROW_FEATURES:
            yield f"{show(rel)}: schema metadata declares column {show(name)} as {show(kind)}, which a release does not use"
    if any(d not in ("string", "int64") for d in dtypes):
        yield f"{show(rel)}: schema metadata declares a Value of dtype {show(sorted(map(str, dtypes)))}, which a release does not use"


def _sample_problems(parquet: pq.ParquetFile, shard: str, split: str, published: set[tuple[str, str, int]]) -> Iterator[str]:
    """A sample row is a published row of the same split with the same label (its image was checked above)."""
    table = parquet.read(columns=["image_id", "label"])
    for i, (image_id, label) in enumerate(zip(table["image_id"].to_pylist(), table["label"].to_pylist())):
        if (image_id, split, label) not in published:
            yield f"{shard} row {i}: image {show(image_id)} with label {show(label)} is not a published {split} row"


def _shard_records(parquet: pq.ParquetFile, shard: str, split: str, names: list[str], validator, failing: _Failing,
                   max_failing: int) -> Iterator[str]:
    index = 0
    for g in range(parquet.num_row_groups):
        end = index + parquet.metadata.row_group(g).num_rows
        try:
            # a few rows at a time: only one row group's Arrow data and a handful of images are in memory at once
            for batch in parquet.iter_batches(batch_size=_RECORD_BATCH, row_groups=[g]):
                for r in batch.to_pylist():
                    problems = list(_record_problems(f"{shard} row {index}", r, split, names, validator))
                    yield from problems
                    index += 1
                    failing.rows += bool(problems)
                    if failing.rows >= max_failing:
                        return
        except Exception as exc:
            yield f"{shard} row group {g}: cannot be read ({type(exc).__name__}: {exc})"
        index = end


def _record_problems(where: str, r: dict, split: str, names: list[str], validator) -> Iterator[str]:
    label = r.get("label")
    label_name = names[label] if isinstance(label, int) and 0 <= label < len(names) else None
    if label_name is None:
        yield f"{where}: label {show(label)} is not an index into the {len(names)} class names"
    problems, (width, height) = _image_problems(where, r)
    yield from problems
    if r.get("image_id") and r.get("pixel_sha256") and r["image_id"] != r["pixel_sha256"][:16]:
        yield f"{where}: image_id {show(r['image_id'])} is not the first 16 hex digits of pixel_sha256"
    try:
        extra = json.loads(r["extra"]) if r.get("extra") else {}
    except (ValueError, RecursionError, TypeError):
        yield f"{where}: extra is not JSON: {show(str(r['extra'])[:60])}"
        extra = {}
    metadata = {
        "image_id": r.get("image_id"),
        "label": label,
        "label_name": label_name or "",
        "split": split,
        "source_file": r.get("source_file"),
        "patient_id": r.get("patient_id"),
        "annotator": r.get("annotator"),
        "group_id": r.get("group_id"),
        "pixel_sha256": r.get("pixel_sha256"),
        "phash": r.get("phash"),
        "width": width or 1,
        "height": height or 1,
        "extra": extra,
    }
    for error in record_errors(metadata, validator):
        yield f"{where}: record schema: {error}"


def _image_problems(where: str, r: dict) -> tuple[list[str], tuple[int, int]]:
    """What is wrong with the row's image (it must decode to the pixels of its pixel_sha256), and its size (0, 0
    when it does not decode)."""
    image = r.get("image") if isinstance(r.get("image"), dict) else {}
    data = image.get("bytes") or b""
    width = height = 0
    try:
        pixels, (width, height) = decode_image(data)
        digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
        if digest != r.get("pixel_sha256"):
            return [f"{where}: the image's pixels hash to {digest[:16]}..., the row says pixel_sha256 {show(r.get('pixel_sha256'))[:16]}..."], (width, height)
    except ImageRejected as exc:
        return [f"{where}: image refused: {exc}"], (width, height)
    except Exception as exc:
        return [f"{where}: image bytes do not decode ({type(exc).__name__}: {exc})"], (width, height)
    return [], (width, height)
