"""Executors: same results in the same order whatever runs them; a Dask cluster writes the same release bytes."""

import hashlib
import logging

import pytest

from pipeline.build import build_release
from pipeline.runtime.executor import DaskExecutor, ExecutorError, LocalExecutor, SerialExecutor, batch_size, make_executor
from tests.rawkit import raw_with_a_copy_and_a_broken_file

LABELS = ["myeloblast", "monocyte", "eosinophil"]


def square_and_pid(x: int) -> tuple[int, int]:
    import os

    return x * x, os.getpid()


def slow_square_and_pid(x: int) -> tuple[int, int]:
    """10 ms a task: 500 of them outlast a second worker's start, even on a loaded machine (a fast task lets
    the first worker finish every batch before the second has imported anything)."""
    import time

    time.sleep(0.01)
    return square_and_pid(x)


def release_bytes(release) -> dict[str, str]:
    return {p.relative_to(release).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(release.rglob("*")) if p.is_file()}


def test_local_pool_keeps_input_order_and_uses_its_workers():
    items = list(range(500))
    with LocalExecutor(2) as pool:
        results = list(pool.map(slow_square_and_pid, items))
        pool.idle()  # between stages the workers exit; the next map starts fresh ones
        again = list(pool.map(square_and_pid, items))
    assert [r for r, _ in results] == [x * x for x in items] == [r for r, _ in again]
    assert len({pid for _, pid in results}) == 2
    assert not {pid for _, pid in results} & {pid for _, pid in again}
    assert [r for r, _ in SerialExecutor().map(square_and_pid, items)] == [x * x for x in items]


def test_batches_keep_every_worker_busy_and_stay_small():
    assert batch_size(41_906, 2) == 64
    assert batch_size(100, 2) == 6
    assert batch_size(3, 8) == 1


def test_executor_options_are_checked():
    with pytest.raises(ExecutorError, match="needs --scheduler ADDRESS"):
        make_executor("dask", 2)
    with pytest.raises(ExecutorError, match="only used with --executor dask"):
        make_executor("local", 2, "tcp://127.0.0.1:1")
    with pytest.raises(ExecutorError, match="unknown executor 'spark'"):
        make_executor("spark", 2)
    assert isinstance(make_executor("local", 1), SerialExecutor)


def test_unreachable_scheduler_is_a_clear_error():
    pytest.importorskip("distributed")
    with pytest.raises(ExecutorError, match="cannot reach the Dask scheduler at tcp://127.0.0.1:9"):
        DaskExecutor("tcp://127.0.0.1:9", connect_timeout=1).close()


@pytest.fixture(scope="module")
def dask_cluster():
    distributed = pytest.importorskip("distributed")
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None, silence_logs=logging.ERROR
    )
    yield cluster
    cluster.close()


def test_dask_build_is_byte_identical_to_the_local_pool(tmp_path, config, dask_cluster):
    # monocyte/copy.png: the pixels of monocyte/cell_000.tif
    raw = raw_with_a_copy_and_a_broken_file(tmp_path / "raw", LABELS, 12, ("monocyte/copy.png", 12, "P03"), ("eosinophil/broken.tif", "P04"))
    local = build_release(raw, tmp_path / "local", config, workers=2)
    with make_executor("dask", 0, dask_cluster.scheduler_address) as dask:
        assert dask.parallelism == 2
        remote = build_release(raw, tmp_path / "dask", config, executor=dask, cache_dir=tmp_path / "cache")
        dask.require_path(str(raw))
        with pytest.raises(ExecutorError, match="cannot see /nonexistent/raw"):
            dask.require_path("/nonexistent/raw")
    assert remote.work == local.work == {"images": 38, "from_cache": 0, "decoded": 38}
    assert remote.counts == local.counts
    assert release_bytes(tmp_path / "dask") == release_bytes(tmp_path / "local")


def test_parallel_same_cell_tests_give_the_serial_dedup(tmp_path, config):
    from pipeline.build import run_decode, run_dedup, run_ingest, Progress
    from pipeline.synth.generator import synthesize

    raw = tmp_path / "raw"
    synthesize(raw, config=config, scale=0.004, seed=3, workers=1)
    ingested, _ = run_ingest(raw, config)
    with LocalExecutor(2) as pool:
        facts, *_ = run_decode(raw, ingested.items, config, pool, Progress())
        items = [i for i in ingested.items if i.relpath in facts]
        parallel = run_dedup(raw, items, facts, config, executor=pool)
    serial = run_dedup(raw, items, facts, config)
    assert parallel.fates == serial.fates and parallel.group_of == serial.group_of and parallel.pairs == serial.pairs
    assert {p.kind for p in serial.pairs} >= {"exact", "near_duplicate", "lookalike"}  # every kind of test ran
