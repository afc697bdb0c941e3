"""Publish a release directory to the Hugging Face Hub as a dataset repo, tagged ``v{version}``.

With `pipeline.lifecycle.publish.transport` (the transport), the only code that touches the network. It uses the public
`huggingface_hub` API (`HfApi`): `repo_info`, `list_repo_refs`, `list_repo_tree`, `create_repo`, `create_branch`,
`preupload_lfs_files`, `create_commit` and `create_tag`.

A publish goes: verify the release (the caller's `verify` plus a self-check of manifest.json against the files)
-> read the Hub (repo, refs, the target branch's tree) -> choose the branch (main only moves forward in version;
an older version goes to its line branch v{X.Y}.x) -> plan: for every release file, is that exact content
already on the branch (LFS sha256 for LFS files, git blob sha1 for small ones), and which branch files are not in
the release -> upload every missing large object, then ONE commit with every addition and deletion -> check the
branch now equals the release -> tag that commit ``v{version}``.

Atomic: a branch moves from the old release to the new one in one commit, so `load_dataset` on it sees one or
the other, never a mix. Re-running after an interruption sends only what the server lacks: objects uploaded by a
killed run are in the repo's store (LFS: the batch API tells the client not to send them; Xet: hf_xet's dedup
finds their chunks), a commit that landed before its tag makes the branch match, and only the tag is made. A tag
is never moved: if ``v{version}`` exists and holds the same content the publish is a no-op; if it holds other
content the publish refuses.

The WebDataset variant: when the release has ``wds/README.md``, the ``wds/`` subtree is published the same way
(same planner, one commit, same checks) as the root of branch ``webdataset`` (of ``v{X.Y}.x-webdataset`` for an
older line), tagged ``v{version}-webdataset``, after the release's own branch is tagged. It needs a revision of
its own because `datasets` picks one builder for all the configs of a card (upstream datasets#7101), so the tars
cannot be a config of the root card. A new ``webdataset`` branch starts from the repo's first commit (on the
Hub: only ``.gitattributes``), so its tree is exactly ``wds/`` and its history carries no Parquet; the tars are
already in the repo's store from the main branch, so they are not sent again. Both tags are checked before
anything is written: a publish that would have to move either of them is refused up front.

Xet or LFS: asked of the server per branch (see `pipeline.lifecycle.publish.transport`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from pipeline import __version__
from pipeline.lifecycle.verify import stamp
from pipeline.lifecycle.publish.transport import (
    Addition,
    BranchUpdate,
    UploadError,
    commit_atomically,
    quiet_progress,
    server_offers_xet,
    xet_disabled_by_user,
)
from pipeline.release.layout import CARD, MANIFEST, SEMVER, WDS_DIR, VersionError
from pipeline.release.layout import version_key as semver_key
from pipeline.untrusted.files import (
    PUBLISH_KEYS,
    TEXT_CAPS,
    ManifestError,
    ReleaseDir,
    ReleaseFileError,
    file_problems,
    load_manifest,
)
from pipeline.untrusted.safetext import printable

REPO_TYPE = "dataset"
DEFAULT_BRANCH = "main"
# Files the Hub writes itself (the first commit of every repo): not part of a release, never deleted.
HUB_MANAGED = frozenset({".gitattributes"})
# The WebDataset variant (see the module docstring): the release's WDS_DIR folder, its branch and tag suffix.
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
            out.append(f"  {f.status:<{width}}  {_human(f.cost):>9}  {f.path}")
        for path in self.deletions:
            out.append(f"  {'delete':<{width}}  {'':>9}  {path}")
        out.append(
            f"  {len(self.to_send)} to upload ({_human(self.upload_bytes)}), {len(self.to_upload) - len(self.to_send)}"
            f" stored elsewhere in the repo (copied, 0 B), {len(self.already_on_hub)} already on Hub,"
            f" {len(self.deletions)} to delete"
        )
        return out


@dataclass
class PublishResult:
    repo_id: str
    version: str
    tag: str
    url: str  # where the tagged release can be browsed
    commit: str | None  # commit the tag points at (None for a dry run against a repo that does not exist)
    dry_run: bool = False
    already_published: bool = False  # the tag existed with identical content: nothing was changed
    branch: str = DEFAULT_BRANCH
    created_repo: bool = False
    private: bool | None = None
    uploaded: list[str] = field(default_factory=list)  # files committed by this run
    skipped: list[str] = field(default_factory=list)  # files that were already on the Hub
    deleted: list[str] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)  # commits created by this run, oldest first
    plan: PublishPlan | None = None
    # the wds/ folder as branch `webdataset`, tag v{version}-webdataset; None when the release has no wds/README.md
    webdataset: PublishResult | None = None


# ----------------------------------------------------------------------------------------------------- local side


def _git_blob_id(source: FileSource, path: str) -> str:
    """git's object id for the file's content, the id the Hub reports for files not stored with LFS."""
    digest = hashlib.sha1(b"blob %d\0" % source.files[path][0])
    with source.open(path) as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _human(n: int) -> str:
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
    """The file check of `mll23 verify` (pipeline.untrusted.files.file_problems), stricter for publishing: every
    file manifest.json lists is present, regular, with the listed size and sha256; there is no file it does not
    list, no link, no special file and no hard link (one may be a file from outside the release, such as the
    token file). Returns failures."""
    release = ReleaseDir(Path(release_dir))
    try:
        manifest = read_manifest(release_dir)
        listing = release.listing()
    except (PublishError, OSError) as err:
        return [printable(err, limit=2000)]
    return [printable(m, limit=2000) for m in file_problems(release, manifest, listing, allow_hard_links=False)]


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
    by a killed run but never committed are not in any tree; the upload itself finds those (see hub_upload)."""
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


