"""`mll23 verify hf://datasets/ORG/NAME@REVISION`: check a published release without downloading it.

- Large files (Parquet shards, tars, figures): size and sha256 from the Hub's own metadata (the tree with its LFS
  `sha256`) against manifest.json; nothing is downloaded for that.
- Small files (card, manifest, ledger, croissant, notes, the tars' card): downloaded, each capped at the size the
  local verify allows, then the checks of `mll23 verify` that need only them (card, version, ledger, croissant)
  run on that partial copy; every downloaded file's sha256 must be the manifest's.
- Images: a deterministic sample of whole row groups (default: enough for `sample` images, `--sample all`: every
  row group) read with HTTP range requests (pyarrow over huggingface_hub's HfFileSystem) after parquet_bounds'
  footer checks, decoded with the build's decoders and hashed against each row's `pixel_sha256`. Whole row groups,
  because a row group's image column is one read: a few hundred images cost a few row groups, not a few hundred.
- Refs: the revision is a tag or branch; a tag v{X.Y.Z} holds version X.Y.Z; a release with a tars' card has its
  `v{X.Y.Z}-webdataset` tag, whose tree holds the manifest's wds/ files.
- Last, only when everything above passed: a streaming `datasets.load_dataset` of the revision, in a child
  process, gives a row of every split.

The Hub's answers are untrusted like a release: names pass release_files' relpath rules, listed sizes are capped,
downloads stop at their cap, and a redirect is followed only without the token (the CAS bridge is another
origin). Every failure names the file.
"""

from __future__ import annotations

import hashlib
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urljoin

import numpy as np
from huggingface_hub import HfApi, HfFileSystem, constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile
from huggingface_hub.utils import build_hf_headers, get_session

from pipeline import __version__
from pipeline.untrusted.parquet_bounds import ParquetLimits, ParquetRefused, footer_checked, size_problem
from pipeline.release.layout import MANIFEST, NOTES_DIR, WDS_CARD, WDS_DIR, ManifestError, show
from pipeline.untrusted.files import MAX_ENTRIES, MAX_LISTED_FILE_BYTES, NOTES_CAP, TEXT_CAPS, ReleaseDir, load_manifest, relpath_problem
from pipeline.untrusted.formats import decode_image
from pipeline.untrusted.safetext import printable

_URL = re.compile(r"^hf://datasets/([A-Za-z0-9][A-Za-z0-9._-]{0,95})/([A-Za-z0-9][A-Za-z0-9._-]{0,95})@([A-Za-z0-9._/-]{1,200})$")
DEFAULT_SAMPLE = 300
SMALL_CAP = 16 << 20  # figures and other small files not in TEXT_CAPS
# The checks of `mll23 verify` that read only the small files.
SMALL_FILE_CHECKS = ("card", "croissant", "version")  # (ledger: against the rows, so not here)
_BLOCK = 256 << 10  # HfFileSystem read-ahead: footers and row groups are read in ranges of about this size


class RemoteError(Exception):
    """The URL or the Hub's answers cannot be used; the message says why."""


@dataclass
class RemoteReport:
    repo_id: str
    revision: str
    commit: str = ""
    failures: list[str] = field(default_factory=list)
    checked_by_metadata: int = 0  # large files checked against the Hub's sha256 without a byte read
    downloaded: dict[str, int] = field(default_factory=dict)  # small file -> bytes
    images_checked: int = 0
    rows_total: int = 0
    row_groups_read: int = 0


def parse_url(url: str) -> tuple[str, str]:
    match = _URL.match(url)
    if not match or ".." in url:
        raise RemoteError(f"{printable(url)} is not hf://datasets/ORG/NAME@REVISION")
    return f"{match.group(1)}/{match.group(2)}", match.group(3)


def release_urls(url: str, *, endpoint: str | None = None, token: str | None = None) -> list[str]:
    """hf://datasets/ORG/NAME (no revision): one URL per release tagged vX.Y.Z on the Hub, oldest first."""
    from pipeline.lifecycle.publish.plan import published_versions

    repo_id, _ = parse_url(f"{url}@main")
    api = HfApi(endpoint=(endpoint or constants.ENDPOINT).rstrip("/"), token=token or False)
    tags = {r.name: r.target_commit for r in api.list_repo_refs(repo_id, repo_type="dataset").tags}
    versions = published_versions(tags)
    if not versions:
        raise RemoteError(f"{repo_id} has no release tagged vX.Y.Z")
    return [f"{url}@v{v}" for v in versions]


def _is_small(rel: str) -> bool:
    return not rel.endswith((".parquet", ".tar"))


