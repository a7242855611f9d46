"""Service registry: a service name -> its settings class and how to build its core."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import Field

from sparq_stream.core import Core
from sparq_stream.errors import ConfigError
from sparq_stream.settings import ServiceSettings, load_settings

__all__ = ["ServiceSpec", "RelaySettings", "SERVICES", "parse_flags", "build_service", "register"]


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


SERVICES: dict[str, ServiceSpec] = {
    "relay": ServiceSpec("relay", RelaySettings, _relay, "copy one topic into another, unchanged"),
}


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
        values[field] = value
        i += 1
    return values


def build_service(
    name: str, *, bootstrap: str | None, prefix: str | None, config: str | Path | None = None, args: list[str] | None = None
) -> tuple[Core, ServiceSettings]:
    """Build a service's core and frozen settings from flags, environment and a settings file."""
    spec = SERVICES.get(name)
    if spec is None:
        raise ConfigError(f"unknown service {name!r}; allowed: {', '.join(sorted(SERVICES))}")
    values = parse_flags(args or [], spec.settings_cls)
    settings = load_settings(spec.settings_cls, config=config, bootstrap=bootstrap, prefix=prefix, **values)
    return spec.factory(settings), settings
