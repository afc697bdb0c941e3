"""The per-image cache: rebuilds redo only changed images, resume after a kill, and write the same bytes."""

import hashlib
import multiprocessing
import os
import shutil
import signal
import sqlite3

import pytest

from pipeline import build as build_mod
from pipeline.runtime import cache as cache_mod
from pipeline.build import build_release
from tests.rawkit import crop, raw_with_a_copy_and_a_broken_file, save, simple_raw

LABELS = ["myeloblast", "monocyte", "eosinophil"]


def release_bytes(release) -> dict[str, str]:
    return {p.relative_to(release).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(release.rglob("*")) if p.is_file()}


@pytest.fixture
def raw(tmp_path):
    # myeloblast/copy.png: the pixels of myeloblast/cell_000.tif
    return raw_with_a_copy_and_a_broken_file(tmp_path / "raw", LABELS, 10, ("myeloblast/copy.png", 0, "P00"), ("monocyte/broken.tif", "P01"))


@pytest.fixture
def trust_fresh_files(monkeypatch):
    """The files of a test are seconds old; let their stat keys count at once (the racy rule has its own test)."""
    monkeypatch.setattr(cache_mod, "RACY_SECONDS", 0.0)


def test_rebuild_after_a_change_redoes_only_that_image_and_matches_a_clean_build(raw, tmp_path, config, trust_fresh_files):
    cache = tmp_path / "cache"
    clean = build_release(raw, tmp_path / "clean", config, workers=1)
    first = build_release(raw, tmp_path / "first", config, workers=2, cache_dir=cache)
    assert first.work == {"images": 32, "from_cache": 0, "decoded": 32} == clean.work
    assert release_bytes(tmp_path / "first") == release_bytes(tmp_path / "clean")

    # One image gets new pixels of the same size, and its old mtime back: only ctime tells it changed.
    target = raw / "eosinophil" / "cell_004.tif"
    before = target.stat()
    save(target, crop(999))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == before.st_size and target.stat().st_mtime_ns == before.st_mtime_ns
    again = build_release(raw, tmp_path / "again", config, workers=2, cache_dir=cache)
    assert again.work == {"images": 32, "from_cache": 31, "decoded": 1}
    build_release(raw, tmp_path / "fresh", config, workers=1)
    assert release_bytes(tmp_path / "again") == release_bytes(tmp_path / "fresh")
    assert release_bytes(tmp_path / "again") != release_bytes(tmp_path / "clean")
    ledger = (tmp_path / "again" / "ledger.csv").read_text()
    assert "monocyte/broken.tif,file,monocyte,invalid," in ledger  # a cached rejection keeps its reason


def test_files_changed_just_before_a_build_are_not_trusted_by_stat(raw, tmp_path, config):
    cache = tmp_path / "cache"
    build_release(raw, tmp_path / "a", config, workers=1, cache_dir=cache)
    # The fixture wrote every file a moment ago, inside the racy window: their stat keys prove nothing yet.
    second = build_release(raw, tmp_path / "b", config, workers=1, cache_dir=cache)
    assert second.work["decoded"] == 32
    assert release_bytes(tmp_path / "a") == release_bytes(tmp_path / "b")


def test_verify_mode_reuses_results_for_copied_files_by_content(raw, tmp_path, config, trust_fresh_files):
    cache = tmp_path / "cache"
    build_release(raw, tmp_path / "a", config, workers=1, cache_dir=cache)
    copy = tmp_path / "raw_copy"
    shutil.copytree(raw, copy)  # new paths, inodes and times; same bytes
    by_stat = build_release(copy, tmp_path / "b", config, workers=1, cache_dir=cache)
    assert by_stat.work["decoded"] == 32  # nothing is known about the copies' stat keys
    shutil.copytree(raw, tmp_path / "raw_copy2")
    by_content = build_release(tmp_path / "raw_copy2", tmp_path / "c", config, workers=2, cache_dir=cache, verify_cache=True)
    assert by_content.work == {"images": 32, "from_cache": 32, "decoded": 0}  # the broken file's rejection too
    assert release_bytes(tmp_path / "c") == release_bytes(tmp_path / "b")


class _DieAfter(build_mod.Progress):
    """Kills its own process (SIGKILL: no cleanup, no final commit) after ``n`` decoded images."""

    def __init__(self, n: int) -> None:
        self.n = n

    def advance(self, stage: str, n: int = 1) -> None:
        if stage == "decode":
            self.n -= n
            if self.n <= 0:
                os.kill(os.getpid(), signal.SIGKILL)


