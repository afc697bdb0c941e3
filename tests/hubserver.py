"""A local stand-in for the Hugging Face Hub, speaking the HTTP protocol the real clients use.

Enough of the Hub for the real `huggingface_hub` client (`HfApi`, `hf_hub_download`, `HfFileSystem`) and for
`datasets.load_dataset` to work against it with `HF_ENDPOINT=http://127.0.0.1:PORT`. The endpoints and payload
shapes were taken from the client sources installed with huggingface_hub 2.4.0 / datasets 5.2.0
(`hf_api.py`, `_commit_api.py`, `lfs.py`, `file_download.py`, `hf_file_system.py`, `datasets/load.py`).

Implemented (``{t}`` is ``models``/``datasets``/``spaces``, ``{p}`` the URL prefix ``""``/``datasets/``/``spaces/``):

    GET    /api/whoami-v2
    POST   /api/repos/create                       DELETE /api/repos/delete
    POST   /api/validate-yaml                      GET    /api/agent-harnesses (empty registry)
    GET    /api/{t}/{repo}[/revision/{rev}]        repo info: sha, private, siblings (?blobs=1: size, blobId, lfs), cardData
    PUT    /api/{t}/{repo}/settings                visibility / private
    GET    /api/{t}/{repo}/refs                    branches, tags, converts, pullRequests
    GET    /api/{t}/{repo}/tree/{rev}[/{path}]     ?recursive, ?expand; cursor pagination with a Link header
    POST   /api/{t}/{repo}/paths-info/{rev}        form: paths=..., expand=...
    GET    /api/{t}/{repo}/commits/{rev}           paginated history, newest first
    POST   /api/{t}/{repo}/preupload/{rev}         upload mode (lfs/regular) + remote oid per file
    POST   /api/{t}/{repo}/commit/{rev}            NDJSON: header, file, lfsFile, deletedFile, deletedFolder
    POST   /api/{t}/{repo}/tag/{rev}               create tag {"tag": ...}     DELETE .../tag/{tag}
    POST   /api/{t}/{repo}/branch/{branch}         create branch               DELETE .../branch/{branch}
    POST   /{p}{repo}.git/info/lfs/objects/batch   Git LFS batch API (basic; "xet" too in Xet mode, if offered)
    PUT    /__lfs/upload/{type}/{repo}/{oid}       the "storage" URL handed out by the batch API (signed, no token)
    POST   /__lfs/verify/{type}/{repo}             LFS verify
    HEAD   /{p}{repo}/resolve/{rev}/{path}         X-Repo-Commit, ETag, X-Linked-Etag/-Size (LFS), Content-Length
    GET    /{p}{repo}/resolve/{rev}/{path}         same headers + content, Range requests (206/416)
    GET    /api/{t}/{repo}/xet-write-token/{rev}   Xet mode: {casUrl, accessToken, exp} + X-Xet-* headers
    GET    /api/{t}/{repo}/xet-read-token/{rev}    (LFS mode: 404 XetNotEnabled, logged as its own kind)
    GET    /__xet/bridge/{sha256}                  Xet mode: a file's bytes (ranges too) at the signed URL /resolve
                                                   redirects to, on another origin ("localhost"), like the CAS bridge

Each of these is a row of `ROUTES` (methods, URL pattern, request kind, handler). Anything else is answered 404
with a JSON error naming the route, and recorded as ``kind="unknown"`` in the request log, so a test can assert
that the clients never needed an endpoint this server lacks.

State lives in memory: repos with immutable commits (path -> git blob id / size / LFS sha256), branches, tags and
a per-repo LFS object store. Blob, tree and commit ids are real git object ids (sha1 of the git object), with a
deterministic logical clock for commit dates.

Xet mode (``HubServer(xet_dir=path)``; default off, then only LFS exists and the Xet token routes answer 404):
the xet-write-token route hands out ``casUrl = "local://" + path``, a directory-backed CAS that hf_xet (>= 1.8)
writes and reads itself, so the real client runs its real Xet upload path (chunking, dedup against what the CAS
holds, xorbs and shards). A commit's ``lfsFile`` (named by sha256, as over LFS) is accepted when this repo's LFS store
has that object, or when a shard in the CAS describes a file with that sha256 whose xorbs are all present and whose
reconstructed bytes hash to it (checked once per file). /resolve answers such files, as the Hub does, with a 302
carrying ``X-Xet-Hash``, ``Link: <.../xet-read-token/{commit}>; rel="xet-auth"``, X-Linked-Size/-Etag and a signed
Location on another origin: hf_hub_download and HfFileSystem.get_file stop there and fetch from the CAS with
hf_xet; clients without Xet and HfFileSystem's range reads follow it and get bytes (ranges too) read back from the
CAS by the bridge, without the Hub token (httpx drops it across origins).

`store_usage()` tells how many bytes the LFS stores and the CAS hold: the difference of two snapshots is what an
upload newly stored. Xet uploads never pass through this server: the request log shows only the token request
(kind ``xet_write_token``, not a write kind: it changes nothing here), so a "wrote nothing" check in Xet mode must
compare `store_usage()` too. huggingface_hub 2.4.0 does not negotiate: with hf_xet installed and HF_HUB_DISABLE_XET
unset it uploads through Xet, and fails if the server has no xet-write-token route.

Writes need ``Authorization: Bearer <token>`` of a user allowed to write the namespace (its own name or one of its
organisations); private repos are only readable by such users. Tokens are never stored in the log; every response
body, request body, request URL and printed log line is scanned for known tokens (`HubServer.token_sightings`).

Faults can be injected per request kind, e.g. ``server.inject_fault("lfs_put", nth=3, mode="drop")`` makes the
third and following LFS uploads (``count=None``: until `clear_faults`) drop the connection half-way through the body.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import shutil
import socket
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml  # PyYAML: a dependency of huggingface_hub and datasets, used here for card metadata only

PLURAL_TO_TYPE = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}
REGULAR_FILE_MAX = 10 * 1024 * 1024  # the Hub refuses non-LFS files above 10 MiB
MAX_BODY = 256 * 1024 * 1024
CLOCK_EPOCH = datetime(2025, 1, 1, tzinfo=timezone.utc)

# The .gitattributes the Hub writes into the first commit of a new repo (abridged to the patterns that matter here).
DEFAULT_GITATTRIBUTES = """\
*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
# Image files - uncompressed
*.bmp filter=lfs diff=lfs merge=lfs -text
*.gif filter=lfs diff=lfs merge=lfs -text
*.png filter=lfs diff=lfs merge=lfs -text
*.tiff filter=lfs diff=lfs merge=lfs -text
# Image files - compressed
*.jpg filter=lfs diff=lfs merge=lfs -text
*.jpeg filter=lfs diff=lfs merge=lfs -text
*.webp filter=lfs diff=lfs merge=lfs -text
"""

# Kinds of request that change server state (used by tests to assert "no writes").
WRITE_KINDS = frozenset(
    {
        "repo_create",
        "repo_delete",
        "repo_settings",
        "commit",
        "lfs_batch_upload",
        "lfs_put",
        "lfs_verify",
        "tag_create",
        "tag_delete",
        "branch_create",
        "branch_delete",
    }
)


# ----------------------------------------------------------------------------------------------------- git objects


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclass(frozen=True)
class Entry:
    """One file of a commit's tree."""

    size: int  # size of the content (for LFS files: of the real file, not the pointer)
    blob_id: str  # git object id of what git stores: the content, or the LFS pointer
    lfs_oid: str | None = None  # sha256 of the content, for LFS files
    pointer_size: int | None = None
    xet_hash: str | None = None  # for files stored in the Xet CAS (still LFS files to git: pointer, sha256)

    def api(self, path: str) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "file", "oid": self.blob_id, "size": self.size, "path": path}
        if self.lfs_oid is not None:
            out["lfs"] = {"oid": self.lfs_oid, "size": self.size, "pointerSize": self.pointer_size}
        if self.xet_hash is not None:
            out["xetHash"] = self.xet_hash  # the client downloads by this hash (tree cache, HfFileSystem)
        return out


