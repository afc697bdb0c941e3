"""Ingest: list the raw crops (RAW/<label>/<file>) and match them with the optional RAW/annotations.csv.

Nothing is read beyond directory entries, file sizes and the annotation table here; pixels and file hashes
come from decode, in one read per file. Every problem becomes an Invalid entry naming the file or the
annotations.csv line and the reason; only a table that is unusable as a whole stops the build
(annotations.AnnotationsError). Rules for hostile file trees:
- hidden files and OS litter (.DS_Store, Thumbs.db, __MACOSX/, ._*) are not inputs: listed, not ledgered;
- a file name that is not printable UTF-8 (undecodable bytes, control or bidi characters) or holds a backslash
  is invalid and shown with backslash escapes, so the ledger and every message stay valid, readable UTF-8; a
  literal backslash is escaped too (annotations.csv reads it as a separator anyway), so that two different
  names can never be shown alike;
- a symbolic link to a file is followed only when its target lies inside RAW; links to directories are
  never followed (loops, and trees from elsewhere); each such link is an invalid input;
- a file larger than the config's image.max_file_bytes is refused without being read;
- names are case-sensitive; an annotation path that misses only by case or Unicode normalisation (NFC vs
  NFD, as macOS writes names) is matched when the match is unambiguous, else the message names the near miss.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.stages.annotations import ANNOTATIONS, AnnotationRow, AnnotationsError, closest, normalise_relpath, parse_bool, parse_row, path_problem, read_annotations
from pipeline.config import ReleaseConfig
from pipeline.records import RawItem

__all__ = ["ANNOTATIONS", "AnnotationsError", "IngestResult", "Invalid", "ingest", "normalise_relpath", "parse_bool", "readable_name"]

IMAGE_SUFFIXES = frozenset({".tif", ".tiff", ".png", ".jpg", ".jpeg"})
# Files that operating systems and archivers leave behind; they are not inputs and are only listed.
OS_LITTER = frozenset({".ds_store", "thumbs.db", "desktop.ini", "__macosx", ".spotlight-v100", ".trashes"})
# Characters that would make a name print as something else: bidi overrides ("Trojan Source") and separators.
_DECEPTIVE = frozenset("\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u2028\u2029")


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
    raw_files: list[str] = field(default_factory=list)  # every input found under RAW (readable names): the ledger's denominator
    empty_folders: list[str] = field(default_factory=list)  # folders under RAW with no input file at all


def readable_name(name: str) -> str:
    """The name as printable UTF-8: undecodable bytes as \\xNN, backslashes, control and bidi characters as \\xNN or \\uNNNN."""
    text = os.fsencode(name).replace(b"\\", b"\\x5c").decode("utf-8", "backslashreplace")
    out = []
    for ch in text:
        if unicodedata.category(ch) == "Cc" or ch in _DECEPTIVE:
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 0x100 else f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return "".join(out)


def _is_litter(name: str) -> bool:
    return name.startswith(".") or name.lower() in OS_LITTER


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except (ValueError, OSError, RuntimeError):  # RuntimeError: a symlink loop (Python 3.11)
        return False
    return True


def _transposed(folder: str, names: list[str]) -> str:
    """' (did you mean ...?)' for a name with the same letters in another order: abbreviations such as Matek's
    NGS are too short for a similarity ratio to catch 'NSG'."""
    match = [n for n in names if sorted(n.casefold()) == sorted(folder.casefold())]
    return f" (did you mean {match[0]!r}?)" if len(match) == 1 else ""


def unknown_folder_reason(folder: str, label_of_folder: dict[str, str]) -> str:
    """Why a folder's files are invalid, with the near miss among the config's folder names, or how to map it."""
    folder_of_label = {label: name for name, label in label_of_folder.items()}
    hint = closest(folder, sorted(label_of_folder)) or _transposed(folder, sorted(label_of_folder))
    if folder in folder_of_label:
        hint = f" (it is the label of folder {folder_of_label[folder]!r} in the config: rename the folder, or drop that class's folder alias)"
    elif not hint:
        hint = " (add it to the config: a class with this label, or folder = " + repr(folder) + " on the class it holds)"
    return f"unknown label folder {folder!r}{hint}"


@dataclass(frozen=True)
class _Found:
    relpath: str
    folder: str
    size: int
    label: str  # the config label the folder maps to (the folder name itself unless the config gives an alias)


class _Walker:
    """Walks RAW once: every input file becomes a _Found or an Invalid, every other entry is listed as ignored."""

    def __init__(self, raw: Path, config: ReleaseConfig, result: IngestResult) -> None:
        self.raw, self.root, self.result = raw, raw.resolve(), result
        self.label_of_folder = config.label_of_folder
        self.max_bytes = config.max_file_bytes
        self.found: list[_Found] = []

    def rel(self, path: Path) -> str:
        return readable_name(path.relative_to(self.raw).as_posix())

    def invalid(self, rel: str, folder: str, reason: str) -> None:
        self.result.raw_files.append(rel)
        self.result.invalid.append(Invalid(rel, readable_name(folder), reason))

    def walk(self) -> list[_Found]:
        for top in sorted(self.raw.iterdir(), key=lambda p: p.name):
            if _is_litter(top.name):
                self.result.ignored.append(readable_name(top.name) + ("/" if top.is_dir() else ""))
            elif top.is_symlink() and top.is_dir():
                self.invalid(self.rel(top), top.name, "symbolic link to a directory: not followed (copy the folder into RAW)")
            elif top.is_dir():
                self.walk_folder(top)
            elif top.name == ANNOTATIONS:
                continue
            elif Path(top.name).suffix.lower() in IMAGE_SUFFIXES:
                self.invalid(self.rel(top), "", "image directly under RAW, not in a class folder")
            else:
                self.result.ignored.append(readable_name(top.name))
        return self.found

    def walk_folder(self, top: Path) -> None:
        before = len(self.result.raw_files)

        def unlistable(exc: OSError) -> None:
            self.invalid(self.rel(Path(exc.filename)), top.name, f"cannot list this directory: {exc.strerror}")

        for dirpath, dirnames, filenames in os.walk(top, followlinks=False, onerror=unlistable):
            here = Path(dirpath)
            for d in sorted(dirnames):
                if _is_litter(d):
                    self.result.ignored.append(self.rel(here / d) + "/")
                elif (here / d).is_symlink():
                    self.invalid(self.rel(here / d), top.name, "symbolic link to a directory: not followed (copy the folder into RAW)")
            dirnames[:] = sorted(d for d in dirnames if not _is_litter(d) and not (here / d).is_symlink())
            for name in sorted(filenames):
                if _is_litter(name):
                    self.result.ignored.append(self.rel(here / name))
                else:
                    self.visit_file(here / name, top.name)
        if len(self.result.raw_files) == before:
            self.result.empty_folders.append(readable_name(top.name) + "/")

    def visit_file(self, path: Path, folder: str) -> None:
        rel = self.rel(path)
        if rel != path.relative_to(self.raw).as_posix():
            return self.invalid(rel, folder, "file name is not printable UTF-8 or holds a backslash (shown with backslash escapes); rename the file")
        if path.is_symlink() and not _within(path, self.root):
            return self.invalid(rel, folder, "symbolic link pointing outside RAW: not read")
        if not path.is_file():
            return self.invalid(rel, folder, "not a regular file (broken link, FIFO or device): not read")
        if folder not in self.label_of_folder:
            return self.invalid(rel, folder, unknown_folder_reason(folder, self.label_of_folder))
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            return self.invalid(rel, folder, f"not an image file name (suffix {path.suffix!r}; expected one of {', '.join(sorted(IMAGE_SUFFIXES))})")
        try:
            size = path.stat().st_size
        except OSError as exc:
            return self.invalid(rel, folder, f"cannot read file size: {exc.strerror}")
        if size > self.max_bytes:
            return self.invalid(rel, folder, f"file is {size:,} bytes, above the limit of {self.max_bytes:,} (config image.max_file_bytes): not read")
        self.result.raw_files.append(rel)
        self.found.append(_Found(rel, folder, size, self.label_of_folder[folder]))


class _PathIndex:
    """Finds the file an annotation path means: exactly, else by Unicode normalisation or case when unambiguous."""

    def __init__(self, paths: list[str]) -> None:
        self.exact = set(paths)
        self.by_nfc: dict[str, list[str]] = {}
        self.by_fold: dict[str, list[str]] = {}
        for p in paths:
            self.by_nfc.setdefault(unicodedata.normalize("NFC", p), []).append(p)
            self.by_fold.setdefault(unicodedata.normalize("NFC", p).casefold(), []).append(p)

    def match(self, rel: str) -> str | None:
        if rel in self.exact:
            return rel
        candidates = self.by_nfc.get(unicodedata.normalize("NFC", rel), [])
        return candidates[0] if len(candidates) == 1 else None

    def near_miss(self, rel: str) -> str:
        candidates = self.by_fold.get(unicodedata.normalize("NFC", rel).casefold(), [])
        if candidates:
            return f" (names are case-sensitive: did you mean {candidates[0]!r}?)"
        if any(_is_litter(part) for part in rel.split("/")):
            return " (hidden files and OS litter are not inputs)"
        return ""


def _lines(rows: list[AnnotationRow]) -> str:
    numbers = [str(r.line) for r in rows]
    return f"{ANNOTATIONS} line {numbers[0]}" if len(numbers) == 1 else f"{ANNOTATIONS} lines {', '.join(numbers)}"


def _differences(values: list[dict]) -> str:
    keys = sorted(k for k in values[0] if len({repr(v[k]) for v in values}) > 1)
    return "; ".join(f"{k}: " + " vs ".join(dict.fromkeys(repr(v[k]) for v in values)) for k in keys)


def _row_with_label(row: AnnotationRow, label_of_folder: dict[str, str]) -> AnnotationRow:
    """The row with a folder alias in its label column read as the label it stands for ("NGS" -> neutrophil_segmented)."""
    given = row.fields.get("label", "")
    if given in label_of_folder and label_of_folder[given] != given:
        return dataclasses.replace(row, fields={**row.fields, "label": label_of_folder[given]})
    return row


def _match_file(found: _Found, rows: list[AnnotationRow], class_names: list[str], label_of_folder: dict[str, str]) -> RawItem | Invalid:
    """One file and the rows that name it: a RawItem, or an Invalid naming the lines and the reason."""
    if not rows:
        return Invalid(found.relpath, found.folder, f"no row for this file in {ANNOTATIONS}")
    parsed = []
    for row in rows:
        values, problem = parse_row(_row_with_label(row, label_of_folder), class_names)
        if problem is not None:
            return Invalid(found.relpath, found.folder, f"{_lines([row])}: {problem}")
        parsed.append(values)
    if any(p != parsed[0] for p in parsed):
        return Invalid(found.relpath, found.folder, f"{_lines(rows)} list this file with different values ({_differences(parsed)})")
    first = parsed[0]
    if first["label"] != found.label:
        return Invalid(found.relpath, found.folder, f"{_lines(rows)}: label {first['label']!r} disagrees with folder {found.folder!r}")
    return RawItem(found.relpath, first["label"], found.size, first["patient_id"], first["annotator"], first["dysplastic"], first["extra"])


def _apply_annotations(rows: list[AnnotationRow], found: list[_Found], config: ReleaseConfig, result: IngestResult) -> None:
    index = _PathIndex([f.relpath for f in found])
    invalid_files = {i.relpath for i in result.invalid}
    rows_of: dict[str, list[AnnotationRow]] = {}
    unmatched: dict[str, list[AnnotationRow]] = {}
    for row in rows:
        problem = path_problem(row)
        if problem is not None:
            result.invalid.append(Invalid(_lines([row]), readable_name(row.fields.get("label", "")), f"{_lines([row])}: {problem}", "annotation_row"))
            continue
        rel = normalise_relpath(row.fields["image"])
        target = index.match(rel)
        if target is not None:
            rows_of.setdefault(target, []).append(row)
        elif rel not in invalid_files:  # a row naming a file already refused adds nothing to that file's entry
            unmatched.setdefault(rel, []).append(row)
    for rel, its_rows in sorted(unmatched.items()):
        shown = readable_name(rel)
        reason = f"{_lines(its_rows)}: no such image file under RAW{index.near_miss(rel)}"
        result.invalid.append(Invalid(shown, readable_name(its_rows[0].fields.get("label", "")), reason, "annotation_row"))
    for f in found:
        outcome = _match_file(f, rows_of.get(f.relpath, []), config.class_names, config.label_of_folder)
        (result.items if isinstance(outcome, RawItem) else result.invalid).append(outcome)


def _check_annotations_file(path: Path, root: Path) -> None:
    """A table that is there but cannot be read as RAW's own must stop the build, not silently switch to folder labels."""
    if path.is_symlink() and not _within(path, root):
        raise AnnotationsError(f"{ANNOTATIONS} is a symbolic link pointing outside RAW; copy the file into RAW")
    if not path.is_file():
        raise AnnotationsError(f"{ANNOTATIONS} is not a regular file (a directory, FIFO, device or broken link)")


def ingest(raw: Path, config: ReleaseConfig) -> IngestResult:
    """Every input under RAW, usable or not with the reason; AnnotationsError when annotations.csv is unusable."""
    raw = Path(raw)
    if not raw.is_dir():
        raise FileNotFoundError(f"RAW directory not found: {raw}")
    result = IngestResult()
    found = _Walker(raw, config, result).walk()
    annotations = raw / ANNOTATIONS
    if annotations.is_symlink() or annotations.exists():
        _check_annotations_file(annotations, raw.resolve())
        result.annotations_present = True
        result.annotations_sha256 = hashlib.sha256(annotations.read_bytes()).hexdigest()
        _apply_annotations(read_annotations(annotations), found, config, result)
    else:
        result.items = [RawItem(f.relpath, f.label, f.size) for f in found]
    result.items.sort(key=lambda i: i.relpath)
    result.invalid.sort(key=lambda i: (i.relpath, i.input_kind))
    result.raw_files.sort()
    return result
