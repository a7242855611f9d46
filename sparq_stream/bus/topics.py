"""Topic names (with a configurable prefix), topic bootstrap (create, describe) and the ACLs of a secured cluster.

:data:`TOPIC_SPECS` is the one table of topic roles: each row's configs, and which services
write and read the topic. ``sparq topics create`` creates the topics from it and, with
``--acls``, grants each service's principal exactly what its row says (:func:`acl_grants`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewTopic
from kafka.errors import (
    ClusterAuthorizationFailedError,
    KafkaError,
    KafkaTimeoutError,
    TopicAlreadyExistsError,
    TopicAuthorizationFailedError,
)

from sparq_stream.errors import BrokerUnavailable, ConfigError
from sparq_stream.settings import KafkaSettings

__all__ = [
    "ALL_SERVICES",
    "COMPACTED",
    "Grant",
    "LOGICAL_TOPICS",
    "READER_GROUP_INFIX",
    "SINGLE_PARTITION",
    "TOPIC_SPECS",
    "TopicNames",
    "TopicReport",
    "TopicSpec",
    "acl_grants",
    "admin_client",
    "apply_acls",
    "changelog",
    "create_topics",
    "describe_topics",
    "ensure_topics",
    "format_grants",
    "format_report",
    "readers_of",
    "spec_of",
    "topic_configs",
    "writers_of",
]

log = logging.getLogger(__name__)

_DAY_MS = 86_400_000
#: segment.ms of state topics (compaction only cleans closed segments; the broker's default is 7 days).
DEFAULT_SEGMENT_MS = 3_600_000


@dataclass(frozen=True)
class TopicSpec:
    """How one logical topic is created: cleanup policy, retention, partitions, and whether tombstones mean delete.

    ``retention_ms=-1`` keeps records forever; ``short_segments`` rolls segments every
    ``segment_ms`` so compaction actually runs; ``deletes`` says whether a tombstone is a
    legitimate delete on this topic (elsewhere a table reader dead-letters it). ``spread``:
    the wrapper places records round-robin over the partitions instead of by key hash (the
    key stays the problem id), so every consumer of a group gets an equal share of any run
    of records, e.g. of one synchronous step (:meth:`ServiceProcess._placed`).
    ``writers`` and ``readers``: the services (:data:`ALL_SERVICES`, or ``"*"`` for every one)
    that write and read the topic; on a secured cluster each gets exactly that (:func:`acl_grants`).
    The operator's tools (``sparq seed``, ``sparq up``'s monitor) use the admin principal.
    """

    name: str
    cleanup: str = "delete"
    retention_ms: int | None = 7 * _DAY_MS
    single_partition: bool = False
    short_segments: bool = False
    deletes: bool = False
    spread: bool = False
    writers: tuple[str, ...] = ()
    readers: tuple[str, ...] = ()

    @property
    def compacted(self) -> bool:
        """True when the topic keeps the last value per key."""
        return "compact" in self.cleanup


def changelog(
    name: str, *, single_partition: bool = False, writers: tuple[str, ...] = (), readers: tuple[str, ...] = ()
) -> TopicSpec:
    """A service's state changelog: compacted by key, kept forever, short segments, tombstones delete."""
    return TopicSpec(name, "compact", -1, single_partition=single_partition, short_segments=True, deletes=True,
                     writers=writers, readers=readers)  # fmt: skip


#: The loop's services; each logs in as its own principal of the same name on a secured cluster.
ALL_SERVICES: tuple[str, ...] = ("mutator", "novelty", "solver", "archivist", "trainer")

