"""Readers for the formats inside a release that check before they read: the card's YAML header, WebDataset
tars and images. Each takes bytes or an open file from pipeline.untrusted.files and reports what it refuses with
the reason; nothing here follows a name, expands a pattern or starts a process.

- the card: safe YAML without aliases, anchors or tags (a few hundred bytes of aliases expand to gigabytes:
  "billion laughs"), nesting bounded;
- tars: the 512-byte headers are walked before `tarfile` parses any (the release format writes ustar headers of
  regular files only, and `tarfile` reads an extended header whole into memory whatever its size), compressed
  tars are refused, every member must be `<key>.<suffix>` with a suffix of the format and within its size cap,
  and hold what its suffix says (an integer, JSON, an accepted image);
- images: only the decoders and bomb limits the build accepts (pipeline.stages.imagecheck), so no other Pillow plugin
  (EPS and its Ghostscript among them) ever sees release bytes.
"""

from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import yaml

from pipeline.stages.imagecheck import ImageRejected, open_image
from pipeline.release.layout import show

# The members of a WebDataset sample: `<key>.<suffix>` with these suffixes only (release/wds.py, sample_members).
# Both `webdataset` and `datasets` decode a member by its suffix (pickle for .pyd, torch for .pth, gunzip
# for .gz), so any other suffix fails the release before either library sees the tar.
WDS_MEMBER_SUFFIXES = ("cls", "json", "png")
WDS_IMAGE_SUFFIXES = ("png",)  # one image member whatever the source format (Pillow reads the format from the bytes)
_WDS_MEMBER = re.compile(r"^([0-9A-Za-z_-]{1,100})\.([0-9A-Za-z_.-]{1,32})$")
_COMPRESSED_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
MAX_LISTED_MEMBERS = 20  # refused members of one tar listed before the scan stops naming them


MEMBERS_PER_SAMPLE = 3  # <key>.cls, <key>.json and one image (release/wds.py, sample_members)


@dataclass(frozen=True)
class TarLimits:
    members: int = 1_000_000
    members_why: str = ""  # where `members` comes from, for the message (verify: the split's Parquet rows)
    member_bytes: tuple[tuple[str, int], ...] = (("cls", 64), ("json", 1 << 20), ("png", 64 << 20))

    def member_cap(self, suffix: str) -> int:
        return dict(self.member_bytes)[suffix]


# ---- the card's YAML header ---------------------------------------------------------------------------------


class CardRefused(Exception):
    """The card's YAML header uses something a card has no need for (aliases, tags) or cannot be parsed."""


class _StrictYamlLoader(yaml.SafeLoader):
    """Safe YAML without aliases, anchors or tags: a card has no need for them, and aliases are how a few
    hundred bytes expand to gigabytes ("billion laughs"). Nesting is bounded too (the composer recurses)."""

    def __init__(self, text: str, max_depth: int, max_nodes: int = 20_000) -> None:
        super().__init__(text)
        self.max_depth = max_depth
        self.depth = 0
        self.nodes_left = max_nodes

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        event = self.peek_event()
        line = event.start_mark.line + 1
        if isinstance(event, yaml.AliasEvent):
            raise CardRefused(f"YAML alias *{event.anchor} on line {line}: aliases are refused")
        if getattr(event, "anchor", None) is not None:
            raise CardRefused(f"YAML anchor &{event.anchor} on line {line}: anchors are refused")
        if getattr(event, "tag", None) is not None:
            raise CardRefused(f"YAML tag {event.tag} on line {line}: tags are refused")
        if self.depth >= self.max_depth:
            raise CardRefused(f"YAML nested more than {self.max_depth} levels deep on line {line}")
        self.nodes_left -= 1
        if self.nodes_left < 0:
            raise CardRefused(f"YAML header has more nodes than a card needs (line {line}): not parsed")
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


