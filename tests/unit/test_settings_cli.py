"""One source of truth for settings: every field of every settings class is a flag, a SPARQ_ variable and a row of
``sparq settings``; bad flags name the field and what it accepts; ``sparq up`` forwards settings; secrets stay secret."""

from __future__ import annotations

import json
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from sparq_stream.cli import app
from sparq_stream.credentials import is_secret_field
from sparq_stream.errors import ConfigError
from sparq_stream.orchestrator.up import UpConfig, UpSettings, _child_settings, run_settings, service_env, service_values
from sparq_stream.services import service_names, service_settings, service_spec
from sparq_stream.settings import (
    Backend, Embedder, ServiceSettings, Variant, child_environment, cli_values, flag_names, load_settings, setting_rows,
    write_settings_file,
)

CLASSES = {name: service_spec(name).settings_cls for name in service_names()} | {"up": UpSettings}
#: Values for fields whose generic sample would break a cross-field rule or a pattern.
OVERRIDES: dict[str, Any] = {
    "variant": "static-uniform", "t_low": 0.2, "t_high": 0.8, "prefix": "other-prefix", "exact_threshold": 0.99,
    "max_tokens": 100, "extra": {"solver": ["--k", "2"]}, "replicas": {"archivist": 2},
}  # fmt: skip


def _fields() -> list[tuple[str, str]]:
    """Each class's own fields; the shared wrapper fields (ServiceSettings) once, on the relay."""
    shared = set(ServiceSettings.model_fields)
    return [
        (c, f) for c, cls in CLASSES.items() for f, info in cls.model_fields.items()
        if not is_secret_field(f, info) and (c in ("relay", "up") or f not in shared)
    ]  # fmt: skip


def _other_value(name: str, info: Any, tmp_path: Path) -> Any:
    """A valid value of the field that differs from its default."""
    if name in OVERRIDES:
        return OVERRIDES[name]
    default = info.get_default(call_default_factory=True)
    kind = info.annotation
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # Optional[X]: X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    origin = typing.get_origin(kind)
    if origin is Literal:
        return next(c for c in typing.get_args(kind) if c != default)
    if origin is tuple:
        choices = typing.get_args(typing.get_args(kind)[0])
        return [c for c in choices if c not in (default or ())][:1] or [choices[0]]
    if origin is list:
        return [str(tmp_path / "a.jsonl")]
    if origin is dict:
        value_kind = typing.get_args(kind)[1]
        return {"extra_option": str(tmp_path)} if value_kind in (Path, str) else {"extra_option": 1}
    if kind is bool:
        return not default
    if kind is int:
        return (default or 0) + 7
    if kind is float:
        return default / 2 if default and 0 < default <= 1 else (default or 0.5) * 2  # fractions stay fractions
    if kind is Path:
        (tmp_path / f"{name}.x").write_text("x\n")  # a file that exists (key files are read when validated)
        return str(tmp_path / f"{name}.x")
    return f"{default or name}-x" if name != "instance" else "replica-7"


def _as_text(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (dict, list)) else str(value).lower() if isinstance(value, bool) else str(value)


def _flag_args(cls: Any, name: str, value: Any) -> list[str]:
    flag = flag_names(cls, name)[0]
    if isinstance(value, bool):
        return [flag if value else f"--no-{flag[2:]}"]
    return [flag, _as_text(value)]


def _required(cls: Any, tmp_path: Path, name: str = "") -> dict[str, Any]:
    if name == "replica_index":
        return {"replica_count": 16}  # an index needs a count above it
    return {"seeds": tmp_path / "seeds.jsonl"} if cls is UpSettings else {}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SPARQ_") and key != "SPARQ_CACHE_DIR":
            monkeypatch.delenv(key)


