"""Ingest: list the raw crops (RAW/<label>/<file>) and read the optional RAW/annotations.csv.

Nothing is read beyond file names, sizes and the annotation table here; pixels and file hashes come from
decode, in one read per file. Every problem becomes an Invalid entry naming the file or row and the reason.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema

from pipeline.config import ReleaseConfig
from pipeline.records import RawItem
from pipeline.resources import load_schema

ANNOTATIONS = "annotations.csv"
IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
# Files that operating systems and archivers leave behind; they are not inputs and are only listed.
OS_LITTER = frozenset({".ds_store", "thumbs.db", "desktop.ini", "__macosx", ".spotlight-v100", ".trashes"})
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f", ""})
KNOWN_COLUMNS = ("image", "label", "patient_id", "annotator", "dysplastic")


@dataclass(frozen=True)
class Invalid:
    """A raw file or annotation row that cannot go into the release."""

    relpath: str
    label: str
    reason: str
    input_kind: str = "file"  # or "annotation_row": a row that names no file


@dataclass
class IngestResult:
    items: list[RawItem] = field(default_factory=list)  # usable files, sorted by relpath
    invalid: list[Invalid] = field(default_factory=list)  # files and rows left out, with the reason
    ignored: list[str] = field(default_factory=list)  # OS litter and non-input top-level files
    annotations_present: bool = False
    annotations_sha256: str | None = None


def parse_bool(value: str | None) -> bool | None:
    """true/false, 1/0, yes/no (any case); None when the text is not one of these."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def normalise_relpath(raw_path: str) -> str | None:
    """A POSIX path relative to RAW, or None when it is absolute or escapes RAW."""
    text = raw_path.strip().replace("\\", "/")
    if not text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return None
    norm = posixpath.normpath(text)
    if norm == "." or norm.startswith("../") or norm == "..":
        return None
    return norm


def _is_litter(name: str) -> bool:
    return name.startswith(".") or name.startswith("._") or name.lower() in OS_LITTER


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class _Found:
    relpath: str
    folder: str
    size: int


def _walk_files(raw: Path, result: IngestResult) -> list[_Found]:
    """Every regular file below a top-level folder, sorted; litter and links out of RAW are set aside."""
    root = raw.resolve()
    found: list[_Found] = []
    for top in sorted(raw.iterdir(), key=lambda p: p.name):
        if _is_litter(top.name):
            result.ignored.append(top.name + ("/" if top.is_dir() else ""))
            continue
        if not top.is_dir():
            if top.name != ANNOTATIONS:
                result.ignored.append(top.name)
            continue
        for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not _is_litter(d))
            for name in sorted(filenames):
                path = Path(dirpath) / name
                rel = path.relative_to(raw).as_posix()
                if _is_litter(name):
                    result.ignored.append(rel)
                    continue
                if path.is_symlink() and not _within(path, root):
                    result.invalid.append(Invalid(rel, top.name, "symbolic link pointing outside RAW"))
                    continue
                if not path.is_file():
                    result.invalid.append(Invalid(rel, top.name, "not a regular file (broken link or special file)"))
                    continue
                found.append(_Found(rel, top.name, path.stat().st_size))
    return found


@dataclass(frozen=True)
class _Row:
    number: int  # 1-based data row number (the header is row 0), as a spreadsheet user counts after it
    fields: dict[str, str | None]


def read_annotations(path: Path) -> tuple[list[_Row], list[str]]:
    """Rows of annotations.csv (BOM and CRLF tolerated) and the problems that concern the whole file."""
    text = path.read_bytes().decode("utf-8-sig", errors="strict")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in ("image", "label") if c not in header]
    if missing:
        return [], [f"{ANNOTATIONS}: missing required column(s) {missing}; found {header}"]
    reader.fieldnames = header
    rows = []
    for number, raw_row in enumerate(reader, start=1):
        if None in raw_row:  # more cells than header columns
            extra = raw_row.pop(None)
            raw_row["__extra_cells__"] = ",".join(extra)
        rows.append(_Row(number, {k: (v.strip() if isinstance(v, str) else v) for k, v in raw_row.items()}))
    return rows, []


