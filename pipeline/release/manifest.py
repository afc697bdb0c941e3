"""manifest.json (every file with size and sha256, counts, digests) and ledger.csv (every raw input's fate)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pipeline
from pipeline.records import LedgerEntry, ReleaseCounts

MANIFEST = "manifest.json"
LEDGER = "ledger.csv"
LEDGER_COLUMNS = ("source_file", "input", "label", "fate", "reason", "duplicate_of", "split", "image_id", "file_sha256")
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_release_files(release_dir: Path) -> list[str]:
    """Every file of a release (POSIX relpaths, sorted) except the manifest itself."""
    return sorted(
        p.relative_to(release_dir).as_posix()
        for p in release_dir.rglob("*")
        if p.is_file() and p.relative_to(release_dir).as_posix() != MANIFEST
    )


def file_entries(release_dir: Path, known: Iterable[dict] = ()) -> list[dict]:
    """Path, size and sha256 of every release file. ``known``: entries this build computed moments ago for
    files it has not touched since (same size), so the gigabytes of shards are hashed once, not twice."""
    rels = list_release_files(release_dir)
    sizes = {rel: (release_dir / rel).stat().st_size for rel in rels}
    reuse = {e["path"]: e["sha256"] for e in known if sizes.get(e["path"]) == e["size"]}
    todo = [rel for rel in rels if rel not in reuse]
    # hashlib releases the GIL while hashing: threads hash several shards at once.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        reuse.update(zip(todo, pool.map(sha256_file, [release_dir / rel for rel in todo])))
    return [{"path": rel, "size": sizes[rel], "sha256": reuse[rel]} for rel in rels]


def dumps_json(doc: object) -> str:
    """The one JSON style of a release: sorted keys, two-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_manifest(release_dir: Path, body: dict, known: Iterable[dict] = ()) -> dict:
    doc = dict(body)
    doc["files"] = file_entries(release_dir, known)
    (release_dir / MANIFEST).write_text(dumps_json(doc), encoding="utf-8")
    return doc


def read_manifest(release_dir: Path) -> dict:
    return json.loads((release_dir / MANIFEST).read_text(encoding="utf-8"))


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