def tree_ids(tree: Mapping[str, Entry]) -> dict[str, str]:
    """Git tree object ids of every directory of `tree` ("" is the root), computed bottom-up like git does."""
    children: dict[str, dict[str, tuple[str, str]]] = {"": {}}  # dir -> name -> (mode, id or "" for subdir)
    for path in tree:
        parts = path.split("/")
        for depth in range(1, len(parts)):
            parent, name = "/".join(parts[: depth - 1]), parts[depth - 1]
            children.setdefault("/".join(parts[:depth]), {})
            children.setdefault(parent, {})[name] = ("40000", "")
        children.setdefault("/".join(parts[:-1]), {})[parts[-1]] = ("100644", tree[path].blob_id)
    ids: dict[str, str] = {}
    for directory in sorted(children, key=lambda d: d.count("/") + (d != ""), reverse=True):
        body = b""
        # git orders entries by name, comparing a directory's name as if it ended with "/"
        for name, (mode, oid) in sorted(children[directory].items(), key=lambda kv: kv[0] + ("/" if kv[1][0] == "40000" else "")):
            if mode == "40000":
                oid = ids[f"{directory}/{name}" if directory else name]
            body += f"{mode} {name}".encode() + b"\0" + bytes.fromhex(oid)
        ids[directory] = hashlib.sha1(b"tree %d\0" % len(body) + body).hexdigest()
    return ids


@dataclass(frozen=True)
class Commit:
    id: str
    parents: tuple[str, ...]
    tree: Mapping[str, Entry]  # read-only view; never mutated once created
    title: str
    message: str
    author: str
    date: datetime


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    created_at: datetime
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)  # sha256 -> content (uploaded, committed or not)
    blobs: dict[str, bytes] = field(default_factory=dict)  # git blob id -> content of regular files

    @property
    def namespace(self) -> str:
        return self.repo_id.split("/")[0]

    def resolve(self, revision: str) -> str | None:
        """Commit id for a branch, tag, full ref or full commit id; None if unknown."""
        rev = unquote(revision)
        if rev.startswith("refs/heads/"):
            return self.branches.get(rev[len("refs/heads/") :])
        if rev.startswith("refs/tags/"):
            return self.tags.get(rev[len("refs/tags/") :])
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if re.fullmatch(r"[0-9a-f]{40}", rev) and rev in self.commits:
            return rev
        return None

    def content(self, entry: Entry) -> bytes:
        return self.lfs[entry.lfs_oid] if entry.lfs_oid is not None else self.blobs[entry.blob_id]

    def history(self, commit_id: str) -> list[Commit]:
        out, seen, todo = [], set(), [commit_id]
        while todo:
            cid = todo.pop(0)
            if cid in seen:
                continue
            seen.add(cid)
            commit = self.commits[cid]
            out.append(commit)
            todo.extend(commit.parents)
        return sorted(out, key=lambda c: c.date, reverse=True)

    def last_commit_touching(self, head: str, path: str) -> Commit:
        """First-parent walk: the newest commit whose change touches `path` (a file or a directory)."""
        def view(commit: Commit) -> Any:
            if path in commit.tree:
                return commit.tree[path]
            return tuple(sorted((p, e) for p, e in commit.tree.items() if p.startswith(path + "/")))

        commit = self.commits[head]
        while commit.parents:
            parent = self.commits[commit.parents[0]]
            if view(parent) != view(commit):
                return commit
            commit = parent
        return commit


# ------------------------------------------------------------------------------------------------ Xet (local CAS)

SHARD_TAG = b"HFRepoMetaData\0"  # start of the 32-byte magic of a Xet shard (MDB) file
SHARD_HEADER = 48  # magic (32) + version (8) + footer size (8)
SHARD_ENTRY = 48  # every record of a shard's file-info section is 48 bytes
FLAG_VERIFICATION = 1 << 31  # one verification record per segment follows the segments
FLAG_METADATA_EXT = 1 << 30  # one record holding the file's sha256 follows


def xet_hex(raw: bytes) -> str:
    """A 32-byte Xet (Merkle) hash as hf_xet prints it: four little-endian u64, each as 16 hex digits."""
    return "".join(raw[i:i + 8][::-1].hex() for i in range(0, 32, 8))


@dataclass(frozen=True)
class XetFile:
    """One file as a shard in the CAS describes it."""

    xet_hash: str
    size: int
    sha256: str | None
    xorbs: tuple[str, ...]  # the chunk containers its bytes are reconstructed from


def parse_shard(data: bytes) -> list[XetFile]:
    """The file-info section of a Xet shard (xet-core `metadata_shard`): per file a header (file hash, flags, number
    of segments), its segments (xorb hash, flags, bytes, chunk range), optional verification records, and an optional
    metadata extension whose first 32 bytes are the file's sha256 (stored like a Merkle hash). Raises ValueError."""
    if not data.startswith(SHARD_TAG) or len(data) < SHARD_HEADER:
        raise ValueError("not a Xet shard")
    files, off = [], SHARD_HEADER
    while True:
        if off + SHARD_ENTRY > len(data):
            raise ValueError("truncated shard")
        file_hash = data[off:off + 32]
        flags, count = struct.unpack_from("<II", data, off + 32)
        if file_hash == b"\xff" * 32:  # the bookend closes the section
            return files
        off += SHARD_ENTRY
        records = count + (count if flags & FLAG_VERIFICATION else 0) + (1 if flags & FLAG_METADATA_EXT else 0)
        if off + records * SHARD_ENTRY > len(data):
            raise ValueError("truncated shard")
        size, xorbs = 0, []
        for i in range(count):
            at = off + i * SHARD_ENTRY
            xorbs.append(xet_hex(data[at:at + 32]))
            size += struct.unpack_from("<I", data, at + 36)[0]
        off += records * SHARD_ENTRY
        sha256 = xet_hex(data[off - SHARD_ENTRY:off - SHARD_ENTRY + 32]) if flags & FLAG_METADATA_EXT else None
        files.append(XetFile(xet_hex(file_hash), size, sha256, tuple(dict.fromkeys(xorbs))))


@dataclass(frozen=True)
class StoreUsage:
    """Bytes held by the server's stores. Subtract two snapshots to get what an upload newly stored."""

    lfs_bytes: int = 0  # LFS objects, summed over repos (each repo has its own LFS store)
    xorb_bytes: int = 0  # Xet chunk containers in the CAS
    shard_bytes: int = 0  # Xet shards (file reconstructions, dedup metadata) in the CAS

    @property
    def xet_bytes(self) -> int:
        return self.xorb_bytes + self.shard_bytes

    @property
    def total(self) -> int:
        return self.lfs_bytes + self.xet_bytes

    def __sub__(self, other: "StoreUsage") -> "StoreUsage":
        return StoreUsage(self.lfs_bytes - other.lfs_bytes, self.xorb_bytes - other.xorb_bytes,
                          self.shard_bytes - other.shard_bytes)


class LocalCas:
    """The server's side of the directory-backed CAS that hf_xet uses for an endpoint ``local://<root>``.

    Clients write to it directly (the real Hub hands out a CAS URL the same way; the Hub itself never sees the bytes).
    hf_xet keeps the store under ``<root>/xet/xorbs``: ``xorbs/default.<hash>`` (compressed chunk containers),
    ``shards/<hash>.mdb`` (which file is made of which chunk ranges, and its sha256) and a redb dedup index; an
    uploading client's own shard cache and staging sit beside it (``<root>/xet/shard-cache``, ``shard-session``) and
    are not part of the store. The server finds a committed file by the sha256 the commit names, like the Hub does,
    and reads it back through hf_xet itself."""

    def __init__(self, root: str | Path, *, verify_sha256: bool = True):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = self.root / "xet" / "xorbs"
        self.verify_sha256 = verify_sha256
        self._lock = threading.Lock()
        self._parsed: set[str] = set()
        self._by_sha256: dict[str, XetFile] = {}
        self._verified: set[tuple[str, str | None]] = set()  # (Xet hash, sha256) pairs checked
        self._session: Any = None

    @property
    def url(self) -> str:
        return f"local://{self.root}"

    def find(self, sha256: str) -> XetFile | None:
        """The stored file with this sha256, if a shard names it and every xorb it needs is present."""
        with self._lock:
            if sha256 not in self._by_sha256:
                self._scan()
            found = self._by_sha256.get(sha256)
        if found is None or not all((self.store / "xorbs" / f"default.{x}").is_file() for x in found.xorbs):
            return None
        return found

    def verified(self, found: XetFile) -> bool:
        """Whether the bytes the CAS reconstructs really hash to the sha256 the client's shard claims (once per file:
        the commit trusts it from then on)."""
        if not self.verify_sha256 or (found.xet_hash, found.sha256) in self._verified:
            return True
        digest = hashlib.sha256()
        try:
            for chunk in self._stream(found, 0, None):
                digest.update(chunk)
        except Exception:  # hf_xet refuses a damaged xorb (its hash no longer matches): not this file's bytes
            return False
        if digest.hexdigest() != found.sha256:
            return False
        with self._lock:  # keyed by the claim too: another shard may claim another sha256 for the same bytes
            self._verified.add((found.xet_hash, found.sha256))
        return True

    def read(self, found: XetFile, start: int = 0, end: int | None = None) -> bytes:
        """Bytes [start, end) of a stored file, reconstructed from the xorbs by hf_xet."""
        return b"".join(self._stream(found, start, end))

    def usage(self) -> tuple[int, int]:
        """(xorb bytes, shard bytes). The ``.tagset`` files (deletion tags of the simulation) and the redb index
        (preallocated in 1 MiB steps) are left out: they say nothing about how much content was stored."""
        def size(sub: str) -> int:
            folder = self.store / sub
            files = folder.iterdir() if folder.is_dir() else ()
            return sum(f.stat().st_size for f in files if f.is_file() and not f.name.endswith(".tagset"))

        return size("xorbs"), size("shards")

    def forget_clients(self) -> None:
        """Drop what uploading clients keep beside the store (their shard cache, and the staged xorb metadata an
        interrupted upload resumes from): the next client starts like one on a fresh machine, where on the real Hub
        those live in its own HF_XET_CACHE. Dedup against the store itself (global dedup) still works."""
        for sub in ("shard-cache", "shard-session"):
            shutil.rmtree(self.root / "xet" / sub, ignore_errors=True)

    def _scan(self) -> None:
        folder = self.store / "shards"
        for path in sorted(folder.glob("*.mdb")) if folder.is_dir() else ():
            if path.name in self._parsed:
                continue
            try:
                files = parse_shard(path.read_bytes())
            except (OSError, ValueError, struct.error):
                continue  # being written: read again on the next lookup
            for found in files:
                if found.sha256 is not None:
                    self._by_sha256.setdefault(found.sha256, found)
            self._parsed.add(path.name)

    def _stream(self, found: XetFile, start: int, end: int | None) -> Any:
        import hf_xet  # only Xet mode needs it

        with self._lock:
            if self._session is None:
                self._session = hf_xet.XetSession()
            group = self._session.new_download_stream_group(endpoint=self.url)
        return group.download_stream(hf_xet.XetFileInfo(found.xet_hash, found.size), start=start, end=end)


