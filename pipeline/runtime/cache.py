"""A cache of per-image results, so that a rebuild only decodes (and dedup only re-tests) what changed.

What is cached: the outcome of decoding one file (the content fields of ImageFacts, or the reason it was
rejected), stored under the file's sha256 plus a *context*: a digest of the source of the modules that
compute the facts (so a code change starts afresh by itself), the expected image size and the versions of
Pillow, numpy and scipy. Path, label and annotations are never cached: they come from the current ingest,
so moving or relabelling a file is always seen, and unreadable files are not cached at all.

How a file is recognised without reading it: like git's index, by a stat key (device, inode, size,
mtime_ns, ctime_ns) recorded with the file's sha256. ctime cannot be set by tools that copy or extract
files while keeping mtime (cp -p, rsync -t, tar), and any write or rename changes it, so an unchanged
stat key means unchanged bytes. A stat key is not trusted when the file changed less than
``RACY_SECONDS`` before it was recorded (its timestamps might not have ticked for a later write: git's
"racily clean" rule), or when the file system reports zero times or inodes; such files, and files whose
stat key changed, are read and decoded again. ``verify=True`` skips the stat keys: every file is read
and hashed, and only its sha256 selects the cached facts (slower, but also reuses results for files
that were copied, touched or renamed).

Dedup's test results per candidate pair are kept too (``known``/``remember``, dedup.PairMemo: the duplicate
test where it ran and the same-cell test): by the two files' sha256s and the same context, since both
tests are pure functions of the two images' pixels.

The images a release stores re-encoded (decode.publishable_bytes: PNGs of lossless files) are kept too
(``EncodedCache``), by the file's sha256, the same context and the encoding (codec, level, zlib version), so a
rebuild copies them instead of encoding again: about 100 kB an image, 4 GB for a full MLL23 release.

Every row carries a checksum of its key and content (``row_checksum``); a row that fails it (bit rot, an
edited file) is ignored and its work is done again, and the build warns about it. So a fact taken from
the cache is one a decode of that very file produced, and the build trusts it as it trusts a fresh one.

Storage: one SQLite file in the cache directory (WAL mode, safe for concurrent builds), written while
the build runs and committed every ``COMMIT_EVERY_ROWS`` results or ``COMMIT_EVERY_SECONDS``, so a
killed build resumes from what it finished. Delete the directory to clear the cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
import PIL
import scipy

from pipeline.stages import decode
from pipeline.stages.dedup import DuplicateTest, PairVerdict, SameCellTest
from pipeline.records import DecodeFailure, ImageFacts

# Bump to drop every cached result. Not needed for code changes: the context hashes the source of the
# pipeline modules decode uses (facts_code_digest), so editing them starts a fresh set of results.
FACTS_VERSION = 4
# v3: a pair row holds both of dedup's tests (dedup.PairVerdict); v4: the encoded images (table ``encoded``)
DB_NAME = "facts-v4.sqlite3"
RACY_SECONDS = 2.0  # FAT keeps mtimes to 2 s; finer file systems are covered with room to spare
# Commit often: in WAL mode with synchronous=NORMAL a commit is an append without fsync, so cheap.
COMMIT_EVERY_SECONDS = 0.5
COMMIT_EVERY_ROWS = 128
_QUERY_CHUNK = 500  # SQLite host parameters per IN (...) query stay well under its limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY, dev INTEGER, ino INTEGER, size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER,
    file_sha256 TEXT NOT NULL, recorded_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pairs (
    sha_a TEXT NOT NULL, sha_b TEXT NOT NULL, context TEXT NOT NULL, test_json TEXT NOT NULL, checksum TEXT NOT NULL,
    PRIMARY KEY (sha_a, sha_b, context)
);
CREATE TABLE IF NOT EXISTS encoded (
    file_sha256 TEXT NOT NULL, context TEXT NOT NULL, encoding TEXT NOT NULL, data BLOB NOT NULL, checksum TEXT NOT NULL,
    PRIMARY KEY (file_sha256, context, encoding)
);
CREATE TABLE IF NOT EXISTS facts (
    file_sha256 TEXT NOT NULL, context TEXT NOT NULL, facts_json TEXT, reject_reason TEXT, checksum TEXT NOT NULL,
    PRIMARY KEY (file_sha256, context)
);
"""


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/mll23, else ~/.cache/mll23: one cache for every RAW and release of this user."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mll23"


