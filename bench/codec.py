"""The wrapper's per-message codec cost: decode + validate + encode of the typed struct vs raw msgpack.

The same ~1 KB ``Seed`` messages as ``bench/bus_hop.py``. Reference: the raw relay's work,
``msgpack.unpackb`` then ``msgpack.packb`` of the dict. Measured: the wrapper's,
``messages.decode`` (unpack, envelope checks, pydantic validation into the struct) then
``messages.encode``. Best of ``--repeats`` alternating runs over ``--messages`` messages;
prints microseconds per message for both and their ratio.

    python bench/codec.py [--messages 10000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time

import msgpack

from sparq_stream.messages import Seed, decode, encode


def _values(n: int) -> list[bytes]:
    return [
        encode(Seed(id=f"p{i:07d}", problem=f"Problem {i}. " + "lorem ipsum " * 75, answer=str(i), solution="s" * 40))
        for i in range(n)
    ]


def _raw(values: list[bytes]) -> float:
    start = time.perf_counter()
    for value in values:
        msgpack.packb(msgpack.unpackb(value, raw=False), use_bin_type=True)
    return time.perf_counter() - start


def _typed(values: list[bytes]) -> float:
    start = time.perf_counter()
    for value in values:
        encode(decode(value, Seed))
    return time.perf_counter() - start


def main() -> None:
    """Print raw and typed microseconds per message and their ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    values = _values(args.messages)
    raw, typed = [], []
    for _ in range(args.repeats):
        raw.append(_raw(values))
        typed.append(_typed(values))
    r, t = min(raw) / args.messages * 1e6, min(typed) / args.messages * 1e6
    size = sum(map(len, values)) // len(values)
    print(f"{args.messages} messages of {size} B, best of {args.repeats}, load average {os.getloadavg()[0]:.1f}")
    print(f"raw msgpack unpack + pack:          {r:6.1f} us/message")
    print(f"decode + validate + encode (typed): {t:6.1f} us/message")
    print(f"typed / raw: {t / r:.2f}x; extra {t - r:.1f} us/message")


if __name__ == "__main__":
    main()
