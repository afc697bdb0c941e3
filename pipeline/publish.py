"""Publish a release directory to the Hugging Face Hub as a dataset repo, tagged ``v{version}``.

The only module that touches the network. It uses the public `huggingface_hub` API (`HfApi`): `repo_info`,
`list_repo_refs`, `list_repo_tree`, `create_repo`, `create_commit` (regular files inline, large/binary files through
the Git LFS batch API) and `create_tag`.

A publish goes: verify the release (the caller's `verify` plus a self-check of manifest.json against the files)
-> read the Hub (repo, refs, the target branch's tree) -> plan: for every release file, is that exact content
already on the branch (LFS sha256 for LFS files, git blob sha1 for small ones), and which branch files are not in
the release -> commits of bounded size (file count and bytes), data first and README.md + manifest.json + deletions
in the last one -> check the branch now equals the release -> tag that commit ``v{version}``.

Re-running after an interruption uploads only what is missing: files committed by an earlier run are on the branch
and are skipped, and LFS objects uploaded but not yet committed are known to the Hub's LFS store, which tells the
client not to send them again. A tag is never moved: if ``v{version}`` exists and holds the same content the
publish is a no-op; if it holds other content the publish refuses.

The WebDataset variant: when the release has ``wds/README.md``, the ``wds/`` subtree is published the same way
(same planner, same commits, same checks) as the root of branch ``webdataset``, tagged ``v{version}-webdataset``,
after the main branch is tagged. It needs a revision of its own because `datasets` picks one builder for all the
configs of a card (upstream datasets#7101), so the tars cannot be a config of the root card. A new
``webdataset`` branch starts from the repo's first commit (on the Hub: only ``.gitattributes``), so its tree is
exactly ``wds/`` and its history carries no Parquet; the tars are already in the repo's LFS store from the main
branch, so the Hub's LFS batch API tells the client not to send them again. Both tags are checked before
anything is written: a publish that would have to move either of them is refused up front.

Xet: huggingface_hub uploads through Xet storage whenever `hf_xet` is installed, without asking the server. We
publish with the Git LFS protocol, so Xet is disabled for the duration of `publish`: huggingface_hub 2.4.0 reads
``HF_HUB_DISABLE_XET`` once at import into `huggingface_hub.constants.HF_HUB_DISABLE_XET`, and
`utils._runtime.is_xet_available()` consults that constant at call time, so we set both the environment variable
(for child processes) and the constant (for this process), then restore them.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, constants, get_token
from huggingface_hub.errors import RepositoryNotFoundError
from huggingface_hub.hf_api import RepoFile

from pipeline import __version__
from pipeline.release_files import (
    PUBLISH_KEYS,
    TEXT_CAPS,
    ManifestError,
    ReleaseDir,
    ReleaseFileError,
    file_problems,
    load_manifest,
)
from pipeline.safetext import printable
from pipeline.wds_writer import WDS_DIR

REPO_TYPE = "dataset"
DEFAULT_BRANCH = "main"
DEFAULT_MAX_FILES_PER_COMMIT = 100
DEFAULT_MAX_BYTES_PER_COMMIT = 1 << 30  # 1 GiB
# Files the Hub writes itself (the first commit of every repo): not part of a release, never deleted.
HUB_MANAGED = frozenset({".gitattributes"})
# Committed last, with the deletions: the branch only advertises the new version once all its data is there.
FINAL_FILES = ("README.md", "manifest.json")
MANIFEST = "manifest.json"
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

    @property
    def status(self) -> str:
        if self.on_hub:
            return "already on Hub"
        return "new (changed)" if self.replaces else "new"


@dataclass(frozen=True)
class FileSource:
    """What one branch should hold: a local directory and every file under it with its manifest size/sha256."""

    root: Path
    files: dict[str, tuple[int, str]]  # POSIX path relative to `root` (and in the repo) -> (size, sha256), sorted
    release: Path | None = None  # the release directory `root` is in (default: root itself)
    prefix: str = ""  # `root` relative to `release`, with a trailing slash ("wds/"), or ""

    @contextmanager
    def open(self, path: str) -> Iterator:
        """A file of this source, opened only through pipeline.release_files (no links, no hard links, no
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
    def upload_bytes(self) -> int:
        return sum(f.size for f in self.to_upload)

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
            out.append(f"  {f.status:<{width}}  {_human(f.size):>9}  {f.path}")
        for path in self.deletions:
            out.append(f"  {'delete':<{width}}  {'':>9}  {path}")
        out.append(
            f"  {len(self.to_upload)} to upload ({_human(self.upload_bytes)}), {len(self.already_on_hub)} already on"
            f" Hub, {len(self.deletions)} to delete"
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
    """The file check of `mll23 verify` (pipeline.release_files.file_problems), stricter for publishing: every
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
    if "README.md" not in files:
        return None
    return FileSource(Path(release_dir) / WDS_DIR, dict(sorted(files.items())), Path(release_dir), prefix)


def publish_targets(release_dir: Path, manifest: dict) -> list[PublishTarget]:
    """The branches a publish writes, in order: main (tag v{version}), then the WebDataset variant if any."""
    version = manifest["version"]
    targets = [PublishTarget(DEFAULT_BRANCH, f"v{version}", release_source(release_dir, manifest))]
    wds = webdataset_source(release_dir, manifest)
    if wds is not None:
        targets.append(PublishTarget(WDS_BRANCH, f"v{version}{WDS_TAG_SUFFIX}", wds))
    return targets


# ------------------------------------------------------------------------------------------------------ Hub side


def _remote_tree(api: HfApi, repo_id: str, revision: str) -> dict[str, RepoFile]:
    return {
        entry.path: entry
        for entry in api.list_repo_tree(repo_id, recursive=True, revision=revision, repo_type=REPO_TYPE)
        if isinstance(entry, RepoFile)
    }


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
    files = []
    for path, (size, sha) in local.items():
        on_hub = _same_content(source, path, remote.get(path))
        files.append(PlannedFile(path, size, sha, on_hub=on_hub, replaces=not on_hub and path in remote))
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


@contextmanager
def _xet_disabled() -> Iterator[None]:
    old_env, old_const = os.environ.get("HF_HUB_DISABLE_XET"), constants.HF_HUB_DISABLE_XET
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    constants.HF_HUB_DISABLE_XET = True
    try:
        yield
    finally:
        constants.HF_HUB_DISABLE_XET = old_const
        if old_env is None:
            os.environ.pop("HF_HUB_DISABLE_XET", None)
        else:
            os.environ["HF_HUB_DISABLE_XET"] = old_env


def _batches(files: list[PlannedFile], max_files: int, max_bytes: int) -> list[list[PlannedFile]]:
    batches: list[list[PlannedFile]] = []
    current: list[PlannedFile] = []
    size = 0
    for f in files:
        if current and (len(current) >= max_files or size + f.size > max_bytes):
            batches.append(current)
            current, size = [], 0
        current.append(f)
        size += f.size
    if current:
        batches.append(current)
    return batches


def publish(
    release_dir: Path,
    repo_id: str,
    *,
    private: bool = False,
    dry_run: bool = False,
    token: str | None = None,
    verify: Callable[[Path], list[str]] | None = None,
    endpoint: str | None = None,
    log: Callable[[str], None] = print,
    max_files_per_commit: int = DEFAULT_MAX_FILES_PER_COMMIT,
    max_bytes_per_commit: int = DEFAULT_MAX_BYTES_PER_COMMIT,
) -> PublishResult:
    """Publish the release in `release_dir` to the dataset repo `repo_id` and tag it ``v{version}``; when the
    release has ``wds/README.md``, then publish its ``wds/`` folder as the root of branch ``webdataset`` and tag
    that ``v{version}-webdataset`` (`result.webdataset`), with the same guarantees as below.

    - The version is manifest.json's. Before anything else the release is checked: `verify(release_dir)` (a list
      of failure messages, e.g. `mll23 verify`) and a self-check of the manifest against the files; any failure
      refuses the publish.
    - Visibility: a repo created by this call is **public by default**; ``private=True`` (``--private``) creates
      it private. An existing repo keeps its visibility, but ``private=True`` refuses to publish into a public one.
    - Idempotent: if tag ``v{version}`` exists with identical content nothing is done; if it exists with other
      content the publish is refused (tags are never moved). Both tags are checked before anything is written.
    - Files go up in commits of at most `max_files_per_commit` files / `max_bytes_per_commit` bytes, skipping
      files the branch already holds with the same content, so an interrupted publish can simply be re-run.
      Files on the branch that the release no longer has are deleted, so the tag's tree equals the release.
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

    manifest = read_manifest(release_dir)
    version = manifest["version"]
    tag = f"v{version}"
    failures = self_check(release_dir)
    if verify is not None and not failures:  # the verifier's loaders run only on files that passed the check
        try:
            failures += list(verify(release_dir))
        except Exception as err:  # a crashing verifier must not let a release through
            failures.append(f"verify raised {_describe(err, token)}")
    if failures:
        shown = "\n  ".join(failures[:20]) + (f"\n  ... and {len(failures) - 20} more" if len(failures) > 20 else "")
        raise PublishError(_redact(f"release {release_dir} failed verification; not publishing:\n  {shown}", token))
    if not dry_run and not token:
        raise PublishError("no Hugging Face token: pass one, set HF_TOKEN, or run `hf auth login`")
    if max_files_per_commit < 1 or max_bytes_per_commit < 1:
        raise ValueError("max_files_per_commit and max_bytes_per_commit must be positive")

    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    api = HfApi(endpoint=endpoint, token=token or False, library_name="mll23-pipeline", library_version=__version__)
    targets = publish_targets(release_dir, manifest)
    progress = _Progress(tag, "reading the repo from the Hub")
    try:
        with _xet_disabled():
            plans = [plan_publish(release_dir, repo_id, api=api, target=target) for target in targets]
            results = [
                PublishResult(repo_id, version, p.tag, f"{endpoint}/datasets/{repo_id}/tree/{p.tag}",
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
            for target, plan, published in zip(targets, plans, results):
                progress.tag = target.tag
                _publish_branch(api, release_dir, manifest, target, plan, published, progress, say,
                                max_files_per_commit, max_bytes_per_commit)
            return result
    except PublishError:
        raise
    except Exception as err:  # Hub, network or disk failure: say where, redacted, and what to do
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            hint = f"Check that the token may write to '{repo_id.split('/')[0]}' (a write token of a member)."
        else:
            hint = "Re-run the same command to resume: files already on the Hub are not uploaded again."
        raise PublishError(
            f"publishing {progress.tag} to {repo_id} failed while {progress.stage}: {_describe(err, token)}\n"
            f"{progress.tag} is not tagged yet. {hint}"
        ) from None


@dataclass
class _Progress:
    """Where a publish is, for the error message if the Hub fails."""

    tag: str
    stage: str


def _first_commit(api: HfApi, repo_id: str) -> str:
    """The repo's first commit (on the Hub it holds only the Hub-managed .gitattributes)."""
    return api.list_repo_commits(repo_id, repo_type=REPO_TYPE, revision=DEFAULT_BRANCH)[-1].commit_id


def _publish_branch(
    api: HfApi,
    release_dir: Path,
    manifest: dict,
    target: PublishTarget,
    plan: PublishPlan,
    result: PublishResult,
    progress: _Progress,
    say: Callable[[str], None],
    max_files: int,
    max_bytes: int,
) -> None:
    """Bring `target.branch` to exactly `target.source` in bounded commits and tag it `target.tag`; fills
    `result`. A tag that already holds the same content means nothing to do (the caller refused other content)."""
    repo_id, tag = plan.repo_id, target.tag
    name = manifest.get("name", "release")

    def replan() -> PublishPlan:
        return plan_publish(release_dir, repo_id, api=api, target=target)

    if plan.tag_commit is not None:
        say(f"{tag} is already published on {repo_id} at {plan.tag_commit[:12]} with identical content:"
            " nothing to do")
        result.already_published = True
        result.commit = plan.tag_commit
        result.skipped = [f.path for f in plan.files]
        return
    if plan.head is None:
        progress.stage = f"creating branch {target.branch}"
        start = _first_commit(api, repo_id)
        api.create_branch(repo_id, branch=target.branch, revision=start, repo_type=REPO_TYPE)
        say(f"created branch {target.branch} of {repo_id} from its first commit {start[:12]}")
        plan = replan()
    result.private = plan.private
    result.plan = plan
    say(f"publishing {tag} to {repo_id} (branch {plan.branch}): {len(plan.to_upload)} files to upload"
        f" ({_human(plan.upload_bytes)}), {len(plan.already_on_hub)} already on the Hub,"
        f" {len(plan.deletions)} to delete")

    bulk = [f for f in plan.to_upload if f.path not in FINAL_FILES]
    final = [f for f in plan.to_upload if f.path in FINAL_FILES]
    commits = [(batch, []) for batch in _batches(bulk, max_files, max_bytes)]
    if final or plan.deletions:
        commits.append((final, plan.deletions))
    head = plan.head
    for number, (batch, deletions) in enumerate(commits, start=1):
        progress.stage = f"uploading commit {number}/{len(commits)}"
        with ExitStack() as opened:  # the very files that were checked, open until the commit is made
            operations: list = [CommitOperationAdd(f.path, opened.enter_context(target.source.open(f.path))) for f in batch]
            operations += [CommitOperationDelete(path) for path in deletions]
            info = api.create_commit(
                repo_id,
                operations=operations,
                commit_message=f"{name} {tag}: part {number}/{len(commits)}",
                commit_description=f"{len(batch)} files added or updated, {len(deletions)} deleted.",
                repo_type=REPO_TYPE,
                revision=plan.branch,
                parent_commit=head,
            )
        head = info.oid
        result.commits.append(head)
        result.uploaded += [f.path for f in batch]
        result.deleted += deletions
        say(f"committed part {number}/{len(commits)}: {len(batch)} files"
            f" ({_human(sum(f.size for f in batch))}), {len(deletions)} deletions -> {head[:12]}")
    result.skipped = [f.path for f in plan.already_on_hub]

    progress.stage = "checking the branch"
    final_plan = replan()
    if not final_plan.branch_matches or final_plan.head != head:
        raise PublishError(
            f"after uploading, branch {plan.branch} of {repo_id} does not hold exactly the release"
            f" ({len(final_plan.to_upload)} files differ, {len(final_plan.deletions)} extra): someone else"
            " may be pushing to it. Not tagging; re-run to retry."
        )
    progress.stage = f"tagging {tag}"
    if final_plan.tag_commit is None:
        api.create_tag(repo_id, tag=tag, revision=head, repo_type=REPO_TYPE, tag_message=f"{name} {tag[1:]}")
    elif not final_plan.tag_matches:
        raise PublishError(f"tag {tag} appeared on {repo_id} with different content while publishing")
    result.commit = final_plan.tag_commit or head
    say(f"tagged {tag} -> {result.commit[:12]}; published {result.url}")
