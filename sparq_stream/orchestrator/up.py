"""``sparq up``: the whole loop on one machine, each service its own process, one live view."""

from __future__ import annotations

import enum
import json
import logging
import os
import signal
import threading
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sparq_stream.cores.mutator.core import MutatorConfig
from sparq_stream.cores.novelty import NoveltyConfig
from sparq_stream.cores.solver import SolverConfig
from sparq_stream.cores.trainer import TrainerConfig
from sparq_stream.credentials import OpenAIKey, openai_key_option, refuse_secret_options
from sparq_stream.errors import ConfigError
from sparq_stream.settings import (
    LABEL_SEEDS, Backend, BaseSparqSettings, Embedder, ServiceSettings, Variant, load_settings, shared_field,
)

__all__ = [
    "UpConfig", "UpSettings", "UpResult", "RunEnd", "run_up", "run_state_dir", "run_settings", "service_env", "service_values",
    "load_seed_set",
]

log = logging.getLogger(__name__)

class UpConfig(OpenAIKey):
    """Everything ``sparq up`` needs: its own settings, and the services' shared ones taken from their settings classes.

    A field that is also a service's (``variant``, ``k``, ``heldout``, ...) is that service's field, declared
    once in its settings class (same default, limits and meaning); each service gets its whole settings
    object from :func:`run_settings`. Per-service details go through ``extra`` flags (``--with``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: Path = Field(description="seed JSONL (GSM8K or MATH style)")
    out: Path = Field(default=Path("runs/latest"), description="output folder: export, archive, summary.json, plots, logs, state")
    steps: int | None = shared_field(MutatorConfig, "steps", description="mutation steps (rounds of b parents)")
    max_candidates: int | None = shared_field(MutatorConfig, "max_candidates", description="stop after this many candidates")
    variant: Variant = shared_field(MutatorConfig, "variant")
    backend: Backend = shared_field(MutatorConfig, "backend", description="generation backend of every model service")
    model: str | None = shared_field(MutatorConfig, "model", description="model path or served name (default: the packaged SmolLM2)")
    backend_options: dict[str, Any] = shared_field(MutatorConfig, "backend_options", description="generation backend options (JSON; no secrets)")
    embedder: Embedder = shared_field(NoveltyConfig, "embedder", description="novelty's embedder (also of the seeds' held-out check)")
    bootstrap: str | None = Field(default=None, description="Kafka to use; default: start the embedded Tansu broker")
    kafka_auth_dir: Path | None = Field(
        default=None,
        description="secured Kafka (with --bootstrap): folder of client properties files, one per principal "
        "(run-kafka.sh --auth scram writes DIR/clients); each service logs in as its own, sparq up as admin and "
        "creates the run's ACLs (docs/security.md)",
    )
    prefix: str | None = Field(default=None, description="topic prefix; default: a new one per run")
    partitions: int = shared_field(ServiceSettings, "partitions")
    solvers: int = Field(default=1, ge=1, description="solver replicas (processes)")
    replicas: dict[str, int] = Field(
        default_factory=dict, description="processes per service (solver: overrides solvers); see orchestrator.replicas"
    )
    batch_size: int = shared_field(MutatorConfig, "batch_size")
    k: int = shared_field(SolverConfig, "k")
    max_tokens: int | None = Field(default=None, ge=16, description="token limit of mutations and rollouts (unset: each service's own)")
    cap: int | None = shared_field(MutatorConfig, "cap")
    seed: int = shared_field(MutatorConfig, "seed", description="random seed of the mutator (and the hash embedder)")
    seed_limit: int | None = Field(default=None, ge=1, description="publish only the first N seeds")
    label_seeds: bool = Field(default=LABEL_SEEDS, description="classify the seeds' skills before publishing (diverse selection needs them)")
    vocabulary: Path | None = shared_field(NoveltyConfig, "vocabulary")
    heldout: list[Path] = shared_field(NoveltyConfig, "heldout")
    contamination_check: bool = shared_field(NoveltyConfig, "contamination_check")
    eval_base: bool = Field(
        default=False,
        description="score the base model (version 0) on the held-out sets at the start also without --train-every "
        "(with it, always; --with 'trainer --no-eval-base' skips it)",
    )
    threads: int | None = Field(default=1, ge=1, description="torch threads per model service (5 processes share the cores)")
    timeout_s: float | None = Field(default=None, gt=0, description="stop the run after this long, whatever is left")
    train_every: int = shared_field(TrainerConfig, "train_every")
    metrics_interval_s: float = Field(default=1.0, gt=0, description="how often each service publishes its metrics (a live view's pace)")
    max_restarts: int = Field(default=5, ge=0, description="restarts allowed per service within --restart-window-s")
    restart_window_s: float = Field(default=300.0, gt=0, description="the sliding window of --max-restarts, seconds")
    stop_grace_s: float = Field(default=30.0, gt=0, description="how long services get to finish and commit on stop")
    broker_timeout_s: float = Field(default=30.0, gt=0, description="the embedded broker unreachable this long: the run stops")
    journal: bool = Field(default=True, description="embedded broker: journal every topic to out/journal so a rerun resumes")
    extra: dict[str, list[str]] = Field(default_factory=dict, description="extra flags per service (--with 'SERVICE --flag value')")

    @field_validator("backend_options", mode="after")
    @classmethod
    def _no_secret_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        """Options go into the services' settings files and run.json: no secret may ride along."""
        refuse_secret_options("backend_options", value)
        return value

    @field_validator("replicas")
    @classmethod
    def _known_replicas(cls, value: dict[str, int]) -> dict[str, int]:
        from sparq_stream.orchestrator.replicas import check_replicas

        for service, count in value.items():
            check_replicas(service, count)
        return value

    @model_validator(mode="after")
    def _mutator_replicas(self) -> "UpConfig":
        if self.replicas.get("mutator", 1) > 1 and self.max_candidates is not None:
            raise ValueError("replicas mutator > 1: give steps, not max_candidates (a candidate budget cannot be split exactly)")
        return self

    def replica_count(self, service: str) -> int:
        """How many processes of ``service`` the run starts."""
        return self.replicas.get(service, self.solvers if service == "solver" else 1)


