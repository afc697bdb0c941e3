"""Nothing lost, and whole or nothing: the checks a build runs before a release may appear under its name.

- check_nothing_lost: every raw input has exactly one ledger row, and kept + duplicate + label_conflict +
  excluded + invalid adds up to the number of raw inputs found under RAW.
- published pixels (ShardChecker in a build, verify_published_pixels stand-alone): every image stored in the
  written Parquet shards is read back and must give the pixel sha256 taken at ingest: the published image is
  the annotated one. Bytes whose sha256 equals the file that was decoded at ingest are that file, so they
  decode to those pixels (decoding is deterministic); any other bytes (re-encoded images), and a fixed 1 in
  SPOT_CHECK_EVERY of the rest, are decoded again, the way a consumer decodes them. The WebDataset tars (when written) must hold, for each kept image, exactly
  the bytes just verified in the Parquet shards (a sha256 of the bytes). A build checks each shard on a
  thread as soon as it is closed, while the next is written, and before the staging directory is renamed.
- staging names, clean-up of what a killed build left next to the release, and fsync before the rename.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import pyarrow.parquet as pq
from pyarrow import Buffer
from PIL import Image, ImageOps

from pipeline.runtime.overlap import drop_from_page_cache
from pipeline.records import FATES, LedgerEntry
from pipeline.release.layout import DATA_DIR, WDS_DIR



class IntegrityError(RuntimeError):
    """A build broke one of its own guarantees; nothing is published. The message says which and where."""


# ---- nothing lost ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LedgerBalance:
    """How the raw inputs ended: the build summary's equation."""

    by_fate: dict[str, int]  # raw inputs (files) per fate, in FATES order
    raw_inputs: int  # inputs found under RAW by ingest, counted independently of the ledger
    rows_without_file: int  # annotations.csv rows naming no file: invalid, but not raw inputs

    def line(self) -> str:
        text = " + ".join(f"{n:,} {fate}" for fate, n in self.by_fate.items()) + f" = {self.raw_inputs:,} raw inputs"
        if self.rows_without_file:
            text += f" (and {self.rows_without_file:,} annotations.csv row(s) naming no file, also invalid)"
        return text


def check_nothing_lost(ledger: list[LedgerEntry], raw_inputs: Iterable[str]) -> LedgerBalance:
    """Each raw input exactly once in the ledger with a known fate, and the fates add up; else IntegrityError."""
    raw = Counter(raw_inputs)
    files = [e for e in ledger if e.input_kind == "file"]
    seen = Counter(e.relpath for e in files)
    problems = []
    if twice := sorted(p for p, n in seen.items() if n > 1):
        problems.append(f"in the ledger more than once: {twice[:5]}")
    if missing := sorted(set(raw) - set(seen)):
        problems.append(f"raw inputs missing from the ledger: {missing[:5]}")
    if unknown := sorted(set(seen) - set(raw)):
        problems.append(f"ledger rows for files ingest never found: {unknown[:5]}")
    if bad_fates := sorted({e.fate for e in ledger} - set(FATES)):
        problems.append(f"unknown fates {bad_fates}")
    if unplaced := sorted(e.relpath for e in files if e.fate == "kept" and not (e.split and e.image_id)):
        problems.append(f"kept without a split or image_id: {unplaced[:5]}")
    by_fate = {fate: sum(1 for e in files if e.fate == fate) for fate in FATES}
    if sum(by_fate.values()) != sum(raw.values()):
        problems.append(f"fates add up to {sum(by_fate.values())}, but ingest found {sum(raw.values())} raw inputs")
    if problems:
        raise IntegrityError("nothing-lost check failed: " + "; ".join(problems))
    return LedgerBalance(by_fate, sum(raw.values()), sum(1 for e in ledger if e.input_kind == "annotation_row"))


# ---- published pixels -----------------------------------------------------------------------------------


