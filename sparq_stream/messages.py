"""Typed message structs for every topic, and their msgpack codec.

Every message on the wire is a msgpack map holding the struct's fields plus two
envelope fields, ``schema`` (the type's name) and ``version`` (an integer). Decoding
checks both and validates every field: a value of the wrong shape (bytes that are not
msgpack, an unknown schema or version, a missing field, a wrong type) raises
:class:`DecodeError`; a well-formed value that breaks a value rule (a number that is not
finite or out of its range, an id that is not 32 hex digits, an enum value outside its
set, a cross-field rule such as ``n_correct <= rollouts_used <= k``) raises
:class:`InvalidValue` naming the field. Constructing a struct in Python applies the same
rules, so no service can build what a reader would refuse, except the id pattern, which is
checked where messages are decoded (services build ids with ``problem_id``; the wrapper also
checks that an id is the hash of its problem text).
Fields the decoder does not know are ignored (a tolerant reader: a producer may add an
optional field without bumping ``version``; see docs/wire.md, "Versioning").

Times are seconds since the Unix epoch (UTC) as floats; ``reason``, ``operator`` and ``variant`` take
closed value sets (``*_VALUES``) that the JSON Schemas publish as ``enum``.
"""

from __future__ import annotations

import re
import time
from typing import Annotated, Any, ClassVar, TypeVar, get_args

import msgpack
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationError, ValidationInfo, WithJsonSchema, model_validator

from sparq_stream.descriptors import canonical_skills, niche_key
from sparq_stream.errors import DecodeError, FatalError, InvalidValue
from sparq_stream.settings import Variant

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
    "DROP_REASON_VALUES",
    "OPERATOR_VALUES",
    "VARIANT_VALUES",
    "MutatorState",
    "EndMarker",
    "END_KEY_PREFIX",
    "Watermark",
    "WATERMARK_KEY",
    "ID_PATTERN",
    "READ_VERSIONS",
    "value_rules",
    "MESSAGE_TYPES",
    "encode",
    "decode",
    "to_jsonable",
]

M = TypeVar("M", bound="Message")

#: Hard limits on what the decoder accepts from the wire (a hostile producer cannot
#: make it allocate more than this).
MAX_MESSAGE_BYTES = 16 * 1024 * 1024

#: Why the novelty filter dropped a candidate (``sparq.dropped.reason``).
DROP_REASON_VALUES: tuple[str, ...] = ("exact_duplicate", "near_duplicate", "contamination", "contamination_ngram", "prompt_example")
#: How a candidate was made from its parents (``operator``).
OPERATOR_VALUES: tuple[str, ...] = ("mutate",)
#: The QD variant of the run that made a candidate (``variant``); "" where none was given.
VARIANT_VALUES: tuple[str, ...] = ("", *get_args(Variant))


def _one_of(values: tuple[str, ...]) -> Any:
    """A string restricted to ``values``: validated on decode, published as a JSON Schema ``enum``."""

    def check(value: str) -> str:
        if value not in values:
            raise ValueError(f"must be one of {', '.join(repr(v) for v in values)}")
        return value

    return Annotated[str, AfterValidator(check), WithJsonSchema({"type": "string", "enum": list(values)})]


DropReason = _one_of(DROP_REASON_VALUES)
Operator = _one_of(OPERATOR_VALUES)
VariantName = _one_of(VARIANT_VALUES)

def _niche_of(skills: list[str]) -> str:
    """The niche key of a skill list (the descriptor rules of :mod:`sparq_stream.descriptors`); ValueError if none."""
    try:
        return niche_key(canonical_skills(skills))
    except FatalError as exc:
        raise ValueError(f"skills: {exc}") from None


#: A problem id: the first 32 lower-case hex digits of sha256 of the normalised problem text.
ID_PATTERN = r"^[0-9a-f]{32}$"
#: Versions this build reads: the current one, and version 1 (the same fields) read under the current rules.
READ_VERSIONS: tuple[int, ...] = (1, 2)
#: Slack of the float cross-field rules (a solve-rate written as n/k, a quality as 1 - solve-rate).
_EPS = 1e-9

