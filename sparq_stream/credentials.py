"""Secrets in settings: the OpenAI API key from the environment or a file; never a flag, an option or a log line.

A secret is a ``SecretStr`` field (printed as ``**********`` by pydantic, in ``run.json`` and in
logs). It is never a command-line flag (argv is visible to every user of the machine): it comes
from ``SPARQ_<FIELD>``, a settings file, or for the API key a file named by
``--openai-api-key-file``. Pass-through option mappings (``backend_options``, ``kafka_options``)
may not carry a secret at all: they travel on child argv and into ``run.json``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic.fields import FieldInfo

__all__ = ["OpenAIKey", "is_secret_field", "is_secret_name", "openai_key_option", "refuse_secret_options"]

#: Option names (lower case, ``-`` as ``_``) that hold a secret, wherever they appear in a mapping.
_SECRET_NAMES = ("api_key", "apikey", "password", "passwd", "secret", "access_token", "auth_token", "bearer_token")
_SECRET_EXACT = {"token", "authorization"}


def is_secret_name(name: str) -> bool:
    """True for a name that holds a secret (``api_key``, ``*_password``, ``Authorization``, ...)."""
    norm = str(name).lower().replace("-", "_")
    return norm in _SECRET_EXACT or norm.endswith(_SECRET_NAMES)


def is_secret_field(name: str, info: FieldInfo) -> bool:
    """True for a settings field typed ``SecretStr`` (alone or optional)."""
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def _secret_paths(value: Any, path: str) -> list[str]:
    if isinstance(value, Mapping):
        found = []
        for key, item in value.items():
            where = f"{path}.{key}"
            found += [where] if is_secret_name(key) else _secret_paths(item, where)
        return found
    if isinstance(value, (list, tuple)):
        return [p for i, item in enumerate(value) for p in _secret_paths(item, f"{path}[{i}]")]
    return []


def refuse_secret_options(field: str, value: Mapping[str, Any]) -> None:
    """Raise ValueError (naming the keys, never their values) when an options mapping carries a secret."""
    found = _secret_paths(value, field)
    if found:
        raise ValueError(
            f"{', '.join(found)}: a secret may not go in options (they travel on command lines and into run.json); "
            "give the API key in SPARQ_OPENAI_API_KEY or a file (--openai-api-key-file), "
            "Kafka passwords in SPARQ_SASL_PLAIN_PASSWORD / SPARQ_SSL_PASSWORD or the settings file"
        )


class OpenAIKey(BaseModel):
    """The API key of the ``openai`` generation backend: from the environment, a settings file, or a key file."""

    openai_api_key: SecretStr | None = Field(
        default=None, description="API key of the openai backend (secret: SPARQ_OPENAI_API_KEY or the settings file, never a flag)"
    )
    openai_api_key_file: Path | None = Field(
        default=None, description="file holding the openai backend's API key (one line; read at start)"
    )

    @model_validator(mode="after")
    def _one_readable_key(self) -> "OpenAIKey":
        """At most one source of the key; a key file must exist and hold a key."""
        if self.openai_api_key is not None and self.openai_api_key_file is not None:
            raise ValueError("give the API key once: openai_api_key or openai_api_key_file, not both")
        if self.openai_api_key_file is not None:
            self.openai_key()
        return self

    def openai_key(self) -> SecretStr | None:
        """The API key, read from its file if one is named (None: no key, the server needs none)."""
        if self.openai_api_key_file is None:
            return self.openai_api_key
        try:
            text = Path(self.openai_api_key_file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"openai_api_key_file {self.openai_api_key_file}: cannot read it ({exc.strerror})") from None
        if not text:
            raise ValueError(f"openai_api_key_file {self.openai_api_key_file} is empty")
        return SecretStr(text)


def openai_key_option(config: Any, backend: str | None = None) -> dict[str, str]:
    """``{"api_key": ...}`` for the openai backend's constructor when a key is configured, else ``{}``.

    ``backend`` defaults to ``config.backend``; only the ``openai`` backend is handed the key.
    """
    if (backend or getattr(config, "backend", None)) != "openai" or not isinstance(config, OpenAIKey):
        return {}
    key = config.openai_key()
    return {"api_key": key.get_secret_value()} if key is not None else {}
