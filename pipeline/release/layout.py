"""The release layout: its file and folder names, shard names, the version's semver, and manifest.json.

The one place that knows what a release directory holds, so that build, harmonise, verify, diff, ancestry and
publish agree on it by construction:

    README.md                 the dataset card            manifest.json   every file's size and sha256, counts
    ledger.csv                every raw input's fate      croissant.json  Croissant 1.1 metadata
    data/{split}-{i:05d}-of-{n:05d}.parquet               sample/ the same naming, the card's `sample` config
    wds/{split}-{i:06d}.tar, wds/README.md                figures/*.png   release_notes/v{version}.md

Manifests are read two ways, with one schema check (`check_manifest`, schemas/manifest.schema.json): a release
being built is our own output and is read here with a plain `read_manifest`; any other release may be hostile
and is read only through pipeline.untrusted.files (no links, size caps, bounded JSON), which uses these names.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jsonschema

from pipeline.config import SPLITS
from pipeline.resources import load_schema
from pipeline.untrusted.safetext import show

# ---- file and folder names ---------------------------------------------------------------------------------

CARD = "README.md"
MANIFEST = "manifest.json"
LEDGER = "ledger.csv"
CROISSANT = "croissant.json"
DATA_DIR = "data"
SAMPLE_DIR = "sample"
WDS_DIR = "wds"
WDS_CARD = f"{WDS_DIR}/{CARD}"
FIGURES_DIR = "figures"
NOTES_DIR = "release_notes"
LEDGER_COLUMNS = ("source_file", "input", "label", "fate", "reason", "duplicate_of", "split", "image_id", "file_sha256")


def notes_relpath(version: str) -> str:
    return f"{NOTES_DIR}/v{version}.md"


def parquet_shard_name(split: str, index: int, count: int) -> str:
    """A Parquet shard's name inside data/ (or sample/): `datasets` reads `-of-N` as the split's shard count.
    (A tar shard's name is made in one place, pipeline.release.wds.shard_name; TAR_SHARD below matches it.)"""
    return f"{split}-{index:05d}-of-{count:05d}.parquet"


# re.ASCII: `\d` alone also matches the digits of other scripts ("train-٠٠٠٠٠-of-00001.parquet" looks like a shard)
_SPLIT = "(" + "|".join(SPLITS) + ")"
_PARQUET = _SPLIT + r"-\d{5}-of-\d{5}\.parquet"
_TAR = _SPLIT + r"-\d{6}\.tar"
PARQUET_SHARD = re.compile(f"^{DATA_DIR}/{_PARQUET}$", re.ASCII)
SAMPLE_SHARD = re.compile(f"^{SAMPLE_DIR}/{_PARQUET}$", re.ASCII)
TAR_SHARD = re.compile(f"^{WDS_DIR}/{_TAR}$", re.ASCII)
# Every file a release may hold besides manifest.json; verify refuses any other name, so no file a loader would
# treat specially (a loading script, dataset_infos.json, a pickle) can ride along in a release.
RELEASE_FILE = re.compile(
    "^("
    + "|".join((
        re.escape(CARD), re.escape(CROISSANT), re.escape(LEDGER),
        f"{DATA_DIR}/{_PARQUET}",
        re.escape(WDS_CARD), f"{WDS_DIR}/{_TAR}",
        f"{SAMPLE_DIR}/{_PARQUET}",
        f"{FIGURES_DIR}/[A-Za-z0-9_-]{{1,100}}\\.png",
        f"{NOTES_DIR}/v[0-9A-Za-z.-]{{1,100}}\\.md",
    ))
    + ")$",
    re.ASCII,
)

# ---- versions ----------------------------------------------------------------------------------------------

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z.-]+))?$")


class VersionError(ValueError):
    """A version that is not a semantic version; the message quotes it."""


