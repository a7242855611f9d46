"""Frozen settings objects, read from flags, ``SPARQ_*`` environment variables or a file.

Each settings class is the one source of truth: its fields are the command-line flags
(``--field-name``, parsed by pydantic-settings' own ``CliSettingsSource``), the environment
names (``SPARQ_<FIELD>``), the keys of a settings file and the rows of ``sparq settings``.
Precedence, highest first: explicit values (command-line flags), environment
(``SPARQ_<FIELD>``), a settings file (TOML, YAML or JSON; ``--config`` or
``SPARQ_CONFIG``), then the defaults. A bad flag or value raises :class:`ConfigError`
naming the field and what it accepts. Secret fields (``SecretStr``) are never flags.
"""

from __future__ import annotations

import argparse
import copy
import difflib
import json
import os
import re
import socket
import tomllib
import typing
from collections.abc import Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypeVar

from pydantic import BaseModel, Field, SecretStr, ValidationError, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, CliSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from sparq_stream.credentials import is_secret_field, is_secret_name, refuse_secret_options
from sparq_stream.errors import ConfigError

__all__ = [
    "Backend",
    "BaseSparqSettings",
    "Embedder",
    "KafkaSettings",
    "LABEL_SEEDS",
    "ServiceSettings",
    "SettingRow",
    "Variant",
    "child_environment",
    "cli_values",
    "config_error",
    "flag_names",
    "load_settings",
    "setting_rows",
    "shared_field",
    "write_settings_file",
]

#: The four SPARQ variants (the one list: settings, the wire's ``variant`` and the working sets follow it).
Variant = Literal["static-uniform", "static-diverse", "dynamic-uniform", "qd"]
#: The generation backends (the one list: ``sparq_stream.models.registry`` builds each of them).
Backend = Literal["transformers", "openai", "vllm", "scripted"]
#: The embedding backends of the novelty filter (and of the seeds' held-out check).
Embedder = Literal["sentence-transformers", "hash"]
#: Whether seeds are classified into their skill-sets before they are published (``sparq up --label-seeds``,
#: ``sparq seed --label``; environment ``SPARQ_LABEL_SEEDS``): the diverse variants sample parents by skill-set.
LABEL_SEEDS = True

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

    model_config = SettingsConfigDict(
        env_prefix="SPARQ_",
        frozen=True,
        extra="forbid",
        env_ignore_empty=True,
        # how the fields become flags (cli_values): --field-name, --flag/--no-flag, -b for --bootstrap
        cli_kebab_case=True,
        cli_implicit_flags=True,
        cli_shortcuts={"bootstrap": "b"},
    )

    @field_validator("*", mode="after")
    @classmethod
    def _no_secrets_in_options(cls, value: Any, info: ValidationInfo) -> Any:
        """Mappings of pass-through options (backend_options, kafka_options, ...) may not carry a secret."""
        if isinstance(value, dict):
            refuse_secret_options(str(info.field_name), value)
        return value

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
    kafka_client_config: Path | None = Field(
        default=None,
        description="Java client properties file with this client's login (security.protocol, sasl.mechanism, "
        "sasl.jaas.config, ssl.truststore.*); its values win over the security settings above (docs/security.md)",
    )
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
        if self.kafka_client_config is not None:
            from sparq_stream.security import client_security_options

            opts.update(client_security_options(self.kafka_client_config))
        opts.update(self.kafka_options)
        return opts

    @field_validator("kafka_client_config", mode="after")
    @classmethod
    def _readable_client_config(cls, value: Path | None) -> Path | None:
        """Read the client properties file once when the settings are made: a bad file fails at start, naming the key."""
        if value is not None:
            from sparq_stream.security import client_security_options

            client_security_options(value)
            return value.resolve()
        return value


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
    join_timeout_s: float = Field(
        default=120.0, ge=0,
        description="longest time the input consumer may stay outside its group (joining, rebalancing); then exit non-zero (retriable) to be restarted; 0: wait forever",
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
    http_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="serve /metrics (Prometheus), /healthz and /readyz on this port (0: a free one); default: off",
    )
    http_host: str = Field(default="0.0.0.0", min_length=1, description="address the HTTP endpoint listens on")


def config_error(exc: ValidationError, where: str = "setting") -> ConfigError:
    """Turn a pydantic validation error into a ConfigError naming each bad field (a secret's value is never shown)."""
    parts = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        field = ".".join(loc) or "(settings)"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = "unknown setting"
        got = err.get("input")
        secret = any(is_secret_name(p) for p in loc)
        shown = "" if secret or isinstance(got, dict) or got is None else f" (got {got!r})"
        parts.append(f"{where} '{field}': {msg}{shown}")
    return ConfigError("; ".join(parts))