# ------------------------------------------------------------------------------------------------------- publish


_TOKEN_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[^\s'\"]+"),
    re.compile(r"\bhf_[A-Za-z0-9_-]{8,}"),  # anything shaped like a Hugging Face token
)


def _redact(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    text = _TOKEN_PATTERNS[0].sub(r"\1***", text)
    return _TOKEN_PATTERNS[1].sub("hf_***", text)


def _describe(err: BaseException, token: str | None) -> str:
    """One line per exception in the chain (the Hub client wraps the transport error), redacted."""
    parts, seen = [], set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        message = " ".join(str(current).split())
        message = message if len(message) <= 400 else message[:400] + " ..."
        part = f"{type(current).__name__}: {message}".strip()
        if not parts or parts[-1] != part:  # transports re-raise the same error under the same name
            parts.append(part)
        current = current.__cause__ or current.__context__
    return _redact(" <- ".join(parts), token)


def _check_release(release_dir: Path, verify: Callable[[Path], list[str]] | None, verify_name: str | None,
                   token: str | None, say: Callable[[str], None]) -> dict:
    """manifest.json, once the release passed the self-check and `verify`; PublishError naming the failures.
    A release unchanged since it last passed the same checks on this machine (pipeline.lifecycle.verify.stamp) is not
    checked again; `verify` without a `verify_name` is always run (an anonymous check cannot be stamped)."""
    manifest = read_manifest(release_dir)
    checks = "self-check" if verify is None else (f"self-check + {verify_name}" if verify_name else None)
    key = stamp.release_key(release_dir, checks) if checks else None
    if stamp.is_stamped(key):
        say(f"{release_dir} is unchanged since it passed {checks} (files' stat and manifest.json's sha256 as"
            " then): not verified again")
        return manifest
    failures = self_check(release_dir)
    if verify is not None and not failures:  # the verifier's loaders run only on files that passed the check
        try:
            failures += list(verify(release_dir))
        except Exception as err:  # a crashing verifier must not let a release through
            failures.append(f"verify raised {_describe(err, token)}")
    if failures:
        shown = "\n  ".join(failures[:20]) + (f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else "")
        raise PublishError(_redact(f"release {release_dir} failed verification; not publishing:\n  {shown}", token))
    stamp.stamp(key)  # the key of the files as they were before the checks began
    return manifest


def _repo_tags(api: HfApi, repo_id: str) -> dict[str, str]:
    """Tag name -> commit of an existing repo; {} when it does not exist yet."""
    try:
        refs = api.list_repo_refs(repo_id, repo_type=REPO_TYPE)
    except RepositoryNotFoundError:
        return {}
    return {ref.name: ref.target_commit for ref in refs.tags}


def publish(
    release_dir: Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    verify: Callable[[Path], list[str]] | None = None,
    verify_name: str | None = None,
    endpoint: str | None = None,
    log: Callable[[str], None] = print,
) -> PublishResult:
    """Publish the release in `release_dir` to the dataset repo `repo_id` and tag it ``v{version}``; when the
    release has ``wds/README.md``, then publish its ``wds/`` folder as the root of its WebDataset branch and tag
    that ``v{version}-webdataset`` (`result.webdataset`), with the same guarantees as below.

    - The version is manifest.json's. Before anything else the release is checked: `verify(release_dir)` (a list
      of failure messages, e.g. `mll23 verify`) and a self-check of the manifest against the files; any failure
      refuses the publish. When `verify_name` names the checks `verify` makes, a release unchanged since it
      passed them on this machine is not verified again (a stamp in the user's cache, `pipeline.lifecycle.verify.stamp`).
    - Branch: ``main`` when the version is newer than every version tagged in the repo (main only moves
      forward); an older version (a patch of an old line, e.g. 1.0.1 after 1.2.0) goes to its line branch
      ``v1.0.x`` (WebDataset: ``v1.0.x-webdataset``), created from the line's newest tag.
    - Atomic: every large object is uploaded first, then one commit per branch adds, changes and deletes every
      file at once, so a branch shows the old release or the new one, never a mix. An interrupted publish is
      simply re-run: objects the server already stores are not sent again.
    - Xet when the server offers it (asked per branch), Git LFS when not or when HF_HUB_DISABLE_XET is set.
    - Visibility: a repo created by this call is **public by default**; ``private=True`` (``--private``) creates
      it private. An existing repo keeps its visibility, but ``private=True`` refuses to publish into a public one.
    - Idempotent: if tag ``v{version}`` exists with identical content nothing is done; if it exists with other
      content the publish is refused (tags are never moved). Both tags are checked before anything is written.
    - `dry_run=True` only reads from the Hub and prints the plan (file, size, "new" / "already on Hub").
    - Token: `token`, else the usual huggingface_hub places (``HF_TOKEN``, the token file of ``hf auth login``).
      It is never printed; error messages are redacted.
    - Endpoint: `endpoint`, else ``HF_ENDPOINT`` as set when called, else huggingface_hub's default.

    Raises `PublishError` when refused or when the Hub fails; the message says whether re-running will resume.
    """
    release_dir = Path(release_dir)
    token = token or get_token()

    def say(message: str) -> None:
        log(_redact(message, token))

    manifest = _check_release(release_dir, verify, verify_name, token, say)
    if not dry_run and not token:
        raise PublishError("no Hugging Face token: pass one, set HF_TOKEN, or run `hf auth login`")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token or False, library_name="mll23-pipeline", library_version=__version__)
    progress = _Progress(f"v{manifest['version']}", "reading the repo from the Hub")
    try:
        with quiet_progress():
            return _publish(api, release_dir, repo_id, manifest, private, dry_run, token, progress, say)
    except PublishError:
        raise
    except Exception as err:  # Hub, network or disk failure: say where, redacted, and what to do
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            hint = f"Check that the token may write to '{repo_id.split('/')[0]}' (a write token of a member)."
        else:
            hint = "Re-run the same command to resume: objects already on the Hub are not uploaded again."
        raise PublishError(
            f"publishing {progress.tag} to {repo_id} failed while {progress.stage}: {_describe(err, token)}\n"
            f"{progress.tag} is not tagged yet. {hint}"
        ) from None


