"""Overlap in the write stage: one thread reads the next images while another compresses and writes.

The release can only be written once dedup and split have seen every image, so writing cannot overlap
with decoding; within the write stage, reading source files (and re-encoding the few lossy inputs)
overlaps with Parquet page encoding and file writes, which pyarrow runs without holding the GIL.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

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
