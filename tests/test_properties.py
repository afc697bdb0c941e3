"""Property-based tests (hypothesis): the annotations.csv parser, the config loader, the image decoder on mangled
bytes, and the dedup grouping. Example counts are kept small so the file runs in seconds; the seeds are derandomised
so CI runs the same examples every time."""

from __future__ import annotations

import copy
import csv
import io
import random
import tempfile
import tomllib
from functools import cache
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pipeline.stages.annotations import normalise_relpath, parse_bool
from pipeline.config import ConfigError, load_config, validate_config
from pipeline.stages.decode import decode_image
from pipeline.stages.dedup import deduplicate
from pipeline.stages.imagecheck import ImageRejected
from pipeline.stages.ingest import ingest
from pipeline.resources import default_config_path
from pipeline.synth.generator import synthesize
from tests.rawkit import crop, encode

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the mangled EXIF it refuses
PROFILE = settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
FOLDERS = ("myeloblast", "monocyte")
NAMES = ("a.tif", "b c.tif", "zelle_ä.tif", "x,y.tif", 'q"uote.tif')
FILES = tuple(f"{folder}/{name}" for folder in FOLDERS for name in NAMES)
BOOLS = ("true", "false", "1", "0", "yes", "NO", "", "maybe", "2")
CELL = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=8)


# ---- annotations.csv ------------------------------------------------------------------------------------

@st.composite
def annotation_rows(draw):
    image = draw(st.one_of(
        st.sampled_from(FILES),
        st.sampled_from(FILES).map(lambda p: "./" + p),
        st.sampled_from(FILES).map(lambda p: p.replace("/", "/../" + p.split("/")[0] + "/", 1)),
        st.sampled_from(["../secret.tif", "/etc/passwd", "C:\\raw\\a.tif", "monocyte/ghost.tif", ""]),
    ))
    label = draw(st.one_of(st.sampled_from(FOLDERS), st.sampled_from(["eosinophil", "giant_cell", "Myeloblast", ""])))
    return {"image": image, "label": label, "patient_id": draw(CELL), "dysplastic": draw(st.sampled_from(BOOLS)), "note": draw(CELL)}


def _write_csv(raw: Path, rows: list[dict], crlf: bool, bom: bool) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "label", "patient_id", "dysplastic", "note"], lineterminator="\r\n" if crlf else "\n")
    writer.writeheader()
    writer.writerows(rows)
    (raw / "annotations.csv").write_bytes(("\ufeff" if bom else "").encode() + buf.getvalue().encode("utf-8"))


def _expected_items(rows: list[dict]) -> dict[str, dict]:
    """The oracle: a file is usable iff rows name it, every one of them is valid, they agree, and the label is its folder."""
    by_file: dict[str, list[dict]] = {}
    for row in rows:
        if not any(v.strip() for v in row.values()):
            continue  # a row of empty cells is skipped like a blank line
        rel = normalise_relpath(row["image"])
        if rel is not None:
            by_file.setdefault(rel, []).append(row)
    expected = {}
    for rel, its_rows in by_file.items():
        values = [(r["label"].strip(), r["patient_id"].strip() or None, parse_bool(r["dysplastic"]), r["note"].strip() or None) for r in its_rows]
        label, patient, dysplastic, note = values[0]
        if rel in FILES and len(set(values)) == 1 and dysplastic is not None and label == rel.split("/")[0]:
            expected[rel] = {"label": label, "patient_id": patient, "dysplastic": dysplastic, "extra": (("note", note),)}
    return expected


def _outcome(rows: list[dict], crlf: bool, bom: bool, config) -> tuple[dict[str, dict], set[str], list[str]]:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp)
        for rel in FILES:
            (raw / rel).parent.mkdir(parents=True, exist_ok=True)
            (raw / rel).write_bytes(b"")  # ingest reads names and sizes only
        _write_csv(raw, rows, crlf, bom)
        result = ingest(raw, config)
    items = {i.relpath: {"label": i.label, "patient_id": i.patient_id, "dysplastic": i.dysplastic, "extra": i.extra} for i in result.items}
    invalid_files = {i.relpath for i in result.invalid if i.input_kind == "file"}
    return items, invalid_files, [i.reason for i in result.invalid]


