"""The loader checks: `datasets`, `webdataset` and `mlcroissant` read the release and find what the shards publish.

They parse the files by their own rules, so they run last, and only on a release that passed every check before them.
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pipeline.release.layout import CROISSANT, MANIFEST, WDS_DIR, show
from pipeline.untrusted.formats import WDS_IMAGE_SUFFIXES, decode_image
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.report import MAX_LISTED
from pipeline.lifecycle.verify.view import Refused, ReleaseView, as_dict, as_list


# ---- datasets ----------------------------------------------------------------------------------------------


def check_load_datasets(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The way the card tells people to load the release: `datasets.load_dataset(DIR)`, and streaming."""
    expected = _expected_rows(view)
    size = sum(view.files.size(p) for p in view.shard_paths)
    yield from _datasets_load_problems(view.dir, size, expected, view.class_names, "label", opts)


def _expected_rows(view: ReleaseView) -> dict[str, int]:
    """split -> rows, for the splits the manifest says hold any."""
    return {s: v.get("num_examples", 0) for s, v in view.manifest["splits"].items() if v.get("num_examples")}


def _datasets_load_problems(
    root: Path, size: int, expected: dict[str, int], class_names: list[str], label: str, opts: VerifyOptions
) -> Iterator[str]:
    """load_dataset(root) and load_dataset(root, streaming=True): splits, rows, ClassLabel names, one image per row."""
    import datasets

    bars_were_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        if size <= opts.full_load_max_bytes:
            yield from _full_load(root, expected, class_names, label)
        yield from _streaming_load(root, expected, class_names, label, count_all=size > opts.full_load_max_bytes)
    finally:
        if not bars_were_off:
            datasets.enable_progress_bars()


def _image_columns(features) -> list[str]:
    import datasets

    return sorted(name for name, feature in features.items() if isinstance(feature, datasets.Image))


def _split_problems(how: str, split: str, features, rows: Iterable[dict], expected: dict[str, int], class_names: list[str], label: str) -> Iterator[str]:
    """rows: the split's image columns, undecoded. Every row must carry exactly one image."""
    images = _image_columns(features)
    if not images:
        yield f"{how}: {split} has no Image column (features: {sorted(features)})"
    if getattr(features.get(label), "names", None) != class_names:
        yield f"{how}: {split} column {label} is not a ClassLabel with the manifest's class_names"
    n = without_image = 0
    for row in rows:
        n += 1
        without_image += sum(row[c] is not None for c in images) != 1
    if n != expected[split]:
        yield f"{how}: {split} has {n} rows, the manifest says {expected[split]}"
    if images and without_image:
        yield f"{how}: {without_image} {split} row(s) without exactly one image in {images}"


def _undecoded(ds, features):
    import datasets

    for column in _image_columns(features):
        ds = ds.cast_column(column, datasets.Image(decode=False))
    return ds.select_columns(_image_columns(features))


def _first_image_problem(how: str, split: str, ds, features) -> Iterator[str]:
    try:
        first = next(iter(ds))
        image = next(first[c] for c in _image_columns(features) if first[c] is not None)
        image.load()
    except Exception as exc:
        yield f"{how}: first {split} image does not decode: {type(exc).__name__}: {exc}"


def _loaded_splits(how: str, load: Callable[[], object], expected: dict[str, int]) -> tuple[list[str], list[tuple[str, object]]]:
    """What is wrong with loading (it fails, or gives other splits than the manifest), and the loaded splits the
    manifest has, by name."""
    try:
        loaded = load()
    except Exception as exc:
        return [f"{how} fails: {type(exc).__name__}: {exc}"], []
    problems = [] if set(loaded) == set(expected) else [f"{how} gives splits {sorted(loaded)}, the manifest has {sorted(expected)}"]
    return problems, [(split, loaded[split]) for split in sorted(set(loaded) & set(expected))]


def _full_load(root: Path, expected: dict[str, int], class_names: list[str], label: str) -> Iterator[str]:
    import datasets

    how = f"datasets.load_dataset({str(root)!r})"
    with tempfile.TemporaryDirectory(prefix="mll23-verify-cache-") as cache:
        problems, splits = _loaded_splits(how, lambda: datasets.load_dataset(str(root), cache_dir=cache), expected)
        yield from problems
        yield from _full_split_problems(how, splits, expected, class_names, label)
        del splits  # their Arrow files live in the cache about to be removed


def _full_split_problems(how: str, splits: list[tuple[str, object]], expected: dict[str, int], class_names: list[str],
                         label: str) -> Iterator[str]:
    for split, ds in splits:
        features = ds.features
        yield from _split_problems(how, split, features, _undecoded(ds, features), expected, class_names, label)
        yield from _first_image_problem(how, split, ds, features)


def _streaming_load(root: Path, expected: dict[str, int], class_names: list[str], label: str, count_all: bool) -> Iterator[str]:
    """Streaming reads the files where they are: cheap enough to read every row of a large release."""
    import datasets

    how = f"datasets.load_dataset({str(root)!r}, streaming=True)"
    problems, splits = _loaded_splits(how, lambda: datasets.load_dataset(str(root), streaming=True), expected)
    yield from problems
    for split, streamed in splits:
        features = streamed.features
        try:
            yield from _first_image_problem(how, split, streamed, features)
            if count_all:
                yield from _split_problems(how, split, features, _undecoded(streamed, features), expected, class_names, label)
        except Exception as exc:
            yield f"{how}: reading {split} fails: {type(exc).__name__}: {exc}"


