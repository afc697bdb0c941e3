"""ledger.csv (every raw input's fate), the raw-input fingerprint and the manifest's body; its file is layout's.

pipeline/release/layout.py names, reads and writes manifest.json; this module says what a release's manifest
holds besides its file list (`manifest_body`).
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import pipeline
from pipeline.records import LedgerEntry, ReleaseCounts
from pipeline.release.layout import LEDGER_COLUMNS


def ledger_text(entries: Iterable[LedgerEntry]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(LEDGER_COLUMNS)
    for e in sorted(entries, key=lambda e: (e.relpath, e.fate, e.reason)):
        writer.writerow([e.relpath, e.input_kind, e.label, e.fate, e.reason, e.duplicate_of or "", e.split or "", e.image_id or "", e.sha256 or ""])
    return buf.getvalue()


def read_ledger(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def raw_fingerprint(lines: Iterable[str]) -> str:
    """sha256 over sorted 'relpath<TAB>size<TAB>sha256' lines: changes when any raw input changes."""
    h = hashlib.sha256()
    for line in sorted(lines):
        h.update(line.encode("utf-8") + b"\n")
    return h.hexdigest()


def manifest_body(name: str, version: str, release_date: str, class_names: list[str], counts: ReleaseCounts, **fields: object) -> dict:
    """The manifest of any release (a build's, a harmonised one's) but its file list, which write_manifest adds
    last: what every release says about itself, then ``fields``, what only its kind says (splits, digests,
    ancestry, sources)."""
    return {
        "name": name,
        "version": version,
        "release_date": release_date,
        "tool": {"name": "mll23-pipeline", "version": pipeline.__version__},
        "class_names": list(class_names),
        "counts": counts.as_manifest(),
        **fields,
    }