# How huggingface_hub (RepoCard, the Hub) finds a card's header; `datasets` takes the lines between a first
# line "---" and the next line "---", after str.splitlines() (which also splits at \r, \x0b, \u2028...).
_HUB_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def _header_block(text: str) -> str | None:
    """The header as the build writes it ("---\n" ... "\n---\n"), when the other readers find exactly that one
    too; CardRefused when they find another (a header delimited with "\r\n", closed at the end of the file or
    preceded by blank lines would go unchecked here and be loaded by `datasets`)."""
    end = text.find("\n---\n", 3) if text.startswith("---\n") else -1
    ours = text[4:end] if end >= 0 else None
    lines = text.splitlines()
    theirs = None
    if lines and lines[0] == "---" and "---" in lines[1:]:
        theirs = "\n".join(lines[1:lines[1:].index("---") + 1])
    hub = _HUB_YAML_BLOCK.search(text)
    if hub is not None or theirs is not None or ours is not None:
        if not (ours is not None and theirs == ours and hub is not None and hub.group(2) == ours):
            raise CardRefused(
                "YAML header is not delimited as the build writes it (a first line '---', a line '---' after it, "
                "'\\n' line ends only), so `datasets` and the Hub would read another header than the one checked here"
            )
    return ours


def card_header(text: str, max_depth: int = 64, max_chars: int = 64 << 10, max_nodes: int = 20_000) -> dict:
    """The YAML header of a card (`---` ... `---`), {} when there is none; CardRefused when it is unsafe.
    PyYAML is pure Python (some 100 us per key), so the header's length and node count are bounded: a real
    card's header is a few kB."""
    block = _header_block(text)
    if block is None:
        return {}
    if len(block) > max_chars:
        raise CardRefused(f"YAML header is {len(block):,} characters long, more than {max_chars:,}: not parsed")
    loader = _StrictYamlLoader(block + "\n", max_depth, max_nodes)
    try:
        doc = loader.get_single_data()
    except yaml.YAMLError as exc:
        raise CardRefused(f"YAML header does not parse: {' '.join(str(exc).split())}") from None
    finally:
        loader.dispose()
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise CardRefused(f"YAML header is a {type(doc).__name__}, not a mapping")
    return doc


# ---- WebDataset tars and images -----------------------------------------------------------------------------


def tar_problems(fh: BinaryIO, rel: str, limits: TarLimits) -> Iterator[str]:
    magic = fh.read(6)
    fh.seek(0)
    for prefix, name in _COMPRESSED_MAGIC.items():
        if magic.startswith(prefix):
            yield f"{show(rel)}: a {name}-compressed tar; the release format writes uncompressed tars only"
            return
    header_problem = _tar_header_problem(fh, rel, limits)
    if header_problem:
        yield header_problem
        return
    fh.seek(0)
    problems = 0
    try:
        with tarfile.open(fileobj=fh, mode="r:") as tar:
            for n, member in enumerate(_members(tar)):
                if n >= limits.members:
                    yield f"{show(rel)}: more than {limits.members:,} members: the rest were not read"
                    return
                problem = _member_problem(member, limits) or _member_content_problem(tar, member)
                if problem:
                    problems += 1
                    yield f"{show(rel)}: member {show(member.name)} {problem}"
                    if problems == MAX_LISTED_MEMBERS:  # each costs a header parse and a read: stop, not count
                        yield f"{show(rel)}: {problems} members refused; the rest were not read"
                        return
    except tarfile.TarError as exc:
        yield f"{show(rel)}: not a readable tar archive ({exc})"


_TAR_BLOCK = 512
_TAR_TYPES = {b"1": "hard link", b"2": "symbolic link", b"3": "character device", b"4": "block device", b"5": "directory",
              b"6": "FIFO", b"x": "pax extended", b"g": "pax global", b"L": "GNU long name", b"K": "GNU long link",
              b"S": "GNU sparse"}


