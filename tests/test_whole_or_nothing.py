"""Whole or nothing: a build killed at any moment, or stopped by a full disk, never leaves a partial release under
the final name; re-running gives the same bytes as an uninterrupted build; leftovers of killed builds are cleaned."""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.runtime import cache as cache_mod
from pipeline.build import BuildError, build_release
from pipeline.cli import app
from pipeline.stages.ingest import ingest
from pipeline.runtime.integrity import clean_stale_staging, old_path, staging_path
from pipeline.lifecycle.publish.plan import self_check
from tests.rawkit import crop, save, simple_raw

REPO = Path(__file__).resolve().parents[1]
LABELS = ["myeloblast", "monocyte", "eosinophil"]
KILL_SEEDS = (0, 1, 2, 3)


def _tree(root: Path) -> dict[str, str]:
    """relpath -> sha256 of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _command(raw: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-c", "from pipeline.cli import app; app()", "build", str(raw), "--out", str(out), "--workers", "1", *extra]


def _env() -> dict[str, str]:
    # the checkout under test, not whatever is installed; a crash of the build prints its Python stack
    return {**os.environ, "PYTHONPATH": str(REPO), "PYTHONFAULTHANDLER": "1"}


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("kill") / "raw"
    simple_raw(raw, LABELS, per_class=14)
    save(raw / "monocyte" / "grey.png", crop(99)[..., 0])  # converted: its published bytes are re-encoded
    return raw


@pytest.fixture(scope="module")
def reference(raw: Path, tmp_path_factory, config) -> dict[str, str]:
    """The files of an uninterrupted build."""
    out = tmp_path_factory.mktemp("reference") / "rel"
    build_release(raw, out, config, workers=1)
    return _tree(out)


def _wait_for(proc: subprocess.Popen, predicate, out: Path, seen_complete: list[bool]) -> None:
    """Poll until predicate() or the process ends; whenever `out` is visible it must be a complete release."""
    while proc.poll() is None and not predicate():
        if out.exists():
            assert self_check(out) == [], "a partial release was visible under its final name"
            seen_complete.append(True)
        time.sleep(0.003)


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_build_leaves_nothing_partial_and_rerun_is_identical(seed: int, raw: Path, reference: dict[str, str], tmp_path: Path):
    rng = random.Random(seed)
    out = tmp_path / "rel"
    started = time.monotonic()
    proc = subprocess.Popen(_command(raw, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    seen_complete: list[bool] = []
    try:
        if seed % 2 == 0:
            # a random moment of the whole run (interpreter start-up included)
            deadline = started + rng.uniform(0.2, 2.5)
            _wait_for(proc, lambda: time.monotonic() >= deadline, out, seen_complete)
        else:
            # a random moment while the release is being written: staging exists, the rename has not happened
            _wait_for(proc, lambda: bool(_leftovers(out)), out, seen_complete)
            deadline = time.monotonic() + rng.uniform(0.0, 0.15)
            _wait_for(proc, lambda: time.monotonic() >= deadline, out, seen_complete)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the build and anything it started, like a full disk or an OOM kill would
        proc.wait()

    if out.exists():  # the kill came after the rename: then the release must be the whole, right one
        assert _tree(out) == reference
    else:
        assert not seen_complete
        if seed % 2:  # killed mid-write: the half-written staging directory is still there for the rerun to clean
            assert _leftovers(out) == [staging_path(out, proc.pid).name]
    rerun = CliRunner().invoke(app, ["build", str(raw), "--out", str(out), "--workers", "1", "--overwrite"])
    assert rerun.exit_code == 0, rerun.output
    assert _tree(out) == reference
    assert _leftovers(out) == []  # the killed build's staging directory was cleaned up by the rerun


def test_full_disk_leaves_no_release_and_no_staging(raw: Path, tmp_path: Path):
    def small_disk() -> None:  # files may not grow past 400 kB (under a shard of two crops): writes then fail as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (400_000, 400_000))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    out = tmp_path / "rel"
    proc = subprocess.run(_command(raw, out), env=_env(), capture_output=True, text=True, preexec_fn=small_disk, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "error: cannot build the release:" in proc.stderr and "File too large" in proc.stderr
    assert f"no release was written to {out}" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_staging_of_a_dead_build_is_removed_and_a_live_one_left_alone(raw: Path, tmp_path: Path, reference):
    out = tmp_path / "rel"
    dead = staging_path(out, _dead_pid())
    (dead / "data").mkdir(parents=True)
    (dead / "data" / "train-00000-of-00001.parquet").write_bytes(b"half a shard")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = staging_path(out, sleeper.pid)
        live.mkdir()
        result = CliRunner().invoke(app, ["build", str(raw), "--out", str(out), "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert f"warning: removed {dead.name}, left by a build" in result.output
        assert not dead.exists() and live.exists()
        assert _tree(out) == reference
    finally:
        sleeper.kill()
        sleeper.wait()


def test_release_moved_aside_by_a_killed_overwrite_is_restored(raw: Path, tmp_path: Path, config, reference):
    out = tmp_path / "rel"
    build_release(raw, out, config, workers=1)
    pid = _dead_pid()
    os.replace(out, old_path(out, pid))  # the state between the two renames of --overwrite
    staging_path(out, pid).mkdir()  # and the new release that was about to take its place
    assert clean_stale_staging(out) == [
        f"restored the previous release at {out}: a build (pid {pid}) was killed while replacing it",
        f"removed {staging_path(out, pid).name}, left by a build (pid {pid}) that did not finish",
    ]
    assert _tree(out) == reference and _leftovers(out) == []
    with pytest.raises(BuildError, match="already exists; pass --overwrite"):
        build_release(raw, out, config, workers=1)


def test_moved_aside_release_is_dropped_once_the_new_one_is_in_place(raw: Path, tmp_path: Path, config, reference):
    out = tmp_path / "rel"
    build_release(raw, out, config, workers=1)
    stale = old_path(out, _dead_pid())
    stale.mkdir()
    (stale / "manifest.json").write_text("{}")
    report = build_release(raw, out, config, workers=1, overwrite=True)
    assert any(f"removed {stale.name}" in w for w in report.warnings)
    assert _tree(out) == reference and _leftovers(out) == []


# ---- resuming from the per-image cache (pipeline/runtime/cache.py) -----------------------------------------------

RESUME_SEEDS = (20, 21)


def _committed_paths(cache: Path) -> set[str]:
    """Files whose results a build has committed to the cache (read-only: the build may be writing)."""
    db_path = cache / cache_mod.DB_NAME
    if not db_path.exists():
        return set()
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=1)) as db:
            return {row[0] for row in db.execute("SELECT path FROM files")}
    except sqlite3.OperationalError:  # tables not created yet
        return set()


def _resume_command(raw: Path, out: Path, cache: Path) -> list[str]:
    # Commit every 2 results instead of every 128, so that a small archive is killed with part of it saved.
    program = "import pipeline.runtime.cache as c; c.COMMIT_EVERY_ROWS = 2; from pipeline.cli import app; app()"
    return [sys.executable, "-c", program, "build", str(raw), "--out", str(out), "--workers", "1", "--cache", str(cache)]


@pytest.mark.parametrize("seed", RESUME_SEEDS)
def test_killed_build_resumes_from_the_cache_redoing_only_unfinished_images(seed, raw, reference, tmp_path, config, monkeypatch):
    rng = random.Random(seed)
    out, cache = tmp_path / "rel", tmp_path / "cache"
    proc = subprocess.Popen(_resume_command(raw, out, cache), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        while proc.poll() is None and not _committed_paths(cache):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 0.01))  # a random moment after the first results were committed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not out.exists()
    saved = _committed_paths(cache)
    images = len(ingest(raw, config).items)  # the files that reach the per-image stage
    assert 0 < len(saved) < images, "the kill should fall in the middle of the per-image work"

    monkeypatch.setattr(cache_mod, "RACY_SECONDS", 0.0)  # the raw files are seconds old; trust their stat keys now
    resumed = build_release(raw, out, config, workers=1, cache_dir=cache)
    assert resumed.work == {"images": images, "from_cache": len(saved), "decoded": images - len(saved)}
    assert _tree(out) == reference  # byte for byte what an uninterrupted build without any cache writes
    assert _leftovers(out) == []


def test_a_corrupted_cache_entry_cannot_publish_wrong_pixels(raw, tmp_path, config, monkeypatch):
    """A cache row changed behind the tool's back (bit rot, a hand edit) fails its checksum: it is ignored,
    the image is decoded again, the build says so, and the release is the one an uncached build writes."""
    monkeypatch.setattr(cache_mod, "RACY_SECONDS", 0.0)
    cache = tmp_path / "cache"
    build_release(raw, tmp_path / "first", config, workers=1, cache_dir=cache)
    victim = "monocyte/cell_003.tif"
    with closing(sqlite3.connect(cache / cache_mod.DB_NAME)) as db, db:
        (sha,) = db.execute("SELECT file_sha256 FROM files WHERE path = ?", [str(raw / victim)]).fetchone()
        (facts_json,) = db.execute("SELECT facts_json FROM facts WHERE file_sha256 = ?", [sha]).fetchone()
        bad = json.loads(facts_json) | {"pixel_sha256": "0" * 64}  # bit rot, or a hand edit
        db.execute("UPDATE facts SET facts_json = ? WHERE file_sha256 = ?", [json.dumps(bad, sort_keys=True), sha])
    second = build_release(raw, tmp_path / "second", config, workers=1, cache_dir=cache)
    assert second.work["decoded"] == 1 and second.work["from_cache"] == second.work["images"] - 1
    assert "per-image cache: 1 entry failed its checksum and was computed again" in second.warnings
    assert _tree(tmp_path / "second") == _tree(tmp_path / "first")