def _cap(rel: str) -> int:
    return TEXT_CAPS.get(rel) or (NOTES_CAP if rel.startswith(f"{NOTES_DIR}/") else SMALL_CAP)


def _tree(api: HfApi, repo_id: str, commit: str) -> tuple[dict[str, RepoFile], list[str]]:
    """The revision's files by path, and problems with what the Hub listed."""
    files: dict[str, RepoFile] = {}
    problems: list[str] = []
    for n, entry in enumerate(api.list_repo_tree(repo_id, recursive=True, revision=commit, repo_type="dataset")):
        if n >= MAX_ENTRIES:
            problems.append(f"the Hub lists more than {MAX_ENTRIES:,} entries: the rest were not looked at")
            break
        if not isinstance(entry, RepoFile):
            continue
        problem = relpath_problem(entry.path)
        if problem:
            problems.append(f"{show(entry.path)}: file name on the Hub {problem}")
        elif not isinstance(entry.size, int) or not 0 <= entry.size <= MAX_LISTED_FILE_BYTES:
            problems.append(f"{show(entry.path)}: the Hub lists an impossible size {show(entry.size)}")
        else:
            files[entry.path] = entry
    return files, problems


def _download(api: HfApi, token: str | None, repo_id: str, commit: str, rel: str, cap: int) -> bytes:
    """The file's bytes at `commit`, at most `cap`; a redirect is followed once, without the token."""
    url = f"{api.endpoint}/datasets/{repo_id}/resolve/{commit}/{quote(rel)}"
    headers = build_hf_headers(token=token, library_name="mll23-pipeline", library_version=__version__)
    session = get_session()
    for hop in range(2):
        with session.stream("GET", url, headers=headers, follow_redirects=False) as response:
            if response.is_redirect and hop == 0:
                url = urljoin(url, response.headers.get("Location", ""))
                headers = {"User-Agent": headers.get("user-agent", "mll23-pipeline")}  # no token past the Hub
                continue
            if response.status_code != 200:
                raise RemoteError(f"{show(rel)}: the Hub answered HTTP {response.status_code}")
            data = bytearray()
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > cap:
                    raise RemoteError(f"{show(rel)}: longer than the limit of {cap:,} bytes: not read")
            return bytes(data)
    raise RemoteError(f"{show(rel)}: redirected more than once")


def _metadata_problems(manifest: dict, tree: dict[str, RepoFile], prefix: str = "") -> Iterator[tuple[str, str]]:
    """Every manifest file (under `prefix`, stripped on the Hub side) on the Hub with its size, and the large
    ones with the manifest's sha256 as the Hub records it; nothing on the Hub the manifest does not list.
    Yields (manifest path, message)."""
    listed = {item["path"][len(prefix):]: item for item in manifest["files"] if item["path"].startswith(prefix)}
    for rel, item in sorted(listed.items()):
        entry = tree.get(rel)
        if entry is None:
            yield prefix + rel, f"{prefix}{show(rel)}: in manifest.json but not on the Hub"
        elif entry.size != item["size"]:
            yield prefix + rel, f"{prefix}{show(rel)}: {entry.size:,} bytes on the Hub, manifest.json says {item['size']:,}"
        elif not _is_small(rel) and (entry.lfs is None or entry.lfs.sha256 != item["sha256"]):
            got = entry.lfs.sha256[:12] if entry.lfs is not None else "none (not stored as a large file)"
            yield prefix + rel, f"{prefix}{show(rel)}: sha256 on the Hub {show(got)}, manifest.json says {item['sha256'][:12]}"
    for rel in sorted(set(tree) - set(listed) - {MANIFEST, ".gitattributes"}):
        yield rel, f"{show(rel)}: on the Hub but not listed in manifest.json"


def _sample_groups(shards: dict[str, list[int]], sample: int | None) -> list[tuple[str, int]]:
    """(shard, row group) in a fixed pseudo-random order (sha256 of the name), enough for `sample` rows (None:
    all of them)."""
    groups = sorted(((s, g) for s, sizes in shards.items() for g in range(len(sizes))),
                    key=lambda sg: hashlib.sha256(f"{sg[0]}#{sg[1]}".encode()).hexdigest())
    if sample is None:
        return sorted(groups)
    chosen, rows = [], 0
    for shard, group in groups:
        if rows >= sample:
            break
        chosen.append((shard, group))
        rows += shards[shard][group]
    return sorted(chosen)


