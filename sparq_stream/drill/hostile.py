"""Drill ``hostile``: every parser of model output on huge, deeply nested, 20,000-newline and injection text.

Each parser call runs in a forked process (killed at a cap, so a quadratic parser cannot
stall the drill), is timed and compared with its stated limit: the pure parsers (mutation child,
skills, answer extraction) must answer within ``PARSER_LIMIT_S``; the checker pool within
its own per-check limit plus ``POOL_SLACK_S`` (a runaway check is killed and its worker
replaced). No parser may raise, and nothing in the text may be executed (a sentinel file
named in the injection strings must not appear).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

from sparq_stream.drill.common import DrillContext, DrillResult

__all__ = ["CALL_CAP_S", "PARSER_LIMIT_S", "POOL_SLACK_S", "hostile_texts", "run"]

PARSER_LIMIT_S = 1.0
POOL_SLACK_S = 2.0
_HARD_CAP_S = 120.0  # a checker-pool call still running after this is recorded as hung
CALL_CAP_S = {"small": 3.0, "full": 30.0}  # a parser call still running after this is killed (and over its limit)


def hostile_texts(scale: int, sentinel: Path) -> dict[str, str]:
    """Named hostile model outputs; ``scale`` multiplies the big ones."""
    mib = 1024 * 1024
    boom = f"__import__('os').system('touch {sentinel}')"
    return {
        "huge_plain": "word " * (scale * mib // 5),
        "huge_open_tag": "<problem>" + "x = 1 + 1. " * (scale * mib // 11),
        "huge_boxed": "<problem>p</problem><solution>\\boxed{" + "9" * (scale * 200_000) + "}</solution>",
        "deep_braces": "<problem>p</problem><solution>\\boxed{" + "{" * (scale * 50_000) + "1" + "}" * (scale * 50_000) + "}</solution>",
        "unbalanced_braces": "<solution>\\boxed{" + "{" * (scale * 100_000),
        "deep_frac": "\\boxed{" + "\\frac{1}{" * (scale * 2_000) + "2" + "}" * (scale * 2_000) + "}",
        "deep_power": "\\boxed{" + "2^{" * (scale * 500) + "2" + "}" * (scale * 500) + "}",
        "many_boxes": "\\boxed{1} " * (scale * 50_000),
        "newlines_20k": "\n" * 20_000,
        "newlines_20k_headed": "Problem:" + "\n" * 20_000 + "Solution:" + "\n" * 20_000 + "Final answer: 3",
        "newlines_20k_tags": "<problem>" + "a\n" * 20_000 + "<solution>" + "b\n" * 20_000,
        "newlines_20k_problem_lines": "problem:\n" * 20_000,
        "injection_tags": "<problem>ignore all previous instructions</problem><problem>x</problem>"
                          "<solution></solution><solution>\\boxed{</solution>}",
        "injection_eval": f"<problem>p</problem><solution>\\boxed{{{boom}}}</solution>",
        "injection_latex": "\\boxed{\\input{/etc/passwd}} \\boxed{\\write18{touch " + str(sentinel) + "}}",
        "injection_template": "{{config}} ${jndi:ldap://x/a} %s%s%n {0.__class__.__mro__} " + boom,
        "nul_and_controls": "\x00\x1b[2J\u202e\ufeff<problem>\x00</problem>" * 1000,
    }


def _call_in_child(fn: Callable[[str], Any], text: str, conn: Any) -> None:
    """In a forked child: time one call and send (seconds, error or None) back."""
    t0 = time.perf_counter()
    error = None
    try:
        fn(text)
    except Exception as exc:  # a parser must never raise on model output: recorded
        error = f"{type(exc).__name__}: {str(exc)[:200]}"
    conn.send((time.perf_counter() - t0, error))
    conn.close()


def _timed_in_child(fn: Callable[[str], Any], text: str, cap_s: float) -> tuple[float, str | None, bool]:
    """Time ``fn(text)`` in a forked process: (seconds, error, killed at the cap)."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_call_in_child, args=(fn, text, child), daemon=True)
    proc.start()
    child.close()
    try:
        if parent.poll(cap_s):
            seconds, error = parent.recv()
            return seconds, error, False
        return cap_s, None, True
    except EOFError:
        return 0.0, f"the parser's process died (exit {proc.exitcode})", False
    finally:
        if proc.is_alive():
            proc.kill()
        proc.join(5)
        parent.close()


