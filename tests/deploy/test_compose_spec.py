"""deploy/compose.yaml against the Compose specification's JSON Schema (the one compose-go, Docker
Compose's loader, validates with), fetched as a Go module from the Go module proxy: offline, no engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose.yaml"
#: compose-go carries the specification's schema (schema/compose-spec.json).
COMPOSE_GO = "github.com/compose-spec/compose-go/v2@v2.16.2"


def _interpolate(value: Any) -> Any:
    """Compose's ``${VAR:-default}`` resolved to its default, in every string of the file."""
    if isinstance(value, str):
        return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)
    if isinstance(value, dict):
        return {k: _interpolate(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v) for v in value]
    return value


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    """The Compose specification's JSON Schema from the compose-go module (``go mod download``)."""
    if shutil.which("go") is None:
        pytest.skip("no go command to download the compose-go module (the Compose specification's schema)")
    done = subprocess.run(["go", "mod", "download", "-json", COMPOSE_GO], capture_output=True, text=True, timeout=300,
                          cwd=REPO)  # module mode outside any go.mod: -json prints the module's folder
    assert done.returncode == 0, done.stdout + done.stderr
    folder = Path(json.loads(done.stdout)["Dir"])
    return json.loads((folder / "schema" / "compose-spec.json").read_text(encoding="utf-8"))


def _validator(schema: dict[str, Any]) -> Any:
    from jsonschema.validators import validator_for

    return validator_for(schema)(schema)  # the schema's own draft (2020-12)


def test_compose_file_is_valid_against_the_compose_specification(schema: dict[str, Any]) -> None:
    document = _interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))
    errors = sorted(_validator(schema).iter_errors(document), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


def test_the_check_has_teeth(schema: dict[str, Any]) -> None:
    """A misspelt service key and a health check of the wrong type are refused by the same check."""
    document = _interpolate(yaml.safe_load(COMPOSE.read_text(encoding="utf-8")))
    document["services"]["solver"]["replica"] = 2
    document["services"]["kafka"]["healthcheck"]["test"] = {"cmd": "true"}
    paths = {"/".join(map(str, e.absolute_path)) for e in _validator(schema).iter_errors(document)}
    assert "services/solver" in paths and "services/kafka/healthcheck/test" in paths, paths