#: Every logical topic of the loop, in pipeline order, with its role's configs and its writers and readers
#: (inputs and tables of each service's core). Add a row to add a topic (e.g. ``changelog("mutator-changelog")``);
#: names must not contain dots.
TOPIC_SPECS: tuple[TopicSpec, ...] = (
    # read whole on every start: never expires; keys are problem ids; written by `sparq seed` / `sparq up` (admin)
    TopicSpec("seeds", "compact", -1, readers=("mutator", "novelty", "archivist")),
    # novelty replicas with route_partitions move a candidate to its embedding bucket's partition
    TopicSpec("candidates", writers=("mutator", "novelty"), readers=("novelty",)),
    # read whole on start by novelty followers; spread evenly over the solver replicas (not by key hash)
    TopicSpec("novel", "compact", -1, spread=True, writers=("novelty",), readers=("solver", "novelty")),
    TopicSpec("drops", writers=("novelty",), readers=("mutator",)),
    TopicSpec("solved", writers=("solver",), readers=("archivist", "mutator")),
    # W: last value per slot; tombstones evict
    changelog("elites", writers=("archivist",), readers=("mutator", "archivist", "trainer")),
    # the run's record; readers dedupe by key
    TopicSpec("archive", "compact", -1, writers=("archivist",), readers=("trainer", "archivist")),
    changelog("models", single_partition=True, writers=("trainer",), readers=("mutator", "solver", "trainer")),
    TopicSpec("metrics", retention_ms=_DAY_MS, writers=("*",)),  # read by `sparq up` (admin) and the reader
    TopicSpec("dlq", retention_ms=30 * _DAY_MS, writers=("*",)),
    # the mutator's step, credits and open step
    changelog("mutator-state", single_partition=True, writers=("mutator",), readers=("mutator",)),
)
_SPECS: dict[str, TopicSpec] = {spec.name: spec for spec in TOPIC_SPECS}

#: Every logical topic name, in pipeline order.
LOGICAL_TOPICS: tuple[str, ...] = tuple(spec.name for spec in TOPIC_SPECS)
#: Topics whose state is the last value per key.
COMPACTED: frozenset[str] = frozenset(spec.name for spec in TOPIC_SPECS if spec.compacted)
#: Topics where a total order matters more than parallelism.
SINGLE_PARTITION: frozenset[str] = frozenset(spec.name for spec in TOPIC_SPECS if spec.single_partition)


def _services(names: tuple[str, ...]) -> tuple[str, ...]:
    return ALL_SERVICES if "*" in names else names


def writers_of(logical: str) -> tuple[str, ...]:
    """The services that write a logical topic (``"*"`` expanded)."""
    return _services(spec_of(logical).writers)


def readers_of(logical: str) -> tuple[str, ...]:
    """The services that read a logical topic (inputs and tables)."""
    return _services(spec_of(logical).readers)


def spec_of(logical: str) -> TopicSpec:
    """Return the spec of a logical topic; unknown names raise ConfigError."""
    try:
        return _SPECS[logical]
    except KeyError:
        raise ConfigError(f"unknown topic {logical!r}; allowed: {', '.join(LOGICAL_TOPICS)}") from None


def topic_configs(spec: TopicSpec, replication_factor: int = 1, segment_ms: int = DEFAULT_SEGMENT_MS) -> dict[str, str]:
    """The topic-level configs ``sparq topics create`` sets for a spec."""
    configs = {"cleanup.policy": spec.cleanup}
    if spec.retention_ms is not None:
        configs["retention.ms"] = str(spec.retention_ms)
    if spec.short_segments:
        configs["segment.ms"] = str(segment_ms)
        configs["min.cleanable.dirty.ratio"] = "0.1"
    if replication_factor >= 3:
        configs["min.insync.replicas"] = "2"
    return configs


@dataclass(frozen=True)
class TopicNames:
    """Maps logical topic names to Kafka topic names under a prefix."""

    prefix: str = "sparq"

    def __getattr__(self, logical: str) -> str:
        if logical.startswith("_") or logical not in _SPECS:
            raise AttributeError(logical)
        return self.topic(logical)

    def topic(self, logical: str) -> str:
        """Return the Kafka topic for a logical name; unknown names raise ConfigError."""
        return f"{self.prefix}.{spec_of(logical).name}"

    def logical(self, topic: str) -> str | None:
        """Return the logical name of a Kafka topic under this prefix, or None."""
        head, _, tail = topic.rpartition(".")
        return tail if head == self.prefix and tail in _SPECS else None

    def resolve(self, name: str) -> str:
        """Accept a logical name or a full topic name; return the full Kafka topic name."""
        return self.topic(name) if name in _SPECS else name

    def all(self) -> list[str]:
        """Return every Kafka topic of the loop."""
        return [self.topic(name) for name in LOGICAL_TOPICS]


