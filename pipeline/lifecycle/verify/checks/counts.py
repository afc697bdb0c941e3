"""The counts check: the card (YAML and tables), the manifest and the ledger count what the shards publish."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from pipeline.config import SPLITS
from pipeline.records import FATES
from pipeline.release.layout import CARD, LEDGER, MANIFEST, WDS_CARD, show
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import ReleaseView, as_dict, as_list


def check_counts(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """The shards are what is published; the card, the manifest and the ledger must all say the same."""
    names = view.class_names
    rows = view.rows
    view.ledger  # read before the list of read errors, so they include the ledger's
    for problem in view.read_errors:
        yield problem
    shard_split = Counter(r.split for r in rows)
    shard_class = Counter((r.split, names[r.label]) for r in rows if 0 <= r.label < len(names))
    kept = [e for e in view.ledger if e.get("fate") == "kept"]
    ledger_split = Counter(e.get("split") for e in kept)
    yield from _manifest_problems(view, shard_split, shard_class, ledger_split)
    fates = Counter(e.get("fate") for e in view.ledger)
    counts = view.manifest["counts"]
    for fate in FATES:
        if counts.get("ledger", {}).get(fate) != fates.get(fate, 0):
            yield f"{MANIFEST}: counts.ledger.{fate} is {counts.get('ledger', {}).get(fate)}, but {LEDGER} has {fates.get(fate, 0)} such rows"
    if counts.get("ledger_total") != len(view.ledger):
        yield f"{MANIFEST}: counts.ledger_total is {counts.get('ledger_total')}, but {LEDGER} has {len(view.ledger)} rows"
    yield from _card_counts(view, shard_split, shard_class, fates)


def _compare(source: str, what: str, claimed: object, actual: int) -> Iterator[str]:
    if claimed != actual:
        yield f"{source}: {what} is {claimed}, but the shards hold {actual}"


def _manifest_problems(view: ReleaseView, shard_split: Counter, shard_class: Counter, ledger_split: Counter) -> Iterator[str]:
    """The manifest's split and class counts, and the ledger's kept rows per split, against the shards."""
    names = view.class_names
    m = view.manifest
    counts = m["counts"]
    for s in SPLITS:
        n = shard_split.get(s, 0)
        yield from _compare(MANIFEST, f"splits.{s}.num_examples", m["splits"].get(s, {}).get("num_examples"), n)
        yield from _compare(MANIFEST, f"counts.splits.{s}.total", counts.get("splits", {}).get(s, {}).get("total"), n)
        if ledger_split.get(s, 0) != n:
            yield f"{LEDGER}: {ledger_split.get(s, 0)} kept rows in {s}, but the shards hold {n}"
        per_class = counts.get("splits", {}).get(s, {}).get("per_class", {})
        for c in names:
            if per_class.get(c, 0) != shard_class.get((s, c), 0):
                yield f"{MANIFEST}: counts.splits.{s}.per_class.{c} is {per_class.get(c, 0)}, but the shards hold {shard_class.get((s, c), 0)}"
    for c in names:
        actual = sum(shard_class.get((s, c), 0) for s in SPLITS)
        yield from _compare(MANIFEST, f"counts.per_class.{c}.kept", counts.get("per_class", {}).get(c, {}).get("kept"), actual)


def _yaml_split_counts(name: str, header: dict, shard_split: Counter) -> Iterator[str]:
    info = as_dict(header.get("dataset_info"))
    claimed = {s["name"]: s.get("num_examples") for s in as_list(info.get("splits")) if isinstance(s, dict) and isinstance(s.get("name"), str)}
    for s in SPLITS:
        n = shard_split.get(s, 0)
        if claimed.get(s, 0) != n:
            yield f"{name}: YAML dataset_info.splits {s} num_examples is {show(claimed.get(s, 0))}, but the shards hold {n}"


def _card_counts(view: ReleaseView, shard_split: Counter, shard_class: Counter, fates: Counter) -> Iterator[str]:
    if not view.card_text:
        yield f"{CARD} (the dataset card) is missing"
        return
    yield from _yaml_split_counts(CARD, view.card_yaml, shard_split)
    if WDS_CARD in view.cards:
        yield from _yaml_split_counts(WDS_CARD, view.cards[WDS_CARD][1], shard_split)
    tables = _markdown_tables(view.card_text)
    class_tables = [t for t in tables if t[0][:1] == ["label"] and all(s in t[0] for s in SPLITS)]
    fate_tables = [t for t in tables if t[0] == ["fate", "images"]]
    if not class_tables:
        yield f"{CARD}: no per-class table (a header 'label | ... | train | validation | test')"
    for header, body in class_tables[:1]:
        yield from _class_table_problems(header, body, shard_split, shard_class)
    for _, body in fate_tables[:1]:
        for fate, n in ((c[0].replace("*", ""), c[1]) for c in body):
            actual = sum(fates.values()) if fate == "raw inputs" else fates.get(fate, 0)
            if _int(n) != actual:
                yield f"{CARD}: cleaning table, row {fate} says {n}, but {LEDGER} has {actual}"


def _class_table_problems(header: list[str], body: list[list[str]], shard_split: Counter, shard_class: Counter) -> Iterator[str]:
    """The card's per-class table: every class (and the total) per split, and published, as the shards hold them."""
    col = {name: i for i, name in enumerate(header)}
    for cells in body:
        label = cells[0].replace("*", "")
        for s in SPLITS:
            actual = shard_split.get(s, 0) if label == "total" else shard_class.get((s, label), 0)
            if _int(cells[col[s]]) != actual:
                yield f"{CARD}: class table, row {label}, column {s} says {cells[col[s]]}, but the shards hold {actual}"
        if "published" in col:
            actual = sum(shard_split.values()) if label == "total" else sum(shard_class.get((s, label), 0) for s in SPLITS)
            if _int(cells[col["published"]]) != actual:
                yield f"{CARD}: class table, row {label}, column published says {cells[col['published']]}, but the shards hold {actual}"


def _markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|") and line.rstrip().endswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if current is None:
                current = (cells, [])
                tables.append(current)
            elif not all(set(c) <= set("-: ") for c in cells):
                current[1].append(cells)
        else:
            current = None
    return tables


def _int(cell: str) -> int | None:
    text = cell.replace("*", "").replace(",", "").strip()
    return int(text) if text.lstrip("-").isdigit() else None
