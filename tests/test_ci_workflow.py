"""The workflow `mll23 ci-workflow` prints is safe to run on pull requests from anyone, and installs what verify needs."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import pipeline
from pipeline.cli import app
from pipeline.resources import VERIFY_EXTRAS, RequirementError, with_verify_extras

ROOT = Path(pipeline.__file__).resolve().parent.parent


def _printed(*args: str) -> str:
    result = CliRunner().invoke(app, ["ci-workflow", *args])
    assert result.exit_code == 0, result.output
    return result.output


def _strings(node) -> list[str]:
    """Every key and value of the parsed YAML (comments are gone): what GitHub would evaluate."""
    if isinstance(node, dict):
        return [s for k, v in node.items() for s in _strings(k) + _strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in _strings(v)]
    return [node] if isinstance(node, str) else []


@pytest.fixture(scope="module")
def text() -> str:
    return _printed()


@pytest.fixture(scope="module")
def workflow(text) -> dict:
    return yaml.safe_load(text)


def _steps(workflow: dict) -> list[dict]:
    return [step for job in workflow["jobs"].values() for step in job["steps"]]


def test_runs_on_pull_request_never_pull_request_target(workflow):
    triggers = workflow[True] if True in workflow else workflow["on"]  # YAML 1.1 reads the key `on` as true
    assert "pull_request" in triggers
    assert not any("target" in str(t) for t in triggers)


def test_read_only_token_and_no_secrets(workflow):
    assert workflow["permissions"] == {"contents": "read"}
    for job in workflow["jobs"].values():
        assert job.get("permissions", {"contents": "read"}) == {"contents": "read"}
    used = [s for s in _strings(workflow) if "secrets" in s or "github.token" in s or "GITHUB_TOKEN" in s]
    assert used == []


def test_checkout_keeps_no_credentials(workflow):
    checkouts = [s for s in _steps(workflow) if str(s.get("uses", "")).startswith("actions/checkout@")]
    assert len(checkouts) == 1
    assert checkouts[0]["with"]["persist-credentials"] is False


def test_no_expression_is_interpolated_into_a_script(workflow):
    scripts = [s["run"] for s in _steps(workflow) if "run" in s]
    assert scripts and all("${{" not in script for script in scripts)
    assert not any("${{" in s for s in _strings(workflow))  # nor anywhere else


def test_the_header_comment_says_how_it_is_safe(text):
    header = "\n".join(line for line in text.splitlines() if line.startswith("#"))
    for promise in ("`pull_request`, never `pull_request_target`", "permissions: contents: read", "no secret",
                    "persist-credentials: false", "${{ }}", "extras"):
        assert promise in header, promise


def _requirement_names(specs: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9._-]+", s).group(0).lower().replace("_", "-") for s in specs}


def _imported_names(module: str) -> set[str]:
    """Every module name an import statement of `module` (a pipeline module) names, at any depth of its code."""
    tree = ast.parse((ROOT / (module.replace(".", "/") + ".py")).read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.module and n.level == 0:
            names.add(n.module)
            names |= {f"{n.module}.{a.name}" for a in n.names}  # `from pipeline import build`
    return names


def _imports_reached_from(start: str) -> set[str]:
    """Top-level names of every module imported by `start` and by the pipeline modules it reaches."""
    seen, todo, tops = set(), [start], set()
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in _imported_names(module):
            tops.add(name.split(".")[0])
            if name.startswith("pipeline.") and (ROOT / (name.replace(".", "/") + ".py")).is_file():
                todo.append(name)
    return tops


def test_installs_the_extras_every_library_verify_imports_comes_from(workflow):
    assert workflow["env"]["MLL23_PIPELINE"] == f"mll23-pipeline[{','.join(sorted(VERIFY_EXTRAS))}]=={pipeline.__version__}"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    installed = _requirement_names(project["dependencies"])
    for extra in VERIFY_EXTRAS:
        installed |= _requirement_names(project["optional-dependencies"][extra])
    modules = _imports_reached_from("pipeline.lifecycle.verify.registry")
    # verify --rebuild builds with the local executor; dask only serves `build --executor dask`
    not_for_verify = {"dask", "distributed"}
    third_party = sorted(m for m in modules - not_for_verify if m not in sys.stdlib_module_names and m != "pipeline")
    # the walk sees the imports of verify and of every pipeline module it reaches, the lazy ones inside functions too
    assert {"datasets", "yaml", "webdataset", "mlcroissant"} <= set(third_party)
    distributions = importlib.metadata.packages_distributions()
    missing = {m: distributions[m] for m in third_party if not {d.lower() for d in distributions[m]} & installed}
    assert missing == {}, f"verify imports modules whose distribution the CI install lacks: {missing}"


def test_install_spec_gets_the_extras_and_bad_specs_are_refused():
    spec = "mll23-pipeline @ git+https://example.org/mll23-pipeline@v0.1.0"
    pinned = yaml.safe_load(_printed("--install", spec))
    assert pinned["env"]["MLL23_PIPELINE"] == "mll23-pipeline[croissant,webdataset] @ git+https://example.org/mll23-pipeline@v0.1.0"
    assert with_verify_extras("mll23-pipeline[dask]>=0.1") == "mll23-pipeline[croissant,dask,webdataset]>=0.1"
    for bad in ('x" evil: "y', "mll23-pipeline\nname: forged", "mll23-pipeline @ ${{ secrets.HF_TOKEN }}", "a\\b"):
        with pytest.raises(RequirementError):
            with_verify_extras(bad)
        result = CliRunner().invoke(app, ["ci-workflow", "--install", bad])
        assert result.exit_code == 2 and "is not a pip requirement" in result.output, result.output


def _stub_bin(tmp_path: Path, calls: Path) -> Path:
    """`mll23` recording its arguments, and a `git-lfs` that fetches nothing (the checkout is local)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "mll23").write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {calls}\necho "verified"\n')
    (bin_dir / "git-lfs").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("mll23", "git-lfs"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=repo, check=True,
                   capture_output=True)


