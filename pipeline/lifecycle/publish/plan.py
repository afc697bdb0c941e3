"""Deciding what a publish does: which branch and tag each part of a release goes to, what the Hub lacks.

Read-only. For a release directory and a dataset repo it decides: the branch (main only moves forward in
version; an older version goes to its line branch v{X.Y}.x), the tag ``v{version}``, the WebDataset variant's
own branch and tag when the release has ``wds/README.md`` (see pipeline.lifecycle.publish.steps), where a
missing branch starts, and per file whether that exact content is already on the branch (LFS sha256 for LFS
files, git blob sha1 for small ones), stored elsewhere in the repo (committed as a copy, nothing sent) or to be
sent, and which branch files are not in the release. It reads the Hub only through the public
`huggingface_hub` API (`repo_info`, `list_repo_refs`, `list_repo_tree`, `list_repo_commits`); sending is
pipeline.lifecycle.publish.transport's job. `read_manifest` and `self_check` are the release side: what the
plan trusts, checked against the files first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import HfApi
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from pipeline.lifecycle.verify import listed_file_problems
from pipeline.release.layout import (
    CARD,
    MANIFEST,
    SEMVER,
    WDS_DIR,
    ManifestError,
    VersionError,
    version_key as semver_key,
)
from pipeline.untrusted.files import PUBLISH_KEYS, TEXT_CAPS, ReleaseDir, ReleaseFileError, load_manifest
from pipeline.untrusted.safetext import printable

REPO_TYPE = "dataset"
DEFAULT_BRANCH = "main"
# Files the Hub writes itself (the first commit of every repo): not part of a release, never deleted.
HUB_MANAGED = frozenset({".gitattributes"})
# The WebDataset variant (see pipeline.lifecycle.publish.steps): the release's WDS_DIR folder, its branch and tag suffix.
WDS_BRANCH = "webdataset"
WDS_TAG_SUFFIX = "-webdataset"
_CHUNK = 1 << 20


class PublishError(RuntimeError):
    """A publish was refused or failed. The message is safe to print: it never contains the token."""


@dataclass(frozen=True)
class PlannedFile:
    path: str  # POSIX path inside the release and the repo
    size: int
    sha256: str
    on_hub: bool  # the target branch already has exactly this content at this path
    replaces: bool = False  # the branch has this path with other content
    # (revision, path) of a large file with this sha256 elsewhere in the repo: committed as a copy, nothing sent
    copy_from: tuple[str, str] | None = None

    @property
    def status(self) -> str:
        if self.on_hub:
            return "already on Hub"
        if self.copy_from is not None:
            return "stored (copy)"
        return "new (changed)" if self.replaces else "new"

    @property
    def cost(self) -> int:
        """Bytes this file sends: none when the Hub has it, here or elsewhere in the repo."""
        return 0 if self.on_hub or self.copy_from is not None else self.size


@dataclass(frozen=True)
class FileSource:
    """What one branch should hold: a local directory and every file under it with its manifest size/sha256."""

    root: Path
    files: dict[str, tuple[int, str]]  # POSIX path relative to `root` (and in the repo) -> (size, sha256), sorted
    release: Path | None = None  # the release directory `root` is in (default: root itself)
    prefix: str = ""  # `root` relative to `release`, with a trailing slash ("wds/"), or ""

    @contextmanager
    def open(self, path: str) -> Iterator:
        """A file of this source, opened only through pipeline.untrusted.files (no links, no hard links, no
        special files, no more than the manifest's size): what is uploaded is what was checked."""
        size = self.files[path][0]
        with ReleaseDir(self.release or self.root).open(self.prefix + path, max_bytes=size, allow_hard_links=False) as fh:
            yield fh


@dataclass(frozen=True)
class PublishTarget:
    """One branch of the repo, the tag that marks a published version on it, and the files it should hold."""

    branch: str
    tag: str
    source: FileSource


@dataclass
class PublishPlan:
    """What publishing `release_dir` to `repo_id` would do, from one read of the Hub."""

    release_dir: Path  # the directory whose files the branch should hold (the release, or its wds/ folder)
    repo_id: str
    version: str
    branch: str
    files: list[PlannedFile]  # every release file, manifest.json included, sorted by path
    deletions: list[str]  # paths on the branch that are not in the release (Hub-managed files excepted)
    repo_exists: bool
    private: bool | None  # visibility of the existing repo; None when it does not exist yet
    head: str | None  # commit id of the branch the plan was made against
    tag_commit: str | None  # commit the tag v{version} points at, if it exists
    tag_matches: bool | None  # whether that commit holds exactly the release; None if there is no tag
    tag: str  # v{version}, or v{version}-webdataset for the WebDataset branch

    @property
    def to_upload(self) -> list[PlannedFile]:
        return [f for f in self.files if not f.on_hub]

    @property
    def already_on_hub(self) -> list[PlannedFile]:
        return [f for f in self.files if f.on_hub]

    @property
    def to_send(self) -> list[PlannedFile]:
        """Files whose bytes go up (the others on the branch already, or copied from elsewhere in the repo)."""
        return [f for f in self.to_upload if f.copy_from is None]

    @property
    def upload_bytes(self) -> int:
        return sum(f.cost for f in self.files)

    @property
    def branch_matches(self) -> bool:
        """The branch already holds exactly the release."""
        return self.repo_exists and not self.to_upload and not self.deletions

    def lines(self) -> list[str]:
        """The plan, one line per file, for printing."""
        if not self.repo_exists:
            head = f"dataset repo {self.repo_id} does not exist yet: it will be created"
        else:
            head = f"dataset repo {self.repo_id} ({'private' if self.private else 'public'}), branch {self.branch}"
            if self.head is None:
                head += " (does not exist yet: it will be created)"
        out = [f"plan: publish {self.release_dir} as {self.tag} to {head}"]
        if self.tag_commit is not None:
            state = "same content: nothing to do" if self.tag_matches else "DIFFERENT content: will refuse"
            out.append(f"  tag {self.tag} already exists at {self.tag_commit[:12]} ({state})")
        width = max((len(f.status) for f in self.files), default=0)
        for f in self.files:
            out.append(f"  {f.status:<{width}}  {human_size(f.cost):>9}  {f.path}")
        for path in self.deletions:
            out.append(f"  {'delete':<{width}}  {'':>9}  {path}")
        out.append(
            f"  {len(self.to_send)} to upload ({human_size(self.upload_bytes)}), {len(self.to_upload) - len(self.to_send)}"
            f" stored elsewhere in the repo (copied, 0 B), {len(self.already_on_hub)} already on Hub,"
            f" {len(self.deletions)} to delete"
        )
        return out


# ----------------------------------------------------------------------------------------------------- local side


def _git_blob_id(source: FileSource, path: str) -> str:
    """git's object id for the file's content, the id the Hub reports for files not stored with LFS."""
    digest = hashlib.sha1(b"blob %d\0" % source.files[path][0])
    with source.open(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def human_size(n: int) -> str:
    """A byte count for people: 950 B, 1.2 kB, 3.4 MB."""
    value = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{n} B"


def read_manifest(release_dir: Path) -> dict:
    """manifest.json, size-capped and of the manifest schema as far as publishing needs (version, files)."""
    try:
        return load_manifest(ReleaseDir(Path(release_dir)), required=PUBLISH_KEYS)
    except ManifestError as err:
        raise PublishError(printable(f"{release_dir}: {err}", limit=2000)) from None


def self_check(release_dir: Path) -> list[str]:
    """The file check of `mll23 verify` (pipeline.lifecycle.verify.listed_file_problems), stricter for publishing:
    every file manifest.json lists is present, regular, with the listed size and sha256; there is no file it does
    not list, no link, no special file and no hard link (one may be a file from outside the release, such as the
    token file). Returns failures. The one pass over every byte of a publish: `mll23 publish` then runs the other
    checks of verify without its file check."""
    try:
        manifest = read_manifest(release_dir)
        problems = listed_file_problems(release_dir, manifest, allow_hard_links=False)
    except (PublishError, OSError) as err:
        return [printable(err, limit=2000)]
    return [printable(m, limit=2000) for m in problems]


def card_repo_problem(manifest: dict, repo_id: str) -> str | None:
    """Why the release may not go to ``repo_id``: its card's snippets load from another repository (the config's
    [card] repo_id, or `mll23 build --repo`), so consumers would copy code that loads some other dataset. None
    when the card names this repository or none (then it shows how to load a local copy only)."""
    card = manifest.get("config", {}).get("card", {}) if isinstance(manifest.get("config"), dict) else {}
    named = card.get("repo_id") if isinstance(card, dict) else None
    if not isinstance(named, str) or named == repo_id:
        return None
    return (f"the release's card loads from {printable(named, limit=200)!s}, not {printable(repo_id, limit=200)!s}: "
            f"publish it to {printable(named, limit=200)!s}, or rebuild with --repo {printable(repo_id, limit=200)!s}")


def release_source(release_dir: Path, manifest: dict) -> FileSource:
    """Every file of the release, manifest.json included (the manifest is trusted for the others: `publish` has
    checked it against the files before planning)."""
    files = {item["path"]: (int(item["size"]), str(item["sha256"])) for item in manifest["files"]}
    try:
        files[MANIFEST] = ReleaseDir(Path(release_dir)).hash(MANIFEST, max_bytes=TEXT_CAPS[MANIFEST], allow_hard_links=False)
    except ReleaseFileError as err:
        raise PublishError(printable(err, limit=2000)) from None
    return FileSource(release_dir, dict(sorted(files.items())))


def webdataset_source(release_dir: Path, manifest: dict) -> FileSource | None:
    """The manifest's wds/ entries with the `wds/` prefix stripped, rooted at release_dir/wds; None when the
    release has no WebDataset card (wds/README.md), the file that makes the folder loadable on its own."""
    prefix = f"{WDS_DIR}/"
    files = {
        item["path"][len(prefix):]: (int(item["size"]), str(item["sha256"]))
        for item in manifest["files"]
        if item["path"].startswith(prefix)
    }
    if CARD not in files:
        return None
    return FileSource(Path(release_dir) / WDS_DIR, dict(sorted(files.items())), Path(release_dir), prefix)


def version_key(version: str) -> tuple:
    """Semantic-version order (layout.version_key, the one definition), failing as a publish error."""
    try:
        return semver_key(version)
    except VersionError:
        raise PublishError(f"{printable(version)} is not a semantic version X.Y.Z") from None


def published_versions(tags: dict[str, str]) -> list[str]:
    """The versions tagged v{X.Y.Z} (WebDataset tags and other tags left out), oldest first."""
    found = [name[1:] for name in tags
             if name.startswith("v") and not name.endswith(WDS_TAG_SUFFIX) and SEMVER.match(name[1:])]
    return sorted(found, key=version_key)


def line_branch(version: str) -> str:
    """The branch of a release line: v1.0.x holds the newest 1.0 patch published after a newer line moved main."""
    major, minor = version_key(version)[:2]
    return f"v{major}.{minor}.x"


def choose_branch(version: str, tags: dict[str, str]) -> str:
    """`main` for a version newer than every published one, so main only moves forward; otherwise the line
    branch v{X.Y}.x, which moves forward too: a version older than a published patch of its own line is refused.
    A version already tagged stays where its tag is (the publish is then a no-op or refused)."""
    others = [v for v in published_versions(tags) if v != version]
    key = version_key(version)
    if all(version_key(v) < key for v in others):
        return DEFAULT_BRANCH
    newer_in_line = [v for v in others if version_key(v)[:2] == key[:2] and version_key(v) > key]
    if newer_in_line and f"v{version}" not in tags:
        raise PublishError(
            f"{version} is older than {newer_in_line[-1]}, already published in the same {key[0]}.{key[1]} line;"
            " a line only moves forward: publish the fix as a newer patch version"
        )
    return line_branch(version)


def publish_targets(release_dir: Path, manifest: dict, tags: dict[str, str] | None = None) -> list[PublishTarget]:
    """The branches a publish writes, in order: the release (main, or its line branch when `tags` show a newer
    version published), then the WebDataset variant if any (webdataset, or {line branch}-webdataset)."""
    version = manifest["version"]
    branch = choose_branch(version, tags or {})
    targets = [PublishTarget(branch, f"v{version}", release_source(release_dir, manifest))]
    wds = webdataset_source(release_dir, manifest)
    if wds is not None:
        wds_branch = WDS_BRANCH if branch == DEFAULT_BRANCH else f"{branch}{WDS_TAG_SUFFIX}"
        targets.append(PublishTarget(wds_branch, f"v{version}{WDS_TAG_SUFFIX}", wds))
    return targets


def branch_start(target: PublishTarget, tags: dict[str, str], first_commit: Callable[[], str]) -> str:
    """Where a missing branch starts: a line branch from the newest published tag of its line (its history
    continues that release); main, webdataset and a line never tagged from the repo's first commit."""
    if target.branch in (DEFAULT_BRANCH, WDS_BRANCH):
        return first_commit()
    suffix = WDS_TAG_SUFFIX if target.tag.endswith(WDS_TAG_SUFFIX) else ""
    line = version_key(target.tag[1:].removesuffix(WDS_TAG_SUFFIX))[:2]
    for version in reversed(published_versions(tags)):
        if version_key(version)[:2] == line and f"v{version}{suffix}" in tags:
            return tags[f"v{version}{suffix}"]
    return first_commit()


# ------------------------------------------------------------------------------------------------------ Hub side


def _remote_tree(api: HfApi, repo_id: str, revision: str) -> dict[str, RepoFile]:
    return {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=REPO_TYPE)
        if isinstance(entry, RepoFile)
    }


def _stored_objects(api: HfApi, repo_id: str, commits: list[str], read: dict[str, dict[str, RepoFile]]
                    ) -> dict[str, tuple[str, str]]:
    """sha256 -> (commit, path) of every large (LFS/Xet) file in the trees of `commits` (the repo's branch heads
    and tags): objects the repo's store holds, which a commit can name without sending a byte. Objects uploaded
    by a killed run but never committed are not in any tree; the upload itself finds those (see
    pipeline.lifecycle.publish.transport)."""
    stored: dict[str, tuple[str, str]] = {}
    for commit in dict.fromkeys(commits):
        tree = read.get(commit)
        if tree is None:
            tree = _remote_tree(api, repo_id, commit)
        for path, entry in sorted(tree.items()):
            if entry.lfs is not None and entry.lfs.sha256 not in stored:
                stored[entry.lfs.sha256] = (commit, path)
    return stored


def _same_content(source: FileSource, path: str, remote: RepoFile | None) -> bool:
    size, sha256 = source.files[path]
    if remote is None or remote.size != size:
        return False
    if remote.lfs is not None:  # LFS: the Hub knows the content's sha256
        return remote.lfs.sha256 == sha256
    return remote.blob_id == _git_blob_id(source, path)  # small file kept in git: compare git blob ids


def _tree_equals_source(source: FileSource, tree: dict[str, RepoFile]) -> bool:
    remote_paths = set(tree) - HUB_MANAGED
    if remote_paths != set(source.files):
        return False
    return all(_same_content(source, p, tree[p]) for p in source.files)


def plan_publish(release_dir: Path, repo_id: str, *, api: HfApi, branch: str = DEFAULT_BRANCH,
                 target: PublishTarget | None = None) -> PublishPlan:
    """Compare the release with the Hub (read-only): which files the branch already has with identical content,
    which branch files the release no longer has, and whether the tag exists and matches. Without `target` the
    whole release goes to `branch` under tag v{version}; a target (see `publish_targets`) names its own branch,
    tag and files."""
    release_dir = Path(release_dir)
    manifest = read_manifest(release_dir)
    version = manifest["version"]
    if target is None:
        target = PublishTarget(branch, f"v{version}", release_source(release_dir, manifest))
    branch, source = target.branch, target.source
    local = source.files
    try:
        info = api.repo_info(repo_id, repo_type=REPO_TYPE)
    except RepositoryNotFoundError:
        files = [PlannedFile(p, size, sha, on_hub=False) for p, (size, sha) in local.items()]
        return PublishPlan(source.root, repo_id, version, branch, files, [], False, None, None, None, None,
                           target.tag)

    refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    heads = {ref.name: ref.target_commit for ref in refs.branches}
    tags = {ref.name: ref.target_commit for ref in refs.tags}
    head = heads.get(branch)
    remote = _remote_tree(api, repo_id, head) if head else {}
    stored = _stored_objects(api, repo_id, [*heads.values(), *tags.values()], {head: remote} if head else {})
    files = []
    for path, (size, sha) in local.items():
        on_hub = _same_content(source, path, remote.get(path))
        files.append(PlannedFile(path, size, sha, on_hub=on_hub, replaces=not on_hub and path in remote,
                                 copy_from=None if on_hub else stored.get(sha)))
    deletions = sorted(set(remote) - set(local) - HUB_MANAGED)

    tag_commit = tags.get(target.tag)
    tag_matches = None
    if tag_commit is not None:
        tag_tree = remote if tag_commit == head else _remote_tree(api, repo_id, tag_commit)
        tag_matches = _tree_equals_source(source, tag_tree)
    return PublishPlan(source.root, repo_id, version, branch, files, deletions, True, bool(info.private), head,
                       tag_commit, tag_matches, target.tag)


def repo_tags(api: HfApi, repo_id: str) -> dict[str, str]:
    """Tag name -> commit of an existing repo; {} when it does not exist yet."""
    try:
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    except RepositoryNotFoundError:
        return {}
    return {ref.name: ref.target_commit for ref in refs.tags}


def repo_first_commit(api: HfApi, repo_id: str) -> str:
    """The repo's first commit (on the Hub it holds only the Hub-managed .gitattributes)."""
    return api.list_repo_commits(repo_id, repo_type=REPO_TYPE, revision=DEFAULT_BRANCH)[-1].commit_id