class UpSettings(BaseSparqSettings, UpConfig):
    """``sparq up``'s settings as flags and ``SPARQ_*`` environment (``--timeout`` sets timeout_s)."""

    model_config = {**BaseSparqSettings.model_config, "cli_shortcuts": {"bootstrap": "b", "timeout-s": "timeout"}}


class RunEnd(enum.IntEnum):
    """How a run ended: the exit code of ``sparq up``."""

    BUDGET = 0  # the budget was reached (or the loop ran dry): everything finished
    ERROR = 1  # an unexpected error
    CONFIG = 2  # a bad option, seed file or --out (also: --out in use by another run)
    SERVICE_FAILED = 3  # an essential service kept failing past its restart limit
    BROKER_LOST = 4  # the embedded broker exited or stopped answering
    TIMEOUT = 5  # --timeout passed before the budget was reached
    INTERRUPTED = 130  # Ctrl-C or SIGTERM: an orderly stop


class UpResult(BaseModel):
    """What a run produced and how it ended."""

    out: Path
    prefix: str
    bootstrap: str
    reason: str
    summary: dict[str, Any]
    restarts: dict[str, int] = {}
    exit_code: int = 0
    resumed: bool = False
    detail: str = ""


def _http_ports(names: list[str]) -> dict[str, int]:
    """A free local port per service for its /metrics, /healthz, /readyz (kept across its restarts)."""
    import socket

    socks = [socket.socket() for _ in names]
    try:
        for sock in socks:  # all bound at once: distinct ports
            sock.bind(("127.0.0.1", 0))
        return {name: int(sock.getsockname()[1]) for name, sock in zip(names, socks)}
    finally:
        for sock in socks:
            sock.close()


def _backend_options(config: UpConfig) -> dict[str, Any]:
    options = dict(config.backend_options)
    if config.model and config.backend != "scripted":
        options.setdefault("model", config.model)
    if config.threads and config.backend == "transformers":
        options.setdefault("num_threads", config.threads)
    return options


def _generation(config: UpConfig) -> dict[str, Any]:
    """The generation settings of every model service (the API key itself travels in the environment)."""
    key_file = config.openai_api_key_file.resolve() if config.openai_api_key_file else None
    return {"backend": config.backend, "backend_options": _backend_options(config), "openai_api_key_file": key_file}


def service_env(config: UpConfig) -> dict[str, str]:
    """Environment of the services: the API key, when it was given as a value, goes here and never in a file or on argv."""
    if config.openai_api_key is None:
        return {}
    return {"SPARQ_OPENAI_API_KEY": config.openai_api_key.get_secret_value()}


def run_state_dir(out: Path, prefix: str) -> Path:
    """The run's local caches (mutator state, novelty index): bound to its topic prefix, never restored into another run."""
    return out.resolve() / "state" / prefix