@PROFILE
@given(rows=st.lists(annotation_rows(), max_size=12), crlf=st.booleans(), bom=st.booleans(), seed=st.integers(0, 2**16))
def test_annotation_parser_accounts_for_every_file_and_matches_the_oracle(rows, crlf, bom, seed, config):
    items, invalid_files, reasons = _outcome(rows, crlf, bom, config)
    event("some file accepted" if items else "no file accepted")
    event("files listed with disagreeing rows" if any("different values" in r for r in reasons) else "no disagreeing rows")
    assert set(items) | invalid_files == set(FILES) and not set(items) & invalid_files  # every file exactly once
    assert items == _expected_items(rows)
    assert all(r.startswith("annotations.csv line") or r == "no row for this file in annotations.csv" for r in reasons)

    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    items_again, invalid_again, _ = _outcome(shuffled, not crlf, bom, config)
    assert (items_again, invalid_again) == (items, invalid_files)  # row order and line endings do not matter


# ---- config loader --------------------------------------------------------------------------------------

SHIPPED = tomllib.loads(default_config_path().read_text(encoding="utf-8"))
JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node[:3]):
            yield from _paths(v, prefix + (i,))


ALL_PATHS = [p for p in _paths(SHIPPED) if p]


@st.composite
def mutations(draw):
    path = draw(st.sampled_from(ALL_PATHS))
    action = draw(st.sampled_from(["set", "delete", "add"]))
    value = draw(JSONISH)
    return path, action, value, draw(st.text(min_size=1, max_size=6))


def _apply(doc: dict, path: tuple, action: str, value, new_key: str) -> tuple:
    """Mutate doc at path; returns the path an error must name (itself or an ancestor)."""
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if action == "set":
        parent[last] = value
        return path
    if action == "delete":
        del parent[last]
        return path
    target = parent[last]
    if isinstance(target, dict) and new_key not in target:
        target[new_key] = value
        return path + (new_key,)
    parent[last] = value
    return path


@PROFILE
@given(changes=st.lists(mutations(), min_size=1, max_size=2))
def test_config_loader_accepts_or_names_a_mutated_key(changes):
    doc = copy.deepcopy(SHIPPED)
    touched = []
    for path, action, value, new_key in changes:
        try:
            touched.append(_apply(doc, path, action, value, new_key))
        except (KeyError, IndexError, TypeError):  # an earlier change removed or replaced this path
            continue
    try:
        cfg = validate_config(doc, "fuzz.toml")
    except ConfigError as exc:
        event("refused")
        message = str(exc)
        named = [".".join(map(str, p[:n])) for p in touched for n in range(1, len(p) + 1)]
        assert any(f"key '{k}" in message for k in named) or "key '(top level)'" in message, message
        return
    # accepted: every accessor the build uses works on it
    assert len(cfg.class_names) == len(set(cfg.class_names)) >= 2
    assert abs(sum(cfg.split_fractions.values()) - 1) < 1e-9
    assert cfg.image_size[0] >= 1 and cfg.max_file_bytes >= 1 and len(cfg.digest()) == 64


# ---- decoder on mangled bytes ---------------------------------------------------------------------------

SMALL = (24, 24)
SEEDS = {fmt: encode(crop(5, SMALL), fmt) for fmt in ("TIFF", "PNG", "JPEG")}


@PROFILE
@example(fmt="TIFF", edits=[(0, 7)], cut=0)  # a TIFF directory count of 7: counting frames raised TypeError, not a refusal
@given(fmt=st.sampled_from(sorted(SEEDS)), edits=st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=6), cut=st.integers(0, 2**20))
def test_decoder_refuses_mangled_bytes_with_a_reason_and_never_crashes(fmt, edits, cut):
    seed = SEEDS[fmt]
    data = bytearray(seed[: len(seed) - cut % (len(seed) - 8)])  # keep at least the 8 magic bytes
    for where, byte in edits:  # past the magic bytes, so most mangled files still claim their format
        data[8 + where % (len(data) - 8)] = byte
    try:
        facts, rgb = decode_image(bytes(data), "myeloblast/x", "myeloblast", SMALL)
    except ImageRejected as exc:
        event(f"refused: {str(exc).split(':')[0]}")
        assert str(exc)
        return
    event("decoded")
    assert rgb.shape == (SMALL[1], SMALL[0], 3) and len(facts.pixel_sha256) == 64


# ---- dedup grouping -------------------------------------------------------------------------------------

POOL_SIZE = 6


