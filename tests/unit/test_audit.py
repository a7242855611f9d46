"""The validity audit: cheap checks, the solver's majority answer, the verifier prompt, and the export filter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sparq_stream.core import Inbound
from sparq_stream.cores.solver import SolverConfig, SolverCore
from sparq_stream.ids import problem_id
from sparq_stream.messages import NovelCandidate, SolveResult
from sparq_stream.models.base import GenerationResult
from sparq_stream.models.scripted import ScriptedBackend
from sparq_stream.qd.audit import (
    ANSWER_IN_PROBLEM,
    ANSWER_MALFORMED,
    SOLVER_DISAGREES,
    VERIFIER_REJECTS,
    AuditItem,
    Auditor,
    audit_flags,
    cheap_checks,
    majority_check,
    parse_verdict,
)
from sparq_stream.training import export_training_set, read_examples
from sparq_stream.verify.pool import CheckerPool
from tests.unit._audit_cases import CASES, precision_recall


def test_cheap_checks_catch_stated_and_malformed_answers() -> None:
    assert cheap_checks("Ann has 3 pens and buys 4 more. How many pens?", "7") == []
    assert cheap_checks("A box holds 5 eggs. How many eggs are in 1 box?", "5") == []  # a small given is no leak
    assert audit_flags(cheap_checks("So the answer is 9. What is 4 + 5?", "9")) == [ANSWER_IN_PROBLEM]
    assert audit_flags(cheap_checks("Note that 2 + 2 = 4. What is 2 + 2?", "4")) == [ANSWER_IN_PROBLEM]
    assert audit_flags(cheap_checks("Is \\boxed{3} right? What is 1 + 2?", "3")) == [ANSWER_IN_PROBLEM]
    assert audit_flags(cheap_checks("There are 2048 bees. How many bees?", "2048")) == [ANSWER_IN_PROBLEM]
    assert cheap_checks("There are 20480 bees. How many are left after 2048 leave?", "18432") == []
    for bad in ("", "   ", "x" * 81, "(1, 2", "\\boxed{3}", "it is the total number of pens she has"):
        assert audit_flags(cheap_checks("How many pens?", bad)) == [ANSWER_MALFORMED], bad
    for good in ("\\frac{5}{6}", "(1, 2)", "3\\sqrt{2}", "12 cm", "x^2 + 1"):
        assert cheap_checks("Compute it.", good) == [], good


def test_majority_answer_against_the_reference() -> None:
    assert majority_check("26", 1, ["27", "27", "28"])[0].startswith(f"{SOLVER_DISAGREES}: the solver's majority answer 27 (2 of 4")
    assert majority_check("26", 2, ["27", "27"]) == []  # a tie is no disagreement
    assert majority_check("26", 1, ["27", "28", None, None]) == []  # scattered or missing answers
    assert majority_check("1/2", 0, ["0.5"]) != []  # grouped by normalised text; the checker already said 0.5 != 1/2 here


def test_verdicts_are_read_leniently() -> None:
    assert parse_verdict("<verdict>valid</verdict> Fine.") == (True, "Fine.")
    assert parse_verdict("<verdict> INVALID </verdict> It misses the price.")[0] is False
    assert parse_verdict("This problem is not valid because...")[0] is False
    assert parse_verdict("The problem is valid.")[0] is True
    assert parse_verdict("I like turtles")[0] is None


def test_the_audit_on_the_labelled_set() -> None:
    auditor = Auditor(ScriptedBackend())
    entries = auditor.audit([c.item for c in CASES])
    flagged = [bool(e) for e in entries]
    expected_kind = {"answer_in_problem": ANSWER_IN_PROBLEM, "answer_malformed": ANSWER_MALFORMED,
                     "wrong_answer": SOLVER_DISAGREES, "not_self_contained": VERIFIER_REJECTS}  # fmt: skip
    for case, found in zip(CASES, entries):
        if case.kind in expected_kind:
            assert expected_kind[case.kind] in audit_flags(found), (case.item.problem, found)
    score = precision_recall(CASES, flagged)
    # one designed miss (under-determined, scattered rollouts) and one designed false alarm (a consistently wrong solver)
    assert (score["false_negatives"], score["false_positives"]) == (1, 1)
    assert score["recall"] == pytest.approx(11 / 12) and score["precision"] == pytest.approx(11 / 12)
    assert auditor.counts["audited"] == len(CASES) and auditor.counts["audit_flagged"] == sum(flagged)
    cheap_only = Auditor(ScriptedBackend(), verifier=False).audit([c.item for c in CASES])
    assert sum(VERIFIER_REJECTS in audit_flags(e) for e in cheap_only) == 0


def test_a_failing_verifier_never_loses_the_audit() -> None:
    class Broken(ScriptedBackend):
        def generate(self, prompts, n, params):  # type: ignore[no-untyped-def]
            return [GenerationResult(error="boom") for _ in prompts]

    auditor = Auditor(Broken())
    assert auditor.audit([AuditItem("The answer is 5. What is 2 + 3?", "5", 1, ())]) == [[f"{ANSWER_IN_PROBLEM}: the problem says 'answer is 5'"]]
    assert auditor.counts["audit_verifier_errors"] == 1


def _scored(core: SolverCore, problems: list[str], backend: ScriptedBackend) -> list[SolveResult]:
    cands = [NovelCandidate(id=problem_id(p), problem=p, solution="", answer=backend.answer_for(p)) for p in problems]
    outs = core.handle_batch([Inbound("novel", c.id, c, offset=i) for i, c in enumerate(cands)])
    return [o[0].message for o in outs]


def test_the_solver_audits_kept_problems_with_its_own_backend() -> None:
    script = {"problems": {"Tom has apples.": {"solve_rate": 0.5, "answer": "4"},
                           "What is 3 + 4?": {"solve_rate": 0.5, "answer": "7"},
                           "What is 9 + 9?": {"solve_rate": 1.0, "answer": "18"}}}  # fmt: skip
    backend = ScriptedBackend(script)
    with CheckerPool(workers=1, timeout_s=5.0) as pool:
        core = SolverCore(backend, pool, SolverConfig(k=4, early_stop="none"))
        invalid, valid, easy = _scored(core, list(script["problems"]), backend)
        assert audit_flags(invalid.audit) == [VERIFIER_REJECTS] and valid.audit == [] and easy.audit is None
        assert backend.counts["validity"] == 2 and core.metrics()["audit_flagged"] == 1
        every = SolverCore(backend, pool, SolverConfig(k=4, early_stop="none", audit="all", audit_verifier=False))
        assert _scored(every, ["What is 9 + 9?"], backend)[0].audit == []
        off = SolverCore(backend, pool, SolverConfig(k=4, early_stop="none", audit="off"))
        assert _scored(off, ["Tom has apples."], backend)[0].audit is None


def test_the_export_leaves_flagged_problems_out_unless_asked(tmp_path: Path) -> None:
    def result(i: int, audit: list[str] | None) -> SolveResult:
        text = f"Ann has {i} pens. How many?"
        return SolveResult(id=problem_id(text), problem=text, solution="", answer=str(i), k=2, rollouts_used=2, n_correct=1,
                           solve_rate=0.5, quality=0.5, correct_rollouts=[f"\\boxed{{{i}}}"], audit=audit)  # fmt: skip

    rows = [result(1, []), result(2, [f"{VERIFIER_REJECTS}: no"]), result(3, None)]
    info = export_training_set(rows, tmp_path / "default")
    assert info.examples == 2 and {r["answer"] for r in read_examples(tmp_path / "default")} == {"1", "3"}
    assert json.loads((tmp_path / "default" / "export.json").read_text())["skipped"]["audit_flagged"] == 1
    assert export_training_set(rows, tmp_path / "all", include_flagged=True).examples == 3