def service_values(config: UpConfig, prefix: str, bootstrap: str) -> dict[str, dict[str, Any]]:
    """The settings ``sparq up`` gives each service (replica 0's; before ``--with``), as field values."""
    out = config.out.resolve()
    state = run_state_dir(out, prefix)
    common = {
        "bootstrap": bootstrap, "prefix": prefix, "partitions": config.partitions,
        "metrics_interval_s": config.metrics_interval_s, "log_level": "INFO",
    }
    tokens = {"max_tokens": config.max_tokens} if config.max_tokens else {}
    generation = _generation(config)
    values: dict[str, dict[str, Any]] = {
        "archivist": {"variant": config.variant, "cap": config.cap, "archive_dir": str(out / "archive")},
        "trainer": {"export_dir": out / "export", "models_dir": out / "models", "export_every": 1},
        "solver": {
            **generation, "k": config.k, **tokens, "max_batch": config.batch_size,
            # a poll's batch is one backend call: keep it to b candidates and give slow CPU models time
            "max_poll_records": config.batch_size, "max_poll_interval_ms": 3_600_000,
        },
        "novelty": {
            "embedder": config.embedder, "embedder_options": {"seed": config.seed} if config.embedder == "hash" else {},
            **generation, "state_dir": str(state / "novelty"), "max_poll_records": 64, "max_poll_interval_ms": 3_600_000,
            "vocabulary": config.vocabulary.resolve() if config.vocabulary else None,
            "heldout": [p.resolve() for p in config.heldout], "contamination_check": config.contamination_check,
        },
        "mutator": {
            "variant": config.variant, "cap": config.cap, "batch_size": config.batch_size, "seed": config.seed,
            **generation, **tokens, "steps": config.steps, "max_candidates": config.max_candidates,
            "state_dir": str(state / "mutator"),
        },
    }
    if config.train_every > 0:
        _add_training(values, config, out)
    elif config.eval_base:  # no training: only version 0 (the base model) is scored
        from sparq_stream.training.loop import MODEL_NAME, eval_values

        values["trainer"].update(model_name=MODEL_NAME, **eval_values(config, _backend_options(config)))
    if config.kafka_auth_dir is not None:  # each service logs in as its own principal: a file path, never a password
        from sparq_stream.security import principal_file

        for name in values:
            values[name]["kafka_client_config"] = principal_file(config.kafka_auth_dir, name).resolve()
    unknown = sorted(set(config.extra) - set(values))
    if unknown:
        raise ConfigError(f"extra flags for unknown service {unknown[0]!r}; allowed: {', '.join(sorted(values))}")
    return {name: {**common, **own} for name, own in values.items()}


def _add_training(values: dict[str, dict[str, Any]], config: UpConfig, out: Path) -> None:
    """Training in the loop: the trainer fine-tunes every N examples; mutator and solver follow its versions."""
    from sparq_stream.training.loop import follower_values, trainer_values

    values["trainer"].update(trainer_values(config.train_every, out / "models", config, _backend_options(config)))
    for name in ("mutator", "solver"):
        values[name].update(follower_values(out / "models", name))


def _settings(service: str, values: dict[str, Any], flags: list[str] | None = None) -> ServiceSettings:
    """One service's frozen settings object from ``values``; ``flags`` (``--with``) win over them."""
    from sparq_stream.services import service_spec
    from sparq_stream.settings import cli_values

    cls = service_spec(service).settings_cls
    given = {**values, **cli_values(cls, flags, prog=f"sparq up --with '{service} ...'")} if flags else values
    return load_settings(cls, ignore_unknown_file_keys=True, where=f"{service} setting", **given)


def run_settings(config: UpConfig, prefix: str, bootstrap: str, *, extra: bool = True) -> dict[str, ServiceSettings]:
    """Each service's frozen settings object for a run (replica 0's), with its ``--with`` flags unless ``extra`` is off."""
    return {
        name: _settings(name, values, config.extra.get(name) if extra else None)
        for name, values in service_values(config, prefix, bootstrap).items()
    }


def _child_settings(config: UpConfig, base: dict[str, dict[str, Any]], service: str, index: int, name: str, http_port: int, prefix: str) -> ServiceSettings:
    """The settings object of one process of a run: its service's, its replica's folders, its name and HTTP port."""
    from sparq_stream.orchestrator.replicas import replica_values

    own = replica_values(service, index, name, config.out, run_state_dir(config.out, prefix), config.replica_count(service), config.partitions)
    return _settings(service, {**base[service], **own, "instance": name, "http_host": "127.0.0.1", "http_port": http_port})


