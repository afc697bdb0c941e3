"""Where the files shipped with the package live (schemas, default config), installed or from a checkout."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def schemas_dir() -> Path:
    # A wheel carries schemas/ inside the package; a source checkout or editable install has it at the top.
    for candidate in (_PACKAGE_DIR / "_schemas", _PACKAGE_DIR.parent / "schemas"):
        if (candidate / "record.schema.json").is_file():
            return candidate
    raise FileNotFoundError("schemas/ not found next to the pipeline package; reinstall mll23-pipeline")


@cache
def load_schema(name: str) -> dict:
    return json.loads((schemas_dir() / f"{name}.schema.json").read_text(encoding="utf-8"))


def default_config_path() -> Path:
    return _PACKAGE_DIR / "configs" / "mll23.toml"


def shipped_config_names() -> list[str]:
    """The configs that ship with the package (MLL23 and its sibling archives), by name."""
    return sorted(p.stem for p in (_PACKAGE_DIR / "configs").glob("*.toml"))


def shipped_config_path(name: str) -> Path | None:
    """The shipped config of that name ("matek19"), or None; only names listed by shipped_config_names count."""
    return _PACKAGE_DIR / "configs" / f"{name}.toml" if name in shipped_config_names() else None


def harmonised_map_path() -> Path:
    """The default label map of `mll23 harmonise`: the 11 classes MLL23 shares with Matek 2019 and Acevedo 2020,
    mapped as the MLL23 paper maps them (doi 10.1038/s41597-025-06223-x, the config's `doi`)."""
    return _PACKAGE_DIR / "configs" / "harmonised_labels.csv"


def template_path(name: str) -> Path:
    """A text template shipped in pipeline/templates/ (the dataset cards)."""
    return _PACKAGE_DIR / "templates" / name


def ci_workflow_path() -> Path:
    """The GitHub Actions workflow for maintainers' repositories (shipped inside the package)."""
    return template_path("verify-release.yml")


# The extras (pyproject's optional-dependencies) whose libraries `mll23 verify` loads a release with: the CI
# workflow installs them, else the webdataset and Croissant checks fail on a good release.
VERIFY_EXTRAS = ("croissant", "webdataset")
# A pip requirement's name and optional [extras], then the rest (a version specifier or "@ URL"); printable
# ASCII only, since the requirement is written into a double-quoted YAML string.
_REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?: *\[(?P<extras>[A-Za-z0-9._, -]*)\])?(?P<rest>[ -~]*)")


class RequirementError(ValueError):
    """--install is not a pip requirement this workflow can install."""


def with_verify_extras(requirement: str) -> str:
    """The requirement with VERIFY_EXTRAS added to its extras: 'mll23-pipeline==0.1.0' becomes
    'mll23-pipeline[croissant,webdataset]==0.1.0'; '... @ git+URL' keeps its URL."""
    match = _REQUIREMENT.fullmatch(requirement.strip())
    # quotes and backslashes would end or escape the YAML string; GitHub evaluates ${{ }} even inside env values
    if match is None or any(bad in requirement for bad in ('"', "\\", "${{")):
        raise RequirementError(
            f"--install {requirement!r} is not a pip requirement of the form NAME==X.Y.Z or 'NAME @ URL' "
            "(printable ASCII, no quotes, backslashes or ${{ }})"
        )
    given = {e.strip() for e in (match["extras"] or "").split(",") if e.strip()}
    extras = ",".join(sorted(given | set(VERIFY_EXTRAS)))
    return f"{match['name']}[{extras}]{match['rest']}"


_HUB_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")


def ci_workflow_text(install: str | None = None, hub_repo: str | None = None) -> str:
    """The workflow with the tool's pip requirement filled in (default: exactly this version of the tool), with
    the extras verify needs, and the Hub dataset its releases live in (default: ORG/NAME, which the job refuses);
    RequirementError when ``install`` is not a plain requirement or ``hub_repo`` not ORG/NAME."""
    from pipeline import __version__

    requirement = with_verify_extras(install or f"mll23-pipeline=={__version__}")
    if hub_repo is not None and not _HUB_REPO.fullmatch(hub_repo):
        raise RequirementError(f"--hub-repo {hub_repo!r} is not a dataset repository ORG/NAME")
    text = ci_workflow_path().read_text(encoding="utf-8").replace("@MLL23_PIPELINE@", requirement)
    return text.replace("@HF_DATASET@", hub_repo or "ORG/NAME")
