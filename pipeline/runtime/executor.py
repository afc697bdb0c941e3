"""Where per-image work runs: an executor maps a function over batches of items and yields results in order.

Three engines share one interface, so a build gives the same bytes whichever runs it:
- ``SerialExecutor``: in this process (one worker, tests, tiny inputs);
- ``LocalExecutor``: a pool of processes on this machine (the default);
- ``DaskExecutor``: the workers of a Dask distributed cluster (``--executor dask --scheduler ADDRESS``).

Work is sent in batches (tens of images) so that per-task overhead is paid once per batch, and only a
few batches per worker are in flight at a time, so results waiting to be consumed stay bounded however
many images there are. Results come back in the order of the batches, never in completion order.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any

from threadpoolctl import threadpool_limits

EXECUTORS = ("local", "dask")
MAX_BATCH = 64  # images per task: large enough to amortise the hand-off, small enough to balance the workers
BATCHES_IN_FLIGHT_PER_WORKER = 4


class ExecutorError(RuntimeError):
    """The executor cannot run the work (bad options, unreachable scheduler, workers that cannot see RAW)."""


def batch_size(n_items: int, parallelism: int) -> int:
    """At least ~8 batches per worker (so a slow batch does not idle the others), at most MAX_BATCH items."""
    return max(1, min(MAX_BATCH, n_items // max(1, parallelism * 8)))


def batched(items: Sequence, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def apply_to_batch(fn: Callable[[Any], Any], batch: list) -> list:
    """Runs in a worker. BLAS is held to one thread: the workers already fill the cores, and threaded BLAS
    on top of them (pHash's small matrix products) would oversubscribe the machine several times over."""
    with threadpool_limits(limits=1, user_api="blas"):
        return [fn(item) for item in batch]


def _in_order(submit: Callable[[list], Future], batches: Iterable[list], window: int) -> Iterator[list]:
    pending: deque[Future] = deque()
    try:
        for batch in batches:
            pending.append(submit(batch))
            if len(pending) >= window:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:  # the consumer stopped early or a batch failed: drop the rest
            future.cancel()


class Executor:
    """Maps a picklable function over items in batches; results in input order."""

    name = "serial"
    parallelism = 1

    def map(self, fn: Callable[[Any], Any], items: Sequence) -> Iterator[Any]:
        for results in self.map_batches(fn, batched(items, batch_size(len(items), self.parallelism))):
            yield from results

    def map_batches(self, fn: Callable[[Any], Any], batches: Iterable[list]) -> Iterator[list]:
        for batch in batches:
            yield apply_to_batch(fn, batch)

    def describe(self) -> str:
        return f"{self.name} ({self.parallelism} worker{'s' if self.parallelism != 1 else ''})"

    def require_path(self, path: str) -> None:
        """Fail early if workers cannot read ``path``; workers on this machine see what this process sees."""

    def close(self) -> None:
        """Release workers; the executor cannot be used afterwards."""

    def idle(self) -> None:
        """Between stages: a local pool stops its processes (freeing their memory; the next map starts new
        ones); a cluster keeps its workers."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SerialExecutor(Executor):
    """Everything in the calling process."""


class LocalExecutor(Executor):
    """A pool of worker processes on this machine, started on first use and kept for every stage."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.parallelism = max(1, workers)
        self._pool: ProcessPoolExecutor | None = None

    def map_batches(self, fn: Callable[[Any], Any], batches: Iterable[list]) -> Iterator[list]:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(max_workers=self.parallelism)
        pool = self._pool
        return _in_order(lambda b: pool.submit(apply_to_batch, fn, b), batches, self.parallelism * BATCHES_IN_FLIGHT_PER_WORKER)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def idle(self) -> None:
        self.close()


class DaskExecutor(Executor):
    """The workers of a running Dask distributed cluster.

    Workers need the same mll23-pipeline version as this process (checked on connect) and must see the
    raw files under the same path (``require_path`` checks it before any work is sent).
    """

    name = "dask"

    def __init__(self, scheduler: str, *, connect_timeout: float = 30) -> None:
        try:
            from distributed import Client
        except ImportError as exc:  # pragma: no cover - dask is an optional extra
            raise ExecutorError("--executor dask needs the dask extra: pip install 'mll23-pipeline[dask]'") from exc
        try:
            self._client = Client(scheduler, set_as_default=False, timeout=connect_timeout)
        except (OSError, TimeoutError) as exc:
            raise ExecutorError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None
        threads = self._client.nthreads()
        if not threads:
            self._client.close()
            raise ExecutorError(f"the Dask scheduler at {scheduler} has no workers")
        self.parallelism = sum(threads.values())
        self.scheduler = scheduler
        self._check_versions()

    def _check_versions(self) -> None:
        import pipeline

        versions = self._client.run(_pipeline_version)
        wrong = {addr: v for addr, v in versions.items() if v != pipeline.__version__}
        if wrong:
            self.close()
            raise ExecutorError(f"Dask workers run another mll23-pipeline version than this one ({pipeline.__version__}): {wrong}")

    def require_path(self, path: str) -> None:
        """Fail early, naming the workers, when some worker cannot see ``path`` (RAW must be shared)."""
        seen = self._client.run(os.path.isdir, path)
        blind = sorted(addr for addr, ok in seen.items() if not ok)
        if blind:
            raise ExecutorError(
                f"Dask worker(s) {', '.join(blind)} cannot see {path}: put RAW on a file system all workers mount at the same path"
            )

    def map_batches(self, fn: Callable[[Any], Any], batches: Iterable[list]) -> Iterator[list]:
        client = self._client
        return _in_order(
            lambda b: client.submit(apply_to_batch, fn, b, pure=False), batches, self.parallelism * BATCHES_IN_FLIGHT_PER_WORKER
        )

    def describe(self) -> str:
        return f"dask at {self.scheduler} ({self.parallelism} worker threads)"

    def close(self) -> None:
        self._client.close()


def _pipeline_version() -> str:
    import pipeline

    return pipeline.__version__


def make_executor(kind: str, workers: int, scheduler: str | None = None) -> Executor:
    """The executor named on the command line; ``workers`` applies to the local pool only."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}; choose one of {', '.join(EXECUTORS)}")
    if kind == "dask":
        if not scheduler:
            raise ExecutorError("--executor dask needs --scheduler ADDRESS (for example tcp://head-node:8786)")
        return DaskExecutor(scheduler)
    if scheduler:
        raise ExecutorError("--scheduler is only used with --executor dask")
    return LocalExecutor(workers) if workers > 1 else SerialExecutor()
