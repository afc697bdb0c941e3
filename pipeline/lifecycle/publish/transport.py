"""Sending one planned branch update to the Hub: Xet or LFS, every large object first, then one atomic commit.

One branch update is: every large object uploaded first (`HfApi.preupload_lfs_files`), then exactly one
`create_commit` naming every added, changed and deleted file, with the branch head the plan was made against as
parent. Until that commit lands the branch shows the old release; after it, the new one; a kill at any moment in
between leaves uploaded objects that nothing references yet, which the next run finds on the server and does not
send again (over LFS the batch API answers "already stored"; over Xet hf_xet's dedup finds the chunks).

Xet or LFS: huggingface_hub 2.4.0 uploads through Xet whenever `hf_xet` is importable and HF_HUB_DISABLE_XET is
off, without asking the server, and fails where the server has no Xet. So we ask the server ourselves
(`server_offers_xet`: the xet-write-token route of the branch) and run the upload with Xet disabled
(`xet_disabled`) when the answer is LFS or the user disabled Xet.

What is uploaded is what was checked: every file is opened once through `pipeline.untrusted.files` (no link, no
hard link, no special file, at most the manifest's size). Small files are read from that descriptor, checked
against the manifest's sha256 and sent as bytes. Large files are given to the client as `/proc/self/fd/N` of
that same descriptor: Xet needs a path (an open buffer makes huggingface_hub fall back to LFS), and a path to the
descriptor reaches the checked inode whatever happens to the name afterwards (a swap for a link to the token file
included). After the upload the sha256 the client computed while reading (hf_xet hashes while chunking; the LFS
path hashes before sending) must equal the manifest's, or nothing is committed. Where /proc/self/fd does not
exist (not Linux) the open file objects are passed instead, which huggingface_hub uploads over LFS.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from urllib.parse import quote

from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete, HfApi, constants
from huggingface_hub.utils import (
    are_progress_bars_disabled,
    build_hf_headers,
    disable_progress_bars,
    enable_progress_bars,
    get_session,
    hf_raise_for_status,
)

from pipeline.untrusted.safetext import printable

REPO_TYPE = "dataset"
# Files up to this size are read whole, checked and sent as bytes (the Hub keeps files up to 10 MiB in git).
SMALL_FILE_BYTES = 10 << 20
# 404 codes of the token route that mean "no such repo/branch", not "no Xet here".
_MISSING = frozenset({"RepoNotFound", "RevisionNotFound"})
_FD_DIR = "/proc/self/fd"


class UploadError(RuntimeError):
    """The upload did not send what was checked, or the server answered something unusable; nothing committed."""


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def xet_disabled_by_user() -> bool:
    """HF_HUB_DISABLE_XET as huggingface_hub read it at import, or as set now."""
    return bool(constants.HF_HUB_DISABLE_XET) or _truthy(os.environ.get("HF_HUB_DISABLE_XET"))


def server_offers_xet(api: HfApi, repo_id: str, branch: str, token: str | None) -> bool:
    """Ask the server for a Xet write token for `branch` (which must exist): 200 with a casUrl means Xet, a 404
    that is not about a missing repo or branch means LFS only; anything else is raised as the Hub's error."""
    url = f"{api.endpoint}/api/{REPO_TYPE}s/{repo_id}/xet-write-token/{quote(branch, safe='')}"
    headers = build_hf_headers(token=token, library_name=api.library_name, library_version=api.library_version)
    response = get_session().get(url, headers=headers, follow_redirects=False)
    if response.status_code == 404 and response.headers.get("X-Error-Code") not in _MISSING:
        return False
    hf_raise_for_status(response)
    if response.status_code != 200:
        raise UploadError(f"{url}: unexpected HTTP {response.status_code} asking for a Xet write token")
    try:
        body = response.json()
    except ValueError:
        raise UploadError(f"{url}: the Xet write token answer is not JSON") from None
    cas = body.get("casUrl") if isinstance(body, dict) else None
    if not isinstance(cas, str) or not cas:
        raise UploadError(f"{url}: the Xet write token answer has no casUrl")
    return True


def choose_xet(api: HfApi, repo_id: str, branch: str, token: str | None, say: Callable[[str], None]) -> bool:
    """Whether to upload to `branch` over Xet: not when the user disabled it, else as the server answers."""
    if xet_disabled_by_user():
        say("Xet disabled by HF_HUB_DISABLE_XET: uploading over Git LFS")
        return False
    if server_offers_xet(api, repo_id, branch, token):
        say(f"the Hub offers Xet storage for branch {branch}: uploading over Xet")
        return True
    say(f"the Hub offers no Xet storage for branch {branch}: uploading over Git LFS")
    return False


