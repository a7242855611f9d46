"""JSON Schemas of the wire messages: the contract for consumers written in other languages.

``schemas/`` holds one schema per message type (``<name>.v<version>.json``), the schema of
the dead-letter record's headers (``sparq.dead_letter.headers.v2.json``: what is really on
the dlq topic), and ``schemas/released/``: a frozen copy of every released version, locked
by its sha256 in ``schemas/released/SHA256SUMS``. A released file never changes; the current
schema of a released version may differ from it only in annotations (docs/wire.md, "Versioning").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sparq_stream.messages import MESSAGE_TYPES, DeadLetter, Message

__all__ = [
    "json_schema",
    "schema_filename",
    "write_schemas",
    "stale_schemas",
    "dlq_headers_schema",
    "DLQ_HEADERS_FILE",
    "DLQ_HEADERS",
    "DLQ_OPTIONAL_HEADERS",
    "release_schemas",
    "incompatible_changes",
    "released_problems",
    "LOCK_FILE",
    "lock_problems",
]

#: Header names of a dead-letter record and what each holds (UTF-8 text), in wire order.
DLQ_HEADERS: dict[str, str] = {
    "sparq.dlq.source_topic": "topic the record was read from",
    "sparq.dlq.partition": "its partition, a decimal integer",
    "sparq.dlq.offset": "its offset, a decimal integer",
    "sparq.dlq.error_type": "Python exception class name, e.g. DecodeError, IdMismatch (an open set)",
    "sparq.dlq.error": "the error message, at most 4000 characters",
    "sparq.dlq.service": "the service that dead-lettered it",
    "sparq.dlq.ts": "when: seconds since the Unix epoch (UTC), decimal with 3 fractional digits",
}
#: Headers present only sometimes: the instance where the service has one; the rest only when the
#: original value was too large to forward whole.
DLQ_OPTIONAL_HEADERS: dict[str, str] = {
    "sparq.dlq.instance": "the service instance that dead-lettered it (present when the service names its instances)",
    "sparq.dlq.truncated": "present (value 'true') when the record's value is a truncated prefix of the original value",
    "sparq.dlq.original_size": "size of the original value in bytes, a decimal integer",
    "sparq.dlq.original_sha256": "sha256 of the original value, 64 lower-case hex digits",
    "sparq.dlq.headers_dropped": "present (value 'true') when the original record's own headers were dropped to fit",
}
_DLQ_PATTERNS = {
    "sparq.dlq.partition": r"^-?[0-9]+$",
    "sparq.dlq.offset": r"^-?[0-9]+$",
    "sparq.dlq.ts": r"^[0-9]+(\.[0-9]+)?$",
    "sparq.dlq.original_size": r"^[0-9]+$",
    "sparq.dlq.original_sha256": r"^[0-9a-f]{64}$",
    "sparq.dlq.truncated": r"^true$",
    "sparq.dlq.headers_dropped": r"^true$",
}
DLQ_HEADERS_FILE = f"sparq.dead_letter.headers.v{DeadLetter.VERSION}.json"
#: The lock of the released files: ``<sha256>  <file name>`` per line, sorted by name.
LOCK_FILE = "SHA256SUMS"
#: Keywords that only annotate: changing them never breaks a reader.
_ANNOTATIONS = frozenset({"title", "description", "examples", "$comment"})


def json_schema(cls: type[Message]) -> dict[str, Any]:
    """Return the JSON Schema of one message type, envelope fields included."""
    schema = cls.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = _schema_id(schema_filename(cls))
    schema["title"] = cls.SCHEMA
    props = schema.setdefault("properties", {})
    props["schema"] = {"const": cls.SCHEMA, "description": "message type name"}
    props["version"] = {"const": cls.VERSION, "type": "integer", "description": "message type version"}
    schema["required"] = sorted(set(schema.get("required", [])) | {"schema", "version"})
    # Tolerant reader: a later producer of the same version may add optional fields (docs/wire.md, "Versioning").
    schema["additionalProperties"] = True
    for prop in props.values():
        _fix_bytes(prop)
    for name, info in cls.model_fields.items():  # empty-container defaults the JSON Schema generator leaves out
        if info.default_factory in (list, dict) and name in props:
            props[name]["default"] = info.default_factory()
    if cls is DeadLetter:
        schema["$comment"] = (
            "The typed view of a dead letter (sparq tail, the Python API). On the dlq topic a dead letter is the "
            f"original key and value bytes with the headers of {DLQ_HEADERS_FILE}; see docs/wire.md."
        )
    return dict(sorted(schema.items()))


def _schema_id(filename: str) -> str:
    """An absolute ``$id`` (strict validators reject a relative one with no base URI), naming the file."""
    return "urn:sparq-stream:schema:" + filename


def _fix_bytes(prop: dict[str, Any]) -> None:
    """msgpack carries bytes natively; JSON renderings (sparq tail) carry them as padded base64 text."""
    for sub in prop.get("anyOf", ()):
        _fix_bytes(sub)
    if prop.get("format") in ("binary", "base64url", "base64"):
        del prop["format"]
        prop["contentEncoding"] = "base64"


def dlq_headers_schema() -> dict[str, Any]:
    """Return the JSON Schema of a dead-letter record's headers, as a map of header name to UTF-8 text."""
    props: dict[str, Any] = {}
    for name, meaning in {**DLQ_HEADERS, **DLQ_OPTIONAL_HEADERS}.items():
        props[name] = {"type": "string", "description": meaning}
        if name in _DLQ_PATTERNS:
            props[name]["pattern"] = _DLQ_PATTERNS[name]
    return {
        "$comment": "Key and value of the record are the original record's bytes (value null for a tombstone); "
        "headers of the original record that do not start with sparq.dlq. are copied after these.",
        "$id": _schema_id(DLQ_HEADERS_FILE),
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "additionalProperties": {"type": "string"},
        "description": "Headers of a record on the dlq topic, each value decoded as UTF-8 text.",
        "properties": props,
        "required": sorted(DLQ_HEADERS),
        "title": "sparq.dead_letter.headers",
        "type": "object",
    }


