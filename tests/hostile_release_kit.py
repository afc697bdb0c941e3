"""Hostile release directories: each function corrupts a private copy of one good release the way an attacker
who controls every byte of a pull request would, and says which file the failure must name and why.

Nothing here is committed data: every release is generated in a temporary directory. Payloads that would run
something leave a marker file when they do (a pickle that opens a file, a fake `gs` first on PATH), so a test
can assert that none ran.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import socket
import stat
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image


SECRET_ENV = "MLL23_HOSTILE_SECRET"
SECRET_VALUE = "env-secret-7f3c9a"  # in the environment of verify; must never be printed
OUTSIDE_SECRET = b"outside-secret-51d2e8\n"  # a file beside the release; must never be printed


@dataclass
class Scene:
    """Where a hostile case lives: the release copy, a directory outside it, and where payloads leave markers."""

    release: Path
    outside: Path
    markers: Path

    def marker(self, name: str) -> Path:
        return self.markers / name


@dataclass(frozen=True)
class Expect:
    names: str  # the file (or key) the failure must name, as printed
    reason: str  # words of the reason


def resign(release: Path) -> None:
    """Rewrite the manifest's file list over the release's regular files (links and special files are neither
    followed nor opened), as a careless or malicious author would: only the deeper checks can tell."""
    manifest_path = release / "manifest.json"
    doc = json.loads(manifest_path.read_text(encoding="utf-8"))
    entries = []
    for dirpath, dirnames, filenames in os.walk(release):
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(release).as_posix()
            st = os.lstat(path)
            if rel == "manifest.json" or not stat.S_ISREG(st.st_mode):
                continue
            entries.append({"path": rel, "size": st.st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()})
    doc["files"] = sorted(entries, key=lambda e: e["path"])
    manifest_path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def edit_manifest(release: Path, edit: Callable[[dict], None]) -> None:
    path = release / "manifest.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    edit(doc)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def first(release: Path, pattern: str) -> Path:
    return sorted(release.glob(pattern))[0]


def rel(release: Path, path: Path) -> str:
    return path.relative_to(release).as_posix()


class _OpensAFile:
    """Unpickling this creates a marker file (no process started: a side effect the test can see)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(_OpensAFile(marker))


def npy_payload(marker: Path) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([_OpensAFile(marker)], dtype=object), allow_pickle=True)
    return buf.getvalue()


def eps_bytes() -> bytes:
    """An EPS file: Pillow's EPS plugin hands it to Ghostscript (`gs`) to render."""
    return (
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 288 288\n%%EndComments\n"
        b"newpath 0 0 moveto 288 288 lineto stroke showpage\n%%EOF\n"
    )


def bmp_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (288, 288), (200, 100, 50)).save(buf, format="BMP")
    return buf.getvalue()


def rewrite_first_row(shard: Path, **changes) -> None:
    table = pq.read_table(shard)
    rows = table.to_pylist()
    rows[0].update({k: (v(rows[0][k]) if callable(v) else v) for k, v in changes.items()})
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), shard)


def rewrite_tar(path: Path, extra: list[tuple[tarfile.TarInfo, bytes | None]] = (), keep: Callable[[tarfile.TarInfo], bool] = lambda m: True) -> None:
    with tarfile.open(path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers() if keep(m)]
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        for member, data in members + list(extra):
            tar.addfile(member, io.BytesIO(data) if data is not None else None)


def member(name: str, data: bytes = b"", **attrs) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, (data if info.isreg() else None)


def gzip_of_zeros(n_bytes: int, prefix: bytes = b"") -> bytes:
    """gzip of `prefix` and then n_bytes zeros, made in 1 MB steps (nothing large is ever held in memory)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", compresslevel=1, mtime=0) as gz:
        gz.write(prefix)
        zeros = bytes(1 << 20)
        for _ in range(n_bytes >> 20):
            gz.write(zeros)
    return out.getvalue()


def tar_header_for(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def zstd_parquet_bomb(path: Path, value_bytes: int, rows: int) -> None:
    """A Parquet shard in the release's schema whose image column decompresses to rows x value_bytes."""
    value = bytes(value_bytes)
    schema = pa.schema([pa.field("image", pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])),
                        pa.field("label", pa.int64())])
    table = pa.table({"image": [{"bytes": value, "path": None}] * rows, "label": [0] * rows}, schema=schema)
    pq.write_table(table, path, compression="zstd", row_group_size=rows, use_dictionary=False)


def yaml_billion_laughs() -> str:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghij"):
        prev = "abcdefghij"[i]
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def replace_card_header(release: Path, header: str) -> None:
    card = release / "README.md"
    text = card.read_text(encoding="utf-8")
    body = text.split("\n---\n", 1)[1]
    card.write_text(f"---\n{header}---\n{body}", encoding="utf-8")


def make_socket(path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    finally:
        sock.close()