def _tar_header_problem(fh: BinaryIO, rel: str, limits: TarLimits) -> str | None:
    """Walk the 512-byte headers before `tarfile` parses any: the release format writes ustar headers of regular
    files only, so an extended header (pax, GNU long name), whose data `tarfile` would read whole into memory
    whatever its size, is refused unread, and so is any member larger than the largest member cap."""
    largest = max(cap for _, cap in limits.member_bytes)
    offset = members = 0
    while True:
        fh.seek(offset)
        block = fh.read(_TAR_BLOCK)
        if len(block) < _TAR_BLOCK:
            return f"{show(rel)}: not a readable tar archive (it ends inside a header at byte {offset:,})"
        if block == bytes(_TAR_BLOCK):
            return None
        try:
            checksum = tarfile.nti(block[148:156])
        except tarfile.InvalidHeaderError:
            checksum = None
        if checksum not in tarfile.calc_chksums(block):
            return f"{show(rel)}: not a readable tar archive (no valid tar header at byte {offset:,})"
        name = show(block[:100].split(b"\0", 1)[0].decode("utf-8", errors="replace"))
        kind = block[156:157]
        if kind not in (b"0", b"\0"):
            what = _TAR_TYPES.get(kind, f"type {kind!r}")
            return f"{show(rel)}: member {name} is not a regular file (a {what} header): the release format writes ustar headers of regular files only"
        try:
            size = tarfile.nti(block[124:136])
        except tarfile.InvalidHeaderError:
            size = -1
        if size < 0:  # base-256 sizes can be negative: the walk would go back to an earlier header, forever
            return f"{show(rel)}: not a readable tar archive (member {name} has no valid size)"
        if size > largest:
            return f"{show(rel)}: member {name} is {size:,} bytes, above the limit of {largest:,} for any member: not read"
        members += 1
        if members > limits.members:
            return f"{show(rel)}: more than {limits.members:,} members{limits.members_why}: not read"
        offset += _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK


def _members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Members one header at a time, never keeping them all (a million headers cost memory)."""
    while (member := tar.next()) is not None:
        yield member
        tar.members.clear()


def _member_problem(member: tarfile.TarInfo, limits: TarLimits) -> str | None:
    if not member.isreg():
        return "is not a regular file (a link, directory or device entry in a tar of samples)"
    if member.sparse is not None:
        return "is a sparse member"
    match = _WDS_MEMBER.match(member.name)
    if not match or match.group(2) not in WDS_MEMBER_SUFFIXES:
        return f"is not <key>.<suffix> with a suffix of the release format ({', '.join(WDS_MEMBER_SUFFIXES)})"
    if member.size > limits.member_cap(match.group(2)):
        return f"is {member.size:,} bytes, above the limit of {limits.member_cap(match.group(2)):,} for .{match.group(2)} members: not read"
    return None


def _member_content_problem(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str | None:
    """What `datasets` and `webdataset` will decode, checked first (sizes are within their caps already):
    .cls an integer, .json JSON, images of an accepted format (header only: Pillow never sees other formats)."""
    data = tar.extractfile(member).read(member.size)
    suffix = member.name.rsplit(".", 1)[-1]
    try:
        if suffix == "cls":
            int(data.decode("ascii"))
        elif suffix == "json":
            json.loads(data)
        else:
            with open_image(data) as img:
                problem = image_size_problem(img)
            if problem:
                return f"refused: {problem}"
    except ImageRejected as exc:
        return f"refused: {exc}"
    except (ValueError, RecursionError) as exc:
        return f"is not a valid .{suffix} member ({type(exc).__name__})"
    return None


# Pixels of one image a release may hold (MLL23's are 288 x 288). Pillow's bomb limit lets 89 million through,
# and a 236 kB PNG of 9,000 x 9,000 took verify to 1.2 GB (the decoded image, its RGB array and the bytes hashed).
MAX_IMAGE_PIXELS = 4096 * 4096


def image_size_problem(img) -> str | None:  # noqa: ANN001 - a PIL image, header parsed
    width, height = img.size
    if width * height > MAX_IMAGE_PIXELS:
        return f"image of {width:,} x {height:,} pixels, more than the {MAX_IMAGE_PIXELS:,} of any release image: not decoded"
    return None


def decode_image(data: bytes) -> tuple[np.ndarray, tuple[int, int]]:
    """RGB pixels of untrusted image bytes, with only the decoders the build accepts and its bomb limits, and
    no more pixels than a release image has (checked on the header, before decoding)."""
    img = open_image(data)
    with img:
        problem = image_size_problem(img)
        if problem:
            raise ImageRejected(problem)
        img.load()
        return np.asarray(img.convert("RGB"), dtype=np.uint8), img.size
