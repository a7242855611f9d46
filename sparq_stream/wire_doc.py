"""docs/wire.md, the wire contract, rendered from the message classes, the topic list and the dead-letter headers.

``sparq wire-doc`` writes it; ``sparq wire-doc --check`` (and a test) fails when it is stale.
Prose that no class holds (the envelope, the versioning policy, delivery and lag) lives here.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparq_stream import ids
from sparq_stream.bus.topics import LOGICAL_TOPICS, SINGLE_PARTITION, spec_of, topic_configs
from sparq_stream.messages import (
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    READ_VERSIONS,
    Candidate,
    Dropped,
    Elite,
    Message,
    Metric,
    ModelVersion,
    MutatorState,
    NovelCandidate,
    Seed,
    SolveResult,
    Watermark,
    value_rules,
)
from sparq_stream.messages import DeadLetter
from sparq_stream.schema_export import (
    DLQ_HEADERS,
    DLQ_HEADERS_FILE,
    DLQ_OPTIONAL_HEADERS,
    json_schema,
    schema_filename,
)

__all__ = ["TOPICS", "TopicDoc", "render_wire_doc", "write_wire_doc", "stale_wire_doc", "DEFAULT_PATH"]

DEFAULT_PATH = Path("docs/wire.md")


@dataclass(frozen=True)
class TopicDoc:
    """What one logical topic carries and who uses it."""

    key: str
    value: str
    writers: str
    readers: str


def _v(cls: type[Message]) -> str:
    """"`<schema>` v<version>" of a message type, as the topic table names it."""
    return f"`{cls.SCHEMA}` v{cls.VERSION}"


#: Every logical topic: its key, its value type, its writers and its readers.
TOPICS: dict[str, TopicDoc] = {
    "seeds": TopicDoc("problem id", _v(Seed), "`sparq seed`, `sparq up`", "mutator, novelty, archivist (tables)"),
    "candidates": TopicDoc(
        "problem id", _v(Candidate),
        "mutator; novelty replicas with `route_partitions` (a candidate moved to the partition of its embedding bucket, "
        "header `sparq.routed`)",
        "novelty",
    ),
    "novel": TopicDoc(
        "problem id", _v(NovelCandidate), "novelty (spread round-robin over the partitions, not by key: see *Keys and partitioning*)",
        "solver; novelty replicas (table, `follow_novel`)",
    ),
    "drops": TopicDoc("problem id", _v(Dropped), "novelty", "mutator (returns its credit)"),
    "solved": TopicDoc("problem id", _v(SolveResult), "solver", "archivist, mutator"),
    "elites": TopicDoc(
        "slot (`sparq.elite.slot`); the reserved key `~watermark` for watermark records",
        f"{_v(Elite)}, or a tombstone (null value) when a slot loses its elite; under the key `~watermark`, "
        f"{_v(Watermark)}: one copy on every partition (header `sparq.fanout` = `<partition>/<count>`) after "
        "each archivist batch, saying how far into `solved` W is applied; readers of elites skip it",
        "archivist", "mutator (dynamic variants; the step barrier), archivist (restore), trainer (tables)",
    ),
    "archive": TopicDoc(
        "problem id",
        f"{_v(SolveResult)} (every scored child: A), with the header `sparq.solved.at` = `<partition>/<offset>` of the "
        "`solved` record it was read from (lineage; absent when unknown)",
        "archivist", "trainer (`include_archive`), archivist (rebuilds a wiped or standby archive folder), `sparq export --verify`",
    ),
    "models": TopicDoc("model name (`sparq.model.name`)", _v(ModelVersion), "trainer", "mutator, solver (`follow_models`), trainer (table)"),
    "mutator-state": TopicDoc(
        "the mutator group's `state_key` (default `mutator`)", f"{_v(MutatorState)} (the mutator's changelog)",
        "mutator (after the candidates it accounts for are acknowledged)", "mutator (table, on start)",
    ),
    "metrics": TopicDoc("`<service>/<instance>`", _v(Metric), "every service", "`sparq up` (live view, stop rule), `sparq tail`"),
    "dlq": TopicDoc(
        "the original record's key bytes, unchanged (absent if it had none)",
        "the original record's value bytes, unchanged (any bytes; null for a tombstone), with the headers of "
        f"`{DLQ_HEADERS_FILE}`",
        "every service", "`sparq tail dlq`, operators",
    ),
}


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_of(prop: dict[str, Any]) -> str:
    if "anyOf" in prop:
        return " or ".join(_type_of(p) for p in prop["anyOf"])
    if "const" in prop:
        return f"const `{prop['const']}`"
    kind = prop.get("type", "any")
    if kind == "array":
        return f"array of {_type_of(prop.get('items', {}))}"
    if kind == "object":
        return f"map of string to {_type_of(prop.get('additionalProperties', {}))}"
    if prop.get("contentEncoding") == "base64":
        return "bytes (msgpack bin; base64 text in JSON)"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" if v else '`""`' for v in prop["enum"])
    bounds = []
    for key, sign in (("minimum", ">="), ("maximum", "<="), ("exclusiveMinimum", ">"), ("exclusiveMaximum", "<")):
        if key in prop:
            bounds.append(f"{sign} {prop[key]}")
    return kind + (f" ({', '.join(bounds)})" if bounds else "")


def _message_section(cls: type[Message]) -> list[str]:
    schema = json_schema(cls)
    required = set(schema.get("required", []))
    lines = [
        f"### `{cls.SCHEMA}` version {cls.VERSION}",
        "",
        f"{cls.__doc__}  Schema: [`schemas/{schema_filename(cls)}`](../schemas/{schema_filename(cls)}).",
        "",
        "| field | type | required / default | meaning |",
        "| --- | --- | --- | --- |",
    ]
    for name, prop in schema["properties"].items():
        if name in required:
            need = "required"
        elif "default" in prop:
            need = f"default `{prop['default']!r}`".replace("None", "null").replace("'", '"')
        else:
            need = "optional (see meaning)"
        lines.append(f"| `{name}` | {_cell(_type_of(prop))} | {_cell(need)} | {_cell(prop.get('description', ''))} |")
    rules = value_rules(cls)
    if rules:
        lines += ["", "Rules across fields (checked on decode; a JSON Schema cannot say them):", ""]
        lines += [f"- {rule}" for rule in rules]
    return lines + [""]


def _id_source() -> str:
    return inspect.getsource(ids.normalise_text) + "\n\n" + inspect.getsource(ids.problem_id)


def render_wire_doc() -> str:
    """Return the text of docs/wire.md."""
    missing = set(LOGICAL_TOPICS) ^ set(TOPICS)
    if missing:
        raise ValueError(f"wire_doc.TOPICS and bus.topics.LOGICAL_TOPICS differ: {sorted(missing)}")
    out: list[str] = [
        "# The sparq-stream wire contract",
        "",
        "<!-- Generated by `sparq wire-doc` from sparq_stream/messages.py, sparq_stream/wire_doc.py and",
        "     sparq_stream/schema_export.py. Do not edit by hand: a test fails when this file is stale. -->",
        "",
        "Everything a consumer or producer in another language needs: the topics, the keys, the",
        "envelope, the id rule, every message type with its units and defaults, the dead-letter",
        "record, the versioning policy, and what to expect from offsets and lag. The JSON Schemas in",
        "[`schemas/`](../schemas/) are the machine-readable half of this contract.",
        "[`examples/java-consumer`](../examples/java-consumer/) is a consumer built from these two alone.",
        "",
        "## Topics",
        "",
        "Kafka topic name = `<prefix>.<name>`: the prefix is the run's (`--prefix`, `SPARQ_PREFIX`;",
        "default `sparq`, and `sparq up` picks a new one per run), the name one of those below. All",
        "topics of a run have the same partition count (`--partitions`, default 3) except `models`",
        "and `mutator-state` (one partition each: a total order). Topic configs are those `sparq topics",
        "create` sets (Tansu keeps none).",
        "",
        "| topic | key | value | cleanup policy | partitions | writers | readers |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in LOGICAL_TOPICS:
        doc = TOPICS[name]
        policy = ", ".join(f"`{k}={v}`" for k, v in topic_configs(spec_of(name)).items())
        parts = "1" if name in SINGLE_PARTITION else "run's count"
        out.append(f"| `<prefix>.{name}` | {_cell(doc.key)} | {_cell(doc.value)} | {policy} | {parts} | {_cell(doc.writers)} | {_cell(doc.readers)} |")
    out += [
        "",
        "Readers of a compacted topic must take the last value per key themselves (a broker may",
        "compact late, or never: Tansu keeps no topic configs), and treat a null value as a deletion.",
        "",
        "## Keys and partitioning",
        "",
        "- A key is the raw UTF-8 bytes of the string in the table above, **not** msgpack. Problem",
        "  ids are 32 lower-case hex digits (see *Problem ids*); slots and model names are UTF-8 text.",
        "- Partition, on every topic but three = Kafka's default partitioner on those bytes:",
        "  `(murmur2(key) & 0x7fffffff) % partitions`, as the Java client and kafka-python compute it.",
        "  Equal keys land on the same partition of those topics, so a consumer can rely on per-key",
        "  order and co-partitioning there.",
        "- The exceptions: `novel` is **spread**: the novelty service writes each record to the next",
        "  partition round-robin (the key stays the problem id), so every solver replica gets an equal",
        "  share of a step; a consumer of `novel` must not assume a problem id's partition.",
        "  `candidates` written by novelty replicas with `route_partitions` go to the partition of",
        "  their embedding bucket (header `sparq.routed`). Watermarks on `elites` are written once to",
        "  every partition (header `sparq.fanout` = `<partition>/<count>`).",
        "- Every record sparq writes has a key, except a dead letter whose original had none.",
        "",
        "## End markers",
        "",
        "A bounded run ends with an **end marker** (`sparq.end_marker`, a final watermark) on every",
        "partition of `candidates`, `novel`, `drops`, `solved`, `elites`, `archive` and `models`, under",
        "the key `~end.<stage>.<instance>` with the header `sparq.fanout`. No record of the run follows",
        "it on that partition; a record written there after it belongs to no run yet (it is read by",
        "whoever consumes the topic next, docs/reliability.md, *How a bounded run ends*). A consumer",
        "that only wants the data skips every value whose `schema` is `sparq.end_marker` (`sparq tail`",
        "does); one that wants to know when the run is over reads the markers' `covers`.",
        "",
        "## The envelope",
        "",
        "Every value (except on `dlq`, and tombstones) is one **msgpack map** with string keys:",
        "",
        "- `schema` (string) names the type, `version` (integer) its version; a reader picks the",
        "  JSON Schema `schemas/<schema>.v<version>.json` from these two entries;",
        "- every other entry is a field of that type, under the field's name in the schema.",
        "",
        "Encoding: strings are msgpack str (UTF-8), bytes are msgpack bin, integers msgpack int,",
        "floats msgpack float 64, `null` msgpack nil, lists msgpack arrays, maps msgpack maps with",
        "string keys. The Python services write every field, defaults included; a reader must still",
        "apply the documented default for a field that is absent (another producer may omit it).",
        f"Size: the decoder refuses values over {MAX_MESSAGE_BYTES // (1024 * 1024)} MiB, but the real limit is lower: topics",
        "are created with the broker's default `max.message.bytes` (1,048,588 bytes on Apache Kafka) and",
        "the services' producers keep `max_request_size` at 1 MiB (`--max-request-size`), so a record",
        "(key, value and headers) must fit 1 MiB; an output that would not is dead-lettered with its input.",
        "To validate a value against its JSON Schema,",
        "turn the map into JSON with bytes as padded base64 text (`contentEncoding: base64`).",
        "",
        "Python decodes and validates with `sparq_stream.messages.decode`; `sparq tail TOPIC` prints",
        "values as JSON (that JSON rendering, and the Python API, are where the `sparq.dead_letter`",
        "schema applies: see *Dead letters*).",
        "",
        "## Problem ids",
        "",
        "A problem's `id` is the first 32 hex digits (lower case) of the sha256 of its normalised",
        "text, where normalising is, in this order:",
        "",
        "1. Unicode NFKC normalisation (full-width digits become ASCII, ligatures split, ...);",
        "2. every run of whitespace becomes one space: whitespace is what Python's `re` `\\s` matches",
        "   in a str pattern, i.e. every character whose `str.isspace()` is true (ASCII space, tab,",
        "   newlines, U+000B, U+000C, U+001C to U+001F, U+0085, and Unicode space separators);",
        "3. leading and trailing whitespace is stripped;",
        "4. full Unicode case folding (Python `str.casefold`: `ß` becomes `ss`, not just lower case);",
        "5. the result is encoded as UTF-8.",
        "",
        "The text hashed is the message's `problem` field. Reference implementation (the code itself):",
        "",
        "```python",
        "import hashlib, re, unicodedata",
        "",
        "_SPACE = re.compile(r\"\\s+\")",
        "",
        _id_source().rstrip(),
        "```",
        "",
        "Every service checks it: a consumed message that carries a non-empty `problem` and an `id`",
        "(`sparq.seed`, `sparq.candidate`, `sparq.novel`, `sparq.solved`, `sparq.elite`, and",
        "`sparq.dropped` when it carries the text) whose id is not this hash is dead-lettered with",
        "`sparq.dlq.error_type` = `IdMismatch` and an error naming the expected id. So one problem",
        "cannot enter the loop twice under two ids.",
        "",
        "## Times and units",
        "",
        "| where | unit and format |",
        "| --- | --- |",
    ]
    for cls in MESSAGE_TYPES.values():
        for name, prop in json_schema(cls)["properties"].items():
            if name in ("created_at", "ts"):
                out.append(f"| `{cls.SCHEMA}.{name}` | {_cell(prop.get('description', ''))} |")
    out += [
        f"| header `sparq.dlq.ts` | {DLQ_HEADERS['sparq.dlq.ts']} |",
        "| `sparq.metric` gauges ending in `_seconds` / `_s` | seconds (float) |",
        "| Kafka record timestamp | milliseconds since the Unix epoch (CreateTime, set by the producer) |",
        "",
        "Rates (`solve_rate`, `quality`, `novelty`, similarities) are fractions in [0, 1], never percentages.",
        "",
        "## Message types",
        "",
        "Every value is checked where it is decoded, on group inputs and table topics alike: numbers",
        "must be finite (no NaN or Infinity) and inside the bounds the tables give, ids match",
        "`^[0-9a-f]{32}$`, enums hold one of their values, and the rules across fields listed under",
        "each type hold. A value of the wrong shape (not msgpack, unknown schema or version, a missing",
        "field, a wrong type) is dead-lettered with `error_type` `DecodeError`; a well-formed value",
        "that breaks a rule with `error_type` `InvalidValue` and an error naming the field",
        "(`sparq.solved v2: field quality: 0.9 contradicts solve_rate 0.5 ...`). The Python structs",
        "apply the same rules when they are built, so no sparq service writes what a reader refuses.",
        "Beyond the message: readers of `models` refuse a `path` outside their models folder (the",
        "mutator's and solver's `models_root`, the trainer's own `models_dir`): dead-lettered as",
        "`UntrustedModelPath`.",
        "",
    ]
    for cls in MESSAGE_TYPES.values():
        out += _message_section(cls)
    out += [
        "## Dead letters",
        "",
        "A record that a service cannot decode or handle (bad bytes, unknown schema or version, a",
        "field out of range, an id that is not its text's hash, a handler error that is not",
        "retriable) is copied to `<prefix>.dlq` and its offset committed, so it never blocks a",
        "partition and is never lost. On the wire a dead letter is:",
        "",
        "- key: the original record's key bytes, unchanged;",
        "- value: the original record's value bytes, unchanged (not msgpack of anything: they may be",
        "  the very bytes that failed to decode);",
        "- headers, in this order, each value UTF-8 text:",
        "",
        "| header | always | meaning |",
        "| --- | --- | --- |",
    ]
    out += [f"| `{k}` | yes | {_cell(v)} |" for k, v in DLQ_HEADERS.items()]
    out += [f"| `{k}` | no | {_cell(v)} |" for k, v in DLQ_OPTIONAL_HEADERS.items()]
    out += [
        "",
        "followed by the original record's own headers (those not starting with `sparq.dlq.`).",
        "`error_type` values sparq writes: `DecodeError` (wrong shape), `InvalidValue` (a value rule",
        "broken), `IdMismatch` (an id that is not its text's hash), `KeyMismatch` (a key that is not",
        "the message's own), `UnexpectedTombstone` (a null value on a topic without deletes),",
        "`MessageSizeTooLargeError` (an output over the size limit), and the class name of any other",
        "error a handler raised that a retry cannot fix.",
        f"[`schemas/{DLQ_HEADERS_FILE}`](../schemas/{DLQ_HEADERS_FILE}) is the JSON Schema of that header",
        "map (header name to UTF-8 text); validate a dead letter by decoding its headers into a JSON",
        f"object and checking it against that schema. `schemas/sparq.dead_letter.v{DeadLetter.VERSION}.json` describes the",
        "*typed view* built from such a record (`sparq tail dlq`, `sparq_stream.bus.dlq.dead_letter_from_record`):",
        "`original_key` and `original` hold the key and value bytes (base64 in JSON), the other fields",
        "the headers. No `sparq.dead_letter` msgpack value is ever written to a topic.",
        "",
        "## Versioning",
        "",
        "`version` is a major version: it changes only when a reader of the old version could",
        "misread a new message. For each (schema, version) a frozen copy lives in",
        "[`schemas/released/`](../schemas/released/), locked by its sha256 in",
        "[`schemas/released/SHA256SUMS`](../schemas/released/SHA256SUMS): a released file never",
        "changes (a test fails when one differs from its hash, or is not in the lock), and a test",
        "compares every current schema with its frozen copy and fails on an incompatible change",
        "made without a version bump.",
        "",
        "Compatible, same `version`:",
        "",
        "- a new optional field with a `default` (old readers ignore it; new readers apply the default",
        "  to old messages);",
        "- changes to `title`, `description`, `examples` or `$comment`.",
        "",
        "Incompatible, needs `version` + 1 (a new schema file, a new frozen copy via",
        "`sparq schemas --release`, and readers that accept both while both are on the wire):",
        "",
        "- removing or renaming a field, changing its type, bounds, format or default;",
        "- making an optional field required, or a required one optional;",
        "- any change to an `enum`, adding a value included (a strict old reader would reject it);",
        "- a change of meaning or unit with the same type (for example seconds to milliseconds);",
        "- a change of key, topic or envelope.",
        "",
        "Readers must ignore fields they do not know (a tolerant reader). That is why the schemas",
        "say `\"additionalProperties\": true`: `false` would make every added optional field a",
        "breaking change for strict validators, and force a version bump (and a coordinated upgrade",
        "of every reader) for what is a compatible change. The known fields stay strictly checked",
        "(type, required, enum, bounds). Readers must reject a `version` they do not know (the",
        "Python services dead-letter such a message): a new version is a new contract. Within a",
        "version, a field never changes meaning or unit.",
        "",
        "### Version 2 (compatibility note)",
        "",
        "Every type went from version 1 to version 2 together. The fields, their names, types and",
        "msgpack encoding are those of version 1, except as listed; what changed is that values are",
        "checked:",
        "",
        "- bounds on counts, steps, versions, offsets, rates, similarities and times; finite numbers;",
        "  the id pattern on ids, parent ids, nearest ids and credit ids; an enum on",
        "  `sparq.mutator_state.variant`; the rules across fields listed under each type;",
        "- `sparq.dropped.reason` has the values `contamination_ngram` and `prompt_example`: they were",
        "  added to the released v1 file in place (a breach of this policy, kept as published: a v1",
        "  reader built before that change dead-letters such records);",
        "- `sparq.dead_letter` (the typed view) renders bytes as standard padded base64 in JSON; an",
        "  earlier v1 build rendered base64url, which its schema did not say;",
        "- `sparq.dead_letter` gained `instance`, the headers gained the documented optional",
        "  `sparq.dlq.instance`, `sparq.dlq.truncated` (value `true`) and `sparq.dlq.headers_dropped`",
        "  (all three were written by v1 builds without being documented);",
        "- `sparq.elite` gained `solved_partition` and `solved_offset` (lineage, default -1).",
        "",
        f"This build writes version 2 and reads versions {', '.join(str(v) for v in READ_VERSIONS)}: a version-1 record (from an",
        "older producer) is read under the version-2 rules, so one that breaks them is dead-lettered",
        "as `InvalidValue`.",
        "",
        "## Who may write",
        "",
        "On a secured Apache Kafka cluster (SASL/SCRAM-SHA-512 with ACLs; see",
        "[`docs/security.md`](security.md)) each service is its own principal and may write only its",
        "own output topics (the *writers* column above), the dead-letter and metrics topics; the",
        "principal `reader` may read every topic and write none: it is the one for extra consumers.",
        "The embedded Tansu broker has no authentication: it is for one machine, on loopback.",
        "",
        "## Delivery, offsets and lag",
        "",
        "- `processing_guarantee=at_least_once` (default): outputs are acknowledged by the broker",
        "  before the input offsets are committed; a crash can redeliver, so a record may appear",
        "  twice. Consumers must be idempotent by key (the same problem id means the same problem).",
        "- `processing_guarantee=exactly_once` (Apache Kafka only; Tansu accepts transactions but does",
        "  not honour them): outputs and input offsets go in one transaction. Read with",
        "  `isolation.level=read_committed` to see only committed records.",
        "",
        "**Lag under exactly-once.** Every transaction ends with a commit marker, a control record",
        "that takes one offset in each partition it wrote to but is never delivered to consumers. The",
        "offset a service commits in its transaction is that of the record after its last input,",
        "which is where the upstream commit marker sits. So an outside monitor that computes",
        "`end offset - committed offset` sees **1 per partition** when a service is fully caught up",
        "(more, transiently, while a transaction is open), never 0. That is not unprocessed data.",
        "The right measures:",
        "",
        "- the services' own lag, per group and partition on `/metrics` (`sparq_consumer_lag{group,topic,partition}`,",
        "  tables: `sparq_table_lag`) and summed in the `lag` gauge (on `<prefix>.metrics`,",
        "  `sparq.metric.gauges.lag`; Prometheus `sparq_lag`): `end - position` per assigned partition,",
        "  where the consumer position has already stepped over control markers and `end` is the last",
        "  stable offset under exactly-once (asked of the broker with read_committed once per metrics",
        "  interval: an open upstream transaction's records are not readable yet, so they are not lag)",
        "  and the high watermark of the last fetch under at-least-once. It reads 0 when caught up",
        "  under both guarantees; `lag_unknown` counts partitions whose lag is not known yet (no fetch",
        "  answered). `sparq up` stops only when every stage reports `lag` 0 and `lag_unknown` 0;",
        "- from outside: a `read_committed` consumer that seeks each partition to the group's committed",
        "  offset and polls until its position reaches the end offset; lag = records it received. Or",
        "  accept `end - committed <= 1` as caught up for a partition written only transactionally.",
        "",
    ]
    return "\n".join(out)


def write_wire_doc(path: str | Path = DEFAULT_PATH) -> Path:
    """Write docs/wire.md; return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_wire_doc(), encoding="utf-8")
    return path


def stale_wire_doc(path: str | Path = DEFAULT_PATH) -> bool:
    """True when the file at ``path`` is missing or differs from what the classes render."""
    path = Path(path)
    return not path.is_file() or path.read_text(encoding="utf-8") != render_wire_doc()