def _build_and_die(raw, out, config, cache, die_after):
    build_release(raw, out, config, workers=1, cache_dir=cache, progress=_DieAfter(die_after))


def test_a_killed_build_resumes_without_redoing_finished_images(tmp_path, config, trust_fresh_files, monkeypatch):
    raw = tmp_path / "raw"
    simple_raw(raw, LABELS, per_class=30)
    cache = tmp_path / "cache"
    monkeypatch.setattr(cache_mod, "COMMIT_EVERY_ROWS", 16)
    child = multiprocessing.get_context("fork").Process(target=_build_and_die, args=(raw, tmp_path / "rel", config, cache, 70))
    child.start()
    child.join(60)
    assert child.exitcode == -signal.SIGKILL
    assert not (tmp_path / "rel").exists()
    with sqlite3.connect(cache / cache_mod.DB_NAME) as db:
        saved = db.execute("SELECT COUNT(*) FROM facts").fetchone()[0]
    assert saved == 64  # four commits of 16 before the kill at the 70th image; the 6 after them are lost

    resumed = build_release(raw, tmp_path / "rel", config, workers=2, cache_dir=cache)
    assert resumed.work == {"images": 90, "from_cache": 64, "decoded": 26}
    build_release(raw, tmp_path / "clean", config, workers=1)
    assert release_bytes(tmp_path / "rel") == release_bytes(tmp_path / "clean")


def test_context_separates_image_sizes_and_code_versions():
    assert cache_mod.facts_context((288, 288)) != cache_mod.facts_context((256, 256))
    names = [m.__name__ for m in cache_mod.facts_modules()]
    assert {"pipeline.stages.decode", "pipeline.stages.phash", "pipeline.records"} <= set(names)


def test_cli_uses_the_default_cache_and_reports_the_work(raw, tmp_path, trust_fresh_files):
    from typer.testing import CliRunner

    from pipeline.cli import app

    runner = CliRunner()
    first = runner.invoke(app, ["build", str(raw), "--out", str(tmp_path / "a"), "--workers", "1"])
    assert first.exit_code == 0, first.output
    assert "32 decoded, 0 from the cache" in first.output
    assert (cache_mod.default_cache_dir() / cache_mod.DB_NAME).is_file()
    second = runner.invoke(app, ["build", str(raw), "--out", str(tmp_path / "b"), "--workers", "1"])
    assert "0 decoded, 32 from the cache" in second.output
    off = runner.invoke(app, ["build", str(raw), "--out", str(tmp_path / "c"), "--workers", "1", "--no-cache"])
    assert "32 decoded, 0 from the cache (cache off)" in off.output
    assert release_bytes(tmp_path / "a") == release_bytes(tmp_path / "b") == release_bytes(tmp_path / "c")


def test_same_cell_tests_are_remembered_by_file_contents(tmp_path, config):
    from pipeline.build import Progress, run_decode, run_ingest
    from pipeline.runtime.cache import FactsCache
    from pipeline.stages.decode import load_rgb
    from pipeline.stages.dedup import deduplicate
    from pipeline.runtime.executor import SerialExecutor
    from pipeline.synth.generator import synthesize

    raw = tmp_path / "raw"
    synthesize(raw, config=config, scale=0.004, seed=5, workers=1)
    ingested, _ = run_ingest(raw, config)
    facts, *_ = run_decode(raw, ingested.items, config, SerialExecutor(), Progress())
    ordered = [facts[i.relpath] for i in ingested.items if i.relpath in facts]

    def dedup(memo, stats):
        return deduplicate(ordered, lambda rel: load_rgb(raw / rel, config.image_size), phash_threshold=config.phash_threshold,
                           lookalike_threshold=config.lookalike_threshold, policy=config.conflict_policy, pair_memo=memo, stats=stats)

    plain, first, second = {}, {}, {}
    reference = dedup(None, plain)
    with FactsCache(tmp_path / "cache", config.image_size) as memo:
        filled = dedup(memo, first)
    with FactsCache(tmp_path / "cache", config.image_size) as memo:
        remembered = dedup(memo, second)
    assert plain["same_cell_tests"] >= 5 and first["pairs_remembered"] == 0
    assert second["pairs_remembered"] == second["same_cell_tests"] + second["pairs_near_duplicate"] == plain["same_cell_tests"] + plain["pairs_near_duplicate"]
    assert second["duplicate_tests"] == plain["duplicate_tests"] and second.get("duplicate_tests_run", 0) == 0
    assert second.get("pixel_loads", 0) < first["pixel_loads"]
    for result in (filled, remembered):
        assert (result.fates, result.group_of, result.pairs) == (reference.fates, reference.group_of, reference.pairs)