class _FlagError(Exception):
    """argparse's complaint about the flags, raised instead of printing usage and exiting."""


class _FlagParser(argparse.ArgumentParser):
    """The root parser handed to ``CliSettingsSource``: errors raise, no abbreviations, no built-in --help."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog=prog, add_help=False, allow_abbrev=False)

    def error(self, message: str) -> Any:  # argparse would print usage and exit 2
        """Raise the message; :func:`cli_values` turns it into a ConfigError naming the flag."""
        raise _FlagError(message)


def _add_argument(parser: argparse.ArgumentParser, *names: str, **kwargs: Any) -> Any:
    """Add one field's flag; a one-letter field keeps its long spelling too (``--k`` as well as ``-k``)."""
    dest = kwargs.get("dest")
    longs = tuple(f"-{n}" for n in names if len(n) == 2 and n[0] == "-" and n[1:] == dest)
    return parser.add_argument(*names, *longs, **kwargs)


def _parse_args(parser: argparse.ArgumentParser, args: Sequence[str]) -> argparse.Namespace:
    """Parse the flags; a list flag given once as ``[]`` or ``null`` means an empty list or None.

    (``CliSettingsSource`` would merge ``[]`` of an optional list into ``[""]`` and ``null`` into ``[None]``.)
    """
    namespace = parser.parse_args(list(args))
    for key, value in vars(namespace).items():
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and value[0].strip() in ("[]", "null"):
            setattr(namespace, key, value[0].strip())
    return namespace


def flag_names(cls: type[BaseSettings], name: str) -> list[str]:
    """The command-line spellings of field ``name`` of ``cls`` (none for a secret)."""
    if is_secret_field(name, cls.model_fields[name]):
        return []
    kebab = name.replace("_", "-")
    shortcuts = cls.model_config.get("cli_shortcuts") or {}
    extra = shortcuts.get(kebab, shortcuts.get(name, []))
    extra = [extra] if isinstance(extra, str) else list(extra)
    names = [f"--{kebab}"] + [("-" if len(e) == 1 else "--") + e for e in extra]
    if cls.model_fields[name].annotation is bool:
        names.append(f"--no-{kebab}")
    return names


def _allowed_flags(cls: type[BaseSettings]) -> list[str]:
    return [f for name in sorted(cls.model_fields) for f in flag_names(cls, name)[:1]]


