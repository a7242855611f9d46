"""Typed message structs for every topic, and their msgpack codec.

Every message on the wire is a msgpack map holding the struct's fields plus two
envelope fields, ``schema`` (the type's name) and ``version`` (an integer). Decoding
checks both and validates every field; anything else raises :class:`DecodeError`.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar, TypeVar

import msgpack
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sparq_stream.errors import DecodeError

__all__ = [
    "Message",
    "Seed",
    "Candidate",
    "NovelCandidate",
    "SolveResult",
    "Elite",
    "ModelVersion",
    "Metric",
    "DeadLetter",
    "Dropped",
    "MESSAGE_TYPES",
    "encode",
    "decode",
    "to_jsonable",
]

M = TypeVar("M", bound="Message")

#: Hard limits on what the decoder accepts from the wire (a hostile producer cannot
#: make it allocate more than this).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


class Message(BaseModel):
    """Base of every wire message: frozen, no unknown fields, a schema name and a version."""

    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_bytes="base64", val_json_bytes="base64")

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def kafka_key(self) -> str | None:
        """Return the Kafka key for this message (the problem id where there is one)."""
        return getattr(self, "id", None)


class Seed(Message):
    """A seed problem with its final answer, read from a JSONL file."""

    SCHEMA: ClassVar[str] = "sparq.seed"
    VERSION: ClassVar[int] = 1

    id: str = Field(description="problem id: content hash of the normalised problem text")
    problem: str
    answer: str = Field(description="final answer, as written in the source")
    solution: str = Field(default="", description="worked solution, when the source has one")
    source: str = Field(default="", description="file or data set the seed came from")
    line: int = Field(default=0, ge=0, description="1-based line number in the source file")
    skills: list[str] = Field(default_factory=list)


class Candidate(Message):
    """A child problem written by the mutator, with its provenance."""

    SCHEMA: ClassVar[str] = "sparq.candidate"
    VERSION: ClassVar[int] = 1

    id: str
    problem: str
    solution: str
    answer: str
    parent_ids: list[str] = Field(default_factory=list)
    operator: str = "mutate"
    model: str = ""
    model_version: int = 0
    prompt_hash: str = ""
    step: int = 0
    variant: str = ""
    created_at: float = Field(default_factory=time.time)


class NovelCandidate(Candidate):
    """A candidate that passed the novelty filter, with its novelty score and skill niche."""

    SCHEMA: ClassVar[str] = "sparq.novel"
    VERSION: ClassVar[int] = 1

    novelty: float = Field(default=0.0, description="mean cosine distance to the k nearest seen problems")
    skills: list[str] = Field(default_factory=list, description="sorted skill-set, at most 3 skills")
    niche: str = Field(default="", description="the skill-set descriptor as a string key")
    nearest_id: str | None = None
    nearest_similarity: float = 0.0


class SolveResult(NovelCandidate):
    """A candidate after K solver rollouts: its solve-rate, quality and correct rollouts."""

    SCHEMA: ClassVar[str] = "sparq.solved"
    VERSION: ClassVar[int] = 1

    k: int = Field(ge=0, description="rollouts asked for")
    rollouts_used: int = Field(ge=0, description="rollouts actually generated (fewer on early stop)")
    n_correct: int = Field(ge=0)
    solve_rate: float = Field(ge=0.0, le=1.0)
    quality: float = Field(ge=0.0, le=1.0)
    early_stopped: bool = False
    correct_rollouts: list[str] = Field(default_factory=list)
    solver_model: str = ""
    solver_version: int = 0
    audit: list[str] | None = Field(
        default=None,
        description="validity audit of a kept problem: one 'flag: reason' entry per flag raised ([] = passed; null = not audited)",
    )


class Elite(SolveResult):
    """A member of the working set W, keyed by its slot in the compacted elites topic."""

    SCHEMA: ClassVar[str] = "sparq.elite"
    VERSION: ClassVar[int] = 1

    slot: str = Field(description="the compacted-topic key: the niche, or niche/slot for capped niches")
    inserted_step: int = 0

    def kafka_key(self) -> str | None:
        """Elites are keyed by slot, not by problem id."""
        return self.slot


class ModelVersion(Message):
    """A new model version published by the trainer; mutator and solver may hot-reload it."""

    SCHEMA: ClassVar[str] = "sparq.model"
    VERSION: ClassVar[int] = 1

    name: str
    number: int = Field(ge=0, description="the model version number, increasing per name")
    path: str
    base_model: str = ""
    parent_version: int | None = None
    train_examples: int = 0
    metrics: dict[str, float] = Field(default_factory=dict)
    created_at: float = Field(default_factory=time.time)

    def kafka_key(self) -> str | None:
        """Models are keyed by name, so the compacted topic keeps the newest version."""
        return self.name


class Metric(Message):
    """A periodic snapshot of one service instance's counters and gauges."""

    SCHEMA: ClassVar[str] = "sparq.metric"
    VERSION: ClassVar[int] = 1

    service: str
    instance: str
    ts: float = Field(default_factory=time.time)
    counters: dict[str, float] = Field(default_factory=dict)
    gauges: dict[str, float] = Field(default_factory=dict)

    def kafka_key(self) -> str | None:
        """Metrics are keyed by service instance."""
        return f"{self.service}/{self.instance}"


