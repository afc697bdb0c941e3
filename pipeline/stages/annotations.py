"""RAW/annotations.csv: read the table and parse each row, naming the line and the reason for every problem.

Two kinds of problem: the table as a whole is unusable (not UTF-8, no header, a required column missing or
twice, broken CSV quoting), which stops the build with AnnotationsError before any image is read; or one
row is wrong (path outside RAW, unknown label, non-boolean dysplastic, ...), which makes that row and the
file it names invalid while the rest of the build goes on.

Tolerated: a UTF-8 BOM, CRLF line endings, quoted cells with commas or line breaks, blank lines and rows
whose every cell is empty (spreadsheet exports add them), trailing empty cells.
"""

from __future__ import annotations

import csv
import difflib
import io
import posixpath
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import jsonschema

from pipeline.resources import load_schema

ANNOTATIONS = "annotations.csv"
REQUIRED_COLUMNS = ("image", "label")
KNOWN_COLUMNS = ("image", "label", "patient_id", "annotator", "dysplastic")
_TRUE = frozenset({"true", "1", "yes", "y", "t"})
_FALSE = frozenset({"false", "0", "no", "n", "f", ""})


class AnnotationsError(ValueError):
    """annotations.csv cannot be used at all; the message names the file, the line or column, and the reason."""


@dataclass(frozen=True)
class AnnotationRow:
    line: int  # line of the file where the row starts (the header is line 1), as an editor or spreadsheet shows it
    fields: dict[str, str]  # column -> stripped cell text ("" for a missing cell)
    unnamed_cells: tuple[str, ...] = ()  # non-empty cells beyond the header or under a column without a name


def parse_bool(value: str | None) -> bool | None:
    """true/false, 1/0, yes/no (any case); None when the text is not one of these."""
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    return None


def normalise_relpath(raw_path: str) -> str | None:
    """A POSIX path relative to RAW, or None when it is empty, absolute or escapes RAW."""
    text = raw_path.strip().replace("\\", "/")
    if not text or text.startswith("/") or (len(text) > 1 and text[1] == ":"):
        return None
    norm = posixpath.normpath(text)
    if norm == "." or norm.startswith("../") or norm == "..":
        return None
    return norm


def closest(word: str, choices: list[str]) -> str:
    """' (did you mean 'x'?)' for a near miss such as a misspelt label, else ''."""
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.75) or [c for c in choices if c.lower() == word.lower()]
    return f" (did you mean {match[0]!r}?)" if match else ""


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AnnotationsError(f"{ANNOTATIONS} line {line}: not UTF-8 text ({exc.reason} at byte {exc.start}); save it as UTF-8") from None
    if "\0" in text:
        raise AnnotationsError(f"{ANNOTATIONS} line {text[: text.index(chr(0))].count(chr(10)) + 1}: NUL byte; this is not a CSV text file")
    return text


def _header(cells: list[str] | None) -> list[str]:
    if cells is None:
        raise AnnotationsError(f"{ANNOTATIONS} is empty: expected a header row naming at least the columns {', '.join(REQUIRED_COLUMNS)}")
    header = [c.strip() for c in cells]
    seen: dict[str, int] = {}
    for position, name in enumerate(header, start=1):
        if name and name in seen:
            raise AnnotationsError(f"{ANNOTATIONS} line 1: column {name!r} appears twice (columns {seen[name]} and {position})")
        seen[name] = position
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        raise AnnotationsError(
            f"{ANNOTATIONS} line 1: missing required column(s) {', '.join(map(repr, missing))}; found columns {header}"
        )
    return header


def read_annotations(path: Path) -> list[AnnotationRow]:
    """Every non-blank data row with its line number; AnnotationsError when the table cannot be used at all."""
    text = _decode(path.read_bytes())
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    start = 1  # where the row being read starts: an unclosed quote is only noticed at the end of the file
    try:
        header = _header(next(reader, None))
        rows = []
        start = reader.line_num + 1
        for cells in reader:
            if any(c.strip() for c in cells):
                rows.append(_row(start, header, cells))
            start = reader.line_num + 1
    except csv.Error as exc:
        raise AnnotationsError(f"{ANNOTATIONS} line {start}: broken CSV ({exc}); check the quotes of the row starting there") from None
    return rows


def _row(line: int, header: list[str], cells: list[str]) -> AnnotationRow:
    stripped = [c.strip() for c in cells] + [""] * max(0, len(header) - len(cells))
    fields = {name: value for name, value in zip(header, stripped) if name}
    unnamed = tuple(v for name, v in zip(header, stripped) if not name and v) + tuple(v for v in stripped[len(header) :] if v)
    return AnnotationRow(line, fields, unnamed)


@cache
def _row_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(load_schema("annotation"))


def parse_row(row: AnnotationRow, class_names: list[str]) -> tuple[dict | None, str | None]:
    """The row's values (path normalised, dysplastic as bool, extra columns sorted), or the reason it is invalid."""
    f = row.fields
    if row.unnamed_cells:
        return None, f"cells outside the named columns ({', '.join(map(repr, row.unnamed_cells))}); quote values that contain commas"
    label = f.get("label", "")
    if not label:
        return None, "empty label"
    if label not in class_names:
        return None, f"unknown label {label!r}{closest(label, class_names)} (not one of the config's {len(class_names)} classes)"
    dysplastic = parse_bool(f.get("dysplastic"))
    if dysplastic is None:
        return None, f"dysplastic value {f.get('dysplastic')!r} is not a boolean (true/false, 1/0, yes/no, or empty for false)"
    parsed = {
        "image": normalise_relpath(f.get("image", "")),
        "label": label,
        "patient_id": f.get("patient_id") or None,
        "annotator": f.get("annotator") or None,
        "dysplastic": dysplastic,
    }
    extras = {k: (v or None) for k, v in f.items() if k not in KNOWN_COLUMNS}
    errors = list(_row_validator().iter_errors({**parsed, **extras}))
    if errors:
        e = errors[0]
        return None, f"column '{'.'.join(map(str, e.absolute_path)) or 'row'}': {e.message}"
    parsed["extra"] = tuple(sorted(extras.items()))
    return parsed, None


def path_problem(row: AnnotationRow) -> str | None:
    """Why the row's image path cannot name a file under RAW, or None when it can."""
    image = row.fields.get("image", "")
    if not image:
        return "empty image path"
    if normalise_relpath(image) is None:
        return f"image path {image!r} is absolute or leaves RAW"
    return None