def admin_client(settings: KafkaSettings, timeout_s: float = 10.0) -> KafkaAdminClient:
    """Connect an admin client with the settings' login, turning 'no broker' into a clear BrokerUnavailable."""
    from sparq_stream.security import login_hint

    options = settings.client_options()
    try:
        return KafkaAdminClient(**options, request_timeout_ms=int(timeout_s * 1000))
    except KafkaTimeoutError:
        raise BrokerUnavailable(f"no Kafka broker answered at {settings.bootstrap}{login_hint(options)}") from None


@dataclass
class TopicReport:
    """What ``ensure_topics`` did: topics created, configs altered, and configs that still differ."""

    created: list[str] = field(default_factory=list)
    altered: dict[str, dict[str, tuple[str | None, str]]] = field(default_factory=dict)
    differ: dict[str, dict[str, tuple[str | None, str]]] = field(default_factory=dict)
    unchecked: list[str] = field(default_factory=list)


def create_topics(
    settings: KafkaSettings,
    partitions: int = 3,
    replication_factor: int = 1,
    logical: tuple[str, ...] = LOGICAL_TOPICS,
    timeout_s: float = 30.0,
) -> list[str]:
    """Create the loop's topics with their role's configs (and mend existing ones); return those created."""
    return ensure_topics(settings, partitions, replication_factor, logical, timeout_s).created


def ensure_topics(
    settings: KafkaSettings,
    partitions: int = 3,
    replication_factor: int = 1,
    logical: tuple[str, ...] = LOGICAL_TOPICS,
    timeout_s: float = 30.0,
    *,
    alter: bool = True,
) -> TopicReport:
    """Create missing topics with their role's configs; alter (or, with ``alter=False``, report) differing ones."""
    names = TopicNames(settings.prefix)
    segment_ms = int(getattr(settings, "changelog_segment_ms", DEFAULT_SEGMENT_MS))
    wanted_configs = {names.topic(n): topic_configs(spec_of(n), replication_factor, segment_ms) for n in logical}
    report = TopicReport()
    admin = admin_client(settings)
    try:
        existing = set(admin.list_topics())
        for name in logical:
            topic = names.topic(name)
            if topic in existing:
                continue
            count = 1 if spec_of(name).single_partition else partitions
            new = NewTopic(topic, num_partitions=count, replication_factor=replication_factor, topic_configs=wanted_configs[topic])
            try:
                admin.create_topics([new], timeout_ms=int(timeout_s * 1000))
                report.created.append(topic)
            except TopicAlreadyExistsError:
                existing.add(topic)
            except (TopicAuthorizationFailedError, ClusterAuthorizationFailedError):
                raise ConfigError(f"not allowed to create topic {topic} at {settings.bootstrap}: the topics are created "
                                  "with the admin login (--kafka-client-config DIR/clients/admin.properties)") from None
        _wait_for_topics(admin, [names.topic(n) for n in logical], timeout_s)
        old = [t for t in wanted_configs if t in existing]
        if old:
            _mend_configs(admin, {t: wanted_configs[t] for t in old}, report, alter)
        return report
    finally:
        admin.close()


def _current_configs(admin: KafkaAdminClient, wanted: dict[str, dict[str, str]]) -> dict[str, dict[str, Any]]:
    resources = [ConfigResource(ConfigResourceType.TOPIC, t, {k: None for k in cfg}) for t, cfg in wanted.items()]
    answer = admin.describe_configs(resources, config_filter="all")
    return answer.get("topic", {}) if isinstance(answer, dict) else {}


