"""`sparq broker --host 0.0.0.0 --advertised-host NAME`: clients are told NAME, never 0.0.0.0."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys

import pytest
from kafka import KafkaAdminClient

from sparq_stream.brokers.tansu import EmbeddedBroker, wait_for_kafka

pytestmark = pytest.mark.broker


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("0.0.0.0", 0))
        return int(sock.getsockname()[1])


def _advertised(bootstrap: str) -> set[tuple[str, int]]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        return {(b["host"], b["port"]) for b in admin.describe_cluster()["brokers"]}
    finally:
        admin.close()


def test_the_cli_broker_advertises_the_given_host_while_listening_on_every_address() -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "sparq_stream.cli", "broker", "--host", "0.0.0.0", "--advertised-host", "localhost", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        line = proc.stdout.readline().strip()  # printed once the broker answers
        assert line == f"localhost:{port}", proc.stderr.read() if proc.poll() is not None else line
        assert _advertised(f"127.0.0.1:{port}") == {("localhost", port)}
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0


def test_listening_on_every_address_with_no_advertised_host_advertises_loopback_not_0_0_0_0() -> None:
    with EmbeddedBroker(host="0.0.0.0") as broker:
        assert broker.bootstrap == f"127.0.0.1:{broker.port}"
        wait_for_kafka(broker.bootstrap, 30)
        assert _advertised(broker.bootstrap) == {("127.0.0.1", broker.port)}
    assert not broker.running
