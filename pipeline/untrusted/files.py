"""The one way `verify` and `publish` open files of a release directory, whose every byte may be hostile.

A release directory can come from a pull request, so a name in it, or in its manifest, is not trusted:
- a relpath is checked before use: text, no NUL or control characters, no backslash, relative, no empty,
  `.` or `..` component, bounded length;
- it is opened one component at a time below a descriptor of the release (`dir_fd`) with `O_NOFOLLOW`, so a
  symbolic link anywhere on the way is refused and nothing outside the release is reached; `lstat` comes first
  so a device or FIFO is never opened at all (`O_NONBLOCK` guards the race), and `fstat` of the opened file
  must show the same regular file;
- hard links (`st_nlink > 1`) can be refused (publish: a hard link may be the token file);
- every open has a size cap, checked on `fstat` before any byte is read, and reads stop at the cap;
- the listing walks without following links and reports every entry that is not a directory or regular file.
Every refusal is a `ReleaseFileError` whose message names the path (escaped for printing) and the reason.
The release's file names and the manifest's schema check are pipeline.release.layout's, shared with the plain
reader of the build's own output.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pipeline.release.layout import CARD, CROISSANT, LEDGER, LEDGER_COLUMNS, MANIFEST, NOTES_DIR, WDS_CARD, ManifestError, check_manifest
from pipeline.untrusted.safetext import printable, show

MAX_RELPATH_CHARS = 1024
MAX_COMPONENT_CHARS = 255
MAX_DEPTH = 16  # directory levels the listing descends; a release has two
MAX_ENTRIES = 200_000  # entries the listing reads; the Hub takes 100,000 files per repository
_CHUNK = 1 << 20
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_OPEN_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC

# Fixed caps for the files every release has and verify parses whole (a real one is far below each).
TEXT_CAPS = {
    MANIFEST: 64 << 20,
    CARD: 4 << 20,
    WDS_CARD: 4 << 20,
    # MLL23's 41,906 raw images make a 6 MB ledger; parsed, 64 MB of rows stays within a few hundred MB
    LEDGER: 64 << 20,
    CROISSANT: 32 << 20,
}
NOTES_CAP = 4 << 20
# JSON arrays and objects in one manifest or croissant.json (MLL23: about 50 files, at most 41,906 retired images;
# the Hub takes 100,000 files). jsonschema takes some 25 us for each, so the cap also bounds its time to seconds
MAX_JSON_CONTAINERS = 300_000
_MAX_INT_DIGITS = 30  # sizes and counts; nothing a release records is longer
MAX_LISTED_FILE_BYTES = 50 * 1000**3  # the Hub refuses larger files, so no release file can be larger


def fixed_cap(rel: str) -> int:
    """The most any reader takes of `rel`, whatever the manifest declares."""
    return TEXT_CAPS.get(rel) or (NOTES_CAP if rel.startswith(f"{NOTES_DIR}/") else MAX_LISTED_FILE_BYTES)


class ReleaseFileError(Exception):
    """A release file that must not be read; the message names it and says why."""


def relpath_problem(rel: object) -> str | None:
    """Why `rel` is not a safe relative path inside a release, or None."""
    if not isinstance(rel, str):
        return f"is a {type(rel).__name__}, not a path"
    if not rel:
        return "is empty"
    if len(rel) > MAX_RELPATH_CHARS:
        return f"is {len(rel):,} characters long (at most {MAX_RELPATH_CHARS:,})"
    if printable(rel, limit=0) != rel:
        return "holds control characters, a backslash or '::' (not a plain release file name)"
    if rel.startswith("/"):
        return "is absolute"
    for part in rel.split("/"):
        if part in ("", ".", ".."):
            return f"has a {part!r} component (paths must stay inside the release)"
        if len(part) > MAX_COMPONENT_CHARS:
            return f"has a component of {len(part):,} characters (at most {MAX_COMPONENT_CHARS})"
    return None


def check_relpath(rel: object) -> str:
    problem = relpath_problem(rel)
    if problem:
        raise ReleaseFileError(f"{show(rel)}: path {problem}")
    return rel  # type: ignore[return-value]


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


@dataclass(frozen=True)
class Listing:
    files: list[str]  # regular files, POSIX relpaths, sorted (manifest.json included)
    problems: list[str] = field(default_factory=list)  # entries that are not directories or regular files
    hard_links: list[str] = field(default_factory=list)  # regular files with more than one link
    special: frozenset[str] = frozenset()  # entries named in `problems` (links, FIFOs, sockets, devices)


@dataclass(frozen=True)
class ReleaseDir:
    """A release directory, opened only through the rules of the module docstring."""

    root: Path

    def root_fd(self) -> int:
        """The release directory itself, which must not be a link either (its name may come from the same pull
        request: `releases/<name>` linked to a directory of the runner would list that directory)."""
        try:
            return os.open(self.root, _OPEN_DIR)
        except OSError as exc:
            linked = exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(self.root)
            reason = "is a symbolic link: not followed" if linked else f"cannot be opened ({exc.strerror})"
            raise ReleaseFileError(f"the release directory {self.root} {reason}") from None

    @contextmanager
    def _dir_fd(self, parts: list[str], rel: str) -> Iterator[int]:
        fd = self.root_fd()
        try:
            for part in parts:
                try:
                    st = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    raise ReleaseFileError(f"{show(rel)}: missing from the release") from None
                if not stat.S_ISDIR(st.st_mode):
                    raise ReleaseFileError(f"{show(rel)}: {show(part)} on its way is {_kind(st.st_mode)}, not a directory: not followed")
                inner = os.open(part, _OPEN_DIR, dir_fd=fd)
                os.close(fd)
                fd = inner
            yield fd
        finally:
            os.close(fd)

    def _open_fd(self, rel: str, max_bytes: int, allow_hard_links: bool) -> tuple[int, os.stat_result]:
        parts = check_relpath(rel).split("/")
        with self._dir_fd(parts[:-1], rel) as dir_fd:
            try:
                before = os.stat(parts[-1], dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                raise ReleaseFileError(f"{show(rel)}: missing from the release") from None
            if not stat.S_ISREG(before.st_mode):
                raise ReleaseFileError(f"{show(rel)}: is {_kind(before.st_mode)}, not a regular file: not read")
            try:
                fd = os.open(parts[-1], _OPEN_FILE, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno == errno.ELOOP:
                    raise ReleaseFileError(f"{show(rel)}: is a symbolic link, not a regular file: not read") from None
                raise ReleaseFileError(f"{show(rel)}: cannot be opened ({exc.strerror})") from None
        st = os.fstat(fd)
        problem = None
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            problem = "was replaced while being opened: not read"
        elif st.st_nlink > 1 and not allow_hard_links:
            problem = f"is a hard link ({st.st_nlink} names for one file; it may be a file from outside the release): not read"
        elif st.st_size > max_bytes:
            problem = f"is {st.st_size:,} bytes, above the limit of {max_bytes:,} for this file: not read"
        if problem:
            os.close(fd)
            raise ReleaseFileError(f"{show(rel)}: {problem}")
        return fd, st

    @contextmanager
    def open(self, rel: str, *, max_bytes: int, allow_hard_links: bool = True) -> Iterator[BinaryIO]:
        """The regular file `rel` for reading (at most `max_bytes` long), or ReleaseFileError."""
        fd, _ = self._open_fd(rel, max_bytes, allow_hard_links)
        with os.fdopen(fd, "rb") as fh:
            yield fh

    def size(self, rel: str, *, max_bytes: int = MAX_LISTED_FILE_BYTES) -> int:
        fd, st = self._open_fd(rel, max_bytes, True)
        os.close(fd)
        return st.st_size

    def read_bytes(self, rel: str, *, max_bytes: int) -> bytes:
        with self.open(rel, max_bytes=max_bytes) as fh:
            data = fh.read(max_bytes + 1)
        if len(data) > max_bytes:  # it grew after fstat
            raise ReleaseFileError(f"{show(rel)}: longer than the limit of {max_bytes:,} bytes: not read")
        return data

    def read_text(self, rel: str, *, max_bytes: int) -> str:
        data = self.read_bytes(rel, max_bytes=max_bytes)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ReleaseFileError(f"{show(rel)}: not UTF-8 text (byte {exc.start})") from None

    def hash(self, rel: str, *, max_bytes: int, allow_hard_links: bool = True) -> tuple[int, str]:
        """(size, sha256) of the file, reading at most `max_bytes`."""
        h = hashlib.sha256()
        n = 0
        with self.open(rel, max_bytes=max_bytes, allow_hard_links=allow_hard_links) as fh:
            while chunk := fh.read(min(_CHUNK, max_bytes + 1 - n)):
                n += len(chunk)
                if n > max_bytes:
                    raise ReleaseFileError(f"{show(rel)}: longer than the limit of {max_bytes:,} bytes: not read")
                h.update(chunk)
        return n, h.hexdigest()

    def exists(self, rel: str) -> bool:
        """A regular file at `rel` (never following links)."""
        try:
            self.size(rel)
        except ReleaseFileError:
            return False
        return True

    def listing(self) -> Listing:
        """Every regular file, and a problem for every other entry, without following any link."""
        files: list[str] = []
        problems: list[str] = []
        hard_links: list[str] = []
        special: list[str] = []
        budget = [MAX_ENTRIES]
        fd = self.root_fd()
        try:
            self._walk(fd, "", 0, files, problems, hard_links, special, budget)
        finally:
            os.close(fd)
        return Listing(sorted(files), problems, sorted(hard_links), frozenset(special))

    def _walk(self, fd: int, prefix: str, depth: int, files: list[str], problems: list[str], hard_links: list[str],
              special: list[str], budget: list[int]) -> None:
        try:
            with os.scandir(fd) as entries:
                names = sorted(e.name for e in entries)
        except OSError as exc:
            problems.append(f"{show(prefix or '.')}: cannot be listed ({exc.strerror})")
            return
        for name in names:
            budget[0] -= 1
            if budget[0] < 0:
                if budget[0] == -1:
                    problems.append(f"the release has more than {MAX_ENTRIES:,} entries: the rest were not looked at")
                return
            rel = prefix + name
            problem = relpath_problem(rel)
            if problem:
                problems.append(f"{show(rel)}: file name {problem}")
                continue
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 >= MAX_DEPTH:
                    problems.append(f"{show(rel)}/: directories nested deeper than {MAX_DEPTH} levels: not looked at")
                    continue
                try:
                    inner = os.open(name, _OPEN_DIR, dir_fd=fd)
                except OSError as exc:
                    problems.append(f"{show(rel)}/: cannot be opened ({exc.strerror})")
                    special.append(rel)
                    continue
                try:
                    self._walk(inner, rel + "/", depth + 1, files, problems, hard_links, special, budget)
                finally:
                    os.close(inner)
            elif stat.S_ISREG(st.st_mode):
                files.append(rel)
                if st.st_nlink > 1:
                    hard_links.append(rel)
            else:
                target = ""
                if stat.S_ISLNK(st.st_mode):
                    target = " (pointing elsewhere: not followed)"
                problems.append(f"{show(rel)}: is {_kind(st.st_mode)}{target}; a release holds only regular files")
                special.append(rel)


def file_problems(files: ReleaseDir, manifest: dict, listing: Listing, *, allow_hard_links: bool = True) -> Iterator[str]:
    """Every file in the manifest present, regular, with its size and sha256; nothing unlisted; no link or special
    file anywhere. Shared by `verify` and `publish` (which refuses hard links too)."""
    yield from listing.problems
    listed: dict[str, int] = {}
    for i, entry in enumerate(manifest["files"]):
        path = entry["path"]
        problem = relpath_problem(path)
        if problem is None and path == MANIFEST:
            problem = "is the manifest itself"
        if problem:
            yield f"{MANIFEST}: files[{i}].path {show(path)} {problem}"
            continue
        if path in listed:
            yield f"{show(path)} is listed twice in {MANIFEST}"
            continue
        listed[path] = i
    present = set(listing.files) - {MANIFEST}
    for path, i in sorted(listed.items()):
        entry = manifest["files"][i]
        if path in listing.special or any(path.startswith(f"{s}/") for s in listing.special):
            continue  # named above
        if path not in present:
            try:
                files.size(path)
            except ReleaseFileError as exc:
                yield f"{exc} (listed in {MANIFEST})" if "missing" not in str(exc) else f"{show(path)} is listed in {MANIFEST} but missing from the release"
            continue
        try:
            size = files.size(path, max_bytes=fixed_cap(path))
            if size != entry["size"]:
                yield f"{show(path)}: size is {size:,} bytes, {MANIFEST} says {entry['size']:,}"
                continue
            _, digest = files.hash(path, max_bytes=entry["size"], allow_hard_links=allow_hard_links)
        except ReleaseFileError as exc:
            yield str(exc)
            continue
        if digest != entry["sha256"]:
            yield f"{show(path)}: sha256 is {digest}, {MANIFEST} says {entry['sha256']} (the file was changed after the build)"
    for path in sorted(present - set(listed)):
        yield f"{show(path)} is in the release but not listed in {MANIFEST} (remove it, or rebuild)"
    folded: dict[str, str] = {}
    for path in listing.files:  # one file on a case-insensitive checkout (macOS, Windows): one overwrites the other
        other = folded.setdefault(path.casefold(), path)
        if other != path:
            yield f"{show(other)} and {show(path)} differ only in case"
    if not allow_hard_links:
        for path in listing.hard_links:
            if path in listed or path == MANIFEST:
                yield f"{show(path)}: is a hard link (it may be a file from outside the release): not published"


# ---- manifest.json ---------------------------------------------------------------------------------------


# What publish needs of a manifest; verify needs all of the schema's required keys.
PUBLISH_KEYS = ("version", "files")


def json_problem(text: str, max_containers: int = MAX_JSON_CONTAINERS) -> str | None:
    """Why `text` must not go to json.loads, or None. Counted on the text, before parsing: every `[` or `{`
    becomes a list or dict of at least 56 bytes, so 20 MB of `[],` is over a gigabyte once parsed. Brackets
    inside strings count too, which only errs towards refusing (a release's JSON has a handful of those)."""
    containers = text.count("[") + text.count("{")
    if containers > max_containers:
        return f"{containers:,} JSON arrays and objects, more than the {max_containers:,} a release file of this kind needs: not parsed"
    return None


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))
        # json keeps the last value, other readers the first: each would see a different document
        raise ValueError(f"key {show(key, 80)!r} appears twice in one object (readers disagree on which one counts)")
    return doc