@contextmanager
def xet_disabled() -> Iterator[None]:
    """huggingface_hub 2.4.0 reads HF_HUB_DISABLE_XET once at import into `constants.HF_HUB_DISABLE_XET`, and
    `is_xet_available()` consults that constant at call time: set both (the variable for child processes), then
    restore them."""
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


def bars_wanted() -> bool:
    """Progress bars only on a terminal outside CI: in a CI log every redraw is a line."""
    return sys.stderr.isatty() and not _truthy(os.environ.get("CI"))


@contextmanager
def quiet_progress() -> Iterator[None]:
    """Turn huggingface_hub's bars off (tqdm for LFS, the separate Xet reporter, which checks the same switch)
    unless `bars_wanted()`, and restore the previous state."""
    was_disabled = are_progress_bars_disabled()
    if not bars_wanted():
        disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            enable_progress_bars()


@dataclass(frozen=True)
class Addition:
    """One file to add: its repo path, the manifest's size and sha256, and how to open it checked."""

    path: str
    size: int
    sha256: str
    open: Callable[[], object]  # a context manager yielding the file opened through release_files


def _checked_bytes(add: Addition, fh) -> bytes:
    data = fh.read(add.size + 1)
    if len(data) != add.size or hashlib.sha256(data).hexdigest() != add.sha256:
        raise UploadError(f"{printable(add.path)}: changed since it was verified (size or sha256 differs from"
                          " manifest.json); nothing committed")
    return data


def checked_operation(add: Addition, opened: ExitStack) -> CommitOperationAdd:
    """The commit operation for `add`, reading only through the descriptor opened and checked now (kept open in
    `opened` until the commit is made)."""
    fh = opened.enter_context(add.open())
    if add.size <= SMALL_FILE_BYTES:
        return CommitOperationAdd(add.path, _checked_bytes(add, fh))
    fd_path = f"{_FD_DIR}/{fh.fileno()}"
    if os.path.isdir(_FD_DIR) and os.path.isfile(fd_path):
        return CommitOperationAdd(add.path, fd_path)
    return CommitOperationAdd(add.path, fh)  # no /proc: the file object itself (huggingface_hub then uses LFS)


def check_sent(operations: list[CommitOperationAdd], additions: list[Addition]) -> None:
    """The sha256 the client computed for every uploaded file is the manifest's: what was sent is what was
    verified. (Both upload paths hash large files while sending them; a file the server keeps in git is hashed
    here, lazily, through the same checked descriptor the commit reads it from.)"""
    for op, add in zip(operations, additions, strict=True):
        got = op.upload_info.sha256.hex()
        if got != add.sha256:
            raise UploadError(f"{printable(add.path)}: the bytes uploaded (sha256 {got[:12]}) are not the bytes"
                              f" verified (manifest.json {add.sha256[:12]}): the file changed during the upload;"
                              " nothing committed")


@dataclass(frozen=True)
class BranchUpdate:
    """Everything one atomic commit changes on a branch."""

    repo_id: str
    branch: str
    parent: str | None  # the head the plan was made against: the commit fails if someone moved the branch
    additions: list[Addition]
    deletions: list[str]
    copies: list[tuple[str, str, str]]  # (path, commit, path there) of objects the repo's store already holds
    title: str
    description: str


def commit_atomically(api: HfApi, update: BranchUpdate, *, xet: bool, stage: Callable[[str], None]) -> str:
    """Upload every large object of `update`, then make its one commit; returns the new head. Xet is used only
    when `xet` (the server offers it and the user did not disable it)."""
    with ExitStack() as opened:
        if not xet:
            opened.enter_context(xet_disabled())
        stage("opening and checking the files")
        operations = [checked_operation(add, opened) for add in update.additions]
        stage(f"uploading {len(operations)} files over {'Xet' if xet else 'LFS'}")
        api.preupload_lfs_files(update.repo_id, additions=operations, repo_type=REPO_TYPE, revision=update.branch)
        check_sent(operations, update.additions)
        stage(f"committing to branch {update.branch}")
        info = api.create_commit(
            update.repo_id,
            operations=[
                *operations,
                *(CommitOperationCopy(src, path, src_revision=rev) for path, rev, src in update.copies),
                *(CommitOperationDelete(p) for p in update.deletions),
            ],
            commit_message=update.title,
            commit_description=update.description,
            repo_type=REPO_TYPE,
            revision=update.branch,
            parent_commit=update.parent,
        )
    return info.oid

