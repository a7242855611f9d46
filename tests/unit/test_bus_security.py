"""Kafka logins from Java client properties files, and the ACL table derived from the topics' roles (no broker)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sparq_stream.security import (
    PRINCIPALS,
    SERVICE_PRINCIPALS,
    client_security_options,
    parse_jaas_config,
    principal_file,
    read_properties,
)
from sparq_stream.bus.topics import (
    ALL_SERVICES,
    LOGICAL_TOPICS,
    READER_GROUP_INFIX,
    TOPIC_SPECS,
    acl_grants,
    readers_of,
    writers_of,
)
from sparq_stream.errors import ConfigError
from sparq_stream.settings import KafkaSettings, ServiceSettings, load_settings

SCRAM = "org.apache.kafka.common.security.scram.ScramLoginModule"
PLAIN = "org.apache.kafka.common.security.plain.PlainLoginModule"


def _file(tmp_path: Path, text: str, name: str = "c.properties") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _scram(user: str = "solver", password: str = "s3cr=t;x y") -> str:
    return (
        "# a comment\n! another\n\n"
        "security.protocol = SASL_PLAINTEXT\n"
        "sasl.mechanism:SCRAM-SHA-512\n"
        f'sasl.jaas.config={SCRAM} required \\\n    username="{user}" \\\n    password="{password}";\n'
        "client.id=java-tool\n"
    )


def test_a_run_kafka_client_file_becomes_kafka_python_options(tmp_path: Path) -> None:
    opts = client_security_options(_file(tmp_path, _scram()))
    assert opts == {
        "security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "solver", "sasl_plain_password": "s3cr=t;x y",
    }  # fmt: skip


def test_java_properties_syntax_comments_continuations_separators_and_escapes(tmp_path: Path) -> None:
    text = "a=1\n  b : 2\nc 3\nd=x\\\n  y\ne=\\u0041\\tz\n# f=no\nkey\\=with\\:colon=v\nempty=\n"
    assert read_properties(_file(tmp_path, text)) == {
        "a": "1", "b": "2", "c": "3", "d": "xy", "e": "A\tz", "key=with:colon": "v", "empty": "",
    }  # fmt: skip


def test_jaas_config_options_quoted_or_bare() -> None:
    module, options = parse_jaas_config(f'{PLAIN} required username=bob password="a b\\"c" extra="1";')
    assert module == PLAIN and options == {"username": "bob", "password": 'a b"c', "extra": "1"}


@pytest.mark.parametrize(
    "text, named",
    [
        ("security.protocol=SASL_TLS\n", "security.protocol"),
        ("security.protocol=SASL_PLAINTEXT\nsasl.jaas.config=x required;\n", "sasl.mechanism"),
        ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=GSSAPI\n", "sasl.mechanism GSSAPI"),
        ("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n", "sasl.jaas.config is missing"),
        (f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config={SCRAM} required username=\"a\"\n",
         "sasl.jaas.config: must end with ';'"),
        (f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config={SCRAM} required username=\"a\";\n",
         "sasl.jaas.config has no password"),
        (f"security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\nsasl.jaas.config={PLAIN} required username=a password=b;\n",
         "sasl.mechanism SCRAM-SHA-512 needs"),
        ("security.protocol=PLAINTEXT\nsasl.mechanism=PLAIN\n", "sasl.* keys need security.protocol"),
        ("security.protocol=SSL\nssl.truststore.location=ca.jks\n", "ssl.truststore.type JKS"),
        ("security.protocol=SSL\nssl.truststore.type=PEM\nssl.truststore.location=missing.pem\n", "ssl.truststore.location"),
        ("sasl.login.callback.handler.class=x.Y\n", "unsupported key(s) sasl.login.callback.handler.class"),
    ],
)
def test_a_bad_client_file_names_the_key_and_never_the_password(tmp_path: Path, text: str, named: str) -> None:
    path = _file(tmp_path, text.replace('password=b', 'password=hunter2'))
    with pytest.raises(ConfigError) as err:
        client_security_options(path)
    assert named in str(err.value) and str(path) in str(err.value)
    assert "hunter2" not in str(err.value) and not err.value.retriable


def test_a_pem_trust_store_beside_the_file_and_hostname_checks(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    text = _scram().replace("SASL_PLAINTEXT", "SASL_SSL") + "ssl.truststore.type=PEM\nssl.truststore.location=ca.pem\n"
    opts = client_security_options(_file(tmp_path, text + "ssl.endpoint.identification.algorithm=\n"))
    assert opts["security_protocol"] == "SASL_SSL" and opts["ssl_cafile"] == str(tmp_path / "ca.pem")
    assert opts["ssl_check_hostname"] is False


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        client_security_options(tmp_path / "nope.properties")
    with pytest.raises(ConfigError, match="no solver.properties"):
        principal_file(tmp_path, "solver")


def test_settings_take_the_file_from_a_flag_or_the_environment_and_its_login_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _file(tmp_path, _scram("novelty", "pw1"))
    from_flag = load_settings(ServiceSettings, args=["--kafka-client-config", str(path), "--sasl-plain-username", "other"])
    opts = from_flag.client_options()
    assert (opts["sasl_plain_username"], opts["sasl_plain_password"], opts["security_protocol"]) == ("novelty", "pw1", "SASL_PLAINTEXT")
    monkeypatch.setenv("SPARQ_KAFKA_CLIENT_CONFIG", str(path))
    assert load_settings(KafkaSettings).client_options()["sasl_plain_username"] == "novelty"
    monkeypatch.setenv("SPARQ_KAFKA_CLIENT_CONFIG", str(tmp_path / "gone.properties"))
    with pytest.raises(ConfigError, match="gone.properties does not exist"):  # a bad file fails when the settings are made
        load_settings(KafkaSettings)


def test_a_password_is_never_a_flag() -> None:
    with pytest.raises(ConfigError, match="is a secret and is never a flag"):
        load_settings(ServiceSettings, args=["--sasl-plain-password", "pw"])


# ---------------------------------------------------------------------- the ACL table
def test_every_topic_has_writers_and_every_service_principal_exists() -> None:
    assert set(SERVICE_PRINCIPALS) == set(ALL_SERVICES) and set(ALL_SERVICES) < set(PRINCIPALS)
    for spec in TOPIC_SPECS:
        assert set(spec.writers) | set(spec.readers) <= set(ALL_SERVICES) | {"*"}, spec.name
        assert spec.writers or spec.name == "seeds", f"{spec.name}: nobody writes it"  # seeds: the operator (admin)
        assert spec.readers or spec.name in ("metrics", "dlq"), f"{spec.name}: nobody reads it"


def test_each_service_gets_exactly_its_topics_groups_and_transactional_ids() -> None:
    grants = acl_grants("run1")
    assert len(grants) == len(set(grants))
    for service in ALL_SERVICES:
        mine = [g for g in grants if g.principal == service]
        writes = {g.name for g in mine if g.resource == "topic" and g.operation == "WRITE"}
        reads = {g.name for g in mine if g.resource == "topic" and g.operation == "READ"}
        assert writes == {f"run1.{t}" for t in LOGICAL_TOPICS if service in writers_of(t)}
        assert reads == {f"run1.{t}" for t in LOGICAL_TOPICS if service in readers_of(t)}
        assert {"run1.dlq", "run1.metrics"} <= writes
        assert all(g.pattern == "literal" for g in mine if g.resource == "topic")
        groups = {(g.name, g.pattern, g.operation) for g in mine if g.resource == "group"}
        assert groups == {(f"run1.{service}", "literal", "READ"), (f"run1.{service}.", "prefixed", "READ")}
        txns = {(g.name, g.pattern, g.operation) for g in mine if g.resource == "transactional_id"}
        assert txns == {(f"run1.{service}.", "prefixed", "WRITE")}
    # nobody but the archivist writes elites; the solver writes only its own output and the shared sinks
    assert {g.principal for g in grants if g.name == "run1.elites" and g.operation == "WRITE"} == {"archivist"}
    assert {g.name for g in grants if g.principal == "solver" and g.operation == "WRITE" and g.resource == "topic"} == {
        "run1.solved", "run1.dlq", "run1.metrics"}  # fmt: skip


def test_the_reader_reads_every_topic_and_writes_nothing() -> None:
    mine = [g for g in acl_grants("run1") if g.principal == "reader"]
    assert {(g.resource, g.name, g.pattern, g.operation) for g in mine} == {
        ("topic", "run1.", "prefixed", "READ"), ("group", f"run1.{READER_GROUP_INFIX}", "prefixed", "READ"),
    }  # fmt: skip
    assert not any(g.principal == "admin" for g in acl_grants("run1"))  # the super user needs none


def test_the_wire_contract_names_no_writer_or_reader_the_acls_would_refuse() -> None:
    """docs/wire.md's topic table (sparq_stream/wire_doc.py) may say less than TOPIC_SPECS, never more."""
    from sparq_stream.wire_doc import TOPICS

    assert set(TOPICS) == set(LOGICAL_TOPICS)
    for topic, doc in TOPICS.items():
        for cell, allowed in ((doc.writers, writers_of(topic)), (doc.readers, readers_of(topic))):
            named = set(ALL_SERVICES) if "every service" in cell else {s for s in ALL_SERVICES if s in cell}
            assert named <= set(allowed), f"{topic}: the wire doc names {sorted(named - set(allowed))}, not granted"


def test_up_gives_each_service_its_own_principal_file(tmp_path: Path) -> None:
    from sparq_stream.orchestrator.up import UpConfig, run_settings
    from sparq_stream.settings import write_settings_file

    clients = tmp_path / "clients"
    clients.mkdir()
    for name in PRINCIPALS:
        (clients / f"{name}.properties").write_text(_scram(name, "pw"))
    config = UpConfig(seeds=tmp_path / "s.jsonl", out=tmp_path / "out", steps=1, backend="scripted", bootstrap="h:1",
                      kafka_auth_dir=clients)  # fmt: skip
    for service, settings in run_settings(config, "p", "h:1").items():
        assert settings.kafka_client_config == (clients / f"{service}.properties").resolve()
        assert '"pw"' not in write_settings_file(settings, tmp_path / f"{service}.json").read_text()


def test_a_broken_jaas_value_is_named_by_its_key_never_shown() -> None:
    with pytest.raises(ConfigError) as err:
        parse_jaas_config(f'{SCRAM} required username="a" password="hunt"er2";')
    assert "after option 'password'" in str(err.value) and "hunt" not in str(err.value) and "er2" not in str(err.value)