_ID_RE = re.compile(ID_PATTERN)
#: The validation context :func:`decode` passes: rules marked "on the wire" run only there.
WIRE: dict[str, bool] = {"wire": True}


def _id_on_the_wire(value: str, info: ValidationInfo) -> str:
    """A problem id read from the wire is 32 lower-case hex digits (Python code builds ids with ``problem_id``)."""
    if info.context and info.context.get("wire") and not _ID_RE.match(value):
        raise ValueError(f"{value[:80]!r} is not a problem id (32 lower-case hex digits)")
    return value


ProblemId = Annotated[str, AfterValidator(_id_on_the_wire), WithJsonSchema({"type": "string", "pattern": ID_PATTERN})]
Count = Annotated[int, Field(ge=0)]
Epoch = Annotated[float, Field(ge=0.0)]
Rate = Annotated[float, Field(ge=0.0, le=1.0)]
Cosine = Annotated[float, Field(ge=-1.0, le=1.0)]

_ID = "problem id: first 32 hex digits of sha256 of the normalised problem text (docs/wire.md, 'Problem ids')"
_CREATED = "when the message was built: seconds since the Unix epoch (UTC), float; default: the time of building"


class Message(BaseModel):
    """Base of every wire message: frozen, no unknown fields, finite numbers, a schema name and a version."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, ser_json_bytes="base64", val_json_bytes="base64"
    )

    SCHEMA: ClassVar[str] = ""
    VERSION: ClassVar[int] = 2
    #: The rules JSON Schema cannot say (cross-field), in words: docs/wire.md lists them per type.
    RULES: ClassVar[tuple[str, ...]] = ()

    def kafka_key(self) -> str | None:
        """Return the Kafka key for this message (the problem id where there is one)."""
        return getattr(self, "id", None)


class Seed(Message):
    """A seed problem with its final answer, read from a JSONL file."""

    SCHEMA: ClassVar[str] = "sparq.seed"
    VERSION: ClassVar[int] = 2

    id: ProblemId = Field(description=_ID)
    problem: str = Field(min_length=1, description="the problem text")
    answer: str = Field(description="final answer, as written in the source")
    solution: str = Field(default="", description="worked solution, when the source has one")
    source: str = Field(default="", description="file or data set the seed came from")
    line: int = Field(default=0, ge=0, description="1-based line number in the source file (0: unknown)")
    skills: list[str] = Field(default_factory=list, description="skills given by the source, if any")


class Candidate(Message):
    """A child problem written by the mutator, with its provenance."""

    SCHEMA: ClassVar[str] = "sparq.candidate"
    VERSION: ClassVar[int] = 2

    id: ProblemId = Field(description=_ID)
    problem: str = Field(min_length=1, description="the child problem text")
    solution: str = Field(description="the generator's worked solution, ending in \\boxed{answer}")
    answer: str = Field(description="the generator's final answer (the content of the last \\boxed{})")
    parent_ids: list[ProblemId] = Field(default_factory=list, description="problem ids of the parents")
    operator: Operator = Field(default="mutate", description="how the child was made from its parents")
    model: str = Field(default="", description="name of the generator model")
    model_version: Count = Field(default=0, description="version number of the generator model (0: the base model)")
    prompt_hash: str = Field(default="", max_length=128, description="sha256 (64 hex digits) of the mutation prompt template; '' when unknown")
    step: Count = Field(default=0, description="the mutator's step (round) that made the child")
    variant: VariantName = Field(default="", description="the QD variant of the run")
    created_at: Epoch = Field(default_factory=time.time, description=_CREATED)


class NovelCandidate(Candidate):
    """A candidate that passed the novelty filter, with its novelty score and skill niche."""

    SCHEMA: ClassVar[str] = "sparq.novel"
    VERSION: ClassVar[int] = 2

    RULES: ClassVar[tuple[str, ...]] = (
        "skills: at most 3 distinct skills once lower-cased with whitespace collapsed; none contains '|' or is '(none)'",
        "niche: the key of the skills (lower-cased, sorted, joined by '|'; '(none)' for no skills); absent or '': derived",
    )

    novelty: float = Field(default=0.0, ge=0.0, le=2.0, description="mean cosine distance to the k nearest seen problems")
    skills: list[str] = Field(default_factory=list, description="sorted skill-set, at most 3 skills")
    niche: str = Field(default="", description="the skill-set key: sorted skills joined by '|', '(none)' for the empty set ('' or absent: derived from skills)")
    nearest_id: ProblemId | None = Field(default=None, description="problem id of the most similar seen problem, if any")
    nearest_similarity: Cosine = Field(default=0.0, description="cosine similarity to that problem")

    @model_validator(mode="before")
    @classmethod
    def _derive_niche(cls, data: Any) -> Any:
        """An absent or empty niche is the key of the skills."""
        if isinstance(data, dict) and not data.get("niche"):
            skills = data.get("skills") or []
            if isinstance(skills, list) and all(isinstance(s, str) for s in skills):
                try:
                    data = {**data, "niche": _niche_of(skills)}
                except ValueError:
                    pass  # the after-validator names the bad skill
        return data

    @model_validator(mode="after")
    def _niche_is_the_skills(self) -> "NovelCandidate":
        """The niche is the key of the skill-set, and the skill-set is canonical."""
        expected = _niche_of(self.skills)
        if self.niche != expected:
            raise ValueError(f"niche: {self.niche[:200]!r} is not the key of its skills (expected {expected[:200]!r})")
        return self


class SolveResult(NovelCandidate):
    """A candidate after K solver rollouts: its solve-rate, quality and correct rollouts."""

    SCHEMA: ClassVar[str] = "sparq.solved"
    VERSION: ClassVar[int] = 2

    RULES: ClassVar[tuple[str, ...]] = NovelCandidate.RULES + (
        "n_correct <= rollouts_used <= k",
        "len(correct_rollouts) <= n_correct",
        "not early_stopped: rollouts_used == k and solve_rate * k within half a rollout of n_correct",
        "quality is 0, or 1 - solve_rate with 0 < solve_rate < 1 (the run's band lies inside (0, 1))",
    )

    k: int = Field(ge=1, description="rollouts asked for")
    rollouts_used: Count = Field(description="rollouts actually generated (fewer on early stop)")
    n_correct: Count = Field(description="rollouts whose final answer equals answer")
    solve_rate: Rate = Field(description="fraction of rollouts whose final answer is correct (on an early stop, the decision's estimate)")
    quality: Rate = Field(description="1 - solve_rate when 0.1 <= solve_rate <= 0.9 (the run's bounds), else 0")
    early_stopped: bool = Field(default=False, description="true when fewer than k rollouts decided the outcome")
    correct_rollouts: list[str] = Field(default_factory=list, description="the text of every correct rollout")
    solver_model: str = Field(default="", description="name of the solver model")
    solver_version: Count = Field(default=0, description="version number of the solver model (0: the base model)")
    audit: list[str] | None = Field(
        default=None,
        description="validity audit of a kept problem: one 'flag: reason' entry per flag raised ([] = passed; null = not audited)",
    )

    @model_validator(mode="after")
    def _counts_and_rates_agree(self) -> "SolveResult":
        """The counts, the solve-rate and the quality tell one story."""
        if self.rollouts_used > self.k:
            raise ValueError(f"rollouts_used: {self.rollouts_used} rollouts used of k={self.k} asked for")
        if self.n_correct > self.rollouts_used:
            raise ValueError(f"n_correct: {self.n_correct} correct of {self.rollouts_used} rollouts used")
        if len(self.correct_rollouts) > self.n_correct:
            raise ValueError(f"correct_rollouts: {len(self.correct_rollouts)} rollouts for n_correct={self.n_correct}")
        if not self.early_stopped:
            if self.rollouts_used != self.k:
                raise ValueError(f"rollouts_used: {self.rollouts_used} != k={self.k} without an early stop")
            if abs(self.solve_rate * self.k - self.n_correct) > 0.5 + _EPS:
                raise ValueError(f"solve_rate: {self.solve_rate} is not n_correct / k = {self.n_correct}/{self.k}")
        if self.quality > 0.0:
            if not 0.0 < self.solve_rate < 1.0 or abs(self.quality - (1.0 - self.solve_rate)) > _EPS:
                raise ValueError(f"quality: {self.quality} contradicts solve_rate {self.solve_rate} (must be 0 or 1 - solve_rate)")
        return self


class Elite(SolveResult):
    """A member of the working set W, keyed by its slot in the compacted elites topic."""

    SCHEMA: ClassVar[str] = "sparq.elite"
    VERSION: ClassVar[int] = 2

    slot: str = Field(min_length=1, description="the compacted-topic key: '<niche>' (qd, cap 1), '<niche>/<id>' (qd, cap > 1) or 'top/<id>' (dynamic-uniform, static)")
    inserted_step: Count = Field(default=0, description="the step at which this elite entered the working set")
    solved_partition: int = Field(default=-1, ge=-1, description="partition of the <prefix>.solved record this elite was made from (-1: unknown)")
    solved_offset: int = Field(default=-1, ge=-1, description="offset of that record (-1: unknown)")

    def kafka_key(self) -> str | None:
        """Elites are keyed by slot, not by problem id."""
        return self.slot


class ModelVersion(Message):
    """A new model version published by the trainer; mutator and solver may hot-reload it."""

    SCHEMA: ClassVar[str] = "sparq.model"
    VERSION: ClassVar[int] = 2

    RULES: ClassVar[tuple[str, ...]] = ("parent_version < number",)

    name: str = Field(min_length=1, description="model name (the Kafka key)")
    number: Count = Field(description="the model version number, increasing per name")
    path: str = Field(min_length=1, description="where the trainer wrote the model (a directory readers must be able to reach; readers refuse one outside their model root)")
    base_model: str = Field(default="", description="the model it was fine-tuned from")
    parent_version: Count | None = Field(default=None, description="the version it was trained from; null: the base model")
    train_examples: Count = Field(default=0, description="number of training examples")
    metrics: dict[str, float] = Field(default_factory=dict, description="evaluation results by name (e.g. accuracy in [0, 1]); finite numbers")
    created_at: Epoch = Field(default_factory=time.time, description=_CREATED)

    @model_validator(mode="after")
    def _parent_is_older(self) -> "ModelVersion":
        """A version is trained from an older one."""
        if self.parent_version is not None and self.parent_version >= self.number:
            raise ValueError(f"parent_version: {self.parent_version} is not older than number {self.number}")
        return self

    def kafka_key(self) -> str | None:
        """Models are keyed by name, so the compacted topic keeps the newest version."""
        return self.name


class Metric(Message):
    """A periodic snapshot of one service instance's counters and gauges."""

    SCHEMA: ClassVar[str] = "sparq.metric"
    VERSION: ClassVar[int] = 2

    service: str = Field(min_length=1, description="service name (mutator, novelty, solver, archivist, trainer, ...)")
    instance: str = Field(description="instance name within the service")
    ts: Epoch = Field(
        default_factory=time.time,
        description="when the snapshot was taken: seconds since the Unix epoch (UTC), float; default: the time of building",
    )
    counters: dict[str, Annotated[float, Field(ge=0.0)]] = Field(default_factory=dict, description="monotonic totals since the instance started (finite, >= 0)")
    gauges: dict[str, float] = Field(
        default_factory=dict,
        description="current values (finite); 'lag': input records not yet consumed (control markers excluded), 'lag_unknown': partitions whose lag is not known yet",
    )

    def kafka_key(self) -> str | None:
        """Metrics are keyed by service instance."""
        return f"{self.service}/{self.instance}"


