"""Pure backbone pieces: problem ids, seed parsing, settings, topic names, flags, dead-letter headers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparq_stream.bus.dlq import dead_letter_from_record, dlq_headers
from sparq_stream.bus.topics import COMPACTED, LOGICAL_TOPICS, TopicNames
from sparq_stream.core import Outgoing
from sparq_stream.errors import ConfigError, DecodeError, FatalError, RetriableError, SparqError
from sparq_stream.ids import normalise_text, problem_id
from sparq_stream.messages import Elite, Seed
from sparq_stream.seeds import BadLine, parse_seed_line, read_seeds
from sparq_stream.services import RelaySettings, service_settings, service_spec
from sparq_stream.settings import cli_values
from sparq_stream.settings import ServiceSettings, load_settings


def test_problem_id_is_a_hash_of_normalised_text() -> None:
    assert problem_id("What is  2+2?\n") == problem_id("what is 2+2?")
    assert problem_id("What is 2+2?") != problem_id("What is 2+3?")
    assert len(problem_id("x")) == 32 and int(problem_id("x"), 16) >= 0
    assert normalise_text("Ｆｕｌｌ  width\tTEXT ") == "full width text"


def test_gsm8k_and_math_lines_parse() -> None:
    gsm = parse_seed_line(json.dumps({"question": "Q?", "answer": "step <<1+1=2>>2\n#### 1,234"}), 3, "f")
    assert isinstance(gsm, Seed)
    assert (gsm.problem, gsm.answer, gsm.solution, gsm.line, gsm.source) == ("Q?", "1234", "step <<1+1=2>>2", 3, "f")
    assert gsm.id == problem_id("Q?")
    math = parse_seed_line(json.dumps({"problem": "P", "solution": "S \\boxed{\\frac12}", "answer": "\\frac12"}), 1)
    assert isinstance(math, Seed) and math.answer == "\\frac12" and math.solution.startswith("S")
    numeric = parse_seed_line(json.dumps({"problem": "P", "answer": 7}), 1)
    assert isinstance(numeric, Seed) and numeric.answer == "7"
    assert parse_seed_line("   ", 9) is None


@pytest.mark.parametrize(
    "line, reason",
    [
        ("{", "not JSON"),
        ("[1]", "expected a JSON object"),
        ('{"question": "Q"}', "needs a string 'answer'"),
        ('{"question": "Q", "answer": "no hashes"}', "has no '#### <final answer>'"),
        ('{"question": "Q", "answer": "x ####  "}', "has no '#### <final answer>'"),
        ('{"problem": "P"}', "no non-empty 'answer'"),
        ('{"problem": "  ", "answer": "1"}', "no non-empty 'question' or 'problem'"),
        ('{"problem": "P", "answer": "1", "solution": 3}', "'solution' must be a string"),
    ],
)
def test_bad_seed_lines_say_why(line: str, reason: str) -> None:
    bad = parse_seed_line(line, 12)
    assert isinstance(bad, BadLine) and bad.line == 12 and reason in bad.reason


def test_read_seeds_reads_both_shared_formats(shared_data: Path) -> None:
    gsm = list(read_seeds(shared_data / "gsm8k_test.jsonl"))
    math = list(read_seeds(shared_data / "math500_test.jsonl"))
    assert len(gsm) == 1319 and all(isinstance(s, Seed) for s in gsm)
    assert len(math) == 500 and all(isinstance(s, Seed) for s in math)
    with pytest.raises(ConfigError, match="does not exist"):
        list(read_seeds("/nonexistent.jsonl"))


def test_settings_precedence_flags_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "s.toml"
    cfg.write_text('prefix = "fromfile"\nmax_poll_records = 7\nsession-timeout-ms = 7000\n')
    monkeypatch.setenv("SPARQ_MAX_POLL_RECORDS", "9")
    s = load_settings(ServiceSettings, config=cfg)
    assert (s.prefix, s.max_poll_records, s.session_timeout_ms) == ("fromfile", 9, 7000)
    s = load_settings(ServiceSettings, config=cfg, prefix="flag", max_poll_records=11)
    assert (s.prefix, s.max_poll_records) == ("flag", 11)
    with pytest.raises(Exception):
        s.prefix = "frozen"  # type: ignore[misc]


def test_settings_errors_name_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="setting 'auto_offset_reset': Input should be 'earliest' or 'latest'"):
        load_settings(ServiceSettings, auto_offset_reset="middle")
    with pytest.raises(ConfigError, match="setting 'prefix'"):
        load_settings(ServiceSettings, prefix="bad prefix!")
    bad = tmp_path / "bad.toml"
    bad.write_text("typo_field = 1\n")
    with pytest.raises(ConfigError, match="setting 'typo_field': unknown setting"):
        load_settings(ServiceSettings, config=bad)
    with pytest.raises(ConfigError, match="unknown format"):
        load_settings(ServiceSettings, config=tmp_path / "s.ini") if (tmp_path / "s.ini").write_text("x") else None
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(ServiceSettings, config=tmp_path / "missing.yaml")


def test_security_settings_pass_through_untouched() -> None:
    s = ServiceSettings(
        bootstrap="a:1,b:2",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_plain_username="u",
        sasl_plain_password="hunter2-secret",
        ssl_cafile="/ca.pem",
        kafka_options={"request_timeout_ms": 1234, "sasl_kerberos_service_name": "kafka"},
    )
    opts = s.client_options()
    assert opts["bootstrap_servers"] == ["a:1", "b:2"]
    assert opts["security_protocol"] == "SASL_SSL" and opts["sasl_mechanism"] == "SCRAM-SHA-512"
    assert opts["sasl_plain_username"] == "u" and opts["sasl_plain_password"] == "hunter2-secret"
    assert opts["ssl_cafile"] == "/ca.pem" and opts["request_timeout_ms"] == 1234
    assert opts["sasl_kerberos_service_name"] == "kafka"
    assert "hunter2-secret" not in repr(s)  # secrets are not printed
    assert "security_protocol" not in ServiceSettings().client_options()


def test_topic_names() -> None:
    names = TopicNames("run1")
    assert names.seeds == "run1.seeds" and names.topic("dlq") == "run1.dlq"
    assert names.logical("run1.elites") == "elites" and names.logical("other.elites") is None
    assert names.resolve("solved") == "run1.solved" and names.resolve("custom.topic") == "custom.topic"
    assert len(names.all()) == len(LOGICAL_TOPICS) and COMPACTED == {"seeds", "novel", "elites", "archive", "models", "mutator-state"}
    with pytest.raises(ConfigError, match="unknown topic 'nope'; allowed: seeds, candidates"):
        names.topic("nope")


def test_flags_parse_into_settings() -> None:
    values = cli_values(RelaySettings, ["--source", "novel", "--target=solved", "--ssl-check-hostname", "--no-ssl-check-hostname"])
    assert values == {"source": "novel", "target": "solved", "ssl_check_hostname": False}
    settings = service_settings("relay", ["--source", "novel", "--max-poll-records", "5"], bootstrap="h:1", prefix="p")
    core = service_spec("relay").factory(settings)
    assert core.inputs == ("novel",) and settings.max_poll_records == 5 and settings.bootstrap == "h:1"
    with pytest.raises(ConfigError, match="needs a value"):
        cli_values(RelaySettings, ["--source"])
    with pytest.raises(ConfigError, match="unexpected argument 'stray'"):
        cli_values(RelaySettings, ["stray"])


def test_dead_letter_headers_round_trip() -> None:
    headers = dlq_headers(
        source_topic="p.seeds", partition=2, offset=41, error_type="DecodeError", error="bad", service="relay",
        original_headers=[("trace", b"t1"), ("sparq.dlq.offset", b"spoofed")],
    )
    letter = dead_letter_from_record(b"k", b"\x00raw", headers)
    assert (letter.source_topic, letter.partition, letter.offset) == ("p.seeds", 2, 41)
    assert (letter.error_type, letter.error, letter.service) == ("DecodeError", "bad", "relay")
    assert letter.original == b"\x00raw" and letter.original_key == b"k"
    assert ("trace", b"t1") in headers and ("sparq.dlq.offset", b"spoofed") not in headers


def test_errors_say_whether_retriable() -> None:
    assert RetriableError("x").retriable and not FatalError("x").retriable
    assert not DecodeError("x").retriable and not ConfigError("x").retriable
    assert SparqError("x", retriable=True).retriable


def test_outgoing_keys_default_to_problem_id_or_slot() -> None:
    seed = Seed(id="abc", problem="p", answer="1")
    assert Outgoing("seeds", seed).resolved_key() == "abc"
    assert Outgoing("seeds", seed, key="override").resolved_key() == "override"
    elite = Elite(id="i", problem="p", solution="s", answer="1", k=1, rollouts_used=1, n_correct=1, solve_rate=1.0, quality=0.0, slot="alg|geo")
    assert Outgoing("elites", elite).resolved_key() == "alg|geo"
    assert Outgoing("elites", None, key="alg|geo").resolved_key() == "alg|geo"