@dataclass
class User:
    name: str
    orgs: tuple[str, ...] = ()

    def can_write(self, namespace: str) -> bool:
        return namespace == self.name or namespace in self.orgs


@dataclass
class RequestRecord:
    """One request as the server saw it. Never holds a credential: only whether one was sent and whose it was."""

    seq: int
    method: str
    path: str
    query: str
    kind: str = "unknown"
    repo: str | None = None
    status: int = 0
    user: str | None = None
    authenticated: bool = False
    bytes_in: int = 0
    bytes_out: int = 0
    fault: str | None = None
    note: str = ""

    @property
    def is_write(self) -> bool:
        return self.kind in WRITE_KINDS

    def __str__(self) -> str:
        q = f"?{self.query}" if self.query else ""
        who = f"user={self.user}" if self.user else ("auth=invalid" if self.authenticated else "anonymous")
        extra = f" fault={self.fault}" if self.fault else ""
        extra += f" ({self.note})" if self.note else ""
        return f"#{self.seq} {self.method} {self.path}{q} -> {self.status} [{self.kind}] {who}{extra}"


@dataclass
class Fault:
    """A planned failure. By request: the nth request of `kind` (counted from injection) and the following ones
    fail, `count` times in all (None: until cleared). With `per_object=True` (LFS uploads), the nth distinct
    object uploaded is the victim instead: every attempt to upload it fails, `count` times in all, while other
    objects go through; this is how a client's retries of one upload all hit the same broken transfer."""

    kind: str  # request kind it applies to, e.g. "lfs_put", "commit"
    nth: int
    count: int | None
    mode: str  # "drop": connection closed mid-request | "500": HTTP 500 | "echo_auth": 400 echoing the credential
    per_object: bool = False
    seen: int = 0
    fired: int = 0
    objects: list[str] = field(default_factory=list)


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers = status, message, code, headers or {}


def _iso(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _truthy(value: str | None) -> bool:
    return value is not None and value.lower() in ("1", "true", "yes", "on")


def _card_data(readme: bytes) -> dict | None:
    text = readme.decode("utf-8", errors="replace")
    match = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, flags=re.S)
    if not match:
        return None
    data = yaml.safe_load(match.group(1))
    return data if isinstance(data, dict) else None


def _lfs_patterns(gitattributes: bytes | None) -> list[str]:
    patterns = []
    for line in (gitattributes or b"").decode("utf-8", errors="replace").splitlines():
        parts = line.strip().split()
        if parts and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            patterns.append(parts[0])
    return patterns


def _matches(pattern: str, path: str) -> bool:
    if "/" not in pattern.rstrip("/"):
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern)
    return fnmatch.fnmatchcase(path, pattern.lstrip("/").replace("**/", "*"))


def _valid_path(path: str) -> bool:
    parts = path.split("/")
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..", ".git") for p in parts)


# ------------------------------------------------------------------------------------------------------ the server


class HubServer:
    """In-memory Hub. Start with `start()` (or as a context manager); `url` is the endpoint to give clients."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, tree_page_size: int = 1000,
                 max_lifetime: float | None = 600.0, regular_file_max: int = REGULAR_FILE_MAX,
                 xet_dir: str | Path | None = None, xet_token_ttl: int = 3600,
                 xet_bridge_host: str | None = "localhost", xet_verify_sha256: bool = True):
        """`xet_dir`: offer Xet storage, with a hf_xet ``local://`` CAS in that directory (None: LFS only).
        `xet_verify_sha256`: before a commit first names a CAS file, read it back and check its sha256 (off: trust
        the shard, as a benchmark of large releases may prefer).
        `xet_bridge_host`: /resolve of a Xet-stored file redirects (302) to a signed URL on this host name for the
        same server, another origin to the client as the Hub's CAS bridge is (so no Hub token follows the redirect);
        None: serve the bytes from /resolve itself."""
        self.host, self.port = host, port
        self.cas = LocalCas(xet_dir, verify_sha256=xet_verify_sha256) if xet_dir is not None else None
        self.xet_token_ttl = xet_token_ttl
        self.xet_bridge_host = xet_bridge_host
        self.tree_page_size = tree_page_size
        self.max_lifetime = max_lifetime
        self.regular_file_max = regular_file_max
        self.lock = threading.RLock()
        self.users: dict[str, User] = {}  # token -> user
        self.repos: dict[tuple[str, str], Repo] = {}
        self.log: list[RequestRecord] = []
        self.faults: list[Fault] = []
        self.token_sightings: list[str] = []  # where a known token showed up (must stay empty)
        self._secret = secrets.token_bytes(16)  # signs the LFS upload URLs (stand-in for presigned S3 URLs)
        self._clock = 0
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return f"http://{self.host}:{self._httpd.server_address[1]}"

    def start(self) -> "HubServer":
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer((self.host, self.port), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="hubserver", daemon=True)
        self._thread.start()
        if self.max_lifetime:  # never outlive a forgotten test: stop on our own
            self._timer = threading.Timer(self.max_lifetime, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if self._timer is not None:
            self._timer.cancel()
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ test helpers

    def add_user(self, name: str, orgs: tuple[str, ...] | list[str] = (), token: str | None = None) -> str:
        token = token or f"hf_{secrets.token_urlsafe(24)}"
        with self.lock:
            self.users[token] = User(name, tuple(orgs))
        return token

    def inject_fault(self, kind: str, *, nth: int = 1, count: int | None = 1, mode: str = "500",
                     per_object: bool = False) -> Fault:
        if mode not in ("drop", "500", "echo_auth"):
            raise ValueError(f"unknown fault mode {mode!r}")
        fault = Fault(kind=kind, nth=nth, count=count, mode=mode, per_object=per_object)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    def requests(self, kind: str | None = None, *, status: int | None = None) -> list[RequestRecord]:
        with self.lock:
            return [r for r in self.log if (kind is None or r.kind == kind) and (status is None or r.status == status)]

    def writes(self) -> list[RequestRecord]:
        with self.lock:
            return [r for r in self.log if r.is_write]

    def unknown_requests(self) -> list[RequestRecord]:
        return self.requests("unknown")

    def format_log(self) -> str:
        text = "\n".join(str(r) for r in self.requests())
        self._scan(text, "printed request log")
        return text

    def get_repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    def tree(self, repo_id: str, revision: str = "main", repo_type: str = "dataset") -> dict[str, Entry]:
        repo = self.get_repo(repo_id, repo_type)
        with self.lock:
            commit_id = repo.resolve(revision)
            if commit_id is None:
                raise KeyError(f"{repo_id}@{revision}")
            return dict(repo.commits[commit_id].tree)

    def file_bytes(self, repo_id: str, path: str, revision: str = "main", repo_type: str = "dataset") -> bytes:
        repo = self.get_repo(repo_id, repo_type)
        with self.lock:
            entry = repo.commits[repo.resolve(revision)].tree[path]
        return self._read(repo, entry)

    def store_usage(self) -> StoreUsage:
        """What the stores hold now (LFS objects of every repo, Xet xorbs and shards); `after - before` is what an
        upload newly stored."""
        with self.lock:
            lfs = sum(len(b) for repo in self.repos.values() for b in repo.lfs.values())
        xorbs, shards = self.cas.usage() if self.cas is not None else (0, 0)
        return StoreUsage(lfs, xorbs, shards)

    # ------------------------------------------------------------------ internals

    def _scan(self, text: str | bytes, where: str) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        with self.lock:
            for token in self.users:
                if token in text:
                    self.token_sightings.append(where)

    def _take_fault(self, kind: str, obj: str | None) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.kind != kind or (fault.count is not None and fault.fired >= fault.count):
                    continue
                if fault.per_object:
                    if obj is not None and obj not in fault.objects:
                        fault.objects.append(obj)
                    hit = obj is not None and len(fault.objects) >= fault.nth and obj == fault.objects[fault.nth - 1]
                else:
                    fault.seen += 1
                    hit = fault.seen >= fault.nth
                if hit:
                    fault.fired += 1
                    return fault
        return None

    def _tick(self) -> datetime:
        with self.lock:
            self._clock += 1
            return CLOCK_EPOCH + timedelta(minutes=self._clock)

    def _new_commit(self, repo: Repo, parent: str | None, tree: dict[str, Entry], title: str, message: str,
                    author: str) -> Commit:
        date = self._tick()
        stamp = f"{author} <{author}@users.noreply.hubserver> {int(date.timestamp())} +0000"
        body = f"tree {tree_ids(tree)['']}\n"
        body += f"parent {parent}\n" if parent else ""
        body += f"author {stamp}\ncommitter {stamp}\n\n{title}\n" + (f"\n{message}\n" if message else "")
        raw = body.encode()
        commit_id = hashlib.sha1(b"commit %d\0" % len(raw) + raw).hexdigest()
        commit = Commit(commit_id, (parent,) if parent else (), MappingProxyType(dict(sorted(tree.items()))),
                        title, message, author, date)
        repo.commits[commit_id] = commit
        return commit

    def _read(self, repo: Repo, entry: Entry, start: int = 0, end: int | None = None) -> bytes:
        """Content [start, end) of a file: from the Xet CAS for Xet-stored files, else from memory."""
        if entry.xet_hash is not None:
            assert self.cas is not None and entry.lfs_oid is not None
            found = self.cas.find(entry.lfs_oid)
            if found is None:
                raise HubError(500, f"hubserver: Xet object {entry.xet_hash} is missing from the CAS")
            return self.cas.read(found, start, end)
        return repo.content(entry)[start:end]

    def _sign(self, repo: Repo | None, oid: str, size: int) -> str:
        """Signature of an upload URL for `repo`'s LFS store, or (repo None) of a download URL of the CAS bridge."""
        where = f"{repo.repo_type}/{repo.repo_id}" if repo is not None else "xet-bridge"
        msg = f"{where}/{oid}/{size}".encode()
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest()


