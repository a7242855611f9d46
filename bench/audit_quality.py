"""Precision and recall of the validity audit on the labelled set of valid and broken problems the tests build.

The labelled set (``tests/unit/_audit_cases.py``) holds valid problems and broken ones of
four kinds (the answer stated in the problem, a malformed answer, a wrong reference answer,
nothing asked), plus one broken problem no check can see and one valid problem the majority
check wrongly flags. The audit's verifier prompt runs with the scripted backend (a fixed
rule: valid when the problem asks something) or, with ``--backend transformers``, with the
real SmolLM2-135M (slow on CPU, and a 135M model is a weak judge).

    python bench/audit_quality.py
    python bench/audit_quality.py --backend transformers --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sparq_stream.models.registry import make_generation_backend  # noqa: E402
from sparq_stream.qd.audit import VERIFIER_REJECTS, Auditor, audit_flags  # noqa: E402
from tests.unit._audit_cases import CASES, precision_recall  # noqa: E402


def main() -> None:
    """Audit the labelled set with each configuration and print precision and recall."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="scripted", help="verifier backend: scripted | transformers | openai | vllm")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    backend = make_generation_backend(args.backend)
    figures = {}
    for name, auditor in (("cheap checks + majority", Auditor(None, verifier=False)), (f"+ verifier ({args.backend})", Auditor(backend))):
        started = time.perf_counter()
        entries = auditor.audit([c.item for c in CASES])
        score = precision_recall(CASES, [bool(e) for e in entries])
        score["seconds"] = time.perf_counter() - started
        missed = sorted({c.kind for c, e in zip(CASES, entries) if c.broken and not e})
        score["missed_kinds"] = missed  # type: ignore[assignment]
        per_flag = {}
        for entry in entries:
            for flag in audit_flags(entry):
                per_flag[flag] = per_flag.get(flag, 0) + 1
        score["flags"] = per_flag  # type: ignore[assignment]
        figures[name] = score
        if auditor.backend is not None:  # the verifier's own verdicts, from the same run: how well the model judges alone
            alone = precision_recall(CASES, [VERIFIER_REJECTS in audit_flags(e) for e in entries])
            figures[f"verifier alone ({args.backend})"] = alone
            print(f"{'verifier alone (' + args.backend + ')':32s} precision {alone['precision']:.2f}  recall {alone['recall']:.2f}  "
                  f"(tp {alone['true_positives']:.0f}, fp {alone['false_positives']:.0f}, fn {alone['false_negatives']:.0f})")  # fmt: skip
        print(f"{name:32s} precision {score['precision']:.2f}  recall {score['recall']:.2f}  "
              f"(tp {score['true_positives']:.0f}, fp {score['false_positives']:.0f}, fn {score['false_negatives']:.0f} "
              f"of {score['cases']:.0f} cases, {score['broken']:.0f} broken; missed: {', '.join(missed) or 'none'})")  # fmt: skip
    backend.close()
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