def schema_filename(cls: type[Message]) -> str:
    """Return the file name of a message type's schema in ``schemas/``."""
    return f"{cls.SCHEMA}.v{cls.VERSION}.json"


def _dump(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=False) + "\n"


def _expected() -> dict[str, str]:
    """File name -> rendered text of every schema file ``schemas/`` must hold."""
    files = {schema_filename(cls): _dump(json_schema(cls)) for cls in MESSAGE_TYPES.values()}
    files[DLQ_HEADERS_FILE] = _dump(dlq_headers_schema())
    return files


def write_schemas(directory: str | Path) -> list[Path]:
    """Write one schema file per message type (and the dead-letter headers schema); return the paths written."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in _expected().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        paths.append(path)
    return paths


def stale_schemas(directory: str | Path) -> list[str]:
    """Return the schema files that are missing, differ from the structs, or belong to no struct."""
    directory = Path(directory)
    problems = []
    expected = _expected()
    for name, text in expected.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{name}: differs from the struct")
    for path in directory.glob("*.json"):
        if path.name not in expected:
            problems.append(f"{path.name}: no struct has this schema")
    return sorted(problems)


def release_schemas(directory: str | Path) -> list[Path]:
    """Freeze every schema version that has no copy in ``<directory>/released/`` yet, lock its hash; return the copies made.

    A released copy is never overwritten: a change to a released version needs a new version.
    """
    directory = Path(directory)
    released = directory / "released"
    released.mkdir(parents=True, exist_ok=True)
    made = []
    for name, text in _expected().items():
        path = released / name
        if not path.exists():
            path.write_text(text, encoding="utf-8")
            made.append(path)
    lock = _read_lock(released)
    for path in made:
        lock[path.name] = _sha256(path)
    (released / LOCK_FILE).write_text("".join(f"{digest}  {name}\n" for name, digest in sorted(lock.items())), encoding="utf-8")
    return made


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read_lock(released: Path) -> dict[str, str]:
    """File name -> sha256 from the lock file (empty when there is none)."""
    lock_path = released / LOCK_FILE
    if not lock_path.is_file():
        return {}
    lock = {}
    for line in lock_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            lock[name.strip()] = digest
    return lock


def lock_problems(directory: str | Path) -> list[str]:
    """Check every released file against its locked sha256: a released schema never changes in place."""
    released = Path(directory) / "released"
    lock = _read_lock(released)
    if not lock:
        return [f"released/{LOCK_FILE}: missing or empty"]
    problems = []
    for name, digest in sorted(lock.items()):
        path = released / name
        if not path.is_file():
            problems.append(f"released/{name}: locked but missing")
        elif _sha256(path) != digest:
            problems.append(f"released/{name}: changed in place (a change needs a new version; see docs/wire.md, 'Versioning')")
    for path in sorted(released.glob("*.json")):
        if path.name not in lock:
            problems.append(f"released/{path.name}: not in {LOCK_FILE} (freeze it with 'sparq schemas --release')")
    return problems


def _strip(node: Any) -> Any:
    """The schema with annotation keywords removed: what validation depends on."""
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items() if k not in _ANNOTATIONS}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def incompatible_changes(released: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """List the changes from a released schema to the current one of the same version that need a version bump.

    Compatible (same version): annotation changes (title, description, examples,
    $comment) and new optional properties that carry a ``default``. Everything else
    (a property removed or retyped, a default, enum, bound or format changed, a field
    made required or optional, the envelope or additionalProperties changed) is not.
    """
    problems = []
    old_props = released.get("properties", {})
    new_props = current.get("properties", {})
    for name, old in old_props.items():
        if name not in new_props:
            problems.append(f"property {name!r} removed")
        elif _strip(old) != _strip(new_props[name]):
            problems.append(f"property {name!r} changed: {_strip(old)} -> {_strip(new_props[name])}")
    for name in sorted(set(new_props) - set(old_props)):
        if name in current.get("required", []):
            problems.append(f"new property {name!r} is required")
        elif "default" not in new_props[name]:
            problems.append(f"new property {name!r} has no default")
    if sorted(released.get("required", [])) != sorted(current.get("required", [])):
        problems.append(f"required changed: {released.get('required')} -> {current.get('required')}")
    rest_old = _strip({k: v for k, v in released.items() if k not in ("properties", "required")})
    rest_new = _strip({k: v for k, v in current.items() if k not in ("properties", "required")})
    for key in sorted(set(rest_old) | set(rest_new)):
        if rest_old.get(key) != rest_new.get(key):
            problems.append(f"{key} changed: {rest_old.get(key)!r} -> {rest_new.get(key)!r}")
    return problems


def released_problems(directory: str | Path) -> list[str]:
    """Check the lock and compare every current schema with its frozen copy in ``released/``; list what breaks the policy."""
    directory = Path(directory)
    problems = lock_problems(directory)
    for name, text in _expected().items():
        frozen = directory / "released" / name
        if not frozen.is_file():
            problems.append(f"{name}: no released copy (a new version: run 'sparq schemas --release' to freeze it)")
            continue
        changes = incompatible_changes(json.loads(frozen.read_text(encoding="utf-8")), json.loads(text))
        problems.extend(f"{name}: {change} without a version bump" for change in changes)
    return problems