def parse_json(text: str, rel: str, max_containers: int = MAX_JSON_CONTAINERS) -> object:
    """JSON of a release file, bounded before parsing (`json_problem`), without duplicate keys and with huge
    numbers refused (Python parses a 4,300-digit integer or 1e999 without complaint, other readers do not);
    ValueError naming `rel` and the reason."""
    problem = json_problem(text, max_containers)
    if problem:
        raise ValueError(f"{show(rel)}: {problem}")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_refuse_constant,
                          parse_int=_bounded_int, parse_float=_bounded_float)
    except RecursionError:
        raise ValueError(f"{show(rel)}: nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{show(rel)}: not valid JSON ({show(str(exc), 300)})") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _MAX_INT_DIGITS:
        raise ValueError(f"an integer of {len(text):,} digits")
    return int(text)


def _bounded_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"number {show(text, 40)} is beyond a float")
    return value


def load_manifest(release: ReleaseDir, required: tuple[str, ...] | None = None) -> dict:
    """manifest.json parsed (size-capped) and validated against schemas/manifest.schema.json; `required`
    narrows the schema's required keys (publish needs only the version and the file list)."""
    try:
        text = release.read_text(MANIFEST, max_bytes=TEXT_CAPS[MANIFEST])
    except ReleaseFileError as exc:
        raise ManifestError(str(exc)) from None
    try:
        doc = parse_json(text, MANIFEST)
    except ValueError as exc:
        raise ManifestError(str(exc)) from None
    return check_manifest(doc, required)