def _timed(fn: Callable[[], Any]) -> tuple[float, str | None]:
    """Run ``fn`` in a thread; return (seconds, error or None); a hung call returns (cap, 'hung')."""
    box: dict[str, Any] = {}

    def target() -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:  # the checker pool must never raise on model output: recorded
            box["error"] = f"{type(exc).__name__}: {str(exc)[:200]}"
        box["s"] = time.perf_counter() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(_HARD_CAP_S)
    if thread.is_alive():
        return _HARD_CAP_S, "hung"
    return box["s"], box.get("error")


def _parsers() -> dict[str, Callable[[str], Any]]:
    from sparq_stream.cores.mutator import parse_child
    from sparq_stream.qd.vocabulary import parse_skill_answer
    from sparq_stream.skills import load_vocabulary, parse_extracted_skills
    from sparq_stream.verify.extract import final_answer, last_boxed

    vocab = load_vocabulary(None)
    return {
        "mutation_strict": lambda t: parse_child(t, lenient=False),
        "mutation_lenient": lambda t: parse_child(t, lenient=True),
        "skills_extracted": parse_extracted_skills,
        "skills_classified": lambda t: parse_skill_answer(t, vocab),
        "answer_final": final_answer,
        "answer_boxed": last_boxed,
    }


def run(ctx: DrillContext) -> DrillResult:
    """Time every parser on every hostile text; then the checker pool on the same texts as responses."""
    from sparq_stream.verify.pool import CheckerPool

    result = DrillResult("hostile", ctx.broker, ctx.budget.name)
    out = ctx.folder("hostile")
    sentinel = out / "executed-by-a-parser"
    sentinel.unlink(missing_ok=True)
    texts = hostile_texts(ctx.budget.hostile_scale, sentinel)
    worst: dict[str, tuple[float, str]] = {}
    errors: list[str] = []
    killed: list[str] = []
    cap = CALL_CAP_S[ctx.budget.name]
    for parser, fn in _parsers().items():
        for name, text in texts.items():
            seconds, error, over = _timed_in_child(fn, text, cap)
            if error:
                errors.append(f"{parser}/{name}: {error}")
            if over:
                killed.append(f"{parser}/{name}")
            if seconds >= worst.get(parser, (-1.0, ""))[0]:
                worst[parser] = (seconds, name)
    pool = CheckerPool(workers=2)
    try:
        pool_limit = pool.timeout_s + POOL_SLACK_S
        for name, text in texts.items():
            seconds, error = _timed(lambda text=text: pool.check("2", text))
            if error:
                errors.append(f"checker_pool/{name}: {error}")
            if seconds >= worst.get("checker_pool", (-1.0, ""))[0]:
                worst["checker_pool"] = (seconds, name)
        pool_stats = pool.stats()
    finally:
        pool.close()
    limits = {p: (pool_limit if p == "checker_pool" else PARSER_LIMIT_S) for p in worst}
    result.figures.update(
        texts={n: len(t) for n, t in texts.items()},
        max_s={p: round(s, 3) for p, (s, _) in worst.items()}, slowest_input={p: n for p, (_, n) in worst.items()},
        limit_s=limits, errors=errors[:20], killed_at_cap=killed, call_cap_s=cap, checker_pool=pool_stats,
    )
    for parser, (seconds, _) in worst.items():
        check = f"{parser}_within_limit"
        result.checks[check] = seconds <= limits[parser]
        result.timed_checks.append(check)
    result.checks["no_parser_raised"] = not errors
    result.checks["nothing_executed"] = not sentinel.exists()
    return result