class DeadLetter(Message):
    """A message that could not be handled: its original bytes, where it came from and why."""

    SCHEMA: ClassVar[str] = "sparq.dead_letter"
    VERSION: ClassVar[int] = 2

    source_topic: str = Field(description="topic the message was read from (header sparq.dlq.source_topic)")
    partition: int = Field(ge=-1, description="its partition (header sparq.dlq.partition; -1: unknown)")
    offset: int = Field(ge=-1, description="its offset (header sparq.dlq.offset; -1: unknown)")
    original_key: bytes | None = Field(default=None, description="the record's key bytes (null: no key)")
    error_type: str = Field(
        description="Python exception class name, e.g. DecodeError, InvalidValue, IdMismatch, ValueError (an open set)",
        examples=["DecodeError", "InvalidValue", "IdMismatch"],
    )
    error: str = Field(description="the error message, at most 4000 characters")
    service: str = Field(default="", description="the service that dead-lettered it")
    instance: str = Field(default="", description="the service instance that dead-lettered it (header sparq.dlq.instance)")
    original: bytes = Field(default=b"", description="the record's value bytes")
    ts: Epoch = Field(
        default_factory=time.time,
        description="when it was dead-lettered: seconds since the Unix epoch (UTC), float; default: the time of building",
    )


class Dropped(Message):
    """A candidate the novelty filter dropped, and why: returns the mutator's credit, and audits drops."""

    SCHEMA: ClassVar[str] = "sparq.dropped"
    VERSION: ClassVar[int] = 2

    id: ProblemId = Field(description="the dropped candidate's " + _ID)
    reason: DropReason = Field(description="why it was dropped")
    similarity: Cosine = Field(default=0.0, description="cosine similarity to the problem it matched (1.0 for a shared n-gram)")
    match_id: str | None = Field(default=None, description="id of the seen or held-out problem it matched")
    match_source: str = Field(
        default="", description="'seen' (a seed or earlier candidate), or the file name of the held-out set it matched"
    )
    problem: str = Field(default="", description="the dropped problem text")
    parent_ids: list[ProblemId] = Field(default_factory=list, description="problem ids of its parents")
    step: Count = Field(default=0, description="the mutator's step that made it")
    variant: VariantName = Field(default="", description="the QD variant of the run")
    model: str = Field(default="", description="name of the generator model")
    created_at: Epoch = Field(default_factory=time.time, description=_CREATED)