def load_seed_set(config: UpConfig, refused: list[Any] | None = None, cache_dir: Path | None = None) -> tuple[list[Any], int]:
    """The run's seeds (first ``seed_limit``, less held-out problems), labelled unless disabled; and the bad lines.

    Seeds that are held-out test problems (``sparq seed``'s rule: 13-gram or embedding, novelty's
    embedder) are refused and appended to ``refused`` as (seed, match) pairs. ``cache_dir`` keeps the
    held-out vectors (by content; default ``out/state``): the run's novelty folder, so novelty finds them.
    """
    from sparq_stream.seeds import bad_line_report, collect_seeds, refuse_heldout, refused_report
    from sparq_stream.skills import label_seeds

    seeds, bad_lines = collect_seeds(config.seeds, config.seed_limit)
    for line in bad_line_report(config.seeds, bad_lines):
        log.warning("%s", line)
    if not seeds:
        raise ConfigError(f"{config.seeds}: no valid seed line ({len(bad_lines):,} bad line(s))")
    seeds, held = refuse_heldout(
        seeds, heldout=config.heldout, check=config.contamination_check, embedder=config.embedder,
        embedder_options={"seed": config.seed} if config.embedder == "hash" else {}, cache_dir=cache_dir or config.out / "state",
    )
    for line in refused_report(config.seeds, held):
        log.warning("%s", line)
    if held:
        log.warning("refused %d held-out seed(s) of %s; %d left", len(held), config.seeds, len(seeds))
    if refused is not None:
        refused.extend(held)
    if not seeds:
        raise ConfigError(f"{config.seeds}: every seed is a held-out test problem ({len(held):,} refused)")
    if config.label_seeds and seeds:
        log.info("labelling %d seeds with their skill-sets (%s backend)", len(seeds), config.backend)
        vocabulary = str(config.vocabulary) if config.vocabulary else None
        options = {**_backend_options(config), **openai_key_option(config)}
        seeds = label_seeds(seeds, config.backend, backend_options=options, vocabulary=vocabulary)
    return seeds, len(bad_lines)




#: Seconds the lag check must hold before it ends a run whose end markers have not passed (a fallback).
FALLBACK_IDLE_S = 30.0


def _finished(
    monitor: Any, idle_since: dict[str, float], supervisor: Any, training: bool = False, fresh_s: float = 1.5,
    held: bool = False,
) -> bool:
    """The run is over: the end markers have passed its last stages (the lag check only as a fallback).

    Every mutator replica is done (its share spent, every candidate solved or dropped) and has
    written its end marker (epoch E); the run ends once the archivist has forwarded epoch E (it
    holds every solver's marker for every partition, so every result before it is archived) and,
    with ``training``, the trainer has passed E (its tables are ended, no training in progress)
    and every mutator has seen the trainer's newest version (a new version can undo a ``done``:
    the mutator then ends again, later, with a larger epoch). ``held``: a drill's ``hold`` was
    used, its records written while the run went on must also be read: the lag check must hold too.

    The lag check (:func:`_lag_idle`) ends a run whose markers have not passed only after it has
    held for :data:`FALLBACK_IDLE_S` (a stage that gave up, or a build without markers), with a
    warning naming the stage the end is waiting on.
    """
    snap = monitor.snapshot()
    mutators = [p.name for p in supervisor.services if p.service == "mutator"]
    done = monitor.per_instance("mutator", "done")
    if not snap.get("mutator") or not mutators or any(done.get(name, 0.0) < 1.0 for name in mutators):
        idle_since.pop("mutator", None)
        return False  # every mutator replica: each holds the credits of its own share
    trainer = snap.get("trainer")
    seen = monitor.per_instance("mutator", "model_seen")
    if training and trainer and trainer["gauges"].get("latest_version", 0.0) > min(seen.get(name, 0.0) for name in mutators):
        idle_since.pop("mutator", None)
        return False
    waiting = _end_waits_on(monitor, supervisor, mutators, training)
    idle = _lag_idle(monitor, snap, idle_since, supervisor, fresh_s)
    if waiting is None:
        if held and not idle:
            return False
        log.info("the end markers have passed every stage: the run is finished")
        return True
    if idle and all(time.monotonic() - since >= FALLBACK_IDLE_S for since in idle_since.values()):
        log.warning("the end marker has not passed %s, but every service has read all of its input for %.0fs: "
                    "ending on the lag check (fallback)", waiting, FALLBACK_IDLE_S)
        return True
    return False


def _end_waits_on(monitor: Any, supervisor: Any, mutators: list[str], training: bool) -> str | None:
    """None once the end markers have passed the last stages, else the stage the end waits on."""
    written = monitor.per_instance("mutator", "end_passed")
    epoch = min(written.get(name, 0.0) for name in mutators)
    if epoch <= 0:
        return "mutator"
    for stage in ("archivist", "trainer") if training else ("archivist",):
        if not any(p.service == stage and not p.gave_up for p in supervisor.services):
            return stage  # not run, or given up on: only the fallback can end the run
        if max(monitor.per_instance(stage, "end_passed").values(), default=0.0) < epoch:
            return stage
    return None