def version_key(version: str) -> tuple:
    """Sort key with semantic-version precedence: 1.0.0-rc.1 < 1.0.0 < 1.0.1 < 1.1.0 < 2.0.0."""
    m = SEMVER.match(version)
    if not m:
        raise VersionError(f"{version!r} is not a semantic version X.Y.Z[-prerelease]")
    major, minor, patch, pre = m.groups()
    if pre is None:
        # a release sorts after all of its pre-releases
        pre_key: tuple = (1,)
    else:
        # numeric identifiers sort numerically and before alphanumeric ones (semver.org, rule 11)
        pre_key = (0, *((0, int(p), "") if p.isdigit() else (1, 0, p) for p in pre.split(".")))
    return (int(major), int(minor), int(patch), pre_key)


# ---- manifest.json: the schema check -------------------------------------------------------------------------


class ManifestError(Exception):
    """manifest.json cannot be used: nothing else can be checked. The message names the key and the reason."""


def _is_int(checker, instance: object) -> bool:  # noqa: ANN001 - jsonschema's signature
    """An integer only: jsonschema counts 1.0 as one, and a float size reaches file reads as a float."""
    return isinstance(instance, int) and not isinstance(instance, bool)


_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_int),
)


def check_manifest(doc: object, required: tuple[str, ...] | None = None) -> dict:
    """`doc` if it is of schemas/manifest.schema.json, else ManifestError naming the first bad key; `required`
    narrows the schema's required keys (publish needs only the version and the file list)."""
    schema = load_schema("manifest")
    if required is not None:  # only these keys are needed, and only their shape is checked
        schema = {**schema, "required": list(required), "properties": {k: schema["properties"][k] for k in required}}
    # the best of the first errors: iter_errors is lazy, and a list of ten million wrong items would otherwise
    # be validated (and reported) item by item before best_match could choose
    error = jsonschema.exceptions.best_match(itertools.islice(_Validator(schema).iter_errors(doc), 100))
    if error is not None:
        where = "/".join(map(str, error.absolute_path)) or "(the document)"
        message, instance = error.message, repr(error.instance)
        if message.startswith(instance):  # jsonschema leads with the value, which may be a megabyte long
            message = show(instance, 80) + message[len(instance):]
        raise ManifestError(f"{MANIFEST}: {show(where)}: {show(message, 300)}")
    return doc  # type: ignore[return-value]


# ---- manifest.json of a release this process writes ----------------------------------------------------------

_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def list_release_files(release_dir: Path) -> list[str]:
    """Every file of a release (POSIX relpaths, sorted) except the manifest itself."""
    return sorted(
        p.relative_to(release_dir).as_posix()
        for p in release_dir.rglob("*")
        if p.is_file() and p.relative_to(release_dir).as_posix() != MANIFEST
    )


def file_entries(release_dir: Path, known: Iterable[dict] = ()) -> list[dict]:
    """Path, size and sha256 of every release file. ``known``: entries this build computed moments ago for
    files it has not touched since (same size), so the gigabytes of shards are hashed once, not twice."""
    rels = list_release_files(release_dir)
    sizes = {rel: (release_dir / rel).stat().st_size for rel in rels}
    reuse = {e["path"]: e["sha256"] for e in known if sizes.get(e["path"]) == e["size"]}
    todo = [rel for rel in rels if rel not in reuse]
    # hashlib releases the GIL while hashing: threads hash several shards at once.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        reuse.update(zip(todo, pool.map(sha256_file, [release_dir / rel for rel in todo])))
    return [{"path": rel, "size": sizes[rel], "sha256": reuse[rel]} for rel in rels]


def dumps_json(doc: object) -> str:
    """The one JSON style of a release: sorted keys, two-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_manifest(release_dir: Path, body: dict, known: Iterable[dict] = ()) -> dict:
    """manifest.json: `body` plus the size and sha256 of every other file now in `release_dir`."""
    doc = dict(body)
    doc["files"] = file_entries(release_dir, known)
    (release_dir / MANIFEST).write_text(dumps_json(doc), encoding="utf-8")
    return doc


def read_manifest(release_dir: Path, required: tuple[str, ...] | None = None) -> dict:
    """manifest.json of a release this process built (a plain read), schema-checked like any other release's."""
    return check_manifest(json.loads((Path(release_dir) / MANIFEST).read_text(encoding="utf-8")), required)
