"""Validate published records against schemas/record.schema.json (jsonschema)."""

from __future__ import annotations

from collections.abc import Iterable

import jsonschema

from pipeline.resources import load_schema


def record_validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(load_schema("record"))


def record_errors(metadata: dict, validator: jsonschema.protocols.Validator | None = None) -> list[str]:
    """Each problem as 'key: message'; empty when the record is valid."""
    validator = validator or record_validator()
    return [
        f"{'.'.join(map(str, e.absolute_path)) or 'record'}: {e.message}"
        for e in sorted(validator.iter_errors(metadata), key=lambda e: list(map(str, e.absolute_path)))
    ]


def invalid_records(records: Iterable[dict]) -> list[tuple[str, list[str]]]:
    validator = record_validator()
    out = []
    for md in records:
        errs = record_errors(md, validator)
        if errs:
            out.append((md.get("source_file", "?"), errs))
    return out
