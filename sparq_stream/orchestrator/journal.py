"""The embedded broker's persistence: a journal on disk of every topic of a run, and of its committed offsets.

Tansu (the embedded broker) keeps topics in memory only, so a crashed ``sparq up`` would lose
the run's state with its broker. While a run uses the embedded broker, a background thread
appends every record of every topic under the run's prefix to ``<out>/journal/<topic>/<p>.log``
(raw key, value, headers and timestamp, in partition order), and every few seconds saves the
consumer groups' committed offsets to ``offsets.json``: offsets FIRST, then the journal is drained
up to the high watermarks seen after that moment and synced, so every output of a committed
input is on disk before the offsets that skip that input are.

On a rerun, :func:`restore` re-produces each partition's records in order into a fresh broker
(so they land at the same offsets), then commits the saved offsets for every group while the
groups are empty; the services then restore from Kafka exactly as on a real cluster. The journal
is not a second source of truth: it is the broker's log, written where the broker cannot.
With a real cluster (``--bootstrap``) no journal is written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import msgpack

from sparq_stream.errors import SparqError
from sparq_stream.settings import KafkaSettings

__all__ = ["TopicJournal", "restore", "discard", "has_snapshot"]

log = logging.getLogger(__name__)

_LEN = struct.Struct(">I")
_OFFSETS = "offsets.json"
_TOPICS = "topics.json"


def _frame(offset: int, timestamp: int, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> bytes:
    body = msgpack.packb([offset, timestamp, key, value, [[k, v] for k, v in headers]], use_bin_type=True)
    return _LEN.pack(len(body)) + body


def _read_frames(path: Path) -> Iterator[tuple[int, list[Any]]]:
    """Yield ``(end position, record)``; stops at a torn last frame (a crash mid-write)."""
    with path.open("rb") as fh:
        pos = 0
        while True:
            head = fh.read(_LEN.size)
            if len(head) < _LEN.size:
                return
            (size,) = _LEN.unpack(head)
            body = fh.read(size)
            if len(body) < size:
                return
            pos += _LEN.size + size
            yield pos, msgpack.unpackb(body, raw=False)


def _write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as fh:
        json.dump(data, fh, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def has_snapshot(folder: Path) -> bool:
    """True when a journal holds at least one offsets snapshot (a run can resume from it)."""
    return (folder / _OFFSETS).is_file() and (folder / _TOPICS).is_file()


def discard(folder: Path) -> None:
    """Remove a journal (a new run starts in this folder)."""
    shutil.rmtree(folder, ignore_errors=True)


class TopicJournal:
    """Appends every record of every ``<prefix>.*`` topic to disk, and snapshots committed offsets."""

    def __init__(
        self,
        settings: KafkaSettings,
        folder: Path,
        *,
        snapshot_every_s: float = 2.0,
        start_offsets: dict[tuple[str, int], int] | None = None,
    ) -> None:
        self.settings = settings
        self.folder = folder
        self.prefix = f"{settings.prefix}."
        self.snapshot_every_s = snapshot_every_s
        self._next: dict[tuple[str, int], int] = dict(start_offsets or {})
        self._files: dict[tuple[str, int], BinaryIO] = {}
        self._partitions: dict[str, int] = {}
        self._stop = threading.Event()
        self._final = False
        self._thread = threading.Thread(target=self._run, name="topic-journal", daemon=True)
        self.snapshots = 0
        self.records = 0
        self.error: str | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> "TopicJournal":
        """Start the background thread (it reads every partition from the journal's end)."""
        self._thread.start()
        return self

    def stop(self, final_snapshot: bool = False, timeout_s: float = 60.0) -> None:
        """Stop the thread; ``final_snapshot``: first drain everything and save the offsets once more."""
        self._final = self._final or final_snapshot
        self._stop.set()
        self._thread.join(timeout_s)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        from kafka import KafkaAdminClient, KafkaConsumer

        consumer = admin = None
        try:
            options = self.settings.client_options()
            consumer = KafkaConsumer(
                **options, group_id=None, enable_auto_commit=False, fetch_max_wait_ms=100,
                max_partition_fetch_bytes=8 * 1024 * 1024, auto_offset_reset="earliest",
            )
            admin = KafkaAdminClient(**options)
            last_topics = last_snapshot = 0.0
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_topics >= 2.0:
                    self._refresh(consumer)
                    last_topics = now
                self._poll(consumer)
                if time.monotonic() - last_snapshot >= self.snapshot_every_s:
                    self._snapshot(consumer, admin)
                    last_snapshot = time.monotonic()
            if self._final:
                self._refresh(consumer)
                self._snapshot(consumer, admin)
        except Exception as exc:  # the journal must never take the run down; a rerun then starts afresh
            self.error = f"{type(exc).__name__}: {exc}"
            log.error("topic journal stopped: %s", self.error)
        finally:
            for fh in self._files.values():
                fh.close()
            for client in (consumer, admin):
                if client is not None:
                    try:
                        client.close()
                    except Exception:  # noqa: BLE001 - closing against a lost broker
                        pass

    def _refresh(self, consumer: Any) -> None:
        from kafka import TopicPartition

        changed = False
        for topic in sorted(t for t in consumer.topics() if t.startswith(self.prefix)):
            count = len(consumer.partitions_for_topic(topic) or ())
            if count and self._partitions.get(topic) != count:
                self._partitions[topic] = count
                changed = True
        if not changed:
            return
        _write_json(self.folder / _TOPICS, self._partitions)
        parts = [TopicPartition(t, p) for t, n in sorted(self._partitions.items()) for p in range(n)]
        consumer.assign(parts)
        for tp in parts:
            consumer.seek(tp, self._next.get((tp.topic, tp.partition), 0))

    def _poll(self, consumer: Any) -> None:
        for tp, records in consumer.poll(timeout_ms=100, max_records=5000).items():
            key = (tp.topic, tp.partition)
            fh = self._files.get(key)
            if fh is None:
                folder = self.folder / tp.topic
                folder.mkdir(parents=True, exist_ok=True)
                fh = self._files[key] = open(folder / f"{tp.partition}.log", "ab")
            for rec in records:
                if rec.offset < self._next.get(key, 0):
                    continue  # already journalled (a re-seek after new partitions appeared)
                fh.write(_frame(rec.offset, rec.timestamp, rec.key, rec.value, list(rec.headers or [])))
                self._next[key] = rec.offset + 1
                self.records += 1
            fh.flush()

    def _snapshot(self, consumer: Any, admin: Any, wait_s: float = 0.5, limit_s: float = 15.0) -> bool:
        """Committed offsets now, then the journal drained to the high watermarks seen after now, synced."""
        groups = [g["group_id"] for g in admin.list_groups() if str(g.get("group_id", "")).startswith(self.prefix)]
        committed = admin.list_group_offsets({g: None for g in groups}) if groups else {}
        t0 = time.monotonic()
        target: dict[Any, int] | None = None
        while True:
            self._poll(consumer)
            elapsed = time.monotonic() - t0
            if elapsed > limit_s:
                log.warning("journal snapshot skipped: the journal did not catch up within %.0fs", limit_s)
                return False
            if target is None and elapsed >= wait_s:  # fetches answered after the offsets were read
                marks = {tp: consumer.highwater(tp) for tp in consumer.assignment()}
                if all(hw is not None for hw in marks.values()):
                    target = marks
            if target is not None and all(self._next.get((tp.topic, tp.partition), 0) >= hw for tp, hw in target.items()):
                break
        for fh in self._files.values():
            fh.flush()
            os.fsync(fh.fileno())
        groups_out: dict[str, dict[str, dict[str, int]]] = {}
        for group, offsets in committed.items():
            rows = groups_out.setdefault(group, {})
            for tp, meta in offsets.items():
                if meta is not None and meta.offset is not None and meta.offset >= 0:
                    rows.setdefault(tp.topic, {})[str(tp.partition)] = int(meta.offset)
        _write_json(self.folder / _OFFSETS, {"ts": time.time(), "groups": groups_out})
        self.snapshots += 1
        return True


def restore(settings: KafkaSettings, folder: Path, *, chunk: int = 5000) -> dict[str, Any]:
    """Re-produce a journal into a fresh broker (same partitions, same order) and commit its saved offsets.

    Returns counts and ``next``, each partition's next offset (where the new journal continues).
    A record that lands at another offset than it had (it should not) is rewritten in the journal
    and the committed offsets are moved with it.
    """
    from kafka import KafkaAdminClient, KafkaProducer, TopicPartition
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError
    from kafka.structs import OffsetAndMetadata

    if not has_snapshot(folder):
        raise SparqError(f"{folder} holds no journal snapshot to resume from")
    topics: dict[str, int] = json.loads((folder / _TOPICS).read_text())
    saved = json.loads((folder / _OFFSETS).read_text())
    options = settings.client_options()
    admin = KafkaAdminClient(**options)
    producer = KafkaProducer(**options, acks="all", linger_ms=5, retries=5, max_in_flight_requests_per_connection=1)
    moved: dict[tuple[str, int], list[tuple[int, int]]] = {}
    next_offsets: dict[tuple[str, int], int] = {}
    total = 0
    try:
        existing = set(admin.list_topics())
        for topic, count in sorted(topics.items()):
            if topic not in existing:
                try:
                    admin.create_topics([NewTopic(topic, num_partitions=count, replication_factor=1)])
                except TopicAlreadyExistsError:
                    pass
        for topic, count in sorted(topics.items()):
            for partition in range(count):
                path = folder / topic / f"{partition}.log"
                if not path.is_file():
                    continue
                pairs, good_end = _replay_file(producer, topic, partition, path, chunk)
                if path.stat().st_size > good_end:
                    with path.open("r+b") as fh:
                        fh.truncate(good_end)  # a torn last frame
                total += len(pairs)
                if pairs:
                    next_offsets[(topic, partition)] = pairs[-1][1] + 1
                if any(old != new for old, new in pairs):
                    moved[(topic, partition)] = pairs
                    _rewrite_offsets(path, pairs)
        groups = 0
        for group, rows in saved.get("groups", {}).items():
            offsets = {}
            for topic, parts in rows.items():
                for partition, offset in parts.items():
                    tp = TopicPartition(topic, int(partition))
                    new = _moved_offset(moved.get((topic, int(partition))), int(offset))
                    offsets[tp] = OffsetAndMetadata(new, "", -1)
            if offsets:
                admin.alter_group_offsets(group, offsets)
                groups += 1
    finally:
        producer.close(timeout=10)
        admin.close()
    return {"records": total, "groups": groups, "moved_partitions": len(moved), "next": next_offsets}


def _replay_file(producer: Any, topic: str, partition: int, path: Path, chunk: int) -> tuple[list[tuple[int, int]], int]:
    """Produce one partition's journal in order; return (old offset, new offset) pairs and the good length."""
    pairs: list[tuple[int, int]] = []
    pending: list[tuple[int, Any]] = []
    good_end = 0

    def _drain() -> None:
        producer.flush()
        for old, future in pending:
            pairs.append((old, future.get(timeout=60).offset))
        pending.clear()

    for end, (offset, timestamp, key, value, headers) in _read_frames(path):
        good_end = end
        future = producer.send(
            topic, partition=partition, key=key, value=value,
            headers=[(k, v) for k, v in headers], timestamp_ms=timestamp if timestamp and timestamp > 0 else None,
        )
        pending.append((offset, future))
        if len(pending) >= chunk:
            _drain()
    _drain()
    return pairs, good_end


def _rewrite_offsets(path: Path, pairs: list[tuple[int, int]]) -> None:
    tmp = path.with_suffix(".rewrite")
    with tmp.open("wb") as out:
        for (_end, (_old, timestamp, key, value, headers)), (_o, new) in zip(_read_frames(path), pairs):
            out.write(_frame(new, timestamp, key, value, [(k, v) for k, v in headers]))
    os.replace(tmp, path)


def _moved_offset(pairs: list[tuple[int, int]] | None, committed: int) -> int:
    """The new offset of the first record at or after ``committed`` (the end when none is)."""
    if not pairs:
        return committed
    for old, new in pairs:
        if old >= committed:
            return new
    return pairs[-1][1] + 1
