"""The robustness sweep (bench/bench_dedup_sweep.py) on a small sample of crops the synth never writes:
every transform row gives an answer the paper's semantics allow (README "Dedup: where the line is")."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load_sweep():
    spec = importlib.util.spec_from_file_location("bench_dedup_sweep", ROOT / "bench" / "bench_dedup_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


sweep = _load_sweep()
DUP, LOOK, NONE = sweep.DUPLICATE, sweep.LOOKALIKE, sweep.UNRELATED


@pytest.fixture(scope="module", params=[("scene", 4), ("field", 3)], ids=["own-generator", "synth-field-unused-stream"])
def results(request):
    source, crops = request.param
    return sweep.sweep(crops, seed=11, source=source, scores=False)


def _answers(results, group: str) -> set[str]:
    found = {a for r in results if r.row.group == group for a in r.answers}
    assert found, f"no row of kind {group!r}"
    return found


def test_every_row_gives_an_answer_its_semantics_allow(results):
    off = {r.row.name: r.answers for r in results if not r.holds}
    assert not off, off


def test_copies_of_one_scan_are_duplicates(results):
    for group in ("shift", "shift+brightness", "brightness", "contrast", "jpeg", "lossless", "noise"):
        assert _answers(results, group) == {DUP}, group


def test_another_focal_plane_or_crop_is_a_lookalike_not_a_duplicate(results):
    assert _answers(results, "refocus") == {LOOK}  # blur sigma >= 1
    assert _answers(results, "crop") == {LOOK}  # 4-24 px


def test_the_line_is_never_unrelated(results):
    """At the documented line (3 px shift, blur sigma 0.5, noise std 3-4) either answer keeps one cell in one split."""
    for group in ("shift 3", "refocus 0.5", "noise 3-4"):
        assert _answers(results, group) <= {DUP, LOOK}, group


def test_rotated_or_mirrored_copies_and_other_cells_are_unrelated(results):
    assert _answers(results, "rotation/flip") == {NONE}
    assert _answers(results, "control") == {NONE}


def test_readme_table_lists_every_row():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Dedup: where the line is", 1)[1].split("\n## ", 1)[0]
    for row in sweep.rows():
        assert f"| {row.name} |" in section, row.name
