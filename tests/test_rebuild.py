"""Same raw input + config -> the same bytes in every file, whatever the worker count, file-system order,
file times or time zone; and no build-time timestamp anywhere in the release."""

import datetime
import os
import shutil
import time
from pathlib import Path

import pytest

from pipeline.build import build_release
from pipeline.release.layout import read_manifest, sha256_file
from tests.consumerkit import consumer_raw, small_shards


class _Listing:
    """What os.scandir returns (an iterator and context manager), over a list of entries."""

    def __init__(self, entries):
        self._entries = iter(entries)

    def __iter__(self):
        return self

    def __next__(self):
        return next(self._entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def close(self):
        pass


@pytest.fixture
def reversed_file_system_order(monkeypatch):
    """Directory listings come back in reverse order, as another file system might return them."""
    real_scandir, real_listdir = os.scandir, os.listdir

    def scandir(path="."):
        with real_scandir(path) as it:
            return _Listing(list(it)[::-1])

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "listdir", lambda path=".": real_listdir(path)[::-1])


@pytest.fixture
def far_time_zone(monkeypatch):
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: the local date differs from UTC's most of the day
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def copy_in_reverse_order(src: Path, dst: Path) -> None:
    """The same files, created in the opposite order and stamped with other modification times."""
    files = sorted(p for p in src.rglob("*") if p.is_file())
    for i, path in enumerate(reversed(files)):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        os.utime(target, (1_000_000_000 + i, 1_000_000_000 + i))


def release_digests(release: Path) -> dict[str, str]:
    return {p.relative_to(release).as_posix(): sha256_file(p) for p in sorted(release.rglob("*")) if p.is_file()}


def build_time_stamps(moments: list[datetime.datetime], release_date: str) -> set[bytes]:
    """How the moments of a build would show if a clock leaked into a file: ISO and EXIF dates (local and UTC),
    epoch seconds in decimal (to within ~12 days) and in the octal of tar headers (to within ~9 hours)."""
    stamps = set()
    for moment in moments:
        for local in (moment, moment.astimezone()):
            if local.date().isoformat() != release_date:
                stamps |= {local.strftime("%Y-%m-%d").encode(), local.strftime("%Y:%m:%d").encode()}
        stamps.add(str(int(moment.timestamp()))[:6].encode())
        stamps.add(f"{int(moment.timestamp()):011o}"[:6].encode())
    return stamps


def test_two_builds_of_the_same_input_are_byte_identical_and_carry_no_build_time(
    tmp_path, config, reversed_file_system_order, far_time_zone
):
    config = small_shards(config)
    consumer_raw(tmp_path / "raw_a", config)
    copy_in_reverse_order(tmp_path / "raw_a", tmp_path / "raw_b")
    before = datetime.datetime.now(datetime.timezone.utc)
    build_release(tmp_path / "raw_a", tmp_path / "a", config, workers=1)
    after = datetime.datetime.now(datetime.timezone.utc)
    build_release(tmp_path / "raw_b", tmp_path / "b", config, workers=2)

    a, b = release_digests(tmp_path / "a"), release_digests(tmp_path / "b")
    assert a == b
    kinds = {Path(p).suffix for p in a}
    assert {".parquet", ".tar", ".png", ".md", ".json", ".csv"} <= kinds
    assert {"croissant.json", "manifest.json", "README.md", "wds/README.md"} <= set(a)
    listed = {f["path"]: f["sha256"] for f in read_manifest(tmp_path / "a")["files"]}
    assert listed == {p: d for p, d in a.items() if p != "manifest.json"}

    stamps = build_time_stamps([before, after], config.release_date)
    for rel in a:
        data = (tmp_path / "a" / rel).read_bytes()
        leaked = [s.decode() for s in stamps if s in data]
        assert not leaked, f"{rel} contains build-time stamp(s) {leaked}"