def _lag_idle(monitor: Any, snap: dict[str, Any], idle_since: dict[str, float], supervisor: Any, fresh_s: float) -> bool:
    """Every service has reported a known zero lag since ``idle_since`` (its fresh reports confirm it) for 2 s.

    Only a live process's own report counts: while a service waits to be restarted, or its new
    process has not reported yet, the last figures of the dead one (often a lag of 0) say
    nothing about what is still unread. Every live process's newest report must also be at most
    ``fresh_s`` old: a process too busy to report may be reading records that arrived after its
    last "lag 0".
    """
    now, wall = time.monotonic(), time.time()
    confirmed = True
    for name in ("mutator", "novelty", "solver", "archivist", "trainer"):
        procs = [p for p in supervisor.services if p.service == name and not p.gave_up]
        if not procs:
            continue  # not run, or given up on (an optional service)
        row = snap.get(name)
        gauges = row["gauges"] if row else {}
        busy = row is None or gauges.get("lag", 1.0) > 0 or gauges.get("lag_unknown", 1.0) > 0 or gauges.get("training", 0.0) > 0
        stale = any(not p.alive or (monitor.newest_start(name, p.name) or 0.0) < p.started_wall for p in procs)
        oldest_report = min(monitor.last_report(name, p.name) or 0.0 for p in procs)
        if busy or stale or oldest_report < wall - fresh_s:
            idle_since.pop(name, None)
            return False
        since = idle_since.setdefault(name, now)
        # a report taken since the idle window began confirms it (not only reports from before)
        confirmed = confirmed and oldest_report >= wall - (now - since)
    return confirmed and all(now - since >= 2.0 for since in idle_since.values())


class _Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM of ``sparq up``: stop in order."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class _Signals:
    """SIGINT/SIGTERM: the first one stops the run in order; a second one during the stop kills the services."""

    def __init__(self) -> None:
        self.stopping = False
        self.supervisor: Any = None
        self._old: dict[int, Any] = {}

    def install(self) -> "_Signals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handle(self, signum: int, _frame: object) -> None:
        if not self.stopping:
            self.stopping = True
            raise _Interrupted(signum)
        log.warning("%s during the stop: killing the services now", signal.Signals(signum).name)
        if self.supervisor is not None:
            self.supervisor.kill_all()


class _BrokerWatch:
    """Notices the embedded broker exiting or not answering for ``timeout_s``."""

    def __init__(self, broker: Any, timeout_s: float) -> None:
        self.broker = broker
        self.timeout_s = timeout_s
        self._last_ok = time.monotonic()
        self._last_probe = 0.0

    def lost(self) -> str | None:
        """The reason the broker is lost, or None while it is fine."""
        from sparq_stream.brokers.tansu import wait_for_port

        if self.broker is None:
            return None
        code = self.broker.exit_code
        if code is not None:
            return f"broker lost: the embedded broker exited with code {code}"
        now = time.monotonic()
        if now - self._last_probe >= 2.0:
            self._last_probe = now
            if wait_for_port(self.broker.host, self.broker.port, 1.0):
                self._last_ok = time.monotonic()
        if time.monotonic() - self._last_ok > self.timeout_s:
            return f"broker lost: the embedded broker did not answer for {self.timeout_s:.0f}s"
        return None


def _read_run_json(out: Path) -> dict[str, Any]:
    path = out / "run.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_run_json(out: Path, data: dict[str, Any]) -> None:
    tmp = out / "run.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, out / "run.json")


def _finished_before(previous: dict[str, Any], out: Path) -> bool:
    """The folder holds a run that reached its budget: its summary stands, nothing is left to do."""
    return previous.get("status") == "finished" and bool(previous.get("prefix")) and (out / "summary.json").is_file()


def _result_of_finished(out: Path, previous: dict[str, Any]) -> UpResult:
    """The result of the finished run in ``out``, read back; no file of the folder is written."""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--out {out}: the finished run's summary.json cannot be read ({exc}); 'sparq report {out}' rebuilds it") from None
    if not isinstance(summary, dict):
        raise ConfigError(f"--out {out}: the finished run's summary.json is not an object; 'sparq report {out}' rebuilds it")
    report = out / "report.html"
    where = f"{out / 'summary.json'}" + (f" and {report}" if report.is_file() else "")
    reason = f"already finished (run {previous['prefix']}: {previous.get('ended', 'budget reached')})"
    log.info("the run in %s finished before: its result is in %s; give another --out for a new run", out, where)
    return UpResult(
        out=out, prefix=str(previous["prefix"]), bootstrap=str(previous.get("bootstrap", "")), reason=reason,
        summary=summary, restarts=dict(summary.get("restarts", {})), exit_code=int(RunEnd.BUDGET),
    )


