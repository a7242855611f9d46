"""CheckerPool: order, parallel batches, overrun kill and replace, crash recovery, limits."""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from sparq_stream.errors import ConfigError, FatalError
from sparq_stream.verify import equivalence as eq
from sparq_stream.verify.equivalence import answers_equal
from sparq_stream.verify.pool import CheckerPool

pytestmark = pytest.mark.timeout(120)

# Runs until killed when math-verify's own alarms are off (soft_limit=False).
HANGS = "\\boxed{10^{10^{10}}}"

PAIRS = [
    ("72", "She sold 72 clips.\n#### 72"),
    ("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sqrt{3}/2}"),
    ("p - q", "\\boxed{q - p}"),
    ("1/2", "0.5"),
    ("(3,4]", "\\boxed{(3, 4]}"),
    ("18", "\\boxed{19}"),
    ("x^2+2x+1", "\\boxed{(x+1)^2}"),
    ("B", "\\text{(B)}"),
    ("5", "\\boxed{5"),
    ("6 - 5i", "\\boxed{6+5i}"),
]


@pytest.fixture(scope="module")
def pool() -> Iterator[CheckerPool]:
    with CheckerPool(workers=2, timeout_s=5.0) as p:
        yield p


@pytest.fixture(scope="module")
def hard_pool() -> Iterator[CheckerPool]:
    """One worker, no soft limit: only the parent's kill stops a runaway check."""
    with CheckerPool(workers=1, timeout_s=1.5, soft_limit=False) as p:
        yield p


def test_check_many_preserves_order_and_matches_in_process(pool: CheckerPool) -> None:
    rng = random.Random(7)
    pairs = [rng.choice(PAIRS) for _ in range(60)]
    expected = [answers_equal(g, r) for g, r in pairs]
    got = pool.check_many(pairs)
    assert got == expected
    assert pool.check_many([]) == []


def test_check_single(pool: CheckerPool) -> None:
    result = pool.check("\\frac{1}{2}", "so \\boxed{\\dfrac12}")
    assert (result.extracted, result.equal, result.reason) == ("\\dfrac12", True, eq.NUMERIC)
    symbolic = pool.check("\\frac{\\sqrt{21}}{5}", "\\boxed{\\sqrt{21}/5}")
    assert (symbolic.equal, symbolic.reason) == (True, eq.SYMBOLIC)


def test_solver_sized_batch(pool: CheckerPool) -> None:
    """16 rollouts x 64 candidates, mostly GSM8K numbers: all answered, in order."""
    pairs = []
    for i in range(1024):
        gold = str(i)
        answer = str(i if i % 3 else i + 1)
        text = f"We compute step by step.\nSo the total is {answer}.\n#### {answer}"
        if i % 50 == 0:
            text = f"Thus $\\boxed{{\\frac{{{2 * int(answer)}}}{{2}}}}$"
        pairs.append((gold, text))
    results = pool.check_many(pairs)
    assert len(results) == 1024
    assert [r.equal for r in results] == [i % 3 != 0 for i in range(1024)]


def test_stats_count_fast_and_symbolic(pool: CheckerPool) -> None:
    before = pool.stats()
    pool.check_many([("3", "3.0"), ("p - q", "\\boxed{-q+p}")])
    after = pool.stats()
    assert after["fast"] == before["fast"] + 1
    assert after["symbolic"] == before["symbolic"] + 1


def test_duplicates_in_a_batch_are_sent_once(pool: CheckerPool) -> None:
    before = pool.stats()["sent"]
    gold = "\\frac{\\sqrt{7}}{3}"
    results = pool.check_many(
        [(gold, "\\boxed{\\sqrt{7}/3}"), (gold, "\\boxed{\\sqrt{7}/3.}"), (gold, "\\boxed{\\sqrt{7}/3}"), ("1", "1")]
    )
    assert [(r.extracted, r.equal) for r in results] == [
        ("\\sqrt{7}/3", True),
        ("\\sqrt{7}/3.", True),
        ("\\sqrt{7}/3", True),
        ("1", True),
    ]
    assert pool.stats()["sent"] == before + 1


def test_overrun_is_killed_and_replaced(hard_pool: CheckerPool) -> None:
    old = hard_pool.worker_pids()
    started = time.monotonic()
    result = hard_pool.check("5", HANGS)
    assert (result.equal, result.reason, result.extracted) == (False, eq.TIMEOUT, "10^{10^{10}}")
    assert time.monotonic() - started < 30
    assert hard_pool.worker_pids() != old
    assert hard_pool.stats()["respawns"] >= 1
    # The replacement answers, and a batch mixing a runaway with normal checks keeps order.
    batch = hard_pool.check_many([("p - q", "\\boxed{-q+p}"), ("5", HANGS), ("\\sqrt{2}", "\\boxed{2^{1/2}}")])
    assert [(r.equal, r.reason) for r in batch] == [
        (True, eq.SYMBOLIC),
        (False, eq.TIMEOUT),
        (True, eq.SYMBOLIC),
    ]
    for pid in old:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_dead_worker_is_replaced(hard_pool: CheckerPool) -> None:
    """A worker that dies mid-check (as on a segfault) gives "worker crashed", then a new one."""
    victim = hard_pool.worker_pids()[0]
    box: dict[str, object] = {}
    thread = threading.Thread(target=lambda: box.setdefault("r", hard_pool.check("7", HANGS)))
    thread.start()
    time.sleep(0.3)
    os.kill(victim, signal.SIGKILL)
    thread.join(30)
    result = box["r"]
    assert result == eq.CheckResult("10^{10^{10}}", False, eq.WORKER_CRASHED)
    assert hard_pool.stats()["crashes"] >= 1
    assert victim not in hard_pool.worker_pids()
    assert hard_pool.check("\\pi", "\\boxed{\\pi}").equal
    assert hard_pool.check("2\\pi", "\\boxed{\\pi + \\pi}").equal


def test_worker_memory_is_capped(pool: CheckerPool) -> None:
    for pid in pool.worker_pids():
        limits = open(f"/proc/{pid}/limits", encoding="ascii").read()
        line = next(row for row in limits.splitlines() if row.startswith("Max address space"))
        assert line.split()[3] == str(2048 * 1024 * 1024)


def test_workers_that_cannot_start_fail_loudly() -> None:
    # 16 MB is below what an interpreter with sympy already holds: warm-up hits MemoryError.
    with pytest.raises(FatalError, match="keep dying"):
        CheckerPool(workers=1, memory_mb=16)


def test_concurrent_callers_share_the_pool(pool: CheckerPool) -> None:
    outputs: list[list[bool]] = [[], []]

    def run(slot: int) -> None:
        outputs[slot] = [r.equal for r in pool.check_many([("p - q", "\\boxed{p-q}"), ("8", "\\boxed{2^3}")] * 5)]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert outputs == [[True] * 10, [True] * 10]


def test_spawn_context_and_close() -> None:
    p = CheckerPool(workers=1, timeout_s=5.0, context="spawn")
    with p:
        pids = p.worker_pids()
        assert p.check("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sqrt{3}/2}").equal
    with pytest.raises(FatalError):
        p.check("1", "1")
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    p.close()  # closing twice is harmless


@pytest.mark.parametrize(
    "kwargs",
    [{"workers": 0}, {"workers": 1, "timeout_s": 0}, {"workers": 1, "context": "fork"}],
)
def test_bad_settings(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        CheckerPool(**kwargs)  # type: ignore[arg-type]