def _row_problem(row: _Row, config: ReleaseConfig) -> tuple[dict | None, str | None]:
    """The parsed row, or the reason it is invalid."""
    f = row.fields
    if "__extra_cells__" in f:
        return None, f"more cells than columns ({f['__extra_cells__']!r}); quote values that contain commas"
    relpath = normalise_relpath(f.get("image") or "")
    if relpath is None:
        return None, f"image path {f.get('image')!r} is empty, absolute or outside RAW"
    dysplastic = parse_bool(f.get("dysplastic"))
    if dysplastic is None:
        return None, f"dysplastic value {f.get('dysplastic')!r} is not a boolean (true/false, 1/0, yes/no)"
    parsed = {
        "image": relpath,
        "label": f.get("label") or "",
        "patient_id": f.get("patient_id") or None,
        "annotator": f.get("annotator") or None,
        "dysplastic": dysplastic,
    }
    extras = {k: (v or None) for k, v in f.items() if k not in KNOWN_COLUMNS}
    errors = list(jsonschema.Draft202012Validator(load_schema("annotation")).iter_errors({**parsed, **extras}))
    if errors:
        e = errors[0]
        key = ".".join(map(str, e.absolute_path)) or "row"
        return None, f"column '{key}': {e.message}"
    if parsed["label"] not in config.class_names:
        return None, f"unknown label {parsed['label']!r} (not one of the config's {len(config.class_names)} classes)"
    parsed["extra"] = tuple(sorted(extras.items()))
    return parsed, None


def ingest(raw: Path, config: ReleaseConfig) -> IngestResult:
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"RAW directory not found: {raw}")
    result = IngestResult()
    files = _walk_files(raw, result)
    classes = set(config.class_names)
    by_path: dict[str, _Found] = {}
    for f in files:
        if f.folder not in classes:
            result.invalid.append(Invalid(f.relpath, f.folder, f"unknown label folder {f.folder!r}"))
        elif Path(f.relpath).suffix.lower() not in IMAGE_SUFFIXES:
            result.invalid.append(Invalid(f.relpath, f.folder, f"not an image file name (suffix {Path(f.relpath).suffix!r})"))
        else:
            by_path[f.relpath] = f

    annotations = raw / ANNOTATIONS
    if not annotations.is_file():
        result.items = [RawItem(f.relpath, f.folder, f.size) for f in by_path.values()]
        result.items.sort(key=lambda i: i.relpath)
        return result

    result.annotations_present = True
    result.annotations_sha256 = hashlib.sha256(annotations.read_bytes()).hexdigest()
    try:
        rows, file_problems = read_annotations(annotations)
    except UnicodeDecodeError as exc:
        file_problems, rows = [f"{ANNOTATIONS}: not UTF-8 text ({exc.reason} at byte {exc.start})"], []
    if file_problems:
        # Without a usable table nothing can be labelled with authority: every file is invalid.
        for f in by_path.values():
            result.invalid.append(Invalid(f.relpath, f.folder, file_problems[0]))
        result.invalid.sort(key=lambda i: i.relpath)
        return result

    parsed_by_path: dict[str, list[tuple[_Row, dict]]] = {}
    for row in rows:
        parsed, problem = _row_problem(row, config)
        if problem is not None:
            where = normalise_relpath(row.fields.get("image") or "") or f"(row {row.number})"
            target = by_path.pop(where, None)
            label = target.folder if target else (row.fields.get("label") or "")
            kind = "file" if target else "annotation_row"
            result.invalid.append(Invalid(where, label, f"{ANNOTATIONS} row {row.number}: {problem}", kind))
            continue
        parsed_by_path.setdefault(parsed["image"], []).append((row, parsed))

    for relpath, entries in sorted(parsed_by_path.items()):
        rows_text = ", ".join(str(r.number) for r, _ in entries)
        found = by_path.pop(relpath, None)
        first = entries[0][1]
        if found is None:
            result.invalid.append(
                Invalid(relpath, first["label"], f"{ANNOTATIONS} row {rows_text}: no such image file under RAW", "annotation_row")
            )
            continue
        distinct = {tuple(sorted((k, v) for k, v in p.items())) for _, p in entries}
        if len(distinct) > 1:
            result.invalid.append(Invalid(relpath, found.folder, f"{ANNOTATIONS} rows {rows_text} list this file with different values"))
            continue
        if first["label"] != found.folder:
            result.invalid.append(
                Invalid(relpath, found.folder, f"{ANNOTATIONS} row {rows_text}: label {first['label']!r} disagrees with folder {found.folder!r}")
            )
            continue
        result.items.append(
            RawItem(
                relpath=relpath,
                label=first["label"],
                size=found.size,
                patient_id=first["patient_id"],
                annotator=first["annotator"],
                dysplastic=first["dysplastic"],
                extra=first["extra"],
            )
        )
    for f in by_path.values():
        result.invalid.append(Invalid(f.relpath, f.folder, f"no row for this file in {ANNOTATIONS}"))
    result.items.sort(key=lambda i: i.relpath)
    result.invalid.sort(key=lambda i: i.relpath)
    return result