def facts_modules() -> list[ModuleType]:
    """pipeline.stages.decode and every pipeline module it uses, directly or not (what computes the facts)."""
    seen: dict[str, ModuleType] = {}
    todo = [decode]
    while todo:
        module = todo.pop()
        if module.__name__ in seen:
            continue
        seen[module.__name__] = module
        for value in vars(module).values():
            name = value.__name__ if isinstance(value, ModuleType) else getattr(value, "__module__", None)
            if isinstance(name, str) and name.startswith("pipeline.") and name in sys.modules:
                todo.append(sys.modules[name])
    return [seen[name] for name in sorted(seen)]


@lru_cache(maxsize=1)
def facts_code_digest() -> str:
    h = hashlib.sha256()
    for module in facts_modules():
        h.update(module.__name__.encode() + b"\0" + Path(module.__file__).read_bytes() + b"\0")
    return h.hexdigest()


def facts_context(expected_size: tuple[int, int]) -> str:
    """What, besides the file bytes, decides an image's facts: versions of the code and libraries, the size."""
    parts = (
        f"facts-v{FACTS_VERSION}|code={facts_code_digest()}|size={expected_size[0]}x{expected_size[1]}"
        f"|Pillow={PIL.__version__}|numpy={np.__version__}|scipy={scipy.__version__}"
    )
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StatKey:
    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, path: str) -> StatKey | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def usable(self) -> bool:
        return self.ino != 0 and self.mtime_ns != 0 and self.ctime_ns != 0


@dataclass(frozen=True)
class Lookup:
    """Where each item stands before any work: a cached result, or why it must be (re)computed."""

    cached: dict[int, ImageFacts | DecodeFailure]  # item index -> result rebuilt from the cache
    stat_keys: dict[int, StatKey]  # item index -> stat key taken now (recorded with its new result)