def _flag_error(cls: type[BaseSettings], message: str) -> ConfigError:
    """Turn argparse's message into one naming the setting and what it accepts."""
    allowed = _allowed_flags(cls)
    if message.startswith("unrecognized arguments:"):
        first = message.split(":", 1)[1].split()[0]
        if not first.startswith("-"):
            return ConfigError(f"unexpected argument {first!r}; settings are given as --name value")
        flag = first.partition("=")[0]
        close = difflib.get_close_matches(flag, allowed, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        return ConfigError(f"unknown setting {flag}{hint}; allowed: {', '.join(allowed)}")
    found = re.match(r"argument (\S+?)(?:/\S+)?: (.*)", message)
    if not found:
        return ConfigError(f"bad flags: {message}")
    flag, what = found.groups()
    field = flag.lstrip("-").replace("-", "_")
    if what.startswith("expected one argument"):
        return ConfigError(f"setting --{field.replace('_', '-')} needs a value")
    if what.startswith("ignored explicit argument"):
        return ConfigError(f"setting '{field}' is a switch: give --{flag.lstrip('-')} or --no-{flag.lstrip('-')}, no value")
    return ConfigError(f"setting '{field}': {what}")


def cli_values(cls: type[BaseSettings], args: Sequence[str], *, prog: str = "sparq") -> dict[str, Any]:
    """Parse ``--field value`` flags into raw values with pydantic-settings' ``CliSettingsSource``.

    Flags are the fields in kebab case; booleans are ``--flag``/``--no-flag``; mappings and lists
    take JSON (lists also ``a,b``; a repeated mapping or list flag merges); ``null`` is None.
    Unknown flags, missing values and secrets given as flags raise :class:`ConfigError`.
    """
    source = CliSettingsSource(
        cls, root_parser=_FlagParser(prog), parse_args_method=_parse_args, add_argument_method=_add_argument, cli_prog_name=prog
    )
    try:
        values = dict(source(args=list(args))())
    except _FlagError as exc:
        raise _flag_error(cls, str(exc)) from None
    except SettingsError as exc:
        found = re.search(r"for (?:field \")?(\w+)", str(exc))
        field = found.group(1) if found else "(settings)"
        raise ConfigError(f"setting '{field}': not a valid value ({str(exc).split(':', 1)[-1].strip()}); "
                          "mappings and lists are given as JSON") from None  # fmt: skip
    for name in values:
        if is_secret_field(name, cls.model_fields[name]):
            env = str(cls.model_config.get("env_prefix", "")) + name.upper()
            raise ConfigError(
                f"setting '{name}' is a secret and is never a flag (argv is visible to every user): "
                f"set {env}, put it in the settings file" + (f" or give --{name.replace('_', '-')}-file" if f"{name}_file" in cls.model_fields else "")
            )
    return values


class SettingRow(NamedTuple):
    """One row of ``sparq settings``: flags, environment name, default, meaning."""

    flags: str
    env: str
    default: str
    meaning: str


def _choices(annotation: Any) -> list[Any]:
    """The allowed values of a Literal annotation (also inside Optional / tuples), else []."""
    if typing.get_origin(annotation) is Literal:
        return list(typing.get_args(annotation))
    return [c for arg in typing.get_args(annotation) for c in _choices(arg)]


def setting_rows(cls: type[BaseSettings]) -> list[SettingRow]:
    """Every field of a settings class as it is set: its flags, its environment name, its default, its meaning."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    rows = []
    for name, info in sorted(cls.model_fields.items()):
        if info.is_required():
            default = "(required)"
        elif info.default_factory is not None:
            default = "(computed)"
        else:
            value = info.get_default(call_default_factory=False)
            default = str(value) if isinstance(value, Path) else repr(value)
        flags = ", ".join(flag_names(cls, name)) or "(secret: environment or file only)"
        choices = _choices(info.annotation)
        meaning = (info.description or "") + (f" (one of: {', '.join(map(str, choices))})" if choices else "")
        rows.append(SettingRow(flags, prefix + name.upper(), default, meaning.strip()))
    return rows


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
    cls: type[S],
    config: str | Path | None = None,
    *,
    args: Sequence[str] = (),
    ignore_unknown_file_keys: bool = False,
    read_file: bool = True,
    where: str = "setting",
    **values: Any,
) -> S:
    """Build a frozen settings object from flags (``args``, then ``values``), environment and a file.

    ``ignore_unknown_file_keys`` lets a tool read its own keys from a file shared with other services;
    ``read_file=False`` ignores ``SPARQ_CONFIG`` (for commands that take no settings file).
    """
    values = {**cli_values(cls, args), **{k: v for k, v in values.items() if v is not None}} if args else values
    config = (config or os.environ.get("SPARQ_CONFIG")) if read_file else None
    file_values = _read_file(Path(config)) if config else {}
    if ignore_unknown_file_keys:
        file_values = {k: v for k, v in file_values.items() if k in cls.model_fields}
    token = _FILE_VALUES.set(file_values)
    try:
        return cls(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as exc:
        raise config_error(exc, where) from None
    finally:
        _FILE_VALUES.reset(token)


def shared_field(cls: type[BaseModel], name: str, **changes: Any) -> Any:
    """Field ``name`` of settings class ``cls`` for another settings class: declared once, same default, limits, meaning.

    ``changes`` (``description=...``) adjust the copy, never the original.
    """
    info = copy.copy(cls.model_fields[name])
    for key, value in changes.items():
        setattr(info, key, value)
    return info


def _file_values(settings: BaseModel) -> dict[str, Any]:
    """Every field of a settings object as JSON values, secrets left out (they travel in the environment)."""
    fields = type(settings).model_fields
    public = {name for name, info in fields.items() if not is_secret_field(name, info)}
    return settings.model_dump(mode="json", include=public)


def write_settings_file(settings: BaseModel, path: Path) -> Path:
    """Write a frozen settings object as a JSON settings file (``--config``) its service reads back whole; no secret."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_file_values(settings), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, path)
    return path


def child_environment(settings: BaseModel) -> dict[str, str]:
    """Environment of a process handed ``settings`` as a file: its fields' ``SPARQ_*`` names blanked (empty is ignored).

    The environment outranks a settings file; blanking them keeps a stray ``SPARQ_<FIELD>`` of the parent
    from changing what the parent resolved (the parent already read it). Secrets stay (they are not in the file).
    """
    cls = type(settings)
    prefix = str(cls.model_config.get("env_prefix", ""))
    return {prefix + name.upper(): "" for name in _file_values(settings)}
