"""The write stage's overlap helpers and the image column codec."""

import hashlib
import random
import threading

import pyarrow.parquet as pq
import pytest

from pipeline.runtime import overlap
from pipeline.runtime.overlap import BackgroundWriter, prefetch
from pipeline.release.parquet import write_split
from pipeline.records import ReleaseRecord


class _Recorder:
    def __init__(self, fail_on: int | None = None) -> None:
        self.calls: list[tuple[str, object, str]] = []
        self.fail_on = fail_on

    def write_table(self, table, **kwargs):
        if table == self.fail_on:
            raise OSError("disk full")
        self.calls.append(("write", table, threading.current_thread().name))

    def close(self):
        self.calls.append(("close", None, threading.current_thread().name))


def test_background_writer_keeps_order_and_runs_off_the_calling_thread():
    inner = _Recorder()
    writer = BackgroundWriter(inner)
    for k in range(5):
        writer.write_table(k)
    writer.close()
    assert [(op, arg) for op, arg, _ in inner.calls] == [("write", 0), ("write", 1), ("write", 2), ("write", 3), ("write", 4), ("close", None)]
    assert all(name.startswith("release-writer") for _, _, name in inner.calls[:-1])


def test_background_writer_raises_a_failure_on_the_next_call():
    writer = BackgroundWriter(_Recorder(fail_on=1))
    writer.write_table(0)
    writer.write_table(1)
    with pytest.raises(OSError, match="disk full"):
        writer.write_table(2)
    writer.close()


def test_prefetch_yields_in_order_and_stops_cleanly():
    seen = list(prefetch(lambda x: x * 10, range(100), window=4))
    assert seen == [(x, x * 10) for x in range(100)]
    first_three = []
    for item, value in prefetch(lambda x: x, range(1000), window=8):
        first_three.append(value)
        if len(first_three) == 3:
            break
    assert first_three == [0, 1, 2]


def _records(n: int) -> list[ReleaseRecord]:
    return [
        ReleaseRecord(f"{k:016x}", 0, "myeloblast", "train", f"myeloblast/{k}.tif", None, None, f"{k:016x}", f"{k:064x}", f"{k:016x}", 288, 288, True, "TIFF")
        for k in range(n)
    ]


@pytest.mark.parametrize("codec, expected", [("none", "UNCOMPRESSED"), ("zstd", "ZSTD")])
def test_image_column_codec_and_round_trip(tmp_path, config, codec, expected):
    records = _records(40)
    payload = {r.source_file: bytes([k % 256]) * (3000 + k) for k, r in enumerate(records)}
    infos = write_split(
        tmp_path, "train", records, lambda r: payload[r.source_file], config.class_names,
        shard_rows=[14, 13, 13], max_shard_bytes=60_000, max_row_group_bytes=20_000, image_compression=codec,
    )
    assert [i.rows for i in infos] == [14, 13, 13]
    assert pq.ParquetFile(infos[0].path).metadata.num_row_groups == 3  # 14 rows, 6 of ~3 kB per 20 kB row group
    back = {}
    for info in infos:
        meta = pq.ParquetFile(info.path).metadata
        columns = {meta.row_group(0).column(c).path_in_schema: meta.row_group(0).column(c).compression for c in range(meta.num_columns)}
        assert columns["image.bytes"] == expected and columns["source_file"] == "ZSTD"
        table = pq.read_table(info.path)
        back.update(zip(table.column("source_file").to_pylist(), (img["bytes"] for img in table.column("image").to_pylist())))
    assert back == payload


def test_file_entries_reuse_known_digests_only_for_unchanged_sizes(tmp_path):
    from pipeline.release.layout import file_entries, sha256_file

    (tmp_path / "a.bin").write_bytes(b"a" * 100)
    (tmp_path / "b.bin").write_bytes(b"b" * 100)
    known = [{"path": "a.bin", "size": 100, "sha256": "digest-from-earlier"}, {"path": "b.bin", "size": 99, "sha256": "stale"}]
    entries = {e["path"]: e for e in file_entries(tmp_path, known)}
    assert entries["a.bin"]["sha256"] == "digest-from-earlier"  # reused, not re-read
    assert entries["b.bin"]["sha256"] == sha256_file(tmp_path / "b.bin")  # size differs: hashed again
    assert [e["sha256"] for e in file_entries(tmp_path)] == [sha256_file(tmp_path / n) for n in ("a.bin", "b.bin")]


def test_hashing_writer_gathers_small_writes_and_hands_chunks_to_the_disk(tmp_path, monkeypatch):
    """Any mix of small and large writes gives the same file, size and sha256 as writing them in one piece,
    and write-behind is asked to move each chunk to the disk while the file is being written."""
    calls: list[int] = []
    real_advance = overlap.WriteBehind.advance
    monkeypatch.setattr(overlap, "WRITE_BEHIND_BYTES", 1 << 20)
    monkeypatch.setattr(overlap.WriteBehind, "advance", lambda self, size: calls.append(size) or real_advance(self, size))
    rng = random.Random(7)
    pieces = [rng.randbytes(rng.choice([1, 511, 512, 3000, 70_000])) for _ in range(300)]
    pieces += [rng.randbytes(300_000) for _ in range(30)]
    writer = overlap.HashingWriter(tmp_path / "f.bin")
    for piece in pieces:
        assert writer.write(piece) == len(piece)
    writer.close()
    whole = b"".join(pieces)
    assert (tmp_path / "f.bin").read_bytes() == whole
    assert writer.digest() == (len(whole), hashlib.sha256(whole).hexdigest())
    assert len(calls) >= len(whole) // (1 << 20) - 1 and calls == sorted(calls) and calls[-1] <= len(whole)


def test_read_ahead_is_advice_only(tmp_path, monkeypatch):
    """Missing files and a kernel that refuses the advice change nothing; the context always ends."""
    files = [tmp_path / f"{k}.bin" for k in range(5)]
    for f in files[:3]:
        f.write_bytes(b"x" * 100)
    with overlap.ReadAhead([str(f) for f in files], window=2) as ahead:
        for k in range(len(files)):
            ahead.done(k + 1)

    def refuse(*args):
        raise OSError(22, "Invalid argument")

    monkeypatch.setattr(overlap.os, "posix_fadvise", refuse, raising=False)
    with overlap.ReadAhead([str(f) for f in files], window=2) as ahead:
        ahead.done(1)
    fd = overlap.os.open(files[0], overlap.os.O_RDONLY)
    try:
        overlap.drop_from_page_cache(fd)
    finally:
        overlap.os.close(fd)
