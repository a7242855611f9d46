"""A secured Apache Kafka node (SASL/SCRAM-SHA-512 + ACLs, ``run-kafka.sh --auth scram``): who may do what.

One secured broker for the module. Only logged-in clients get in; ``sparq topics create --acls``
grants each service's principal its topics, groups and transactional ids and ``reader`` read-only
access; the scripted loop runs with each service as its own principal (two of them exactly-once,
so their transactional ids are checked too) and ends equal to the in-memory reference; afterwards
``reader`` reads every topic (in its own consumer groups, not a service's) and every one of its
writes is refused, and no service may write another service's output.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any, Iterator

import pytest
from typer.testing import CliRunner

from sparq_stream.bus.client import make_producer
from sparq_stream.cli import app
from sparq_stream.bus.topics import LOGICAL_TOPICS, TopicNames, writers_of
from sparq_stream.drill.common import compare_with_reference, result_checks
from sparq_stream.errors import BrokerUnavailable
from sparq_stream.orchestrator.local import run_local
from sparq_stream.orchestrator.up import run_up
from sparq_stream.settings import ServiceSettings

from ._util import start_or_skip
from ._secured import WRITTEN, count_records, elites_as, login, loop_config, refused_writes

pytestmark = [pytest.mark.broker, pytest.mark.slow]



@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Apache Kafka node with --auth scram for the module (an ``ApacheKafka``; logins in ``clients_dir``)."""
    from sparq_stream.brokers.apache import ApacheKafka

    broker = ApacheKafka(workdir=tmp_path_factory.mktemp("kafka-secured"), auth="scram")
    start_or_skip(broker, "a secured Apache Kafka")
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def secured_run(secured: Any, shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The scripted loop on the secured node, each service logged in as itself (solver and archivist exactly-once)."""
    eos = ["--processing-guarantee", "exactly_once"]
    extra = {"mutator": ["--chunk-size", "16"], "solver": eos, "archivist": eos}
    config = loop_config(shared_data, tmp_path_factory.mktemp("secured-run") / "run", secured.bootstrap, secured.clients_dir,
                         extra=extra)  # fmt: skip
    reference = run_local(loop_config(shared_data, tmp_path_factory.mktemp("secured-ref"), None, None, prefix=None, extra=extra))
    return config, run_up(config), reference


def test_the_node_writes_one_private_login_per_principal(secured: Any) -> None:
    clients = secured.clients_dir
    assert sorted(p.stem for p in clients.glob("*.properties")) == sorted(
        ["admin", "mutator", "novelty", "solver", "archivist", "trainer", "reader"])  # fmt: skip
    for path in [*clients.glob("*.properties"), secured.workdir / "secrets.env", secured.workdir / "server.properties"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    text = (clients / "reader.properties").read_text()
    assert "security.protocol=SASL_PLAINTEXT" in text and "sasl.mechanism=SCRAM-SHA-512" in text
    assert 'ScramLoginModule required username="reader" password="' in text
    props = (secured.workdir / "server.properties").read_text().splitlines()
    assert "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer" in props
    assert "allow.everyone.if.no.acl.found=false" in props and "super.users=User:admin;User:controller" in props


def test_an_anonymous_client_or_a_wrong_password_is_refused(secured: Any, prefix: str, tmp_path: Path) -> None:
    with pytest.raises(BrokerUnavailable):
        make_producer(ServiceSettings(bootstrap=secured.bootstrap, prefix=prefix, connect_timeout_s=3.0))
    wrong = tmp_path / "reader.properties"
    wrong.write_text((secured.clients_dir / "reader.properties").read_text().replace('password="', 'password="x'))
    with pytest.raises(BrokerUnavailable, match="refused the SCRAM-SHA-512 login of user 'reader'"):
        make_producer(ServiceSettings(bootstrap=secured.bootstrap, prefix=prefix, kafka_client_config=wrong, connect_timeout_s=3.0))


def test_topics_create_acls_needs_the_admin_login_and_grants_by_role(secured: Any, prefix: str) -> None:
    clients, runner = secured.clients_dir, CliRunner()
    base = ["topics", "create", "-b", secured.bootstrap, "--prefix", prefix]
    done = runner.invoke(app, [*base, "--kafka-client-config", str(clients / "admin.properties"), "--acls"])
    assert done.exit_code == 0, done.output
    assert f"acl User:reader READ topic {prefix}.*" in done.output
    assert f"acl User:solver WRITE topic {prefix}.solved" in done.output
    again = runner.invoke(app, [*base, "--kafka-client-config", str(clients / "admin.properties"), "--acls"])
    assert again.exit_code == 0 and "all topics already exist" in again.output, again.output  # a rerun (resume) is fine
    # a service's login may neither create topics nor grant anything (only the admin may)
    refused = runner.invoke(app, [*base, "--kafka-client-config", str(clients / "reader.properties"), "--acls"])
    assert refused.exit_code != 0 and "ACL(s) not created" in str(refused.exception)
    other = base[:-1] + [prefix + "x"]
    refused = runner.invoke(app, [*other, "--kafka-client-config", str(clients / "solver.properties")])
    assert refused.exit_code != 0 and "not allowed to create topic" in str(refused.exception)
    names = TopicNames(prefix)
    result = refused_writes(secured.bootstrap, clients, "solver", [names.solved, names.elites])
    assert result[names.solved].startswith("written at") and result[names.elites] == "refused", result


def test_the_loop_runs_secured_and_ends_equal_to_the_reference(secured_run: Any, secured: Any) -> None:
    config, up, reference = secured_run
    assert up.reason == "budget reached", up.detail
    assert not up.restarts, up.restarts  # no service was refused anything it needs
    reader = login(secured.bootstrap, up.prefix, secured.clients_dir, "reader")
    diff = compare_with_reference(reference, config.out / "archive", elites_as(reader))
    assert all(result_checks(diff).values()), diff
    run_json = (config.out / "run.json").read_text()
    for service in ("mutator", "novelty", "solver", "archivist", "trainer"):  # each logged in as itself, by file
        log = next((config.out / "logs").glob(f"{service}*.log")).read_text()  # solver-0.log for the solver
        assert f"kafka_client_config={(secured.clients_dir / f'{service}.properties').resolve()}" in log
    for principal in ("admin", "solver", "reader"):  # no password in the run's record or logs
        secret = _password(secured.clients_dir / f"{principal}.properties")
        assert secret not in run_json
        assert not any(secret in p.read_text(errors="replace") for p in (config.out / "logs").glob("*.log"))


def test_the_reader_reads_every_topic_and_each_of_its_writes_is_refused(secured_run: Any, secured: Any) -> None:
    _, up, _ = secured_run
    names = TopicNames(up.prefix)
    reader = login(secured.bootstrap, up.prefix, secured.clients_dir, "reader")
    counts = {t: count_records(reader, names.topic(t)) for t in LOGICAL_TOPICS}
    assert all(counts[t] > 0 for t in WRITTEN), counts
    assert refused_writes(secured.bootstrap, secured.clients_dir, "reader", names.all()) == {t: "refused" for t in names.all()}


def test_no_service_may_write_another_services_output(secured_run: Any, secured: Any) -> None:
    _, up, _ = secured_run
    names = TopicNames(up.prefix)
    for service in ("mutator", "novelty", "solver", "archivist", "trainer"):
        foreign = [names.topic(t) for t in LOGICAL_TOPICS if service not in writers_of(t)]
        assert foreign and refused_writes(secured.bootstrap, secured.clients_dir, service, foreign) == {t: "refused" for t in foreign}
    # e.g. the solver cannot put a problem into W: only the archivist writes elites
    assert refused_writes(secured.bootstrap, secured.clients_dir, "solver", [names.elites]) == {names.elites: "refused"}


def _password(path: Path) -> str:
    line = next(ln for ln in path.read_text().splitlines() if ln.startswith("sasl.jaas.config="))
    return line.split('password="', 1)[1].split('"', 1)[0]


def test_the_reader_consumes_in_its_own_groups_only(secured_run: Any, secured: Any) -> None:
    from kafka.errors import GroupAuthorizationFailedError

    from sparq_stream.bus.client import make_consumer
    from sparq_stream.bus.topics import READER_GROUP_INFIX

    _, up, _ = secured_run
    reader = login(secured.bootstrap, up.prefix, secured.clients_dir, "reader")
    consumer = make_consumer(reader, f"{up.prefix}.{READER_GROUP_INFIX}dashboard", TopicNames(up.prefix).solved)
    try:
        seen = 0
        for _ in range(50):
            seen += sum(len(batch) for batch in consumer.poll(timeout_ms=200).values())
            if seen:
                break
        consumer.commit()  # its offsets are its own
        assert seen > 0
    finally:
        consumer.close(autocommit=False)
    intruder = make_consumer(reader, f"{up.prefix}.solver", TopicNames(up.prefix).solved)  # the solver's group
    try:
        with pytest.raises(GroupAuthorizationFailedError):
            for _ in range(50):
                intruder.poll(timeout_ms=200)
    finally:
        intruder.close(autocommit=False)