def published_pixel_sha256(data: bytes, size: tuple[int, int]) -> str:
    """sha256 of the RGB pixels a consumer gets from stored image bytes (datasets' Image: open, load, EXIF-rotate)."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        if img.getexif().get(0x0112) is not None:
            img = ImageOps.exif_transpose(img)
        if img.mode != "RGB" or img.size != size:
            raise ValueError(f"decodes to {img.mode} {img.size[0]}x{img.size[1]}, expected RGB {size[0]}x{size[1]}")
        return hashlib.sha256(img.tobytes()).hexdigest()


class Expected(NamedTuple):
    """What the build knows of one kept image: its ingest pixel sha256 and, when its file's bytes are
    published unchanged, that file's sha256 (bytes with that digest need no second decode)."""

    pixel_sha256: str
    decoded_file_sha256: str | None = None


SPOT_CHECK_EVERY = 64
TAR_READ_BUFFER = 4 << 20
PARQUET_READ_BUFFER = 4 << 20
PARQUET_CHECK_BATCH = 32


def spot_checked(pixel_sha256: str) -> bool:
    """About one image in SPOT_CHECK_EVERY (chosen by its pixel hash, so the same ones every build) is decoded
    again even when its bytes are the decoded file's: a standing check that a consumer's decoder (datasets'
    Image) gives the pixels the ingest decoder gave."""
    return int(pixel_sha256[:8], 16) % SPOT_CHECK_EVERY == 0


class ShardCheckRow(NamedTuple):
    """What checking one image of a Parquet shard found."""

    source_file: str
    claimed_sha256: str  # the row's pixel_sha256 column
    decoded_sha256: str | None  # of the pixels the bytes decode to; None when they do not decode
    problem: str  # empty when the bytes decoded
    bytes_sha256: str  # of the stored image bytes


class TarCheckRow(NamedTuple):
    """What checking one sample of a tar shard found."""

    source_file: str  # from the sample's json member
    bytes_sha256: str  # of its image member
    problem: str  # empty for a complete sample


def check_parquet_shard(source: BinaryIO, expected: Mapping[str, Expected], size: tuple[int, int]) -> list[ShardCheckRow]:
    """One row per image of a Parquet shard, streamed in small batches (bounded memory).

    Bytes whose sha256 equals the file decoded at ingest are that very file, so they decode to the pixels
    hashed then (decoding is deterministic); other bytes, and the spot-check sample, are decoded again, as a
    consumer would.
    """
    # Small batches, no pre-buffering: a checking thread holds about one row group (config
    # max_row_group_bytes) of image bytes, never a whole shard.
    parquet = pq.ParquetFile(source, buffer_size=PARQUET_READ_BUFFER, pre_buffer=False)
    out: list[ShardCheckRow] = []
    for batch in parquet.iter_batches(batch_size=PARQUET_CHECK_BATCH, columns=["image", "source_file", "pixel_sha256"], use_threads=False):
        images = batch.column("image").field("bytes")  # Arrow buffers, not Python bytes: no second copy
        for i, (src, claimed) in enumerate(zip(batch.column("source_file").to_pylist(), batch.column("pixel_sha256").to_pylist())):
            out.append(_check_image(images[i].as_buffer(), src, claimed, expected.get(src), size))
    return out


def _check_image(data: Buffer | None, source: str, claimed: str, expect: Expected | None, size: tuple[int, int]) -> ShardCheckRow:
    if data is None:
        return ShardCheckRow(source, claimed, None, "the image bytes are null", "")
    digest = hashlib.sha256(data).hexdigest()
    if expect is not None and expect.decoded_file_sha256 == digest and not spot_checked(expect.pixel_sha256):
        return ShardCheckRow(source, claimed, expect.pixel_sha256, "", digest)
    try:
        return ShardCheckRow(source, claimed, published_pixel_sha256(bytes(data), size), "", digest)
    except Exception as exc:  # any decode failure is a verification failure, reported with its row
        return ShardCheckRow(source, claimed, None, f"{type(exc).__name__}: {exc}", digest)


