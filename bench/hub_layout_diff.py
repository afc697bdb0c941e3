"""What changed between two releases at the byte level: which shards, where in them, which rows moved.

    python bench/hub_layout_diff.py OLD_RELEASE NEW_RELEASE [--pages SHARD.parquet]

For each file of either release: unchanged, added, removed, or (shards) the length of the common prefix
and suffix with its namesake and the differing middle; Parquet shards also with rows per row group and whether
their first and last rows are the same. Per split: rows per shard, kept rows now in another shard, shards that
keep their first row. `--pages` lists a Parquet file's pages per column chunk from the page headers (type,
compressed size). `python bench/bench_hub.py --keep DIR` keeps releases to compare.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow.parquet as pq

STEP = 1 << 20


def prefix_suffix(a: bytes, b: bytes) -> tuple[int, int]:
    n = min(len(a), len(b))
    p = 0
    while p + STEP <= n and a[p:p + STEP] == b[p:p + STEP]:
        p += STEP
    while p < n and a[p] == b[p]:
        p += 1
    s = 0
    while s + STEP <= n - p and a[len(a) - s - STEP:len(a) - s] == b[len(b) - s - STEP:len(b) - s]:
        s += STEP
    while s < n - p and a[len(a) - 1 - s] == b[len(b) - 1 - s]:
        s += 1
    return p, s


# ---- Parquet page headers (Thrift compact protocol), enough to walk from one page to the next


def _varint(b: bytes, i: int) -> tuple[int, int]:
    r = shift = 0
    while True:
        x = b[i]
        i += 1
        r |= (x & 0x7F) << shift
        shift += 7
        if not x & 0x80:
            return r, i


def _skip(b: bytes, i: int, t: int) -> int:
    if t in (1, 2):
        return i
    if t == 3:
        return i + 1
    if t in (4, 5, 6):
        return _varint(b, i)[1]
    if t == 7:
        return i + 8
    if t == 8:
        n, i = _varint(b, i)
        return i + n
    if t in (9, 10):
        h = b[i]
        i += 1
        n, et = h >> 4, h & 0xF
        if n == 15:
            n, i = _varint(b, i)
        for _ in range(n):
            i = _skip(b, i, et if et not in (1, 2) else 3)
        return i
    if t == 12:
        return _struct(b, i)[1]
    raise ValueError(f"thrift type {t}")


def _struct(b: bytes, i: int) -> tuple[dict[int, int], int]:
    fields: dict[int, int] = {}
    last = 0
    while True:
        h = b[i]
        i += 1
        if h == 0:
            return fields, i
        t, delta = h & 0xF, h >> 4
        if delta:
            fid = last + delta
        else:
            fid, i = _varint(b, i)
            fid = (fid >> 1) ^ -(fid & 1)
        last = fid
        if t in (5, 6):
            v, i = _varint(b, i)
            fields[fid] = (v >> 1) ^ -(v & 1)
        else:
            i = _skip(b, i, t)


PAGE_TYPES = {0: "data", 2: "dictionary", 3: "data_v2"}


def pages(path: Path) -> list[tuple[int, str, list[tuple[str, int]]]]:
    """(row group, column, [(page type, compressed bytes)]) for every column chunk."""
    meta = pq.ParquetFile(path).metadata
    data = path.read_bytes()
    out = []
    for g in range(meta.num_row_groups):
        for c in range(meta.num_columns):
            col = meta.row_group(g).column(c)
            i = col.dictionary_page_offset or col.data_page_offset
            end = i + col.total_compressed_size
            found = []
            while i < end:
                header, j = _struct(data, i)
                found.append((PAGE_TYPES.get(header.get(1), str(header.get(1))), header[3]))
                i = j + header[3]
            out.append((g, col.path_in_schema, found))
    return out


def split_ids(release: Path) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for p in sorted((release / "data").glob("*.parquet")):
        out.setdefault(p.name.split("-")[0], []).append(pq.read_table(p, columns=["image_id"]).column(0).to_pylist())
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("old", type=Path, nargs="?")
    parser.add_argument("new", type=Path, nargs="?")
    parser.add_argument("--pages", type=Path, help="list this Parquet file's pages and stop")
    args = parser.parse_args()
    if args.pages:
        for g, column, found in pages(args.pages):
            print(f"row group {g} {column}: {len(found)} page(s) {found[:4]}{' ...' if len(found) > 4 else ''}")
        return
    old, new = args.old, args.new
    files = sorted({p.relative_to(r).as_posix() for r in (old, new) for p in r.rglob("*") if p.is_file()})
    total = changed_middle = 0
    small: list[str] = []
    for rel in files:
        a = (old / rel).read_bytes() if (old / rel).is_file() else None
        b = (new / rel).read_bytes() if (new / rel).is_file() else None
        total += len(b or b"")
        if a == b:
            continue
        if a is None or b is None:
            print(f"{rel}: {'added' if a is None else 'removed'}, {len(a or b):,} B")
            continue
        if not rel.endswith((".parquet", ".tar")):
            small.append(rel)
            continue
        p, s = prefix_suffix(a, b)
        middle = len(b) - p - s
        changed_middle += middle
        extra = ""
        if rel.endswith(".parquet"):
            ma, mb = pq.ParquetFile(old / rel).metadata, pq.ParquetFile(new / rel).metadata
            ga = [ma.row_group(i).num_rows for i in range(ma.num_row_groups)]
            gb = [mb.row_group(i).num_rows for i in range(mb.num_row_groups)]
            ia = pq.read_table(old / rel, columns=["image_id"]).column(0).to_pylist()
            ib = pq.read_table(new / rel, columns=["image_id"]).column(0).to_pylist()
            extra = f"; rows per row group {ga} -> {gb}, same first row {ia[:1] == ib[:1]}, same last row {ia[-1:] == ib[-1:]}"
        print(f"{rel}: {len(a):,} -> {len(b):,} B, common prefix {p:,}, suffix {s:,}, differing middle {middle:,}{extra}")
    if small:
        print(f"other files changed: {', '.join(small)}")
    print(f"new release {total:,} B; differing middles of same-named shards {changed_middle:,} B ({changed_middle / total:.2%})")
    a_ids, b_ids = split_ids(old), split_ids(new)
    for split in sorted(set(a_ids) | set(b_ids)):
        sa, sb = a_ids.get(split, []), b_ids.get(split, [])
        where_a = {i: k for k, ids in enumerate(sa) for i in ids}
        where_b = {i: k for k, ids in enumerate(sb) for i in ids}
        common = set(where_a) & set(where_b)
        print(f"{split}: shards {len(sa)} -> {len(sb)}, rows {sum(map(len, sa))} -> {sum(map(len, sb))}, rows per shard"
              f" {sorted(set(map(len, sa)))} -> {sorted(set(map(len, sb)))}; kept rows now in another shard"
              f" {sum(where_a[i] != where_b[i] for i in common)}; shards keeping their first row"
              f" {sum(x[:1] == y[:1] for x, y in zip(sa, sb))}, identical row lists {sum(x == y for x, y in zip(sa, sb))}")


if __name__ == "__main__":
    main()
