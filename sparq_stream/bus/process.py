"""The process wrapper shared by every service: consume, handle, produce, acknowledge, commit.

One loop iteration: poll a batch; decode each record (a record that does not decode
goes to the dead-letter topic); hand the decoded batch to the pure core; send its
outputs keyed by problem id; wait until the broker has acknowledged every send;
only then commit the input offsets (at-least-once). With
``processing_guarantee=exactly_once`` the outputs and the offsets go in one Kafka
transaction instead (honoured by Apache Kafka; Tansu accepts but does not honour it).
Everything a core returns, changelog writes included, is an ordinary output, so it goes in
the same transaction; a restarted replica with the same ``instance`` keeps the
transactional id ``<group>.<instance>`` and fences its predecessor.

:class:`ServiceProcess` composes parts with one job each:

- :class:`~sparq_stream.bus.lifecycle.Lifecycle`: SIGTERM/SIGINT finish the batch in flight,
  commit, close and return 0; a watchdog ends the process ``shutdown_timeout_s`` after the
  signal whatever it is blocked on, without committing.
- :class:`~sparq_stream.bus.intake.Intake`: the input consumer, its polls, its membership,
  and a batch held after a failed delivery (resent as it is, input paused meanwhile).
- :class:`~sparq_stream.bus.handling.Handler`: retriable errors back off and retry; other
  errors dead-letter only the culprit message, whose offset is committed all the same.
- :class:`~sparq_stream.bus.delivery.Delivery` (with :class:`~sparq_stream.bus.placement.Placement`
  and :class:`~sparq_stream.bus.producer.ProducerSlot`): produce, acknowledge, commit or
  transact, dead letters, refused records, producer replacement.
- :class:`~sparq_stream.bus.tables.TableFollower`: table topics read whole on start, then followed.
- :class:`~sparq_stream.bus.ending.Ending`: end markers of a bounded run read, written and forwarded
  behind the outputs, commits held at a marker not forwarded yet (:mod:`sparq_stream.bus.markers`).
- :class:`~sparq_stream.bus.role.Role`: one active replica and hot standbys for an ``exclusive`` core.
- :class:`~sparq_stream.bus.telemetry.MetricsPublisher` and ``/metrics``, ``/healthz``,
  ``/readyz`` (with ``http_port``) from the start, the model load included.

A core given as a builder (:func:`serve_service`) is built, its models loaded, in a worker
thread with progress lines; a signal during that load exits at once with ``128 + signal``
(:mod:`sparq_stream.bus.loading`).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from sparq_stream.bus.context import ProcessContext
from sparq_stream.bus.delivery import Delivery
from sparq_stream.bus.ending import Ending
from sparq_stream.bus.handling import Handler
from sparq_stream.bus.intake import HeldBatch, Intake
from sparq_stream.bus.loading import load_in_thread
from sparq_stream.bus.ops_http import OpsServer
from sparq_stream.bus.producer import ProducerSlot
from sparq_stream.bus.records import DeadLetter, UnexpectedTombstone, decode_record, to_inbound
from sparq_stream.bus.role import Role
from sparq_stream.bus.tables import TableFollower
from sparq_stream.bus.telemetry import MetricsPublisher, serve_ops
from sparq_stream.core import Core, Inbound, Outgoing
from sparq_stream.errors import SparqError
from sparq_stream.settings import ServiceSettings

__all__ = ["ServiceProcess", "UnexpectedTombstone", "run_service", "serve_service"]


class ServiceProcess:
    """Runs one core against Kafka; the same code for every service (a :class:`~sparq_stream.bus.runner.Runner`).

    Give the core, or ``build`` (a function that builds it, loading its models) and ``name``:
    then :meth:`run` builds it in a worker thread first, serving the probes meanwhile.
    """

    def __init__(
        self,
        core: Core | None,
        settings: ServiceSettings,
        *,
        install_signals: bool = True,
        build: Callable[[], Core] | None = None,
        name: str | None = None,
    ) -> None:
        if (core is None) == (build is None) or (core is None and name is None):
            raise ValueError("give either a core, or build and name")
        self.core: Core = core  # type: ignore[assignment]  # built by run() when None
        self._build = build
        self.name = core.name if core is not None else str(name)
        self.settings = settings
        self.ctx = ProcessContext.create(self.name, settings)
        self.log, self.metrics, self.probes, self.lifecycle = self.ctx.log, self.ctx.metrics, self.ctx.probes, self.ctx.lifecycle
        self.ops: OpsServer | None = None
        self._install_signals = install_signals
        if core is not None:
            self._assemble(core)

    def _assemble(self, core: Core) -> None:
        """Make the parts that serve ``core`` (its role settles the consumer group first)."""
        ctx = self.ctx
        self.role = Role(ctx, core)
        self.producers = ProducerSlot(ctx, self.role.transactional_id)
        self.intake = Intake(ctx)
        self.delivery = Delivery(ctx, self.producers, lambda: self.intake.consumer)
        self.tables = TableFollower(ctx, core, self.delivery)
        self.handler = Handler(ctx, core)
        self.ending = Ending(ctx, core)
        self.telemetry = MetricsPublisher(ctx, core, self.producers, self.intake, self.tables, self.role)

    @property
    def group_id(self) -> str:
        """The consumer group of the inputs (``<prefix>.<name>``, or ``<prefix>.<name>.<member>``)."""
        return self.ctx.group_id

    def stop(self) -> None:
        """Ask the loop to finish the batch in flight, commit and exit (thread- and signal-safe)."""
        self.lifecycle.stop()

    @property
    def stopping(self) -> bool:
        """True once a stop was requested."""
        return self.lifecycle.stopping

    def run(self, until: Callable[[], bool] | None = None, max_idle_s: float | None = None) -> int:
        """Run until stopped (signal, :meth:`stop`, ``until()`` true, or idle for ``max_idle_s``); return 0."""
        if self._install_signals:
            self.lifecycle.install_signals()
        opened = False
        try:
            if self.ops is None:
                self.ops = serve_ops(self.ctx)
            if self._build is not None:
                self.core = load_in_thread(
                    self._build, what=f"the {self.name} core", log=self.log, on_wait=self.probes.beat, exit_on_signal=self._install_signals
                )
                self._build = None
                self._assemble(self.core)
            self.probes.met("model")
            self._open()
            opened = True
            self.log.info(
                "%s running: group=%s instance=%s inputs=%s tables=%s guarantee=%s",
                self.name, self.group_id, self.settings.instance, list(self.core.inputs), list(self.core.tables),
                self.settings.processing_guarantee,
            )
            self._loop(until, max_idle_s)
        finally:
            if opened:
                try:
                    self.telemetry.publish(force=True)
                except Exception as exc:
                    self.log.warning("final metrics: %s", exc)
            if self._build is None:
                self.core.close()
                self._close()
            if self.ops is not None:
                self.ops.close()
                self.ops = None
            self.log.info("%s stopped", self.name)
        return 0

    def _loop(self, until: Callable[[], bool] | None, max_idle_s: float | None) -> None:
        last_input = time.monotonic()
        while not self.lifecycle.stopping:
            if self._step():
                last_input = time.monotonic()
            elif max_idle_s is not None and time.monotonic() - last_input > max_idle_s:
                self.log.info("idle for %.1fs: stopping", max_idle_s)
                break
            if until is not None and until():
                break

    def _open(self) -> None:
        topics = [self.ctx.names.resolve(t) for t in self.core.inputs]
        self.producers.open()
        if topics:
            self.intake.open(topics, self.role.assignor(), self.role.lease)
        self.role.open(has_inputs=bool(topics))
        self.tables.open(defer_restore=self.role.exclusive)  # a standby follows in every step; it reads to the end on taking over
        self.probes.met("tables")
        if self.intake.consumer is None:
            self.probes.met("partitions")

    def _close(self) -> None:
        bound_s = min(self.settings.client_timeout_s, self.settings.shutdown_timeout_s / 2)
        for what, part in (("_consumer", self.intake), ("_tables", self.tables), ("_lease_consumer", self.role)):
            if part.consumer is not None:
                try:
                    part.consumer.close(autocommit=False, timeout_ms=int(bound_s * 1000))
                except Exception as exc:  # closing must not mask the real exit reason
                    self.log.warning("closing %s: %s", what, exc)
                part.consumer = None
        self.producers.close(bound_s)

    def _step(self) -> bool:
        """Run one poll-handle-produce-commit cycle; return True if it consumed input."""
        self.probes.beat()
        intake = self.intake
        if intake.held is not None:
            intake.redeliver(self.delivery)
            if intake.held is None:
                self.ending.delivered()
            self.telemetry.publish()
            return False
        if intake.consumer is None and self.role.consumer is not None:
            records: list[Any] = []
            self.role.poll_lease()  # waits the poll timeout
        else:
            records = intake.poll(self.tables)
        if intake.consumer is not None:
            intake.watch_membership()
            if intake.consumer.assignment() or self.role.joined:  # a standby has joined
                self.probes.met("partitions")
            else:
                self.probes.waiting("partitions")
            self.metrics.set("in_flight", len(records))
        if self.role.exclusive and not self.role.check(self.producers, self.tables):
            self.tables.poll()  # a hot standby: follow the tables, handle nothing
            self.telemetry.publish()
            return False
        self.tables.poll()
        offsets, inbound, dead, markers = self._decode(records)
        started = time.monotonic()
        pairs: list[tuple[Outgoing, Any]] = []
        if inbound:
            handled, failed = self.handler.handle(inbound, records)
            self.metrics.handle_seconds.observe(time.monotonic() - started)
            pairs.extend(handled)
            dead.extend(failed)
        ticked = self.core.tick(time.time())
        intake.eager = bool(ticked)
        pairs.extend((out, None) for out in ticked)
        pairs.extend((out, None) for out in self.ending.outputs(intake.consumer, self.tables.consumer))  # behind all else
        self.ending.hold(offsets)
        if (records or pairs or dead) and not self.delivery.deliver(pairs, dead, offsets):
            intake.hold(HeldBatch(pairs, dead, offsets))
        else:
            self.ending.delivered()
        self.metrics.set("in_flight", 0)
        if records:
            self.metrics.inc("consumed", len(records) - markers)  # the data records: end markers are counted apart
            self.metrics.inc("batches")
            self.metrics.set("batch_seconds", time.monotonic() - started)
        self.telemetry.publish()
        return bool(records)

    def _decode(self, records: list[Any]) -> tuple[dict[TopicPartition, OffsetAndMetadata], list[Inbound], list[DeadLetter], int]:
        """The offsets to commit, the decoded inputs, dead letters for what does not decode or was refused, and the end markers taken."""
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        inbound: list[Inbound] = []
        dead: list[DeadLetter] = []
        markers = 0
        for rec in records:
            offsets[TopicPartition(rec.topic, rec.partition)] = OffsetAndMetadata(rec.offset + 1, "", -1)
            refused = self.delivery.refused(rec)
            if refused is not None:  # its outputs were refused for good on an earlier try
                dead.append(DeadLetter(rec, *refused))
                continue
            try:
                message = decode_record(self.ctx.names, rec)
            except SparqError as exc:
                self.metrics.inc("decode_errors")
                dead.append(DeadLetter(rec, type(exc).__name__, str(exc)))
                continue
            if self.ending.take(rec, message):  # an end marker is the wrapper's, never the core's
                markers += 1
            else:
                inbound.append(to_inbound(self.ctx.names, rec, message))
        return offsets, inbound, dead, markers


def _configure_logging(settings: ServiceSettings) -> None:
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_service(core: Core, settings: ServiceSettings, **kwargs: Any) -> int:
    """Run ``core`` with the process wrapper until stopped; return the exit code."""
    _configure_logging(settings)
    return ServiceProcess(core, settings).run(**kwargs)


def serve_service(name: str, build: Callable[[], Core], settings: ServiceSettings, **kwargs: Any) -> int:
    """Build the service's core (its models load in a thread, with progress; SIGTERM exits at once), then run it."""
    _configure_logging(settings)
    return ServiceProcess(None, settings, build=build, name=name).run(**kwargs)
