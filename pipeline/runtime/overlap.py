"""Overlap in the write stage: one thread reads the next images while another compresses and writes.

The release can only be written once dedup and split have seen every image, so writing cannot overlap
with decoding; within the write stage, reading source files (and re-encoding the few lossy inputs)
overlaps with Parquet page encoding and file writes, which pyarrow runs without holding the GIL.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pyarrow as pa

HASHING_WRITER_BUFFER = 4 << 20
SMALL_WRITE = 64 << 10

T = TypeVar("T")
R = TypeVar("R")


class BackgroundWriter:
    """Runs a writer's ``write_table`` calls, then ``close``, in order on one background thread.

    At most one table is in flight: a second ``write_table`` waits for the first, so memory holds two row
    groups at most (the one being written and the one being filled). A failure in the background is
    raised by the next call.
    """

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="release-writer")
        self._pending: Future | None = None

    def write_table(self, table: Any, **kwargs: Any) -> None:
        self._wait()
        self._pending = self._thread.submit(self._writer.write_table, table, **kwargs)

    def close(self) -> None:
        try:
            self._wait()
            self._writer.close()
        finally:
            self._thread.shutdown(wait=True)

    def _wait(self) -> None:
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()


def prefetch(fn: Callable[[T], R], items: Iterable[T], *, window: int = 16, threads: int = 2) -> Iterator[tuple[T, R]]:
    """(item, fn(item)) in the order of ``items``, with up to ``window`` results computed ahead by threads."""
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="release-reader") as pool:
        pending: deque[tuple[T, Future]] = deque()
        try:
            for item in items:
                pending.append((item, pool.submit(fn, item)))
                if len(pending) >= window:
                    first, future = pending.popleft()
                    yield first, future.result()
            while pending:
                first, future = pending.popleft()
                yield first, future.result()
        finally:
            for _, future in pending:
                future.cancel()


class BinaryColumnBuffers:
    """Binary Arrow arrays built in two alternating buffers that are reused from row group to row group.

    A fresh allocation per row group (tens of MB) costs a page fault per 4 kB page every time (Arrow's
    allocator hands freed memory back to the system quickly; on a VM a fault is several microseconds),
    which made building a row group's image column 5-8x slower than copying the bytes. Two buffers are
    enough because BackgroundWriter keeps at most one row group in flight: when a buffer is reused, the
    table that pointed into it has been written.
    """

    def __init__(self) -> None:
        self._buffers = [bytearray(), bytearray()]
        self._turn = 0

    def array(self, values: list[bytes]) -> pa.Array:
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        offsets = np.zeros(len(values) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])  # int32 offsets: pa.binary(), a row group stays far below 2 GiB
        total = int(offsets[-1])
        turn, self._turn = self._turn, 1 - self._turn
        if len(self._buffers[turn]) < total:
            self._buffers[turn] = bytearray(total)
        view = memoryview(self._buffers[turn])
        for value, start, end in zip(values, offsets[:-1].tolist(), offsets[1:].tolist()):
            view[start:end] = value
        return pa.BinaryArray.from_buffers(pa.binary(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(view[:total])])


class HashingWriter:
    """A binary file open for writing that takes its sha256 and size on the way to the disk.

    The release's manifest and croissant.json list every file's sha256. Hashing shards as they are
    written, while their bytes are in memory, spares reading ~20 GB of shards back from a disk that the
    page cache cannot hold them all on. ``entry`` has the manifest's form once the file is closed.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # Small writes (a tar sample is nine: headers, members, padding) gather in a buffer, so the hash
        # and the system call, which release the GIL, run once per buffer instead of once per write: with a
        # thread per writer and per check, each release can cost a wait of up to the interpreter's switch
        # interval to get the GIL back.
        self._file = open(self.path, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        self._pending = bytearray()
        self._sha = hashlib.sha256()
        self._size = self._written = 0  # bytes given / bytes on their way to the disk
        self._behind = WriteBehind(self._file.fileno())

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        n = view.nbytes
        self._size += n
        if n < SMALL_WRITE and len(self._pending) + n < HASHING_WRITER_BUFFER:
            self._pending += view  # large writes (images, Parquet pages) go straight out: no extra copy
            return n
        self._drain()
        self._put(view)
        return n

    def _drain(self) -> None:
        if self._pending:
            self._put(self._pending)
            self._pending.clear()

    def _put(self, data: Any) -> None:
        with memoryview(data) as view:
            self._sha.update(view)
            done = 0
            while done < view.nbytes:  # an unbuffered write may take part of the bytes
                done += self._file.write(view[done:])
        self._written += done
        if self._behind.due(self._written):
            self._behind.advance(self._written)

    def tell(self) -> int:
        return self._size

    def flush(self) -> None:
        self._drain()

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readable(self) -> bool:
        return False

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        if not self._file.closed:
            try:
                self._drain()
            finally:
                self._file.close()

    def digest(self) -> tuple[int, str]:
        """(size, sha256 hex) of everything written."""
        return self._size, self._sha.hexdigest()


# ---- write-behind ------------------------------------------------------------------------------------

WRITE_BEHIND_BYTES = 64 << 20
_SYNC_FILE_RANGE_WAIT_BEFORE, _SYNC_FILE_RANGE_WRITE, _SYNC_FILE_RANGE_WAIT_AFTER = 1, 2, 4


@lru_cache(maxsize=1)
def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2) from the C library, or None where there is none."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