class DeadLetter(Message):
    """A message that could not be handled: its original bytes, where it came from and why."""

    SCHEMA: ClassVar[str] = "sparq.dead_letter"
    VERSION: ClassVar[int] = 1

    source_topic: str
    partition: int
    offset: int
    original_key: bytes | None = None
    error_type: str
    error: str
    service: str = ""
    original: bytes = b""
    ts: float = Field(default_factory=time.time)


class Dropped(Message):
    """A candidate the novelty filter dropped, and why: returns the mutator's credit, and audits drops."""

    SCHEMA: ClassVar[str] = "sparq.dropped"
    VERSION: ClassVar[int] = 1

    id: str = Field(description="the dropped candidate's problem id")
    reason: str = Field(description="exact_duplicate | near_duplicate | contamination")
    similarity: float = Field(default=0.0, description="cosine similarity to the problem it matched")
    match_id: str | None = Field(default=None, description="id of the seen or held-out problem it matched")
    match_source: str = Field(default="", description="'seen', or the held-out file it matched")
    problem: str = ""
    parent_ids: list[str] = Field(default_factory=list)
    step: int = 0
    variant: str = ""
    model: str = ""
    created_at: float = Field(default_factory=time.time)


_ENVELOPE = frozenset({"schema", "version"})

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.SCHEMA: cls
    for cls in (Seed, Candidate, NovelCandidate, SolveResult, Elite, ModelVersion, Metric, DeadLetter, Dropped)
}


for _cls in MESSAGE_TYPES.values():
    if _ENVELOPE & set(_cls.model_fields):
        raise TypeError(f"{_cls.__name__} may not define the envelope fields {sorted(_ENVELOPE)}")


def encode(message: Message) -> bytes:
    """Encode a message as msgpack with its ``schema`` and ``version`` envelope fields."""
    body = message.model_dump(mode="python")
    body["schema"] = message.SCHEMA
    body["version"] = message.VERSION
    return msgpack.packb(body, use_bin_type=True)


def decode(data: bytes, expect: type[M] | tuple[type[Message], ...] | None = None) -> M:
    """Decode and validate bytes into a message; raise :class:`DecodeError` naming the problem."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if len(data) > MAX_MESSAGE_BYTES:
        raise DecodeError(f"message of {len(data)} bytes exceeds the {MAX_MESSAGE_BYTES} byte limit")
    try:
        body = msgpack.unpackb(bytes(data), raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad bytes
        raise DecodeError(f"not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(body, dict):
        raise DecodeError(f"not a msgpack map (got {type(body).__name__})")
    schema = body.pop("schema", None)
    version = body.pop("version", None)
    if not isinstance(schema, str):
        raise DecodeError("missing or non-string 'schema' field")
    cls = MESSAGE_TYPES.get(schema)
    if cls is None:
        raise DecodeError(f"unknown schema {schema!r}; known: {', '.join(sorted(MESSAGE_TYPES))}")
    if expect is not None:
        allowed = expect if isinstance(expect, tuple) else (expect,)
        if cls not in allowed:
            names = ", ".join(c.SCHEMA for c in allowed)
            raise DecodeError(f"schema {schema!r} where {names} was expected")
    if not isinstance(version, int) or isinstance(version, bool):
        raise DecodeError(f"{schema}: missing or non-integer 'version' field")
    if version != cls.VERSION:
        raise DecodeError(f"{schema}: unsupported version {version} (this build reads version {cls.VERSION})")
    try:
        return cls.model_validate(body)  # type: ignore[return-value]
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "(message)"
        raise DecodeError(f"{schema} v{version}: field {where}: {first.get('msg')} ({exc.error_count()} error(s))") from None
    except RecursionError:
        raise DecodeError(f"{schema}: nesting too deep") from None


def to_jsonable(message: Message) -> dict[str, Any]:
    """Return the message as a JSON-ready dict with its envelope fields (bytes as base64)."""
    body = message.model_dump(mode="json")
    return {"schema": message.SCHEMA, "version": message.VERSION, **body}