def _publish(api: HfApi, release_dir: Path, repo_id: str, manifest: dict, private: bool, dry_run: bool,
             token: str | None, progress: _Progress, say: Callable[[str], None]) -> PublishResult:
    """`publish` once the release is checked: plan every branch, refuse early, then write branch by branch."""
    tags = _repo_tags(api, repo_id)
    targets = publish_targets(release_dir, manifest, tags)
    plans = [plan_publish(release_dir, repo_id, api=api, target=target) for target in targets]
    results = [
        PublishResult(repo_id, manifest["version"], p.tag, f"{api.endpoint}/datasets/{repo_id}/tree/{p.tag}",
                      commit=p.tag_commit, dry_run=dry_run, private=p.private, branch=p.branch, plan=p)
        for p in plans
    ]
    result = results[0]
    result.webdataset = results[1] if len(results) > 1 else None
    if dry_run:
        for plan, planned in zip(plans, results):
            for line in plan.lines():
                say(line)
            planned.skipped = [f.path for f in plan.already_on_hub]
        say("dry run: nothing was changed on the Hub")
    for plan in plans:  # both tags are checked before anything is written
        if plan.tag_commit is not None and not plan.tag_matches:
            raise PublishError(
                f"tag {plan.tag} already exists on {repo_id} (commit {plan.tag_commit[:12]}) with different"
                " content; refusing to move a published tag. Release the change under a new version."
            )
    if dry_run:
        return result
    if not plans[0].repo_exists:
        progress.stage = "creating the repo"
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        say(f"created {'private' if private else 'public'} dataset repo {repo_id}")
        result.created_repo = True
        plans = [plan_publish(release_dir, repo_id, api=api, target=target) for target in targets]
        if not plans[0].repo_exists:
            raise PublishError(f"created {repo_id} but cannot read it back; check the token's permissions")
    elif private and not plans[0].private and any(p.tag_commit is None for p in plans):
        raise PublishError(
            f"{repo_id} exists and is public but a private publish was requested; refusing. Make the repo"
            " private on the Hub first, or publish without --private."
        )
    if targets[0].branch != DEFAULT_BRANCH:
        say(f"{manifest['version']} is older than the version on main ({published_versions(tags)[-1]}): main is"
            f" left alone, the release goes to branch {targets[0].branch}")
    for target, plan, published in zip(targets, plans, results):
        progress.tag = target.tag
        _publish_branch(api, release_dir, manifest, target, plan, published, tags, token, progress, say)
    return result