class WriteBehind:
    """Hands a file's pages to the disk while it is still being written, one WRITE_BEHIND_BYTES chunk behind.

    Left alone, the kernel lets gigabytes of a 20 GB release pile up dirty in memory, then throttles the
    writer while it flushes them, and the release pushes the raw images out of the page cache. Starting the
    write-back of each chunk as soon as it is complete and waiting for the chunk before keeps at most two
    chunks per file dirty (bench/bench_io.py: 12 GB files, hashed on the way, 1.0-1.4x the throughput of
    buffered writes and one fsync). Linux uses sync_file_range (asynchronous); elsewhere each chunk is
    flushed with fdatasync.
    """

    def __init__(self, fd: int, chunk: int | None = None) -> None:
        self._fd, self._chunk = fd, chunk or WRITE_BEHIND_BYTES
        self._started = self._done = 0  # bytes whose write-back was started / has completed

    def due(self, size: int) -> bool:
        return size - self._started >= self._chunk

    def advance(self, size: int) -> None:
        """Start writing back [started, size), after waiting for the chunk before it to be on disk."""
        sync = _sync_file_range()
        if sync is None:
            getattr(os, "fdatasync", os.fsync)(self._fd)  # macOS has no fdatasync
            self._started = self._done = size
            return
        if self._started > self._done:
            both = _SYNC_FILE_RANGE_WAIT_BEFORE | _SYNC_FILE_RANGE_WRITE | _SYNC_FILE_RANGE_WAIT_AFTER
            sync(self._fd, self._done, self._started - self._done, both)
            self._done = self._started
        sync(self._fd, self._started, size - self._started, _SYNC_FILE_RANGE_WRITE)
        self._started = size


def drop_from_page_cache(fd: int) -> None:
    """Ask the kernel to drop an open file's cached pages (those already on disk): a shard that has been
    written and checked is not read again by the build, and caching it would only evict the raw images."""
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):  # advice only: a file system that refuses it loses nothing
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


# ---- read-ahead ----------------------------------------------------------------------------------------

READ_AHEAD_FILES = 1024


class ReadAhead:
    """Asks the kernel to start reading the next files (posix_fadvise WILLNEED) while workers decode earlier ones.

    Workers read one file at a time; on a cold page cache each read waits for the disk, at a queue depth of
    one per worker. Announcing the next ``window`` files keeps many reads in flight (bench/bench_io.py:
    cold reads of the synthetic crops 1.1-1.6x faster, one file after the other). Use as a context manager; call
    ``done(n)`` as results for the first n files arrive. A no-op where posix_fadvise does not exist.
    """

    def __init__(self, paths: list[str], window: int = READ_AHEAD_FILES) -> None:
        self._paths, self._window = paths, window
        self._done = 0
        self._changed = threading.Condition()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="read-ahead", daemon=True)

    def __enter__(self) -> ReadAhead:
        if hasattr(os, "posix_fadvise") and self._paths:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._changed:
            self._stop = True
            self._changed.notify()
        if self._thread.is_alive():
            self._thread.join()

    def done(self, n: int) -> None:
        with self._changed:
            self._done = n
            self._changed.notify()

    def _run(self) -> None:
        for index, path in enumerate(self._paths):
            with self._changed:
                self._changed.wait_for(lambda i=index: self._stop or i < self._done + self._window)
                if self._stop:
                    return
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue  # the decode reports unreadable files
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
            except OSError:
                return  # advice only: a file system that refuses it is read as it comes
            finally:
                os.close(fd)