# ---------------------------------------------------------------------------------------------------- routing
# A route is (methods, URL pattern, request kind, handler). A pattern is the path's "/"-separated segments, each
# compared after unquoting: a literal, "{name}" (any one segment; "{plural}" only models/datasets/spaces), a
# literal around a "{name}" ("{name}.git"), and a last "{path*}" (the rest, possibly empty) or "{path+}" (the rest,
# at least one segment). Git-side routes are matched after the URL prefix datasets/ or spaces/ is taken off.

_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PLACEHOLDER_PATTERNS = {"plural": "|".join(PLURAL_TO_TYPE)}


def _segment_regex(segment: str) -> re.Pattern[str]:
    parts = _PLACEHOLDER.split(segment)  # literal, name, literal, name, ..., literal
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>{_PLACEHOLDER_PATTERNS.get(part, '.*')})"
        for i, part in enumerate(parts)
    )
    return re.compile(regex, re.DOTALL)


def _git_side(seg: list[str]) -> tuple[str, list[str]]:
    """The repo type a git-side URL names by its prefix (none: a model), and the segments after the prefix."""
    if seg and seg[0] in ("datasets", "spaces"):
        return PLURAL_TO_TYPE[seg[0]], seg[1:]
    return "model", seg


@dataclass(frozen=True)
class RouteMatch:
    """The named segments of a matched URL, the request method, and the repo type of a git-side URL."""

    params: dict[str, str]
    method: str
    git_type: str | None = None

    def __getitem__(self, name: str) -> str:
        return self.params[name]

    @property
    def repo(self) -> str | None:
        """The repo the URL names (namespace/name), for the request log; None for URLs without one."""
        return f"{self['ns']}/{self['name']}" if "ns" in self.params else None

    @property
    def key(self) -> tuple[str, str]:
        """(repo type, repo id) of the URL's repo: from /api/{plural}/..., the LFS URLs' type, or the git prefix."""
        if "plural" in self.params:
            return PLURAL_TO_TYPE[self["plural"]], self.repo
        return self["type"] if "type" in self.params else self.git_type, self.repo


@dataclass(frozen=True)
class Route:
    methods: tuple[str, ...]
    kind: str  # the request's kind in the log
    handler: Any  # (request handler, RouteMatch) -> (bound handler method, its arguments)
    segments: tuple[re.Pattern[str], ...]
    rest: str | None  # "*" or "+" when the pattern ends in {path*} / {path+}
    git_side: bool = False

    def match(self, seg: list[str]) -> dict[str, str] | None:
        n = len(self.segments)
        if len(seg) < n + (self.rest == "+") or (self.rest is None and len(seg) != n):
            return None
        params: dict[str, str] = {}
        for regex, value in zip(self.segments, seg):
            found = regex.fullmatch(value)
            if found is None:
                return None
            params.update(found.groupdict())
        if self.rest is not None:
            params["path"] = "/".join(seg[n:])
        return params


_REPO = "api/{plural}/{ns}/{name}"


def _route(methods: str, pattern: str, kind: str, handler: Any, git_side: bool = False) -> Route:
    parts = pattern.replace("{repo}", _REPO).split("/")
    rest = parts.pop()[-2] if parts[-1] in ("{path*}", "{path+}") else None
    return Route(tuple(methods.split("|")), kind, handler, tuple(map(_segment_regex, parts)), rest, git_side)


ROUTES: tuple[Route, ...] = (
    _route("GET", "api/whoami-v2", "whoami", lambda h, m: (h._whoami, ())),
    _route("POST", "api/repos/create", "repo_create", lambda h, m: (h._repo_create, ())),
    _route("DELETE", "api/repos/delete", "repo_delete", lambda h, m: (h._repo_delete, ())),
    _route("POST", "api/validate-yaml", "validate_yaml", lambda h, m: (h._validate_yaml, ())),
    _route("GET", "api/agent-harnesses", "agent_harnesses",
           lambda h, m: ((lambda: (200, {"standardEnvVars": [], "harnesses": {}})), ())),
    _route("GET", "{repo}", "repo_info", lambda h, m: (h._repo_info, (m.key, None))),
    _route("GET", "{repo}/revision/{rev}", "repo_info", lambda h, m: (h._repo_info, (m.key, m["rev"]))),
    _route("PUT", "{repo}/settings", "repo_settings", lambda h, m: (h._settings, (m.key,))),
    _route("GET", "{repo}/refs", "refs", lambda h, m: (h._refs, (m.key,))),
    _route("GET", "{repo}/tree/{rev}/{path*}", "tree", lambda h, m: (h._tree, (m.key, m["rev"], m["path"]))),
    _route("POST", "{repo}/paths-info/{rev}", "paths_info", lambda h, m: (h._paths_info, (m.key, m["rev"]))),
    _route("GET", "{repo}/commits/{rev}", "commits", lambda h, m: (h._commits, (m.key, m["rev"]))),
    _route("POST", "{repo}/preupload/{rev}", "preupload", lambda h, m: (h._preupload, (m.key, m["rev"]))),
    _route("POST", "{repo}/commit/{rev}", "commit", lambda h, m: (h._commit, (m.key, m["rev"]))),
    _route("GET", "{repo}/xet-write-token/{rev}", "xet_write_token",
           lambda h, m: (h._xet_token, (m.key, m["rev"], True))),
    _route("GET", "{repo}/xet-read-token/{rev}", "xet_read_token",
           lambda h, m: (h._xet_token, (m.key, m["rev"], False))),
    _route("POST", "{repo}/tag/{ref}", "tag_create", lambda h, m: (h._tag_create, (m.key, m["ref"]))),
    _route("DELETE", "{repo}/tag/{ref}", "tag_delete", lambda h, m: (h._tag_delete, (m.key, m["ref"]))),
    _route("POST", "{repo}/branch/{ref}", "branch_create", lambda h, m: (h._branch_create, (m.key, m["ref"]))),
    _route("DELETE", "{repo}/branch/{ref}", "branch_delete", lambda h, m: (h._branch_delete, (m.key, m["ref"]))),
    _route("PUT", "__lfs/upload/{type}/{ns}/{name}/{oid}", "lfs_put", lambda h, m: (h._lfs_put, (m.key, m["oid"]))),
    _route("GET|HEAD", "__xet/bridge/{sha256}", "xet_bridge", lambda h, m: (h._xet_bridge, (m["sha256"], m.method))),
    _route("POST", "__lfs/verify/{type}/{ns}/{name}", "lfs_verify", lambda h, m: (h._lfs_verify, (m.key,))),
    _route("POST", "{ns}/{name}.git/info/lfs/objects/batch", "lfs_batch", lambda h, m: (h._lfs_batch, (m.key,)),
           git_side=True),
    _route("GET|HEAD", "{ns}/{name}/resolve/{rev}/{path+}", "resolve",
           lambda h, m: (h._resolve, (m.key, m["rev"], m["path"], m.method)), git_side=True),
)


