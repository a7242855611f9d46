"""Answer-checker throughput: in-process ``answers_equal`` vs a 2-worker ``CheckerPool``.

The workload is a fixed, seeded mix shaped like solver output: 16 rollouts per problem,
about 80% of problems GSM8K-style (solution texts ending in a number: ``#### n``,
``\\boxed{n}``, "the answer is n", with ``$`` and thousands separators), about 20%
MATH-style LaTeX (fractions, roots, pi, intervals, tuples, polynomials, complex numbers),
roughly 70% of rollouts correct. Both modes check the same pairs; the ratio is
pool / single (same run, same machine).

Run: ``python bench/_checker_bench.py [N]``; or call :func:`run` (used by bench/backend.py).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import time
from typing import Any

__all__ = ["make_pairs", "run"]

_BATCH = 16 * 64

_FILLER = [
    "First we find how many items there are in total.",
    "Each box holds the same number, so we multiply.",
    "Then we subtract what was given away.",
    "Half of the remainder is sold at the market.",
    "Adding the two amounts gives the total.",
]


def _latex_answers(rng: random.Random) -> tuple[str, str, str]:
    """A random MATH-style (gold, equivalent answer, wrong answer); most need sympy."""
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    kind = rng.randrange(8)
    if kind == 0:
        return f"\\frac{{{a}}}{{{b}}}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}", f"\\frac{{{b}}}{{{a + b}}}"
    if kind == 1:
        return f"\\frac{{\\sqrt{{{a}}}}}{{{b}}}", f"\\sqrt{{{a}}}/{b}", f"\\frac{{\\sqrt{{{a + 1}}}}}{{{b}}}"
    if kind == 2:
        return f"\\left( {a}, \\frac{{\\pi}}{{{b}}} \\right)", f"({a}, \\pi/{b})", f"({b}, \\pi/{a + 1})"
    if kind == 3:
        return f"x^2+{2 * a}x+{a * a}", f"(x+{a})^2", f"(x-{a})^2"
    if kind == 4:
        return f"{a} - {b}i", f"-{b}i + {a}", f"{a} + {b}i"
    if kind == 5:
        return f"({a},{a + b}]", f"({a}, {a + b}]", f"[{a}, {a + b}]"
    if kind == 6:
        return f"{a}\\sqrt{{{b}}}", f"\\sqrt{{{a * a * b}}}", f"{b}\\sqrt{{{a}}}"
    return f"{a} \\pi", f"{a}\\pi", f"{a + 1}\\pi"


def _gsm8k_rollouts(rng: random.Random, k: int) -> list[tuple[str, str]]:
    """``k`` rollouts for one GSM8K-style problem: (gold, solution text) pairs."""
    gold = rng.choice([rng.randint(1, 200), rng.randint(100, 5000), rng.randint(1000, 250000)])
    worked = "\n".join(rng.sample(_FILLER, 3))
    gold_text = f"{worked}\n#### {gold}" if rng.random() < 0.3 else str(gold)
    pairs = []
    for _ in range(k):
        answer = gold if rng.random() < 0.7 else gold + rng.choice([-10, -1, 1, 2, 100])
        shown = f"{answer:,}" if answer >= 1000 and rng.random() < 0.5 else str(answer)
        ending = rng.choice(
            [
                f"#### {shown}",
                f"So she makes ${shown} in all.\n\\boxed{{{shown}}}",
                f"The answer is {shown}.",
                f"Therefore the total is $\\boxed{{\\${shown}}}$.",
            ]
        )
        pairs.append((gold_text, "\n".join(rng.sample(_FILLER, 3)) + "\n" + ending))
    return pairs


def _latex_rollouts(rng: random.Random, k: int) -> list[tuple[str, str]]:
    """``k`` rollouts for one MATH-style problem: (gold, solution text) pairs."""
    gold, same, wrong = _latex_answers(rng)
    return [
        (gold, f"{rng.choice(_FILLER)}\nThus the answer is $\\boxed{{{same if rng.random() < 0.7 else wrong}}}$.")
        for _ in range(k)
    ]


def make_pairs(n: int, seed: int = 0, rollouts: int = 16) -> list[tuple[str, str]]:
    """The workload: ``n`` seeded (gold, response) pairs, ``rollouts`` per problem, ~80% GSM8K."""
    rng = random.Random(seed)
    pairs: list[tuple[str, str]] = []
    while len(pairs) < n:
        make = _gsm8k_rollouts if rng.random() < 0.8 else _latex_rollouts
        pairs.extend(make(rng, rollouts))
    return pairs[:n]


def run(n: int = 2000, workers: int = 2, timeout_s: float = 5.0, repeats: int = 3) -> dict[str, Any]:
    """Measure checks/s single-process (in-process answers_equal) vs the worker pool.

    Each mode checks the same ``repeats`` workloads of ``n`` pairs (fresh seeds, so no pass
    replays another's caches); the best pass counts, as the machine may be shared. The pool
    gets solver-sized batches of 1024 (16 rollouts x 64 candidates); its start-up is timed
    separately and not in the rate.
    """
    from sparq_stream.verify.equivalence import CheckResult, answers_equal, prepare
    from sparq_stream.verify.pool import CheckerPool

    workloads = [make_pairs(n, seed=seed) for seed in range(repeats)]
    symbolic = sum(1 for g, r in workloads[0] if not isinstance(prepare(g, r), CheckResult))
    answers_equal("\\frac{\\sqrt{3}}{2}", "\\boxed{\\sqrt{3}/2}")  # import sympy before timing

    single_s = float("inf")
    single: list[list[bool]] = []
    for pairs in workloads:
        started = time.perf_counter()
        verdicts = [answers_equal(g, r).equal for g, r in pairs]
        single_s = min(single_s, time.perf_counter() - started)
        single.append(verdicts)

    pool_s = float("inf")
    pooled: list[list[bool]] = []
    started = time.perf_counter()
    with CheckerPool(workers=workers, timeout_s=timeout_s) as pool:
        start_s = time.perf_counter() - started
        for pairs in workloads:
            started = time.perf_counter()
            verdicts = []
            for i in range(0, len(pairs), _BATCH):
                verdicts.extend(r.equal for r in pool.check_many(pairs[i : i + _BATCH]))
            pool_s = min(pool_s, time.perf_counter() - started)
            pooled.append(verdicts)
        timeouts = pool.stats()["timeouts"]

    single_rate = n / single_s
    pool_rate = n / pool_s
    return {
        "n": n,
        "repeats": repeats,
        "symbolic_fraction": round(symbolic / n, 3),
        "equal_fraction": round(sum(pooled[0]) / n, 3),
        "single_checks_per_s": round(single_rate, 1),
        "pool_workers": workers,
        "pool_checks_per_s": round(pool_rate, 1),
        "pool_start_s": round(start_s, 2),
        "pool_timeouts": timeouts,
        "ratio_pool_vs_single": round(pool_rate / single_rate, 2),
        "verdicts_agree": single == pooled,
    }


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    print(json.dumps(run(size), indent=2))
