"""``sparq up``: the whole loop on one machine, each service its own process, one live view."""

from __future__ import annotations

import json
import logging
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from sparq_stream.errors import ConfigError, SparqError

__all__ = ["UpConfig", "UpResult", "run_up", "service_args"]

log = logging.getLogger(__name__)

Variant = Literal["static-uniform", "static-diverse", "dynamic-uniform", "qd"]
Backend = Literal["scripted", "transformers", "openai", "vllm"]


class UpConfig(BaseModel):
    """Everything ``sparq up`` needs; per-service details go through ``extra`` flags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    seeds: Path = Field(description="seed JSONL (GSM8K or MATH style)")
    out: Path = Field(description="output folder: export, archive, summary.json, plots, logs, state")
    steps: int | None = Field(default=None, ge=1, description="mutation steps (rounds of b parents)")
    max_candidates: int | None = Field(default=None, ge=1, description="stop after this many candidates")
    variant: Variant = "qd"
    backend: Backend = "transformers"
    model: str | None = Field(default=None, description="model path or served name (default: the packaged SmolLM2)")
    backend_options: dict[str, Any] = Field(default_factory=dict)
    embedder: Literal["sentence-transformers", "hash"] = "sentence-transformers"
    bootstrap: str | None = Field(default=None, description="Kafka to use; default: start the embedded Tansu broker")
    prefix: str | None = Field(default=None, description="topic prefix; default: a new one per run")
    partitions: int = Field(default=3, ge=1)
    solvers: int = Field(default=1, ge=1, description="solver replicas (processes)")
    batch_size: int = Field(default=64, ge=1, description="parents per step (b)")
    k: int = Field(default=16, ge=1, description="solver rollouts per candidate (K)")
    max_tokens: int | None = Field(default=None, ge=16, description="token limit of mutations and rollouts")
    cap: int | None = Field(default=None, ge=1, description="W's cap (top-T or per niche)")
    seed: int = 0
    seed_limit: int | None = Field(default=None, ge=1, description="publish only the first N seeds")
    label_seeds: bool = Field(default=True, description="classify the seeds' skills before publishing (diverse selection needs them)")
    vocabulary: Path | None = Field(default=None, description="skill vocabulary JSON (default: packaged fallback)")
    contamination: list[Path] | None = Field(default=None, description="held-out files (default: the shared test sets)")
    threads: int | None = Field(default=1, ge=1, description="torch threads per model service (5 processes share the cores)")
    timeout_s: float | None = Field(default=None, gt=0, description="stop the run after this long, whatever is left")
    train_every: int = Field(default=0, ge=0, description="fine-tune a new student version every N new examples (0 = never)")
    metrics_interval_s: float = Field(default=1.0, gt=0)
    extra: dict[str, list[str]] = Field(default_factory=dict, description="extra flags per service")


class UpResult(BaseModel):
    """What a run produced and how it ended."""

    out: Path
    prefix: str
    bootstrap: str
    reason: str
    summary: dict[str, Any]
    restarts: dict[str, int] = {}


def _common(config: UpConfig, prefix: str, bootstrap: str, name: str) -> list[str]:
    return [
        "--bootstrap", bootstrap,
        "--prefix", prefix,
        "--partitions", str(config.partitions),
        "--metrics-interval-s", str(config.metrics_interval_s),
        "--instance", name,
        "--log-level", "INFO",
    ]


def _backend_options(config: UpConfig) -> dict[str, Any]:
    options = dict(config.backend_options)
    if config.model and config.backend != "scripted":
        options.setdefault("model", config.model)
    if config.threads and config.backend == "transformers":
        options.setdefault("num_threads", config.threads)
    return options


def _backend_flags(config: UpConfig) -> list[str]:
    options = _backend_options(config)
    return ["--backend", config.backend, *(["--backend-options", json.dumps(options)] if options else [])]


def service_args(config: UpConfig, prefix: str, bootstrap: str) -> dict[str, list[str]]:
    """The ``sparq run`` flags of every service of a run (the solver's are shared by its replicas)."""
    out = config.out.resolve()
    state = out / "state"
    tokens = ["--max-tokens", str(config.max_tokens)] if config.max_tokens else []
    cap = ["--cap", str(config.cap)] if config.cap else []
    budget: list[str] = []
    if config.steps is not None:
        budget += ["--steps", str(config.steps)]
    if config.max_candidates is not None:
        budget += ["--max-candidates", str(config.max_candidates)]
    embedder_options = {"seed": config.seed} if config.embedder == "hash" else {}
    novelty = [
        "--embedder", config.embedder,
        *(["--embedder-options", json.dumps(embedder_options)] if embedder_options else []),
        *_backend_flags(config),
        "--state-dir", str(state / "novelty"),
        "--max-poll-records", "64", "--max-poll-interval-ms", str(3_600_000),
    ]
    if config.vocabulary:
        novelty += ["--vocabulary", str(config.vocabulary.resolve())]
    if config.contamination is not None:
        novelty += ["--contamination", json.dumps([str(p.resolve()) for p in config.contamination])]
    args = {
        "archivist": ["--variant", config.variant, *cap, "--archive-dir", str(out / "archive")],
        "trainer": ["--export-dir", str(out / "export"), "--models-dir", str(out / "models"), "--export-every", "1"],
        "solver": [
            *_backend_flags(config), "--k", str(config.k), *tokens, "--max-batch", str(config.batch_size),
            # a poll's batch is one backend call: keep it to b candidates and give slow CPU models time
            "--max-poll-records", str(config.batch_size), "--max-poll-interval-ms", str(3_600_000),
        ],
        "novelty": novelty,
        "mutator": [
            "--variant", config.variant, *cap,
            "--batch-size", str(config.batch_size),
            "--seed", str(config.seed),
            *_backend_flags(config),
            *tokens,
            *budget,
            "--state-dir", str(state / "mutator"),
        ],
    }
    if config.train_every > 0:
        _add_training(args, config, out)
    for name, extra in config.extra.items():
        if name not in args:
            raise ConfigError(f"extra flags for unknown service {name!r}; allowed: {', '.join(sorted(args))}")
        args[name] = args[name] + list(extra)
    return args


def _add_training(args: dict[str, list[str]], config: UpConfig, out: Path) -> None:
    """Training in the loop: the trainer fine-tunes every N examples; mutator and solver follow its versions."""
    from sparq_stream.training.loop import follower_flags, trainer_flags

    args["trainer"] += trainer_flags(config.train_every, out / "models", config, _backend_options(config))
    for name in ("mutator", "solver"):
        args[name] += follower_flags(out / "models")


def load_seed_set(config: UpConfig) -> tuple[list[Any], int]:
    """The run's seeds (first ``seed_limit``), labelled with their skill-sets unless disabled; and the bad lines."""
    from sparq_stream.seeds import collect_seeds, label_seeds

    seeds, bad_lines = collect_seeds(config.seeds, config.seed_limit)
    for line in bad_lines:
        log.warning("%s:%d: %s (skipped)", config.seeds, line.line, line.reason)
    if config.label_seeds and seeds:
        log.info("labelling %d seeds with their skill-sets (%s backend)", len(seeds), config.backend)
        vocabulary = str(config.vocabulary) if config.vocabulary else None
        seeds = label_seeds(seeds, config.backend, backend_options=_backend_options(config), vocabulary=vocabulary)
    return seeds, len(bad_lines)


def _finished(monitor: Any, idle_since: dict[str, float]) -> bool:
    """The mutator is done (every candidate solved or dropped) and archivist and trainer have caught up."""
    snap = monitor.snapshot()
    mutator = snap.get("mutator")
    if not mutator or mutator["gauges"].get("done", 0.0) < 1.0:
        return False
    now = time.monotonic()
    for name in ("archivist", "trainer"):
        row = snap.get(name)
        gauges = row["gauges"] if row else {}
        if row is None or gauges.get("lag", 1.0) > 0 or gauges.get("lag_unknown", 1.0) > 0 or gauges.get("training", 0.0) > 0:
            idle_since.pop(name, None)
            return False
        idle_since.setdefault(name, now)
    return all(now - idle_since[n] >= 2.0 for n in ("archivist", "trainer"))


def run_up(
    config: UpConfig,
    *,
    view: Callable[[Any, Any], Any] | None = None,
    on_tick: Callable[[Any, Any], None] | None = None,
) -> UpResult:
    """Run the loop to its budget (or Ctrl-C / timeout), stop every service cleanly, write the outputs.

    ``on_tick(supervisor, monitor)`` is called twice a second (tests use it to kill services mid-run).
    """
    from sparq_stream.bus.client import publish_all
    from sparq_stream.bus.topics import TopicNames, create_topics
    from sparq_stream.orchestrator.monitor import MetricsMonitor
    from sparq_stream.orchestrator.report import write_report
    from sparq_stream.orchestrator.supervisor import Supervisor
    from sparq_stream.settings import ServiceSettings

    if not config.seeds.is_file():
        raise ConfigError(f"seed file {config.seeds} does not exist")
    if config.steps is None and config.max_candidates is None and config.timeout_s is None:
        raise ConfigError("give a budget: --steps, --max-candidates or --timeout")
    out = config.out
    out.mkdir(parents=True, exist_ok=True)
    prefix = config.prefix or f"sparq-{uuid.uuid4().hex[:8]}"
    reason = "budget reached"
    with ExitStack() as stack:
        bootstrap = config.bootstrap
        if bootstrap is None:
            from sparq_stream.brokers.tansu import EmbeddedBroker

            broker = EmbeddedBroker(log_path=out / "logs" / "broker.log")
            bootstrap = broker.start()
            stack.callback(broker.stop)
        settings = ServiceSettings(bootstrap=bootstrap, prefix=prefix)
        (out / "run.json").write_text(
            json.dumps({"prefix": prefix, "bootstrap": bootstrap, "config": config.model_dump(mode="json")}, indent=2)
        )
        create_topics(settings, partitions=config.partitions)
        seeds, bad = load_seed_set(config)
        publish_all(settings, TopicNames(prefix).topic("seeds"), seeds)
        log.info("published %d seeds (%d bad lines skipped) to %s.seeds", len(seeds), bad, prefix)
        monitor = MetricsMonitor(settings).start()
        stack.callback(monitor.stop)
        supervisor = Supervisor(out / "logs")
        args = service_args(config, prefix, bootstrap)
        try:
            for name in ("archivist", "trainer", "novelty"):
                supervisor.add(name, name, _common(config, prefix, bootstrap, name) + args[name])
            for i in range(config.solvers):
                supervisor.add(f"solver-{i}", "solver", _common(config, prefix, bootstrap, f"solver-{i}") + args["solver"])
            supervisor.add("mutator", "mutator", _common(config, prefix, bootstrap, "mutator") + args["mutator"])
            started = time.monotonic()
            idle: dict[str, float] = {}
            live = view(monitor, supervisor) if view else None
            if live is not None:
                stack.enter_context(live)
            while True:
                time.sleep(0.5)
                if live is not None:
                    live.refresh_view()
                if on_tick is not None:
                    on_tick(supervisor, monitor)
                failed = supervisor.check()
                if failed:
                    tails = "\n".join(f"--- {n}:\n{supervisor.tail(n)}" for n in failed)
                    raise SparqError(f"service(s) {', '.join(failed)} kept failing; logs in {out / 'logs'}\n{tails}")
                if _finished(monitor, idle):
                    break
                if config.timeout_s is not None and time.monotonic() - started > config.timeout_s:
                    reason = f"timeout after {config.timeout_s:.0f}s"
                    break
        except KeyboardInterrupt:
            reason = "interrupted"
        finally:
            # The mutator first (no new work), then the rest: each finishes its batch, flushes and commits.
            supervisor.stop(["mutator"])
            codes = supervisor.stop()
            log.info("services stopped: %s", codes)
            time.sleep(2 * config.metrics_interval_s)  # the services' final metrics, published on exit
            final_metrics = monitor.snapshot()
        summary = write_report(out, final_metrics, reason=reason, prefix=prefix)
    restarts = {svc.name: svc.restarts for svc in supervisor.services if svc.restarts}
    summary["restarts"] = restarts
    return UpResult(out=out, prefix=prefix, bootstrap=bootstrap, reason=reason, summary=summary, restarts=restarts)