def _resumable(config: UpConfig, previous: dict[str, Any], journal_dir: Path) -> bool:
    """A run in this folder did not finish, on the same kind of broker, and (embedded) left a journal."""
    from sparq_stream.orchestrator.journal import has_snapshot

    if not previous.get("prefix") or previous.get("status") != "running" or not previous.get("seeded"):
        return False
    if config.prefix not in (None, previous["prefix"]):
        return False
    embedded = config.bootstrap is None
    if embedded and not config.journal:
        return False
    if embedded != bool(previous.get("journal")) or (not embedded and previous.get("bootstrap") != config.bootstrap):
        log.warning("the unfinished run in %s used another broker: starting a new run", config.out)
        return False
    if embedded and not has_snapshot(journal_dir):
        log.warning("the unfinished run in %s left no journal snapshot: starting a new run", config.out)
        return False
    return True


def run_up(
    config: UpConfig,
    *,
    view: Callable[[Any, Any], Any] | None = None,
    on_tick: Callable[[Any, Any], None] | None = None,
    hold: Callable[[], bool] | None = None,
) -> UpResult:
    """Run the loop to its budget (or Ctrl-C / SIGTERM / timeout / a failure), stop every service, write the outputs.

    A rerun on the same ``--out`` after a crash resumes the run (same prefix; with the embedded
    broker, its topics and committed offsets are restored from ``out/journal`` first). A rerun on
    a finished run's ``--out`` ends at once with that run's result (exit 0), writing nothing there.
    Each process gets its settings object as a file (``out/settings/<instance>.json``); local
    caches live in ``out/state/<prefix>``, so a new run never restores another run's.
    ``on_tick(supervisor, monitor)`` is called twice a second (tests use it to kill services mid-run).
    While ``hold()`` is true the run does not end at its budget (a drill still producing records
    of its own); after its release the run ends once the end markers have passed and every
    service has read all of its input for 2 s (the drill's records too: they may follow the markers).
    """
    from sparq_stream.orchestrator.lifetime import RunLock, check_out_dir

    if not config.seeds.is_file():
        raise ConfigError(f"seed file {config.seeds} does not exist")
    if config.steps is None and config.max_candidates is None and config.timeout_s is None:
        raise ConfigError("give a budget: --steps, --max-candidates or --timeout")
    from sparq_stream.heldout import heldout_files

    heldout_files(config.heldout, check=config.contamination_check)  # no held-out set: refuse to start (exit 2)
    check_out_dir(config.out)
    signals = _Signals().install()
    try:
        with RunLock(config.out):
            return _run_locked(config, signals, view=view, on_tick=on_tick, hold=hold)
    finally:
        signals.restore()


