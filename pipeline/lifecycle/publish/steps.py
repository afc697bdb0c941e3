"""Publishing a release to the Hugging Face Hub as a dataset repo, tagged ``v{version}``: the steps, in order.

A publish goes: check the release (the caller's `verify` plus the self-check of manifest.json against the
files) -> connect (token, endpoint) -> plan every branch from one read of the Hub (pipeline.lifecycle.publish.plan:
main only moves forward in version, an older version goes to its line branch v{X.Y}.x; per file, is that exact
content already there) -> refuse early (a tag that would move, a private publish into a public repo) -> create
the repo or branch if missing -> send: every missing large object, then ONE commit with every addition and
deletion (pipeline.lifecycle.publish.transport) -> check the branch now equals the release -> tag that commit
``v{version}``. With pipeline.lifecycle.publish.transport, the only code that touches the network; both use the
public `huggingface_hub` API (`HfApi`).

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

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, constants, get_token

from pipeline import __version__
from pipeline.lifecycle.publish.plan import (
    DEFAULT_BRANCH,
    REPO_TYPE,
    PublishError,
    PublishPlan,
    PublishTarget,
    branch_start,
    card_repo_problem,
    human_size,
    plan_publish,
    publish_targets,
    published_versions,
    read_manifest,
    repo_first_commit,
    repo_tags,
    self_check,
)
from pipeline.lifecycle.publish.transport import (
    Addition,
    BranchUpdate,
    UploadError,
    choose_xet,
    commit_atomically,
    quiet_progress,
)
from pipeline.lifecycle.verify import stamp
from pipeline.untrusted.safetext import printable

Say = Callable[[str], None]


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


@dataclass
class _Progress:
    """Where a publish is, for the error message if the Hub fails."""

    tag: str
    stage: str


@dataclass(frozen=True)
class _Run:
    """What every step of one publish needs: the Hub client, the release, and how to report."""

    api: HfApi
    release_dir: Path
    repo_id: str
    manifest: dict
    token: str | None
    progress: _Progress
    say: Say

    def plan(self, target: PublishTarget) -> PublishPlan:
        return plan_publish(self.release_dir, self.repo_id, api=self.api, target=target)


# ------------------------------------------------------------------------------------------- messages and errors


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


def _hub_failure(err: Exception, repo_id: str, progress: _Progress, token: str | None) -> PublishError:
    """A Hub, network or disk failure as a PublishError: where it happened, redacted, and what to do."""
    status = getattr(getattr(err, "response", None), "status_code", None)
    if status in (401, 403):
        hint = f"Check that the token may write to '{repo_id.split('/')[0]}' (a write token of a member)."
    else:
        hint = "Re-run the same command to resume: objects already on the Hub are not uploaded again."
    return PublishError(
        f"publishing {progress.tag} to {repo_id} failed while {progress.stage}: {_describe(err, token)}\n"
        f"{progress.tag} is not tagged yet. {hint}"
    )


# ------------------------------------------------------------------------------------------------ before the Hub


def _check_release(release_dir: Path, verify: Callable[[Path], list[str]] | None, verify_name: str | None,
                   token: str | None, say: Say) -> dict:
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


def _hub_client(endpoint: str | None, token: str | None, dry_run: bool) -> HfApi:
    """The client for `endpoint`, else HF_ENDPOINT as set now, else huggingface_hub's default; a write needs a
    token, a dry run reads anonymously without one."""
    if not dry_run and not token:
        raise PublishError("no Hugging Face token: pass one, set HF_TOKEN, or run `hf auth login`")
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    return HfApi(endpoint=endpoint, token=token or False, library_name="mll23-pipeline", library_version=__version__)


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
    log: Say = print,
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
    - Refused when the card's snippets load from another repository than `repo_id` (its config's [card] repo_id).
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
    if (wrong_repo := card_repo_problem(manifest, repo_id)) is not None:
        raise PublishError(f"not publishing: {wrong_repo}")
    api = _hub_client(endpoint, token, dry_run)
    progress = _Progress(f"v{manifest['version']}", "reading the repo from the Hub")
    run = _Run(api, release_dir, repo_id, manifest, token, progress, say)
    try:
        with quiet_progress():
            return _publish(run, private, dry_run)
    except PublishError:
        raise
    except Exception as err:  # Hub, network or disk failure: say where, redacted, and what to do
        raise _hub_failure(err, repo_id, progress, token) from None


# ---------------------------------------------------------------------------------------------------- the steps


def _planned_results(run: _Run, plans: list[PublishPlan], dry_run: bool) -> PublishResult:
    """The result of the release's branch, with the WebDataset branch's as its `webdataset`, as planned."""
    results = [
        PublishResult(run.repo_id, run.manifest["version"], p.tag, f"{run.api.endpoint}/datasets/{run.repo_id}/tree/{p.tag}",
                      commit=p.tag_commit, dry_run=dry_run, private=p.private, branch=p.branch, plan=p)
        for p in plans
    ]
    results[0].webdataset = results[1] if len(results) > 1 else None
    return results[0]


def _print_dry_run(plans: list[PublishPlan], result: PublishResult, say: Say) -> None:
    for plan, planned in zip(plans, [result, result.webdataset]):
        for line in plan.lines():
            say(line)
        planned.skipped = [f.path for f in plan.already_on_hub]
    say("dry run: nothing was changed on the Hub")


def _refuse_moving_tags(plans: list[PublishPlan], repo_id: str) -> None:
    """Both tags are checked before anything is written: an existing tag with other content is never moved."""
    for plan in plans:
        if plan.tag_commit is not None and not plan.tag_matches:
            raise PublishError(
                f"tag {plan.tag} already exists on {repo_id} (commit {plan.tag_commit[:12]}) with different"
                " content; refusing to move a published tag. Release the change under a new version."
            )


def _ensure_repo(run: _Run, targets: list[PublishTarget], plans: list[PublishPlan], private: bool,
                 result: PublishResult) -> list[PublishPlan]:
    """Create the repo if it is missing (and plan again against it); refuse a private publish into a public repo."""
    if not plans[0].repo_exists:
        run.progress.stage = "creating the repo"
        run.api.create_repo(run.repo_id, repo_type=REPO_TYPE, private=private, exist_ok=True)
        run.say(f"created {'private' if private else 'public'} dataset repo {run.repo_id}")
        result.created_repo = True
        plans = [run.plan(target) for target in targets]
        if not plans[0].repo_exists:
            raise PublishError(f"created {run.repo_id} but cannot read it back; check the token's permissions")
    elif private and not plans[0].private and any(p.tag_commit is None for p in plans):
        raise PublishError(
            f"{run.repo_id} exists and is public but a private publish was requested; refusing. Make the repo"
            " private on the Hub first, or publish without --private."
        )
    return plans


def _publish(run: _Run, private: bool, dry_run: bool) -> PublishResult:
    """`publish` once the release is checked: plan every branch, refuse early, then write branch by branch."""
    tags = repo_tags(run.api, run.repo_id)
    targets = publish_targets(run.release_dir, run.manifest, tags)
    plans = [run.plan(target) for target in targets]
    result = _planned_results(run, plans, dry_run)
    if dry_run:
        _print_dry_run(plans, result, run.say)
    _refuse_moving_tags(plans, run.repo_id)
    if dry_run:
        return result
    plans = _ensure_repo(run, targets, plans, private, result)
    if targets[0].branch != DEFAULT_BRANCH:
        run.say(f"{run.manifest['version']} is older than the version on main ({published_versions(tags)[-1]}):"
                f" main is left alone, the release goes to branch {targets[0].branch}")
    for target, plan, published in zip(targets, plans, [result, result.webdataset]):
        run.progress.tag = target.tag
        _publish_branch(run, target, plan, published, tags)
    return result


def _publish_branch(run: _Run, target: PublishTarget, plan: PublishPlan, result: PublishResult,
                    tags: dict[str, str]) -> None:
    """Bring `target.branch` to exactly `target.source` in one commit and tag it `target.tag`; fills `result`.
    A tag that already holds the same content means nothing to do (the caller refused other content)."""
    if plan.tag_commit is not None:
        run.say(f"{target.tag} is already published on {run.repo_id} at {plan.tag_commit[:12]} with identical"
                " content: nothing to do")
        result.already_published = True
        result.commit = plan.tag_commit
        result.skipped = [f.path for f in plan.files]
        return
    if plan.head is None:
        plan = _create_branch(run, target, tags)
    result.private = plan.private
    result.plan = plan
    result.skipped = [f.path for f in plan.already_on_hub]
    head = plan.head
    if not plan.branch_matches:  # (it matches when an earlier run's commit landed but its tag did not)
        head = _send_branch(run, target, plan)
        result.commits.append(head)
        result.uploaded = [f.path for f in plan.to_upload]
        result.deleted = list(plan.deletions)
    _tag_branch(run, target, plan, head, result)


def _create_branch(run: _Run, target: PublishTarget, tags: dict[str, str]) -> PublishPlan:
    """Create the missing branch where `branch_start` says, and plan again against it."""
    run.progress.stage = f"creating branch {target.branch}"
    start = branch_start(target, tags, lambda: repo_first_commit(run.api, run.repo_id))
    run.api.create_branch(run.repo_id, branch=target.branch, revision=start, repo_type=REPO_TYPE)
    run.say(f"created branch {target.branch} of {run.repo_id} from commit {start[:12]}")
    return run.plan(target)


def _send_branch(run: _Run, target: PublishTarget, plan: PublishPlan) -> str:
    """The one commit that moves the branch from the old release to the new one; returns its id."""
    run.progress.stage = f"asking whether the Hub offers Xet for branch {target.branch}"
    xet = choose_xet(run.api, plan.repo_id, target.branch, run.token, run.say)
    run.say(f"publishing {target.tag} to {plan.repo_id} (branch {plan.branch}): {len(plan.to_send)} files to upload"
            f" ({human_size(plan.upload_bytes)}), {len(plan.to_upload) - len(plan.to_send)} copied from elsewhere"
            f" in the repo, {len(plan.already_on_hub)} already on the branch,"
            f" {len(plan.deletions)} to delete, in one commit")
    source = target.source
    additions = [Addition(f.path, f.size, f.sha256, lambda f=f: source.open(f.path)) for f in plan.to_send]
    copies = [(f.path, *f.copy_from) for f in plan.to_upload if f.copy_from is not None]
    update = BranchUpdate(
        plan.repo_id, plan.branch, plan.head, additions, plan.deletions, copies,
        title=printable(f"{run.manifest.get('name', 'release')} {target.tag}", limit=200),
        description=f"{len(additions)} files added or updated, {len(plan.deletions)} deleted.",
    )

    def stage(text: str) -> None:
        run.progress.stage = text

    try:
        head = commit_atomically(run.api, update, xet=xet, stage=stage)
    except UploadError as err:
        raise PublishError(f"publishing {target.tag} to {plan.repo_id}: {err}") from None
    run.say(f"committed {len(plan.to_upload)} files ({human_size(plan.upload_bytes)} sent), {len(plan.deletions)}"
            f" deletions to branch {plan.branch} in one commit -> {head[:12]}")
    return head


def _tag_branch(run: _Run, target: PublishTarget, plan: PublishPlan, head: str | None,
                result: PublishResult) -> None:
    """Check the branch now holds exactly the release at `head`, then tag that commit."""
    repo_id, tag = plan.repo_id, target.tag
    run.progress.stage = "checking the branch"
    final_plan = run.plan(target)
    if not final_plan.branch_matches or final_plan.head != head:
        raise PublishError(
            f"after uploading, branch {plan.branch} of {repo_id} does not hold exactly the release"
            f" ({len(final_plan.to_upload)} files differ, {len(final_plan.deletions)} extra): someone else"
            " may be pushing to it. Not tagging; re-run to retry."
        )
    run.progress.stage = f"tagging {tag}"
    name = run.manifest.get("name", "release")
    if final_plan.tag_commit is None:
        run.api.create_tag(repo_id, tag=tag, revision=head, repo_type=REPO_TYPE, tag_message=f"{name} {tag[1:]}")
    elif not final_plan.tag_matches:
        raise PublishError(f"tag {tag} appeared on {repo_id} with different content while publishing")
    result.commit = final_plan.tag_commit or head
    run.say(f"tagged {tag} -> {result.commit[:12]}; published {result.url}")
