"""Compact string ids for millions of rows: one bytes blob, end offsets, and a numpy hash table.

A Python ``dict`` plus ``list`` of ids costs ~190 bytes per item (3.8 GB at 20M); this costs
the id bytes + 8 (offset) + ~20 (hash table at load <= 0.6): ~60 bytes per 32-hex-digit id.
Membership uses a 64-bit fingerprint of the id (Python's string hash: the table is rebuilt in
each process, never stored): two different ids with the same fingerprint (probability
~n^2/2^65, ~1e-5 at 20M) would count as one.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

__all__ = ["IdTable", "fingerprints"]

_EMPTY = np.uint32(0)
_MAX_LOAD = 0.6


def fingerprints(ids: Sequence[str]) -> np.ndarray:
    """Return the 64-bit fingerprints (never 0) of ``ids`` as uint64."""
    out = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids)).view(np.uint64)
    out[out == 0] = 1
    return out


class IdTable:
    """Append-only ids with rows 0..n-1: add, membership, row of an id, id of a row."""

    def __init__(self, capacity: int = 1024) -> None:
        """Make an empty table (grows as needed)."""
        self._blob = bytearray()
        self._ends = np.zeros(max(16, capacity), dtype=np.uint64)
        self._n = 0
        size = 1 << max(4, int(np.ceil(np.log2(max(16, capacity) / _MAX_LOAD))))
        self._keys = np.zeros(size, dtype=np.uint64)
        self._vals = np.zeros(size, dtype=np.uint32)  # row + 1; 0 = empty

    def __len__(self) -> int:
        return self._n

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.rows([key])[0] >= 0

    def memory_bytes(self) -> int:
        """Return the bytes held (blob, offsets, hash table)."""
        return len(self._blob) + self._ends.nbytes + self._keys.nbytes + self._vals.nbytes

    def id_at(self, row: int) -> str:
        """Return the id of ``row``."""
        if not 0 <= row < self._n:
            raise IndexError(row)
        start = int(self._ends[row - 1]) if row else 0
        return self._blob[start:int(self._ends[row])].decode("utf-8")

    def ids(self, start: int = 0, stop: int | None = None) -> list[str]:
        """Return the ids of rows ``start..stop`` in order."""
        stop = self._n if stop is None else min(stop, self._n)
        return [self.id_at(r) for r in range(start, stop)]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Return the row of each id, -1 where absent."""
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        return self._lookup(fingerprints(ids))

    def add(self, ids: Sequence[str]) -> np.ndarray:
        """Append the ids not yet present (first occurrence wins); return the positions in ``ids`` added."""
        if not len(ids):
            return np.zeros(0, dtype=np.int64)
        fps = fingerprints(ids)
        _, first = np.unique(fps, return_index=True)
        first.sort()
        fresh = first[self._lookup(fps[first]) < 0]
        if not len(fresh):
            return fresh
        self._reserve(self._n + len(fresh))
        rows = np.arange(self._n, self._n + len(fresh), dtype=np.uint64)
        self._insert(fps[fresh], rows)
        chosen = [ids[i] for i in fresh.tolist()]
        joined = "".join(chosen)
        if joined.isascii():
            lengths = np.fromiter(map(len, chosen), dtype=np.uint64, count=len(chosen))
            data = joined.encode("ascii")
        else:
            encoded = [i.encode("utf-8") for i in chosen]
            lengths = np.fromiter(map(len, encoded), dtype=np.uint64, count=len(encoded))
            data = b"".join(encoded)
        self._ends[self._n:self._n + len(fresh)] = len(self._blob) + np.cumsum(lengths)
        self._blob += data
        self._n += len(fresh)
        return fresh

    def extend_unchecked(self, ids: Iterable[str]) -> None:
        """Append ids known to be new and distinct (restore from a snapshot)."""
        batch = list(ids)
        if batch:
            added = self.add(batch)
            if len(added) != len(batch):
                raise ValueError("repeated ids in a restored snapshot")

    # ------------------------------------------------------------------ hash table
    def _slots(self, fps: np.ndarray) -> np.ndarray:
        mask = np.uint64(len(self._keys) - 1)
        return ((fps * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(20)) & mask

    def _lookup(self, fps: np.ndarray) -> np.ndarray:
        out = np.full(len(fps), -1, dtype=np.int64)
        todo = np.arange(len(fps))
        slots = self._slots(fps)
        mask = np.uint64(len(self._keys) - 1)
        while len(todo):
            vals = self._vals[slots]
            hit = (vals != _EMPTY) & (self._keys[slots] == fps[todo])
            out[todo[hit]] = vals[hit].astype(np.int64) - 1
            go_on = (vals != _EMPTY) & ~hit
            todo, slots = todo[go_on], (slots[go_on] + np.uint64(1)) & mask
        return out

    def _insert(self, fps: np.ndarray, rows: np.ndarray) -> None:
        mask = np.uint64(len(self._keys) - 1)
        slots = self._slots(fps)
        todo = np.arange(len(fps))
        while len(todo):
            free = np.flatnonzero(self._vals[slots] == _EMPTY)
            _, winners = np.unique(slots[free], return_index=True)  # one writer per free slot this round
            placed = np.zeros(len(todo), dtype=bool)
            won = free[winners]
            self._keys[slots[won]] = fps[todo[won]]
            self._vals[slots[won]] = (rows[todo[won]] + np.uint64(1)).astype(np.uint32)
            placed[won] = True
            todo, slots = todo[~placed], slots[~placed]
            busy = self._vals[slots] != _EMPTY
            slots = np.where(busy, (slots + np.uint64(1)) & mask, slots)

    def _reserve(self, n: int) -> None:
        if n > len(self._ends):
            grown = np.zeros(max(n, int(len(self._ends) * 1.5)), dtype=np.uint64)
            grown[:self._n] = self._ends[:self._n]
            self._ends = grown
        if n > _MAX_LOAD * len(self._keys):
            size = len(self._keys)
            while n > _MAX_LOAD * size:
                size *= 2
            used = self._vals != _EMPTY
            keys, rows = self._keys[used], self._vals[used].astype(np.uint64) - np.uint64(1)
            self._keys = np.zeros(size, dtype=np.uint64)
            self._vals = np.zeros(size, dtype=np.uint32)
            self._insert(keys, rows)
