"""One service hop through the process wrapper vs a raw kafka-python relay, same broker, same run.

Both relays read the same ~1 KB msgpack messages from one topic and write them to
another: poll up to 500, decode, re-encode, produce, wait for the acks, commit.
The raw relay only unpacks msgpack; the wrapper also validates every message into
its typed struct, keys outputs, checks each send and publishes metrics. Each relay
is timed from its first non-empty poll to its last commit (group joins excluded),
in alternating order; the median of the repeats is reported.

    python bench/bus_hop.py                  # embedded Tansu broker
    python bench/bus_hop.py --broker kafka   # real Apache Kafka (deploy/kafka)
    python bench/bus_hop.py --bootstrap host:9092
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Sequence

import msgpack
from kafka import KafkaConsumer, KafkaProducer

from sparq_stream.bus import ServiceProcess, create_topics
from sparq_stream.core import Inbound, Outgoing
from sparq_stream.cores.relay import RelayCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import Seed, encode
from sparq_stream.settings import ServiceSettings

TARGET = 0.8


def _fill(bootstrap: str, topic: str, n: int) -> int:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    size = 0
    for i in range(n):
        text = f"Problem {i}. " + "lorem ipsum " * 75
        msg = Seed(id=problem_id(text), problem=text, answer=str(i), solution="s" * 40)
        value = encode(msg)
        size += len(value)
        producer.send(topic, key=msg.id.encode(), value=value)
    producer.flush()
    producer.close()
    return size // n


def _raw_relay(bootstrap: str, source: str, target: str, n: int) -> float:
    consumer = KafkaConsumer(
        source, bootstrap_servers=bootstrap, group_id="raw-" + uuid.uuid4().hex[:8], enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=6000, heartbeat_interval_ms=500, fetch_max_wait_ms=100,
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    done = 0
    start = None
    while done < n:
        polled = consumer.poll(timeout_ms=200, max_records=500)
        if not polled:
            continue
        if start is None:
            start = time.perf_counter()
        for records in polled.values():
            for rec in records:
                body = msgpack.unpackb(rec.value, raw=False)
                producer.send(target, key=rec.key, value=msgpack.packb(body, use_bin_type=True))
                done += 1
        producer.flush()
        consumer.commit()
    elapsed = time.perf_counter() - (start or time.perf_counter())
    consumer.close()
    producer.close()
    return n / elapsed


class _TimedRelay(RelayCore):
    """The no-op relay core, noting when its first batch arrived."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(source, target)
        self.started: float | None = None

    def handle_batch(self, batch: Sequence[Inbound]) -> list[list[Outgoing]]:
        if self.started is None:
            self.started = time.perf_counter()
        return super().handle_batch(batch)


def _wrapper_relay(bootstrap: str, prefix: str, source: str, target: str, n: int) -> float:
    settings = ServiceSettings(
        bootstrap=bootstrap, prefix=prefix, group_id="wrap-" + uuid.uuid4().hex[:8], max_poll_records=500,
        metrics_interval_s=5.0,
    )
    core = _TimedRelay(source, target)
    proc = ServiceProcess(core, settings, install_signals=False)
    finished: list[float] = []

    def _until() -> bool:
        if proc.metrics.counters["consumed"] >= n and not finished:
            finished.append(time.perf_counter())
        return bool(finished)

    thread = threading.Thread(target=proc.run, kwargs={"until": _until})
    thread.start()
    thread.join()
    return n / (finished[0] - (core.started or finished[0]))


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark and print messages/s of both relays and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--broker", choices=["tansu", "kafka"], default="tansu")
    parser.add_argument("--bootstrap", default=None, help="use this broker instead of starting one")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.CRITICAL)
    with ExitStack() as stack:
        bootstrap = args.bootstrap
        if bootstrap is None:
            if args.broker == "tansu":
                from sparq_stream.brokers.tansu import EmbeddedBroker

                bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
            else:
                from sparq_stream.brokers.apache import ApacheKafka

                bootstrap = stack.enter_context(ApacheKafka()).bootstrap
        prefix = "bench" + uuid.uuid4().hex[:8]
        create_topics(ServiceSettings(bootstrap=bootstrap, prefix=prefix), partitions=3)
        size = _fill(bootstrap, f"{prefix}.seeds", args.messages)
        raw, wrapped = [], []
        for i in range(args.repeats):
            order = [("raw", raw), ("wrapper", wrapped)]
            for name, results in order if i % 2 == 0 else reversed(order):
                if name == "raw":
                    results.append(_raw_relay(bootstrap, f"{prefix}.seeds", f"{prefix}.candidates", args.messages))
                else:
                    results.append(_wrapper_relay(bootstrap, prefix, "seeds", "novel", args.messages))
        raw_m, wrap_m = statistics.median(raw), statistics.median(wrapped)
        ratio = wrap_m / raw_m
        print(f"broker: {args.broker if args.bootstrap is None else bootstrap}; {args.messages} messages of {size} bytes")
        print(f"raw kafka-python relay : {raw_m:9.0f} msg/s  (runs: {', '.join(f'{x:.0f}' for x in raw)})")
        print(f"wrapper hop (no-op core): {wrap_m:9.0f} msg/s  (runs: {', '.join(f'{x:.0f}' for x in wrapped)})")
        print(f"ratio wrapper/raw       : {ratio:9.2f}  (target >= {TARGET})")


if __name__ == "__main__":
    main()