def check_tar_shard(source: BinaryIO) -> list[TarCheckRow]:
    """One row per sample of one tar shard."""
    samples: dict[str, dict[str, str]] = {}
    with tarfile.open(fileobj=source, mode="r:") as tar:
        for member in tar:
            key, _, ext = member.name.partition(".")
            if not member.isfile() or ext == "cls":
                continue
            data = tar.extractfile(member).read()
            sample = samples.setdefault(key, {})
            if ext == "json":
                sample["source"] = json.loads(data)["source_file"]
            else:
                sample["digest"] = hashlib.sha256(data).hexdigest()
    return [TarCheckRow(s.get("source", f"(tar sample {key})"), s.get("digest", ""), "" if "digest" in s and "source" in s else "incomplete sample") for key, s in samples.items()]


def verify_published_pixels(release_dir: Path, ingest_sha256: dict[str, str], size: tuple[int, int], threads: int = 1) -> int:
    """Every kept image is in the shards exactly once and decodes to the pixels hashed at ingest; returns the count.

    The stand-alone form, for a release already written: every image is decoded again (a build checks each
    shard as it is written instead, trusting bytes equal to the decoded file: ShardChecker).
    """
    checker = ShardChecker({source: Expected(sha) for source, sha in ingest_sha256.items()}, size, threads)
    for path in sorted((release_dir / DATA_DIR).glob("*.parquet")):
        checker.parquet(path)
    for path in sorted((release_dir / WDS_DIR).glob("*.tar")):
        checker.tar(path)
    return checker.result()


class ShardChecker:
    """Checks each shard of a release as soon as it is written, on threads, while the next one is written.

    The shard was just written, so it is read back from the page cache, not the disk; hashing and decoding
    release the GIL. The file is opened when it is handed over, so renaming it afterwards is harmless.
    ``result`` waits for every check and raises IntegrityError listing all problems.
    """

    def __init__(self, expected: Mapping[str, Expected], size: tuple[int, int], threads: int) -> None:
        self._expected, self._size = expected, size
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="shard-check")
        self._parquet: list = []
        self._tars: list = []

    def parquet(self, path: Path) -> None:
        self._parquet.append(self._pool.submit(self._run, check_parquet_shard, open(path, "rb"), self._expected, self._size))  # noqa: SIM115

    def tar(self, path: Path) -> None:
        # a large read buffer: tarfile reads each 512-byte header and member separately (GIL waits, as in HashingWriter)
        self._tars.append(self._pool.submit(self._run, check_tar_shard, open(path, "rb", buffering=TAR_READ_BUFFER)))  # noqa: SIM115

    @staticmethod
    def _run(check: Callable, fh: BinaryIO, *args: object) -> list:
        with fh:
            try:
                return check(fh, *args)
            finally:
                drop_from_page_cache(fh.fileno())

    def result(self) -> int:
        try:
            parquet = [f.result() for f in self._parquet]
            tars = [f.result() for f in self._tars]
        finally:
            self.close()
        return raise_problems(parquet, tars, {source: e.pixel_sha256 for source, e in self._expected.items()})

    def close(self) -> None:
        for future in self._parquet + self._tars:
            future.cancel()
        self._pool.shutdown(wait=True)


def raise_problems(parquet: Iterable[list[ShardCheckRow]], tars: Iterable[list[TarCheckRow]], ingest_sha256: Mapping[str, str]) -> int:
    """Compare what the shards hold with the ingest hashes; raise IntegrityError naming every problem, else the count."""
    problems: list[str] = []
    seen: Counter[str] = Counter()
    parquet_bytes: dict[str, str] = {}
    for rows in parquet:
        for source, claimed, decoded, problem, digest in rows:
            seen[source] += 1
            parquet_bytes[source] = digest
            expected = ingest_sha256.get(source)
            if problem:
                problems.append(f"{source}: published bytes do not decode ({problem})")
            elif expected is None:
                problems.append(f"{source}: in the shards but not a kept image")
            elif decoded != expected or claimed != expected:
                problems.append(f"{source}: published pixels sha256 {decoded[:16]}.. (column {claimed[:16]}..) != ingest {expected[:16]}..")
    problems += [f"{s}: stored {n} times" for s, n in sorted(seen.items()) if n > 1]
    problems += [f"{s}: kept but missing from the shards" for s in sorted(set(ingest_sha256) - set(seen))]
    problems += _tar_problems(tars, ingest_sha256, parquet_bytes)
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise IntegrityError(f"published-pixel verification failed ({len(problems)} problem(s)); nothing published:\n  {shown}")
    return sum(seen.values())


