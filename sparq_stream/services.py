"""Service registry: a service name -> its settings class and how to build its core."""

from __future__ import annotations

from collections.abc import Sequence
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
    "service_settings",
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


def service_settings(
    name: str, args: Sequence[str] = (), *, config: str | Path | None = None, **values: Any
) -> ServiceSettings:
    """A service's frozen settings from its flags (``args``), ``values``, ``SPARQ_*`` environment and a settings file."""
    return load_settings(service_spec(name).settings_cls, config=config, args=args, **values)