def test_hostile_release_directory_names_cannot_forge_log_lines(workflow, tmp_path):
    """Run the pull-request step as the runner would, with a stand-in `mll23`, on a checkout whose pull request
    adds releases with hostile names (and leaves an unchanged release alone)."""
    (step,) = [s for s in _steps(workflow) if s.get("id") == "verify"]
    repo = tmp_path / "repo"
    (repo / "releases" / "v0.9.0").mkdir(parents=True)
    (repo / "releases" / "v0.9.0" / "manifest.json").write_text("{}")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "base")
    _git(repo, "update-ref", "refs/remotes/origin/main", "HEAD")
    names = ["v1.0.0", "v2\n::error::forged", "v3\n", "v4::warning::x", "v5\x1b[2J"]
    for name in names:
        (repo / "releases" / name).mkdir(parents=True)
        (repo / "releases" / name / "manifest.json").write_text("{}")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "pull request")
    calls = tmp_path / "calls"
    bin_dir = _stub_bin(tmp_path, calls)
    env = {**os.environ, **{k: str(v) for k, v in workflow["env"].items()}, "GITHUB_BASE_REF": "main",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", step["run"]], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1, run.stdout + run.stderr
    # only the plainly named release the pull request changed was verified, none by a cut name, not v0.9.0
    assert calls.read_text() == "verify releases/v1.0.0\n"
    commands = [line for line in run.stdout.splitlines() if line.startswith("::")]
    assert commands == ["::group::mll23 verify releases/v1.0.0", "::endgroup::"] + [
        "::error title=mll23 verify::a release directory under releases/ has a name with characters other than "
        "letters, digits, '.', '_' and '-'; rename it (shown escaped on the next line)"
    ] * 4
    assert "\x1b" not in run.stdout and "forged" in run.stdout  # shown, escaped
    assert "  $'v2\\n\\x3a\\x3aerror\\x3a\\x3aforged'" in run.stdout.splitlines()


@pytest.mark.parametrize(("event", "ref", "status", "called"), [
    ("push", "v1.2.0", 0, "verify hf://datasets/org/ds@v1.2.0 --sample 300"),
    ("push", "v1.2.0\n::error::forged", 1, None),  # a tag name that is not plain is refused, not used
    ("push", "main", 1, None),
    ("schedule", "main", 0, "verify hf://datasets/org/ds --sample 300"),  # every release tagged on the Hub
    ("workflow_dispatch", "main", 0, "verify hf://datasets/org/ds --sample 300"),
])
def test_the_hub_job_verifies_tagged_releases_on_the_hub(event, ref, status, called, tmp_path):
    workflow = yaml.safe_load(_printed("--hub-repo", "org/ds"))
    (step,) = [s for s in _steps(workflow) if s.get("id") == "hub"]
    assert workflow["jobs"]["hub"]["if"] == "github.event_name != 'pull_request'"
    assert not any(str(s.get("uses", "")).startswith("actions/checkout@") for s in workflow["jobs"]["hub"]["steps"])
    calls = tmp_path / "calls"
    env = {**os.environ, **{k: str(v) for k, v in workflow["env"].items()}, "GITHUB_EVENT_NAME": event,
           "GITHUB_REF_NAME": ref, "PATH": f"{_stub_bin(tmp_path, calls)}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == status, run.stdout + run.stderr
    assert (calls.read_text() if calls.exists() else None) == (None if called is None else called + "\n")
    assert "forged" not in run.stdout


def test_the_hub_job_refuses_the_placeholder_dataset(workflow, tmp_path):
    (step,) = [s for s in _steps(workflow) if s.get("id") == "hub"]
    env = {**os.environ, **{k: str(v) for k, v in workflow["env"].items()}, "GITHUB_EVENT_NAME": "schedule"}
    run = subprocess.run(["bash", "-c", step["run"]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "HF_DATASET is not ORG/NAME: set it with mll23 ci-workflow --hub-repo" in run.stdout
    result = CliRunner().invoke(app, ["ci-workflow", "--hub-repo", "org/ds\nname: forged"])
    assert result.exit_code == 2 and "is not a dataset repository ORG/NAME" in result.output
