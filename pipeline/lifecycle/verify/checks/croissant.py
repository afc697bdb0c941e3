"""The croissant check: croissant.json names this version and every file, and holds only what the build writes.

It holds nothing for mlcroissant to run (context, record sets, file sets) but what the build writes.
"""

from __future__ import annotations

from collections.abc import Iterator

from pipeline.config import ConfigError, validate_config
from pipeline.release import croissant as croissant_format  # what the build writes
from pipeline.release.layout import CROISSANT, MANIFEST, show
from pipeline.records import ReleaseCounts
from pipeline.untrusted.files import ReleaseFileError, parse_json
from pipeline.lifecycle.verify.options import VerifyOptions
from pipeline.lifecycle.verify.view import Refused, ReleaseView, as_list

_FILE_OBJECT_KEYS = frozenset({"@id", "@type", "contentSize", "contentUrl", "encodingFormat", "name", "sha256", "description"})


def check_croissant(view: ReleaseView, opts: VerifyOptions) -> Iterator[str]:
    """croissant.json: this version, every file with its sha256, and nothing for mlcroissant to run but what the
    build writes (context, record sets, file sets)."""
    try:
        doc = _croissant_doc(view)
    except Refused as exc:
        yield str(exc)
        return
    if doc.get("version") != view.manifest["version"]:
        yield f"{CROISSANT}: version is {show(doc.get('version'))}, {MANIFEST} says {view.manifest['version']}"
    distribution = as_list(doc.get("distribution"))
    objects = [d for d in distribution if isinstance(d, dict) and d.get("@type") == "cr:FileObject"]
    yield from _file_object_problems(view, objects)
    try:
        build = _croissant_build_parts(view)
    except ConfigError as exc:
        yield f"{CROISSANT} cannot be compared with what the build writes: {exc}"
        return
    if doc.get("@context") != build["@context"]:
        yield f"{CROISSANT}: @context is not the one the build writes (a context can make JSON-LD readers fetch URLs)"
    if doc.get("recordSet") != build["recordSet"]:
        yield f"{CROISSANT}: recordSet differs from what the build writes for this config (its regexes and columns would be run)"
    others = [d for d in distribution if not (isinstance(d, dict) and d.get("@type") == "cr:FileObject")]
    if others != build["fileSets"]:
        yield f"{CROISSANT}: file sets differ from what the build writes (their glob patterns would be expanded)"
    for d in objects:
        if set(d) - _FILE_OBJECT_KEYS or not all(isinstance(v, str) for v in d.values()):
            yield f"{CROISSANT}: file object {show(d.get('contentUrl'))} has keys or values the build does not write"
    yield from _text_problems(doc)


def _file_object_problems(view: ReleaseView, objects: list[dict]) -> Iterator[str]:
    """The file objects declare exactly the files manifest.json lists (but itself and croissant.json), with their sha256."""
    declared = {d.get("contentUrl"): d.get("sha256") for d in objects}
    listed = {f["path"]: f["sha256"] for f in view.manifest["files"] if f["path"] not in (CROISSANT, MANIFEST)}
    for rel in sorted(set(declared) | set(listed), key=str):
        if declared.get(rel) != listed.get(rel):
            if rel not in declared:
                yield f"{CROISSANT} does not declare {show(rel)}"
            elif rel not in listed:
                yield f"{CROISSANT} declares {show(rel)}, which {MANIFEST} does not list"
            else:
                yield f"{CROISSANT}: sha256 of {show(rel)} is {show(declared[rel])}, {MANIFEST} says {listed[rel]}"


def _text_problems(doc: dict) -> Iterator[str]:
    """The dataset's own fields are plain text, and it is an sc:Dataset."""
    for key, value in sorted(doc.items()):
        if key in ("@context", "@type", "distribution", "recordSet"):
            continue
        # a JSON-LD node object anywhere (`@context`, `@graph`, `@included`, a nested FileObject) would be read by
        # mlcroissant's JSON-LD parser; the build writes plain text here
        if key.startswith("@") or not _plain(value):
            yield f"{CROISSANT}: {show(key)} holds more than text, which the build does not write"
    if doc.get("@type") != "sc:Dataset":
        yield f"{CROISSANT}: @type is {show(doc.get('@type'))}, expected sc:Dataset"


def _croissant_doc(view: ReleaseView) -> dict:
    try:
        doc = parse_json(view.read_text(CROISSANT), CROISSANT)
    except ReleaseFileError as exc:
        raise Refused(str(exc)) from None
    except ValueError as exc:  # bounded before parsing, duplicate keys refused (pipeline.untrusted.files.parse_json)
        raise Refused(str(exc)) from None
    if not isinstance(doc, dict):
        raise Refused(f"{CROISSANT} is a JSON {type(doc).__name__}, not an object")
    return doc


def _croissant_build_parts(view: ReleaseView) -> dict:
    """The parts of croissant.json that mlcroissant acts on (the JSON-LD context, the record sets with their
    regexes and column paths, the file sets with their glob patterns), as this tool writes them for the
    release's config: verify lets mlcroissant run only these, never a regex, glob or remote context from a release."""
    if not isinstance(view.manifest.get("config"), dict):
        raise ConfigError(f"{MANIFEST} records no config")
    if "harmonised_from" in view.manifest:  # `mll23 harmonise`: per-source columns, a config of its own shape
        from pipeline.lifecycle.harmonise import add_source_fields, croissant_config_of

        config = croissant_config_of(view.manifest)
        images = add_source_fields(croissant_format.images_record_set(config))
    else:
        config = validate_config(view.manifest["config"], f"{MANIFEST} (config)")
        images = croissant_format.images_record_set(config)
    return {
        "@context": croissant_format.CONTEXT,
        "recordSet": [croissant_format.splits_record_set(), croissant_format.classes_record_set(config), images],
        "fileSets": [d for d in croissant_format.croissant_document(config, ReleaseCounts.from_manifest(view.manifest["counts"]), [])["distribution"] if d.get("@type") == "cr:FileSet"],
    }


def _plain(value: object) -> bool:
    """Text, a number or a list of those: no JSON-LD node object."""
    if isinstance(value, list):
        return all(isinstance(v, (str, int, float, bool)) for v in value)
    return isinstance(value, (str, int, float, bool)) or value is None
