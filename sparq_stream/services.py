"""Service registry: a service name -> its settings class and how to build its core."""

from __future__ import annotations

import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from sparq_stream.core import Core
from sparq_stream.errors import ConfigError
from sparq_stream.settings import ServiceSettings, load_settings

__all__ = [
    "ServiceSpec",
    "RelaySettings",
    "SERVICES",
    "parse_flags",
    "build_service",
    "prepare_service",
    "register",
    "service_spec",
    "service_names",
]


class RelaySettings(ServiceSettings):
    """Settings of the relay service (copies one topic into another)."""

    source: str = Field(default="seeds", description="topic to read (logical or full name)")
    target: str = Field(default="candidates", description="topic to write (logical or full name)")


@dataclass(frozen=True)
class ServiceSpec:
    """How to build one service: its settings class and a factory from settings to core."""

    name: str
    settings_cls: type[ServiceSettings]
    factory: Callable[[Any], Core]
    help: str = ""


def _relay(settings: RelaySettings) -> Core:
    from sparq_stream.cores.relay import RelayCore

    return RelayCore(settings.source, settings.target)


def _settings_class(name: str, module: str, config: str) -> type[ServiceSettings]:
    """Combine the Kafka/wrapper settings with a core's own config class."""
    import importlib

    config_cls = getattr(importlib.import_module(module), config)
    return type(f"{name.title()}Settings", (ServiceSettings, config_cls), {"__doc__": f"Settings of the {name} service."})


def _lazy(module: str, factory: str) -> Callable[[Any], Core]:
    def build(settings: Any) -> Core:
        import importlib

        return getattr(importlib.import_module(module), factory)(settings)

    return build


_CORES = {
    "mutator": ("sparq_stream.cores.mutator", "MutatorConfig", "build_mutator", "sample parents from W and write child problems"),
    "novelty": ("sparq_stream.cores.novelty", "NoveltyConfig", "build_novelty", "drop duplicates and contamination, score novelty, assign the niche"),
    "solver": ("sparq_stream.cores.solver", "SolverConfig", "build_solver", "K rollouts per candidate: solve-rate, quality, correct rollouts"),
    "archivist": ("sparq_stream.cores.archivist", "ArchivistConfig", "build_archivist", "own W and A; publish elites to the compacted topic"),
    "trainer": ("sparq_stream.cores.trainer", "TrainerConfig", "build_trainer", "export the training set; fine-tune and publish model versions"),
}

SERVICES: dict[str, ServiceSpec] = {
    "relay": ServiceSpec("relay", RelaySettings, _relay, "copy one topic into another, unchanged"),
}


def service_spec(name: str) -> ServiceSpec:
    """Return a service's spec (its settings class is built on first use); unknown names raise ConfigError."""
    if name not in SERVICES and name in _CORES:
        module, config, factory, text = _CORES[name]
        SERVICES[name] = ServiceSpec(name, _settings_class(name, module, config), _lazy(module, factory), text)
    spec = SERVICES.get(name)
    if spec is None:
        raise ConfigError(f"unknown service {name!r}; allowed: {', '.join(service_names())}")
    return spec


def service_names() -> list[str]:
    """Every service that ``sparq run`` can start."""
    return sorted(set(SERVICES) | set(_CORES))


def register(spec: ServiceSpec) -> None:
    """Add (or replace) a service in the registry."""
    SERVICES[spec.name] = spec


def parse_flags(args: list[str], settings_cls: type[ServiceSettings]) -> dict[str, Any]:
    """Turn ``--field value``, ``--field=value``, ``--flag`` and ``--no-flag`` into settings values."""
    fields = settings_cls.model_fields
    values: dict[str, Any] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--"):
            raise ConfigError(f"unexpected argument {arg!r}; settings are given as --name value")
        name, eq, value = arg[2:].partition("=")
        field = name.replace("-", "_")
        negated = False
        if field not in fields and field.startswith("no_") and field[3:] in fields:
            field, negated = field[3:], True
        if field not in fields:
            allowed = ", ".join("--" + f.replace("_", "-") for f in sorted(fields))
            raise ConfigError(f"unknown setting --{name}; allowed: {allowed}")
        annotation = fields[field].annotation
        if annotation is bool and not eq:
            values[field] = not negated
            i += 1
            continue
        if not eq:
            if i + 1 >= len(args):
                raise ConfigError(f"setting --{name} needs a value")
            value = args[i + 1]
            i += 1
        values[field] = _coerce(field, value, annotation)
        i += 1
    return values


def _coerce(field: str, value: str, annotation: Any) -> Any:
    """Flags are strings: JSON for mappings, JSON or comma-separated for lists, 'none' for optionals."""
    kinds = {typing.get_origin(a) or a for a in (typing.get_args(annotation) or (annotation,))}
    kinds.add(typing.get_origin(annotation) or annotation)
    if value.strip().lower() in ("none", "null") and type(None) in kinds:
        return None
    if dict in kinds:
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"setting --{field.replace('_', '-')}: expected a JSON object ({exc.msg})") from None
    if (list in kinds or tuple in kinds) and str not in kinds:
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"setting --{field.replace('_', '-')}: expected a JSON list ({exc.msg})") from None
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def prepare_service(
    name: str, *, bootstrap: str | None, prefix: str | None, config: str | Path | None = None, args: list[str] | None = None
) -> tuple[Callable[[], Core], ServiceSettings]:
    """A service's frozen settings (flags, environment, settings file) and a function that builds its core."""
    spec = service_spec(name)
    values = parse_flags(args or [], spec.settings_cls)
    settings = load_settings(spec.settings_cls, config=config, bootstrap=bootstrap, prefix=prefix, **values)
    return (lambda: spec.factory(settings)), settings


def build_service(
    name: str, *, bootstrap: str | None, prefix: str | None, config: str | Path | None = None, args: list[str] | None = None
) -> tuple[Core, ServiceSettings]:
    """Build a service's core and frozen settings from flags, environment and a settings file."""
    build, settings = prepare_service(name, bootstrap=bootstrap, prefix=prefix, config=config, args=args)
    return build(), settings
