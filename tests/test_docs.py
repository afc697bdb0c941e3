"""The documents tell the truth about the tree: every file they cite exists, ARCHITECTURE.md names every module
of pipeline/ (and nothing that is gone) on one page, and every module says its job in its docstring's first line."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "ARCHITECTURE.md", "bench/RESULTS.md"]
# Paths into the repository's own code and data (release_notes/ and .github/ in the documents are examples of a
# maintainer's repository, not files of this one).
CITED_PATH = re.compile(r"(?<![\w./-])((?:pipeline|tests|bench|schemas)/[\w/-]*(?:\.\w+)*)")
ONE_PAGE_LINES = 80


def modules() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "pipeline").rglob("*.py")
                  if p.name != "__main__.py")


def cited_paths(text: str) -> set[str]:
    return {m.group(1).rstrip(".") for m in CITED_PATH.finditer(text)}


def test_every_file_a_document_cites_exists() -> None:
    missing = {}
    for doc in DOCUMENTS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        gone = sorted(p for p in cited_paths(text) if not (ROOT / p).exists() and ".cache" not in p)
        if gone:
            missing[doc] = gone
    assert not missing, f"documents cite files the repository does not have: {missing}"


def test_no_document_or_module_cites_files_outside_the_repository() -> None:
    outside = ("FACTS.md", "classes.csv")
    texts = {doc: (ROOT / doc).read_text(encoding="utf-8") for doc in DOCUMENTS}
    texts |= {m: (ROOT / m).read_text(encoding="utf-8") for m in modules()}
    texts |= {p.relative_to(ROOT).as_posix(): p.read_text(encoding="utf-8") for p in (ROOT / "pipeline" / "configs").glob("*.toml")}
    cites = sorted(f"{name}: {word}" for name, text in texts.items() for word in outside if word in text)
    assert not cites, f"cited but not in the repository: {cites}"


def architecture_modules(text: str) -> set[str]:
    """The modules ARCHITECTURE.md names: under a heading "### `pipeline/<room>/`", each backticked `name.py`."""
    named, room = set(), None
    for line in text.splitlines():
        heading = re.match(r"### `(pipeline/(?:[\w]+/)*)`", line)
        if line.startswith("### "):
            room = heading.group(1) if heading else None
            continue
        if room:
            named |= {room + name for name in re.findall(r"`(\w+\.py)`", line)}
    return named


def test_architecture_names_every_module_and_only_those() -> None:
    named = architecture_modules((ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8"))
    wanted = {m for m in modules() if not m.endswith("__init__.py")}
    assert sorted(wanted - named) == [], "modules ARCHITECTURE.md does not name"
    assert sorted(named - wanted) == [], "ARCHITECTURE.md names modules that do not exist"


def test_architecture_is_one_page() -> None:
    lines = (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= ONE_PAGE_LINES, f"ARCHITECTURE.md has {len(lines)} lines; one page is {ONE_PAGE_LINES}"


def test_every_module_says_its_job_first() -> None:
    silent = []
    for module in modules():
        doc = ast.get_docstring(ast.parse((ROOT / module).read_text(encoding="utf-8")))
        if not doc or len(doc.splitlines()[0].split()) < 4:
            silent.append(module)
    assert not silent, f"modules without a first docstring line that says their job: {silent}"
