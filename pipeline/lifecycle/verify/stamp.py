"""The stamp of a passed verify: a resumed or no-op publish of an unchanged release is not verified again.

The stamp lives outside the release (in the user's cache directory, `$XDG_CACHE_HOME/mll23/verified/`): a
release is untrusted input and anything inside it could claim to be verified. It is named by a digest of
- manifest.json's sha256 (what the release says it is),
- every file's stat as listed without following links: path, device, inode, size, link count, mtime_ns and
  ctime_ns. Writing a file, replacing it, adding a hard link or touching it changes its ctime, which no user
  process can set back, so an unchanged key means unchanged files on this machine;
- the tool's version and which checks ran (a stamp of the self-check alone does not stand for `mll23 verify`).
The stamp's content repeats the key; a stamp is used only when the file exists under that digest and holds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from pipeline import __version__
from pipeline.runtime.cache import default_cache_dir
from pipeline.untrusted.files import TEXT_CAPS, ReleaseDir, ReleaseFileError
from pipeline.release.layout import MANIFEST


def stamp_dir() -> Path:
    return default_cache_dir() / "verified"


def release_key(release_dir: Path, checks: str) -> str | None:
    """The digest naming a stamp for this release as it is now, or None when it cannot be listed cleanly (then
    nothing is skipped: the full verify says why)."""
    release = ReleaseDir(Path(release_dir))
    try:
        listing = release.listing()
        if listing.problems or listing.hard_links:
            return None
        _, manifest_sha = release.hash(MANIFEST, max_bytes=TEXT_CAPS[MANIFEST], allow_hard_links=False)
        fd = release.root_fd()
    except (ReleaseFileError, OSError):
        return None
    try:
        files = []
        for rel in listing.files:
            st = os.stat(rel, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                return None
            files.append([rel, st.st_dev, st.st_ino, st.st_size, st.st_nlink, st.st_mtime_ns, st.st_ctime_ns])
        root = os.fstat(fd)
    except OSError:
        return None
    finally:
        os.close(fd)
    doc = {"tool": __version__, "checks": checks, "manifest_sha256": manifest_sha,
           "root": [root.st_dev, root.st_ino], "files": files}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def is_stamped(key: str | None) -> bool:
    if key is None:
        return False
    try:
        return (stamp_dir() / key).read_text(encoding="utf-8") == key
    except OSError:
        return False


def stamp(key: str | None) -> None:
    """Record that the release under `key` passed; a cache that cannot be written only costs a verify later."""
    if key is None:
        return
    try:
        stamp_dir().mkdir(parents=True, exist_ok=True)
        tmp = stamp_dir() / f".{key}.{os.getpid()}"
        tmp.write_text(key, encoding="utf-8")
        os.replace(tmp, stamp_dir() / key)
    except OSError:
        pass