def _mend_configs(admin: KafkaAdminClient, wanted: dict[str, dict[str, str]], report: TopicReport, alter: bool) -> None:
    """Compare existing topics' configs with their role's; alter those that differ (where the broker keeps configs)."""
    try:
        current = _current_configs(admin, wanted)
    except KafkaError as exc:  # some brokers (Tansu) keep no topic configs
        log.info("cannot read topic configs (%s): not checked", exc)
        report.unchecked.extend(wanted)
        return
    for topic, cfg in wanted.items():
        have = {k: _config_value(v) for k, v in (current.get(topic) or {}).items()}
        if not have:
            report.unchecked.append(topic)
            continue
        diff = {k: (None if have.get(k) is None else str(have.get(k)), v) for k, v in cfg.items() if str(have.get(k)) != v}
        if diff:
            report.differ[topic] = diff
    if not alter or not report.differ:
        return
    for topic, diff in list(report.differ.items()):
        try:
            answer = admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {k: v for k, (_, v) in diff.items()})])
            errors = [r for r in _flatten(answer) if isinstance(r, BaseException)]
            if errors:
                raise errors[0]
        except (KafkaError, ValueError) as exc:
            log.warning("altering %s failed: %s", topic, exc)
            continue
        report.altered[topic] = report.differ.pop(topic)


def format_report(report: TopicReport) -> str:
    """Lines for ``sparq topics create``: created, altered (with old -> new) and still-differing configs."""
    lines = [f"created {t}" for t in report.created]
    for verb, table in (("altered", report.altered), ("differs", report.differ)):
        for topic, diff in table.items():
            shown = ", ".join(f"{k}: {old} -> {new}" for k, (old, new) in sorted(diff.items()))
            lines.append(f"{verb} {topic}: {shown}")
    if not report.created and not report.altered and not report.differ:
        lines.append("all topics already exist")
    return "\n".join(lines)


def _flatten(answer: Any) -> list[Any]:
    if isinstance(answer, dict):
        return [x for v in answer.values() for x in _flatten(v)]
    if isinstance(answer, (list, tuple)):
        return [x for v in answer for x in _flatten(v)]
    return [answer]


def _wait_for_topics(admin: KafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            meta = admin.describe_topics(topics)
            if all(t.get("error_code", 0) == 0 and t.get("partitions") for t in meta):
                return
        except KafkaError:
            pass
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"topics {topics} did not appear within {timeout_s}s")
        time.sleep(0.2)


def describe_topics(settings: KafkaSettings, topics: list[str] | None = None) -> list[dict[str, Any]]:
    """Describe topics: partitions, leaders and (where the broker keeps them) configs."""
    names = TopicNames(settings.prefix)
    admin = admin_client(settings)
    try:
        present = set(admin.list_topics())
        topics = [names.resolve(t) for t in topics] if topics else [t for t in names.all() if t in present]
        missing = [t for t in topics if t not in present]
        if missing:
            raise ConfigError(f"unknown topic(s): {', '.join(missing)}")
        meta = admin.describe_topics(topics)
        configs: dict[str, Any] = {}
        try:
            answer = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, t) for t in topics])
            configs = answer.get("topic", {}) if isinstance(answer, dict) else {}
        except KafkaError as exc:  # some brokers (Tansu) answer partially
            log.debug("describe_configs failed: %s", exc)
        out = []
        for t in meta:
            name = t.get("name") or t.get("topic")
            parts = t.get("partitions", [])
            raw = configs.get(name) or {}
            out.append(
                {
                    "topic": name,
                    "partitions": len(parts),
                    "replication_factor": len(parts[0].get("replica_nodes", [])) if parts else 0,
                    "configs": {k: _config_value(v) for k, v in raw.items()},
                }
            )
        return out
    finally:
        admin.close()


def _config_value(value: Any) -> Any:
    """Config entries come back as plain values or as dicts holding a 'value'."""
    return value.get("value") if isinstance(value, dict) else value


# ---------------------------------------------------------------------- ACLs (secured clusters)
#: Consumer groups ``<prefix>.<READER_GROUP_INFIX><name>`` are the reader principal's (extra consumers).
READER_GROUP_INFIX = "reader."


