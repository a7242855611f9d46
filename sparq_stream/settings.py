"""Frozen settings objects, read from flags, ``SPARQ_*`` environment variables or a file.

Precedence, highest first: explicit values (command-line flags), environment
(``SPARQ_<FIELD>``), a settings file (TOML, YAML or JSON; ``--config`` or
``SPARQ_CONFIG``), then the defaults. A bad value raises :class:`ConfigError`
naming the field and what it accepts.
"""

from __future__ import annotations

import json
import os
import socket
import tomllib
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from sparq_stream.errors import ConfigError

__all__ = ["BaseSparqSettings", "KafkaSettings", "ServiceSettings", "load_settings", "config_error"]

S = TypeVar("S", bound="BaseSparqSettings")

_FILE_VALUES: ContextVar[dict[str, Any]] = ContextVar("_FILE_VALUES", default={})


class _FileSource(PydanticBaseSettingsSource):
    """Settings source holding the values read from a settings file."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        """Return a field's value from the file, if present."""
        return _FILE_VALUES.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        """Return every value read from the file."""
        return dict(_FILE_VALUES.get())


class BaseSparqSettings(BaseSettings):
    """Base of every settings object: frozen, ``SPARQ_`` environment prefix, no unknown keys."""

    model_config = SettingsConfigDict(env_prefix="SPARQ_", frozen=True, extra="forbid", env_ignore_empty=True)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Flags, then environment, then the settings file."""
        return (init_settings, env_settings, _FileSource(settings_cls))


class KafkaSettings(BaseSparqSettings):
    """How to reach the Kafka cluster; security settings pass through to kafka-python untouched."""

    bootstrap: str = Field(default="127.0.0.1:9092", description="Kafka bootstrap servers, host:port[,host:port]")
    prefix: str = Field(default="sparq", pattern=r"^[A-Za-z0-9._-]+$", description="topic name prefix")
    client_id: str = Field(default="sparq", description="Kafka client id")
    connect_timeout_s: float = Field(default=15.0, gt=0, description="how long to wait for the first broker")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] | None = None
    sasl_plain_username: str | None = None
    sasl_plain_password: SecretStr | None = None
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    kafka_options: dict[str, Any] = Field(
        default_factory=dict, description="extra kafka-python client options, passed through untouched"
    )

    def client_options(self) -> dict[str, Any]:
        """Return the kafka-python options shared by consumers, producers and admin clients."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap.split(","),
            "client_id": self.client_id,
            "bootstrap_timeout_ms": int(self.connect_timeout_s * 1000),
        }
        if self.security_protocol != "PLAINTEXT":
            opts["security_protocol"] = self.security_protocol
        for name in ("sasl_mechanism", "sasl_plain_username", "ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(self, name)
            if value is not None:
                opts[name] = value
        for name in ("sasl_plain_password", "ssl_password"):
            secret = getattr(self, name)
            if secret is not None:
                opts[name] = secret.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.ssl_check_hostname
        opts.update(self.kafka_options)
        return opts


def _default_instance() -> str:
    """The host name: stable across restarts (a StatefulSet pod name), so a restarted replica fences its predecessor."""
    return socket.gethostname() or "localhost"


class ServiceSettings(KafkaSettings):
    """Settings shared by every service run by the process wrapper."""

    group_id: str | None = Field(default=None, description="consumer group; default <prefix>.<service>")
    instance: str = Field(
        default_factory=_default_instance,
        min_length=1,
        description="this replica's stable name (metrics key; transactional id <group>.<instance>); default the host name, "
        "give each replica on one host its own",
    )
    partitions: int = Field(default=3, ge=1, description="partitions per topic when topics are created")
    replication_factor: int = Field(default=1, ge=1)
    session_timeout_ms: int = Field(default=6000, ge=1000)
    heartbeat_interval_ms: int = Field(default=500, ge=100)
    max_poll_records: int = Field(default=500, ge=1)
    max_poll_interval_ms: int = Field(default=300_000, ge=1000)
    poll_timeout_ms: int = Field(default=200, ge=0)
    batch_linger_records: int = Field(
        default=1, ge=1, description="a poll that returned fewer records keeps polling for more, up to batch_linger_ms"
    )
    batch_linger_ms: int = Field(default=0, ge=0, description="longest wait to top a short batch up to batch_linger_records (0: none)")
    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        default="at_least_once",
        description="exactly_once uses Kafka transactions; honoured by Apache Kafka, not by Tansu",
    )
    retry_max_attempts: int = Field(default=10, ge=1, description="tries of a retriable error before the DLQ")
    retry_backoff_ms: int = Field(default=200, ge=0)
    retry_backoff_max_ms: int = Field(default=30_000, ge=0)
    metrics_interval_s: float = Field(default=5.0, gt=0)
    restore_timeout_s: float = Field(
        default=300.0, gt=0, description="longest wait to read the table topics on start; then exit non-zero (retriable)"
    )
    shutdown_timeout_s: float = Field(
        default=8.0, gt=0, description="after SIGTERM/SIGINT, longest wait for a clean stop before exiting without commit"
    )
    client_timeout_s: float = Field(
        default=30.0, gt=0, description="bound on each flush, commit and transaction call of the wrapper"
    )
    max_request_size: int = Field(
        default=1_048_576, ge=1024, description="largest record the producer sends (bytes); dead letters are truncated to fit"
    )
    changelog_segment_ms: int = Field(
        default=3_600_000, ge=1000, description="segment.ms of compacted topics created by 'sparq topics create'"
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


def config_error(exc: ValidationError, where: str = "setting") -> ConfigError:
    """Turn a pydantic validation error into a ConfigError naming each bad field."""
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ())) or "(settings)"
        msg = err.get("msg", "invalid")
        if err.get("type") == "extra_forbidden":
            msg = "unknown setting"
        got = err.get("input")
        shown = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
        parts.append(f"{where} '{field}': {msg}{shown}")
    return ConfigError("; ".join(parts))


def _read_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"settings file {path} does not exist")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"settings file {path}: unknown format; allowed suffixes: .toml, .yaml, .yml, .json")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"settings file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path}: expected a mapping at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def load_settings(
    cls: type[S], config: str | Path | None = None, *, ignore_unknown_file_keys: bool = False, **values: Any
) -> S:
    """Build a frozen settings object from flags (``values``), environment and a file.

    ``ignore_unknown_file_keys`` lets a tool read its own keys from a file shared with other services.
    """
    config = config or os.environ.get("SPARQ_CONFIG")
    file_values = _read_file(Path(config)) if config else {}
    if ignore_unknown_file_keys:
        file_values = {k: v for k, v in file_values.items() if k in cls.model_fields}
    token = _FILE_VALUES.set(file_values)
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise config_error(exc) from None
    finally:
        _FILE_VALUES.reset(token)