def _run_locked(config: UpConfig, signals: _Signals, *, view: Any, on_tick: Any, hold: Any = None) -> UpResult:
    from sparq_stream.bus.client import publish_all
    from sparq_stream.bus.topics import TopicNames, create_topics
    from sparq_stream.orchestrator import journal as journal_mod
    from sparq_stream.orchestrator.monitor import MetricsMonitor
    from sparq_stream.orchestrator.replicas import SERVICES, replica_names
    from sparq_stream.orchestrator.supervisor import RestartPolicy, Supervisor
    from sparq_stream.settings import child_environment, write_settings_file

    out = config.out
    journal_dir = out / "journal"
    previous = _read_run_json(out)
    if _finished_before(previous, out):
        return _result_of_finished(out, previous)
    resumed = _resumable(config, previous, journal_dir)
    prefix = previous["prefix"] if resumed else (config.prefix or f"sparq-{uuid.uuid4().hex[:8]}")
    started_at = float(previous.get("started_at", time.time())) if resumed else time.time()
    reason, end, detail = "budget reached", RunEnd.BUDGET, ""
    broker = None
    supervisor: Supervisor | None = None
    if config.bootstrap is not None:  # fail fast, before minutes of seed labelling
        from sparq_stream.brokers.tansu import require_reachable

        require_reachable(config.bootstrap)
    if config.kafka_auth_dir is not None:  # every principal's login is there before anything starts
        from sparq_stream.security import PRINCIPALS, principal_file

        if config.bootstrap is None:
            raise ConfigError("--kafka-auth-dir needs --bootstrap: the embedded Tansu broker has no logins (it is open on loopback)")
        for principal in PRINCIPALS:
            principal_file(config.kafka_auth_dir, principal)
    run_settings(config, prefix, config.bootstrap or "127.0.0.1:9092", extra=False)  # a bad setting: exit 2 before anything starts
    refused: list[Any] = []
    novelty_dir = run_state_dir(out, prefix) / "novelty"  # the held-out vectors of the seed check, where novelty finds them
    seeds, bad = load_seed_set(config, refused, novelty_dir) if not resumed else ([], 0)  # bad seeds fail before any broker starts
    contamination = _contamination_info(config, len(refused) if not resumed else int(previous.get("seeds_refused_heldout", 0)))
    with ExitStack() as stack:
        bootstrap = config.bootstrap
        if bootstrap is None:
            from sparq_stream.brokers.tansu import EmbeddedBroker

            broker = EmbeddedBroker(log_path=out / "logs" / "broker.log")
            bootstrap = broker.start()
            stack.callback(broker.stop)
        admin_login = (config.kafka_auth_dir / "admin.properties") if config.kafka_auth_dir is not None else None
        settings = ServiceSettings(bootstrap=bootstrap, prefix=prefix, kafka_client_config=admin_login)
        use_journal = broker is not None and config.journal
        start_offsets: dict[tuple[str, int], int] = {}
        if resumed and use_journal:  # first, so the topics get the journal's partition counts
            restored = journal_mod.restore(settings, journal_dir)
            start_offsets = restored.pop("next")
            log.info("resuming run %s from its journal: %s", prefix, restored)
        elif resumed:
            log.info("resuming run %s on %s", prefix, bootstrap)
        elif journal_dir.exists():
            journal_mod.discard(journal_dir)
        create_topics(settings, partitions=config.partitions)
        if admin_login is not None:  # each service's principal may use exactly its topics, groups and transactional ids
            from sparq_stream.bus.topics import acl_grants, apply_acls

            apply_acls(settings, acl_grants(prefix))
        # the broker answered and the topics exist: only now does the folder name a run
        run_info = {
            "prefix": prefix, "bootstrap": bootstrap, "started_at": started_at, "status": "running",
            "pid": os.getpid(), "journal": use_journal, "config": config.model_dump(mode="json"),
            "seeds_refused_heldout": contamination["seeds_refused"],
        }
        _write_run_json(out, run_info)
        if not resumed:
            publish_all(settings, TopicNames(prefix).topic("seeds"), seeds)
            log.info("published %d seeds (%d bad lines skipped) to %s.seeds", len(seeds), bad, prefix)
        run_info["seeded"] = True
        _write_run_json(out, run_info)
        journal = journal_mod.TopicJournal(settings, journal_dir, start_offsets=start_offsets).start() if use_journal else None
        if journal is not None:
            stack.callback(journal.stop)
        monitor = MetricsMonitor(settings, since=started_at).start()
        stack.callback(monitor.stop)
        supervisor = Supervisor(out / "logs", RestartPolicy(max_restarts=config.max_restarts, window_s=config.restart_window_s))
        signals.supervisor = supervisor
        watch = _BrokerWatch(broker, config.broker_timeout_s)
        base = service_values(config, prefix, bootstrap)
        env = service_env(config)
        final_metrics: dict[str, Any] = {}
        error: Exception | None = None
        try:
            names = {service: replica_names(service, config.replica_count(service)) for service in SERVICES}
            http = _http_ports([name for service in SERVICES for name in names[service]])
            run_info["http"] = {name: f"http://127.0.0.1:{port}" for name, port in http.items()}
            _write_run_json(out, run_info)
            for service in SERVICES:  # each process reads its whole settings object from its file; --with flags win
                for index, name in enumerate(names[service]):
                    child = _child_settings(config, base, service, index, name, http[name], prefix)
                    path = write_settings_file(child, out / "settings" / f"{name}.json")
                    args = ["--config", str(path.resolve()), *config.extra.get(service, [])]
                    supervisor.add(name, service, args, {**child_environment(child), **env})
            started = time.monotonic()
            idle: dict[str, float] = {}
            held = False  # a drill's hold was used: its records must be read too
            live = view(monitor, supervisor) if view else None
            if live is not None:
                stack.enter_context(live)
            while True:
                time.sleep(0.5)
                if live is not None:
                    live.refresh_view()
                if on_tick is not None:
                    on_tick(supervisor, monitor)
                lost = watch.lost()
                if lost:
                    reason, end = lost, RunEnd.BROKER_LOST
                    break
                failed = supervisor.check()
                if failed:
                    reason = f"service failed: {', '.join(failed)} kept failing (logs in {out / 'logs'})"
                    end = RunEnd.SERVICE_FAILED
                    detail = "\n".join(f"--- {n}:\n{supervisor.tail(n)}" for n in failed)
                    break
                if hold is not None and hold():
                    idle.clear()
                    held = True
                elif _finished(monitor, idle, supervisor, training=config.train_every > 0, fresh_s=2.0 * config.metrics_interval_s, held=held):
                    break
                if config.timeout_s is not None and time.monotonic() - started > config.timeout_s:
                    reason, end = f"timeout after {config.timeout_s:.0f}s", RunEnd.TIMEOUT
                    break
        except _Interrupted as exc:
            reason, end = f"interrupted ({exc.args[0]})", RunEnd.INTERRUPTED
        except KeyboardInterrupt:
            reason, end = "interrupted (SIGINT)", RunEnd.INTERRUPTED
        except Exception as exc:  # recorded in summary.json, then raised again
            reason, end, error = f"error: {type(exc).__name__}: {exc}", RunEnd.ERROR, exc
        finally:
            signals.stopping = True
            final_metrics = _stop_services(config, supervisor, monitor, broker_lost=end == RunEnd.BROKER_LOST)
            if journal is not None and end != RunEnd.BROKER_LOST:
                journal.stop(final_snapshot=True)
        summary = _write_summary(out, final_metrics, reason, end, prefix, supervisor, _models_in_use(monitor),
                                 {k: int(v) for k, v in sorted(monitor.per_instance("mutator", "emitted").items())},
                                 contamination=contamination)
        finished = end in (RunEnd.BUDGET,)
        _write_run_json(out, {**run_info, "status": "finished" if finished else "running", "ended": reason, "exit_code": int(end)})
        if error is not None:
            raise error
    restarts = summary.get("restarts", {})
    return UpResult(
        out=out, prefix=prefix, bootstrap=bootstrap, reason=reason, summary=summary, restarts=restarts,
        exit_code=int(end), resumed=resumed, detail=detail,
    )


