"""CLI errors: one line naming what is wrong, a non-zero exit, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def _sparq(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "sparq_stream.cli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["tail", "seeds", "-b", "127.0.0.1:1"], "error: no Kafka broker reachable at 127.0.0.1:1"),
        (["seed", "/nonexistent/seeds.jsonl", "-b", "127.0.0.1:1"], "error: seed file /nonexistent/seeds.jsonl does not exist"),
        (["run", "nosuch", "-b", "127.0.0.1:1"], "error: unknown service 'nosuch'; allowed: "),
        (["run", "relay", "-b", "127.0.0.1:1", "--bogus", "1"], "error: unknown setting --bogus; allowed: "),
        (
            ["run", "relay", "-b", "127.0.0.1:1", "--processing-guarantee", "maybe"],
            "error: setting 'processing_guarantee': Input should be 'at_least_once' or 'exactly_once' (got 'maybe')",
        ),
        (["topics", "create", "-b", "nohostport"], "error: bootstrap 'nohostport' is not host:port"),
        (["export", "--archive", "/nonexistent"], "error: archive folder /nonexistent does not exist"),
        (["train", "--data", "/nonexistent.jsonl"], "error: training data /nonexistent.jsonl does not exist"),
        (["train", "--data", "/x", "--method", "qlora"], "error: --method: got 'qlora'; allowed: lora, full"),
        (["eval", "--heldout", "/nonexistent.jsonl"], "error: held-out file /nonexistent.jsonl does not exist"),
        (["skills", "build", "--seeds", "/nonexistent.jsonl"], "error: seed file /nonexistent.jsonl does not exist"),
        (["report", "/nonexistent"], "error: /nonexistent holds no archive/ folder"),
        (["settings", "nosuch"], "error: unknown service 'nosuch'; allowed: archivist, mutator"),
        (["up", "--seeds", "/nonexistent.jsonl", "--steps", "1"], "error: seed file /nonexistent.jsonl does not exist"),
        (["up", "--seeds", "/nonexistent.jsonl", "--variant", "best"], "error: option 'variant': Input should be"),
        (["up", "--seeds", __file__, "--steps", "1", "--out", __file__], f"error: --out {__file__} is a file, not a folder"),
        (["up", "--seeds", __file__, "--steps", "1", "--out", f"{__file__}/sub"], f"error: --out {__file__}/sub: cannot create the folder"),
    ],
)
def test_errors_are_one_line_without_traceback(args: list[str], message: str) -> None:
    done = _sparq(*args)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(message), done.stderr


def test_env_fallback_is_used(tmp_path: Path) -> None:
    done = _sparq("tail", "seeds", env={"SPARQ_BOOTSTRAP": "127.0.0.1:2"})
    assert done.stderr.strip() == "error: no Kafka broker reachable at 127.0.0.1:2"


def test_every_command_has_help() -> None:
    for cmd in (["--help"], ["broker", "--help"], ["topics", "create", "--help"], ["topics", "describe", "--help"],
                ["seed", "--help"], ["tail", "--help"], ["run", "--help"], ["schemas", "--help"], ["up", "--help"],
                ["verify", "--help"], ["export", "--help"], ["train", "--help"], ["eval", "--help"], ["report", "--help"],
                ["skills", "build", "--help"], ["settings", "--help"]):
        done = _sparq(*cmd)
        assert done.returncode == 0 and "Usage" in done.stdout, cmd


@pytest.mark.parametrize(
    "args, message",
    [
        (["topics", "create", "--partitions", "x"], "Error: Invalid value for '--partitions'"),
        (["nosuchcommand"], "Error: No such command 'nosuchcommand'."),
    ],
)
def test_usage_errors_are_short(args: list[str], message: str) -> None:
    done = _sparq(*args)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and message in done.stderr


def test_settings_file_supplies_bootstrap_and_shared_files_are_accepted(tmp_path: Path) -> None:
    cfg = tmp_path / "sparq.toml"
    cfg.write_text('bootstrap = "127.0.0.1:3"\nprefix = "fromfile"\nsome_service_setting = 4\n')
    done = _sparq("tail", "seeds", env={"SPARQ_CONFIG": str(cfg)})
    assert done.stderr.strip() == "error: no Kafka broker reachable at 127.0.0.1:3"
    strict = _sparq("run", "relay", env={"SPARQ_CONFIG": str(cfg)})
    assert strict.stderr.strip() == "error: setting 'some_service_setting': unknown setting (got 4)"


def test_up_without_a_broker_fails_in_one_line_and_leaves_no_run_json(tmp_path: Path) -> None:
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text('{"question": "What is 2+2?", "answer": "#### 4"}\n')
    out = tmp_path / "run"
    done = _sparq("up", "--seeds", str(seeds), "--steps", "1", "--out", str(out), "-b", "127.0.0.1:1", "--backend", "scripted")
    assert done.returncode == 1
    assert done.stderr.strip() == "error: no Kafka broker reachable at 127.0.0.1:1"
    assert not (out / "run.json").exists()