def _image_problems(report: RemoteReport, fs: HfFileSystem, repo_id: str, commit: str, shards: list[str],
                    sample: int | None, limits: ParquetLimits) -> Iterator[str]:
    opened = {}
    sizes: dict[str, list[int]] = {}
    for rel in shards:
        fh = fs.open(f"datasets/{repo_id}@{commit}/{rel}", "rb", block_size=_BLOCK)
        try:
            parquet = footer_checked(fh, limits)
            problem = size_problem(parquet.metadata, limits)
        except (ParquetRefused, OSError, ValueError) as exc:
            yield f"{show(rel)}: {exc}"
            continue
        if problem:
            yield f"{show(rel)}: {problem}: not read"
            continue
        names = parquet.schema_arrow.names
        if "image" not in names or "pixel_sha256" not in names:
            yield f"{show(rel)}: no image or pixel_sha256 column"
            continue
        opened[rel] = parquet
        sizes[rel] = [parquet.metadata.row_group(g).num_rows for g in range(parquet.metadata.num_row_groups)]
        report.rows_total += parquet.metadata.num_rows
    for rel, group in _sample_groups(sizes, sample):
        table = opened[rel].read_row_group(group, columns=["image", "pixel_sha256"])
        report.row_groups_read += 1
        for i, (image, expected) in enumerate(zip(table.column("image").to_pylist(),
                                                  table.column("pixel_sha256").to_pylist())):
            where = f"{show(rel)} row group {group} row {i}"
            try:
                pixels, _ = decode_image((image or {}).get("bytes") or b"")
            except Exception as exc:  # an image the build's decoders refuse is a failure of that row
                yield f"{where}: the image does not decode ({printable(exc, limit=200)})"
                continue
            digest = hashlib.sha256(np.ascontiguousarray(pixels).tobytes()).hexdigest()
            report.images_checked += 1
            if digest != expected:
                yield f"{where}: the image's pixels hash to {digest[:16]}..., the row says {show(expected)[:16]}..."


def _ref_problems(api: HfApi, repo_id: str, revision: str, manifest: dict,
                  tags: dict[str, str]) -> Iterator[str]:
    version = manifest.get("version")
    if revision.startswith("v") and revision[1:] != version and revision in tags:
        yield f"tag {show(revision)} holds manifest.json of version {show(version)}"
    if f"v{version}" not in tags:
        yield f"version {show(version)} is not tagged v{show(version)}"
    if any(item["path"] == WDS_CARD for item in manifest["files"]):
        wds_tag = f"v{version}-webdataset"
        if wds_tag not in tags:
            yield f"the release has wds/README.md but no tag {show(wds_tag)}"
        else:
            wds_tree, problems = _tree(api, repo_id, tags[wds_tag])
            yield from problems
            for _, problem in _metadata_problems(manifest, wds_tree, prefix=f"{WDS_DIR}/"):
                yield f"{wds_tag}: {problem}"


_SMOKE = r"""
import json, os, sys
import datasets
repo, commit = sys.argv[1], sys.argv[2]
out = {}
streamed = datasets.load_dataset(repo, revision=commit, streaming=True)
for split, ds in streamed.items():
    row = next(iter(ds.cast_column("image", datasets.Image(decode=False))))
    out[split] = [row["image_id"], len(row["image"]["bytes"] or b"")]
print("RESULT " + json.dumps(out), flush=True)
os._exit(0)  # streaming readers' threads can abort the interpreter's shutdown ("terminate called ...")
"""


def _streaming_problems(repo_id: str, commit: str, endpoint: str, token: str | None, manifest: dict) -> Iterator[str]:
    """`datasets.load_dataset(repo, revision=commit, streaming=True)` as a consumer runs it (after the card
    check: its configs name only the release's shards), in a child process whose environment points datasets at
    `endpoint` (datasets reads HF_ENDPOINT once, at import): every split of the manifest with rows gives a row."""
    import json
    import os
    import subprocess
    import sys

    how = f"datasets.load_dataset({repo_id!r}, revision={commit[:12]!r}, streaming=True)"
    with tempfile.TemporaryDirectory(prefix="mll23-smoke-") as home:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
        env.update({"HF_ENDPOINT": endpoint, "HF_HOME": home, "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_TELEMETRY": "1"})
        if token:
            env["HF_TOKEN"] = token
        try:
            proc = subprocess.run([sys.executable, "-c", _SMOKE, repo_id, commit], env=env, capture_output=True,
                                  text=True, timeout=600, cwd=home)
        except subprocess.TimeoutExpired:
            yield f"{how} did not finish in 10 minutes"
            return
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        yield f"{how} fails: {printable(last, limit=300)}"
        return
    got = json.loads(line[len("RESULT "):])
    expected = sorted(s for s, v in manifest.get("splits", {}).items() if v.get("num_examples"))
    if sorted(got) != expected:
        yield f"{how} gives splits {sorted(got)}, the manifest has {expected}"
    for split, (image_id, size) in sorted(got.items()):
        if not size:
            yield f"{how}: the first {split} row ({show(image_id)}) has no image bytes"