#: The reserved key of watermark records on the elites topic (no slot key starts with "~").
WATERMARK_KEY = "~watermark"


class Watermark(Message):
    """How far a writer has applied an input topic: written after the records it covers.

    The archivist writes one to every partition of ``elites`` after each batch (key
    :data:`WATERMARK_KEY`), once that batch's elite records are acknowledged: a reader that
    met a watermark covering offset o of ``solved`` partition p in every elites partition
    has read every elite record that the results up to (p, o) produced.
    """

    SCHEMA: ClassVar[str] = "sparq.watermark"
    VERSION: ClassVar[int] = 2

    writer: str = Field(default="archivist", description="the service that applied the input")
    source: str = Field(default="solved", description="the logical topic the offsets belong to")
    offsets: dict[Annotated[str, StringConstraints(pattern=r"^(0|[1-9][0-9]*)$")], Count] = Field(
        default_factory=dict, description="partition (a decimal number) -> next offset not yet applied"
    )
    ts: Epoch = Field(default_factory=time.time, description=_CREATED)

    def kafka_key(self) -> str | None:
        """Watermarks share one reserved key (a compacted topic keeps the last per partition)."""
        return WATERMARK_KEY


#: The key of every end marker starts with this (no problem id, slot or watermark key does).
END_KEY_PREFIX = "~end."


