"""Validate benchmark rows against ``bench/schema.json``.

Uses ``jsonschema`` when it is installed; otherwise a small validator for the subset the schema uses
(type incl. "null" and lists of types, enum, required, minimum, exclusiveMinimum, minLength,
properties, allOf, if/then). Both give the same verdict on that subset; ``engine="builtin"`` forces ours.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, List

SCHEMA_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schema.json")

_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "null": lambda v: v is None,
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
}


def load_schema() -> Dict[str, Any]:
    if not os.path.exists(SCHEMA_PATH):
        raise FileNotFoundError(f"{SCHEMA_PATH} is missing (an installed wheel needs it as package data of "
                                "deepencoder.bench)")
    with open(SCHEMA_PATH) as f:
        return json.load(f)


def _errors(v: Any, s: Dict[str, Any], path: str) -> List[str]:
    out: List[str] = []
    if "type" in s:
        types = s["type"] if isinstance(s["type"], list) else [s["type"]]
        if not any(_TYPES[t](v) for t in types):
            return [f"{path}: {v!r} is not of type {types}"]
    if "enum" in s and v not in s["enum"]:
        out.append(f"{path}: {v!r} not in {s['enum']}")
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if "minimum" in s and v < s["minimum"]:
            out.append(f"{path}: {v} < minimum {s['minimum']}")
        if "exclusiveMinimum" in s and v <= s["exclusiveMinimum"]:
            out.append(f"{path}: {v} <= exclusiveMinimum {s['exclusiveMinimum']}")
        if v != v:
            out.append(f"{path}: NaN")
    if isinstance(v, str) and "minLength" in s and len(v) < s["minLength"]:
        out.append(f"{path}: {v!r} shorter than {s['minLength']}")
    if isinstance(v, dict):
        for k in s.get("required", []):
            if k not in v:
                out.append(f"{path}: missing required field {k!r}")
        for k, sub in s.get("properties", {}).items():
            if k in v:
                out += _errors(v[k], sub, f"{path}.{k}")
    for sub in s.get("allOf", []):
        out += _errors(v, sub, path)
    if "if" in s and not _errors(v, s["if"], path) and "then" in s:
        out += _errors(v, s["then"], path)
    return out


def row_errors(row: Dict[str, Any], schema: Dict[str, Any] = None, engine: str = "auto") -> List[str]:
    """Problems with one row ([] = valid)."""
    schema = schema or load_schema()
    if engine == "auto":
        try:
            import jsonschema
        except ImportError:
            engine = "builtin"
        else:
            v = jsonschema.Draft7Validator(schema)
            return [f"$.{'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(row)]
    return _errors(row, schema, "$")


def validate_rows(rows: List[Dict[str, Any]], engine: str = "auto") -> None:
    """Raise ``ValueError`` listing every invalid row."""
    schema = load_schema()
    bad = []
    for i, r in enumerate(rows):
        errs = row_errors(r, schema, engine)
        if errs:
            bad.append(f"row {i} ({r.get('kind')}/{r.get('op')}/{r.get('provider')}): " + "; ".join(errs))
    if bad:
        raise ValueError("invalid benchmark rows:\n" + "\n".join(bad))