def _parquet_truth(view: ReleaseView) -> dict[str, dict[str, int]]:
    """split -> image_id -> label, as the Parquet shards publish them."""
    truth: dict[str, dict[str, int]] = defaultdict(dict)
    for r in view.rows:
        truth[r.split][r.image_id] = r.label
    return truth


# ---- webdataset --------------------------------------------------------------------------------------------


def _wds_decoder():
    """webdataset's Decoder with a handler for each member suffix of the format and nothing else: its default
    handlers (`decode("pil")` adds them) unpickle .pyd/.pickle members, load .pth with torch and gunzip .gz."""
    from webdataset.autodecode import Decoder

    def handle(key: str, data: bytes):
        suffix = key.rsplit(".", 1)[-1]
        if suffix == "cls":
            return int(data.decode("ascii"))
        if suffix == "json":
            return json.loads(data)
        if suffix in WDS_IMAGE_SUFFIXES:
            return decode_image(data)[0]
        raise Refused(f"member suffix .{suffix} is not one of the release format's")

    return Decoder([handle], pre=[], post=[])


def _wds_samples(view: ReleaseView, shards: list[str]) -> Iterator[dict]:
    """Samples of the tars as webdataset groups them, from files verify opened itself (never a URL or pattern)."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    decoder = _wds_decoder()

    def sources() -> Iterator[dict]:
        for rel in shards:
            with view.open(rel) as fh:
                yield {"url": rel, "stream": fh}

    for sample in group_by_keys(tar_file_expander(sources())):
        yield decoder(sample)


def check_load_webdataset(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """wds/: `webdataset`'s tar reader over the manifest's shards, and `datasets.load_dataset(DIR/wds)` (also streaming)."""
    truth = _parquet_truth(view)
    for split, info in sorted(view.manifest["splits"].items()):
        entry = as_dict(info.get("webdataset"))
        if not info.get("num_examples"):
            continue
        if entry.get("num_examples") != info["num_examples"]:
            yield f"{MANIFEST}: splits.{split}.webdataset.num_examples is {show(entry.get('num_examples'))}, the split has {info['num_examples']}"
        if not entry.get("pattern"):
            yield f"{MANIFEST}: splits.{split}.webdataset has no brace pattern"
            continue
        yield from _wds_split_problems(view, entry, info["num_examples"], truth[split])
    expected = _expected_rows(view)
    size = sum(view.files.size(p) for p in view.tar_paths)
    yield from _datasets_load_problems(view.dir / WDS_DIR, size, expected, view.class_names, "cls", opts)


def _wds_split_problems(view: ReleaseView, entry: dict, num_examples: int, truth: dict[str, int]) -> Iterator[str]:
    """One split's tars, read with webdataset: one image and its cls per sample, the samples and labels of the
    Parquet shards (truth: image_id -> label)."""
    pattern = entry["pattern"]
    shards = [s["path"] for s in as_list(entry.get("shards"))]
    samples: dict[str, list[int]] = defaultdict(list)
    try:
        for sample in _wds_samples(view, shards):
            images = [sample[k] for k in WDS_IMAGE_SUFFIXES if k in sample]
            if len(images) != 1 or "cls" not in sample:
                yield f"webdataset {pattern}: sample {show(sample.get('__key__'))} lacks one image and its cls"
            samples[sample["__key__"]].append(sample.get("cls"))
    except Exception as exc:
        yield f"webdataset {pattern}: reading the tars fails: {type(exc).__name__}: {exc}"
        return
    if sum(len(v) for v in samples.values()) != num_examples:
        yield f"webdataset {pattern}: {sum(len(v) for v in samples.values())} samples, the manifest says {num_examples}"
    for key in sorted(set(samples) ^ set(truth))[:MAX_LISTED]:
        where = "only in the tars" if key in samples else "only in the Parquet shards"
        yield f"webdataset {pattern}: sample {key} is {where}"
    for key in sorted(k for k in samples if k in truth and samples[k] != [truth[k]])[:MAX_LISTED]:
        yield f"webdataset {pattern}: sample {key} has cls {samples[key]}, the Parquet label is {truth[key]}"


# ---- mlcroissant -------------------------------------------------------------------------------------------


@contextmanager
def _quiet_logging() -> Iterator[None]:
    """mlcroissant logs a warning per record on the root logger; a CI log of 40,000 of them hides the report."""
    before = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(before)


def _text(value: object) -> str:
    """mlcroissant yields text fields as bytes."""
    return value.decode() if isinstance(value, bytes) else str(value)


def check_load_croissant(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """mlcroissant reads croissant.json: one record per published image, with its label."""
    import mlcroissant as mlc

    try:
        with _quiet_logging():
            dataset = mlc.Dataset(jsonld=str(view.dir / CROISSANT))
            records = [(r["images/split"], r["images/image_id"], r["images/label"]) for r in dataset.records("images")]
    except Exception as exc:
        yield f"mlcroissant cannot read {CROISSANT}: {type(exc).__name__}: {str(exc)[:500]}"
        return
    found = {(_text(s), _text(i)): label for s, i, label in records}
    truth = {(s, i): label for s, ids in _parquet_truth(view).items() for i, label in ids.items()}
    if len(records) != len(truth):
        yield f"{CROISSANT}: record set 'images' has {len(records)} records, the shards hold {len(truth)} images"
    for key in sorted(set(found) ^ set(truth))[:MAX_LISTED]:
        yield f"{CROISSANT}: image {key[1]} ({key[0]}) is {'only in croissant.json' if key in found else 'missing from its records'}"
    for key in sorted(k for k in found if k in truth and found[k] != truth[k])[:MAX_LISTED]:
        yield f"{CROISSANT}: image {key[1]} has label {found[key]}, the Parquet label is {truth[key]}"