class EndMarker(Message):
    """The end of a bounded run on one partition (a final watermark): no record of the run follows it there.

    The process wrapper writes one copy to every partition of each output topic (header
    ``sparq.fanout``), behind every output of the run: a source (the mutator) once its share of
    the run is spent and accounted for, any other stage once every input partition it ``covers``
    is ended and everything before it there is delivered. A reader's partition is ended for a
    writing stage when the ``covers`` of that stage's markers (from any of its instances) add up
    to all ``of`` of its input partitions (docs/reliability.md, "How a bounded run ends").
    Cores never see one; ``sparq tail`` and the example consumers skip it.
    """

    SCHEMA: ClassVar[str] = "sparq.end_marker"
    VERSION: ClassVar[int] = 2

    RULES: ClassVar[tuple[str, ...]] = ("covers: distinct, each below of",)

    run: str = Field(min_length=1, description="the run (topic prefix) the marker ends")
    stage: str = Field(min_length=1, description="the service that wrote it (mutator, novelty, solver, archivist, trainer)")
    instance: str = Field(default="", description="the instance of that service that wrote it")
    epoch: Count = Field(default=1, description="which end: a source that was given more work after an end ends again with a larger epoch")
    source: str = Field(default="", description="the logical input topic whose partitions it covers ('' for a source: its shares of the run)")
    covers: list[Count] = Field(default_factory=list, description="the input partitions (a source: the shares) this writer has ended")
    of: Annotated[int, Field(ge=1)] = Field(default=1, description="how many partitions (shares) the input has in all")
    ts: Epoch = Field(default_factory=time.time, description=_CREATED)

    @model_validator(mode="after")
    def _covers_within(self) -> "EndMarker":
        """Covers are distinct partitions below ``of``."""
        if len(set(self.covers)) != len(self.covers) or any(c >= self.of for c in self.covers):
            raise ValueError(f"covers: {self.covers[:20]} must be distinct partitions below of={self.of}")
        return self

    def kafka_key(self) -> str | None:
        """One key per writing instance (a compacted topic keeps its newest end)."""
        return f"{END_KEY_PREFIX}{self.stage}.{self.instance}"