# ------------------------------------------------------------------------------------------------- request handler


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer  # set on the per-server subclass
    protocol_version = "HTTP/1.1"  # keep-alive, like the Hub; every response carries Content-Length
    server_version = "hubserver/1"
    timeout = 60  # a stuck client cannot pin a thread forever

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle + delayed ACK stall each response ~40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # silence stderr; we keep our own log
        pass

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    # ------------------------------------------------------------------ plumbing

    def _handle(self, method: str) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        with hub.lock:
            record = RequestRecord(seq=len(hub.log) + 1, method=method, path=split.path, query=split.query)
            hub.log.append(record)
        self.record = record
        self.query = {k: v for k, v in parse_qs(split.query, keep_blank_values=True).items()}
        hub._scan(self.path, f"request URL #{record.seq}")
        self.resp_headers: dict[str, str] = {}
        self.body_read = False
        try:
            self.user = self._authenticate()
            handler, args = self._route(method, split.path)
            fault = hub._take_fault(record.kind, args[-1] if record.kind == "lfs_put" else None)
            if fault is not None and fault.mode == "drop":
                record.fault, record.status = f"drop #{fault.fired}", 0
                self._drop()
                return
            body = self._read_body()
            self.body_read = True
            record.bytes_in = len(body)
            if record.kind in ("commit", "lfs_put", "preupload"):
                hub._scan(body, f"request body #{record.seq} ({record.kind})")
            if fault is not None and fault.mode == "500":
                record.fault = f"500 #{fault.fired}"
                raise HubError(500, f"hubserver: injected fault on {record.kind} (Internal Error)")
            if fault is not None and fault.mode == "echo_auth":
                record.fault = f"echo_auth #{fault.fired}"
                raise HubError(400, f"hubserver: rejected request with header Authorization: "
                                    f"{self.headers.get('Authorization')}")
            self.body = body
            status, payload = handler(*args)
        except HubError as err:
            status = err.status
            payload = {"error": err.message}
            self.resp_headers.update(err.headers)
            self.resp_headers["X-Error-Message"] = err.message.encode("ascii", "replace").decode()
            if err.code:
                self.resp_headers["X-Error-Code"] = err.code
        except Exception as err:  # a bug in this server: say so loudly
            status, payload = 500, {"error": f"hubserver internal error: {type(err).__name__}: {err}"}
            record.note = payload["error"]
        self._respond(method, status, payload)

    def _authenticate(self) -> User | None:
        header = self.headers.get("Authorization")
        if header is None:
            return None
        self.record.authenticated = True
        scheme, _, token = header.partition(" ")
        user = self.hub.users.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None:
            self.record.kind = "auth_rejected"
            raise HubError(401, "Invalid credentials in Authorization header")
        self.record.user = user.name
        return user

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                total += size
                if total > MAX_BODY:
                    raise HubError(413, "Payload Too Large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HubError(413, "Payload Too Large")
        return self.rfile.read(length) if length else b""

    def _drop(self) -> None:
        """Simulate a connection lost in the middle of a request: read part of the body, then hang up."""
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(max(1, length // 2))
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _respond(self, method: str, status: int, payload: Any) -> None:
        record = self.record
        headers = self.resp_headers
        if isinstance(payload, (bytes, bytearray)):
            body = bytes(payload)
            headers.setdefault("Content-Type", "application/octet-stream")
        else:
            body = json.dumps(payload).encode()
            headers.setdefault("Content-Type", "application/json; charset=utf-8")
        self.hub._scan(body, f"response body #{record.seq} ({record.kind})")
        self.hub._scan(json.dumps(headers), f"response headers #{record.seq} ({record.kind})")
        record.status, record.bytes_out = status, len(body)
        headers.setdefault("Content-Length", str(len(body)))
        headers.setdefault("X-Request-Id", f"hubserver-{record.seq}")
        if not self.body_read and (self.headers.get("Content-Length") or self.headers.get("Transfer-Encoding")):
            # We answered before reading the request body: the connection cannot be reused.
            headers["Connection"] = "close"
            self.close_connection = True
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if method != "HEAD":
            self.wfile.write(body)

    # ------------------------------------------------------------------ routing

    def _route(self, method: str, path: str) -> tuple[Any, tuple]:
        """The handler of the first route of ROUTES that matches, and its arguments; records the request's kind."""
        seg = [unquote(s) for s in path.split("/")][1:]
        git_type, git_seg = _git_side(seg)
        for route in ROUTES:
            if method not in route.methods:
                continue
            params = route.match(git_seg if route.git_side else seg)
            if params is None:
                continue
            found = RouteMatch(params, method, git_type if route.git_side else None)
            self.record.kind, self.record.repo = route.kind, found.repo
            return route.handler(self, found)
        raise HubError(404, f"hubserver: no route for {method} {path}")

    # ------------------------------------------------------------------ access helpers

    def _require_user(self) -> User:
        if self.user is None:
            raise HubError(401, "You must be authenticated to perform this action (Authorization: Bearer <token>)")
        return self.user

    def _readable(self, key: tuple[str, str]) -> Repo:
        repo = self.hub.repos.get(key)
        if repo is None or (repo.private and not (self.user and self.user.can_write(repo.namespace))):
            status = 401 if (repo is not None and self.user is None) else 404
            raise HubError(status, "Repository not found", code="RepoNotFound")
        return repo

    def _writable(self, key: tuple[str, str]) -> Repo:
        user = self._require_user()
        repo = self._readable(key)
        if not user.can_write(repo.namespace):
            raise HubError(403, f"You don't have the rights to write to {repo.repo_id}")
        return repo

    def _revision(self, repo: Repo, revision: str) -> Commit:
        commit_id = repo.resolve(revision)
        if commit_id is None:
            raise HubError(404, f"Invalid rev id: {unquote(revision)}", code="RevisionNotFound")
        return repo.commits[commit_id]

    def _json(self) -> Any:
        try:
            return json.loads(self.body or b"null")
        except ValueError as err:
            raise HubError(400, f"Invalid JSON body: {err}") from None

    def _base(self) -> str:
        return self.hub.url

    def _repo_url(self, repo: Repo) -> str:
        return f"{self._base()}/{URL_PREFIX[repo.repo_type]}{repo.repo_id}"

    # ------------------------------------------------------------------ endpoints: account and repos

    def _whoami(self) -> tuple[int, Any]:
        user = self._require_user()
        return 200, {
            "type": "user",
            "name": user.name,
            "fullname": user.name,
            "orgs": [{"type": "org", "name": o, "roleInOrg": "write"} for o in user.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "hubserver", "role": "write"}},
        }

    def _repo_create(self) -> tuple[int, Any]:
        user = self._require_user()
        data = self._json() or {}
        name, organization = data.get("name"), data.get("organization")
        repo_type = data.get("type") or "model"
        if not name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) or repo_type not in URL_PREFIX:
            raise HubError(400, f"Invalid repo name or type: {name!r} / {repo_type!r}")
        namespace = organization or user.name
        if not user.can_write(namespace):
            raise HubError(403, f"You don't have the rights to create a repo under {namespace}")
        repo_id = f"{namespace}/{name}"
        visibility = data.get("visibility") or ("private" if data.get("private") else "public")
        with self.hub.lock:
            existing = self.hub.repos.get((repo_type, repo_id))
            if existing is not None:
                url = self._repo_url(existing)
                raise HubError(409, f"You already created this {repo_type} repo", headers={"X-Repo-Url": url})
            repo = Repo(repo_type, repo_id, private=visibility == "private", created_at=self.hub._tick())
            attributes = DEFAULT_GITATTRIBUTES.encode()
            repo.blobs[git_blob_id(attributes)] = attributes
            tree = {".gitattributes": Entry(len(attributes), git_blob_id(attributes))}
            repo.branches["main"] = self.hub._new_commit(repo, None, tree, "initial commit", "", user.name).id
            self.hub.repos[(repo_type, repo_id)] = repo
        self.record.repo = repo_id
        return 200, {"url": self._repo_url(repo), "name": repo_id, "id": repo_id}

    def _repo_delete(self) -> tuple[int, Any]:
        user = self._require_user()
        data = self._json() or {}
        repo_id = f"{data.get('organization') or user.name}/{data.get('name')}"
        key = (data.get("type") or "model", repo_id)
        self.record.repo = repo_id
        self._writable(key)
        with self.hub.lock:
            del self.hub.repos[key]
        return 200, {}

    def _settings(self, key: tuple[str, str]) -> tuple[int, Any]:
        repo = self._writable(key)
        data = self._json() or {}
        with self.hub.lock:
            if "visibility" in data:
                repo.private = data["visibility"] == "private"
            if "private" in data:
                repo.private = bool(data["private"])
        return 200, {"private": repo.private}

    def _validate_yaml(self) -> tuple[int, Any]:
        data = self._json() or {}
        try:
            _card_data(str(data.get("content", "")).encode())
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"Invalid YAML in README.md: {err}"}], "warnings": []}
        return 200, {"errors": [], "warnings": []}

    def _repo_info(self, key: tuple[str, str], revision: str | None) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self._readable(key)
            commit = self._revision(repo, revision or "main")
            blobs = _truthy((self.query.get("blobs") or [None])[0])
            siblings = []
            for path, entry in commit.tree.items():
                sibling: dict[str, Any] = {"rfilename": path}
                if blobs:
                    sibling.update(size=entry.size, blobId=entry.blob_id)
                    if entry.lfs_oid:
                        sibling["lfs"] = {"size": entry.size, "sha256": entry.lfs_oid, "pointerSize": entry.pointer_size}
                siblings.append(sibling)
            try:
                card = _card_data(repo.content(commit.tree["README.md"])) if "README.md" in commit.tree else None
            except yaml.YAMLError:
                card = None
            info: dict[str, Any] = {
                "_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24],
                "id": repo.repo_id,
                "author": repo.namespace,
                "sha": commit.id,
                "lastModified": _iso(commit.date),
                "createdAt": _iso(repo.created_at),
                "private": repo.private,
                "gated": False,
                "disabled": False,
                "downloads": 0,
                "likes": 0,
                "tags": [f"license:{card['license']}"] if card and "license" in card else [],
                "siblings": siblings,
                "usedStorage": sum(len(b) for b in repo.lfs.values()) + sum(len(b) for b in repo.blobs.values()),
            }
            if card is not None:
                info["cardData"] = card
            if repo.repo_type == "model":
                info["modelId"] = repo.repo_id
        expand = self.query.get("expand") or self.query.get("expand[]")
        if expand:
            info = {k: v for k, v in info.items() if k in set(expand) | {"_id", "id"}}
        return 200, info

    def _refs(self, key: tuple[str, str]) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self._readable(key)

            def refs(kind: str, names: dict[str, str]) -> list[dict[str, str]]:
                return [{"name": n, "ref": f"refs/{kind}/{n}", "targetCommit": c} for n, c in sorted(names.items())]

            return 200, {"branches": refs("heads", repo.branches), "tags": refs("tags", repo.tags),
                         "converts": [], "pullRequests": []}

    # ------------------------------------------------------------------ endpoints: reading trees

    def _entries(self, repo: Repo, commit: Commit, base: str, recursive: bool, expand: bool) -> list[dict[str, Any]]:
        """Tree listing below directory `base` ("" = root); a file path lists the file itself."""
        if base and base in commit.tree:
            items = [(base, commit.tree[base])]
            dirs: set[str] = set()
        else:
            prefix = f"{base}/" if base else ""
            items, dirs = [], set()
            for path, entry in commit.tree.items():
                if not path.startswith(prefix):
                    continue
                rel = path[len(prefix):].split("/")
                for depth in range(1, len(rel)):
                    if recursive or depth == 1:
                        dirs.add(prefix + "/".join(rel[:depth]))
                if recursive or len(rel) == 1:
                    items.append((path, entry))
            if base and not items and not dirs:
                raise HubError(404, f"Entry not found: {base}", code="EntryNotFound",
                               headers={"X-Repo-Commit": commit.id})
        ids = tree_ids(commit.tree) if dirs else {}
        out = [{"type": "directory", "oid": ids[d], "size": 0, "path": d} for d in dirs]
        out += [entry.api(path) for path, entry in items]
        out.sort(key=lambda e: (e["path"].rsplit("/", 1)[0] if "/" in e["path"] else "", e["type"] != "directory",
                                e["path"]))
        if expand:
            for e in out:
                last = repo.last_commit_touching(commit.id, e["path"])
                e["lastCommit"] = {"id": last.id, "title": last.title, "date": _iso(last.date)}
                if e["type"] == "file":
                    e["securityFileStatus"] = {"status": "safe", "avScan": {"virusFound": False, "virusNames": None},
                                               "pickleImportScan": None}
        return out

    def _paginate(self, items: list[Any], page_size: int) -> list[Any]:
        cursor = (self.query.get("cursor") or ["0"])[0]
        try:
            start = int(base64.urlsafe_b64decode(cursor.encode()).decode()) if cursor != "0" else 0
        except ValueError:
            raise HubError(400, "Invalid cursor") from None
        page = items[start:start + page_size]
        if start + page_size < len(items):
            params = {k: v[0] for k, v in self.query.items() if k != "cursor"}
            params["cursor"] = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
            link = f"{self._base()}{urlsplit(self.path).path}?{urlencode(params)}"
            self.resp_headers["Link"] = f'<{link}>; rel="next"'
        return page

    def _tree(self, key: tuple[str, str], revision: str, path: str) -> tuple[int, Any]:
        recursive = _truthy((self.query.get("recursive") or [None])[0])
        expand = _truthy((self.query.get("expand") or [None])[0])
        with self.hub.lock:
            repo = self._readable(key)
            commit = self._revision(repo, revision)
            entries = self._entries(repo, commit, path.strip("/"), recursive, expand)
        page_size = min(self.hub.tree_page_size, 50) if expand else self.hub.tree_page_size
        return 200, self._paginate(entries, page_size)

    def _paths_info(self, key: tuple[str, str], revision: str) -> tuple[int, Any]:
        content_type = self.headers.get("Content-Type", "")
        if "json" in content_type:
            data = self._json() or {}
            paths, expand = data.get("paths", []), bool(data.get("expand"))
        else:
            form = parse_qs(self.body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy((form.get("expand") or [None])[0])
        with self.hub.lock:
            repo = self._readable(key)
            commit = self._revision(repo, revision)
            ids = None
            out = []
            for path in paths:
                path = path.strip("/")
                if path in commit.tree:
                    item = commit.tree[path].api(path)
                elif any(p.startswith(path + "/") for p in commit.tree):
                    ids = ids or tree_ids(commit.tree)
                    item = {"type": "directory", "oid": ids[path], "size": 0, "path": path}
                else:
                    continue
                if expand:
                    last = repo.last_commit_touching(commit.id, path)
                    item["lastCommit"] = {"id": last.id, "title": last.title, "date": _iso(last.date)}
                out.append(item)
        return 200, out

    def _commits(self, key: tuple[str, str], revision: str) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self._readable(key)
            commit = self._revision(repo, revision)
            items = [{"id": c.id, "title": c.title, "message": c.message, "date": _iso(c.date),
                      "authors": [{"user": c.author, "avatar": ""}]} for c in repo.history(commit.id)]
        return 200, self._paginate(items, self.hub.tree_page_size)

    # ------------------------------------------------------------------ endpoints: writing

    def _branch_head(self, repo: Repo, revision: str) -> str:
        name = unquote(revision)
        name = name[len("refs/heads/"):] if name.startswith("refs/heads/") else name
        if name not in repo.branches:
            raise HubError(404, f"Invalid rev id: {name} (commits go to branches)", code="RevisionNotFound")
        return name

    def _preupload(self, key: tuple[str, str], revision: str) -> tuple[int, Any]:
        data = self._json() or {}
        with self.hub.lock:
            repo = self._writable(key)
            branch = self._branch_head(repo, revision)
            commit = repo.commits[repo.branches[branch]]
            # (a "gitIgnore" field is accepted and ignored: nothing is ever reported as shouldIgnore)
            gitattributes = repo.content(commit.tree[".gitattributes"]) if ".gitattributes" in commit.tree else None
            patterns = _lfs_patterns(gitattributes)
            files = []
            for f in data.get("files", []):
                path, size = f["path"], int(f["size"])
                sample = base64.b64decode(f.get("sample", ""))
                lfs = size > self.hub.regular_file_max or b"\0" in sample or any(_matches(p, path) for p in patterns)
                existing = commit.tree.get(path)
                oid = None
                if existing is not None:
                    oid = existing.lfs_oid if existing.lfs_oid is not None else existing.blob_id
                files.append({"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                              "oid": oid})
        return 200, {"files": files, "commitOid": commit.id}

    def _commit_payload(self) -> tuple[dict, str, list[dict]]:
        """The commit's NDJSON body: its header, the commit title, and the operation lines after the header."""
        if _truthy((self.query.get("create_pr") or [None])[0]):
            raise HubError(400, "hubserver: pull requests are not supported")
        try:
            lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        except ValueError as err:
            raise HubError(400, f"Invalid NDJSON: {err}") from None
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, "First line of the commit payload must be the header")
        header = lines[0].get("value") or {}
        title = str(header.get("summary") or "").strip()
        if not title:
            raise HubError(400, "Commit summary is required")
        return header, title, lines[1:]

    def _commit(self, key: tuple[str, str], revision: str) -> tuple[int, Any]:
        header, title, operations = self._commit_payload()
        with self.hub.lock:
            repo = self._writable(key)
            branch = self._branch_head(repo, revision)
            head = repo.branches[branch]
            parent_commit = header.get("parentCommit")
            if parent_commit and parent_commit != head:
                raise HubError(412, "A commit has happened since. Please refresh and try again.")
            tree = dict(repo.commits[head].tree)
            new_blobs: dict[str, bytes] = {}
            for line in operations:
                self._apply_operation(repo, tree, new_blobs, line.get("key"), line.get("value") or {})
            repo.blobs.update(new_blobs)
            commit = self.hub._new_commit(repo, head, tree, title, str(header.get("description") or ""),
                                          self.user.name if self.user else "anonymous")
            repo.branches[branch] = commit.id
        self.record.note = f"{len(operations)} ops -> {commit.id[:12]}"
        return 200, {"success": True, "commitOid": commit.id, "commitUrl": f"{self._repo_url(repo)}/commit/{commit.id}",
                     "hookOutput": "", "pullRequestUrl": None}

    def _apply_operation(self, repo: Repo, tree: dict[str, Entry], new_blobs: dict[str, bytes], op: Any,
                         value: dict) -> None:
        """One line of a commit payload applied to `tree` (a regular file's bytes go to `new_blobs`)."""
        path = str(value.get("path", "")).strip("/") if op != "deletedFolder" else str(value.get("path", ""))
        if op == "file":
            self._add_regular_file(tree, new_blobs, path, value)
        elif op == "lfsFile":
            self._add_large_file(repo, tree, path, value)
        elif op == "deletedFile":
            if path not in tree:
                raise HubError(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound")
            del tree[path]
        elif op == "deletedFolder":
            prefix = path.strip("/") + "/"
            doomed = [p for p in tree if p.startswith(prefix)]
            if not doomed:
                raise HubError(404, f"A folder with this name doesn't exist: {path}", code="EntryNotFound")
            for p in doomed:
                del tree[p]
        else:
            raise HubError(400, f"Unknown commit operation {op!r}")

    def _add_regular_file(self, tree: dict[str, Entry], new_blobs: dict[str, bytes], path: str, value: dict) -> None:
        content = base64.b64decode(value.get("content", "")) if value.get("encoding") == "base64" \
            else str(value.get("content", "")).encode()
        if not _valid_path(path):
            raise HubError(400, f"Invalid path: {path!r}")
        if len(content) > self.hub.regular_file_max:
            raise HubError(400, f"{path}: files larger than 10 MiB must be uploaded with LFS")
        if b"\0" in content[:8000]:
            raise HubError(400, f"{path}: binary files must be uploaded with LFS")
        blob_id = git_blob_id(content)
        new_blobs[blob_id] = content
        tree[path] = Entry(len(content), blob_id)

    def _add_large_file(self, repo: Repo, tree: dict[str, Entry], path: str, value: dict) -> None:
        oid = str(value.get("oid", ""))
        if not _valid_path(path):
            raise HubError(400, f"Invalid path: {path!r}")
        if value.get("algo", "sha256") != "sha256":
            raise HubError(422, f"{path}: LFS objects are named by sha256")
        size, xet_hash = self._large_object(repo, path, oid)
        if value.get("size") is not None and int(value["size"]) != size:
            raise HubError(422, f"{path}: size {value['size']} does not match LFS object ({size})")
        pointer = lfs_pointer(oid, size)
        tree[path] = Entry(size, git_blob_id(pointer), oid, len(pointer), xet_hash)

    def _large_object(self, repo: Repo, path: str, oid: str) -> tuple[int, str | None]:
        """(size, Xet hash or None) of the large object a commit names by sha256: uploaded to this repo's LFS store,
        or (Xet mode) a file the CAS holds whose reconstructed bytes really have that sha256."""
        if oid in repo.lfs:
            return len(repo.lfs[oid]), None
        found = self.hub.cas.find(oid) if self.hub.cas is not None and re.fullmatch(r"[0-9a-f]{64}", oid) else None
        if found is None:
            raise HubError(422, f"{path}: LFS object {oid} has not been uploaded to this repo")
        if not self.hub.cas.verified(found):
            raise HubError(422, f"{path}: the Xet file {found.xet_hash} does not have sha256 {oid}")
        return found.size, found.xet_hash

    def _tag_create(self, key: tuple[str, str], revision: str) -> tuple[int, Any]:
        data = self._json() or {}
        tag = str(data.get("tag") or "")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._/-]*", tag) or ".." in tag:
            raise HubError(400, f"Invalid tag name {tag!r}")
        with self.hub.lock:
            repo = self._writable(key)
            commit = self._revision(repo, revision)
            if tag in repo.tags:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = commit.id
        self.record.note = f"{tag} -> {commit.id[:12]}"
        return 200, {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": commit.id}

    def _tag_delete(self, key: tuple[str, str], tag: str) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self._writable(key)
            if tag not in repo.tags:
                raise HubError(404, f"Tag {tag} does not exist", code="RevisionNotFound")
            del repo.tags[tag]
        return 200, {}

    def _branch_create(self, key: tuple[str, str], branch: str) -> tuple[int, Any]:
        data = self._json() or {}
        with self.hub.lock:
            repo = self._writable(key)
            commit = self._revision(repo, str(data.get("startingPoint") or "main"))
            if branch in repo.branches:
                raise HubError(409, f"Branch {branch} already exists")
            repo.branches[branch] = commit.id
        return 200, {}

    def _branch_delete(self, key: tuple[str, str], branch: str) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self._writable(key)
            if branch not in repo.branches:
                raise HubError(404, f"Branch {branch} does not exist", code="RevisionNotFound")
            if branch == "main":
                raise HubError(403, "Cannot delete the default branch")
            del repo.branches[branch]
        return 200, {}

    # ------------------------------------------------------------------ endpoints: LFS

    def _lfs_batch(self, key: tuple[str, str]) -> tuple[int, Any]:
        data = self._json() or {}
        operation = data.get("operation")
        self.resp_headers["Content-Type"] = "application/vnd.git-lfs+json"
        if operation != "upload":
            raise HubError(400, f"hubserver: LFS operation {operation!r} not supported (downloads go via /resolve)")
        self.record.kind = "lfs_batch_upload"
        transfers = data.get("transfers") or ["basic"]
        if self.hub.cas is not None and "xet" in transfers:
            return self._lfs_batch_xet(key, data)
        if "basic" not in transfers:
            raise HubError(422, "hubserver only offers the 'basic' LFS transfer")
        with self.hub.lock:
            repo = self._writable(key)
            objects = []
            for obj in data.get("objects", []):
                oid, size = str(obj.get("oid", "")), int(obj.get("size", -1))
                item: dict[str, Any] = {"oid": oid, "size": size}
                if not re.fullmatch(r"[0-9a-f]{64}", oid) or size < 0:
                    item["error"] = {"code": 422, "message": "Invalid oid or size"}
                elif oid in repo.lfs:
                    if len(repo.lfs[oid]) != size:
                        item["error"] = {"code": 422, "message": f"Size mismatch for existing object {oid}"}
                    # else: already stored, no actions => the client skips the upload
                else:
                    item["authenticated"] = True
                    query = urlencode({"size": size, "sig": self.hub._sign(repo, oid, size)})
                    prefix = f"{self._base()}/__lfs"
                    item["actions"] = {
                        "upload": {"href": f"{prefix}/upload/{repo.repo_type}/{repo.repo_id}/{oid}?{query}",
                                   "expires_in": 3600},
                        "verify": {"href": f"{prefix}/verify/{repo.repo_type}/{repo.repo_id}", "expires_in": 3600},
                    }
                objects.append(item)
        self.record.note = f"{sum('actions' in o for o in objects)}/{len(objects)} to upload"
        return 200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"}

    def _lfs_batch_xet(self, key: tuple[str, str], data: dict) -> tuple[int, Any]:
        """A client offering "xet" gets it: the objects echoed without actions, since their bytes go to the CAS (with
        a xet-write-token), not to an LFS URL. huggingface_hub 2.4.0 never offers it (it uses Xet whenever hf_xet is
        installed, without asking); older clients and git-xet do."""
        with self.hub.lock:
            self._writable(key)
        objects = [{"oid": str(o.get("oid", "")), "size": int(o.get("size", -1))} for o in data.get("objects", [])]
        self.record.note = f"xet: {len(objects)} objects"
        return 200, {"transfer": "xet", "objects": objects, "hash_algo": "sha256"}

    def _lfs_put(self, key: tuple[str, str], oid: str) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self.hub.repos.get(key)
            size = int((self.query.get("size") or ["-1"])[0])
            sig = (self.query.get("sig") or [""])[0]
            if repo is None or not hmac.compare_digest(sig, self.hub._sign(repo, oid, size)):
                raise HubError(403, "SignatureDoesNotMatch")
        if len(self.body) != size:
            raise HubError(400, f"Expected {size} bytes, received {len(self.body)}")
        if hashlib.sha256(self.body).hexdigest() != oid:
            raise HubError(400, "sha256 of the uploaded content does not match the object id")
        with self.hub.lock:
            repo.lfs[oid] = self.body
        self.resp_headers["ETag"] = f'"{hashlib.md5(self.body).hexdigest()}"'
        self.record.note = f"{oid[:12]} {size} B"
        return 200, b""

    def _lfs_verify(self, key: tuple[str, str]) -> tuple[int, Any]:
        data = self._json() or {}
        with self.hub.lock:
            repo = self._writable(key)
            oid, size = str(data.get("oid", "")), int(data.get("size", -1))
            if oid not in repo.lfs or len(repo.lfs[oid]) != size:
                raise HubError(404, f"LFS object {oid} not found")
        return 200, {"message": "ok"}

    # ------------------------------------------------------------------ endpoints: Xet

    def _xet_token(self, key: tuple[str, str], revision: str, write: bool) -> tuple[int, Any]:
        """A short-lived CAS token, and where the CAS is. hf_xet reads the JSON body (casUrl, accessToken, exp);
        huggingface_hub reads the same from the X-Xet-* headers before a download. The local CAS checks no token:
        the Hub's checks are the ones made here (write access to upload, read access to download)."""
        cas = self.hub.cas
        if cas is None:
            raise HubError(404, "hubserver: this server does not offer Xet storage (Git LFS only)",
                           code="XetNotEnabled")
        with self.hub.lock:
            repo = self._writable(key) if write else self._readable(key)
            if not write:
                self._revision(repo, revision)
            elif not (revision == "None" and _truthy((self.query.get("create_pr") or [None])[0])):
                self._branch_head(repo, revision)  # (a PR's branch does not exist yet: "None" then)
        expires = int(time.time()) + self.hub.xet_token_ttl
        token = f"xet_{'write' if write else 'read'}_{secrets.token_urlsafe(18)}"
        self.resp_headers.update({"X-Xet-Cas-Url": cas.url, "X-Xet-Access-Token": token,
                                  "X-Xet-Token-Expiration": str(expires)})
        self.record.note = f"{'write' if write else 'read'} token for {repo.repo_id}"
        return 200, {"casUrl": cas.url, "accessToken": token, "exp": expires}

    # ------------------------------------------------------------------ endpoints: downloads

    def _resolve(self, key: tuple[str, str], revision: str, path: str, method: str) -> tuple[int, Any]:
        with self.hub.lock:
            repo = self._readable(key)
            commit = self._revision(repo, revision)
            self.resp_headers["X-Repo-Commit"] = commit.id
            entry = commit.tree.get(path)
            if entry is None:
                raise HubError(404, f"Entry not found: {path}", code="EntryNotFound",
                               headers={"X-Repo-Commit": commit.id})
        headers = self.resp_headers
        if entry.lfs_oid is not None:
            headers["ETag"] = f'"{entry.lfs_oid}"'
            headers["X-Linked-Etag"] = f'"{entry.lfs_oid}"'
            headers["X-Linked-Size"] = str(entry.size)
        else:
            headers["ETag"] = f'"{entry.blob_id}"'
        if entry.xet_hash is not None:
            # What makes huggingface_hub download with hf_xet from the CAS: the file's Xet hash, and where to get a
            # read token (the Link rel="xet-auth", else X-Xet-Refresh-Route). Clients without Xet, and ranged
            # reads (HfFileSystem), follow the redirect to the bridge, like the Hub's to its CAS bridge.
            token_url = f"{self._base()}/api/{repo.repo_type}s/{repo.repo_id}/xet-read-token/{commit.id}"
            headers["X-Xet-Hash"] = entry.xet_hash
            headers["Link"] = f'<{token_url}>; rel="xet-auth"'
            if self.hub.xet_bridge_host is not None:
                assert entry.lfs_oid is not None
                query = urlencode({"size": entry.size, "sig": self.hub._sign(None, entry.lfs_oid, entry.size)})
                port = self.hub._httpd.server_address[1] if self.hub._httpd else self.hub.port
                headers["Location"] = f"http://{self.hub.xet_bridge_host}:{port}/__xet/bridge/{entry.lfs_oid}?{query}"
                self.record.note = path
                return 302, b""
        headers["Accept-Ranges"] = "bytes"
        name = path.rsplit("/", 1)[-1]
        headers["Content-Disposition"] = f"inline; filename*=UTF-8''{quote(name)}; filename=\"{name}\""
        headers["Content-Type"] = "application/octet-stream"
        headers["Cache-Control"] = "private, max-age=0" if repo.private else "public, max-age=3600"
        self.record.note = path
        total = entry.size
        start, end, status = 0, total, 200
        range_header = self.headers.get("Range")
        if range_header:
            start, end = self._range(range_header, total)
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{total}"
            status = 206
        if method == "HEAD":  # no need to read (or reconstruct from the CAS) what is not sent
            headers["Content-Length"] = str(end - start)
            return status, b""
        return status, self.hub._read(repo, entry, start, end)

    def _xet_bridge(self, sha256: str, method: str) -> tuple[int, Any]:
        """The bytes of a CAS-stored file, at a signed URL /resolve handed out (no token: like a presigned URL)."""
        size = int((self.query.get("size") or ["-1"])[0])
        if not hmac.compare_digest((self.query.get("sig") or [""])[0], self.hub._sign(None, sha256, size)):
            raise HubError(403, "SignatureDoesNotMatch")
        found = self.hub.cas.find(sha256) if self.hub.cas is not None else None
        if found is None or found.size != size:
            raise HubError(404, "Not found in the CAS")
        self.record.note = f"{sha256[:12]} {size} B"
        start, end, status = 0, size, 200
        if self.headers.get("Range"):
            start, end = self._range(self.headers["Range"], size)
            self.resp_headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
            status = 206
        self.resp_headers["Accept-Ranges"] = "bytes"
        if method == "HEAD":
            self.resp_headers["Content-Length"] = str(end - start)
            return status, b""
        return status, self.hub.cas.read(found, start, end)

    def _range(self, range_header: str, total: int) -> tuple[int, int]:
        """[start, end) of a single-range Range header; 416 when unsatisfiable."""
        match = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", range_header)
        if not match or match.groups() == ("", ""):
            raise HubError(400, f"Unsupported Range header {range_header!r}")
        first, last = match.groups()
        if first == "":
            start, end = max(0, total - int(last)), total
        else:
            start, end = int(first), min(total - 1, int(last)) + 1 if last else total
        if start >= total or start >= end:
            self.resp_headers["Content-Range"] = f"bytes */{total}"
            raise HubError(416, "Requested Range Not Satisfiable")
        return start, end