@cache
def _pool() -> tuple[list, list]:
    """Distinct synthetic cells (from `synthesize`, whose images dedup is calibrated on), each decoded as its exact
    pixels and as a JPEG q92 re-encoding (a lossy copy dedup must find by pHash and confirm on pixels)."""
    exact, jpeg = [], []
    with tempfile.TemporaryDirectory() as tmp:
        synthesize(Path(tmp), config=load_config(), scale=0.001, seed=0, workers=1)
        with open(Path(tmp) / "synth_truth.csv", newline="") as fh:
            originals = sorted(row["image"] for row in csv.DictReader(fh) if row["kind"] == "original")
        for rel in originals:
            facts, rgb = decode_image((Path(tmp) / rel).read_bytes(), rel, "x", (288, 288))
            if all(bin(facts.phash ^ other.phash).count("1") > 12 for other, _ in exact):
                exact.append((facts, rgb))
                jpeg.append(decode_image(encode(rgb, "JPEG", quality=92), rel, "x", (288, 288)))
            if len(exact) == POOL_SIZE:
                return exact, jpeg
    raise AssertionError("the synthetic archive has too few distinct cells")


@st.composite
def planted(draw):
    """Files (relpath, cell, label, kind, lossless), each a copy of one pool cell."""
    files = []
    for i in range(draw(st.integers(1, 14))):
        cell = draw(st.integers(0, POOL_SIZE - 1))
        label = draw(st.sampled_from(FOLDERS))
        kind = draw(st.sampled_from(["exact", "exact", "jpeg"]))
        lossless = kind == "exact" and draw(st.booleans())
        files.append((f"{label}/f{i:02d}.{'jpg' if kind == 'jpeg' else 'tif'}", cell, label, kind, lossless))
    return files


def _dedup(files, policy):
    exact, jpeg = _pool()
    decoded = {rel: (exact if kind == "exact" else jpeg)[cell] for rel, cell, _, kind, _ in files}
    facts = [replace(decoded[rel][0], relpath=rel, label=label, lossless=lossless) for rel, _, label, _, lossless in files]
    return deduplicate(facts, lambda rel: decoded[rel][1], phash_threshold=4, lookalike_threshold=10, policy=policy)


def _expected_fates(members, policy) -> dict[str, tuple[str, str | None]]:
    """The policy, written out: relpath -> (fate, duplicate_of) for the copies of one cell."""
    labels = Counter(m[2] for m in members)
    winner, votes = max(labels.items(), key=lambda kv: (kv[1], kv[0]))
    if len(labels) > 1 and not (policy == "majority" and 2 * votes > len(members)):
        return {m[0]: ("label_conflict", None) for m in members}
    keepers = [m for m in members if m[2] == winner]
    best = min(keepers, key=lambda m: (not m[4], m[0]))[0]  # lossless first, then the first path
    expected = {m[0]: ("label_conflict", None) for m in members if m[2] != winner}
    expected.update({m[0]: ("duplicate", best) for m in keepers})
    expected[best] = ("kept", None)
    return expected


@PROFILE
@given(files=planted(), policy=st.sampled_from(["drop_all", "majority"]), seed=st.integers(0, 2**16))
def test_dedup_obeys_the_conflict_policy_and_ignores_input_order(files, policy, seed):
    result = _dedup(files, policy)
    cells: dict[int, list] = {}
    for f in files:
        cells.setdefault(f[1], []).append(f)
    for members in cells.values():
        labels = {m[2] for m in members}
        event(f"{policy}: {'conflict' if len(labels) > 1 else 'agreeing' if len(members) > 1 else 'single'}{' with a JPEG copy' if any(m[3] == 'jpeg' for m in members) and len(members) > 1 else ''}")
        got = {m[0]: (result.fates[m[0]][0], result.fates[m[0]][2]) for m in members}
        expected = _expected_fates(members, policy)
        if len(labels) > 1 and "kept" in {fate for fate, _ in expected.values()}:
            event("majority: strict majority kept, minority dropped")
        assert got == expected
        assert len({result.group_of[m[0]] for m in members}) == 1  # one cell, one look-alike group
    assert len({result.group_of[m[0]] for m in files}) == len(cells)  # and different cells stay apart
    shuffled = list(files)
    random.Random(seed).shuffle(shuffled)
    again = _dedup(shuffled, policy)
    assert (again.fates, again.group_of, again.pairs) == (result.fates, result.group_of, result.pairs)


def test_pool_cells_are_distinct_and_their_jpeg_copies_near():
    exact, jpeg = _pool()
    assert len({facts.pixel_sha256 for facts, _ in exact + jpeg}) == 2 * POOL_SIZE
    assert all(bin(e.phash ^ j.phash).count("1") <= 4 for (e, _), (j, _) in zip(exact, jpeg))