class MutatorState(Message):
    """The mutator's state, the one record per mutator key of its compacted changelog topic.

    Written only after the candidates it accounts for are acknowledged (or in the same
    transaction), and read back as a table on start. Lists with the same prefix are parallel.
    """

    SCHEMA: ClassVar[str] = "sparq.mutator_state"
    VERSION: ClassVar[int] = 2

    RULES: ClassVar[tuple[str, ...]] = (
        "lists with the same prefix (queue_*, credit_*, wait_*) have equal lengths",
        "open_step < step",
    )

    key: str = Field(default="mutator", min_length=1, description="the changelog key: one state per mutator group")
    variant: VariantName = Field(default="", description="the run's QD variant (a state of another run is refused)")
    seed: int = Field(default=0, description="the run's sampling seed (a state of another run is refused)")
    batch_size: Count = Field(default=0, description="the run's parents per step (a state of another run is refused)")
    step: Count = Field(default=0, description="steps started (the next step's number)")
    emitted: Count = Field(default=0, description="candidates emitted")
    open_step: Count | None = Field(default=None, description="the step whose parents are being mutated, if any")
    queue_parents: list[bytes] = Field(default_factory=list, description="encoded Seed/Elite parents not yet mutated")
    queue_n: list[Count] = Field(default_factory=list, description="children still owed per queued parent")
    queue_offset: list[Count] = Field(default_factory=list, description="generation offset of the next child per queued parent")
    credit_ids: list[ProblemId] = Field(default_factory=list, description="problem ids of candidates in flight")
    credit_steps: list[Count] = Field(default_factory=list, description="the step of each credit")
    credit_at: list[Epoch] = Field(default_factory=list, description="emission time of each credit")
    wait_steps: list[Count] = Field(default_factory=list, description="steps whose results W must show before the next")
    wait_partitions: list[Count] = Field(default_factory=list, description="solved partition of a result W must show")
    wait_offsets: list[Count] = Field(default_factory=list, description="next offset past that result in solved")
    ts: Epoch = Field(default_factory=time.time, description=_CREATED)

    @model_validator(mode="after")
    def _parallel_lists(self) -> "MutatorState":
        """Parallel lists have equal lengths; an open step was started."""
        for prefix in ("queue", "credit", "wait"):
            lengths = {name: len(getattr(self, name)) for name in type(self).model_fields if name.startswith(prefix + "_")}
            if len(set(lengths.values())) > 1:
                raise ValueError(f"{prefix}_*: parallel lists of different lengths {lengths}")
        if self.open_step is not None and self.open_step >= self.step:
            raise ValueError(f"open_step: {self.open_step} is not a started step (step={self.step})")
        return self

    def kafka_key(self) -> str | None:
        """One record per mutator key."""
        return self.key