def _stop_services(config: UpConfig, supervisor: Any, monitor: Any, *, broker_lost: bool) -> dict[str, Any]:
    """The mutator first (no new work), then the rest: each finishes its batch, flushes and commits, in a bound."""
    grace = 5.0 if broker_lost else config.stop_grace_s
    deadline = time.monotonic() + grace
    try:
        if supervisor is not None:
            supervisor.stop(["mutator"], timeout_s=grace)
            codes = supervisor.stop(timeout_s=max(1.0, deadline - time.monotonic()))
            log.info("services stopped: %s", codes)
        if not broker_lost:
            time.sleep(2 * config.metrics_interval_s)  # the services' final metrics, published on exit
    except KeyboardInterrupt:
        if supervisor is not None:
            supervisor.kill_all()
    return monitor.snapshot()


def _models_in_use(monitor: Any) -> dict[str, int]:
    """The model version each mutator and solver instance had loaded at the end (from its last metrics)."""
    return {
        instance: int(version)
        for service in ("mutator", "solver")
        for instance, version in sorted(monitor.per_instance(service, "model_version").items())
    }


def _contamination_info(config: UpConfig, seeds_refused: int) -> dict[str, Any]:
    """summary.json's ``contamination_check``: on or OFF (in words), the held-out files, the seeds refused."""
    from sparq_stream.heldout import heldout_files

    files = heldout_files(config.heldout, check=config.contamination_check)
    return {
        "on": config.contamination_check,
        "status": "contamination check on" if config.contamination_check else "contamination check OFF",
        "heldout": [p.name for p in files],
        "seeds_refused": seeds_refused,
    }


def _write_summary(
    out: Path, metrics: dict[str, Any], reason: str, end: RunEnd, prefix: str, supervisor: Any, in_use: dict[str, int],
    emitted: dict[str, int] | None = None, contamination: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from sparq_stream.orchestrator.report import write_report

    services = supervisor.services if supervisor is not None else []
    extra = {
        **({"contamination_check": contamination} if contamination is not None else {}),
        "exit_code": int(end),
        "ended": end.name.lower(),
        "restarts": {s.name: s.restarts for s in services if s.restarts},
        "given_up": [s.name for s in services if s.gave_up],
        "models_in_use": in_use,
        "emitted_by_mutator": emitted or {},  # each mutator replica's share of the candidates
    }
    return write_report(out, metrics, reason=reason, prefix=prefix, extra=extra)