@dataclass(frozen=True, order=True)
class Grant:
    """One ALLOW ACL: ``principal`` may ``operation`` the ``resource`` (topic, group, transactional_id) ``name``.

    ``pattern`` is ``literal`` (exactly that name) or ``prefixed`` (every name starting with it).
    """

    principal: str
    resource: str
    name: str
    pattern: str
    operation: str

    def __str__(self) -> str:
        star = "*" if self.pattern == "prefixed" else ""
        return f"User:{self.principal} {self.operation} {self.resource} {self.name}{star}"


def acl_grants(prefix: str, *, logical: tuple[str, ...] = LOGICAL_TOPICS, reader: str = "reader") -> list[Grant]:
    """Every ACL of a run under ``prefix``, from :data:`TOPIC_SPECS`'s writers and readers.

    Each service's principal (named as the service) gets WRITE on the topics it writes, READ on
    those it reads (both imply DESCRIBE), READ on its consumer groups (``<prefix>.<service>``
    and ``<prefix>.<service>.*``, which a mutator replica uses) and WRITE on its transactional ids
    (``<prefix>.<service>.*``: ``<group>.<instance>``, ``<group>.active``). ``reader`` gets READ
    on every topic under ``<prefix>.`` and on the groups ``<prefix>.reader.*``, and nothing else.
    """
    names = TopicNames(prefix)
    grants: set[Grant] = set()
    for topic in logical:
        for service in writers_of(topic):
            grants.add(Grant(service, "topic", names.topic(topic), "literal", "WRITE"))
        for service in readers_of(topic):
            grants.add(Grant(service, "topic", names.topic(topic), "literal", "READ"))
    for service in ALL_SERVICES:
        grants.add(Grant(service, "group", f"{prefix}.{service}", "literal", "READ"))
        grants.add(Grant(service, "group", f"{prefix}.{service}.", "prefixed", "READ"))
        grants.add(Grant(service, "transactional_id", f"{prefix}.{service}.", "prefixed", "WRITE"))
    grants.add(Grant(reader, "topic", f"{prefix}.", "prefixed", "READ"))
    grants.add(Grant(reader, "group", f"{prefix}.{READER_GROUP_INFIX}", "prefixed", "READ"))
    return sorted(grants)


def format_grants(grants: list[Grant]) -> str:
    """One line per ACL, for ``sparq topics create --acls``."""
    return "\n".join(f"acl {g}" for g in grants)


def apply_acls(settings: KafkaSettings, grants: list[Grant]) -> list[Grant]:
    """Create the ACLs (an existing one is kept as is); return them. Needs an admin login (super user or ALTER on the cluster).

    A broker without an authorizer raises ConfigError; a refused or failed creation raises
    ConfigError naming the first ACL that failed and why.
    """
    from kafka.admin import ACL, ACLPermissionType, ACLResourcePatternType, ResourcePattern, ResourceType
    from kafka.admin import ACLOperation
    from kafka.errors import SecurityDisabledError

    resources = {"topic": ResourceType.TOPIC, "group": ResourceType.GROUP, "transactional_id": ResourceType.TRANSACTIONAL_ID}
    patterns = {"literal": ACLResourcePatternType.LITERAL, "prefixed": ACLResourcePatternType.PREFIXED}
    acls = [
        ACL(f"User:{g.principal}", "*", ACLOperation[g.operation], ACLPermissionType.ALLOW,
            ResourcePattern(resources[g.resource], g.name, patterns[g.pattern]))
        for g in grants
    ]  # fmt: skip
    admin = admin_client(settings)
    try:
        try:
            answer = admin.create_acls(acls)
        except SecurityDisabledError:
            raise ConfigError(f"the broker at {settings.bootstrap} has no authorizer: ACLs need a secured cluster "
                              "(deploy/kafka/run-kafka.sh start --auth scram)") from None  # fmt: skip
    finally:
        admin.close()
    failed = answer.get("failed") or []
    if failed:
        first = failed[0]
        raise ConfigError(f"{len(failed)} of {len(acls)} ACL(s) not created: {type(first).__name__}: {first} "
                          "(log in as the admin principal: --kafka-client-config DIR/clients/admin.properties)")  # fmt: skip
    log.info("%d ACL(s) in place for %s", len(grants), settings.bootstrap)
    return grants