_ENVELOPE = frozenset({"schema", "version"})

MESSAGE_TYPES: dict[str, type[Message]] = {
    cls.SCHEMA: cls
    for cls in (Seed, Candidate, NovelCandidate, SolveResult, Elite, ModelVersion, Metric, DeadLetter, Dropped, Watermark, MutatorState, EndMarker)
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
    if version != cls.VERSION and version not in READ_VERSIONS:
        readable = ", ".join(str(v) for v in sorted({*READ_VERSIONS, cls.VERSION}))
        raise DecodeError(f"{schema}: unsupported version {version} (this build reads versions {readable})")
    body = {k: v for k, v in body.items() if k in cls.model_fields}  # tolerant reader: unknown fields are ignored
    try:
        return cls.model_validate(body, context=WIRE)  # type: ignore[return-value]
    except ValidationError as exc:
        raise _validation_error(exc, f"{schema} v{version}") from None
    except RecursionError:
        raise DecodeError(f"{schema}: nesting too deep") from None


#: pydantic error types that mean the value has the wrong shape (not a value-rule breach).
_SHAPE_ERRORS = frozenset({"missing", "extra_forbidden", "model_type", "model_attributes_type", "dict_type", "list_type"})


def _is_shape(kind: str) -> bool:
    """True for a pydantic error type that means a wrong shape (missing, wrong type), not a broken value rule."""
    return kind in _SHAPE_ERRORS or kind.endswith("_type") or kind.endswith("_parsing")


def _validation_error(exc: ValidationError, what: str) -> DecodeError:
    """Turn a pydantic error into DecodeError (wrong shape) or InvalidValue (a value rule broken), naming the field."""
    errors = exc.errors()
    first = next((e for e in errors if _is_shape(str(e.get("type", "")))), errors[0])
    kind = str(first.get("type", ""))
    loc = [str(p) for p in first.get("loc", ())]
    message = str(first.get("msg", ""))
    if kind == "value_error" and not loc and ":" in message:  # a cross-field rule names its field first
        loc = [message.split(":", 1)[0].removeprefix("Value error, ").strip()]
        message = message.split(":", 1)[1].strip()
    where = ".".join(loc) or "(message)"
    cls = DecodeError if _is_shape(kind) else InvalidValue
    return cls(f"{what}: field {where}: {message} ({exc.error_count()} error(s))")


def value_rules(cls: type[Message]) -> tuple[str, ...]:
    """The cross-field rules of a message type, in words (the rest is in its JSON Schema)."""
    return cls.RULES


def to_jsonable(message: Message) -> dict[str, Any]:
    """Return the message as a JSON-ready dict with its envelope fields (bytes as base64)."""
    body = message.model_dump(mode="json")
    return {"schema": message.SCHEMA, "version": message.VERSION, **body}