class FactsCache:
    """The per-image result cache in ``directory``; use as a context manager so pending rows are committed."""

    def __init__(self, directory: Path, expected_size: tuple[int, int], *, verify: bool = False) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.context = facts_context(expected_size)
        self.verify = verify
        self._db = sqlite3.connect(self.directory / DB_NAME, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a crash loses at most the last commits, never corrupts
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self._last_commit = time.monotonic()
        self._uncommitted = 0
        self.corrupt_rows: list[str] = []  # keys of rows whose checksum failed (ignored, recomputed)

    # ---- reading ------------------------------------------------------------------------------------

    def lookup(self, paths: Sequence[str], relpaths: Sequence[str], labels: Sequence[str]) -> Lookup:
        """Results for the files whose stat key is unchanged and trusted (none when verifying)."""
        stat_keys = {i: key for i, p in enumerate(paths) if (key := StatKey.of(p)) is not None}
        if self.verify:
            return Lookup({}, stat_keys)
        known = self._files(paths)
        file_sha = {}
        for i, path in enumerate(paths):
            row = known.get(path)
            key = stat_keys.get(i)
            if row is None or key is None or not key.usable():
                continue
            recorded_key, sha, recorded_ns = row
            if recorded_key == key and max(key.mtime_ns, key.ctime_ns) < recorded_ns - RACY_SECONDS * 1e9:
                file_sha[i] = sha
        facts = self.facts_for(set(file_sha.values()))
        cached = {}
        for i, sha in file_sha.items():
            if sha in facts:
                cached[i] = rebuild(facts[sha], sha, relpaths[i], labels[i])
        return Lookup(cached, stat_keys)

    def facts_for(self, shas: Iterable[str]) -> dict[str, tuple]:
        """file sha256 -> stored facts row, for those of ``shas`` cached in this context. A row whose checksum
        does not match its content (bit rot, a hand edit) is left out, so its image is decoded again."""
        out: dict[str, tuple] = {}
        for chunk in _chunks(sorted(shas), _QUERY_CHUNK):
            marks = ",".join("?" * len(chunk))
            for sha, facts_json, reason, checksum in self._db.execute(
                f"SELECT file_sha256, facts_json, reject_reason, checksum FROM facts WHERE context = ? AND file_sha256 IN ({marks})",
                [self.context, *chunk],
            ):
                if checksum == row_checksum(sha, self.context, facts_json, reason):
                    out[sha] = (facts_json, reason)
                else:
                    self.corrupt_rows.append(sha)
        return out

    def _files(self, paths: Sequence[str]) -> dict[str, tuple[StatKey, str, int]]:
        out = {}
        for chunk in _chunks(list(paths), _QUERY_CHUNK):
            marks = ",".join("?" * len(chunk))
            for path, dev, ino, size, mtime, ctime, sha, recorded in self._db.execute(
                f"SELECT path, dev, ino, size, mtime_ns, ctime_ns, file_sha256, recorded_ns FROM files WHERE path IN ({marks})", chunk
            ):
                out[path] = (StatKey(dev, ino, size, mtime, ctime), sha, recorded)
        return out

    # ---- writing ------------------------------------------------------------------------------------

    def record(self, path: str, stat_key: StatKey | None, result: ImageFacts | DecodeFailure, recorded_ns: int) -> None:
        """Store one result (results of unreadable files, which have no sha256, are not stored)."""
        sha = result.file_sha256
        if not sha:
            return
        facts_json, reason = (None, result.reason) if isinstance(result, DecodeFailure) else (content_json(result), None)
        row = (sha, self.context, facts_json, reason, row_checksum(sha, self.context, facts_json, reason))
        self._db.execute("INSERT OR REPLACE INTO facts VALUES (?,?,?,?,?)", row)
        if stat_key is not None and stat_key.usable():
            self._db.execute(
                "INSERT OR REPLACE INTO files VALUES (?,?,?,?,?,?,?,?)",
                (path, stat_key.dev, stat_key.ino, stat_key.size, stat_key.mtime_ns, stat_key.ctime_ns, sha, recorded_ns),
            )
        self._uncommitted += 1
        if self._uncommitted >= COMMIT_EVERY_ROWS or time.monotonic() - self._last_commit >= COMMIT_EVERY_SECONDS:
            self.commit()

    def commit(self) -> None:
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")
        self._last_commit = time.monotonic()
        self._uncommitted = 0

    def close(self) -> None:
        if self._db is not None:
            self._db.execute("COMMIT")
            self._db.close()
            self._db = None

    def __enter__(self) -> FactsCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- dedup's pair tests (dedup.PairMemo) ------------------------------------------------------------

    def known(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], PairVerdict]:
        wanted = set(pairs)
        out: dict[tuple[str, str], PairVerdict] = {}
        for chunk in _chunks(sorted({a for a, _ in wanted}), _QUERY_CHUNK):
            marks = ",".join("?" * len(chunk))
            for a, b, text, checksum in self._db.execute(
                f"SELECT sha_a, sha_b, test_json, checksum FROM pairs WHERE context = ? AND sha_a IN ({marks})", [self.context, *chunk]
            ):
                if (a, b) not in wanted:
                    continue
                if checksum == row_checksum(a, b, self.context, text):
                    out[(a, b)] = _verdict_from_json(text)
                else:
                    self.corrupt_rows.append(f"{a}+{b}")
        return out

    def remember(self, results: dict[tuple[str, str], PairVerdict]) -> None:
        rows = []
        for (a, b), v in results.items():
            text = _verdict_json(v)
            rows.append((a, b, self.context, text, row_checksum(a, b, self.context, text)))
        self._db.executemany("INSERT OR REPLACE INTO pairs VALUES (?,?,?,?,?)", rows)
        self.commit()

    def warnings(self) -> list[str]:
        """What the build should tell the user about this cache: rows that failed their checksum."""
        n = len(self.corrupt_rows)
        if not n:
            return []
        one = n == 1
        return [f"per-image cache: {n} entr{'y' if one else 'ies'} failed {'its' if one else 'their'} checksum and {'was' if one else 'were'} computed again"]

    def size(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM facts WHERE context = ?", (self.context,)).fetchone()[0]


class EncodedCache:
    """The encoded images of the cache in ``directory`` (decode.EncodedStore), shared by the write stage's
    reader threads: one connection behind a lock (SQLite connections are not shared between threads
    otherwise). A row whose checksum fails is ignored (the image is encoded again) and counted."""

    def __init__(self, directory: Path, expected_size: tuple[int, int], encoding: str) -> None:
        Path(directory).mkdir(parents=True, exist_ok=True)
        self.context = facts_context(expected_size)
        self.encoding = encoding
        self._lock = threading.Lock()
        self._db = sqlite3.connect(Path(directory) / DB_NAME, timeout=60, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self.corrupt_rows: list[str] = []
        self.write_error: str | None = None  # why encoded images stopped being stored, if they did
        self.hits = 0
        self.stored = 0

    def get(self, file_sha256: str) -> bytes | None:
        with self._lock:
            row = self._db.execute(
                "SELECT data, checksum FROM encoded WHERE file_sha256 = ? AND context = ? AND encoding = ?",
                (file_sha256, self.context, self.encoding),
            ).fetchone()
            if row is None:
                return None
            data, checksum = bytes(row[0]), row[1]
            if checksum != self._checksum(file_sha256, data):
                self.corrupt_rows.append(file_sha256)
                return None
            self.hits += 1
            return data

    def put(self, file_sha256: str, data: bytes) -> None:
        """Keep one encoded image (autocommit: on disk at once, so a killed build keeps what it encoded). The
        cache only saves work: when it cannot be written (a full disk) the build goes on without it and warns."""
        with self._lock:
            if self.write_error is not None:
                return
            try:
                self._db.execute(
                    "INSERT OR REPLACE INTO encoded VALUES (?,?,?,?,?)",
                    (file_sha256, self.context, self.encoding, data, self._checksum(file_sha256, data)),
                )
            except sqlite3.Error as exc:
                self.write_error = f"{type(exc).__name__}: {exc}"
                return
            self.stored += 1

    def _checksum(self, file_sha256: str, data: bytes) -> str:
        return row_checksum(file_sha256, self.context, self.encoding, hashlib.sha256(data).hexdigest())

    def warnings(self) -> list[str]:
        out = []
        if self.corrupt_rows:
            out.append(f"per-image cache: {len(self.corrupt_rows)} encoded image(s) failed their checksum and were encoded again")
        if self.write_error is not None:
            out.append(f"per-image cache: encoded images could not be stored ({self.write_error}); the next build encodes them again")
        return out

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> EncodedCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _verdict_json(v: PairVerdict) -> str:
    """[duplicate test fields or null, same-cell test fields or null]; json writes inf/nan as Infinity/NaN."""
    return json.dumps([None if t is None else dataclasses.astuple(t) for t in (v.duplicate, v.same_cell)])


def _verdict_from_json(text: str) -> PairVerdict:
    dup, cell = json.loads(text)
    return PairVerdict(None if dup is None else DuplicateTest(*dup), None if cell is None else SameCellTest(*cell))


# ImageFacts fields that come from the ingest or the file, not from decoding its content.
_NOT_CONTENT = ("relpath", "label", "file_sha256")


# ImageFacts fields holding bytes, stored in the JSON as hex.
_BYTES_FIELDS = frozenset(f.name for f in dataclasses.fields(ImageFacts) if "bytes" in str(f.type))


def row_checksum(*fields: str | None) -> str:
    """Ties a cache row's content to its key: a row changed by bit rot or by hand no longer matches and is
    ignored, so every fact taken from the cache is one a decode of that very file produced."""
    return hashlib.sha256("\0".join("\1" if f is None else f for f in fields).encode()).hexdigest()[:32]


def content_json(facts: ImageFacts) -> str:
    """Every content field of ImageFacts (whatever fields it has) as JSON; floats and big ints round-trip exactly."""
    content = {f.name: getattr(facts, f.name) for f in dataclasses.fields(facts) if f.name not in _NOT_CONTENT}
    for name in _BYTES_FIELDS:
        if content.get(name) is not None:
            content[name] = content[name].hex()
    return json.dumps(content, sort_keys=True)


def rebuild(row: tuple, file_sha256: str, relpath: str, label: str) -> ImageFacts | DecodeFailure:
    facts_json, reason = row
    if reason is not None:
        return DecodeFailure(relpath, reason, file_sha256)
    content = json.loads(facts_json)
    for name in _BYTES_FIELDS:
        if content.get(name) is not None:
            content[name] = bytes.fromhex(content[name])
    return ImageFacts(relpath=relpath, label=label, file_sha256=file_sha256, **content)


def file_sha256_or_none(path: str) -> str | None:
    """sha256 of a file's bytes, None when it cannot be read (decode reports why)."""
    try:
        with open(path, "rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return None


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
