"""Where the files shipped with the package live (schemas, default config), installed or from a checkout."""

from __future__ import annotations

import json
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