def _tar_problems(tars: Iterable[list[TarCheckRow]], ingest_sha256: Mapping[str, str], parquet_bytes: dict[str, str]) -> list[str]:
    """The tars must carry each kept image once, byte-identical to its verified Parquet copy."""
    tars = list(tars)
    if not tars:
        return []  # a release without WebDataset shards
    problems, seen = [], Counter()
    for samples in tars:
        for source, digest, problem in samples:
            seen[source] += 1
            if problem:
                problems.append(f"{source}: {problem} in the WebDataset shards")
            elif source not in ingest_sha256:
                problems.append(f"{source}: in the WebDataset shards but not a kept image")
            elif digest != parquet_bytes.get(source):
                problems.append(f"{source}: WebDataset image bytes differ from the verified Parquet bytes")
    problems += [f"{s}: stored {n} times in the WebDataset shards" for s, n in sorted(seen.items()) if n > 1]
    problems += [f"{s}: kept but missing from the WebDataset shards" for s in sorted(set(ingest_sha256) - set(seen))]
    return problems


# ---- whole or nothing -----------------------------------------------------------------------------------

_STAGING, _OLD = "partial", "old"
_FSYNC_THREADS = 16  # fsync waits on the disk, not the CPU: many at once cost no cores


def staging_path(out: Path, pid: int | None = None) -> Path:
    """Hidden sibling the release is written into; renamed to `out` only when complete and verified."""
    return out.parent / f".{out.name}.{_STAGING}-{pid or os.getpid()}"


def old_path(out: Path, pid: int | None = None) -> Path:
    """Where a replaced release waits during the two renames of --overwrite."""
    return out.parent / f".{out.name}.{_OLD}-{pid or os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _leftovers(out: Path) -> list[tuple[str, int, Path]]:
    found = []
    prefix = f".{out.name}."
    if not out.parent.is_dir():
        return found
    for p in sorted(out.parent.iterdir()):
        kind, _, pid = p.name[len(prefix) :].rpartition("-") if p.name.startswith(prefix) else ("", "", "")
        if kind in (_STAGING, _OLD) and pid.isdigit():
            found.append((kind, int(pid), p))
    return found


def clean_stale_staging(out: Path) -> list[str]:
    """Undo what killed builds left beside `out`; directories of builds still running are left alone.

    A stale staging directory is deleted. A stale moved-aside release is put back when `out` is missing
    (the kill fell between the two renames of --overwrite: the old release is restored, never lost), else
    deleted. Returns one line per action, for the build's warnings.
    """
    notes = []
    for kind, pid, path in _leftovers(out):
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if kind == _OLD and not out.exists():
            os.replace(path, out)
            notes.append(f"restored the previous release at {out}: a build (pid {pid}) was killed while replacing it")
        else:
            shutil.rmtree(path, ignore_errors=True)
            notes.append(f"removed {path.name}, left by a build (pid {pid}) that did not finish")
    return notes


def fsync_tree(root: Path) -> None:
    """Flush every file and directory of a finished release, so that a crash after the rename cannot expose empty files.

    The fsyncs run concurrently: the file system commits them together (one journal commit instead of one per
    file), which makes this ten times faster than a loop on ext4.
    """
    files, dirs = [], []
    for dirpath, _, filenames in os.walk(root):
        dirs.append(Path(dirpath))
        files += [Path(dirpath) / name for name in filenames]
    with ThreadPoolExecutor(max_workers=_FSYNC_THREADS) as pool:
        list(pool.map(fsync_path, files))
        list(pool.map(fsync_path, dirs))  # after the files: a directory entry must not outlive its data


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_path(path)
