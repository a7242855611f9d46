"""``run-kafka.sh --auth scram --tls``: SASL/SCRAM-SHA-512 over TLS (SASL_SSL) with a CA made by keytool.

The client files trust the generated CA (``ssl.truststore.type=PEM``); kafka-python checks the
broker's certificate and its host name (127.0.0.1 is in the certificate). A client without the CA,
or without a login, gets nowhere; with them, the ACLs hold as on SASL_PLAINTEXT.
"""

from __future__ import annotations

import stat
from typing import Any, Iterator

import pytest
from kafka import KafkaProducer

from sparq_stream.bus.client import publish_all
from sparq_stream.security import client_security_options
from sparq_stream.bus.topics import TopicNames, acl_grants, apply_acls, ensure_topics
from sparq_stream.errors import BrokerUnavailable
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed
from sparq_stream.settings import ServiceSettings

from ._util import start_or_skip
from ._secured import count_records, login, refused_writes

pytestmark = [pytest.mark.broker, pytest.mark.slow]



@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One Apache Kafka node with --auth scram --tls for the module."""
    from sparq_stream.brokers.apache import ApacheKafka

    broker = ApacheKafka(workdir=tmp_path_factory.mktemp("kafka-tls"), auth="scram", tls=True)
    start_or_skip(broker, "a TLS Apache Kafka")
    yield broker
    broker.stop()


def test_over_tls_only_logged_in_clients_that_trust_the_ca_get_in_and_acls_hold(tls_broker: Any, prefix: str) -> None:
    clients = tls_broker.clients_dir
    ca = tls_broker.workdir / "tls" / "ca.pem"
    text = (clients / "reader.properties").read_text()
    assert "security.protocol=SASL_SSL" in text and f"ssl.truststore.location={ca}" in text and "ssl.truststore.type=PEM" in text
    assert stat.S_IMODE((tls_broker.workdir / "tls" / "broker.p12").stat().st_mode) & 0o077 == 0
    opts = client_security_options(clients / "reader.properties")
    assert opts["security_protocol"] == "SASL_SSL" and opts["ssl_cafile"] == str(ca)
    with pytest.raises(BrokerUnavailable):  # no login, no TLS
        publish_all(ServiceSettings(bootstrap=tls_broker.bootstrap, prefix=prefix, connect_timeout_s=3.0), "x", [])
    untrusted = {k: v for k, v in opts.items() if k != "ssl_cafile"}  # the login, but not the CA: the handshake fails
    with pytest.raises(Exception):
        KafkaProducer(bootstrap_servers=tls_broker.bootstrap, bootstrap_timeout_ms=3000, **untrusted)
    admin = login(tls_broker.bootstrap, prefix, clients, "admin")
    ensure_topics(admin)
    apply_acls(admin, acl_grants(prefix))
    seeds = [Seed(id=problem_id(f"what is {n} + 1?"), problem=f"what is {n} + 1?", answer=str(n + 1)) for n in range(3)]
    publish_all(admin, TopicNames(prefix).seeds, seeds)  # the operator publishes the seeds
    names = TopicNames(prefix)
    written = refused_writes(tls_broker.bootstrap, clients, "solver", [names.solved, names.elites])
    assert written[names.solved].startswith("written at") and written[names.elites] == "refused", written
    reader = login(tls_broker.bootstrap, prefix, clients, "reader")
    assert (count_records(reader, names.seeds), count_records(reader, names.solved)) == (3, 1)
    assert refused_writes(tls_broker.bootstrap, clients, "reader", names.all()) == {t: "refused" for t in names.all()}