def verify_remote(url: str, *, endpoint: str | None = None, token: str | None = None,
                  sample: int | None = DEFAULT_SAMPLE, log: Callable[[str], None] = lambda _: None,
                  limits: ParquetLimits | None = None, smoke: bool = True) -> RemoteReport:
    """Check the release at `url` (hf://datasets/ORG/NAME@REVISION) as described in the module docstring."""
    repo_id, revision = parse_url(url)
    endpoint = (endpoint or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token or False, library_name="mll23-pipeline", library_version=__version__)
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tags = {r.name: r.target_commit for r in refs.tags}
    commit = tags.get(revision) or {r.name: r.target_commit for r in refs.branches}.get(revision)
    if commit is None:
        raise RemoteError(f"{repo_id} has no tag or branch {printable(revision)}")
    report = RemoteReport(repo_id, revision, commit)
    tree, report.failures = _tree(api, repo_id, commit)
    if MANIFEST not in tree:
        report.failures.append(f"{MANIFEST}: not on the Hub at {revision}")
        return report
    with tempfile.TemporaryDirectory(prefix="mll23-remote-") as tmp:
        local = Path(tmp)
        manifest = _fetch_small_files(api, token, report, tree, local)
        if manifest is None:
            return report
        mismatched = dict(_metadata_problems(manifest, tree))
        report.failures += list(mismatched.values())
        report.checked_by_metadata = sum(1 for item in manifest["files"] if not _is_small(item["path"]))
        log(f"{report.checked_by_metadata} large files checked against the Hub's sha256; "
            f"{len(report.downloaded)} small files downloaded ({sum(report.downloaded.values()):,} B)")
        report.failures += _small_file_checks(local)
    report.failures += list(_ref_problems(api, repo_id, revision, manifest, tags))
    # only shards the Hub records as the manifest's: the others already failed, by name
    shards = sorted(i["path"] for i in manifest["files"]
                    if i["path"].endswith(".parquet") and i["path"] in tree and i["path"] not in mismatched)
    fs = HfFileSystem(endpoint=endpoint, token=token or False, skip_instance_cache=True)
    report.failures += list(_image_problems(report, fs, repo_id, commit, shards, sample, limits or ParquetLimits()))
    log(f"{report.images_checked} images in {report.row_groups_read} row groups decoded against pixel_sha256"
        f" (of {report.rows_total} rows)")
    if smoke and not report.failures:  # the loader runs only on a release that passed every check before it
        report.failures += list(_streaming_problems(repo_id, commit, endpoint, token, manifest))
        log("streaming load_dataset smoke test done")
    return report


def _fetch_small_files(api: HfApi, token: str | None, report: RemoteReport, tree: dict[str, RepoFile],
                       local: Path) -> dict | None:
    """manifest.json and every small file it lists, into `local` (a partial release); None without a manifest."""
    def fetch(rel: str, cap: int) -> bytes | None:
        try:
            data = _download(api, token, report.repo_id, report.commit, rel, cap)
        except (RemoteError, HfHubHTTPError, OSError) as exc:
            report.failures.append(printable(str(exc), limit=400))
            return None
        report.downloaded[rel] = len(data)
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
        return data

    if fetch(MANIFEST, TEXT_CAPS[MANIFEST]) is None:
        return None
    try:
        manifest = load_manifest(ReleaseDir(local))
    except ManifestError as exc:
        report.failures.append(printable(f"{MANIFEST} on the Hub: {exc}", limit=2000))
        return None
    for item in manifest["files"]:
        rel = item["path"]
        if _is_small(rel) and rel in tree:
            data = fetch(rel, min(_cap(rel), item["size"]))
            if data is not None and hashlib.sha256(data).hexdigest() != item["sha256"]:
                report.failures.append(f"{show(rel)}: sha256 of the Hub's file differs from manifest.json")
    return manifest


def _small_file_checks(local: Path) -> list[str]:
    """`mll23 verify`'s checks that need only the small files, on the partial copy."""
    from pipeline.lifecycle.verify import CHECKS, run_checks

    skip = [c.name for c in CHECKS if c.name not in SMALL_FILE_CHECKS]
    return [str(f) for r in run_checks(local, skip=skip) for f in r.failures]

