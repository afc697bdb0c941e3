"""Open an untrusted Parquet file only when what it would cost to read is known and within limits.

A few kB of zstd can decompress to gigabytes, and pyarrow allocates whatever a page header declares. So before
any data is read: the footer's length is checked against the file and a cap, then (from the footer) every row
group's row count and every column chunk's decompressed size (for dictionary-encoded columns, rows x the
chunk, since every row may repeat the largest dictionary entry) and their sum over each row group (what a
reader holds at once), then every page header of every column chunk is read (Thrift compact, a few bytes each)
so that the decompressed sizes the pages themselves declare are within the limit too, whatever the footer says.
When the caller knows the columns (a release's shards have the build's), any other schema is refused before a
value is read: a list column, say, turns a few bytes of run-length encoded levels into a billion null values,
which no size in the file declares.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

_MAGIC = b"PAR1"
_HEADER_WINDOW = 4096  # bytes read for one page header; longer headers (large statistics) get _MAX_PAGE_HEADER
_MAX_PAGE_HEADER = 1 << 20
_THRIFT_DEPTH = 16


class ParquetRefused(Exception):
    """The file is not read; the message says why (the caller adds the file's name)."""


@dataclass(frozen=True)
class ParquetLimits:
    footer_bytes: int = 16 << 20
    rows: int = 500_000  # rows of one file (and, for the caller, of all files together)
    rows_per_group: int = 1_000_000
    column_bytes: int = 256 << 20  # decompressed (or decoded, for dictionaries) bytes of one column chunk
    # ... and of all column chunks of one row group together, which a reader of the row group holds at once (the
    # Hub's dataset viewer refuses row groups of more than 300 MB, so no publishable shard comes near)
    group_bytes: int = 512 << 20
    pages: int = 100_000  # page headers of one file


def open_bounded(fh: BinaryIO, limits: ParquetLimits, schema: pa.Schema | None = None) -> pq.ParquetFile:
    """The ParquetFile, after the footer, the column chunks and every page header passed the limits, and its
    columns are exactly `schema`'s (names, types, order; metadata aside) when one is given."""
    parquet = footer_checked(fh, limits)
    problem = size_problem(parquet.metadata, limits)
    if problem is None and schema is not None:  # before the page walk: 20,000 columns are 20,000 walks
        problem = schema_problem(parquet, schema)
    problem = problem or page_problem(fh, parquet.metadata, limits)
    if problem:
        raise ParquetRefused(f"{problem}: not read")
    return parquet


def footer_checked(fh: BinaryIO, limits: ParquetLimits) -> pq.ParquetFile:
    """A ParquetFile whose footer (the only part pyarrow reads on opening) is within the limit."""
    fh.seek(0, io.SEEK_END)
    size = fh.tell()
    if size < 12:
        raise ParquetRefused(f"{size} bytes, too short to be Parquet")
    fh.seek(size - 8)
    tail = fh.read(8)
    if tail[4:] != _MAGIC:
        raise ParquetRefused("no Parquet footer (the file does not end in PAR1)")
    footer = int.from_bytes(tail[:4], "little")
    if footer > min(size - 12, limits.footer_bytes):
        raise ParquetRefused(f"Parquet footer of {footer:,} bytes in a file of {size:,} (limit {limits.footer_bytes:,}): not read")
    fh.seek(0)
    return pq.ParquetFile(fh, thrift_string_size_limit=limits.footer_bytes, thrift_container_size_limit=1_000_000)


def schema_problem(parquet: pq.ParquetFile, schema: pa.Schema) -> str | None:
    """The file's columns against `schema`, from the footer alone."""
    actual = parquet.schema_arrow
    if actual.remove_metadata().equals(schema.remove_metadata()):
        return None
    names = [f"{f.name}: {f.type}" for f in actual]
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12:,} more" if len(names) > 12 else "")
    return f"its columns are [{shown[:600]}], not the {len(schema)} columns the build writes"


def size_problem(meta: pq.FileMetaData, limits: ParquetLimits) -> str | None:
    """What the footer declares, against the limits."""
    if meta.num_rows > limits.rows or meta.num_rows < 0:
        return f"{meta.num_rows:,} rows, more than {limits.rows:,}"
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        if group.num_rows > limits.rows_per_group or group.num_rows < 0:
            return f"row group {g} has {group.num_rows:,} rows (limit {limits.rows_per_group:,})"
        group_decoded = 0
        for c in range(group.num_columns):
            column = group.column(c)
            if column.file_path:  # a column chunk may live in another file; a release's never does
                return f"row group {g} column {column.path_in_schema} is stored in another file ({column.file_path[:200]!r})"
            decoded = column.total_uncompressed_size
            if column.has_dictionary_page:  # each row may repeat the largest dictionary entry
                decoded = max(decoded, decoded * group.num_rows)
            if decoded > limits.column_bytes or column.total_uncompressed_size < 0:
                return (
                    f"row group {g} column {column.path_in_schema} decompresses to {decoded:,} bytes "
                    f"(limit {limits.column_bytes:,}; {column.total_compressed_size:,} bytes stored)"
                )
            group_decoded += decoded
            if group_decoded > limits.group_bytes:
                return f"row group {g} decompresses to {group_decoded:,}+ bytes over its columns (limit {limits.group_bytes:,})"
    return None