# ---- ledger.csv ---------------------------------------------------------------------------------------------

MAX_LEDGER_ROWS = 500_000


def read_ledger(release: ReleaseDir, *, max_rows: int = MAX_LEDGER_ROWS, max_bytes: int | None = None) -> list[dict[str, str]]:
    """ledger.csv's rows, keyed by its columns: streamed from the size-capped file (the text is never held
    twice), its header exactly the build's columns and every row exactly as many fields (a short row would
    put None where every reader expects text). ReleaseFileError naming the line and the reason."""
    cap = TEXT_CAPS[LEDGER] if max_bytes is None else min(max_bytes, TEXT_CAPS[LEDGER])
    rows: list[dict[str, str]] = []
    with release.open(LEDGER, max_bytes=cap) as fh:
        reader = csv.reader(io.TextIOWrapper(fh, encoding="utf-8", newline=""))
        try:
            header = next(reader, [])
            if tuple(header) != LEDGER_COLUMNS:
                raise ReleaseFileError(f"{LEDGER}: columns are {show(header)}, expected {list(LEDGER_COLUMNS)}")
            for row in reader:
                if len(rows) == max_rows:
                    raise ReleaseFileError(f"{LEDGER}: not a readable CSV table (more than {max_rows:,} rows)")
                if len(row) != len(header):
                    raise ReleaseFileError(f"{LEDGER} line {reader.line_num}: {len(row)} fields, the header has {len(header)}")
                rows.append(dict(zip(header, row)))
        except csv.Error as exc:
            raise ReleaseFileError(f"{LEDGER}: not a readable CSV table ({exc})") from None
        except UnicodeDecodeError as exc:
            raise ReleaseFileError(f"{LEDGER}: not UTF-8 text (byte {exc.start} of a block)") from None
    return rows