@pytest.mark.parametrize("owner, name", _fields(), ids=lambda x: str(x))
def test_every_field_is_a_flag_and_an_environment_variable(owner: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cls = CLASSES[owner]
    info = cls.model_fields[name]
    value = _other_value(name, info, tmp_path)
    from_flag = load_settings(cls, args=_flag_args(cls, name, value), read_file=False, **_required(cls, tmp_path, name))
    expected = getattr(from_flag, name)
    assert expected != info.get_default(call_default_factory=True), f"--{name} did not change {owner}.{name}"
    monkeypatch.setenv(f"SPARQ_{name.upper()}", _as_text(value))
    from_env = load_settings(cls, read_file=False, **_required(cls, tmp_path, name))
    assert getattr(from_env, name) == expected


@pytest.mark.parametrize("owner", sorted(CLASSES))
def test_sparq_settings_lists_every_field(owner: str) -> None:
    cls = CLASSES[owner]
    rows = {row.env: row for row in setting_rows(cls)}
    assert set(rows) == {f"SPARQ_{f.upper()}" for f in cls.model_fields}
    done = CliRunner().invoke(app, ["settings", owner], env={"COLUMNS": "400"})
    assert done.exit_code == 0, done.output
    flat = "".join(done.output.split())  # the table may fold a long cell over two lines
    for row in rows.values():
        assert row.env in flat.replace("│", "")


def test_literal_settings_list_their_allowed_values() -> None:
    (row,) = [r for r in setting_rows(CLASSES["solver"]) if r.env == "SPARQ_EARLY_STOP"]
    assert row.meaning.endswith("(one of: none, exact, predictive)") and row.flags == "--early-stop"
    (switch,) = [r for r in setting_rows(CLASSES["solver"]) if r.env == "SPARQ_FOLLOW_MODELS"]
    assert switch.flags == "--follow-models, --no-follow-models"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--early-stop", "maybe"], "setting 'early_stop': Input should be 'none', 'exact' or 'predictive' (got 'maybe')"),
        (["--k", "many"], "setting 'k': Input should be a valid integer"),
        (["--k", "0"], "setting 'k': Input should be greater than or equal to 1 (got '0')"),
        (["--max-tokenz", "3"], "unknown setting --max-tokenz (did you mean --max-tokens?); allowed: --audit, "),
        (["--k"], "setting --k needs a value"),
        (["--follow-models=false"], "setting 'follow_models' is a switch: give --follow-models or --no-follow-models"),
        (["--backend-options", "{nope"], "setting 'backend_options': not a valid value"),
        (["stray"], "unexpected argument 'stray'"),
    ],
)
def test_a_bad_flag_names_the_field_and_what_it_accepts(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        service_settings("solver", args)
    assert str(err.value).startswith(message), str(err.value)


def test_a_bad_flag_exits_2_in_one_line() -> None:
    done = subprocess.run([sys.executable, "-m", "sparq_stream.cli", "run", "solver", "--audit", "sometimes"],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip() == "error: setting 'audit': Input should be 'kept', 'all' or 'off' (got 'sometimes')"


def test_flag_spellings_of_the_docs_and_tools_still_parse() -> None:
    solver = service_settings("solver", ["--k", "8", "-b", "h:1", "--prefix", "p", "--early-stop", "none", "--no-audit-verifier"])
    assert (solver.k, solver.bootstrap, solver.prefix, solver.early_stop, solver.audit_verifier) == (8, "h:1", "p", "none", False)
    up = load_settings(UpSettings, args=["--seeds", "s.jsonl", "--timeout", "30", "--no-label-seeds", "--k", "2"], read_file=False)
    assert (up.timeout_s, up.label_seeds, up.k) == (30.0, False, 2)
    merged = cli_values(CLASSES["solver"], ["--backend-options", '{"a": 1}', "--backend-options", '{"b": 2}'])
    assert merged == {"backend_options": {"a": 1, "b": 2}}  # a repeated mapping flag merges (as --with appends)
    novelty = CLASSES["novelty"]
    assert cli_values(novelty, ["--no-contamination-check"]) == {"contamination_check": False}  # the one off switch
    assert cli_values(novelty, ["--heldout", "a.jsonl", "--heldout", "b.jsonl"]) == {"heldout": ["a.jsonl", "b.jsonl"]}
    assert cli_values(novelty, ["--heldout", '["a.jsonl"]']) == {"heldout": ["a.jsonl"]}  # a JSON list
    assert cli_values(novelty, ["--contamination", "a.jsonl,b.jsonl"]) == {"contamination": ["a.jsonl", "b.jsonl"]}  # deprecated
    up = load_settings(UpSettings, args=["--seeds", "s.jsonl", "--heldout", "x.jsonl", "--heldout", "y.jsonl", "--no-contamination-check"],
                       read_file=False)  # fmt: skip
    assert (up.heldout, up.contamination_check) == ([Path("x.jsonl"), Path("y.jsonl")], False)


def test_flags_beat_environment_beat_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "solver.toml"
    cfg.write_text("k = 3\nt_low = 0.2\nmax_batch = 5\n")
    monkeypatch.setenv("SPARQ_K", "4")
    monkeypatch.setenv("SPARQ_MAX_BATCH", "6")
    settings = service_settings("solver", ["--k", "9"], config=cfg)
    assert (settings.k, settings.max_batch, settings.t_low) == (9, 6, 0.2)


def test_sparq_up_forwards_its_settings_and_with_flags_to_the_children(tmp_path: Path) -> None:
    runner = CliRunner()
    captured: dict[str, Any] = {}

    def fake_run_up(config: Any, view: Any = None) -> Any:
        captured["config"] = config
        raise ConfigError("stop here")

    import sparq_stream.orchestrator.up as up_module

    real = up_module.run_up
    up_module.run_up = fake_run_up
    try:
        done = runner.invoke(app, ["up", "--seeds", "s.jsonl", "--steps", "1", "--k", "3", "--backend", "scripted",
                                   "--with", "solver --early-stop exact --max-batch 5", "--with", "trainer --train-max-steps 200"])  # fmt: skip
    finally:
        up_module.run_up = real
    assert isinstance(done.exception, ConfigError) and str(done.exception) == "stop here"
    config = captured["config"]
    assert config.extra == {"solver": ["--early-stop", "exact", "--max-batch", "5"], "trainer": ["--train-max-steps", "200"]}
    settings = run_settings(config, "p", "h:1")
    solver = settings["solver"]
    assert (solver.k, solver.early_stop, solver.max_batch, solver.backend, solver.prefix) == (3, "exact", 5, "scripted", "p")
    trainer = settings["trainer"]
    assert trainer.train_max_steps == 200 and trainer.prefix == "p"


def test_a_child_reads_back_the_whole_settings_object_sparq_up_wrote(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not flags rendered and parsed back: each process gets its settings object as a file, and --with flags win."""
    (tmp_path / "h.jsonl").write_text(json.dumps({"question": "1+1?", "answer": "#### 2"}) + "\n")
    config = UpConfig(
        seeds=tmp_path / "s.jsonl", out=tmp_path / "run", steps=2, k=3, backend="scripted", embedder="hash",
        heldout=[tmp_path / "h.jsonl"], contamination_check=False, train_every=2, replicas={"mutator": 2},
        extra={"solver": ["--early-stop", "exact"]})  # fmt: skip
    base = service_values(config, "run-a", "h:1")
    monkeypatch.setenv("SPARQ_K", "99")  # a stray variable of the parent's environment: read once, by the parent
    for service, index, name in (("solver", 0, "solver-0"), ("novelty", 0, "novelty"), ("mutator", 1, "mutator-1"), ("trainer", 0, "trainer")):
        child = _child_settings(config, base, service, index, name, 4321, "run-a")
        path = write_settings_file(child, tmp_path / "settings" / f"{name}.json")
        for key, value in child_environment(child).items():
            monkeypatch.setenv(key, value)
        again = service_settings(service, config.extra.get(service, []), config=path)
        expected = child.model_dump() | ({"early_stop": "exact"} if service == "solver" else {})
        assert again.model_dump() == expected
        assert (again.instance, again.http_port, again.prefix, again.bootstrap) == (name, 4321, "run-a", "h:1")
        for key in child_environment(child):
            monkeypatch.delenv(key)
    state = (tmp_path / "run").resolve() / "state" / "run-a"
    mutator = _child_settings(config, base, "mutator", 1, "mutator-1", 1, "run-a")
    assert (mutator.replica_index, mutator.replica_count, mutator.state_dir) == (1, 2, str(state / "mutator-1"))
    novelty = run_settings(config, "run-a", "h:1")["novelty"]
    assert (novelty.heldout, novelty.contamination_check, novelty.embedder) == ([(tmp_path / "h.jsonl").resolve()], False, "hash")
    assert run_settings(config, "run-a", "h:1")["solver"].k == 3  # the parent's flag, not the stray SPARQ_K


def test_one_declaration_per_choice_and_per_shared_setting() -> None:
    from sparq_stream.cores.novelty import NoveltyConfig
    from sparq_stream.cores.solver import SolverConfig
    from sparq_stream.messages import VARIANT_VALUES
    from sparq_stream.models.registry import EMBEDDING_BACKENDS, GENERATION_BACKENDS
    from sparq_stream.qd.working_set import VARIANTS

    assert typing.get_args(Variant) == tuple(VARIANTS) == VARIANT_VALUES[1:]
    assert set(typing.get_args(Backend)) == set(GENERATION_BACKENDS)
    assert set(typing.get_args(Embedder)) == set(EMBEDDING_BACKENDS)
    for service in ("mutator", "archivist"):
        assert CLASSES[service].model_fields["variant"].annotation is Variant
    for service in ("mutator", "solver", "novelty"):
        assert CLASSES[service].model_fields["backend"].annotation is Backend
    # sparq up's fields that are also a service's are that service's: one default, one set of limits
    for name, cls in (("heldout", NoveltyConfig), ("contamination_check", NoveltyConfig), ("k", SolverConfig), ("embedder", NoveltyConfig)):
        ours, theirs = UpConfig.model_fields[name], cls.model_fields[name]
        assert (ours.default, ours.default_factory, ours.metadata) == (theirs.default, theirs.default_factory, theirs.metadata), name
    # one default for labelling the seeds: sparq up --label-seeds and sparq seed --label
    import inspect

    from sparq_stream.cli import seed

    assert inspect.signature(seed).parameters["label"].default.default is UpConfig.model_fields["label_seeds"].default


def test_the_api_key_is_never_a_flag_nor_an_option(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'openai_api_key' is a secret and is never a flag.*SPARQ_OPENAI_API_KEY"):
        service_settings("solver", ["--openai-api-key", "sk-test-123"])
    for options in ({"api_key": "sk-test-123"}, {"headers": {"Authorization": "Bearer sk-test-123"}}):
        with pytest.raises(ConfigError) as err:
            service_settings("mutator", ["--backend-options", json.dumps(options)])
        assert "a secret may not go in options" in str(err.value) and "sk-test-123" not in str(err.value)
        with pytest.raises(ValueError, match="a secret may not go in options"):
            UpConfig(seeds=tmp_path / "s", out=tmp_path, backend_options=options)
    with pytest.raises(ConfigError) as err:
        service_settings("solver", ["--kafka-options", '{"sasl_plain_password": "hunter2"}'])
    assert "hunter2" not in str(err.value)


def test_the_api_key_comes_from_the_environment_or_a_file_and_prints_redacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sparq_stream.credentials import openai_key_option

    monkeypatch.setenv("SPARQ_OPENAI_API_KEY", "sk-env-456")
    solver = service_settings("solver", ["--backend", "openai"])
    assert isinstance(solver.openai_api_key, SecretStr) and "sk-env-456" not in repr(solver) + str(solver.model_dump(mode="json"))
    assert openai_key_option(solver) == {"api_key": "sk-env-456"}
    assert openai_key_option(service_settings("solver", ["--backend", "scripted"])) == {}
    monkeypatch.delenv("SPARQ_OPENAI_API_KEY")
    key_file = tmp_path / "key"
    key_file.write_text("sk-file-789\n")
    from_file = service_settings("novelty", ["--backend", "openai", "--openai-api-key-file", str(key_file)])
    assert openai_key_option(from_file) == {"api_key": "sk-file-789"}
    with pytest.raises(ConfigError, match="openai_api_key_file .*cannot read it"):
        service_settings("novelty", ["--openai-api-key-file", str(tmp_path / "missing")])
    bad = tmp_path / "bad.toml"
    bad.write_text("openai_api_key = 12345678\n")
    with pytest.raises(ConfigError) as err:
        service_settings("solver", config=bad)
    assert "12345678" not in str(err.value) and "openai_api_key" in str(err.value)


def test_sparq_up_hands_the_key_to_the_children_by_environment_or_file_never_argv(tmp_path: Path) -> None:
    seeds = tmp_path / "s.jsonl"
    config = UpConfig(seeds=seeds, out=tmp_path / "run", steps=1, backend="openai", openai_api_key=SecretStr("sk-up-111"))
    files = [write_settings_file(s, tmp_path / f"{n}.json").read_text() for n, s in run_settings(config, "p", "h:1").items()]
    assert all("sk-up-111" not in text and "openai_api_key\"" not in text for text in files)
    assert service_env(config) == {"SPARQ_OPENAI_API_KEY": "sk-up-111"}
    assert "sk-up-111" not in json.dumps(config.model_dump(mode="json"))  # what run.json records
    key_file = tmp_path / "key"
    key_file.write_text("sk-up-222")
    by_file = UpConfig(seeds=seeds, out=tmp_path / "run", steps=1, backend="openai", openai_api_key_file=key_file)
    settings = run_settings(by_file, "p", "h:1")
    for name in ("mutator", "novelty", "solver"):
        assert settings[name].openai_api_key_file == key_file.resolve()
    files = [write_settings_file(s, tmp_path / f"{n}.json").read_text() for n, s in settings.items()]
    assert service_env(by_file) == {} and all("sk-up-222" not in text for text in files)