def page_problem(fh: BinaryIO, meta: pq.FileMetaData, limits: ParquetLimits) -> str | None:
    """What the page headers declare, against the limits (pyarrow allocates each page's declared size)."""
    fh.seek(0, io.SEEK_END)
    file_size = fh.tell()
    pages = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            column = group.column(c)
            where = f"row group {g} column {column.path_in_schema}"
            declared = 0
            try:
                for _, uncompressed, _ in page_headers(fh, column, file_size):
                    pages += 1
                    declared += uncompressed
                    if pages > limits.pages:
                        return f"more than {limits.pages:,} pages"
                    if declared > limits.column_bytes:
                        return f"{where}: its pages declare {declared:,}+ bytes decompressed (limit {limits.column_bytes:,})"
            except ValueError as exc:
                return f"{where}: {exc}"
    return None


def page_headers(fh: BinaryIO, column: pq.ColumnChunkMetaData, file_size: int) -> Iterator[tuple[int, int, int]]:
    """(header length, uncompressed size, compressed size) of each page of a column chunk, from its headers;
    ValueError when a header is not valid or the pages lie outside the file."""
    pos = column.data_page_offset
    if column.has_dictionary_page and column.dictionary_page_offset is not None:
        pos = min(pos, column.dictionary_page_offset)
    end = pos + column.total_compressed_size
    if pos < 0 or end > file_size:
        raise ValueError("its pages lie outside the file")
    while pos < end:
        try:
            length, uncompressed, compressed = _page_header(fh, pos)
        except ValueError as exc:
            raise ValueError(f"page header at byte {pos:,} is not valid ({exc})") from None
        if pos + length + compressed > end:  # a reader would allocate (and read) what the header declares
            raise ValueError(f"the page at byte {pos:,} declares {compressed:,} bytes, past the end of its column chunk")
        yield length, uncompressed, compressed
        pos += length + compressed


def _page_header(fh: BinaryIO, pos: int) -> tuple[int, int, int]:
    """(header length, uncompressed_page_size, compressed_page_size) of the PageHeader at `pos`."""
    for window in (_HEADER_WINDOW, _MAX_PAGE_HEADER):
        fh.seek(pos)
        reader = _CompactReader(fh.read(window))
        try:
            fields = reader.struct_i32_fields((2, 3))
        except _Truncated:
            continue
        uncompressed, compressed = fields.get(2), fields.get(3)
        if uncompressed is None or compressed is None or uncompressed < 0 or compressed < 0:
            raise ValueError("no page sizes")
        return reader.pos, uncompressed, compressed
    raise ValueError(f"longer than {_MAX_PAGE_HEADER:,} bytes")


class _Truncated(Exception):
    pass


class _CompactReader:
    """Just enough of Thrift's compact protocol to read a struct's top-level i32 fields and skip the rest."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _byte(self) -> int:
        if self.pos >= len(self.data):
            raise _Truncated
        b = self.data[self.pos]
        self.pos += 1
        return b

    def _skip_bytes(self, n: int) -> None:
        if n < 0:
            raise ValueError("negative length")
        self.pos += n
        if self.pos > len(self.data):
            raise _Truncated

    def _varint(self) -> int:
        result = shift = 0
        for _ in range(10):
            b = self._byte()
            result |= (b & 0x7F) << shift
            if not b & 0x80:
                return result
            shift += 7
        raise ValueError("varint longer than 10 bytes")

    def _zigzag(self) -> int:
        v = self._varint()
        return (v >> 1) ^ -(v & 1)

    def struct_i32_fields(self, wanted: tuple[int, ...]) -> dict[int, int]:
        return self._struct(0, wanted)

    def _struct(self, depth: int, wanted: tuple[int, ...] = ()) -> dict[int, int]:
        if depth > _THRIFT_DEPTH:
            raise ValueError("nested too deeply")
        fields: dict[int, int] = {}
        field_id = 0
        while True:
            head = self._byte()
            if head == 0:
                return fields
            kind, delta = head & 0x0F, head >> 4
            field_id = field_id + delta if delta else self._zigzag()
            if kind == 5 and field_id in wanted:
                fields[field_id] = self._zigzag()
            else:
                self._skip(kind, depth + 1)

    def _skip(self, kind: int, depth: int, in_container: bool = False) -> None:
        if kind in (1, 2):  # booleans: in a struct field the type is the value; in a container, one byte
            if in_container:
                self._skip_bytes(1)
        elif kind == 3:
            self._skip_bytes(1)
        elif kind in (4, 5, 6):
            self._varint()
        elif kind == 7:
            self._skip_bytes(8)
        elif kind == 8:
            self._skip_bytes(self._varint())
        elif kind in (9, 10):
            head = self._byte()
            size, element = head >> 4, head & 0x0F
            if size == 15:
                size = self._varint()
            if size > len(self.data) - self.pos:  # every element takes at least one byte
                raise _Truncated
            for _ in range(size):
                self._skip(element, depth + 1, in_container=True)
        elif kind == 11:
            size = self._varint()
            if size:
                if size > len(self.data) - self.pos:
                    raise _Truncated
                types = self._byte()
                for _ in range(size):
                    self._skip(types >> 4, depth + 1, in_container=True)
                    self._skip(types & 0x0F, depth + 1, in_container=True)
        elif kind == 12:
            self._struct(depth)
        else:
            raise ValueError(f"unknown Thrift type {kind}")
