"""The ledger check: ledger.csv accounts for every raw input once, with a known fate, and for every published row."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pipeline.records import FATES
from pipeline.release.layout import LEDGER, LEDGER_COLUMNS, MANIFEST, show
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView


def check_ledger(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """Every raw input exactly once, with a known fate; every published row has exactly one kept entry."""
    if not view.has(LEDGER):
        yield f"{LEDGER} is missing"
        return
    view.ledger  # noqa: B018 - reading it records why it could not be read
    if view.ledger_error:
        yield view.ledger_error
        return
    header = view.ledger_columns
    if tuple(header) != LEDGER_COLUMNS:
        yield f"{LEDGER}: columns are {show(header)}, expected {list(LEDGER_COLUMNS)}"
        return
    seen = Counter(e["source_file"] for e in view.ledger if e["input"] == "file")
    yield from (f"{LEDGER}: raw input {p} has {n} rows (every raw input must have exactly one)" for p, n in sorted(seen.items()) if n > 1)
    yield from _entry_problems(view.ledger)
    counts = view.manifest["counts"]
    if counts.get("raw_images") != sum(seen.values()):
        yield f"{MANIFEST}: counts.raw_images is {counts.get('raw_images')}, but {LEDGER} has {sum(seen.values())} raw files"
    kept = Counter((e["source_file"], e["image_id"], e["split"]) for e in view.ledger if e["fate"] == "kept")
    published = Counter((r.source_file, r.image_id, r.split) for r in view.rows)
    for key in sorted(set(kept) | set(published)):
        if kept[key] != published[key]:
            yield (
                f"image {key[1]} ({key[0]}, {key[2]}) is published in {published[key]} row(s) "
                f"but has {kept[key]} kept row(s) in {LEDGER}"
            )


def _entry_problems(ledger: list[dict[str, str]]) -> Iterator[str]:
    """Each entry on its own: a known fate and input kind, a split and image_id exactly when kept, and a
    duplicate naming an input of the ledger."""
    paths = {e["source_file"] for e in ledger}
    for number, e in enumerate(ledger, start=2):
        where = f"{LEDGER} line {number} ({e['source_file']})"
        if e["fate"] not in FATES:
            yield f"{where}: unknown fate {e['fate']!r}"
        if e["input"] not in ("file", "annotation_row"):
            yield f"{where}: unknown input kind {e['input']!r}"
        if (e["fate"] == "kept") != bool(e["split"] and e["image_id"]):
            yield f"{where}: a kept input needs a split and an image_id, and only a kept one has them"
        if e["fate"] == "duplicate" and e["duplicate_of"] not in paths:
            yield f"{where}: duplicate of {e['duplicate_of']!r}, which is not in the ledger"
