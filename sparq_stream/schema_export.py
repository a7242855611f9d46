"""JSON Schemas of the wire messages: the contract for consumers written in other languages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sparq_stream.messages import MESSAGE_TYPES, Message

__all__ = ["json_schema", "schema_filename", "write_schemas", "stale_schemas"]


def json_schema(cls: type[Message]) -> dict[str, Any]:
    """Return the JSON Schema of one message type, envelope fields included."""
    schema = cls.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"{cls.SCHEMA}.v{cls.VERSION}.json"
    schema["title"] = cls.SCHEMA
    props = schema.setdefault("properties", {})
    props["schema"] = {"const": cls.SCHEMA, "description": "message type name"}
    props["version"] = {"const": cls.VERSION, "type": "integer", "description": "message type version"}
    schema["required"] = sorted(set(schema.get("required", [])) | {"schema", "version"})
    schema["additionalProperties"] = False
    for prop in props.values():  # msgpack carries bytes natively; JSON consumers see base64 strings
        if prop.get("format") == "binary":
            prop["contentEncoding"] = "base64"
    return dict(sorted(schema.items()))


def schema_filename(cls: type[Message]) -> str:
    """Return the file name of a message type's schema in ``schemas/``."""
    return f"{cls.SCHEMA}.v{cls.VERSION}.json"


def _render(cls: type[Message]) -> str:
    return json.dumps(json_schema(cls), indent=2, sort_keys=False) + "\n"


def write_schemas(directory: str | Path) -> list[Path]:
    """Write one schema file per message type; return the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for cls in MESSAGE_TYPES.values():
        path = directory / schema_filename(cls)
        path.write_text(_render(cls), encoding="utf-8")
        paths.append(path)
    return paths


def stale_schemas(directory: str | Path) -> list[str]:
    """Return the schema files that are missing, differ from the structs, or belong to no struct."""
    directory = Path(directory)
    problems = []
    expected = {schema_filename(cls): cls for cls in MESSAGE_TYPES.values()}
    for name, cls in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != _render(cls):
            problems.append(f"{name}: differs from the struct")
    for path in directory.glob("*.json"):
        if path.name not in expected:
            problems.append(f"{path.name}: no struct has this schema")
    return sorted(problems)