@dataclass
class _Progress:
    """Where a publish is, for the error message if the Hub fails."""

    tag: str
    stage: str


def _first_commit(api: HfApi, repo_id: str) -> str:
    """The repo's first commit (on the Hub it holds only the Hub-managed .gitattributes)."""
    return api.list_repo_commits(repo_id, repo_type=REPO_TYPE, revision=DEFAULT_BRANCH)[-1].commit_id


def _use_xet(api: HfApi, repo_id: str, branch: str, token: str | None, say: Callable[[str], None]) -> bool:
    if xet_disabled_by_user():
        say("Xet disabled by HF_HUB_DISABLE_XET: uploading over Git LFS")
        return False
    if server_offers_xet(api, repo_id, branch, token):
        say(f"the Hub offers Xet storage for branch {branch}: uploading over Xet")
        return True
    say(f"the Hub offers no Xet storage for branch {branch}: uploading over Git LFS")
    return False


def _publish_branch(
    api: HfApi,
    release_dir: Path,
    manifest: dict,
    target: PublishTarget,
    plan: PublishPlan,
    result: PublishResult,
    tags: dict[str, str],
    token: str | None,
    progress: _Progress,
    say: Callable[[str], None],
) -> None:
    """Bring `target.branch` to exactly `target.source` in one commit and tag it `target.tag`; fills `result`.
    A tag that already holds the same content means nothing to do (the caller refused other content)."""
    repo_id, tag = plan.repo_id, target.tag
    if plan.tag_commit is not None:
        say(f"{tag} is already published on {repo_id} at {plan.tag_commit[:12]} with identical content:"
            " nothing to do")
        result.already_published = True
        result.commit = plan.tag_commit
        result.skipped = [f.path for f in plan.files]
        return
    if plan.head is None:
        progress.stage = f"creating branch {target.branch}"
        start = branch_start(target, tags, lambda: _first_commit(api, repo_id))
        api.create_branch(repo_id, branch=target.branch, revision=start, repo_type=REPO_TYPE)
        say(f"created branch {target.branch} of {repo_id} from commit {start[:12]}")
        plan = plan_publish(release_dir, repo_id, api=api, target=target)
    result.private = plan.private
    result.plan = plan
    result.skipped = [f.path for f in plan.already_on_hub]
    head = plan.head
    if not plan.branch_matches:  # (it matches when an earlier run's commit landed but its tag did not)
        head = _commit_branch(api, manifest, target, plan, token, progress, say)
        result.commits.append(head)
        result.uploaded = [f.path for f in plan.to_upload]
        result.deleted = list(plan.deletions)
    _tag_branch(api, release_dir, manifest, target, plan, head, result, progress, say)


def _commit_branch(api: HfApi, manifest: dict, target: PublishTarget, plan: PublishPlan, token: str | None,
                   progress: _Progress, say: Callable[[str], None]) -> str:
    """The one commit that moves the branch from the old release to the new one; returns its id."""
    progress.stage = f"asking whether the Hub offers Xet for branch {target.branch}"
    xet = _use_xet(api, plan.repo_id, target.branch, token, say)
    say(f"publishing {target.tag} to {plan.repo_id} (branch {plan.branch}): {len(plan.to_send)} files to upload"
        f" ({_human(plan.upload_bytes)}), {len(plan.to_upload) - len(plan.to_send)} copied from elsewhere in the"
        f" repo, {len(plan.already_on_hub)} already on the branch,"
        f" {len(plan.deletions)} to delete, in one commit")
    source = target.source
    additions = [Addition(f.path, f.size, f.sha256, lambda f=f: source.open(f.path)) for f in plan.to_send]
    copies = [(f.path, *f.copy_from) for f in plan.to_upload if f.copy_from is not None]
    name = manifest.get("name", "release")
    update = BranchUpdate(
        plan.repo_id, plan.branch, plan.head, additions, plan.deletions, copies,
        title=printable(f"{name} {target.tag}", limit=200),
        description=f"{len(additions)} files added or updated, {len(plan.deletions)} deleted.",
    )

    def stage(text: str) -> None:
        progress.stage = text

    try:
        head = commit_atomically(api, update, xet=xet, stage=stage)
    except UploadError as err:
        raise PublishError(f"publishing {target.tag} to {plan.repo_id}: {err}") from None
    say(f"committed {len(plan.to_upload)} files ({_human(plan.upload_bytes)} sent), {len(plan.deletions)} deletions to"
        f" branch {plan.branch} in one commit -> {head[:12]}")
    return head


def _tag_branch(api: HfApi, release_dir: Path, manifest: dict, target: PublishTarget, plan: PublishPlan,
                head: str | None, result: PublishResult, progress: _Progress, say: Callable[[str], None]) -> None:
    """Check the branch now holds exactly the release at `head`, then tag that commit."""
    repo_id, tag = plan.repo_id, target.tag
    progress.stage = "checking the branch"
    final_plan = plan_publish(release_dir, repo_id, api=api, target=target)
    if not final_plan.branch_matches or final_plan.head != head:
        raise PublishError(
            f"after uploading, branch {plan.branch} of {repo_id} does not hold exactly the release"
            f" ({len(final_plan.to_upload)} files differ, {len(final_plan.deletions)} extra): someone else"
            " may be pushing to it. Not tagging; re-run to retry."
        )
    progress.stage = f"tagging {tag}"
    name = manifest.get("name", "release")
    if final_plan.tag_commit is None:
        api.create_tag(repo_id, tag=tag, revision=head, repo_type=REPO_TYPE, tag_message=f"{name} {tag[1:]}")
    elif not final_plan.tag_matches:
        raise PublishError(f"tag {tag} appeared on {repo_id} with different content while publishing")
    result.commit = final_plan.tag_commit or head
    say(f"tagged {tag} -> {result.commit[:12]}; published {result.url}")
